# mypy: disallow-untyped-defs=False
"""Optional compiled stepper for :func:`phasegrad_hw.physics.dynamics.integrate_sde` (numba).

The numpy stepper written out in loops: the same field (ω + Σ_j K_ij H(θ_j − θ_i) + drive +
nudge), the same Euler–Maruyama / stochastic Heun update, the same Wiener increments (drawn by
the caller) and the same drive phases (sampled by the caller on the step grid). Results agree
with the numpy path to rounding (the sums run in a different order). The parameters travel in
three NamedTuples (numba passes them as tuples): :class:`Drift`, :class:`Harmonics`, :class:`Grid`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

NUDGE_NONE = 0
NUDGE_LINEAR = 1
NUDGE_INJECTION = 2


class Drift(NamedTuple):
    """Parameters of the drift, per sample: ``w`` ω (B, N) rad per time unit; ``K`` (B, N, N)
    (unused unless ``has_k``); ``F`` drive strengths (B, N); ``bet``, ``tgt`` nudge strengths
    and targets (B, N) (rad) of nudge ``kind`` (NUDGE_*)."""

    w: np.ndarray
    K: np.ndarray
    has_k: bool
    F: np.ndarray
    bet: np.ndarray
    tgt: np.ndarray
    kind: int


class Harmonics(NamedTuple):
    """H(φ) = Σ_k harm[k]·sin((k+1)φ − lag) + b0 + b1 cos φ."""

    harm: np.ndarray
    lag: float
    b0: float
    b1: float


class Grid(NamedTuple):
    """The step grid of a chunk: noise amplitudes ``sig`` = √(2D) (B, N), step ``dt`` (time
    units), Heun (else Euler–Maruyama), record after every ``every``-th global step, ``first``
    the global index of the chunk's first step."""

    sig: np.ndarray
    dt: float
    heun: bool
    every: int
    first: int


@njit(cache=True)
def _coupling(phi, harm, lag, b0, b1):
    """H(φ) = Σ_k a_k sin(kφ − ψ) + b0 + b1 cos φ."""
    h = b0 + b1 * math.cos(phi)
    for k in range(harm.shape[0]):
        a = harm[k]
        if a != 0.0:
            h += a * math.sin((k + 1) * phi - lag)
    return h


@njit(cache=True)
def _field(th, d, H, psi, out):
    """dθ/dt for every sample (B, N) into ``out``; ``psi`` the drive phase per sample (B,)."""
    nb, n = th.shape
    for b in range(nb):
        for i in range(n):
            ti = th[b, i]
            s = d.w[b, i]
            if d.has_k:
                for j in range(n):
                    kij = d.K[b, i, j]
                    if kij != 0.0:
                        s += kij * _coupling(th[b, j] - ti, H.harm, H.lag, H.b0, H.b1)
            f = d.F[b, i]
            if f != 0.0:
                s += f * math.sin(psi[b] - ti)
            if d.kind == NUDGE_LINEAR:
                s += d.bet[b, i] * (d.tgt[b, i] - ti)
            elif d.kind == NUDGE_INJECTION:
                s += d.bet[b, i] * math.sin(d.tgt[b, i] - ti)
            out[b, i] = s


@njit(cache=True)
def step_chunk(th, d, H, psi, dW, g, rec):
    """Advance ``th`` (B, N) in place over ``dW.shape[0]`` steps; ``psi`` (S+1, B) drive phases
    on the step grid; record θ after every ``g.every``-th global step into ``rec``; returns the
    number of records written."""
    nb, n = th.shape
    f0 = th.copy()
    f1 = th.copy()
    pred = th.copy()
    sig, dt = g.sig, g.dt
    written = 0
    for s in range(dW.shape[0]):
        _field(th, d, H, psi[s], f0)
        if g.heun:
            for b in range(nb):
                for i in range(n):
                    pred[b, i] = th[b, i] + f0[b, i] * dt + sig[b, i] * dW[s, b, i]
            _field(pred, d, H, psi[s + 1], f1)
            for b in range(nb):
                for i in range(n):
                    th[b, i] = th[b, i] + 0.5 * (f0[b, i] + f1[b, i]) * dt + sig[b, i] * dW[s, b, i]
        else:
            for b in range(nb):
                for i in range(n):
                    th[b, i] = th[b, i] + f0[b, i] * dt + sig[b, i] * dW[s, b, i]
        if (g.first + s + 1) % g.every == 0:
            for b in range(nb):
                for i in range(n):
                    rec[written, b, i] = th[b, i]
            written += 1
    return written
