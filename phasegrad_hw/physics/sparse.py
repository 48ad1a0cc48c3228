"""Sparse path: one large network, scipy.sparse K, sparse LU / Cholesky-free stability."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike, NDArray
from scipy.sparse.csgraph import connected_components

from phasegrad_hw.physics.coupling import (
    Array,
    CouplingFunction,
    NudgeKind,
    _as_float_array,
    _check_ref,
    _nudge_args,
    _nudge_terms,
    wrap,
)
from phasegrad_hw.physics.policy import NEWTON, NewtonPolicy, backtrack, stalled, trust_region
from phasegrad_hw.physics.result import Equilibrium

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- sparse path
@dataclass(frozen=True)
class SparseNetwork:
    """Directed coupling entries of a sparse K: K[rows[e], cols[e]] = weights[e]."""

    n: int
    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    weights: Array
    symmetric: bool

    @classmethod
    def from_matrix(cls, K: sp.spmatrix | sp.sparray) -> SparseNetwork:
        C = sp.coo_matrix(K)
        C.sum_duplicates()
        off = C.row != C.col
        n = C.shape[0]
        if C.shape != (n, n):
            raise ValueError(f"K: sparse coupling matrix must be square, got {C.shape}")
        data = np.asarray(C.data[off], dtype=np.float64)
        if not np.all(np.isfinite(data)):
            raise ValueError("K: contains a non-finite value; all entries must be finite")
        diff = abs(sp.csr_matrix(K) - sp.csr_matrix(K).T)
        symmetric = diff.nnz == 0 or float(diff.max()) == 0.0
        return cls(n, C.row[off].astype(np.int64), C.col[off].astype(np.int64), data, symmetric)

    def residual(self, theta: Array, omega: Array, coupling: CouplingFunction) -> Array:
        d = theta[self.cols] - theta[self.rows]
        return omega + np.bincount(self.rows, self.weights * coupling.value(d), minlength=self.n)


def _pd_after_low_rank_push(J: sp.csr_matrix, push: Array, policy: NewtonPolicy = NEWTON) -> bool:
    """Is −J̃ PD, where −J̃ = A − P, A PD (grounded Laplacian + non-negative diagonal) and
    P = diag(push) ≥ 0 on a few oscillators (the −β nudge of a centred estimate)?

    With S the pushed indices and D = P_SS: A − P ≻ 0  ⇔  I − D^½ (A⁻¹)_SS D^½ ≻ 0 (Schur
    complement / Sylvester), which needs |S| conjugate-gradient solves with A.
    """
    S = np.flatnonzero(push)
    A = (-J + sp.diags(push)).tocsr()
    pre = spla.LinearOperator(A.shape, matvec=lambda x, d=1.0 / A.diagonal(): d * x)
    X = np.empty((len(S), len(S)))
    for k, i in enumerate(S):
        e = np.zeros(A.shape[0])
        e[i] = 1.0
        x, info = spla.cg(A, e, rtol=1e-12, atol=0.0, maxiter=5000, M=pre)
        if info != 0:
            return False
        X[:, k] = x[S]
    d = np.sqrt(push[S])
    M = np.eye(len(S)) - d[:, None] * (0.5 * (X + X.T)) * d[None, :]
    return bool(np.linalg.eigvalsh(M)[0] > policy.stability_shift)


@dataclass(frozen=True)
class _SparseSystem:
    """The reduced system of one sparse network: reference ``r`` dropped (rows ``keep``)."""

    net: SparseNetwork
    w: Array
    coupling: CouplingFunction
    r: int
    beta: Array | None
    target: Array | None
    nudge: NudgeKind
    keep: NDArray[np.intp] = field(init=False)
    inner: NDArray[np.bool_] = field(init=False)  # edges off the reference
    ipos: NDArray[np.intp] = field(init=False)  # CSR slot of each inner edge of J̃
    dpos: NDArray[np.intp] = field(init=False)  # CSR slot of each diagonal entry of J̃
    indices: NDArray[np.int32] = field(init=False)  # CSR column indices of J̃
    indptr: NDArray[np.int32] = field(init=False)  # CSR row pointers of J̃

    def __post_init__(self) -> None:
        """The sparsity pattern of J̃ (inner edges plus the diagonal; the network has no
        self-couplings, so no duplicates) in CSR order, once per solve: the diagonal merged
        into the (row, col)-sorted edge list, or a sort if the edges come unsorted."""
        n, r, net = self.net.n, self.r, self.net
        m = n - 1
        keep = np.flatnonzero(np.arange(n) != r)
        inner = (net.rows != r) & (net.cols != r)
        remap = np.cumsum(np.arange(n) != r) - 1  # oscillator → reduced index
        ri, ci = remap[net.rows[inner]], remap[net.cols[inner]]
        key = ri * m + ci
        diag = np.arange(m)
        if np.all(key[1:] > key[:-1]):
            dpos = np.searchsorted(key, diag * (m + 1)) + diag
            free = np.ones(len(key) + m, dtype=bool)
            free[dpos] = False
            ipos = np.flatnonzero(free)
        else:
            order = np.argsort(np.concatenate([key, diag * (m + 1)]), kind="stable")
            slot = np.empty_like(order)
            slot[order] = np.arange(len(order))
            ipos, dpos = slot[: len(key)], slot[len(key) :]
        cols = np.empty(len(key) + m, dtype=np.int64)
        cols[ipos], cols[dpos] = ci, diag
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(ri, minlength=m) + 1, out=indptr[1:])
        itype = np.int32 if len(cols) < np.iinfo(np.int32).max else np.int64
        for name, value in (
            ("keep", keep), ("inner", inner), ("ipos", ipos), ("dpos", dpos),
            ("indices", cols.astype(itype)), ("indptr", indptr.astype(itype)),
        ):  # fmt: skip
            object.__setattr__(self, name, value)

    def force(self, t: Array) -> Array:
        F = self.net.residual(t, self.w, self.coupling)
        nt = _nudge_terms(t, self.beta, self.target, self.nudge)
        return (F if nt is None else F + nt[0])[self.keep]

    def jacobian(self, t: Array, sign: float = 1.0) -> tuple[sp.csr_matrix, Array]:
        """``sign``·J̃ (sparse, reduced; −1 gives the Newton matrix −J̃) and the edge weights
        K_e H'(Δ_e) at θ."""
        net, n = self.net, self.net.n
        d = t[net.cols] - t[net.rows]
        wts = net.weights * self.coupling.derivative(d)
        diag: Array = -np.bincount(net.rows, wts, minlength=n).astype(np.float64)
        nt = _nudge_terms(t, self.beta, self.target, self.nudge)
        if nt is not None:
            diag = diag + nt[1]
        m = n - 1
        vals = np.empty(len(self.indices))
        vals[self.ipos] = wts[self.inner]
        vals[self.dpos] = diag[self.keep]
        if sign != 1.0:
            vals *= sign
        return sp.csr_matrix((vals, self.indices, self.indptr), shape=(m, m)), wts

    def newton_step(self, t: Array, F: Array, res: float, use_cg: bool) -> Array | None:
        """Solve (−J̃) s = F̃ iteratively (Jacobi-preconditioned CG or GMRES to a relative
        accuracy that tightens with the residual); None if the solve diverged."""
        A = self.jacobian(t, -1.0)[0]
        pre = spla.LinearOperator(A.shape, matvec=lambda x, d=1.0 / A.diagonal(): d * x)
        rt = max(1e-13, min(1e-3, 1e-2 * res))
        if use_cg:
            s, info = spla.cg(A, F, rtol=rt, atol=0.0, maxiter=2000, M=pre)
        else:
            s, info = spla.gmres(A, F, rtol=rt, atol=0.0, restart=50, maxiter=200, M=pre)
        if info != 0:
            log.debug("sparse Newton: linear solver info=%s", info)
        return np.asarray(s) if np.all(np.isfinite(s)) else None


