# mypy: disallow-untyped-defs=False
"""Optional compiled kernels for :mod:`phasegrad_hw.engine.ensemble` (used when numba is installed).

They implement exactly the engine's fast path — undamped Newton on the edge list from a warm
start (at most 12 iterations, 1 rad trust region, tolerance max(1e-12, rounding floor)),
stability accepted when every edge has cos Δθ > 0 (a Newton step below 1e-7 rad counts as
converged: the next residual is O(K·1e-14)) — and the engine's one-sided online update
(H = sin, linear nudge). A member whose fast solve fails is reported (status 3) and left
untouched, so the engine redoes its step on the robust numpy/physics path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections import namedtuple

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

TWO_PI = 2.0 * math.pi
FAST_ITERS = 12
STEP_DONE = 1e-7  # Newton step (rad) below which the next residual is O(K·1e-14)


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


# preallocated per-call workspace (no heap allocation per member step)
_Work = namedtuple("_Work", "red F kc J rhs w wc bet tgt fth pth gout sn cs dth elo ehi")


@njit(cache=True)
def _workspace(n, ei, ej, n_out, ref, outputs, beta):
    E = ei.shape[0]
    red = np.empty(n, dtype=np.int64)
    a = 0
    for i in range(n):
        if i == ref:
            red[i] = -1
        else:
            red[i] = a
            a += 1
    # per edge, its reduced indices ordered (elo <= ehi; -1 for the reference): −J̃ is
    # assembled in its lower triangle only, the part the Cholesky factorisation reads
    elo = np.empty(E, dtype=np.int64)
    ehi = np.empty(E, dtype=np.int64)
    for e in range(E):
        p, q = red[ei[e]], red[ej[e]]
        elo[e] = min(p, q)
        ehi[e] = max(p, q)
    bet = np.zeros(n)
    for o in range(n_out):
        bet[outputs[o]] = beta
    return _Work(
        red,
        np.empty(n),
        np.empty(E),
        np.empty((n - 1, n - 1)),
        np.empty(n - 1),
        np.empty(n),
        np.empty(n),
        bet,
        np.zeros(n),
        np.empty(n),
        np.empty(n),
        np.empty(n_out),
        np.empty(n),
        np.empty(n),
        np.empty(n),
        elo,
        ehi,
    )


@njit(cache=True)
def _wrap(x: float) -> float:
    y = x + math.pi
    if 0.0 <= y < TWO_PI:  # y % 2π == y exactly: skip the (slow) floating modulo
        return y - math.pi
    return (y % TWO_PI) - math.pi


@njit(cache=True)
def _tol(wc, kk):
    """Residual tolerance max(1e-12, rounding floor) for centred frequencies wc, couplings kk."""
    n = wc.shape[0]
    ksum = 0.0
    wmax = 0.0
    for e in range(kk.shape[0]):
        ksum += kk[e]
    for i in range(n):
        wmax = max(wmax, abs(wc[i]))
    floor = 64.0 * 2.220446049250313e-16 * (1.0 + wmax + 2.0 * ksum) * math.sqrt(n)
    return max(1e-12, floor)


@njit(cache=True, inline="always")
def _newton(
    wc, kk, ei, ej, ref, th, bet, tgt, nudged, sn, cs, reuse, tol, red, F, kc, J, rhs, elo, ehi
):
    """In place on th (N,), reference pinned; returns True if converged and stable.

    ``sn``/``cs`` (N,) receive the node sines/cosines of the last residual evaluation; with
    ``reuse`` the first evaluation takes them as given (the nudged solve starts where the
    free solve ended, so its trigonometry is already known). ``tol`` is :func:`_tol` of
    (wc, kk); ``red`` … ``ehi`` are the :class:`_Work` arrays of those names (passed singly:
    this is inlined into the member step, the hot loop)."""
    n = wc.shape[0]
    m = n - 1
    E = kk.shape[0]
    th0 = th[ref]
    for i in range(n):
        th[i] -= th0
    done = False
    for it in range(FAST_ITERS):
        for i in range(n):
            F[i] = wc[i]
            if it == 0 and reuse:
                continue
            if i == ref:  # pinned at 0
                sn[i] = 0.0
                cs[i] = 1.0
            else:
                sn[i], cs[i] = _sincos(th[i])
        for e in range(E):
            i, j = ei[e], ej[e]
            # sin(θj − θi) and cos(θj − θi) from per-node sines/cosines (N, not E, trig calls)
            s = kk[e] * (sn[j] * cs[i] - cs[j] * sn[i])
            kc[e] = kk[e] * (cs[j] * cs[i] + sn[j] * sn[i])
            F[i] += s
            F[j] -= s
        if nudged:
            for i in range(n):
                F[i] += bet[i] * (tgt[i] - th[i])
        res = 0.0
        for i in range(n):
            if i != ref:
                res = max(res, abs(F[i]))
        done = res <= tol
        if done:
            break
        # A = −J̃ (reduced weighted Laplacian + nudge): symmetric positive definite at a
        # stable state; Cholesky, and a non-positive pivot sends the member to the robust path
        for p in range(m):  # lower triangle only (all the factorisation reads)
            for q in range(p + 1):
                J[p, q] = 0.0
        for e in range(E):
            c = kc[e]
            p = elo[e]
            q = ehi[e]
            J[q, q] += c
            if p >= 0:
                J[p, p] += c
                J[q, p] -= c
        if nudged:
            for i in range(n):
                if i != ref:
                    J[red[i], red[i]] += bet[i]
        for i in range(n):
            if i != ref:
                rhs[red[i]] = F[i]
        for j in range(m):
            d = J[j, j]
            for q in range(j):
                d -= J[j, q] * J[j, q]
            if d <= 0.0:
                return False
            d = math.sqrt(d)
            J[j, j] = d
            for r in range(j + 1, m):
                acc = J[r, j]
                for q in range(j):
                    acc -= J[r, q] * J[j, q]
                J[r, j] = acc / d
        for r in range(m):  # L z = F
            acc = rhs[r]
            for q in range(r):
                acc -= J[r, q] * rhs[q]
            rhs[r] = acc / J[r, r]
        for r in range(m - 1, -1, -1):  # Lᵀ s = z
            acc = rhs[r]
            for q in range(r + 1, m):
                acc -= J[q, r] * rhs[q]
            rhs[r] = acc / J[r, r]
        big = 0.0
        for p in range(m):
            big = max(big, abs(rhs[p]))
        scale = 1.0 if big <= 1.0 else 1.0 / big
        for i in range(n):
            if i != ref:
                th[i] += scale * rhs[red[i]]
        if big <= STEP_DONE:
            # quadratic convergence: the residual after this step is O(K·|s|²) ≈ 1e-14,
            # below the tolerance, so the extra residual evaluation is skipped
            done = True
            break
    # stability from the last evaluated sines/cosines: exact at θ when the residual test
    # ended the loop, within 1e-7 rad of θ when a tiny step did
    stable = True
    for e in range(E):
        if cs[ej[e]] * cs[ei[e]] + sn[ej[e]] * sn[ei[e]] <= 0.0:
            stable = False
    for i in range(n):
        if i != ref:
            th[i] = _wrap(th[i])
    return done and stable


@njit(cache=True)
def _centre(w, out):
    n = w.shape[0]
    mu = 0.0
    for i in range(n):
        mu += w[i]
    mu /= n
    for i in range(n):
        out[i] = w[i] - mu


@njit(cache=True)
def solve_many(W, k, theta0, ei, ej, ref):
    """Free states (M, N) and ok flags for frequencies W (M, N), couplings k (M, E)."""
    M, n = W.shape
    th = theta0.copy()
    ok = np.zeros(M, dtype=np.bool_)
    ws = _workspace(n, ei, ej, 1, ref, np.zeros(1, dtype=np.int64), 0.0)
    for r in range(M):
        _centre(W[r], ws.wc)
        tol = _tol(ws.wc, k[r])
        ok[r] = _newton(
            ws.wc,
            k[r],
            ei,
            ej,
            ref,
            th[r],
            ws.bet,
            ws.tgt,
            False,
            ws.sn,
            ws.cs,
            False,
            tol,
            ws.red,
            ws.F,
            ws.kc,
            ws.J,
            ws.rhs,
            ws.elo,
            ws.ehi,
        )
    return th, ok


@njit(cache=True, inline="always")
def _member_step(
    b,
    omega,
    coupling,
    warm,
    learn_w,
    learn_k,
    xin,
    yy,
    ei,
    ej,
    ref,
    inputs,
    outputs,
    beta,
    lr_w,
    lr_k,
    clip,
    basin,
    w_lo,
    w_hi,
    k_lo,
    k_hi,
    tmode,
    table,
    margin,
    free_out,
    ws,
):
    """One online step of member b from one sample; warm (N,) is the warm start and receives
    the free state. Returns 0 updated, 2 basin jump, 3 fast path failed (member untouched)."""
    n = omega.shape[1]
    E = coupling.shape[1]
    n_out = outputs.shape[0]
    w, wc, bet, tgt, fth, pth, gout = ws.w, ws.wc, ws.bet, ws.tgt, ws.fth, ws.pth, ws.gout
    sn, cs = ws.sn, ws.cs
    for i in range(n):
        w[i] = omega[b, i]
    for a in range(inputs.shape[0]):
        w[inputs[a]] = xin[a]
    _centre(w, wc)
    for i in range(n):
        fth[i] = warm[i]
    tol = _tol(wc, coupling[b])
    if not _newton(
        wc,
        coupling[b],
        ei,
        ej,
        ref,
        fth,
        bet,
        tgt,
        False,
        sn,
        cs,
        False,
        tol,
        ws.red,
        ws.F,
        ws.kc,
        ws.J,
        ws.rhs,
        ws.elo,
        ws.ehi,
    ):
        return 3
    for o in range(n_out):
        free_out[o] = fth[outputs[o]]
    if tmode == 0:
        for o in range(n_out):
            tgt[outputs[o]] = table[yy, o]
    else:
        oy = fth[outputs[yy]]
        tot = 0.0
        for o in range(n_out):
            if o == yy:
                continue
            r = _wrap(oy - fth[outputs[o]]) + 2.0 * margin
            if tmode == 2 and r < 0.0:
                r = 0.0
            gout[o] = -r
            tot += r
        gout[yy] = tot
        for o in range(n_out):
            tgt[outputs[o]] = _wrap(fth[outputs[o]] - gout[o])
    for i in range(n):
        pth[i] = fth[i]
    if not _newton(
        wc,
        coupling[b],
        ei,
        ej,
        ref,
        pth,
        bet,
        tgt,
        True,
        sn,
        cs,
        True,
        tol,
        ws.red,
        ws.F,
        ws.kc,
        ws.J,
        ws.rhs,
        ws.elo,
        ws.ehi,
    ):
        return 3
    for i in range(n):
        warm[i] = fth[i]
    dth = ws.dth
    jump = 0.0
    for i in range(n):
        dth[i] = _wrap(pth[i] - fth[i])
        jump = max(jump, abs(dth[i]))
    if jump > basin:
        return 2
    for i in range(n):
        if learn_w[b, i] and i != ref:
            g = -dth[i] / beta
            g = min(max(g, -clip), clip)
            omega[b, i] = min(max(omega[b, i] - lr_w * g, w_lo), w_hi)
        elif learn_w[b, i]:
            omega[b, i] = min(max(omega[b, i], w_lo), w_hi)
    for e in range(E):
        if learn_k[b, e]:
            dp = pth[ej[e]] - pth[ei[e]]
            df = fth[ej[e]] - fth[ei[e]]
            g = (math.cos(df) - math.cos(dp)) / beta
            g = min(max(g, -clip), clip)
            coupling[b, e] = min(max(coupling[b, e] - lr_k * g, k_lo), k_hi)
    return 0


@njit(cache=True)
def train_step(
    omega,
    coupling,
    warm,
    learn_w,
    learn_k,
    xin,
    y,
    ei,
    ej,
    ref,
    inputs,
    outputs,
    beta,
    lr_w,
    lr_k,
    clip,
    basin,
    w_lo,
    w_hi,
    k_lo,
    k_hi,
    tmode,
    table,
    margin,
    free_out,
    status,
):
    """One online step for every member (row b uses sample xin[b], y[b]; warm[b] is its warm
    start and receives its free state). status: 0 updated, 2 basin jump, 3 fast path failed
    (member untouched; redo on the robust path)."""
    ws = _workspace(omega.shape[1], ei, ej, outputs.shape[0], ref, outputs, beta)
    for b in range(omega.shape[0]):
        status[b] = _member_step(
            b,
            omega,
            coupling,
            warm[b],
            learn_w,
            learn_k,
            xin[b],
            y[b],
            ei,
            ej,
            ref,
            inputs,
            outputs,
            beta,
            lr_w,
            lr_k,
            clip,
            basin,
            w_lo,
            w_hi,
            k_lo,
            k_hi,
            tmode,
            table,
            margin,
            free_out[b],
            ws,
        )


@njit(cache=True)
def _member_epoch(
    b,
    omega,
    coupling,
    theta_prev,
    cache,
    learn_w,
    learn_k,
    xin_all,
    y_all,
    order,
    ei,
    ej,
    ref,
    inputs,
    outputs,
    beta,
    lr_w,
    lr_k,
    clip,
    basin,
    w_lo,
    w_hi,
    k_lo,
    k_hi,
    tmode,
    table,
    margin,
    free_out,
    status,
    stop,
):
    """One member's online epoch: samples order[b, t] in turn, warm-started from
    ``cache[b, sample]`` (its free state for that sample last epoch) or else its last free
    state. On a fast-path failure the member stops (stop[b] = t, member untouched from that
    step on) so the engine finishes its epoch on the robust path. Members are independent."""
    n = omega.shape[1]
    T = order.shape[1]
    warm = np.empty(n)
    ws = _workspace(n, ei, ej, outputs.shape[0], ref, outputs, beta)
    stop[b] = -1
    for t in range(T):
        smp = order[b, t]
        if math.isnan(cache[b, smp, 0]):
            for i in range(n):
                warm[i] = theta_prev[b, i]
        else:
            for i in range(n):
                warm[i] = cache[b, smp, i]
        st = _member_step(
            b,
            omega,
            coupling,
            warm,
            learn_w,
            learn_k,
            xin_all[smp],
            y_all[smp],
            ei,
            ej,
            ref,
            inputs,
            outputs,
            beta,
            lr_w,
            lr_k,
            clip,
            basin,
            w_lo,
            w_hi,
            k_lo,
            k_hi,
            tmode,
            table,
            margin,
            free_out[b, t],
            ws,
        )
        status[b, t] = st
        if st == 3:
            stop[b] = t
            break
        for i in range(n):
            theta_prev[b, i] = warm[i]
            cache[b, smp, i] = warm[i]


@njit(cache=True)
def train_epoch(
    omega,
    coupling,
    theta_prev,
    cache,
    learn_w,
    learn_k,
    xin_all,
    y_all,
    order,
    ei,
    ej,
    ref,
    inputs,
    outputs,
    beta,
    lr_w,
    lr_k,
    clip,
    basin,
    w_lo,
    w_hi,
    k_lo,
    k_hi,
    tmode,
    table,
    margin,
    free_out,
    status,
    stop,
):
    """A whole online epoch for every member, one member after another."""
    for b in range(omega.shape[0]):
        _member_epoch(
            b,
            omega,
            coupling,
            theta_prev,
            cache,
            learn_w,
            learn_k,
            xin_all,
            y_all,
            order,
            ei,
            ej,
            ref,
            inputs,
            outputs,
            beta,
            lr_w,
            lr_k,
            clip,
            basin,
            w_lo,
            w_hi,
            k_lo,
            k_hi,
            tmode,
            table,
            margin,
            free_out,
            status,
            stop,
        )


@njit(cache=True, parallel=True)
def train_epoch_parallel(
    omega,
    coupling,
    theta_prev,
    cache,
    learn_w,
    learn_k,
    xin_all,
    y_all,
    order,
    ei,
    ej,
    ref,
    inputs,
    outputs,
    beta,
    lr_w,
    lr_k,
    clip,
    basin,
    w_lo,
    w_hi,
    k_lo,
    k_hi,
    tmode,
    table,
    margin,
    free_out,
    status,
    stop,
):
    """:func:`train_epoch` with members spread over threads (identical results: members are
    independent and each runs sequentially)."""
    for b in prange(omega.shape[0]):
        _member_epoch(
            b,
            omega,
            coupling,
            theta_prev,
            cache,
            learn_w,
            learn_k,
            xin_all,
            y_all,
            order,
            ei,
            ej,
            ref,
            inputs,
            outputs,
            beta,
            lr_w,
            lr_k,
            clip,
            basin,
            w_lo,
            w_hi,
            k_lo,
            k_hi,
            tmode,
            table,
            margin,
            free_out,
            status,
            stop,
        )
