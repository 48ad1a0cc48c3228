"""Kuramoto physics: coupling functions, right-hand side, Jacobian, energy, equilibria.

Model (DESIGN.md §2), phases θ (rad), frequencies ω (rad per model time unit)::

    dθ_i/dt = ω_i + Σ_j K_ij H(θ_j − θ_i) + n_i(θ_i)

``K[i, j]`` is the coupling of oscillator j onto oscillator i (it may be asymmetric).
``n_i`` is an optional nudge toward a target phase: linear β_i (θ_tgt,i − θ_i) or injection
β_i sin(θ_tgt,i − θ_i). Equilibria are found in the rotating frame with the reference
oscillator pinned at phase 0 ("reduced system"); the caller passes frequencies in that frame
(see :func:`centred`). Dense arrays may be batched: ``omega`` (B, N), ``K`` (N, N) or
(B, N, N). A ``scipy.sparse`` K selects the sparse path (one network, large N).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike, NDArray
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)

Array = NDArray[np.float64]
NudgeKind = Literal["linear", "injection"]
_EPS = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- validation
def _as_float_array(name: str, value: ArrayLike) -> Array:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = arr[~np.isfinite(arr)].ravel()[0]
        raise ValueError(f"{name}: contains a non-finite value ({bad}); all entries must be finite")
    return arr


def _check_ref(ref: int, n: int) -> int:
    if not isinstance(ref, (int, np.integer)) or not 0 <= int(ref) < n:
        raise ValueError(f"ref: {ref!r} is out of range; must be an oscillator index in [0, {n - 1}]")
    return int(ref)


def wrap(x: ArrayLike) -> Array:
    """Wrap angles (rad) to [−π, π): the angle of e^{ix}."""
    return np.remainder(np.asarray(x, dtype=np.float64) + np.pi, 2.0 * np.pi) - np.pi


def centred(omega: ArrayLike) -> Array:
    """Frequencies in the frame rotating at their mean: ω^c = ω − mean(ω) (last axis)."""
    w = np.asarray(omega, dtype=np.float64)
    return w - w.mean(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- coupling
@dataclass(frozen=True)
class CouplingFunction:
    """H(φ) = Σ_k a_k sin(kφ − ψ) + b0 + b1 cos φ.

    ``harmonics`` = (a_1, a_2, …); ``phase_lag`` ψ (rad) is the Kuramoto–Sakaguchi lag of
    coupled lasers; ``offset`` b0 and ``cos_offset`` b1 are the non-odd terms typical of ring
    oscillators. H is odd (the gradient identity holds) iff ψ = 0 and b0 = b1 = 0.
    """

    harmonics: tuple[float, ...] = (1.0,)
    phase_lag: float = 0.0
    offset: float = 0.0
    cos_offset: float = 0.0

    def __post_init__(self) -> None:
        values = (*self.harmonics, self.phase_lag, self.offset, self.cos_offset)
        if len(self.harmonics) == 0:
            raise ValueError("harmonics: must hold at least one coefficient (a_1)")
        if not all(np.isfinite(v) for v in values):
            raise ValueError(f"coupling function: non-finite coefficient in {values}")

    @property
    def is_odd(self) -> bool:
        return self.phase_lag == 0.0 and self.offset == 0.0 and self.cos_offset == 0.0

    def value(self, phi: ArrayLike) -> Array:
        """H(φ)."""
        p = np.asarray(phi, dtype=np.float64)
        out = self.harmonics[0] * np.sin(p - self.phase_lag)
        for k, a in enumerate(self.harmonics[1:], start=2):
            if a:
                out = out + a * np.sin(k * p - self.phase_lag)
        if self.offset:
            out = out + self.offset
        if self.cos_offset:
            out = out + self.cos_offset * np.cos(p)
        return out

    def derivative(self, phi: ArrayLike) -> Array:
        """H'(φ)."""
        p = np.asarray(phi, dtype=np.float64)
        out = self.harmonics[0] * np.cos(p - self.phase_lag)
        for k, a in enumerate(self.harmonics[1:], start=2):
            if a:
                out = out + k * a * np.cos(k * p - self.phase_lag)
        if self.cos_offset:
            out = out - self.cos_offset * np.sin(p)
        return out

    def value_and_derivative(self, phi: Array) -> tuple[Array, Array]:
        """(H(φ), H'(φ)); the pure-sine case shares one pass."""
        if len(self.harmonics) == 1 and self.is_odd:
            a = self.harmonics[0]
            return a * np.sin(phi), a * np.cos(phi)
        return self.value(phi), self.derivative(phi)

    def potential(self, phi: ArrayLike) -> Array:
        """V(φ) with V' = H (only for odd H): V = −Σ_k a_k cos(kφ)/k."""
        if not self.is_odd:
            raise ValueError("potential: H has a phase lag or offsets, so no energy exists")
        p = np.asarray(phi, dtype=np.float64)
        out = np.zeros_like(p)
        for k, a in enumerate(self.harmonics, start=1):
            out = out - a * np.cos(k * p) / k
        return out


