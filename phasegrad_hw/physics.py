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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import lapack
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)

Array = NDArray[np.float64]
NudgeKind = Literal["linear", "injection"]
_EPS = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------- validation
def _as_float_array(name: str, value: ArrayLike) -> Array:
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = arr[~np.isfinite(arr)].ravel()[0]
        raise ValueError(f"{name}: contains a non-finite value ({bad}); all entries must be finite")
    return arr


def _check_ref(ref: int, n: int) -> int:
    if not isinstance(ref, (int, np.integer)) or not 0 <= int(ref) < n:
        raise ValueError(
            f"ref: {ref!r} is out of range; must be an oscillator index in [0, {n - 1}]")
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


def energy(
    theta: ArrayLike, omega: ArrayLike, K: ArrayLike, coupling: CouplingFunction = SIN
) -> Array:
    """Lyapunov energy E = −Σ ω_i θ_i + ½ Σ_ij K_ij V(θ_j − θ_i) (V′ = H), dθ/dt = −∇E.

    For H = sin, V = −cos: E = −Σ ω_i θ_i − ½ Σ_ij K_ij cos(θ_j − θ_i).

    Exists only for symmetric K and odd H; raises ValueError otherwise.
    """
    Km = np.asarray(K, dtype=np.float64)
    if not np.allclose(Km, np.swapaxes(Km, -1, -2)):
        raise ValueError("K: energy needs a symmetric coupling matrix")
    th = np.asarray(theta, dtype=np.float64)
    V = coupling.potential(phase_differences(th))
    return -(np.asarray(omega) * th).sum(axis=-1) + 0.5 * (Km * V).sum(axis=(-1, -2))


def _opt(x: ArrayLike | None) -> Array | None:
    return None if x is None else np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- equilibria
