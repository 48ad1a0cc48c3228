"""Edge path: Newton on the edge list of a network with symmetric couplings and odd H.

With the incidence matrix S (N, E) (S[i_e, e] = −1, S[j_e, e] = +1) the phase differences
are D = θ S (Δ_e = θ_j − θ_i), the reduced system F̃ = [ω − S (k H(D)) + n(θ)]_keep and its
Newton matrix −J̃ = [S diag(k H'(D)) Sᵀ − diag(n'(θ))]_keep — trigonometry on the E edges
only, batched over rows (samples, chips, members). ``damped`` follows the policy's Armijo
line search (docs/design.md §2); undamped, the iteration is the fast warm-started Newton of
the retry ladder (:mod:`phasegrad_hw.physics.ladder`). Stability is checked on the result:
positive edge weights k·H'(Δ) on a connected graph and a nudge that does not push away make
−J̃ a grounded weighted Laplacian plus a non-negative diagonal, hence positive definite;
otherwise −J̃ itself decides (:func:`~phasegrad_hw.physics.dense.stability`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import connected_components

from phasegrad_hw.physics.coupling import (
    SIN,
    Array,
    CouplingFunction,
    NudgeKind,
    diagonal_view,
    wrap,
)
from phasegrad_hw.physics.dense import _linear_solve, stability
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


@dataclass(frozen=True)
class EdgeNetwork:
    """Undirected edges e = (ei[e], ej[e]) of N oscillators, reference ``ref`` pinned at 0."""

    n: int
    ei: NDArray[np.int64]
    ej: NDArray[np.int64]
    ref: int = 0
    S: Array = field(init=False, repr=False, compare=False)
    keep: NDArray[np.intp] = field(init=False, repr=False, compare=False)
    Sk: Array = field(init=False, repr=False, compare=False)
    rows: slice | NDArray[np.intp] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        m = len(self.ei)
        S = np.zeros((self.n, m))
        S[self.ei, np.arange(m)] = -1.0
        S[self.ej, np.arange(m)] = 1.0
        object.__setattr__(self, "S", S)
        keep = np.flatnonzero(np.arange(self.n) != self.ref)
        object.__setattr__(self, "keep", keep)
        # the reduced rows as a slice when the reference is oscillator 0 (views, no copies)
        object.__setattr__(self, "rows", slice(1, None) if self.ref == 0 else keep)
        object.__setattr__(self, "Sk", S[keep])

    @cached_property
    def connected(self) -> bool:
        """One connected graph (decided on first use: most solves never ask)."""
        adj = sp.coo_matrix((np.ones(len(self.ei)), (self.ei, self.ej)), shape=(self.n, self.n))
        return bool(connected_components(adj, directed=False)[0] == 1)

    @classmethod
    def from_matrix(
        cls, K: Array | sp.spmatrix | sp.sparray, ref: int = 0
    ) -> tuple[EdgeNetwork, Array]:
        """Edges of the upper triangle of a symmetric K (N, N) or (B, N, N) — the union of the
        rows' non-zero patterns — and their couplings (B, E); raises ValueError if K is not
        symmetric."""
        Km = np.asarray(sp.csr_matrix(K).toarray() if sp.issparse(K) else K, dtype=np.float64)
        Kb = Km if Km.ndim == 3 else Km[None]
        if not np.array_equal(Kb, np.swapaxes(Kb, 1, 2)):
            raise ValueError("K: the edge path needs a symmetric coupling matrix")
        i, j = np.nonzero(np.triu((Kb != 0).any(axis=0), 1))
        return cls(Kb.shape[-1], i.astype(np.int64), j.astype(np.int64), ref), Kb[:, i, j]

    def dense(self, k: Array) -> Array:
        """(B, N, N) symmetric coupling matrices from edge couplings k (B, E)."""
        K = np.zeros((len(k), self.n, self.n))
        K[:, self.ei, self.ej] = k
        K[:, self.ej, self.ei] = k
        return K


@dataclass(slots=True)
class _EdgeSystem:
    """One batch of rows: frequencies W (B, N), couplings k (B, E), signed β and targets."""

    net: EdgeNetwork
    W: Array
    k: Array
    H: CouplingFunction
    beta: Array | None
    target: Array | None
    nudge: NudgeKind
    nd_lin: Array | None = field(init=False, default=None)  # n' of a linear nudge: −β̃

    def __post_init__(self) -> None:
        if self.beta is not None and self.target is not None and self.nudge == "linear":
            self.nd_lin = -self.beta[:, self.net.rows]

    def subset(self, rows: NDArray[np.intp]) -> _EdgeSystem:
        b, t = self.beta, self.target
        return _EdgeSystem(
            self.net, self.W[rows], self.k[rows], self.H,
            None if b is None else b[rows], None if t is None else t[rows], self.nudge,
        )  # fmt: skip

    def force(self, th: Array) -> tuple[Array, tuple[Array, ...]]:
        """F̃ (B, N−1) and the cache for :meth:`neg_jacobian`: the edge weights k·H'(Δ)
        (B, E) and, nudged, the nudge derivative n' on the reduced rows (B, N−1)."""
        net = self.net
        Hv, Hd = self.H.value_and_derivative(th @ net.S)
        F = self.W - (self.k * Hv) @ net.S.T
        if self.beta is None or self.target is None:
            return F[:, net.rows], (self.k * Hd,)
        d = self.target - th
        if self.nd_lin is not None:
            F += self.beta * d
            nd = self.nd_lin
        else:
            F += self.beta * np.sin(d)
            nd = -(self.beta * np.cos(d))[:, net.rows]
        return F[:, net.rows], (self.k * Hd, nd)

    def neg_jacobian(self, cache: tuple[Array, ...]) -> Array:
        """−J̃ (B, N−1, N−1) = S̃ diag(k H'(Δ)) S̃ᵀ − diag(n')."""
        Sk = self.net.Sk
        if len(cache[0]) == 1:  # one row: a plain 2-D product (no stacked-matmul overhead)
            A = ((Sk * cache[0]) @ Sk.T)[None]
        else:
            A = np.matmul(Sk * cache[0][:, None, :], Sk.T)
        if len(cache) == 2:
            diagonal_view(A)[...] -= cache[1]
        return A

    def floor(self, policy: NewtonPolicy) -> Array:
        scale = np.abs(self.k).sum(axis=1)
        scale *= 2.0
        scale += np.abs(self.W).max(axis=1)
        scale += 1.0
        if self.beta is not None and self.target is not None:
            scale += np.abs(self.beta).max(axis=1) * (1.0 + np.abs(self.target).max(axis=1))
        return np.asarray(policy.rounding_floor(scale, self.net.n), dtype=np.float64)


