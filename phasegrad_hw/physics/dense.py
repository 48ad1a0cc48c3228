"""Dense damped Newton on the reduced system, one network or a batch (B, N)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import lapack

from phasegrad_hw.physics.coupling import _EPS, Array, CouplingFunction, NudgeKind, wrap
from phasegrad_hw.physics.result import Equilibrium

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


class _DenseModel:
    """F̃ and −J̃ of the reduced system (reference at index 0) for (…, N) phases.

    For H = a·sin the N² trigonometric evaluations are avoided with
    sin(θ_j − θ_i) = s_j c_i − c_j s_i and cos(θ_j − θ_i) = c_i c_j + s_i s_j, so one Newton
    iteration is two matrix–vector products, one outer product and one factorisation.
    """

    def __init__(
        self,
        w: Array,
        K: Array,
        coupling: CouplingFunction,
        bet: Array | None,
        tgt: Array | None,
        nudge: NudgeKind,
        free: bool = False,
    ) -> None:
        self.free = free
        self.lo = 0 if free else 1  # first state entry Newton updates (0: Ω in slot 0)
        self.w, self.K, self.coupling = w, K, coupling
        self.bet, self.tgt, self.nudge = bet, tgt, nudge
        self.fast = len(coupling.harmonics) == 1 and coupling.is_odd
        self.Ka = K * coupling.harmonics[0] if self.fast else K
        n = w.shape[-1]
        self.diag = np.arange(n - 1)
        kb = np.abs(K).sum(axis=-1).max(axis=-1)
        scale = 1.0 + np.abs(w).max(axis=-1) + kb
        if bet is not None and tgt is not None:
            scale = scale + np.abs(bet).max(axis=-1) * (1.0 + np.abs(tgt).max(axis=-1))
        self.floor = 64.0 * _EPS * scale * np.sqrt(n)  # rounding floor of F̃

    def subset(self, idx: NDArray[np.intp]) -> _DenseModel:
        m = object.__new__(_DenseModel)
        m.w, m.coupling, m.nudge, m.fast = self.w[idx], self.coupling, self.nudge, self.fast
        m.K = self.K[idx] if self.K.ndim == 3 else self.K
        m.Ka = self.Ka[idx] if self.Ka.ndim == 3 else self.Ka
        m.bet = None if self.bet is None else self.bet[idx]
        m.tgt = None if self.tgt is None else self.tgt[idx]
        m.diag, m.floor = self.diag, self.floor[idx]
        m.free, m.lo = self.free, self.lo
        return m

    def force(self, th: Array | None, exact: bool = False) -> tuple[Array, tuple[Array, ...]]:
        """F̃ (…, N−1) and a cache for :meth:`neg_jacobian` at the same θ (None: θ = 0).

        ``exact`` evaluates H on the N² phase differences (no cancellation; used for small N
        and to polish the last iterations); otherwise H = a·sin uses the product formulas.
        """
        if self.free:  # state x: slot 0 holds Ω, θ_0 = 0
            assert th is not None
            x = th
            th = x.copy()
            th[..., 0] = 0.0
            G, cache = self._force_full(th, exact)
            if self.bet is not None and self.tgt is not None:
                # nudge relative to the reference: its reaction acts on the reference, so the
                # net nudge force is zero and symmetric networks keep Ω = 0 (pinned = free)
                d = self.tgt[..., 1:] - th[..., 1:]
                nf = self.bet[..., 1:] * (d if self.nudge == "linear" else np.sin(d))
                G[..., 0] -= nf.sum(axis=-1)
            return G - x[..., :1], cache
        F, cache = self._force_full(th, exact)
        return F[..., 1:], cache

    def _force_full(self, th: Array | None, exact: bool) -> tuple[Array, tuple[Array, ...]]:
        if th is None:  # θ = 0: H(0) = 0 for odd H
            if not self.coupling.is_odd:
                return self._force_full(np.zeros(self.w.shape), exact)
            F = self.w
            cache: tuple[Array, ...] = ()
            if self.bet is not None:
                assert self.tgt is not None
                d = self.tgt
                F = F + self.bet * (d if self.nudge == "linear" else np.sin(d))
            return F, cache
        if self.fast and not exact:
            s, c = np.sin(th), np.cos(th)
            Ks = (self.Ka @ s[..., None])[..., 0]
            Kc = (self.Ka @ c[..., None])[..., 0]
            F = self.w + c * Ks - s * Kc
            cache = (s, c)
        else:
            D = th[..., None, :] - th[..., :, None]
            if self.fast:
                F = self.w + (self.Ka * np.sin(D)).sum(axis=-1)
            else:
                F = self.w + (self.K * self.coupling.value(D)).sum(axis=-1)
            cache = (D,)
        if self.bet is not None:
            assert self.tgt is not None
            d = self.tgt - th
            F = F + self.bet * (d if self.nudge == "linear" else np.sin(d))
        return F, cache

    def neg_jacobian(self, th: Array | None, cache: tuple[Array, ...]) -> Array:
        """Newton matrix −∂F̃/∂x: −J̃ (…, N−1, N−1), the reduced weighted Laplacian plus the
        nudge's diagonal; in free mode (…, N, N): −J with its θ_0 column replaced by ∂/∂Ω = 1."""
        if self.free:
            A = self.neg_full(th, cache)
            if self.bet is not None and self.tgt is not None and th is not None:
                d = self.tgt[..., 1:] - th[..., 1:]
                nd = -self.bet[..., 1:] * (1.0 if self.nudge == "linear" else np.cos(d))
                A[..., 0, 1:] += nd  # −∂(−Σ_j n_j)/∂θ_j = ∂n_j/∂θ_j
            A[..., :, 0] = 1.0
            return A
        if len(cache) == 2:
            s, c = cache
            C = c[..., :, None] * c[..., None, :]
            C += s[..., :, None] * s[..., None, :]
            Wm = self.Ka * C
        elif len(cache) == 1:
            Wm = (
                self.Ka * np.cos(cache[0])
                if self.fast
                else self.K * self.coupling.derivative(cache[0])
            )
        else:  # θ = 0
            Wm = self.K * float(self.coupling.derivative(0.0))
        d = Wm.sum(axis=-1) - np.diagonal(Wm, axis1=-2, axis2=-1)
        if self.bet is not None:
            assert self.tgt is not None
            t = np.zeros(self.w.shape) if th is None else th
            d = d + (self.bet if self.nudge == "linear" else self.bet * np.cos(self.tgt - t))
        A = -Wm[..., 1:, 1:]
        A[..., self.diag, self.diag] = d[..., 1:]
        return A

    def neg_full(self, x: Array | None, cache: tuple[Array, ...]) -> Array:
        """−J (…, N, N) of the full system at θ (θ_0 = 0)."""
        if len(cache) == 2:
            s, c = cache
            C = c[..., :, None] * c[..., None, :]
            C += s[..., :, None] * s[..., None, :]
            Wm = self.Ka * C
        elif len(cache) == 1:
            Wm = (
                self.Ka * np.cos(cache[0])
                if self.fast
                else self.K * self.coupling.derivative(cache[0])
            )
        else:
            Wm = self.K * float(self.coupling.derivative(0.0))
        d = Wm.sum(axis=-1) - np.diagonal(Wm, axis1=-2, axis2=-1)
        if self.bet is not None:
            assert self.tgt is not None
            t = np.zeros(self.w.shape) if x is None else x.copy()
            t[..., 0] = 0.0
            d = d + (self.bet if self.nudge == "linear" else self.bet * np.cos(self.tgt - t))
        A = -Wm
        n = A.shape[-1]
        A[..., np.arange(n), np.arange(n)] = d
        return A

    def stability_matrix(self, x: Array, cache: tuple[Array, ...]) -> Array:
        """−(Jacobian of the relative-phase dynamics) (…, N−1, N−1).

        Pinned mode: −J̃. Free mode (asymmetric K or non-odd H): relative phases
        φ_i = θ_i − θ_0 obey dφ_i/dt = F_i − F_0, so −J_φ = (−J)[1:, 1:] − (−J)[0, 1:].
        """
        if not self.free:
            return self.neg_jacobian(x, cache)
        A = self.neg_full(x, cache)
        return A[..., 1:, 1:] - A[..., :1, 1:]


