# mypy: disallow-untyped-defs=False
"""The one compiled (numba) Newton solver for locked states (docs/design.md §2).

Equilibrium of dθ_i/dt = ω_i + Σ_e K_e sin(θ_j − θ_i) (edge list e = (i, j), symmetric K,
H = a·sin folded into K) plus an optional nudge on the outputs — linear β(θ_tgt − θ) or
injection β sin(θ_tgt − θ) — with the reference pinned at 0. Each iteration solves
(−J̃) s = F̃, −J̃ the reduced weighted Laplacian K cos Δθ plus the nudge's diagonal, by
Cholesky (SPD at a stable state), and limits the step to ``trust_rad`` (max-norm, rad).

Two drivers share that iteration (:func:`newton`):

* undamped (the training engine's fast path, :mod:`phasegrad_hw.engine._kernels`): at most
  ``fast_iters`` full steps from a warm start, a step below ``step_done_rad`` ends it; a
  non-positive Cholesky pivot gives up (the caller takes its robust path);
* damped (:func:`solve_small`, the compiled path of ``solve_equilibrium`` for one small dense
  network): Armijo backtracking on ‖F̃‖² (``armijo``, ``line_search_trials``), LU and then
  least squares when −J̃ is not positive definite, the rounding-floor stall test, and the
  stability decision of the numpy path (Cholesky of −J̃ − shift·I, shift =
  ``stability_shift``·max|J̃|).

Every number comes from :data:`phasegrad_hw.physics.policy.NEWTON` through :class:`Newton`
(see :func:`newton_policy`); nothing here hard-codes a tolerance.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from typing import NamedTuple

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from phasegrad_hw.physics.policy import EPS, NEWTON, NewtonPolicy

TWO_PI = 2.0 * math.pi

STATUS_OK = 0
STATUS_FALLBACK = 1  # non-finite input, negative β or asymmetric K: use the numpy path

NUDGE_NONE = 0
NUDGE_LINEAR = 1
NUDGE_INJECTION = 2


class Newton(NamedTuple):
    """Numbers of one Newton run (the fields of :class:`NewtonPolicy`, units there)."""

    tol: float
    max_iter: int
    trust_rad: float
    armijo: float
    line_search_trials: int
    floor_factor: float
    stability_shift: float
    fast_iters: int
    step_done_rad: float


def newton_policy(
    policy: NewtonPolicy = NEWTON, tol: float | None = None, max_iter: int | None = None
) -> Newton:
    """The kernels' copy of ``policy`` (``tol``/``max_iter`` override the policy's)."""
    return Newton(
        float(policy.tol if tol is None else tol),
        int(policy.max_iter if max_iter is None else max_iter),
        float(policy.trust_rad),
        float(policy.armijo),
        int(policy.line_search_trials),
        float(policy.floor_factor),
        float(policy.stability_shift),
        int(policy.fast_iters),
        float(policy.step_done_rad),
    )


def policy_array(pol: Newton) -> np.ndarray:
    """``pol`` as a float64 array in field order, for a kernel called from Python per solve:
    numba unboxes an array in ~0.04 µs and a named tuple of nine numbers in ~1 µs (the kernel
    rebuilds the :class:`Newton` with :func:`policy_from_array`)."""
    return np.array(pol, dtype=np.float64)


@njit(cache=True)
def policy_from_array(p):
    """The :class:`Newton` that :func:`policy_array` packed (field order of the class)."""
    return Newton(p[0], int(p[1]), p[2], p[3], int(p[4]), p[5], p[6], int(p[7]), p[8])


class Stop(NamedTuple):
    """When one Newton run stops: residual ``tol`` (max|F̃|, or ‖F̃‖ for the damped un-nudged
    run), rounding ``floor`` (damped: line-search acceptance and stall test), ``max_iter``
    iterations."""

    tol: float
    floor: float
    max_iter: int


class Graph(NamedTuple):
    """Edge list of one topology with the reduced (reference-removed) indexing.

    ``ei``/``ej`` (E,) edge endpoints (Δ_e = θ_j − θ_i); ``red`` (N,) reduced index of each
    oscillator (−1 for the reference); ``elo``/``ehi`` (E,) the edge's reduced indices ordered
    (−J̃ is assembled in its lower triangle only, the part Cholesky reads); ``ref``."""

    ei: np.ndarray
    ej: np.ndarray
    red: np.ndarray
    elo: np.ndarray
    ehi: np.ndarray
    ref: int


class Nudge(NamedTuple):
    """``bet`` (N,) signed strength (0 off the outputs); ``tgt`` (N,) target phases (rad).
    Its kind (NUDGE_*) is passed beside it, a constant at the engine's call sites so the
    compiled code keeps only that branch."""

    bet: np.ndarray
    tgt: np.ndarray


class Work(NamedTuple):
    """Preallocated arrays of one solve (no heap allocation per Newton call)."""

    F: np.ndarray  # (N,) residual
    kc: np.ndarray  # (E,) K_e cos Δ_e
    nd: np.ndarray  # (N,) nudge's diagonal of −J̃
    sn: np.ndarray  # (N,) sin θ_i of the last evaluation
    cs: np.ndarray  # (N,) cos θ_i of the last evaluation
    A: np.ndarray  # (N−1, N−1) −J̃ (lower triangle)
    L: np.ndarray  # (N−1, N−1) its factor
    rhs: np.ndarray  # (N−1,) right-hand side, then the step
    trial: np.ndarray  # (N,) line-search point


def make_graph(n: int, ei: np.ndarray, ej: np.ndarray, ref: int) -> Graph:
    """:class:`Graph` for ``n`` oscillators, edges (ei, ej) and reference ``ref``."""
    red = np.full(n, -1, dtype=np.int64)
    keep = np.arange(n) != ref
    red[keep] = np.arange(n - 1)
    ei = np.ascontiguousarray(ei, dtype=np.int64)
    ej = np.ascontiguousarray(ej, dtype=np.int64)
    p, q = red[ei], red[ej]
    return Graph(ei, ej, red, np.minimum(p, q), np.maximum(p, q), int(ref))


@njit(cache=True)
def make_work(n, n_edges):
    m = n - 1
    return Work(
        np.empty(n),
        np.empty(n_edges),
        np.zeros(n),
        np.empty(n),
        np.empty(n),
        np.empty((m, m)),
        np.empty((m, m)),
        np.empty(m),
        np.empty(n),
    )


def _libm_sincos() -> bool:
    """Make C ``sincos`` callable from the kernels (glibc: the same values as sin and cos, one
    shared argument reduction); False where the C library has none."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        addr = ctypes.cast(lib.sincos, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return False
    if not addr:
        return False
    llvm.add_symbol("sincos", addr)
    return True


