"""Dense path: damped Newton on the reduced system for one network or a batch (B, N).

One implementation for both: a single network is a batch of one. The iteration (trust
region, Armijo backtracking, stall test, tolerances) is the policy's
(:mod:`phasegrad_hw.physics.policy`, docs/design.md §2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import lapack

from phasegrad_hw.physics.coupling import Array, CouplingFunction, NudgeKind, diagonal_view, wrap
from phasegrad_hw.physics.policy import (
    NEWTON,
    NewtonPolicy,
    active_rows,
    backtrack,
    stalled,
    trust_region,
)
from phasegrad_hw.physics.result import Equilibrium

log = logging.getLogger(__name__)

_EXACT_MAX_N = 64  # one network up to this size evaluates H on every phase difference


class _DenseModel:
    """F̃ and −J̃ of the reduced system (reference at index 0) for (B, N) phases.

    For H = a·sin the N² trigonometric evaluations are avoided with
    sin(θ_j − θ_i) = s_j c_i − c_j s_i and cos(θ_j − θ_i) = c_i c_j + s_i s_j, so one Newton
    iteration is two matrix–vector products, one outer product and one factorisation; the
    exact evaluation on the phase differences (no cancellation) polishes the result.
    """

    def __init__(
        self,
        w: Array,
        K: Array,
        coupling: CouplingFunction,
        nudge: tuple[Array, Array, NudgeKind] | None,
        free: bool = False,
        policy: NewtonPolicy = NEWTON,
    ) -> None:
        self.free = free
        self.lo = 0 if free else 1  # first state entry Newton updates (0: Ω in slot 0)
        self.w, self.K, self.coupling = w, K, coupling
        self.bet: Array | None = None
        self.tgt: Array | None = None
        self.nudge: NudgeKind = "linear"
        if nudge is not None:
            self.bet, self.tgt, self.nudge = nudge
        self.fast = len(coupling.harmonics) == 1 and coupling.is_odd
        self.Ka = K * coupling.harmonics[0] if self.fast else K
        n = w.shape[-1]
        kb = np.abs(K).sum(axis=-1).max(axis=-1)
        scale = 1.0 + np.abs(w).max(axis=-1) + kb  # (B,): w is (B, N)
        if self.bet is not None and self.tgt is not None:
            scale = scale + np.abs(self.bet).max(axis=-1) * (1.0 + np.abs(self.tgt).max(axis=-1))
        self.floor = np.asarray(policy.rounding_floor(scale, n), dtype=np.float64)

    def subset(self, idx: NDArray[np.intp]) -> _DenseModel:
        m = object.__new__(_DenseModel)
        m.w, m.coupling, m.nudge, m.fast = self.w[idx], self.coupling, self.nudge, self.fast
        m.K = self.K[idx] if self.K.ndim == 3 else self.K
        m.Ka = self.Ka[idx] if self.Ka.ndim == 3 else self.Ka
        m.bet = None if self.bet is None else self.bet[idx]
        m.tgt = None if self.tgt is None else self.tgt[idx]
        m.floor = self.floor[idx]
        m.free, m.lo = self.free, self.lo
        return m

    def force(self, x: Array, exact: bool) -> tuple[Array, tuple[Array, ...]]:
        """F̃ (B, N−1) — in free mode (B, N): F − Ω — and a cache for :meth:`neg_jacobian`.

        ``exact`` evaluates H on the N² phase differences (cache (D,)); otherwise H = a·sin
        uses the product formulas (cache (s, c)).
        """
        if not self.free:
            F, cache = self._force_full(x, exact)
            return F[..., 1:], cache
        th = x.copy()  # state x: slot 0 holds Ω, θ_0 = 0
        th[..., 0] = 0.0
        G, cache = self._force_full(th, exact)
        if self.bet is not None and self.tgt is not None:
            # nudge relative to the reference: its reaction acts on the reference, so the
            # net nudge force is zero and symmetric networks keep Ω = 0 (pinned = free)
            d = self.tgt[..., 1:] - th[..., 1:]
            nf = self.bet[..., 1:] * (d if self.nudge == "linear" else np.sin(d))
            G[..., 0] -= nf.sum(axis=-1)
        return G - x[..., :1], cache

    def _force_full(self, th: Array, exact: bool) -> tuple[Array, tuple[Array, ...]]:
        cache: tuple[Array, ...]
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
        if self.bet is not None and self.tgt is not None:
            d = self.tgt - th
            F = F + self.bet * (d if self.nudge == "linear" else np.sin(d))
        return F, cache

    def neg_full(self, x: Array, cache: tuple[Array, ...]) -> Array:
        """−J (B, N, N) of the full system at θ (θ_0 = 0), nudge diagonal included."""
        if len(cache) == 2:
            s, c = cache
            C = c[..., :, None] * c[..., None, :]
            C += s[..., :, None] * s[..., None, :]
            Wm = self.Ka * C
        elif self.fast:
            Wm = self.Ka * np.cos(cache[0])
        else:
            Wm = self.K * self.coupling.derivative(cache[0])
        d = Wm.sum(axis=-1) - np.diagonal(Wm, axis1=-2, axis2=-1)
        if self.bet is not None and self.tgt is not None:
            t = x.copy()
            t[..., 0] = 0.0
            d = d + (self.bet if self.nudge == "linear" else self.bet * np.cos(self.tgt - t))
        A = np.negative(Wm, out=Wm)  # (Wm is a fresh product)
        diagonal_view(A)[...] = d
        return A

    def neg_jacobian(self, x: Array, cache: tuple[Array, ...]) -> Array:
        """Newton matrix −∂F̃/∂x: −J̃ (B, N−1, N−1), the reduced weighted Laplacian plus the
        nudge's diagonal; in free mode (B, N, N): −J with its θ_0 column replaced by ∂/∂Ω = 1."""
        A = self.neg_full(x, cache)
        if not self.free:
            return A[..., 1:, 1:]
        if self.bet is not None and self.tgt is not None:
            d = self.tgt[..., 1:] - x[..., 1:]
            nd = -self.bet[..., 1:] * (1.0 if self.nudge == "linear" else np.cos(d))
            A[..., 0, 1:] += nd  # −∂(−Σ_j n_j)/∂θ_j = ∂n_j/∂θ_j
        A[..., :, 0] = 1.0
        return A

    def stability_matrix(self, x: Array, cache: tuple[Array, ...]) -> Array:
        """−(Jacobian of the relative-phase dynamics) (B, N−1, N−1).

        Pinned mode: −J̃. Free mode (asymmetric K or non-odd H): relative phases
        φ_i = θ_i − θ_0 obey dφ_i/dt = F_i − F_0, so −J_φ = (−J)[1:, 1:] − (−J)[0, 1:].
        """
        A = self.neg_full(x, cache)
        if not self.free:
            return A[..., 1:, 1:]
        return A[..., 1:, 1:] - A[..., :1, 1:]