SIN = CouplingFunction()


# --------------------------------------------------------------------------- dense model
def phase_differences(theta: Array) -> Array:
    """D[..., i, j] = θ_j − θ_i."""
    return theta[..., None, :] - theta[..., :, None]


def _nudge_terms(
    theta: Array, beta: Array | None, target: Array | None, nudge: NudgeKind
) -> tuple[Array, Array] | None:
    """Nudge force n(θ) and its diagonal derivative ∂n_i/∂θ_i, or None without a nudge."""
    if beta is None:
        return None
    tgt = np.zeros_like(theta) if target is None else target
    if nudge == "linear":
        return beta * (tgt - theta), np.broadcast_to(-beta, theta.shape)
    if nudge == "injection":
        d = tgt - theta
        return beta * np.sin(d), -beta * np.cos(d)
    raise ValueError(f"nudge: {nudge!r} is not a nudge kind; use 'linear' or 'injection'")


def rhs(
    theta: ArrayLike,
    omega: ArrayLike,
    K: ArrayLike,
    coupling: CouplingFunction = SIN,
    *,
    beta: ArrayLike | None = None,
    target: ArrayLike | None = None,
    nudge: NudgeKind = "linear",
) -> Array:
    """dθ/dt (rad per time unit) for dense K; shapes broadcast over a leading batch axis."""
    th = np.asarray(theta, dtype=np.float64)
    Km = np.asarray(K, dtype=np.float64)
    f = np.asarray(omega, dtype=np.float64) + np.einsum(
        "...ij,...ij->...i", Km, coupling.value(phase_differences(th))
    )
    nt = _nudge_terms(th, _opt(beta), _opt(target), nudge)
    return f if nt is None else f + nt[0]


def jacobian(
    theta: ArrayLike,
    K: ArrayLike,
    coupling: CouplingFunction = SIN,
    *,
    beta: ArrayLike | None = None,
    target: ArrayLike | None = None,
    nudge: NudgeKind = "linear",
) -> Array:
    """∂(dθ_i/dt)/∂θ_j: K_ij H'(θ_j − θ_i) off the diagonal, minus the row sum on it."""
    th = np.asarray(theta, dtype=np.float64)
    W = np.asarray(K, dtype=np.float64) * coupling.derivative(phase_differences(th))
    n = th.shape[-1]
    idx = np.arange(n)
    W[..., idx, idx] = 0.0
    W[..., idx, idx] = -W.sum(axis=-1)
    nt = _nudge_terms(th, _opt(beta), _opt(target), nudge)
    if nt is not None:
        W[..., idx, idx] += nt[1]
    return W


def energy(theta: ArrayLike, omega: ArrayLike, K: ArrayLike, coupling: CouplingFunction = SIN) -> Array:
    """Lyapunov energy E = −Σ ω_i θ_i − ½ Σ_ij K_ij V(θ_j − θ_i), with dθ/dt = −∇E.

    Exists only for symmetric K and odd H; raises ValueError otherwise.
    """
    Km = np.asarray(K, dtype=np.float64)
    if not np.allclose(Km, np.swapaxes(Km, -1, -2)):
        raise ValueError("K: energy needs a symmetric coupling matrix")
    th = np.asarray(theta, dtype=np.float64)
    V = coupling.potential(phase_differences(th))
    return -(np.asarray(omega) * th).sum(axis=-1) - 0.5 * (Km * V).sum(axis=(-1, -2))