if _libm_sincos():

    @intrinsic
    def _sincos(typingctx, x):
        sig = types.UniTuple(types.float64, 2)(types.float64)

        def codegen(context, builder, signature, args):
            dbl = context.get_value_type(types.float64)
            fnty = llvm_ir.FunctionType(
                llvm_ir.VoidType(), [dbl, dbl.as_pointer(), dbl.as_pointer()]
            )
            fn = cgutils.get_or_insert_function(builder.module, fnty, "sincos")
            sp = cgutils.alloca_once(builder, dbl)
            cp = cgutils.alloca_once(builder, dbl)
            builder.call(fn, [args[0], sp, cp])
            return context.make_tuple(
                builder, signature.return_type, [builder.load(sp), builder.load(cp)]
            )

        return sig, codegen

else:

    @njit(cache=True)
    def _sincos(x):
        return math.sin(x), math.cos(x)


@njit(cache=True)
def wrap(x):
    """Angle in [−π, π) (rad)."""
    y = x + math.pi
    if 0.0 <= y < TWO_PI:  # y % 2π == y exactly: skip the (slow) floating modulo
        return y - math.pi
    return (y % TWO_PI) - math.pi


# The per-iteration helpers below take the arrays they use, not their groups: every array
# handed to an inlined function, or taken out of a tuple, costs an atomic reference-count
# update, which the compiler cannot remove across the loops in between. :func:`newton` takes
# its groups apart once per call.