class Equilibrium:
    """Result of :func:`solve_equilibrium`.

    ``theta`` phases (rad) with θ_ref = 0; ``residual`` max |F_i| over the reduced system;
    ``converged`` Newton reached the tolerance; ``stable`` the reduced Jacobian J̃ is negative
    definite (all eigenvalues with negative real part); ``margin`` the smallest eigenvalue of
    −J̃ (its smallest real part if J̃ is not symmetric) — the distance from losing stability.
    ``ok`` is converged and stable. Arrays carry the batch shape of the input.

    ``margin`` may be passed as an array or as a zero-argument callable; a callable is
    evaluated on first access (the solver decides ``stable`` from a Cholesky factorisation and
    only pays for the eigenvalue when someone asks for it).
    """

    __slots__ = ("theta", "residual", "iterations", "converged", "stable", "_margin")

    def __init__(
        self,
        theta: Array,
        residual: Array,
        iterations: NDArray[np.int64] | Array,
        converged: NDArray[np.bool_],
        stable: NDArray[np.bool_],
        margin: Array | Callable[[], Array],
    ) -> None:
        self.theta = theta
        self.residual = residual
        self.iterations = iterations
        self.converged = converged
        self.stable = stable
        self._margin = margin

    @property
    def margin(self) -> Array:
        if callable(self._margin):
            self._margin = np.asarray(self._margin(), dtype=np.float64)
        return self._margin

    @property
    def ok(self) -> NDArray[np.bool_]:
        return self.converged & self.stable

    def __repr__(self) -> str:
        return (f"Equilibrium(theta={self.theta!r}, residual={self.residual!r}, "
                f"iterations={self.iterations!r}, converged={self.converged!r}, "
                f"stable={self.stable!r})")


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
    frame: Literal["pinned", "free"] = "pinned",
) -> Equilibrium:
    """Locked state of the reduced system F̃(θ) = 0 (θ_ref pinned at 0) by damped Newton.

    ``omega`` (N,) or (B, N) in the rotating frame (normally :func:`centred` frequencies);
    ``K`` dense (N, N) / (B, N, N) or scipy.sparse (N, N); ``theta0`` warm start; ``beta``
    scalar or per-oscillator nudge strength (>= 0, zero for unnudged oscillators) with
    ``target`` phases; ``direction`` +1 pulls toward the target, −1 pushes away (the −β state
    of a centred estimate, keeping β a non-negative strength). Never raises for a network
    that cannot lock: it comes back with ``converged`` False. Stability is checked on the
    solution, not assumed: Cholesky of −J̃ (shifted by 1e-10·max|J̃|) when J̃ is symmetric
    (symmetric K, odd H), eigenvalues of J̃ otherwise.

    ``frame``: the pinned reduced system drops the reference oscillator's own equation. For
    symmetric K and odd H that equation is implied (Σ_i F_i = 0); for asymmetric K or
    non-odd H it is not, and "pinned" finds the state with the reference held in the frame
    of ``omega`` (what a chip whose clock is locked to the reference at a given Ω sees, with
    ``omega`` − Ω passed in). ``frame="free"`` instead solves for the collective locked
    frequency Ω as well (all N equations F_i = Ω, θ_ref = 0; a nudge acts relative to the
    reference, its reaction on the reference, so symmetric networks get the pinned state
    back); stability is then judged on the relative-phase dynamics. Dense path only.

    One small network (N <= 64) with H = a·sin and symmetric K runs through a numba kernel
    when numba is installed (the same algorithm; see :mod:`phasegrad_hw._physics_numba`).
    """
    if direction not in (1, -1):
        raise ValueError(f"direction: {direction!r} must be +1 (toward target) or -1 (away)")
    if frame not in ("pinned", "free"):
        raise ValueError(f"frame: {frame!r} is not a frame; use 'pinned' or 'free'")
    if nudge not in ("linear", "injection"):
        raise ValueError(f"nudge: {nudge!r} is not a nudge kind; use 'linear' or 'injection'")
    if not (tol > 0 and max_iter >= 1):
        raise ValueError(f"tol/max_iter: need tol > 0 and max_iter >= 1, got {tol}, {max_iter}")
    if type(omega) is np.ndarray and type(K) is np.ndarray and omega.ndim == 1:
        fast = _solve_compiled(omega, K, coupling, theta0, ref, beta, target, nudge, direction,
                               tol, max_iter)
        if fast is not None:
            return fast
    if sp.issparse(K):
        return _solve_sparse(omega, K, coupling, theta0, ref, beta, target, nudge, direction,
                             tol, max_iter)
    w = _as_float_array("omega", omega)
    Km = _as_float_array("K", K)
    if w.ndim not in (1, 2):
        raise ValueError(f"omega: shape {w.shape} must be (N,) or (B, N)")
    N = w.shape[-1]
    B = 1 if w.ndim == 1 else w.shape[0]
    if Km.shape[-2:] != (N, N) or Km.ndim not in (2, 3) or (Km.ndim == 3 and Km.shape[0] != B):
        need = f"({N}, {N})" if w.ndim == 1 else f"({N}, {N}) or ({B}, {N}, {N})"
        raise ValueError(f"K: shape {Km.shape} does not match omega {w.shape}; need {need}")
    if Km.ndim == 3 and w.ndim == 1:
        raise ValueError(f"K: shape {Km.shape} is batched but omega {w.shape} is not")
    r = _check_ref(ref, N)
    if N < 2:
        raise ValueError(f"omega: {N} oscillator(s); need at least 2")
    if theta0 is None:
        th0 = np.zeros(w.shape)
    else:
        t0 = _as_float_array("theta0", theta0)
        try:
            th0 = np.array(np.broadcast_to(t0, w.shape))
        except ValueError as exc:
            raise ValueError(f"theta0: shape {t0.shape} does not fit omega {w.shape}") from exc
    bet, tgt = _nudge_args(beta, target, w.shape, direction)
    symmetric = coupling.is_odd and bool((Km == np.swapaxes(Km, -1, -2)).all())
    perm: NDArray[np.intp] | None = None
    if r != 0:  # move the reference to index 0 so the reduced system is a plain slice
        perm = np.concatenate(([r], np.arange(r), np.arange(r + 1, N)))
        w, th0 = w[..., perm], th0[..., perm]
        Km = Km[..., perm[:, None], perm[None, :]]
        bet = None if bet is None else bet[..., perm]
        tgt = None if tgt is None else tgt[..., perm]
    if w.ndim == 1 and bet is None and N <= 64 and symmetric and len(coupling.harmonics) == 1:
        res = _newton_small_sin(w, Km * coupling.harmonics[0], None if theta0 is None else th0,
                                tol, max_iter, symmetric)
        if perm is not None:
            res.theta = res.theta[np.argsort(perm)]
        return res
    model = _DenseModel(w, Km, coupling, bet, tgt, nudge, free=frame == "free" and not symmetric)
    if w.ndim == 1:
        res = _newton_single(model, None if theta0 is None else th0, tol, max_iter, symmetric)
    else:
        res = _newton_batched(model, th0, tol, max_iter, symmetric)
    if perm is not None:
        inv = np.argsort(perm)
        res.theta = res.theta[..., inv]
    return res


