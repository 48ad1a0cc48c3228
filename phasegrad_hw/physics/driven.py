"""Forced (driven) locked states and their gradients (docs/design.md §2, §9).

A network of N oscillators, some of them injection-driven by a signal Ψ(t) = Ω t + ψ::

    dθ_i/dt = ω_i + Σ_j K_ij H(θ_j − θ_i) + F_i sin(Ψ(t) − θ_i)

In the frame rotating with the drive (detunings ω_i − Ω, written ``omega`` here) a
quasi-static drive is one more oscillator held at phase ψ that pulls the sensors (F_i ≥ 0, rad
per time unit) and is not pulled back. So a forced equilibrium is the locked state of the
augmented N + 1 system with the drive as the pinned reference (index 0)::

    K'[i+1, j+1] = K_ij,   K'[i+1, 0] = F_i,   K'[0, i+1] = 0,

solved by the existing solver family (:func:`~phasegrad_hw.physics.solve_equilibrium`). The
reduced system drops the drive's own equation, so the one-way edges never enter it: the
reduced Jacobian J̃_ii = −Σ_j K_ij H'(θ_j − θ_i) − F_i H'(ψ − θ_i), J̃_ij = K_ij H'(θ_j − θ_i)
is symmetric for symmetric K and odd H (:func:`reduced_jacobian`), and the phase-gradient
identity ∂L/∂ω_k = −lim_{β→0} (θ^β_k − θ*_k)/β holds for every oscillator (none is pinned;
the drive plays the reference). The drive couples through the network's H; for the physical
injection F_i sin(Ψ − θ_i) of :mod:`phasegrad_hw.physics.dynamics` use H = sin (the default).

Drive-strength gradient (adjoint identity, F_i enters only equation i through H(ψ − θ_i)):
∂L/∂F_i = g_i H(ψ − θ_i) with g = ∂L/∂ω; its two-phase estimate is
[V(ψ − θ^β_i) − V(ψ − θ*_i)]/β (V' = H; for H = sin, [cos(θ*_i − ψ) − cos(θ^β_i − ψ)]/β).

Phases (rad) are returned in the frame of the drive at the phase ψ given (θ_i − ψ is the lag
of oscillator i behind the drive); targets are given in the same frame. Batched over a
leading axis like the solver: ``omega`` (B, N), ``K`` (N, N) or (B, N, N), ``F`` (N,) or
(B, N), ``drive_phase`` scalar or (B,).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.physics import gradients as gr
from phasegrad_hw.physics.coupling import (
    SIN,
    Array,
    CouplingFunction,
    NudgeKind,
    _as_float_array,
    jacobian,
)
from phasegrad_hw.physics.equilibrium import solve_equilibrium
from phasegrad_hw.physics.result import Equilibrium

log = logging.getLogger(__name__)

__all__ = [
    "ForcedGradient",
    "augment",
    "forced_equilibrium",
    "forced_finite_difference_gradient",
    "forced_implicit_gradient",
    "forced_two_phase_gradient",
    "reduced_jacobian",
]


@dataclass(frozen=True)
class ForcedGradient:
    """Gradients of an output loss (rad²) on a forced equilibrium, per rad per time unit of
    the parameter: ``omega`` ∂L/∂ω_i (N,) or (B, N); ``drive_amplitude`` ∂L/∂F_i (same shape;
    where F_i = 0 it is the sensitivity to switching that drive on); ``coupling`` ∂L/∂K_e for
    the requested symmetric edges, (E,) or (B, E), or None."""

    omega: Array
    drive_amplitude: Array
    coupling: Array | None = None


def _drive_edges(n: int) -> NDArray[np.int64]:
    """(N, 2) edges (i + 1, 0) of the augmented system: sensor i ← drive."""
    return np.stack([np.arange(1, n + 1), np.zeros(n, dtype=np.int64)], axis=1)


def augment(omega: ArrayLike, K: ArrayLike, drive_amplitude: ArrayLike) -> tuple[Array, Array]:
    """(ω', K') of the N + 1 system with the drive as oscillator 0 (see the module doc).

    ``omega`` detunings from the drive frequency (rad per time unit), (N,) or (B, N);
    ``K`` (N, N) or (B, N, N); ``drive_amplitude`` F (N,) or (B, N), F_i ≥ 0. The drive's
    own frequency entry is 0 (it is the pinned reference; its equation is dropped).
    """
    w = _as_float_array("omega", omega)
    Km = _as_float_array("K", K)
    F = _as_float_array("drive_amplitude", drive_amplitude)
    if w.ndim not in (1, 2):
        raise ValueError(f"omega: shape {w.shape} must be (N,) or (B, N)")
    n = w.shape[-1]
    if Km.ndim not in (2, 3) or Km.shape[-2:] != (n, n):
        raise ValueError(f"K: shape {Km.shape} must be ({n}, {n}) or (B, {n}, {n})")
    if F.ndim not in (1, 2) or F.shape[-1] != n:
        raise ValueError(f"drive_amplitude: shape {F.shape} must be ({n},) or (B, {n})")
    if np.any(F < 0):
        raise ValueError(f"drive_amplitude: {F[F < 0].ravel()[0]} is negative; F_i >= 0")
    if not np.any(F > 0):
        raise ValueError("drive_amplitude: no oscillator is driven (all F_i = 0)")
    try:
        batch = np.broadcast_shapes(w.shape[:-1], Km.shape[:-2], F.shape[:-1])
    except ValueError as exc:
        raise ValueError(
            f"omega/K/drive_amplitude: batch shapes {w.shape}, {Km.shape}, {F.shape} differ"
        ) from exc
    if batch and w.ndim == 1:
        w = np.broadcast_to(w, (*batch, n))
    wa = np.zeros((*w.shape[:-1], n + 1))
    wa[..., 1:] = w
    Ka = np.zeros((*batch, n + 1, n + 1))
    Ka[..., 1:, 1:] = Km
    Ka[..., 1:, 0] = F
    return wa, Ka


def _psi(drive_phase: ArrayLike, batch: tuple[int, ...]) -> Array:
    p = _as_float_array("drive_phase", drive_phase)
    if p.ndim > 1 or (p.ndim == 1 and (not batch or p.shape[0] != batch[0])):
        raise ValueError(f"drive_phase: shape {p.shape} must be () or the batch {batch}")
    return p[..., None] if p.ndim == 1 else p


def _lift(theta: Array, psi: Array) -> Array:
    """Phases in the drive frame (…, N) → augmented phases (…, N + 1) with the drive at 0."""
    out = np.zeros((*theta.shape[:-1], theta.shape[-1] + 1))
    out[..., 1:] = theta - psi
    return out


def forced_equilibrium(
    omega: ArrayLike,
    K: ArrayLike,
    drive_amplitude: ArrayLike,
    *,
    drive_phase: ArrayLike = 0.0,
    coupling: CouplingFunction = SIN,
    theta0: ArrayLike | None = None,
    beta: ArrayLike | None = None,
    target: ArrayLike | None = None,
    nudge: NudgeKind = "linear",
    direction: int = 1,
    tol: float = 1e-12,
    max_iter: int = 60,
) -> Equilibrium:
    """Forced locked state (free, or nudged with ``beta``/``target``/``direction`` exactly as
    in :func:`~phasegrad_hw.physics.solve_equilibrium`) of N oscillators under a held drive.

    ``omega`` detunings from the drive frequency Ω (rad per time unit); ``drive_phase`` ψ
    (rad); ``theta0``/``target`` phases (rad) in the same frame as the result. Returns the
    solver's :class:`Equilibrium` with ``theta`` (…, N) — the drive's entry removed, ψ added
    back — and its residual, convergence and stability judged on the reduced system.
    """
    wa, Ka = augment(omega, K, drive_amplitude)
    n = wa.shape[-1] - 1
    psi = _psi(drive_phase, wa.shape[:-1])
    th0 = None
    if theta0 is not None:
        th0 = _lift(np.broadcast_to(_as_float_array("theta0", theta0), (*wa.shape[:-1], n)), psi)
    bet = tgt = None
    if beta is not None:
        b = np.broadcast_to(_as_float_array("beta", beta), (*wa.shape[:-1], n))
        bet = np.concatenate([np.zeros((*wa.shape[:-1], 1)), b], axis=-1)
        t = np.broadcast_to(_as_float_array("target", 0.0 if target is None else target), b.shape)
        tgt = _lift(t, psi)
    eq = solve_equilibrium(
        wa,
        Ka,
        coupling,
        theta0=th0,
        ref=0,
        beta=bet,
        target=tgt,
        nudge=nudge,
        direction=direction,
        tol=tol,
        max_iter=max_iter,
    )
    eq.theta = eq.theta[..., 1:] + psi
    return eq


def reduced_jacobian(
    theta: ArrayLike,
    K: ArrayLike,
    drive_amplitude: ArrayLike,
    *,
    drive_phase: ArrayLike = 0.0,
    coupling: CouplingFunction = SIN,
) -> Array:
    """J̃ (…, N, N) of the forced system at phases ``theta`` (rad): the augmented Jacobian
    with the drive's row and column removed (module doc); symmetric for symmetric K, odd H."""
    th = _as_float_array("theta", theta)
    _, Ka = augment(np.zeros(th.shape), K, drive_amplitude)
    J = jacobian(_lift(th, _psi(drive_phase, th.shape[:-1])), Ka, coupling)
    return J[..., 1:, 1:]