@njit(cache=True, inline="always")
def _coupling_field(ei, ej, F, sn, cs, kc, w, kk, th, ref, reuse):
    """F = ω + Σ K sin Δ at θ (and K cos Δ into kc, node sin/cos into sn/cs). ``reuse``:
    sn/cs already hold θ's. The first of the three parts of one residual evaluation
    (:func:`_coupling_field`, :func:`_nudge_field`, :func:`_residual`)."""
    n = w.shape[0]
    for i in range(n):
        F[i] = w[i]
        if reuse:
            continue
        if i == ref:  # pinned at 0
            sn[i] = 0.0
            cs[i] = 1.0
        else:
            sn[i], cs[i] = _sincos(th[i])
    for e in range(kk.shape[0]):
        i, j = ei[e], ej[e]
        # sin(θj − θi) and cos(θj − θi) from per-node sines/cosines (N, not E, trig calls)
        s = kk[e] * (sn[j] * cs[i] - cs[j] * sn[i])
        kc[e] = kk[e] * (cs[j] * cs[i] + sn[j] * sn[i])
        F[i] += s
        F[j] -= s


@njit(cache=True, inline="always")
def _nudge_field(F, nd, bet, tgt, th, kind):
    """Add the nudge (``bet``/``tgt``) to F (the injection nudge's diagonal into nd)."""
    n = F.shape[0]
    if kind == NUDGE_LINEAR:
        for i in range(n):
            F[i] += bet[i] * (tgt[i] - th[i])
    elif kind == NUDGE_INJECTION:
        for i in range(n):
            d = tgt[i] - th[i]
            F[i] += bet[i] * math.sin(d)
            nd[i] = bet[i] * math.cos(d)


@njit(cache=True, inline="always")
def _residual(F, ref, l2):
    """(max|F̃|, ‖F̃‖² if ``l2`` else 0) over the non-reference rows."""
    res = 0.0
    nrm = 0.0
    for i in range(F.shape[0]):
        if i != ref:
            res = max(res, abs(F[i]))
            if l2:
                nrm += F[i] * F[i]
    return res, nrm


@njit(cache=True, inline="always")
def _assemble(red, ref, elo, ehi, kc, diag, A, kind):
    """−J̃ at the last evaluated point (edge weights kc, nudge diagonal ``diag``: β for the
    linear nudge, nd for injection) into the lower triangle of A."""
    m = A.shape[0]
    for p in range(m):
        for q in range(p + 1):
            A[p, q] = 0.0
    for e in range(kc.shape[0]):
        c = kc[e]
        p = elo[e]
        q = ehi[e]
        A[q, q] += c
        if p >= 0:
            A[p, p] += c
            A[q, p] -= c
    if kind != NUDGE_NONE:
        for i in range(red.shape[0]):
            if i != ref:
                A[red[i], red[i]] += diag[i]


@njit(cache=True, inline="always")
def cholesky(A, L, shift):
    """Lower Cholesky factor of A − shift·I (lower triangle of A read) into L; False on a
    non-positive (or NaN) pivot."""
    m = A.shape[0]
    for j in range(m):
        d = A[j, j] - shift
        for q in range(j):
            d -= L[j, q] * L[j, q]
        if not d > 0.0:
            return False
        d = math.sqrt(d)
        L[j, j] = d
        for r in range(j + 1, m):
            acc = A[r, j]
            for q in range(j):
                acc -= L[r, q] * L[j, q]
            L[r, j] = acc / d
    return True


@njit(cache=True, inline="always")
def _cholesky_solve(L, x):
    """x ← (L Lᵀ)⁻¹ x in place."""
    m = L.shape[0]
    for r in range(m):  # L z = x
        acc = x[r]
        for q in range(r):
            acc -= L[r, q] * x[q]
        x[r] = acc / L[r, r]
    for r in range(m - 1, -1, -1):  # Lᵀ s = z
        acc = x[r]
        for q in range(r + 1, m):
            acc -= L[q, r] * x[q]
        x[r] = acc / L[r, r]