def _solve_single(A: Array, b: Array, symmetric: bool) -> Array:
    """Solve A x = b (one small dense system) through LAPACK with little overhead."""
    if symmetric:
        _, x, info = lapack.dposv(A, b)
        if info == 0:
            return np.asarray(x)
    _, _, x, info = lapack.dgesv(A, b)
    if info == 0 and np.all(np.isfinite(x)):
        return np.asarray(x)
    return np.asarray(np.linalg.lstsq(A, b, rcond=None)[0])


def _newton_small_sin(
    w: Array, Ka: Array, th0: Array | None, tol: float, max_iter: int, symmetric: bool
) -> Equilibrium:
    """Damped Newton for one small un-nudged network with H = a·sin (reference at index 0).

    Same algorithm as :func:`_newton_single`, written with as few numpy calls as possible:
    on the N−1 non-reference rows, F̃_i = ω_i + Σ_j aK_ij sin(θ_j − θ_i) and
    −J̃ = diag(Σ_j W_ij − aK_ii) − W, W_ij = aK_ij cos(θ_j − θ_i), are formed in one pass
    (exact sin/cos of each difference, no product-formula cancellation), so the Jacobian at
    the accepted point — needed for the next step and for the stability check — is free.
    """
    n = w.shape[0]
    w1 = w[1:]
    Ka1 = Ka[1:]
    kdiag1 = np.diagonal(Ka1, offset=1)  # a K_ii (cos 0 = 1), excluded from the row sums
    floor = (
        64.0
        * _EPS
        * (1.0 + float(np.abs(w).max()) + float(np.abs(Ka).sum(axis=1).max()))
        * np.sqrt(n)
    )

    def evaluate(t: Array) -> tuple[Array, Array]:
        D = t[None, :] - t[1:, None]
        Wm = Ka1 * np.cos(D)
        A = -Wm[:, 1:]
        A.flat[::n] = _add(Wm, axis=1) - kdiag1
        return w1 + _add(Ka1 * np.sin(D), axis=1), A

    if th0 is None:
        th = np.zeros(n)
        F = w1
        A = -Ka1[:, 1:]
        A.flat[::n] = _add(Ka1, axis=1) - kdiag1
    else:
        th = th0 - th0[0]
        F, A = evaluate(th)
    nrm = float(F @ F)
    tol2 = tol * tol
    it = 0
    while nrm > tol2 and it < max_iter:
        step = _solve_single(A, F, symmetric)  # (−J̃) s = F̃
        if float(step @ step) > 1.0:
            big = float(_max(np.abs(step)))
            if big > 1.0:
                step = step / big  # trust region: ≤ 1 rad per step
        alpha = 1.0
        for _ls in range(13):
            trial = th.copy()
            trial[1:] += step if alpha == 1.0 else alpha * step
            Ft, At = evaluate(trial)
            nt = float(Ft @ Ft)
            if nt <= (1.0 - 1e-4 * alpha) * nrm or float(_max(np.abs(Ft))) <= floor:
                break
            alpha *= 0.5
        it += 1
        stalled = nt >= nrm and nrm <= floor * floor * n
        th, F, A, nrm = trial, Ft, At, nt
        if stalled:
            break
    if float(_max(np.abs(th))) >= np.pi:  # wrap only when needed (wrapping rounds)
        th[1:] = wrap(th[1:])
        F, A = evaluate(th)
    res = float(_max(np.abs(F)))
    stable, margin = _stability_single(A, symmetric)
    return Equilibrium(
        th,
        np.asarray(res),
        np.asarray(it),
        np.asarray(res <= max(tol, floor)),
        np.asarray(stable),
        margin,
    )


