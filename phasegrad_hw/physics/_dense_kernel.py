# mypy: disallow-untyped-defs=False
"""The compiled dense solve of one small network with any coupling function (docs/design.md §2).

The numba form of the dense path (:func:`phasegrad_hw.physics.dense.newton_dense`) for one
network of N <= 64 oscillators: H(φ) = Σ_k a_k sin(kφ − ψ) + b0 + b1 cos φ, any K (also
asymmetric), the pinned frame or the free one (the collective frequency Ω solved with the
phases, in the reference's slot), a linear or injection nudge. It runs the dense path's
iteration with the policy's numbers — trust region, Armijo backtracking on ‖F̃‖², the stall
test at the rounding floor, wrap at the end — so the two agree to rounding (the equivalence
test pins θ to 1e-12). This is what an emulated chip solves on every read.

H and H' on each pair come from per-oscillator sin kθ, cos kθ (N·n_h trigonometric calls,
not N²): sin(kΔ) = s_j c_i − c_j s_i, cos(kΔ) = c_j c_i + s_j s_i, Δ = θ_j − θ_i; with the
lag, sin(kΔ − ψ) = sin kΔ cos ψ − cos kΔ sin ψ. The reference is moved to index 0 on entry
(as the dense path does) and back on exit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from phasegrad_hw.physics._kernels import (
    EPS,
    NUDGE_INJECTION,
    NUDGE_LINEAR,
    NUDGE_NONE,
    STATUS_FALLBACK,
    STATUS_OK,
    _cholesky_solve,
    _sincos,
    cholesky,
    inputs_ok,
    lu_solve,
    policy_from_array,
    wrap,
)


class Coupling(NamedTuple):
    """The kernels' H: ``cf`` (4, n_h) weights of sin kΔ and cos kΔ in H (rows 0, 1) and in H'
    (rows 2, 3) (:func:`coupling_terms`), ``b0`` the offset, ``h0`` = H(0), ``odd`` H is odd."""

    cf: np.ndarray
    b0: float
    h0: float
    odd: bool


class Moved(NamedTuple):
    """One network with the reference moved to index 0: ω (N,), K (N, N), signed β (N,) and
    targets (N,) (rad) of the nudge of kind ``kind``; ``free`` solve Ω in slot 0;
    ``symmetric`` odd H and symmetric K (Cholesky first)."""

    w: np.ndarray
    K: np.ndarray
    bet: np.ndarray
    tgt: np.ndarray
    kind: int
    free: bool
    symmetric: bool


def coupling_terms(
    harmonics: tuple[float, ...], lag: float, b0: float, b1: float, h0: float
) -> Coupling:
    """:class:`Coupling` of H(φ) = Σ_k a_k sin(kφ − ψ) + b0 + b1 cos φ (``h0`` = H(0))."""
    nh = len(harmonics)
    cf = np.zeros((4, nh))
    cl, sl = math.cos(lag), math.sin(lag)
    for k, a in enumerate(harmonics):
        cf[0, k] = a * cl
        cf[1, k] = -a * sl
        cf[2, k] = (k + 1) * a * sl
        cf[3, k] = (k + 1) * a * cl
    cf[1, 0] += b1  # b1 cos Δ
    cf[2, 0] -= b1  # (b1 cos Δ)' = −b1 sin Δ
    cf.flags.writeable = False
    odd = lag == 0.0 and b0 == 0.0 and b1 == 0.0
    return Coupling(cf, float(b0), float(h0), odd)


@njit(cache=True, inline="always")
def _field(pr, H, th, sk, ck, F, Wd):
    """F = ω + Σ_j K_ij H(θ_j − θ_i) + n(θ) (N,), and Wd_ij = K_ij H'(θ_j − θ_i) (i ≠ j; a
    diagonal K_ii adds K_ii·H(0) to F)."""
    w, K, bet, tgt, kind = pr.w, pr.K, pr.bet, pr.tgt, pr.kind
    cf, b0, h0 = H.cf, H.b0, H.h0
    n = w.shape[0]
    nh = cf.shape[1]
    for i in range(n):
        for k in range(nh):
            sk[i, k], ck[i, k] = _sincos((k + 1) * th[i])
    for i in range(n):
        acc = w[i]
        for j in range(n):
            kij = K[i, j]
            Wd[i, j] = 0.0
            if kij == 0.0:
                continue
            if j == i:
                acc += kij * h0
                continue
            h = b0
            hd = 0.0
            for k in range(nh):
                s = sk[j, k] * ck[i, k] - ck[j, k] * sk[i, k]
                c = ck[j, k] * ck[i, k] + sk[j, k] * sk[i, k]
                h += cf[0, k] * s + cf[1, k] * c
                hd += cf[2, k] * s + cf[3, k] * c
            acc += kij * h
            Wd[i, j] = kij * hd
        F[i] = acc
    if kind == NUDGE_LINEAR:
        for i in range(n):
            F[i] += bet[i] * (tgt[i] - th[i])
    elif kind == NUDGE_INJECTION:
        for i in range(n):
            F[i] += bet[i] * math.sin(tgt[i] - th[i])


@njit(cache=True, inline="always")
def _evaluate(x, pr, H, scratch, R, Wd):
    """Residual R (N,) of state x: pinned F (entry 0 unused); free F − Ω with the nudge's
    reaction on the reference (x[0] holds Ω, θ_0 = 0). Returns (max|R̃|, ‖R̃‖²) over the
    solved entries."""
    th, sk, ck = scratch
    n = x.shape[0]
    for i in range(n):
        th[i] = x[i]
    th[0] = 0.0
    _field(pr, H, th, sk, ck, R, Wd)
    lo = 1
    if pr.free:
        lo = 0
        bet, tgt, kind = pr.bet, pr.tgt, pr.kind
        if kind != NUDGE_NONE:
            for j in range(1, n):
                d = tgt[j] - th[j]
                R[0] -= bet[j] * (d if kind == NUDGE_LINEAR else math.sin(d))
        om = x[0]
        for i in range(n):
            R[i] -= om
    res = 0.0
    nrm = 0.0
    for i in range(lo, n):
        res = max(res, abs(R[i]))
        nrm += R[i] * R[i]
    return res, nrm


@njit(cache=True, inline="always")
def _neg_full(x, pr, Wd, A):
    """−J (N, N) of the full system at x (θ_0 = 0): −Wd off the diagonal, the row sums of Wd
    plus the nudge's derivative on it."""
    bet, tgt, kind = pr.bet, pr.tgt, pr.kind
    n = x.shape[0]
    for i in range(n):
        d = 0.0
        for j in range(n):
            A[i, j] = -Wd[i, j]
            d += Wd[i, j]
        if kind == NUDGE_LINEAR:
            d += bet[i]
        elif kind == NUDGE_INJECTION:
            t = 0.0 if i == 0 else x[i]
            d += bet[i] * math.cos(tgt[i] - t)
        A[i, i] = d