@njit(cache=True)
def lu_solve(M, x, LU):
    """x ← M⁻¹ x for a square M (not modified): LU with partial pivoting (factors in LU), least
    squares when M is singular or the solution is not finite."""
    m = M.shape[0]
    b = x.copy()
    for i in range(m):
        for j in range(m):
            LU[i, j] = M[i, j]
    singular = False
    for k in range(m):
        p = k
        big = abs(LU[k, k])
        for i in range(k + 1, m):
            if abs(LU[i, k]) > big:
                big = abs(LU[i, k])
                p = i
        if big == 0.0:
            singular = True
            break
        if p != k:
            for j in range(m):
                t = LU[k, j]
                LU[k, j] = LU[p, j]
                LU[p, j] = t
            t = x[k]
            x[k] = x[p]
            x[p] = t
        piv = LU[k, k]
        for i in range(k + 1, m):
            f = LU[i, k] / piv
            LU[i, k] = f
            for j in range(k + 1, m):
                LU[i, j] -= f * LU[k, j]
            x[i] -= f * x[k]
    if not singular:
        for i in range(m - 1, -1, -1):
            t = x[i]
            for j in range(i + 1, m):
                t -= LU[i, j] * x[j]
            x[i] = t / LU[i, i]
        finite = True
        for i in range(m):
            if not math.isfinite(x[i]):
                finite = False
        if finite:
            return
    sol = np.linalg.lstsq(M, b, rcond=EPS * m)[0]
    for i in range(m):
        x[i] = sol[i]


@njit(cache=True)
def _lu_solve(A, x, L):
    """x ← A⁻¹ x for symmetric A (lower triangle; mirrored into the upper one here) that is not
    positive definite: :func:`lu_solve`."""
    m = A.shape[0]
    for i in range(m):
        for j in range(i + 1, m):
            A[i, j] = A[j, i]
    lu_solve(A, x, L)


@njit(cache=True, inline="always")
def newton(g, ws, w, kk, th, nudge, kind, pol, stop, reuse, damped):
    """Newton iteration on θ (N,) in place (reference set to 0); returns (done, iterations).

    ``w`` (N,) frequencies, ``kk`` (E,) edge couplings, ``pol`` a :class:`Newton` (trust
    region, line search, step test), ``stop`` a :class:`Stop`; ``kind`` the nudge's NUDGE_*,
    ``reuse`` see :func:`_coupling_field`, ``damped`` line search or not. Undamped: stop when
    max|F̃| <= tol or a step is below ``step_done_rad``; a failed Cholesky returns
    (False, it). Damped: stop when the residual test passes (max|F̃| <= tol when nudged,
    ‖F̃‖ <= tol otherwise, as the numpy path) or the line search stalls at the rounding
    ``floor``. ws.F/ws.kc/ws.sn/ws.cs hold the last evaluated point (θ itself when damped)."""
    n = w.shape[0]
    ei, ej, red, elo, ehi, ref = g
    F, kc, nd, sn, cs, A, L, rhs, trial = ws
    bet, tgt = nudge
    diag = bet if kind == NUDGE_LINEAR else nd
    if not damped:
        L = A  # undamped runs factor in place (−J̃ is not needed again)
    th0 = th[ref]
    for i in range(n):
        th[i] -= th0
    _coupling_field(ei, ej, F, sn, cs, kc, w, kk, th, ref, reuse)
    _nudge_field(F, nd, bet, tgt, th, kind)
    res, nrm = _residual(F, ref, damped)
    floor = stop.floor
    l2 = damped and kind == NUDGE_NONE
    tol = stop.tol
    it = 0
    while it < stop.max_iter:
        if (nrm <= tol * tol) if l2 else (res <= tol):
            return True, it
        _assemble(red, ref, elo, ehi, kc, diag, A, kind)
        for i in range(n):
            if i != ref:
                rhs[red[i]] = F[i]
        if cholesky(A, L, 0.0):
            _cholesky_solve(L, rhs)
        elif damped:
            _lu_solve(A, rhs, L)
        else:
            return False, it
        big = 0.0
        for p in range(rhs.shape[0]):
            big = max(big, abs(rhs[p]))
        scale = 1.0 if big <= pol.trust_rad else pol.trust_rad / big
        it += 1
        if not damped:
            for i in range(n):
                if i != ref:
                    th[i] += scale * rhs[red[i]]
            if big <= pol.step_done_rad:
                # quadratic convergence: the residual after this step is O(K·|s|²), below
                # the tolerance, so the extra residual evaluation is skipped
                return True, it
            if it < stop.max_iter:
                _coupling_field(ei, ej, F, sn, cs, kc, w, kk, th, ref, False)
                _nudge_field(F, nd, bet, tgt, th, kind)
                res, nrm = _residual(F, ref, False)
            continue
        alpha = 1.0
        rt = nt = 0.0
        for _ls in range(pol.line_search_trials):
            for i in range(n):
                trial[i] = th[i] if i == ref else th[i] + alpha * (scale * rhs[red[i]])
            _coupling_field(ei, ej, F, sn, cs, kc, w, kk, trial, ref, False)
            _nudge_field(F, nd, bet, tgt, trial, kind)
            rt, nt = _residual(F, ref, True)
            if nt <= (1.0 - pol.armijo * alpha) * nrm or rt <= floor:
                break
            alpha *= 0.5
        # a failed line search still takes the smallest step (escape plateaus)
        stalled = (nt >= nrm and nrm <= floor * floor * n) if l2 else (rt >= res and res <= floor)
        for i in range(n):
            th[i] = trial[i]
        res, nrm = rt, nt
        if stalled:
            break
    return False, it