_add = np.add.reduce
_max = np.maximum.reduce


def _stability_single(A: Array, symmetric: bool) -> tuple[bool, Array | Callable[[], Array]]:
    """(stable, margin) for one −J̃; see :func:`_stability`."""
    thresh = 1e-10 * (float(_max(np.abs(A), axis=None)) + 1e-300)
    if symmetric:
        S = A.copy()
        S.flat[:: A.shape[0] + 1] -= thresh
        info = lapack.dpotrf(S)[1]
        stable = info == 0 or bool(np.linalg.eigvalsh(A)[0] > thresh)

        def margin() -> Array:
            return np.asarray(np.linalg.eigvalsh(A)[0])

        return stable, margin
    mg = float(np.linalg.eigvals(A).real.min())
    return mg > thresh, np.asarray(mg)


def _newton_single(
    model: _DenseModel, th0: Array | None, tol: float, max_iter: int, symmetric: bool
) -> Equilibrium:
    """Damped Newton for one network (lean: a handful of numpy calls per iteration).

    Small networks (N <= 64) evaluate H on all phase differences; larger ones iterate with the
    product formulas and switch to the exact evaluation once the residual is small.
    """
    n = model.w.shape[-1]
    exact = n <= 64 or not model.fast
    floor = float(model.floor)
    lo = model.lo
    th = np.zeros(n) if th0 is None else th0 - th0[0]
    F, cache = model.force(th0 if th0 is None and not model.free else th, exact)
    res = float(np.abs(F).max())
    it = 0
    while it < max_iter:
        if res <= tol:
            if exact:
                break
            exact = True
            F, cache = model.force(th, True)
            res = float(np.abs(F).max())
            continue
        A = model.neg_jacobian(th, cache) if cache else model.neg_jacobian(None, cache)
        step = _solve_single(A, F, symmetric)  # J̃ s = −F̃  ⇔  (−J̃) s = F̃
        big = float(np.abs(step[1 - lo :]).max())
        if big > 1.0:
            step = step / big  # trust region: ≤ 1 rad per step
        norm0 = float(F @ F)
        alpha = 1.0
        for _ls in range(13):
            trial = th.copy()
            trial[lo:] += alpha * step
            Ft, ct = model.force(trial, exact)
            rt = float(np.abs(Ft).max())
            if float(Ft @ Ft) <= (1.0 - 1e-4 * alpha) * norm0 or rt <= floor:
                break
            alpha *= 0.5
        # a failed line search still takes the smallest step (escape plateaus)
        it += 1
        stalled = rt >= res and res <= floor
        th, F, cache, res = trial, Ft, ct, rt
        if stalled:
            if exact:
                break
            exact = True
            F, cache = model.force(th, True)
            res = float(np.abs(F).max())
    if float(np.abs(th[1:]).max()) >= np.pi:  # wrap only when needed (wrapping rounds)
        th[1:] = wrap(th[1:])
        F, cache = model.force(th, True)
        res = float(np.abs(F).max())
    elif len(cache) != 1:
        F, cache = model.force(th, True)
        res = float(np.abs(F).max())
    converged = res <= max(tol, floor)
    A = model.stability_matrix(th, cache)
    stable, margin = _stability(A[None], symmetric and not model.free)
    th[0] = 0.0
    return Equilibrium(
        th,
        np.asarray(res),
        np.asarray(it),
        np.asarray(converged),
        stable[0],
        (lambda: margin()[0]) if callable(margin) else margin[0],
    )


