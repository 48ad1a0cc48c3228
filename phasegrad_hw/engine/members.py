"""Members of a training ensemble and the engine's settings: one network per seed (its
couplings, frequencies and learnable subsets), drawn reproducibly from the seed.

Two draw protocols (``TrainConfig.draws``), same distributions, different random streams:

* ``"own"``: couplings from ``default_rng([seed, TOPOLOGY_STREAM])`` (the builder's order),
  ω from ``default_rng(seed)``, a K subset from ``default_rng([seed, EDGE_STREAM])``.
* ``"published"``: the per-seed draws of arXiv 2604.10272's ablation, so seed s is the
  authors' seed s: one ``default_rng(seed)`` draws ω ~ U(±0.3) of the hidden and output
  oscillators first, then the builder's couplings (for the layered preset: input→hidden,
  hidden→output, chain — the published order); a K subset of k edges is
  ``default_rng(seed + 10000).choice(E, k, replace=False)`` over the edges sorted by (i, j).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.seeding import Init, initial_omega

Array = NDArray[np.float64]
TOPOLOGY_STREAM = 0x7090  # rng stream (with the seed) that draws a member's couplings
EDGE_STREAM = 0xED6E  # rng stream that picks the K7 edge subset
PUBLISHED_EDGE_OFFSET = 10_000  # published draws: the K subset from default_rng(seed + this)
Draws = Literal["own", "published"]


class TrainConfig(StrictModel):
    """Training settings (defaults: the published vowel setting, docs/design.md §2): the EP
    ``rule`` (:class:`~phasegrad_hw.learning.ep.EPRule`; ``averages`` is unused, the engine
    reads noiselessly) and the engine's own run settings."""

    rule: EPRule = Field(default_factory=EPRule)
    epochs: int = Field(default=200, ge=0, le=100_000)
    # learn the couplings of only this many random edges (per seed; the published "K7")
    k_subset: int | None = Field(default=None, ge=1)
    init: Init = "random"
    batch_size: int = Field(default=1, ge=1)  # 1 = online SGD (published)
    test_every: int = Field(default=1, ge=1)  # evaluate the test split every n epochs (+ last)
    parallel: bool = False  # compiled engine: spread members over CPU threads (same results)
    draws: Draws = "own"  # random streams of a member's network (module docstring)


@dataclass
class Member:
    """One network of an ensemble: its seed, parameters and learnable subsets."""

    seed: int
    omega: Array  # (N,) natural frequencies (model units); input entries overwritten per sample
    coupling: Array  # (E,) couplings on the template's edges
    learn_omega: NDArray[np.bool_]  # (N,)
    learn_k: NDArray[np.bool_]  # (E,)


def learnable_masks(
    model: DeviceModel,
    rule: EPRule,
    seed: int,
    k_subset: int | None = None,
    draws: Draws = "own",
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(ω mask, K mask) for the rule's parameter set; ``k_subset`` picks that many learnable
    edges with the seed under ``draws`` (module docstring; else every edge learns)."""
    n, E = model.n, len(model.edges)
    lw = np.zeros(n, dtype=bool)
    lk = np.zeros(E, dtype=bool)
    if rule.learns_omega:
        lw[model.roles.hidden + model.roles.outputs] = True
    if rule.learns_coupling and k_subset is None:
        lk[:] = True
    elif rule.learns_coupling and k_subset is not None:
        if k_subset > E:
            raise ValueError(f"k_subset: {k_subset} exceeds the {E} edges of the device")
        if draws == "published":
            rng = np.random.default_rng(seed + PUBLISHED_EDGE_OFFSET)
            ei, ej = np.sort(model.edge_index, axis=1).T
            by_pair = np.lexsort((ej, ei))  # edge positions in (i, j) order
            lk[by_pair[rng.choice(E, k_subset, replace=False)]] = True
        else:
            pick = np.random.default_rng([seed, EDGE_STREAM]).choice(E, k_subset, replace=False)
            lk[pick] = True
    return lw, lk


def member_for_model(
    model: DeviceModel,
    seed: int,
    config: TrainConfig,
    omega: Array | None = None,
    coupling: Array | None = None,
) -> Member:
    """A member on a fixed device model: couplings from the model, ω from
    :func:`phasegrad_hw.learning.seeding.initial_omega` with ``default_rng(seed)`` (the loop's
    rule), the learnable subsets by :func:`learnable_masks` under ``config.draws``."""
    k = model.coupling_values() if coupling is None else np.asarray(coupling, dtype=np.float64)
    w = (
        initial_omega(model, np.random.default_rng(seed), config.init, k)
        if omega is None
        else np.asarray(omega, dtype=np.float64).copy()
    )
    lw, lk = learnable_masks(model, config.rule, seed, config.k_subset, config.draws)
    return Member(seed, w, k.copy(), lw, lk)


def members_from_builder(
    builder: Callable[[np.random.Generator], DeviceModel], seeds: Sequence[int], config: TrainConfig
) -> tuple[DeviceModel, list[Member]]:
    """One member per seed, each with its own network drawn under ``config.draws`` (module
    docstring): couplings by ``builder``, ω by the init; returns (template model, members)."""
    members: list[Member] = []
    template: DeviceModel | None = None
    for s in seeds:
        omega = None
        if config.draws == "published":
            rng = np.random.default_rng(s)
            shape = template if template is not None else builder(np.random.default_rng(0))
            omega = initial_omega(shape, rng, "random")  # drawn first, as published
            model = builder(rng)
            if config.init != "random":
                omega = initial_omega(model, rng, config.init, model.coupling_values())
        else:
            model = builder(np.random.default_rng([s, TOPOLOGY_STREAM]))
        if template is None:
            template = model
        elif model.edge_index.tolist() != template.edge_index.tolist():
            raise ValueError("builder: members must share one topology")
        members.append(member_for_model(model, s, config, omega=omega))
    if template is None:
        raise ValueError("seeds: at least one seed is required")
    return template, members