@njit(cache=True, inline="always")
def edges_stable(ei, ej, sn, cs):
    """Every edge (ei, ej) has cos Δθ > 0 at the node sines/cosines ``sn``/``cs`` (with a
    connected graph, positive K and a non-negative nudge: −J̃ positive definite, the state is
    stable). Takes arrays, not the Graph and Work groups: it runs once per solve, and each
    array taken out of a group there costs a reference-count update."""
    unstable = False
    for e in range(ei.shape[0]):  # no early exit: the loop vectorises
        i, j = ei[e], ej[e]
        unstable |= cs[j] * cs[i] + sn[j] * sn[i] <= 0.0
    return not unstable


@njit(cache=True)
def _dense_graph(n, K, a, ref):
    """Edge list (i < j, K_ij != 0), couplings a·K_ij and the reduced indexing of a dense K."""
    E = 0
    for i in range(n):
        for j in range(i + 1, n):
            if K[i, j] != 0.0:
                E += 1
    ei = np.empty(E, dtype=np.int64)
    ej = np.empty(E, dtype=np.int64)
    kk = np.empty(E)
    e = 0
    for i in range(n):
        for j in range(i + 1, n):
            if K[i, j] != 0.0:
                ei[e] = i
                ej[e] = j
                kk[e] = a * K[i, j]
                e += 1
    red = np.empty(n, dtype=np.int64)
    r = 0
    for i in range(n):
        red[i] = -1 if i == ref else r
        r += i != ref
    elo = np.empty(E, dtype=np.int64)
    ehi = np.empty(E, dtype=np.int64)
    for e in range(E):
        elo[e] = min(red[ei[e]], red[ej[e]])
        ehi[e] = max(red[ei[e]], red[ej[e]])
    return Graph(ei, ej, red, elo, ehi, ref), kk


@njit(cache=True)
def inputs_ok(w, K, th0, has_th0, beta, tgt, kind, symmetric):
    """Finite ω, K, θ0 (when given), β and targets (when nudged), β >= 0, and K symmetric
    when ``symmetric``: the checks a kernel makes before it solves (else the numpy path)."""
    n = w.shape[0]
    for i in range(n):
        if not math.isfinite(w[i]):
            return False
        for j in range(n):
            if not math.isfinite(K[i, j]) or (symmetric and K[i, j] != K[j, i]):
                return False
        if has_th0 and not math.isfinite(th0[i]):
            return False
        if kind != NUDGE_NONE:
            if not (math.isfinite(beta[i]) and math.isfinite(tgt[i])) or beta[i] < 0:
                return False
    return True