def _newton_batched(
    model: _DenseModel, th0: Array, tol: float, max_iter: int, symmetric: bool
) -> Equilibrium:
    """Damped Newton over a batch (B, N); only unconverged samples keep iterating."""
    B, N = th0.shape
    th = th0 - th0[:, :1]
    lo = model.lo
    iters = np.zeros(B, dtype=np.int64)
    F, cache = model.force(th)
    res = np.abs(F).max(axis=1)
    active = res > tol
    for _ in range(max_iter):
        if not active.any():
            break
        a = np.flatnonzero(active)
        full = len(a) == B
        m = model if full else model.subset(a)
        tha = th if full else th[a]
        Fa = F if full else F[a]
        ca = cache if full else tuple(x[a] for x in cache)
        A = m.neg_jacobian(tha, ca)
        step = _batched_solve(A, Fa)
        big = np.abs(step[:, 1 - lo :]).max(axis=1, keepdims=True)
        step *= np.minimum(1.0, 1.0 / np.maximum(big, 1e-300))
        norm0 = np.einsum("bi,bi->b", Fa, Fa)
        trial = tha.copy()
        trial[:, lo:] += step
        Ft, ct = m.force(trial)
        good = np.einsum("bi,bi->b", Ft, Ft) <= (1.0 - 1e-4) * norm0
        good |= np.abs(Ft).max(axis=1) <= m.floor
        if not good.all():  # backtracking, only for the samples whose full step failed
            p = np.flatnonzero(~good)
            alpha = 1.0
            for ls in range(12):
                alpha *= 0.5
                mp = m.subset(p)
                tp = tha[p].copy()
                tp[:, lo:] += alpha * step[p]
                Fp, cp = mp.force(tp)
                ok = np.einsum("bi,bi->b", Fp, Fp) <= (1.0 - 1e-4 * alpha) * norm0[p]
                ok |= np.abs(Fp).max(axis=1) <= mp.floor
                if ls == 11:
                    ok[:] = True  # a failed line search still takes the smallest step
                q = p[ok]
                trial[q] = tp[ok]
                Ft[q] = Fp[ok]
                for x, y in zip(ct, cp, strict=True):
                    x[q] = y[ok]
                p = p[~ok]
                if len(p) == 0:
                    break
        new_res = np.abs(Ft).max(axis=1)
        stalled = (new_res >= res[a]) & (res[a] <= model.floor[a])
        if full:
            th, F, cache = trial, Ft, ct
        else:
            th[a] = trial
            F[a] = Ft
            for x, y in zip(cache, ct, strict=True):
                x[a] = y
        res[a] = new_res
        iters[a] += 1
        active[a] = (new_res > tol) & ~stalled
    th[:, 1:] = wrap(th[:, 1:])
    F, cache = model.force(th, True)
    res = np.abs(F).max(axis=1)
    converged = res <= np.maximum(tol, model.floor)
    stable, margin = _stability(model.stability_matrix(th, cache), symmetric and not model.free)
    th[:, 0] = 0.0
    return Equilibrium(th, res, iters, converged, stable, margin)