def _linear_solve(A: Array, b: Array, symmetric: bool) -> Array:
    """Solve A x = b for a stack (B, n, n); one system goes straight to LAPACK (Cholesky
    first when symmetric), a singular one to least squares."""
    if len(A) == 1:
        if symmetric:
            _, x, info = lapack.dposv(A[0], b[0])
            if info == 0:
                return np.asarray(x)[None]
        _, _, x, info = lapack.dgesv(A[0], b[0])
        if info == 0 and np.isfinite(x).all():
            return np.asarray(x)[None]
        return np.asarray(np.linalg.lstsq(A[0], b[0], rcond=None)[0])[None]
    try:
        return np.asarray(np.linalg.solve(A, b[..., None])[..., 0], dtype=np.float64)
    except np.linalg.LinAlgError:
        return np.stack([np.linalg.lstsq(A[k], b[k], rcond=None)[0] for k in range(len(b))])


def stability(
    A: Array, symmetric: bool, policy: NewtonPolicy = NEWTON
) -> tuple[NDArray[np.bool_], Array | Callable[[], Array]]:
    """(stable, margin) for −J̃ stacks A (B, n, n): stable iff the smallest eigenvalue (real
    part) exceeds the policy's shift·max|A|.

    Symmetric A: a Cholesky factorisation of A − shift·I decides (the margin, the smallest
    eigenvalue, is computed lazily); otherwise the eigenvalues of A are computed.
    """
    thresh = np.asarray(policy.stability_threshold(np.abs(A).max(axis=(1, 2))))
    if symmetric:
        shifted = A.copy()  # (contiguous, also for a slice of −J)
        diagonal_view(shifted)[...] -= thresh[:, None]
        if len(A) == 1:  # one matrix: LAPACK directly (info > 0: not positive definite)
            stable = np.array([lapack.dpotrf(shifted[0])[1] == 0])
        else:
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


def newton_dense(
    model: _DenseModel,
    th0: Array,
    *,
    tol: float,
    max_iter: int,
    symmetric: bool,
    policy: NewtonPolicy = NEWTON,
) -> Equilibrium:
    """Damped Newton over a batch (B, N) (reference at index 0); only unconverged rows keep
    iterating. One small network (N <= 64) evaluates H exactly throughout; otherwise the
    product formulas iterate and the exact evaluation polishes once every row has stopped.
    ``stable`` is decided lazily, on first access (a caller that judges lock itself never
    pays for it)."""
    B, N = th0.shape
    exact = not model.fast or (B == 1 and N <= _EXACT_MAX_N)
    th = th0 - th0[:, :1]
    F, cache = model.force(th, exact)
    res = np.abs(F).max(axis=1)
    iters = np.zeros(B, dtype=np.int64)
    active = res > tol
    while True:
        th, F, cache, res = _iterate(
            model, (th, F, cache, res), iters, active,
            exact=exact, symmetric=symmetric, tol=tol, max_iter=max_iter, policy=policy,
        )  # fmt: skip
        if exact:
            break
        exact = True  # polish: the product formulas lose digits to cancellation at large N
        F, cache = model.force(th, True)
        res = np.abs(F).max(axis=1)
        active = (res > tol) & (iters < max_iter)
        if not active.any():
            break
    return _finish(model, (th, F, cache, res), iters, tol, symmetric, policy)