@njit(cache=True)
def solve_small(w, K, a, th0, has_th0, beta, tgt, kind, sign, ref, pol_array):
    """Damped :func:`newton` for one small dense network (the compiled path of
    ``solve_equilibrium``): ``w`` (N,), ``K`` (N, N) symmetric, ``a`` the sine amplitude;
    ``th0`` (N,) used when ``has_th0``; ``beta``/``tgt`` (N,) (ignored for ``kind``
    NUDGE_NONE), ``sign`` the nudge direction ±1; ``pol_array`` the :class:`Newton` of this
    solve (its tol, max_iter) packed by :func:`policy_array`. Returns (status, θ (N,) with
    θ_ref = 0, −J̃ at θ (N−1, N−1, lower triangle), residual, iterations, converged, Cholesky
    of −J̃ − shift·I succeeded, shift); only status is meaningful unless it is STATUS_OK (a
    failed input check: take numpy)."""
    pol = policy_from_array(pol_array)
    n = w.shape[0]
    m = n - 1
    th = np.zeros(n)
    if not inputs_ok(w, K, th0, has_th0, beta, tgt, kind, True):
        return STATUS_FALLBACK, th, np.empty((m, m)), 0.0, 0, False, False, 0.0
    g, kk = _dense_graph(n, K, a, ref)
    bet = np.zeros(n)
    tg = np.zeros(n)
    wmax = 0.0
    krow = 0.0  # max row sum of |K| (nudged floor) and of |aK| (un-nudged floor)
    karow = 0.0
    bmax = 0.0
    tmax = 0.0
    for i in range(n):
        wmax = max(wmax, abs(w[i]))
        r = 0.0
        ra = 0.0
        for j in range(n):
            r += abs(K[i, j])
            ra += abs(a * K[i, j])
        krow = max(krow, r)
        karow = max(karow, ra)
        if kind != NUDGE_NONE:
            bet[i] = beta[i] * sign
            tg[i] = tgt[i]
            bmax = max(bmax, abs(bet[i]))
            tmax = max(tmax, abs(tg[i]))
        if has_th0:
            th[i] = th0[i]
    if kind != NUDGE_NONE:
        scale = 1.0 + wmax + krow + bmax * (1.0 + tmax)
    else:
        scale = 1.0 + wmax + karow
    floor = pol.floor_factor * EPS * scale * math.sqrt(n)
    nudge = Nudge(bet, tg)
    ws = make_work(n, kk.shape[0])
    stop = Stop(pol.tol, floor, pol.max_iter)
    _, it = newton(g, ws, w, kk, th, nudge, kind, pol, stop, False, True)
    big = 0.0
    for i in range(n):
        big = max(big, abs(th[i]))
    if big >= math.pi:  # wrap only when needed (wrapping rounds)
        for i in range(n):
            if i != ref:
                th[i] = wrap(th[i])
    _coupling_field(g.ei, g.ej, ws.F, ws.sn, ws.cs, ws.kc, w, kk, th, ref, False)
    _nudge_field(ws.F, ws.nd, bet, tg, th, kind)
    res, _ = _residual(ws.F, ref, False)
    converged = res <= max(pol.tol, floor)
    diag = bet if kind == NUDGE_LINEAR else ws.nd
    _assemble(g.red, ref, g.elo, g.ehi, ws.kc, diag, ws.A, kind)
    amax = 0.0
    for i in range(m):
        for j in range(i + 1):
            amax = max(amax, abs(ws.A[i, j]))
    shift = pol.stability_shift * (amax + 1e-300)
    chol_ok = cholesky(ws.A, ws.L, shift)
    for i in range(m):  # the full symmetric matrix for the caller
        for j in range(i + 1, m):
            ws.A[i, j] = ws.A[j, i]
    th[ref] = 0.0
    return STATUS_OK, th, ws.A, res, it, converged, chol_ok, shift
