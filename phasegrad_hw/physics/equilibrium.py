"""Locked states: :func:`solve_equilibrium`, the one entry point of the solver family
(dense, edge, sparse and compiled paths; docs/design.md §2)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.physics.compiled import _solve_compiled
from phasegrad_hw.physics.coupling import (
    SIN,
    Array,
    CouplingFunction,
    NudgeKind,
    _as_float_array,
    _check_ref,
    _nudge_args,
)
from phasegrad_hw.physics.dense import _DenseModel, newton_dense
from phasegrad_hw.physics.edge import EdgeNetwork, solve_edges
from phasegrad_hw.physics.policy import NEWTON, NewtonPolicy
from phasegrad_hw.physics.result import Equilibrium
from phasegrad_hw.physics.sparse import _solve_sparse

log = logging.getLogger(__name__)

Method = Literal["auto", "dense", "edge", "sparse", "compiled"]
METHODS = ("auto", "dense", "edge", "sparse", "compiled")


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
    tol: float = NEWTON.tol,
    max_iter: int = NEWTON.max_iter,
    frame: Literal["pinned", "free"] = "pinned",
    method: Method = "auto",
    policy: NewtonPolicy = NEWTON,
) -> Equilibrium:
    """Locked state of the reduced system F̃(θ) = 0 (θ_ref pinned at 0) by damped Newton.

    ``omega`` (N,) or (B, N) in the rotating frame (normally :func:`centred` frequencies);
    ``K`` dense (N, N) / (B, N, N) or scipy.sparse (N, N); ``theta0`` warm start; ``beta``
    scalar or per-oscillator nudge strength (>= 0, zero for unnudged oscillators) with
    ``target`` phases; ``direction`` +1 pulls toward the target, −1 pushes away (the −β state
    of a centred estimate, keeping β a non-negative strength). Never raises for a network
    that cannot lock: it comes back with ``converged`` False. Stability is checked on the
    solution, not assumed (Cholesky of −J̃ − shift·I when J̃ is symmetric, eigenvalues
    otherwise; the numbers are the policy's, :mod:`phasegrad_hw.physics.policy`).

    ``frame``: the pinned reduced system drops the reference oscillator's own equation. For
    symmetric K and odd H that equation is implied (Σ_i F_i = 0); for asymmetric K or
    non-odd H it is not, and "pinned" finds the state with the reference held in the frame
    of ``omega`` (what a chip whose clock is locked to the reference at a given Ω sees, with
    ``omega`` − Ω passed in). ``frame="free"`` instead solves for the collective locked
    frequency Ω as well (all N equations F_i = Ω, θ_ref = 0; a nudge acts relative to the
    reference, its reaction on the reference); stability is then judged on the
    relative-phase dynamics (dense path). For symmetric K and odd H, Ω = mean(ω) and the
    free state is the pinned state at centred frequencies (any path).

    ``method`` picks the path (``Equilibrium.path`` records the one that ran): ``"dense"``
    (one network or a batch, any K and H); ``"edge"`` (the edge list of a symmetric K, odd
    H: trigonometry on the edges only, batched); ``"sparse"`` (one large network, iterative
    linear algebra); ``"compiled"`` (numba kernels: one network, N <= 64, float64 arrays,
    the default policy, any H and K, either frame — an edge kernel for H = a·sin with
    symmetric K, a dense one otherwise; ValueError if not available); ``"auto"`` (compiled
    when eligible, sparse for a scipy.sparse K, dense otherwise).
    """
    _check_options(direction, frame, nudge, tol, max_iter, method)
    if frame == "free" and _is_symmetric(K, coupling):
        omega = _centred_copy(omega)  # Ω = mean(ω): the pinned state at centred frequencies
        frame = "pinned"
    if (method == "auto" or method == "compiled") and policy is NEWTON:
        fast = _solve_compiled(
            omega, K, coupling, theta0, ref, beta, target, nudge, direction, tol, max_iter,
            frame == "free",
        )  # fmt: skip
        if fast is not None:
            return fast
    nud = (beta, target, nudge, direction)
    if method == "compiled":
        _Problem.build(omega, K, theta0, ref, nud)  # bad input raises its usual error
        raise ValueError(
            "method: 'compiled' needs numba and one small network (2 <= N <= 64, float64 "
            "arrays) with the default policy"
        )
    if method == "sparse" or (method == "auto" and sp.issparse(K)):
        if frame == "free":
            raise ValueError("frame: 'free' with asymmetric K or non-odd H needs the dense path")
        return _sparse_path(omega, K, coupling, theta0, ref, nud, tol, max_iter, policy)
    prob = _Problem.build(omega, K, theta0, ref, nud)
    if method == "edge":
        return prob.solve_edge(coupling, tol=tol, max_iter=max_iter, policy=policy)
    return prob.solve_dense(
        coupling, tol=tol, max_iter=max_iter, free=frame == "free", policy=policy
    )


def _sparse_path(
    omega: ArrayLike,
    K: ArrayLike | sp.spmatrix | sp.sparray,
    coupling: CouplingFunction,
    theta0: ArrayLike | None,
    ref: int,
    nud: tuple[ArrayLike | None, ArrayLike | None, NudgeKind, int],
    tol: float,
    max_iter: int,
    policy: NewtonPolicy,
) -> Equilibrium:
    """The sparse path for one large network (a dense K is converted to CSR)."""
    Ks = K if sp.issparse(K) else sp.csr_matrix(_as_float_array("K", K))
    b, t, kind, d = nud
    return _solve_sparse(
        omega, Ks, coupling, theta0=theta0, ref=ref, beta=b, target=t, nudge=kind,
        direction=d, tol=tol, max_iter=max_iter, policy=policy,
    )  # fmt: skip


def _check_options(
    direction: int, frame: str, nudge: str, tol: float, max_iter: int, method: str
) -> None:
    if direction not in (1, -1):
        raise ValueError(f"direction: {direction!r} must be +1 (toward target) or -1 (away)")
    if frame not in ("pinned", "free"):
        raise ValueError(f"frame: {frame!r} is not a frame; use 'pinned' or 'free'")
    if nudge not in ("linear", "injection"):
        raise ValueError(f"nudge: {nudge!r} is not a nudge kind; use 'linear' or 'injection'")
    if not (tol > 0 and max_iter >= 1):
        raise ValueError(f"tol/max_iter: need tol > 0 and max_iter >= 1, got {tol}, {max_iter}")
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not a solver path; use one of {METHODS}")


def _is_symmetric(K: ArrayLike | sp.spmatrix | sp.sparray, coupling: CouplingFunction) -> bool:
    if not coupling.is_odd:
        return False
    if sp.issparse(K):
        return bool(abs(sp.csr_matrix(K) - sp.csr_matrix(K).T).sum() == 0)
    Km = np.asarray(K)
    return bool((Km == np.swapaxes(Km, -1, -2)).all())


def _centred_copy(omega: ArrayLike) -> Array:
    w = _as_float_array("omega", omega)
    return np.asarray(w - w.mean(axis=-1, keepdims=True), dtype=np.float64)


@dataclass(frozen=True)
class _Problem:
    """Validated dense input, batched (B, N), reference moved to index 0 (``perm``)."""

    w: Array
    K: Array
    th0: Array
    bet: Array | None
    tgt: Array | None
    kind: NudgeKind
    ref: int
    single: bool
    perm: NDArray[np.intp] | None

    @classmethod
    def build(
        cls,
        omega: ArrayLike,
        K: ArrayLike | sp.spmatrix | sp.sparray,
        theta0: ArrayLike | None,
        ref: int,
        nud: tuple[ArrayLike | None, ArrayLike | None, NudgeKind, int],
    ) -> _Problem:
        w = _as_float_array("omega", omega)
        Km = _as_float_array("K", K.toarray() if sp.issparse(K) else K)  # type: ignore[union-attr]
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
        th0 = np.zeros(w.shape)
        if theta0 is not None:  # (read only by the solvers: no copy when the shape fits)
            t0 = _as_float_array("theta0", theta0)
            try:
                th0 = t0 if t0.shape == w.shape else np.array(np.broadcast_to(t0, w.shape))
            except ValueError as exc:
                raise ValueError(f"theta0: shape {t0.shape} does not fit omega {w.shape}") from exc
        beta, target, kind, direction = nud
        bet, tgt = _nudge_args(beta, target, w.shape, direction)
        single = w.ndim == 1
        if single:
            w, th0 = w[None], th0[None]
            bet = None if bet is None else bet[None]
            tgt = None if tgt is None else tgt[None]
        return cls(w, Km, th0, bet, tgt, kind, r, single, None)

    def moved(self) -> _Problem:
        """The same problem with the reference at index 0 (the reduced system is a slice)."""
        r, N = self.ref, self.w.shape[-1]
        if r == 0:
            return self
        p = np.concatenate(([r], np.arange(r), np.arange(r + 1, N)))
        return _Problem(
            self.w[:, p], self.K[..., p[:, None], p[None, :]], self.th0[:, p],
            None if self.bet is None else self.bet[:, p],
            None if self.tgt is None else self.tgt[:, p], self.kind, 0, self.single, p,
        )  # fmt: skip

    def result(self, eq: Equilibrium) -> Equilibrium:
        """Undo the reference move and the batch axis of a single network."""
        if self.perm is not None:
            eq.theta = eq.theta[:, np.argsort(self.perm)]
        if not self.single:
            return eq
        return Equilibrium(
            eq.theta[0], np.asarray(eq.residual[0]), np.asarray(eq.iterations[0]),
            np.asarray(eq.converged[0]), _first(eq._stable), _first(eq._margin), path=eq.path,
        )  # fmt: skip

    def solve_dense(
        self, coupling: CouplingFunction, *, tol: float, max_iter: int, free: bool,
        policy: NewtonPolicy,
    ) -> Equilibrium:  # fmt: skip
        p = self.moved()
        symmetric = coupling.is_odd and bool((p.K == np.swapaxes(p.K, -1, -2)).all())
        nud = None if p.bet is None or p.tgt is None else (p.bet, p.tgt, p.kind)
        model = _DenseModel(p.w, p.K, coupling, nud, free=free and not symmetric, policy=policy)
        eq = newton_dense(
            model, p.th0, tol=tol, max_iter=max_iter, symmetric=symmetric, policy=policy
        )
        return p.result(eq)

    def solve_edge(
        self, coupling: CouplingFunction, *, tol: float, max_iter: int, policy: NewtonPolicy
    ) -> Equilibrium:
        net, k = EdgeNetwork.from_matrix(self.K, self.ref)
        k = np.broadcast_to(k, (len(self.w), k.shape[1]))
        eq = solve_edges(
            net, self.w, k, self.th0, coupling, beta=self.bet, target=self.tgt,
            nudge=self.kind, damped=True, tol=tol, max_iter=max_iter, policy=policy,
        )  # fmt: skip
        return self.result(eq)


_T = TypeVar("_T", bound=np.generic)


def _first(x: NDArray[_T] | Callable[[], NDArray[_T]]) -> NDArray[_T] | Callable[[], NDArray[_T]]:
    """Row 0 of a batch-of-one result field, kept lazy when it is (evaluated on access)."""
    if callable(x):
        return lambda: np.asarray(x())[0]
    return np.asarray(x)[0]