def _batched_solve(A: Array, b: Array) -> Array:
    try:
        return np.asarray(np.linalg.solve(A, b[..., None])[..., 0], dtype=np.float64)
    except np.linalg.LinAlgError:
        out = np.empty_like(b)
        for k in range(len(b)):
            out[k] = np.linalg.lstsq(A[k], b[k], rcond=None)[0]
        return out


def _stability(A: Array, symmetric: bool) -> tuple[NDArray[np.bool_], Array | Callable[[], Array]]:
    """(stable, margin) for −J̃ stacks A (B, n, n); stable iff min eigenvalue > 1e-10·max|A|.

    Symmetric A: a Cholesky factorisation of A − 1e-10·max|A|·I decides (the margin, the
    smallest eigenvalue, is computed lazily); otherwise the eigenvalues of A are computed.
    """
    scale = np.abs(A).max(axis=(1, 2)) + 1e-300
    thresh = 1e-10 * scale
    if symmetric:
        shifted = A - thresh[:, None, None] * np.eye(A.shape[-1])
        try:
            np.linalg.cholesky(shifted)
            stable = np.ones(len(A), dtype=bool)
        except np.linalg.LinAlgError:
            stable = np.linalg.eigvalsh(A)[:, 0] > thresh

        def margin() -> Array:
            return np.asarray(np.linalg.eigvalsh(A)[:, 0])

        return stable, margin
    mg = np.linalg.eigvals(A).real.min(axis=1)
    return mg > thresh, mg
