# mypy: disallow-untyped-defs=False
"""Optional compiled stepper for :func:`phasegrad_hw.physics.dynamics.integrate_sde` (numba).

The numpy stepper written out in loops: the same field (ω + Σ_j K_ij H(θ_j − θ_i) + drive +
nudge), the same Euler–Maruyama / stochastic Heun update, the same Wiener increments (drawn by
the caller) and the same drive phases (sampled by the caller on the step grid). Results agree
with the numpy path to rounding (the sums run in a different order).
"""

from __future__ import annotations

import math

from numba import njit

NUDGE_NONE = 0
NUDGE_LINEAR = 1
NUDGE_INJECTION = 2


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
def _field(th, w, K, has_k, harm, lag, b0, b1, F, psi, bet, tgt, kind, out):
    """dθ/dt for every sample (B, N) into ``out``; ``psi`` the drive phase per sample (B,)."""
    nb, n = th.shape
    for b in range(nb):
        for i in range(n):
            ti = th[b, i]
            s = w[b, i]
            if has_k:
                for j in range(n):
                    kij = K[b, i, j]
                    if kij != 0.0:
                        s += kij * _coupling(th[b, j] - ti, harm, lag, b0, b1)
            f = F[b, i]
            if f != 0.0:
                s += f * math.sin(psi[b] - ti)
            if kind == NUDGE_LINEAR:
                s += bet[b, i] * (tgt[b, i] - ti)
            elif kind == NUDGE_INJECTION:
                s += bet[b, i] * math.sin(tgt[b, i] - ti)
            out[b, i] = s


@njit(cache=True)
def step_chunk(
    th, w, K, has_k, harm, lag, b0, b1, F, psi, sig, dW, dt, heun, bet, tgt, kind, every, first, rec
):
    """Advance ``th`` (B, N) in place over ``dW.shape[0]`` steps; ``psi`` (S+1, B) drive phases
    on the step grid; record θ after every ``every``-th global step (``first`` = global index of
    this chunk's first step) into ``rec``; returns the number of records written."""
    nb, n = th.shape
    f0 = th.copy()
    f1 = th.copy()
    pred = th.copy()
    written = 0
    for s in range(dW.shape[0]):
        _field(th, w, K, has_k, harm, lag, b0, b1, F, psi[s], bet, tgt, kind, f0)
        if heun:
            for b in range(nb):
                for i in range(n):
                    pred[b, i] = th[b, i] + f0[b, i] * dt + sig[b, i] * dW[s, b, i]
            _field(pred, w, K, has_k, harm, lag, b0, b1, F, psi[s + 1], bet, tgt, kind, f1)
            for b in range(nb):
                for i in range(n):
                    th[b, i] = th[b, i] + 0.5 * (f0[b, i] + f1[b, i]) * dt + sig[b, i] * dW[s, b, i]
        else:
            for b in range(nb):
                for i in range(n):
                    th[b, i] = th[b, i] + f0[b, i] * dt + sig[b, i] * dW[s, b, i]
        if (first + s + 1) % every == 0:
            for b in range(nb):
                for i in range(n):
                    rec[written, b, i] = th[b, i]
            written += 1
    return written