@njit(cache=True, inline="always")
def _newton_step(x, pr, R, Wd, A, M, L, step):
    """The Newton step into ``step``: −∂R̃/∂x · step = R̃. The matrix: pinned −J̃ (−J without
    the reference row and column); free −J with the reference column replaced by ∂/∂Ω = 1
    and the nudge's reaction in the reference row. Cholesky first when symmetric, else LU
    (least squares when singular)."""
    n = x.shape[0]
    _neg_full(x, pr, Wd, A)
    if not pr.free:
        for i in range(1, n):
            step[i - 1] = R[i]
            for j in range(1, n):
                M[i - 1, j - 1] = A[i, j]
    else:
        for i in range(n):
            step[i] = R[i]
            for j in range(n):
                M[i, j] = A[i, j]
        bet, tgt, kind = pr.bet, pr.tgt, pr.kind
        if kind != NUDGE_NONE:
            for j in range(1, n):
                c = 1.0 if kind == NUDGE_LINEAR else math.cos(tgt[j] - x[j])
                M[0, j] -= bet[j] * c
        for i in range(n):
            M[i, 0] = 1.0
    if pr.symmetric and cholesky(M, L, 0.0):
        _cholesky_solve(L, step)
    else:
        lu_solve(M, step, L)


@njit(cache=True)
def _move(w, K, H, th0, has_th0, beta, tgt, kind, sign, ref, free):
    """(order p with the reference first, the :class:`Moved` problem, start x (N,) with
    x_0 = 0)."""
    n = w.shape[0]
    p = np.empty(n, dtype=np.int64)
    p[0] = ref
    r = 1
    for i in range(n):
        if i != ref:
            p[r] = i
            r += 1
    wm = np.empty(n)
    Km = np.empty((n, n))
    bet = np.zeros(n)
    tg = np.zeros(n)
    x = np.zeros(n)
    symmetric = H.odd
    for a in range(n):
        wm[a] = w[p[a]]
        for b in range(n):
            Km[a, b] = K[p[a], p[b]]
            symmetric = symmetric and K[p[a], p[b]] == K[p[b], p[a]]
        if kind != NUDGE_NONE:
            bet[a] = beta[p[a]] * sign
            tg[a] = tgt[p[a]]
        if has_th0:
            x[a] = th0[p[a]]
    x0 = x[0]
    for a in range(n):
        x[a] -= x0
    return p, Moved(wm, Km, bet, tg, kind, free and not symmetric, symmetric), x


