"""Locked states: :func:`solve_equilibrium`, the one entry point of the solver family
(dense, edge, sparse and compiled paths; docs/design.md §2)."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.physics.compiled import _solve_compiled
from phasegrad_hw.physics.coupling import (
    SIN,
    CouplingFunction,
    NudgeKind,
    _as_float_array,
    _check_ref,
    _nudge_args,
)
from phasegrad_hw.physics.dense import (
    _DenseModel,
    _newton_batched,
    _newton_single,
    _newton_small_sin,
)
from phasegrad_hw.physics.result import Equilibrium
from phasegrad_hw.physics.sparse import _solve_sparse

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


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
    when numba is installed (the same algorithm; see :mod:`phasegrad_hw.physics._kernels`).
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
        fast = _solve_compiled(
            omega, K, coupling, theta0, ref, beta, target, nudge, direction, tol, max_iter
        )
        if fast is not None:
            return fast
    if sp.issparse(K):
        return _solve_sparse(
            omega, K, coupling, theta0, ref, beta, target, nudge, direction, tol, max_iter
        )
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
        res = _newton_small_sin(
            w, Km * coupling.harmonics[0], None if theta0 is None else th0, tol, max_iter, symmetric
        )
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