_F64 = np.dtype(np.float64)
_EMPTY = np.zeros(0)
_NUDGE_CODE = {"linear": 1, "injection": 2}
_compiled_state: list[Callable[..., Any] | None] = []


def _compiled_kernel() -> Callable[..., Any] | None:
    """The numba kernel for one small network (imported on first use), or None without numba."""
    if not _compiled_state:
        try:
            from phasegrad_hw._physics_numba import solve_small
        except ImportError:  # numba is the optional extra "fast"
            _compiled_state.append(None)
        else:
            _compiled_state.append(solve_small)
    return _compiled_state[0]


def _fast_vector(x: ArrayLike | None, n: int) -> Array | None:
    """A contiguous float64 (n,) view of an array or a Python scalar, else None (no copy of
    arrays; anything unusual — other dtypes, shapes, layouts — goes to the numpy path)."""
    if type(x) is np.ndarray:
        if x.dtype == _F64 and x.shape == (n,) and x.flags.c_contiguous:
            return x
        return None
    if type(x) is float or type(x) is int:
        return np.full(n, float(x))
    return None


def _solve_compiled(
    omega: Array, K: Array, coupling: CouplingFunction, theta0: ArrayLike | None, ref: int,
    beta: ArrayLike | None, target: ArrayLike | None, nudge: NudgeKind, direction: int,
    tol: float, max_iter: int,
) -> Equilibrium | None:
    """One small dense network with H = a·sin and symmetric K through the numba kernel, with
    only the validation that is cheap in Python (types, dtypes, shapes, ref); the kernel checks
    finite entries, β >= 0 and symmetry. None: not this case (or numba missing, or a check
    failed) — the caller takes the numpy path, which raises the usual errors for bad input."""
    n = omega.shape[0]
    if not (2 <= n <= 64 and K.shape == (n, n) and omega.dtype == _F64 and K.dtype == _F64
            and omega.flags.c_contiguous and K.flags.c_contiguous
            and type(max_iter) is int and (type(ref) is int or type(ref) is np.int64)
            and 0 <= ref < n and len(coupling.harmonics) == 1 and coupling.is_odd):
        return None
    kernel = _compiled_kernel()
    if kernel is None:
        return None
    th0 = _EMPTY if theta0 is None else _fast_vector(theta0, n)
    bet: Array | None = _EMPTY
    tgt: Array | None = _EMPTY
    kind = 0
    if beta is not None:
        bet = _fast_vector(beta, n)
        tgt = _fast_vector(0.0 if target is None else target, n)
        kind = _NUDGE_CODE[nudge]
    if th0 is None or bet is None or tgt is None:
        return None
    status, th, A, res, it, conv, chol_ok, shift = kernel(
        omega, K, float(coupling.harmonics[0]), th0, theta0 is not None, bet, tgt, kind,
        float(direction), int(ref), float(tol), max_iter)
    if status != 0:
        return None
    A = np.asarray(A, dtype=np.float64)
    stable = bool(chol_ok) or bool(np.linalg.eigvalsh(A)[0] > shift)

    def margin() -> Array:
        return np.asarray(np.linalg.eigvalsh(A)[0])

    return Equilibrium(np.asarray(th, dtype=np.float64), np.asarray(res), np.asarray(it),
                       np.asarray(conv), np.asarray(stable), margin)