def solve_edges(
    net: EdgeNetwork,
    W: Array,
    k: Array,
    theta0: Array | None = None,
    coupling: CouplingFunction = SIN,
    *,
    beta: Array | None = None,
    target: Array | None = None,
    nudge: NudgeKind = "linear",
    damped: bool = True,
    tol: float = NEWTON.tol,
    max_iter: int | None = None,
    policy: NewtonPolicy = NEWTON,
) -> Equilibrium:
    """Locked states of B rows on the edge list (rad, θ_ref = 0).

    ``W`` (B, N) frequencies in the rotating frame; ``k`` (B, E) edge couplings; ``theta0``
    (B, N) warm start (None: zeros); ``beta`` (B, N) *signed* nudge strength (direction
    folded in) with ``target`` (B, N). ``damped`` False is the fast undamped iteration (at
    most ``policy.fast_iters`` steps unless ``max_iter`` says otherwise). H must be odd.
    """
    if not coupling.is_odd:
        raise ValueError("coupling: the edge path needs an odd H (no phase lag or offsets)")
    sys = _EdgeSystem(net, W, k, coupling, beta, target, nudge)
    steps = (policy.max_iter if damped else policy.fast_iters) if max_iter is None else max_iter
    th = np.zeros(W.shape) if theta0 is None else theta0 - theta0[:, net.ref : net.ref + 1]
    floor = sys.floor(policy)
    goal = np.maximum(tol, floor)
    F, cache = sys.force(th)
    res = np.abs(F).max(axis=1)
    iters = np.zeros(len(W), dtype=np.int64)
    active = res > goal
    for _ in range(steps):  # a row stops for good, so every active row has made `_` steps
        a = active_rows(active)
        if a is not None and a.size == 0:
            break
        s = sys if a is None else sys.subset(a)
        tha, Fa = (th, F) if a is None else (th[a], F[a])
        A = s.neg_jacobian(cache if a is None else tuple(x[a] for x in cache))
        # (−J̃) s = F̃; a singular −J̃ (disconnected graph) gets the least-squares step, a
        # non-finite step a NaN residual (the row stops, not converged)
        step = trust_region(_linear_solve(A, Fa, True), policy)
        fl = floor if a is None else floor[a]
        if damped:
            norm0 = np.einsum("bi,bi->b", Fa, Fa)
            trial, Ft, ct = backtrack(partial(_trial, s, tha, step), norm0, fl, policy)
        else:
            trial, Ft, ct = _trial(s, tha, step, _FULL, 1.0)
        new_res = np.abs(Ft).max(axis=1)
        ra = res if a is None else res[a]
        go = new_res > (goal if a is None else goal[a])
        if damped and (new_res >= ra).any():
            go &= ~stalled(new_res, ra, fl)
        if a is None:
            th, F, cache, res = trial, Ft, ct, new_res
            iters += 1
            active = go
            continue
        th[a], F[a], res[a] = trial, Ft, new_res
        for x, y in zip(cache, ct, strict=True):
            x[a] = y
        iters[a] += 1
        active[a] = go
    return _finish(sys, th, cache, (res, iters, goal), policy)