def _edge_index(edges: ArrayLike | None) -> NDArray[np.int64] | None:
    if edges is None:
        return None
    e = np.asarray(edges, dtype=np.int64)
    if e.ndim != 2 or e.shape[1] != 2:
        raise ValueError(f"edges: shape {e.shape} must be (E, 2)")
    return e + 1


def forced_two_phase_gradient(
    theta_free: ArrayLike,
    theta_nudged: ArrayLike,
    beta: float,
    theta_minus: ArrayLike | None = None,
    *,
    drive_phase: ArrayLike = 0.0,
    edges: ArrayLike | None = None,
    coupling: CouplingFunction = SIN,
) -> ForcedGradient:
    """EP estimate from forced states (rad): ∂L/∂ω = −wrap(θ^β − θ*)/β for all N oscillators
    (centred with ``theta_minus`` = θ^{−β}: −wrap(θ^{+β} − θ^{−β})/(2β)), ∂L/∂F_i from the
    drive-edge potential, ∂L/∂K_e for symmetric ``edges`` (E, 2) among the N oscillators."""
    free = _as_float_array("theta_free", theta_free)
    plus = _as_float_array("theta_nudged", theta_nudged)
    psi = _psi(drive_phase, free.shape[:-1])
    fa, pa = _lift(free, psi), _lift(plus, psi)
    ma = None if theta_minus is None else _lift(_as_float_array("theta_minus", theta_minus), psi)
    g = gr.two_phase_gradient(fa, pa, beta, ma, ref=0)[..., 1:]
    n = free.shape[-1]
    gF = gr.coupling_gradient_two_phase(fa, pa, _drive_edges(n), beta, ma, coupling)
    e = _edge_index(edges)
    gK = None if e is None else gr.coupling_gradient_two_phase(fa, pa, e, beta, ma, coupling)
    return ForcedGradient(g, gF, gK)