@njit(cache=True)
def _floor(pr, pol):
    """The dense path's rounding floor: scale·floor_factor·eps·√N, scale = 1 + max|ω| + max
    row sum |K| [+ max|β|·(1 + max|target|) when nudged]."""
    n = pr.w.shape[0]
    wmax = krow = bmax = tmax = 0.0
    for a in range(n):
        wmax = max(wmax, abs(pr.w[a]))
        rs = 0.0
        for b in range(n):
            rs += abs(pr.K[a, b])
        krow = max(krow, rs)
        bmax = max(bmax, abs(pr.bet[a]))
        tmax = max(tmax, abs(pr.tgt[a]))
    scale = 1.0 + wmax + krow
    if pr.kind != NUDGE_NONE:
        scale = scale + bmax * (1.0 + tmax)
    return scale * (pol.floor_factor * EPS * math.sqrt(n))


@njit(cache=True)
def _iterate(x, pr, H, pol, floor):
    """Damped Newton from x (reference slot 0) with the dense path's trust region, Armijo
    backtracking and stall test; returns (x, R, Wd at x, residual, iterations)."""
    n = x.shape[0]
    lo = 0 if pr.free else 1
    ms = n - lo  # size of the Newton system
    nh = H.cf.shape[1]
    scratch = (np.empty(n), np.empty((n, nh)), np.empty((n, nh)))
    R, Rt, trial = np.empty(n), np.empty(n), np.empty(n)
    Wd, Wt, A = np.empty((n, n)), np.empty((n, n)), np.empty((n, n))
    M, L, step = np.empty((ms, ms)), np.empty((ms, ms)), np.empty(ms)
    res, nrm = _evaluate(x, pr, H, scratch, R, Wd)
    it = 0
    active = res > pol.tol
    while active:
        _newton_step(x, pr, R, Wd, A, M, L, step)
        big = 0.0
        for a in range(1 - lo, ms):  # (free: the step on Ω is not a phase)
            big = max(big, abs(step[a]))
        if big > pol.trust_rad:
            f = min(1.0, pol.trust_rad / max(big, 1e-300))
            for a in range(ms):
                step[a] *= f
        alpha = 1.0
        rt = nt = 0.0
        for _ls in range(pol.line_search_trials):
            for a in range(n):
                trial[a] = x[a]
            for a in range(ms):
                trial[a + lo] += step[a] if alpha == 1.0 else alpha * step[a]
            rt, nt = _evaluate(trial, pr, H, scratch, Rt, Wt)
            if nt <= (1.0 - pol.armijo * alpha) * nrm or rt <= floor:
                break  # (after the last trial its step is taken anyway: escapes plateaus)
            alpha *= 0.5
        go = rt > pol.tol and not (rt >= res and res <= floor)
        x, trial = trial, x
        R, Rt = Rt, R
        Wd, Wt = Wt, Wd
        res, nrm = rt, nt
        it += 1
        active = go and it < pol.max_iter
    big = 0.0
    for a in range(1, n):
        big = max(big, abs(x[a]))
    if big >= math.pi:  # wrap only when needed (wrapping rounds)
        for a in range(1, n):
            x[a] = wrap(x[a])
        res, nrm = _evaluate(x, pr, H, scratch, R, Wd)
    return x, Wd, res, it


@njit(cache=True)
def solve_dense_small(w, K, H, th0, has_th0, beta, tgt, kind, sign, ref, free, pa):
    """Damped Newton for one dense network (the compiled path of ``solve_equilibrium`` for any
    H): ``w`` (N,), ``K`` (N, N), ``H`` a :class:`Coupling`; ``th0`` (N,) used when
    ``has_th0``; ``beta``/``tgt`` (N,) (ignored for ``kind`` NUDGE_NONE), ``sign`` the
    direction ±1; ``free`` solve Ω too; ``pa`` the policy array. Returns (status, θ (N,) with
    θ_ref = 0, S the stability matrix (N−1, N−1) in the reference-first order, residual,
    iterations, converged, S symmetric)."""
    pol = policy_from_array(pa)
    n = w.shape[0]
    m = n - 1
    out = np.zeros(n)
    S = np.zeros((m, m))
    if not inputs_ok(w, K, th0, has_th0, beta, tgt, kind, False):
        return STATUS_FALLBACK, out, S, 0.0, 0, False, False
    p, pr, x = _move(w, K, H, th0, has_th0, beta, tgt, kind, sign, ref, free)
    floor = _floor(pr, pol)
    x, Wd, res, it = _iterate(x, pr, H, pol, floor)
    converged = res <= max(pol.tol, floor)
    A = np.empty((n, n))
    _neg_full(x, pr, Wd, A)
    for a in range(m):  # relative-phase dynamics: pinned −J̃; free −J̃ − (reference row)
        for b in range(m):
            S[a, b] = A[a + 1, b + 1] - (A[0, b + 1] if pr.free else 0.0)
    for a in range(1, n):
        out[p[a]] = x[a]
    return STATUS_OK, out, S, res, it, converged, pr.symmetric and not pr.free
