"""Sparse path: one large network, scipy.sparse K, sparse LU / Cholesky-free stability."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike, NDArray
from scipy.sparse.csgraph import connected_components

from phasegrad_hw.physics.coupling import (
    _EPS,
    Array,
    CouplingFunction,
    NudgeKind,
    _as_float_array,
    _check_ref,
    _nudge_args,
    _nudge_terms,
    wrap,
)
from phasegrad_hw.physics.result import Equilibrium

log = logging.getLogger(__name__)

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


def _pd_after_low_rank_push(J: sp.csr_matrix, push: Array) -> bool:
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
    return bool(np.linalg.eigvalsh(M)[0] > 1e-10)


def _solve_sparse(
    omega: ArrayLike,
    K: sp.spmatrix | sp.sparray,
    coupling: CouplingFunction,
    theta0: ArrayLike | None,
    ref: int,
    beta: ArrayLike | None,
    target: ArrayLike | None,
    nudge: NudgeKind,
    direction: int,
    tol: float,
    max_iter: int,
) -> Equilibrium:
    net = SparseNetwork.from_matrix(K)
    n = net.n
    w = _as_float_array("omega", omega)
    if w.shape != (n,):
        raise ValueError(f"omega: shape {w.shape} does not match sparse K of size {n}; need ({n},)")
    r = _check_ref(ref, n)
    b1, t1 = _nudge_args(beta, target, (n,), direction)
    th = np.zeros(n) if theta0 is None else _as_float_array("theta0", theta0).copy()
    th -= th[r]
    keep_idx = np.flatnonzero(np.arange(n) != r)
    remap = np.cumsum(np.arange(n) != r) - 1
    inner = (net.rows != r) & (net.cols != r)
    use_cg = net.symmetric and coupling.is_odd

    def F_of(t: Array) -> Array:
        F = net.residual(t, w, coupling)
        nt = _nudge_terms(t, b1, t1, nudge)
        return (F if nt is None else F + nt[0])[keep_idx]

    def J_of(t: Array) -> tuple[sp.csr_matrix, Array]:
        d = t[net.cols] - t[net.rows]
        wts = net.weights * coupling.derivative(d)
        diag: Array = -np.bincount(net.rows, wts, minlength=n).astype(np.float64)
        nt = _nudge_terms(t, b1, t1, nudge)
        if nt is not None:
            diag = diag + nt[1]
        m = n - 1
        J = sp.csr_matrix(
            (
                np.concatenate([wts[inner], diag[keep_idx]]),
                (
                    np.concatenate([remap[net.rows[inner]], np.arange(m)]),
                    np.concatenate([remap[net.cols[inner]], np.arange(m)]),
                ),
            ),
            shape=(m, m),
        )
        return J, wts

    row_abs = np.bincount(net.rows, np.abs(net.weights), minlength=n)
    scale = 1.0 + float(np.abs(w).max()) + float(row_abs.max())
    floor = 64.0 * _EPS * scale * np.sqrt(n)
    F = F_of(th)
    res = float(np.abs(F).max())
    it = 0
    while res > tol and it < max_iter:
        J, _ = J_of(th)
        A = -J
        rhs_v = F  # solve (−J) s = F  ⇔  J s = −F
        pre = spla.LinearOperator(A.shape, matvec=lambda x, d=1.0 / A.diagonal(): d * x)
        rt = max(1e-13, min(1e-3, 1e-2 * res))
        if use_cg:
            s, info = spla.cg(A, rhs_v, rtol=rt, atol=0.0, maxiter=2000, M=pre)
        else:
            s, info = spla.gmres(A, rhs_v, rtol=rt, atol=0.0, restart=50, maxiter=200, M=pre)
        if info != 0 or not np.all(np.isfinite(s)):
            log.debug("sparse Newton: linear solver info=%s at iteration %d", info, it)
            if not np.all(np.isfinite(s)):
                break
        big = float(np.abs(s).max())
        if big > 1.0:
            s = s / big
        norm0 = float(F @ F)
        alpha = 1.0
        for _ls in range(12):
            trial = th.copy()
            trial[keep_idx] += alpha * s
            Ft = F_of(trial)
            if float(Ft @ Ft) <= (1 - 1e-4 * alpha) * norm0 or float(np.abs(Ft).max()) <= floor:
                break
            alpha *= 0.5
        new_res = float(np.abs(Ft).max())
        th, F = trial, Ft
        it += 1
        if new_res >= res and res <= floor:
            res = new_res
            break
        res = new_res
    th[keep_idx] = wrap(th[keep_idx])
    converged = bool(res <= max(tol, floor))
    J, wts = J_of(th)
    adj = sp.csr_matrix((np.ones(len(net.rows)), (net.rows, net.cols)), shape=(n, n))
    ncomp, _ = connected_components(adj, directed=False)
    nt = _nudge_terms(th, b1, t1, nudge)
    push = np.zeros(n) if nt is None else np.maximum(np.asarray(nt[1], dtype=np.float64), 0.0)
    margin = float("nan")
    if use_cg and ncomp == 1 and np.all(wts > 0) and not push.any():
        # positive edge weights on a connected graph (nudges only add to the diagonal):
        # −J̃ is a grounded weighted Laplacian plus a non-negative diagonal, hence PD
        stable = True
    elif use_cg and ncomp == 1 and np.all(wts > 0) and np.count_nonzero(push[keep_idx]) <= 32:
        stable = _pd_after_low_rank_push(J, push[keep_idx])
    else:
        try:
            vals = spla.eigs(J, k=1, which="LR", return_eigenvectors=False, maxiter=5000, tol=1e-8)
            margin = float(-vals.real.max())
        except (spla.ArpackNoConvergence, spla.ArpackError):
            margin = float("nan")
        stable = bool(margin > 0)
    return Equilibrium(
        th,
        np.asarray(res),
        np.asarray(it),
        np.asarray(converged),
        np.asarray(stable),
        np.asarray(margin),
    )