def _solve_sparse(
    omega: ArrayLike,
    K: sp.spmatrix | sp.sparray,
    coupling: CouplingFunction,
    *,
    theta0: ArrayLike | None,
    ref: int,
    beta: ArrayLike | None,
    target: ArrayLike | None,
    nudge: NudgeKind,
    direction: int,
    tol: float,
    max_iter: int,
    policy: NewtonPolicy = NEWTON,
) -> Equilibrium:
    """Damped Newton (the policy's trust region, Armijo backtracking and stall test) on one
    sparse network; stability from the graph where it can be proven, else ARPACK."""
    net = SparseNetwork.from_matrix(K)
    n = net.n
    w = _as_float_array("omega", omega)
    if w.shape != (n,):
        raise ValueError(f"omega: shape {w.shape} does not match sparse K of size {n}; need ({n},)")
    r = _check_ref(ref, n)
    b1, t1 = _nudge_args(beta, target, (n,), direction)
    th = np.zeros(n) if theta0 is None else _as_float_array("theta0", theta0).copy()
    th -= th[r]
    sys = _SparseSystem(net, w, coupling, r, b1, t1, nudge)
    keep = sys.keep
    use_cg = net.symmetric and coupling.is_odd
    row_abs = np.bincount(net.rows, np.abs(net.weights), minlength=n)
    scale = 1.0 + float(np.abs(w).max()) + float(row_abs.max())
    floor = np.array([policy.rounding_floor(scale, n)])
    F = sys.force(th)
    res = float(np.abs(F).max())
    it = 0
    while res > tol and it < max_iter:
        s = sys.newton_step(th, F, res, use_cg)
        if s is None:
            break
        step = trust_region(s[None], policy)[0]

        def evaluate(
            rows: NDArray[np.intp], alpha: float, th: Array = th, step: Array = step
        ) -> tuple[Array, Array, tuple[Array, ...]]:
            trial = th.copy()
            trial[keep] += alpha * step
            return trial[None], sys.force(trial)[None], ()

        trial, Ft, _ = backtrack(evaluate, np.array([float(F @ F)]), floor, policy)
        new_res = float(np.abs(Ft).max())
        th, F = trial[0], Ft[0]
        it += 1
        stop = bool(stalled(np.array([new_res]), np.array([res]), floor)[0])
        res = new_res
        if stop:
            break
    th[keep] = wrap(th[keep])
    converged = bool(res <= max(tol, float(floor[0])))
    stable, margin = _sparse_stability(sys, th, use_cg, policy)
    return Equilibrium(
        th, np.asarray(res), np.asarray(it), np.asarray(converged), np.asarray(stable),
        np.asarray(margin), path="sparse",
    )  # fmt: skip