_FULL = np.zeros(0, dtype=np.intp)  # placeholder rows for an undamped step on every row


def _trial(
    s: _EdgeSystem, tha: Array, step: Array, rows: NDArray[np.intp], alpha: float
) -> tuple[Array, Array, tuple[Array, ...]]:
    """State, F̃ and cache of ``rows`` (indices into ``tha``; every row when ``rows`` is
    empty or all of them) after a step of length ``alpha``."""
    if len(rows) == 0 or len(rows) == len(tha):
        sr, t, sp_ = s, tha.copy(), step
    else:
        sr, t, sp_ = s.subset(rows), tha[rows], step[rows]
    t[:, s.net.rows] += sp_ if alpha == 1.0 else alpha * sp_
    return (t, *sr.force(t))


def _finish(
    sys: _EdgeSystem,
    th: Array,
    cache: tuple[Array, ...],
    counts: tuple[Array, NDArray[np.int64], Array],
    policy: NewtonPolicy,
) -> Equilibrium:
    """Convergence, stability (sufficient edge test, else −J̃ itself) and wrapping."""
    res, iters, goal = counts
    converged = res <= goal  # (a NaN residual is not converged)
    stable: NDArray[np.bool_] = np.asarray((cache[0] > 0.0).all(axis=1))
    if not sys.net.connected:
        stable[:] = False
    if len(cache) == 2:
        stable &= ~(cache[1] > 0.0).any(axis=1)
    unclear = converged & ~stable
    if unclear.any():  # −J̃ itself (Cholesky) for the rows the sufficient test cannot clear
        check = np.flatnonzero(unclear)
        sc = sys if check.size == len(th) else sys.subset(check)
        Ac = sc.neg_jacobian(cache if sc is sys else tuple(x[check] for x in cache))
        stable[check] = stability(Ac, True, policy)[0]
    if np.abs(th).max() >= np.pi:  # wrap only the rows that need it (wrapping rounds)
        keep = sys.net.keep
        wrapped = np.flatnonzero(np.abs(th[:, keep]).max(axis=1) >= np.pi)
        th[np.ix_(wrapped, keep)] = wrap(th[np.ix_(wrapped, keep)])

    def margin() -> Array:
        A = sys.neg_jacobian(cache)
        return np.asarray(np.linalg.eigvalsh(np.where(np.isfinite(A), A, 0.0))[:, 0])

    return Equilibrium(th, res, iters, converged, stable, margin, path="edge")