def _opt(x: ArrayLike | None) -> Array | None:
    return None if x is None else np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- equilibria
@dataclass
class Equilibrium:
    """Result of :func:`solve_equilibrium`.

    ``theta`` phases (rad) with θ_ref = 0; ``residual`` max |F_i| over the reduced system;
    ``converged`` Newton reached the tolerance; ``stable`` the reduced Jacobian is negative
    definite (all eigenvalues with negative real part); ``margin`` the smallest eigenvalue of
    −J̃ (its smallest real part if J̃ is not symmetric) — the distance from losing stability.
    ``ok`` is converged and stable. Arrays carry the batch shape of the input.
    """

    theta: Array
    residual: Array
    iterations: Array
    converged: NDArray[np.bool_]
    stable: NDArray[np.bool_]
    margin: Array

    @property
    def ok(self) -> NDArray[np.bool_]:
        return self.converged & self.stable


def solve_equilibrium(
    omega: ArrayLike,
    K: ArrayLike | sp.spmatrix | sp.sparray,
    coupling: CouplingFunction = SIN,
    *,
    theta0: ArrayLike | None = None,
    ref: int = 0,
    beta: ArrayLike | None = None,
    target: ArrayLike | None = None,
    nudge: NudgeKind = "linear",
    direction: int = 1,
    tol: float = 1e-12,
    max_iter: int = 60,
) -> Equilibrium:
    """Locked state of the reduced system F̃(θ) = 0 (θ_ref pinned at 0) by damped Newton.

    ``omega`` (N,) or (B, N) in the rotating frame (normally :func:`centred` frequencies);
    ``K`` dense (N, N) / (B, N, N) or scipy.sparse (N, N); ``theta0`` warm start; ``beta``
    scalar or per-oscillator nudge strength (>= 0, zero for unnudged oscillators) with
    ``target`` phases; ``direction`` +1 pulls toward the target, −1 pushes away (the −β state
    of a centred estimate, keeping β a non-negative strength). Never raises for a network that cannot lock: it comes back with
    ``converged`` False. Stability is checked on the solution, not assumed.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction: {direction!r} must be +1 (toward target) or -1 (away)")
    if sp.issparse(K):
        return _solve_sparse(omega, K, coupling, theta0, ref, beta, target, nudge, direction,
                             tol, max_iter)
    w = _as_float_array("omega", omega)
    Km = _as_float_array("K", K)
    if w.ndim not in (1, 2):
        raise ValueError(f"omega: shape {w.shape} must be (N,) or (B, N)")
    single = w.ndim == 1
    W = w[None, :] if single else w
    B, N = W.shape
    if Km.shape[-2:] != (N, N) or Km.ndim not in (2, 3) or (Km.ndim == 3 and Km.shape[0] != B):
        raise ValueError(f"K: shape {Km.shape} does not match omega {w.shape}; need ({N}, {N}) or ({B}, {N}, {N})")
    r = _check_ref(ref, N)
    th0 = np.zeros((B, N)) if theta0 is None else np.broadcast_to(_as_float_array("theta0", theta0), (B, N)).copy()
    bet, tgt = _nudge_args(beta, target, B, N, direction)
    if nudge not in ("linear", "injection"):
        raise ValueError(f"nudge: {nudge!r} is not a nudge kind; use 'linear' or 'injection'")
    if not (tol > 0 and max_iter >= 1):
        raise ValueError(f"tol/max_iter: need tol > 0 and max_iter >= 1, got {tol}, {max_iter}")
    res = _newton_dense(W, Km, coupling, th0, r, bet, tgt, nudge, tol, max_iter)
    if single:
        return Equilibrium(*(np.asarray(a)[0] for a in (res.theta, res.residual, res.iterations,
                                                        res.converged, res.stable, res.margin)))
    return res


def _nudge_args(
    beta: ArrayLike | None, target: ArrayLike | None, B: int, N: int, direction: int
) -> tuple[Array | None, Array | None]:
    """Validated (signed β, target) broadcast to (B, N); the sign carries ``direction``."""
    if beta is None:
        return None, None
    b = _as_float_array("beta", beta)
    if np.any(b < 0):
        raise ValueError(f"beta: {b[b < 0].ravel()[0]} is negative; nudge strength must be >= 0")
    try:
        bb = np.broadcast_to(b, (B, N))
        tt = np.broadcast_to(_as_float_array("target", 0.0 if target is None else target), (B, N))
    except ValueError as exc:
        raise ValueError(f"beta/target: shapes {np.shape(beta)}, {np.shape(target)} do not fit ({B}, {N})") from exc
    return bb * float(direction), tt


def _reduced_system(
    W: Array, Km: Array, coupling: CouplingFunction, th: Array, keep: Array,
    bet: Array | None, tgt: Array | None, nudge: NudgeKind, want_jac: bool,
) -> tuple[Array, Array | None]:
    """F̃ (B, n) and J̃ (B, n, n) on the non-reference oscillators."""
    D = phase_differences(th)
    Hv, Hd = coupling.value_and_derivative(D)
    F = W + np.einsum("...ij,...ij->...i", Km, Hv)
    diag_extra = None
    if bet is not None and tgt is not None:
        d = tgt - th
        if nudge == "linear":
            F = F + bet * d
            diag_extra = -bet
        else:
            F = F + bet * np.sin(d)
            diag_extra = -bet * np.cos(d)
    Fr = F[:, keep]
    if not want_jac:
        return Fr, None
    Wm = Km * Hd
    n = th.shape[-1]
    idx = np.arange(n)
    Wm[..., idx, idx] = 0.0
    diag = -Wm.sum(axis=-1)
    if diag_extra is not None:
        diag = diag + diag_extra
    Wm[..., idx, idx] = diag
    return Fr, Wm[:, keep][:, :, keep]


def _newton_dense(
    W: Array, Km: Array, coupling: CouplingFunction, th0: Array, ref: int,
    bet: Array | None, tgt: Array | None, nudge: NudgeKind, tol: float, max_iter: int,
) -> Equilibrium:
    B, N = W.shape
    keep = np.arange(N) != ref
    th = th0 - th0[:, ref : ref + 1]
    Kb = np.broadcast_to(Km, (B, N, N)) if Km.ndim == 2 else Km
    scale = 1.0 + np.abs(W).max(axis=1) + np.abs(Kb).sum(axis=2).max(axis=1)
    floor = 64.0 * _EPS * scale * np.sqrt(N)  # rounding floor of F̃ for this network
    iters = np.zeros(B, dtype=np.int64)
    active = np.ones(B, dtype=bool)
    sub = (lambda a, m: None if a is None else a[m])  # noqa: E731
    F, _ = _reduced_system(W, Kb, coupling, th, keep, bet, tgt, nudge, False)
    res = np.abs(F).max(axis=1)
    for _ in range(max_iter):
        active &= res > tol
        if not active.any():
            break
        a = np.flatnonzero(active)
        Fa, Ja = _reduced_system(W[a], Kb[a], coupling, th[a], keep, sub(bet, a), sub(tgt, a), nudge, True)
        assert Ja is not None
        step = _batched_solve(Ja, -Fa)
        big = np.abs(step).max(axis=1, keepdims=True)
        step *= np.minimum(1.0, 1.0 / np.maximum(big, 1e-300))  # trust region: ≤ 1 rad per step
        norm0 = np.einsum("bi,bi->b", Fa, Fa)
        alpha = np.ones(len(a))
        pending = np.ones(len(a), dtype=bool)
        new_th = th[a].copy()
        new_F = Fa.copy()
        for _ls in range(12):
            p = np.flatnonzero(pending)
            trial = th[a[p]].copy()
            trial[:, keep] += alpha[p, None] * step[p]
            Ft, _ = _reduced_system(W[a[p]], Kb[a[p]], coupling, trial, keep,
                                    sub(bet, a[p]), sub(tgt, a[p]), nudge, False)
            good = np.einsum("bi,bi->b", Ft, Ft) <= (1.0 - 1e-4 * alpha[p]) * norm0[p]
            good |= np.abs(Ft).max(axis=1) <= floor[a[p]]
            acc = p[good]
            new_th[acc] = trial[good]
            new_F[acc] = Ft[good]
            pending[acc] = False
            if not pending.any():
                break
            alpha[pending] *= 0.5
        # samples whose line search failed take the smallest step anyway (escape plateaus)
        if pending.any():
            p = np.flatnonzero(pending)
            trial = th[a[p]].copy()
            trial[:, keep] += alpha[p, None] * step[p]
            new_th[p] = trial
            new_F[p], _ = _reduced_system(W[a[p]], Kb[a[p]], coupling, trial, keep,
                                          sub(bet, a[p]), sub(tgt, a[p]), nudge, False)
        stalled = (np.abs(new_F).max(axis=1) >= res[a]) & (res[a] <= floor[a])
        th[a] = new_th
        res[a] = np.abs(new_F).max(axis=1)
        iters[a] += 1
        active[a[stalled]] = False
    th[:, keep] = wrap(th[:, keep])
    converged = res <= np.maximum(tol, floor)
    stable, margin = _stability_dense(W, Kb, coupling, th, keep, bet, tgt, nudge)
    return Equilibrium(th, res, iters, converged, stable, margin)


def _batched_solve(A: Array, b: Array) -> Array:
    try:
        return np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.empty_like(b)
        for k in range(len(b)):
            out[k] = np.linalg.lstsq(A[k], b[k], rcond=None)[0]
        return out


def _stability_dense(
    W: Array, Kb: Array, coupling: CouplingFunction, th: Array, keep: Array,
    bet: Array | None, tgt: Array | None, nudge: NudgeKind,
) -> tuple[NDArray[np.bool_], Array]:
    _, J = _reduced_system(W, Kb, coupling, th, keep, bet, tgt, nudge, True)
    assert J is not None
    sym = np.allclose(J, np.swapaxes(J, 1, 2), rtol=1e-12, atol=1e-12)
    if sym:
        margin = np.linalg.eigvalsh(-0.5 * (J + np.swapaxes(J, 1, 2)))[:, 0]
    else:
        margin = -np.linalg.eigvals(J).real.max(axis=1)
    scale = np.abs(J).max(axis=(1, 2)) + 1e-300
    return margin > 1e-10 * scale, margin


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


def _solve_sparse(
    omega: ArrayLike, K: sp.spmatrix | sp.sparray, coupling: CouplingFunction,
    theta0: ArrayLike | None, ref: int, beta: ArrayLike | None, target: ArrayLike | None,
    nudge: NudgeKind, direction: int, tol: float, max_iter: int,
) -> Equilibrium:
    net = SparseNetwork.from_matrix(K)
    n = net.n
    w = _as_float_array("omega", omega)
    if w.shape != (n,):
        raise ValueError(f"omega: shape {w.shape} does not match sparse K of size {n}; need ({n},)")
    r = _check_ref(ref, n)
    bet, tgt = _nudge_args(beta, target, 1, n, direction)
    b1 = None if bet is None else bet[0]
    t1 = None if tgt is None else tgt[0]
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
        diag = -np.bincount(net.rows, wts, minlength=n)
        nt = _nudge_terms(t, b1, t1, nudge)
        if nt is not None:
            diag = diag + nt[1]
        m = n - 1
        J = sp.csr_matrix(
            (np.concatenate([wts[inner], diag[keep_idx]]),
             (np.concatenate([remap[net.rows[inner]], np.arange(m)]),
              np.concatenate([remap[net.cols[inner]], np.arange(m)]))),
            shape=(m, m),
        )
        return J, wts

    scale = 1.0 + float(np.abs(w).max()) + float(np.bincount(net.rows, np.abs(net.weights), minlength=n).max())
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
    ncomp, _ = connected_components(sp.csr_matrix((np.ones(len(net.rows)), (net.rows, net.cols)), shape=(n, n)),
                                    directed=False)
    if use_cg and ncomp == 1 and np.all(wts > 0) and (b1 is None or np.all(np.asarray(J.diagonal()) < 0)):
        # positive edge weights on a connected graph: −J̃ is a reduced weighted Laplacian, PD
        diag_margin = float("nan")
        stable = True
        margin = diag_margin
    else:
        try:
            vals = spla.eigs(J, k=1, which="LR", return_eigenvectors=False, maxiter=5000, tol=1e-8)
            margin = float(-vals.real.max())
        except (spla.ArpackNoConvergence, spla.ArpackError):
            margin = float("nan")
        stable = bool(margin > 0)
    return Equilibrium(th, np.asarray(res), np.asarray(it), np.asarray(converged),
                       np.asarray(stable), np.asarray(margin))
