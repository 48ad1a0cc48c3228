"""Reproduction of the published gradient checks (docs/design.md §2, seed paper arXiv 2604.10272).

Pure functions that build the tables printed by ``phasegrad-hw verify``:

* identity: Erdős–Rényi p = 0.6, K = 5·U(0.5, 1.5), ω ~ N(0, 0.3²); two outputs (the last
  two oscillators, reference 0) with targets 0.2 rad from the free output phases (random
  sign each); one-sided two-phase estimate at β = 1e-4 against centred finite differences
  (ε = 1e-5 on ω^c) and the implicit (IFT) gradient. Two outputs, because with one output
  the linear-nudge response is exactly parallel to the IFT gradient (Sherman–Morrison), which
  would make the cosine test vacuous.
* finite β: the same two-output setting on 20 networks of N = 15; one-sided and centred
  estimates against IFT (cosine and scale error ⟨g, g_IFT⟩/‖g_IFT‖² − 1), mean and worst.
* asymmetry / phase lag: N = 15, 10 seeds; one output (the last oscillator), so the cosine
  measures only how far J̃ is from J̃ᵀ and does not depend on the target. Asymmetry follows
  :func:`phasegrad_hw.physics.graphs.asymmetric` (antisymmetric relative perturbation). Both
  vectors are the β → 0 limits on the reduced system at the locked state (the published
  method): two-phase −J̃⁻¹e, true gradient −J̃⁻ᵀe.

Units: phases in rad, frequencies and β in rad per model time unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from phasegrad_hw.physics import SIN, Array, CouplingFunction, jacobian, solve_equilibrium
from phasegrad_hw.physics import gradients as gr
from phasegrad_hw.physics import graphs as nw

DEFAULT_SIZES: tuple[int, ...] = (6, 10, 15, 20, 30, 50, 100, 200)
DEFAULT_BETAS: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.5)
ASYMMETRY_LEVELS: tuple[float, ...] = (0.0, 0.05, 0.10, 0.20, 0.50)
PUBLISHED_ASYMMETRY: dict[float, float] = {0.05: 0.99977, 0.10: 0.99903, 0.20: 0.99577, 0.50: 0.965}
PHASE_LAGS_RAD: tuple[float, ...] = (0.0, 0.1, 0.3)
TARGET_OFFSET_RAD = 0.2


@dataclass(frozen=True)
class IdentityRow:
    N: int
    learnable: int
    cos_tp_fd: float
    cos_tp_ift: float
    residual: float


@dataclass(frozen=True)
class FiniteBetaRow:
    beta: float
    mode: str  # "one_sided" | "centred"
    mean_cos: float
    worst_cos: float
    mean_scale_error: float  # mean of |scale error|
    worst_scale_error: float  # max of |scale error|
    networks: int


@dataclass(frozen=True)
class AsymmetryRow:
    asymmetry: float
    mean_cos: float
    std_cos: float
    published: float | None
    seeds: int


@dataclass(frozen=True)
class PhaseLagRow:
    phase_lag: float
    mean_cos: float
    std_cos: float
    seeds: int


def verify_network(n: int, seed: int) -> tuple[Array, Array]:
    """(ω^c, K) of the identity check for size ``n`` (generator seeded with [seed, n])."""
    rng = np.random.default_rng([seed, n])
    K = nw.erdos_renyi(n, rng, p=0.6, k_scale=5.0)
    return nw.random_frequencies(n, rng, sigma=0.3), K


def _task(theta: Array, n_outputs: int, rng: np.random.Generator) -> tuple[Array, Array]:
    n = theta.shape[-1]
    outs = np.arange(n - n_outputs, n)
    signs = rng.choice(np.array([-1.0, 1.0]), n_outputs)
    return outs, theta[outs] + TARGET_OFFSET_RAD * signs


def identity_row(n: int, seed: int = 0, beta: float = 1e-4, eps: float = 1e-5) -> IdentityRow:
    """One row of the identity table (see module docstring)."""
    w, K = verify_network(n, seed)
    free = solve_equilibrium(w, K)
    if not free.ok:
        raise RuntimeError(f"identity: network N={n} seed={seed} did not lock")
    outs, tgt = _task(free.theta, 2, np.random.default_rng([seed, n, 1]))
    b, t = gr.nudge_vectors(n, outs, tgt, beta)
    nudged = solve_equilibrium(w, K, beta=b, target=t, theta0=free.theta)
    tp = gr.two_phase_gradient(free.theta, nudged.theta, beta)
    fd = gr.finite_difference_gradient(w, K, outs, tgt, eps=eps, theta0=free.theta)
    ift = gr.implicit_gradient(free.theta, K, gr.loss_grad_theta(free.theta, outs, tgt))
    return IdentityRow(
        n,
        n - 1,
        float(gr.cosine(tp, fd)),
        float(gr.cosine(tp, ift)),
        float(max(free.residual, nudged.residual)),
    )


def identity_table(sizes: Sequence[int] = DEFAULT_SIZES, seed: int = 0) -> list[IdentityRow]:
    return [identity_row(int(n), seed) for n in sizes]


def finite_beta_table(
    betas: Sequence[float] = DEFAULT_BETAS, n: int = 15, networks: int = 20, seed: int = 0
) -> list[FiniteBetaRow]:
    """One-sided and centred two-phase estimates at finite β against IFT (all networks batched)."""
    W = np.empty((networks, n))
    Ks = np.empty((networks, n, n))
    for k in range(networks):
        W[k], Ks[k] = verify_network(n, seed + 1000 + k)
    free = solve_equilibrium(W, Ks)
    if not free.ok.all():
        raise RuntimeError("finite_beta: a free network did not lock")
    rng = np.random.default_rng([seed, 2])
    outs = np.arange(n - 2, n)
    tgt = free.theta[:, outs] + TARGET_OFFSET_RAD * rng.choice(np.array([-1.0, 1.0]), (networks, 2))
    ift = gr.implicit_gradient(free.theta, Ks, gr.loss_grad_theta(free.theta, outs, tgt))
    rows: list[FiniteBetaRow] = []
    for beta in betas:
        b, t = gr.nudge_vectors(n, outs, tgt, float(beta))
        plus = solve_equilibrium(W, Ks, beta=b, target=t, theta0=free.theta)
        minus = solve_equilibrium(W, Ks, beta=b, target=t, theta0=free.theta, direction=-1)
        ok = free.ok & plus.ok & minus.ok
        for mode, g in (
            ("one_sided", gr.two_phase_gradient(free.theta, plus.theta, beta)),
            ("centred", gr.two_phase_gradient(free.theta, plus.theta, beta, minus.theta)),
        ):
            c = gr.cosine(g, ift)[ok]
            se = np.abs(gr.scale_error(g, ift))[ok]
            rows.append(
                FiniteBetaRow(
                    float(beta),
                    mode,
                    float(c.mean()),
                    float(c.min()),
                    float(se.mean()),
                    float(se.max()),
                    int(ok.sum()),
                )
            )
    return rows


def _one_output_cosine(w: Array, K: Array, coupling: CouplingFunction, seed: int) -> float:
    """β → 0 cosine between the two-phase estimate −J̃⁻¹e and the true gradient −J̃⁻ᵀe.

    J̃ is the reduced Jacobian (reference row and column removed) at the locked state (free
    collective frequency Ω, see ``solve_equilibrium(frame="free")``); e is a
    unit loss gradient on the single output (the cosine does not depend on its size).
    """
    n = w.shape[0]
    free = solve_equilibrium(w, K, coupling, frame="free")
    if not free.ok:
        return float("nan")
    J = jacobian(free.theta, K, coupling)[1:, 1:]
    e = np.zeros(n - 1)
    e[-1] = 1.0
    return float(gr.cosine(np.linalg.solve(-J, e), np.linalg.solve(-J.T, e)))


def asymmetry_table(
    levels: Sequence[float] = ASYMMETRY_LEVELS, n: int = 15, seeds: int = 10
) -> list[AsymmetryRow]:
    """Mean/std over seeds of cos(two-phase, true) for random asymmetry of K."""
    rows: list[AsymmetryRow] = []
    for a in levels:
        cs = []
        for s in range(seeds):
            w, K = verify_network(n, s)
            Ka = nw.asymmetric(K, float(a), np.random.default_rng([s, 4]))
            cs.append(_one_output_cosine(w, Ka, SIN, s))
        c = np.asarray(cs)
        c = c[np.isfinite(c)]
        rows.append(
            AsymmetryRow(
                float(a),
                float(c.mean()),
                float(c.std()),
                PUBLISHED_ASYMMETRY.get(round(float(a), 4)),
                len(c),
            )
        )
    return rows


def phase_lag_table(
    lags: Sequence[float] = PHASE_LAGS_RAD, n: int = 15, seeds: int = 10
) -> list[PhaseLagRow]:
    """Mean/std over seeds of cos(two-phase, true) for H(φ) = sin(φ − ψ)."""
    rows: list[PhaseLagRow] = []
    for psi in lags:
        H = CouplingFunction(phase_lag=float(psi))
        c = np.asarray([_one_output_cosine(*verify_network(n, s), H, s) for s in range(seeds)])
        c = c[np.isfinite(c)]
        rows.append(PhaseLagRow(float(psi), float(c.mean()), float(c.std()), len(c)))
    return rows


def run_all(sizes: Sequence[int] = DEFAULT_SIZES, seed: int = 0) -> dict[str, Any]:
    """Every table, as the JSON document written by ``phasegrad-hw verify --json``."""
    return {
        "identity": [asdict(r) for r in identity_table(sizes, seed)],
        "finite_beta": [asdict(r) for r in finite_beta_table(seed=seed)],
        "asymmetry": [asdict(r) for r in asymmetry_table()],
        "phase_lag": [asdict(r) for r in phase_lag_table()],
    }