def _iterate(
    model: _DenseModel,
    state: tuple[Array, Array, tuple[Array, ...], Array],
    iters: NDArray[np.int64],
    active: NDArray[np.bool_],
    *,
    exact: bool,
    symmetric: bool,
    tol: float,
    max_iter: int,
    policy: NewtonPolicy,
) -> tuple[Array, Array, tuple[Array, ...], Array]:
    """Newton steps on the ``active`` rows until each converges, stalls or runs out of
    iterations (an active row always has iterations left); returns (θ, F̃, cache, residual)
    and updates ``iters``/``active`` in place."""
    th, F, cache, res = state
    lo = model.lo
    while True:
        a = active_rows(active)
        if a is not None and a.size == 0:
            break
        if a is None:
            m, tha, Fa, ca, ra = model, th, F, cache, res
        else:
            m, tha, Fa, ra = model.subset(a), th[a], F[a], res[a]
            ca = tuple(x[a] for x in cache)
        step = _linear_solve(m.neg_jacobian(tha, ca), Fa, symmetric)  # (−J̃) s = F̃
        step = trust_region(step, policy, 1 - lo)
        evaluate = partial(_trial, m, tha, step, exact)
        trial, Ft, ct = backtrack(evaluate, np.einsum("bi,bi->b", Fa, Fa), m.floor, policy)
        new_res = np.abs(Ft).max(axis=1)
        go = new_res > tol
        if (new_res >= ra).any():
            go &= ~stalled(new_res, ra, m.floor)
        if a is None:
            th, F, cache, res = trial, Ft, ct, new_res
            iters += 1
            active &= go & (iters < max_iter)
            continue
        th[a], F[a] = trial, Ft
        for x, y in zip(cache, ct, strict=True):
            x[a] = y
        res[a] = new_res
        iters[a] += 1
        active[a] = go & (iters[a] < max_iter)
    return th, F, cache, res


def _trial(
    m: _DenseModel, tha: Array, step: Array, exact: bool, rows: NDArray[np.intp], alpha: float
) -> tuple[Array, Array, tuple[Array, ...]]:
    """State, F̃ and cache of ``rows`` after a step of length ``alpha``."""
    if len(rows) == len(tha):
        mr, t, sr = m, tha.copy(), step
    else:
        mr, t, sr = m.subset(rows), tha[rows], step[rows]
    t[:, m.lo :] += sr if alpha == 1.0 else alpha * sr
    return (t, *mr.force(t, exact))


def _finish(
    model: _DenseModel,
    state: tuple[Array, Array, tuple[Array, ...], Array],
    iters: NDArray[np.int64],
    tol: float,
    symmetric: bool,
    policy: NewtonPolicy,
) -> Equilibrium:
    """Wrap (only rows that need it: wrapping rounds), residual on the exact evaluation,
    convergence; stability decided on first access of ``stable`` (it needs −J at θ only)."""
    th, F, cache, res = state
    wrapped = np.abs(th[:, 1:]).max(axis=1) >= np.pi
    rewrap = bool(wrapped.any())
    if rewrap:
        th[wrapped, 1:] = wrap(th[wrapped, 1:])
    if rewrap or len(cache) != 1:
        F, cache = model.force(th, True)
        res = np.abs(F).max(axis=1)
    converged = res <= np.maximum(tol, model.floor)
    x = th.copy()  # the state the stability check reads (θ_0 slot: Ω in free mode)
    th[:, 0] = 0.0
    stable, margin = lazy_stability(
        lambda: model.stability_matrix(x, cache), symmetric and not model.free, policy
    )
    return Equilibrium(th, res, iters, converged, stable, margin, path="dense")


def lazy_stability(
    matrices: Callable[[], Array], symmetric: bool, policy: NewtonPolicy = NEWTON
) -> tuple[Callable[[], NDArray[np.bool_]], Callable[[], Array]]:
    """(stable, margin) of the stability matrices ``matrices()`` (B, n, n) as callables that
    decide on first access (:func:`stability`, once for both)."""
    judged: list[tuple[NDArray[np.bool_], Array | Callable[[], Array]]] = []

    def decide() -> tuple[NDArray[np.bool_], Array | Callable[[], Array]]:
        if not judged:
            judged.append(stability(matrices(), symmetric, policy))
        return judged[0]

    def margin() -> Array:
        mg = decide()[1]
        return np.asarray(mg() if callable(mg) else mg, dtype=np.float64)

    return (lambda: decide()[0]), margin