def forced_implicit_gradient(
    theta: ArrayLike,
    K: ArrayLike,
    drive_amplitude: ArrayLike,
    dL_dtheta: ArrayLike,
    *,
    drive_phase: ArrayLike = 0.0,
    edges: ArrayLike | None = None,
    coupling: CouplingFunction = SIN,
) -> ForcedGradient:
    """IFT gradient at a free forced equilibrium ``theta`` (rad): ∂L/∂ω = −J̃^{−T} e with
    e = ``dL_dtheta`` (…, N); ∂L/∂F_i = g_i H(ψ − θ_i); ∂L/∂K_e for symmetric ``edges``."""
    th = _as_float_array("theta", theta)
    e = _as_float_array("dL_dtheta", dL_dtheta)
    if e.shape != th.shape:
        raise ValueError(f"dL_dtheta: shape {e.shape} does not match theta {th.shape}")
    _, Ka = augment(np.zeros(th.shape), K, drive_amplitude)
    ta = _lift(th, _psi(drive_phase, th.shape[:-1]))
    ea = np.concatenate([np.zeros((*e.shape[:-1], 1)), e], axis=-1)
    ga = gr.implicit_gradient(ta, Ka, ea, coupling, ref=0)
    n = th.shape[-1]
    gF = gr.coupling_gradient_implicit(ta, ga, _drive_edges(n), coupling)
    ed = _edge_index(edges)
    gK = None if ed is None else gr.coupling_gradient_implicit(ta, ga, ed, coupling)
    return ForcedGradient(ga[..., 1:], gF, gK)


def forced_finite_difference_gradient(
    omega: ArrayLike,
    K: ArrayLike,
    drive_amplitude: ArrayLike,
    outputs: ArrayLike,
    target: ArrayLike,
    *,
    drive_phase: float = 0.0,
    kind: NudgeKind = "linear",
    eps: float = 1e-5,
    theta0: ArrayLike | None = None,
    coupling: CouplingFunction = SIN,
) -> Array:
    """Centred finite differences (step ``eps``, rad per time unit) of L(θ*(ω)) on every
    detuning ω_i of one network (N,); ``outputs`` indices, ``target`` phases (rad, the frame
    of the result of :func:`forced_equilibrium`); ``kind`` the loss paired with the nudge."""
    wa, Ka = augment(omega, K, drive_amplitude)
    if wa.ndim != 1:
        raise ValueError(f"omega: shape {wa.shape[:-1] + (wa.shape[-1] - 1,)} must be (N,)")
    psi = float(drive_phase)
    th0 = None
    if theta0 is not None:
        th0 = _lift(_as_float_array("theta0", theta0), np.asarray(psi))
    outs = np.asarray(outputs, dtype=np.int64) + 1
    tgt = _as_float_array("target", target) - psi
    g = gr.finite_difference_gradient(
        wa, Ka, outs, tgt, coupling, eps=eps, ref=0, kind=kind, theta0=th0
    )
    return g[1:]
