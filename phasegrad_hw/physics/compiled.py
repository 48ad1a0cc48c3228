"""The compiled (numba) path of :func:`~phasegrad_hw.physics.solve_equilibrium`: validation
that is cheap in Python, then a kernel — :func:`~phasegrad_hw.physics._kernels.solve_small`
(edge list; H = a·sin, symmetric K, pinned frame: the ideal chip and the simulated device)
or :func:`~phasegrad_hw.physics._dense_kernel.solve_dense_small` (any H and K, either frame:
the emulated CMOS and optical chips)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from phasegrad_hw.physics.coupling import SIN, Array, CouplingFunction, NudgeKind
from phasegrad_hw.physics.dense import lazy_stability
from phasegrad_hw.physics.policy import NEWTON
from phasegrad_hw.physics.result import Equilibrium

log = logging.getLogger(__name__)


_F64 = np.dtype(np.float64)
_EMPTY = np.zeros(0)
_NUDGE_CODE = {"linear": 1, "injection": 2}


class _Kernels(NamedTuple):
    small: Callable[..., Any]  # _kernels.solve_small
    dense: Callable[..., Any]  # _dense_kernel.solve_dense_small


@cache
def _compiled_kernels() -> _Kernels | None:
    """The numba kernels (imported on first use), or None without numba."""
    try:
        from phasegrad_hw.physics._dense_kernel import solve_dense_small
        from phasegrad_hw.physics._kernels import solve_small
    except ImportError:  # numba is the optional extra "fast"
        return None
    return _Kernels(solve_small, solve_dense_small)


@cache
def warm_up() -> None:
    """Load both kernels now (once per process). numba's first use in a process costs about
    0.3–0.6 s (its typing registries and the cached machine code); an emulated device calls
    this when it is made, so that cost does not land inside its first timed exchange. No-op
    without numba."""
    if _compiled_kernels() is None:
        return
    w = np.array([0.1, -0.1])
    K = np.array([[0.0, 1.0], [1.0, 0.0]])
    b = np.array([0.0, 0.1])
    for H, free in ((SIN, False), (CouplingFunction(cos_offset=0.1), True)):
        _solve_compiled(w, K, H, w, 0, b, w, "linear", 1, NEWTON.tol, NEWTON.max_iter, free)


@lru_cache(maxsize=64)
def _coupling_terms(coupling: CouplingFunction) -> Any:
    """The dense kernel's :class:`~phasegrad_hw.physics._dense_kernel.Coupling` of H."""
    from phasegrad_hw.physics._dense_kernel import coupling_terms

    h0 = float(coupling.value(np.zeros(1))[0])
    return coupling_terms(
        coupling.harmonics, coupling.phase_lag, coupling.offset, coupling.cos_offset, h0
    )


@lru_cache(maxsize=64)
def _policy(tol: float, max_iter: int) -> Any:
    """The kernel's policy array (:func:`~phasegrad_hw.physics._kernels.policy_array` of the
    policy :data:`~phasegrad_hw.physics.policy.NEWTON` with this solve's tol and max_iter)."""
    from phasegrad_hw.physics._kernels import newton_policy, policy_array

    pol = policy_array(newton_policy(NEWTON, tol, max_iter))
    pol.flags.writeable = False
    return pol


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
    omega: ArrayLike,
    K: object,
    coupling: CouplingFunction,
    theta0: ArrayLike | None,
    ref: int,
    beta: ArrayLike | None,
    target: ArrayLike | None,
    nudge: NudgeKind,
    direction: int,
    tol: float,
    max_iter: int,
    free: bool,
) -> Equilibrium | None:
    """One small dense network through a numba kernel, with only the validation that is cheap
    in Python (types, dtypes, shapes, ref); the kernels check finite entries and β >= 0.
    H = a·sin with symmetric K in the pinned frame takes the edge kernel, anything else (or
    an asymmetric K there) the dense kernel. None: numba missing or a check failed — the
    caller takes the numpy path, which raises the usual errors for bad input."""
    if type(omega) is not np.ndarray or type(K) is not np.ndarray or omega.ndim != 1:
        return None
    n = omega.shape[0]
    if not (
        2 <= n <= 64
        and K.shape == (n, n)
        and omega.dtype == _F64
        and K.dtype == _F64
        and omega.flags.c_contiguous
        and K.flags.c_contiguous
        and type(max_iter) is int
        and (type(ref) is int or type(ref) is np.int64)
        and 0 <= ref < n
    ):
        return None
    kernels = _compiled_kernels()
    if kernels is None:
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
    pol = _policy(float(tol), max_iter)
    if not free and len(coupling.harmonics) == 1 and coupling.is_odd:
        status, th, A, res, it, conv, chol_ok, shift = kernels.small(
            omega, K, float(coupling.harmonics[0]), th0, theta0 is not None, bet, tgt, kind,
            float(direction), int(ref), pol,
        )  # fmt: skip
        if status == 0:
            stable = bool(chol_ok) or bool(np.linalg.eigvalsh(A)[0] > shift)

            def margin() -> Array:
                return np.asarray(np.linalg.eigvalsh(A)[0])

            return Equilibrium(
                th, np.asarray(res), np.asarray(it),
                np.asarray(conv), np.asarray(stable), margin, path="compiled",
            )  # fmt: skip
    status, th, S, res, it, conv, sym = kernels.dense(
        omega, K, _coupling_terms(coupling), th0, theta0 is not None, bet, tgt, kind,
        float(direction), int(ref), free, pol,
    )  # fmt: skip
    if status != 0:
        return None
    S = S[None]
    judge, mg = lazy_stability(lambda: S, bool(sym), NEWTON)
    return Equilibrium(
        th, np.asarray(res), np.asarray(it), np.asarray(conv),
        lambda: judge()[0], lambda: mg()[0], path="compiled",
    )  # fmt: skip
