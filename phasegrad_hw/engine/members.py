"""Members of a training ensemble and the engine's settings: one network per seed (its
couplings, frequencies and learnable subsets), drawn reproducibly from the seed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass
class Member:
    """One network of an ensemble: its seed, parameters and learnable subsets."""

    seed: int
    omega: Array  # (N,) natural frequencies (model units); input entries overwritten per sample
    coupling: Array  # (E,) couplings on the template's edges
    learn_omega: NDArray[np.bool_]  # (N,)
    learn_k: NDArray[np.bool_]  # (E,)


def learnable_masks(
    model: DeviceModel, rule: EPRule, seed: int, k_subset: int | None = None
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(ω mask, K mask) for the rule's parameter set; ``k_subset`` picks that many learnable
    edges with the seed (else every edge learns)."""
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
    rule)."""
    k = model.coupling_values() if coupling is None else np.asarray(coupling, dtype=np.float64)
    w = (
        initial_omega(model, np.random.default_rng(seed), config.init, k)
        if omega is None
        else np.asarray(omega, dtype=np.float64).copy()
    )
    lw, lk = learnable_masks(model, config.rule, seed, config.k_subset)
    return Member(seed, w, k.copy(), lw, lk)


def members_from_builder(
    builder: Callable[[np.random.Generator], DeviceModel], seeds: Sequence[int], config: TrainConfig
) -> tuple[DeviceModel, list[Member]]:
    """One member per seed, each with its own couplings drawn by ``builder`` from
    ``default_rng([seed, TOPOLOGY_STREAM])``; returns (template model, members)."""
    members: list[Member] = []
    template: DeviceModel | None = None
    for s in seeds:
        model = builder(np.random.default_rng([s, TOPOLOGY_STREAM]))
        if template is None:
            template = model
        elif model.edge_index.tolist() != template.edge_index.tolist():
            raise ValueError("builder: members must share one topology")
        members.append(member_for_model(model, s, config))
    if template is None:
        raise ValueError("seeds: at least one seed is required")
    return template, members