def _nudge_args(
    beta: ArrayLike | None, target: ArrayLike | None, shape: tuple[int, ...], direction: int
) -> tuple[Array | None, Array | None]:
    """Validated (signed β, target) broadcast to ``shape``; the sign carries ``direction``."""
    if beta is None:
        return None, None
    b = _as_float_array("beta", beta)
    if np.any(b < 0):
        raise ValueError(f"beta: {b[b < 0].ravel()[0]} is negative; nudge strength must be >= 0")
    t = _as_float_array("target", 0.0 if target is None else target)
    try:
        bb = np.broadcast_to(b, shape)
        tt = np.broadcast_to(t, shape)
    except ValueError as exc:
        raise ValueError(
            f"beta/target: shapes {b.shape}, {t.shape} do not fit {shape}"
        ) from exc
    return bb * float(direction), tt


class _DenseModel:
    """F̃ and −J̃ of the reduced system (reference at index 0) for (…, N) phases.

    For H = a·sin the N² trigonometric evaluations are avoided with
    sin(θ_j − θ_i) = s_j c_i − c_j s_i and cos(θ_j − θ_i) = c_i c_j + s_i s_j, so one Newton
    iteration is two matrix–vector products, one outer product and one factorisation.
    """

    def __init__(self, w: Array, K: Array, coupling: CouplingFunction, bet: Array | None,
                 tgt: Array | None, nudge: NudgeKind, free: bool = False) -> None:
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
            Wm = (self.Ka * np.cos(cache[0]) if self.fast
                  else self.K * self.coupling.derivative(cache[0]))
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
            Wm = (self.Ka * np.cos(cache[0]) if self.fast
                  else self.K * self.coupling.derivative(cache[0]))
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


def _newton_small_sin(w: Array, Ka: Array, th0: Array | None, tol: float, max_iter: int,
                      symmetric: bool) -> Equilibrium:
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
    floor = 64.0 * _EPS * (1.0 + float(np.abs(w).max()) + float(np.abs(Ka).sum(axis=1).max())) \
        * np.sqrt(n)

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
    return Equilibrium(th, np.asarray(res), np.asarray(it), np.asarray(res <= max(tol, floor)),
                       np.asarray(stable), margin)


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


def _newton_single(model: _DenseModel, th0: Array | None, tol: float, max_iter: int,
                   symmetric: bool) -> Equilibrium:
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
        big = float(np.abs(step[1 - lo:]).max())
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
    return Equilibrium(th, np.asarray(res), np.asarray(it), np.asarray(converged),
                       stable[0], (lambda: margin()[0]) if callable(margin) else margin[0])


def _newton_batched(model: _DenseModel, th0: Array, tol: float, max_iter: int,
                    symmetric: bool) -> Equilibrium:
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
        big = np.abs(step[:, 1 - lo:]).max(axis=1, keepdims=True)
        step *= np.minimum(1.0, 1.0 / np.maximum(big, 1e-300))
        norm0 = np.einsum("bi,bi->b", Fa, Fa)
        trial = tha.copy()
        trial[:, lo:] += step
        Ft, ct = m.force(trial)
        good = (np.einsum("bi,bi->b", Ft, Ft) <= (1.0 - 1e-4) * norm0)
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
            (np.concatenate([wts[inner], diag[keep_idx]]),
             (np.concatenate([remap[net.rows[inner]], np.arange(m)]),
              np.concatenate([remap[net.cols[inner]], np.arange(m)]))),
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
    ncomp, _ = connected_components(adj,
                                    directed=False)
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
    return Equilibrium(th, np.asarray(res), np.asarray(it), np.asarray(converged),
                       np.asarray(stable), np.asarray(margin))