def _sparse_stability(
    sys: _SparseSystem, th: Array, use_cg: bool, policy: NewtonPolicy
) -> tuple[bool, float]:
    """(stable, margin): proven from the graph for positive edge weights on a connected graph
    (a nudge only adds a non-negative diagonal, or a low-rank push checked by a Schur
    complement); otherwise the rightmost eigenvalue of J̃ by ARPACK."""
    net, n, keep = sys.net, sys.net.n, sys.keep
    J, wts = sys.jacobian(th)
    adj = sp.csr_matrix((np.ones(len(net.rows)), (net.rows, net.cols)), shape=(n, n))
    ncomp, _ = connected_components(adj, directed=False)
    nt = _nudge_terms(th, sys.beta, sys.target, sys.nudge)
    push = np.zeros(n) if nt is None else np.maximum(np.asarray(nt[1], dtype=np.float64), 0.0)
    if use_cg and ncomp == 1 and np.all(wts > 0) and not push.any():
        # positive edge weights on a connected graph (nudges only add to the diagonal):
        # −J̃ is a grounded weighted Laplacian plus a non-negative diagonal, hence PD
        return True, float("nan")
    if use_cg and ncomp == 1 and np.all(wts > 0) and np.count_nonzero(push[keep]) <= 32:
        return _pd_after_low_rank_push(J, push[keep], policy), float("nan")
    try:
        vals = spla.eigs(J, k=1, which="LR", return_eigenvectors=False, maxiter=5000, tol=1e-8)
        margin = float(-vals.real.max())
    except (spla.ArpackNoConvergence, spla.ArpackError):
        margin = float("nan")
    return bool(margin > 0), margin
