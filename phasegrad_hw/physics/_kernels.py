# mypy: disallow-untyped-defs=False
"""Optional compiled kernel for :func:`phasegrad_hw.physics.solve_equilibrium` (numba).

One small dense network (N <= 64), H = a·sin, symmetric K, optional linear or injection nudge.
The kernel is the numpy path written out in loops — the same damped Newton (1 rad trust
region, 13-step backtracking line search, stall test, tolerances and rounding floor) as
``physics._newton_small_sin`` (no nudge) and ``physics._newton_single`` (nudged), the same
wrap rule and the same stability decision (Cholesky of −J̃ − 1e-10·max|J̃|·I). It also checks
what the Python fast path leaves out (finite entries, β >= 0, symmetric K): any failed check
returns a non-zero status and the caller takes the numpy path, which raises the usual errors.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

EPS = 2.220446049250313e-16
TWO_PI = 2.0 * math.pi

STATUS_OK = 0
STATUS_FALLBACK = 1  # non-finite input, negative β or asymmetric K: use the numpy path

NUDGE_NONE = 0
NUDGE_LINEAR = 1
NUDGE_INJECTION = 2


@njit(cache=True)
def _evaluate(th, w, Ka, bet, tgt, kind, F, A):
    """F̃ (n−1,) and −J̃ (n−1, n−1) at θ (reference at index 0, exact sin/cos of each
    phase difference, each pair once: K is symmetric and H odd)."""
    n = th.shape[0]
    for i in range(1, n):
        F[i - 1] = 0.0
        A[i - 1, i - 1] = 0.0
    for j in range(1, n):  # pairs (0, j): only row j belongs to the reduced system
        d = th[j] - th[0]
        s = Ka[j, 0] * math.sin(d)
        c = Ka[j, 0] * math.cos(d)
        F[j - 1] -= s
        A[j - 1, j - 1] += c
    for i in range(1, n):
        ti = th[i]
        for j in range(i + 1, n):
            d = th[j] - ti
            kij = Ka[i, j]
            s = kij * math.sin(d)
            c = kij * math.cos(d)
            F[i - 1] += s
            F[j - 1] -= s
            A[i - 1, i - 1] += c
            A[j - 1, j - 1] += c
            A[i - 1, j - 1] = -c
            A[j - 1, i - 1] = -c
    for i in range(1, n):
        F[i - 1] += w[i]
    if kind == NUDGE_LINEAR:
        for i in range(1, n):
            F[i - 1] += bet[i] * (tgt[i] - th[i])
            A[i - 1, i - 1] += bet[i]
    elif kind == NUDGE_INJECTION:
        for i in range(1, n):
            d = tgt[i] - th[i]
            F[i - 1] += bet[i] * math.sin(d)
            A[i - 1, i - 1] += bet[i] * math.cos(d)


@njit(cache=True)
def _cholesky(A, L, shift):
    """Lower Cholesky factor of A − shift·I into L; False on a non-positive (or NaN) pivot."""
    m = A.shape[0]
    for j in range(m):
        s = A[j, j] - shift
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if not s > 0.0:
            return False
        ljj = math.sqrt(s)
        L[j, j] = ljj
        for i in range(j + 1, m):
            t = A[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / ljj
    return True


@njit(cache=True)
def _solve(A, b, x, L):
    """x = A⁻¹ b: Cholesky, else LU with partial pivoting, else least squares (as numpy)."""
    m = A.shape[0]
    if _cholesky(A, L, 0.0):
        for i in range(m):
            t = b[i]
            for k in range(i):
                t -= L[i, k] * x[k]
            x[i] = t / L[i, i]
        for i in range(m - 1, -1, -1):
            t = x[i]
            for k in range(i + 1, m):
                t -= L[k, i] * x[k]
            x[i] = t / L[i, i]
        return
    for i in range(m):  # LU with row swaps (L holds the factors)
        for j in range(m):
            L[i, j] = A[i, j]
        x[i] = b[i]
    singular = False
    for k in range(m):
        p = k
        big = abs(L[k, k])
        for i in range(k + 1, m):
            if abs(L[i, k]) > big:
                big = abs(L[i, k])
                p = i
        if big == 0.0:
            singular = True
            break
        if p != k:
            for j in range(m):
                t = L[k, j]
                L[k, j] = L[p, j]
                L[p, j] = t
            t = x[k]
            x[k] = x[p]
            x[p] = t
        piv = L[k, k]
        for i in range(k + 1, m):
            f = L[i, k] / piv
            L[i, k] = f
            for j in range(k + 1, m):
                L[i, j] -= f * L[k, j]
            x[i] -= f * x[k]
    if not singular:
        for i in range(m - 1, -1, -1):
            t = x[i]
            for j in range(i + 1, m):
                t -= L[i, j] * x[j]
            x[i] = t / L[i, i]
        finite = True
        for i in range(m):
            if not math.isfinite(x[i]):
                finite = False
        if finite:
            return
    sol = np.linalg.lstsq(A.copy(), b.copy(), rcond=EPS * m)[0]
    for i in range(m):
        x[i] = sol[i]


@njit(cache=True)
def _wrap(x):
    return ((x + math.pi) % TWO_PI) - math.pi


@njit(cache=True)
def solve_small(w_in, K_in, a, th0_in, has_th0, beta_in, tgt_in, kind, sign, ref, tol, max_iter):
    """Damped Newton for one small network; see the module docstring.

    ``w_in`` (N,), ``K_in`` (N, N) symmetric, ``a`` the sine amplitude; ``th0_in`` (N,) used
    when ``has_th0``; ``beta_in``/``tgt_in`` (N,) (ignored for ``kind`` NUDGE_NONE), ``sign``
    the nudge direction ±1; ``ref`` the reference oscillator. Returns (status, θ (N,) with
    θ_ref = 0 in the caller's order, −J̃ at θ (N−1, N−1), residual, iterations, converged,
    Cholesky of the shifted −J̃ succeeded, shift). Only status is meaningful unless it is 0.
    """
    n = w_in.shape[0]
    m = n - 1
    th_out = np.zeros(n)
    A = np.empty((m, m))
    # ---- checks the Python fast path leaves to the kernel
    for i in range(n):
        if not math.isfinite(w_in[i]):
            return STATUS_FALLBACK, th_out, A, 0.0, 0, False, False, 0.0
        for j in range(n):
            if not math.isfinite(K_in[i, j]) or K_in[i, j] != K_in[j, i]:
                return STATUS_FALLBACK, th_out, A, 0.0, 0, False, False, 0.0
        if has_th0 and not math.isfinite(th0_in[i]):
            return STATUS_FALLBACK, th_out, A, 0.0, 0, False, False, 0.0
        if kind != NUDGE_NONE:
            if not (math.isfinite(beta_in[i]) and math.isfinite(tgt_in[i])) or beta_in[i] < 0:
                return STATUS_FALLBACK, th_out, A, 0.0, 0, False, False, 0.0
    # ---- the reference moves to index 0
    p = np.empty(n, dtype=np.int64)
    p[0] = ref
    for k in range(1, n):
        p[k] = k - 1 if k <= ref else k
    w = np.empty(n)
    Ka = np.empty((n, n))
    bet = np.zeros(n)
    tgt = np.zeros(n)
    th = np.zeros(n)
    wmax = 0.0
    krow = 0.0  # max row sum of |K| (nudged floor) and of |aK| (un-nudged floor)
    karow = 0.0
    for k in range(n):
        w[k] = w_in[p[k]]
        wmax = max(wmax, abs(w[k]))
        r = 0.0
        ra = 0.0
        for q in range(n):
            kv = K_in[p[k], p[q]]
            Ka[k, q] = kv * a
            r += abs(kv)
            ra += abs(Ka[k, q])
        krow = max(krow, r)
        karow = max(karow, ra)
    nudged = kind != NUDGE_NONE
    bmax = 0.0
    tmax = 0.0
    if nudged:
        for k in range(n):
            bet[k] = beta_in[p[k]] * sign
            tgt[k] = tgt_in[p[k]]
            bmax = max(bmax, abs(bet[k]))
            tmax = max(tmax, abs(tgt[k]))
    if has_th0:
        t0 = th0_in[ref]
        for k in range(n):
            th[k] = th0_in[p[k]] - t0
    if nudged:
        floor = 64.0 * EPS * (1.0 + wmax + krow + bmax * (1.0 + tmax)) * math.sqrt(n)
    else:
        floor = 64.0 * EPS * (1.0 + wmax + karow) * math.sqrt(n)
    # ---- damped Newton
    F = np.empty(m)
    Ft = np.empty(m)
    At = np.empty((m, m))
    trial = np.empty(n)
    step = np.empty(m)
    L = np.empty((m, m))
    _evaluate(th, w, Ka, bet, tgt, kind, F, A)
    nrm = 0.0
    res = 0.0
    for i in range(m):
        nrm += F[i] * F[i]
        res = max(res, abs(F[i]))
    tol2 = tol * tol
    it = 0
    while it < max_iter:
        if nudged:
            if res <= tol:
                break
        elif not nrm > tol2:
            break
        _solve(A, F, step, L)  # (−J̃) s = F̃
        ss = 0.0
        big = 0.0
        for i in range(m):
            ss += step[i] * step[i]
            big = max(big, abs(step[i]))
        if (nudged or ss > 1.0) and big > 1.0:
            for i in range(m):
                step[i] = step[i] / big  # trust region: ≤ 1 rad per step
        alpha = 1.0
        nt = 0.0
        rt = 0.0
        for _ls in range(13):
            trial[0] = th[0]
            for i in range(m):
                trial[i + 1] = th[i + 1] + alpha * step[i]
            _evaluate(trial, w, Ka, bet, tgt, kind, Ft, At)
            nt = 0.0
            rt = 0.0
            for i in range(m):
                nt += Ft[i] * Ft[i]
                rt = max(rt, abs(Ft[i]))
            if nt <= (1.0 - 1e-4 * alpha) * nrm or rt <= floor:
                break
            alpha *= 0.5
        # a failed line search still takes the smallest step (escape plateaus)
        it += 1
        if nudged:
            stalled = rt >= res and res <= floor
        else:
            stalled = nt >= nrm and nrm <= floor * floor * n
        for i in range(n):
            th[i] = trial[i]
        for i in range(m):
            F[i] = Ft[i]
            for j in range(m):
                A[i, j] = At[i, j]
        nrm = nt
        res = rt
        if stalled:
            break
    big = 0.0
    for i in range(1, n):
        big = max(big, abs(th[i]))
    if big >= math.pi:  # wrap only when needed (wrapping rounds)
        for i in range(1, n):
            th[i] = _wrap(th[i])
        _evaluate(th, w, Ka, bet, tgt, kind, F, A)
    res = 0.0
    for i in range(m):
        res = max(res, abs(F[i]))
    converged = res <= max(tol, floor)
    amax = 0.0
    for i in range(m):
        for j in range(m):
            amax = max(amax, abs(A[i, j]))
    shift = 1e-10 * (amax + 1e-300)
    chol_ok = _cholesky(A, L, shift)
    th[0] = 0.0
    for k in range(n):
        th_out[p[k]] = th[k]
    return STATUS_OK, th_out, A, res, it, converged, chol_ok, shift
