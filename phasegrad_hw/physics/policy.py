"""The one Newton policy every locked-state solver reads (docs/design.md §2).

Damped Newton on the reduced system F̃(θ) = 0 (reference pinned): a step is limited to
``trust_rad`` (max-norm, rad), accepted by an Armijo test on ‖F̃‖² with factor ``armijo``
(``line_search_trials`` step lengths α = 1, 1/2, …, the last taken anyway), and iteration
stops at the residual target max(``tol``, rounding floor). The rounding floor is what
float64 can resolve of F̃: ``floor_factor``·eps·scale·√n with scale = 1 + max|ω| + (coupling
row sum) [+ nudge terms], in rad per model time unit. A solution is stable when −J̃ −
shift·I is positive definite with shift = ``stability_shift``·max|J̃| (Cholesky), or, for a
non-symmetric J̃, when every eigenvalue's real part is below −shift.

The dense, edge and sparse paths take their numbers from the policy they are given
(:data:`NEWTON` by default), and the pieces of the iteration they share — trust region,
Armijo backtracking over a batch of rows, the stall test — live here once
(:func:`trust_region`, :func:`backtrack`, :func:`stalled`). The compiled kernel has the
default numbers built in, so the dispatcher uses it only with :data:`NEWTON`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

EPS = 2.220446049250313e-16  # float64 machine epsilon
Array = NDArray[np.float64]


@dataclass(frozen=True)
class NewtonPolicy:
    """Numbers of the damped Newton iteration (units in each field's comment)."""

    tol: float = 1e-12  # residual target, max |F̃_i| (rad per model time unit)
    max_iter: int = 60  # Newton iterations before giving up (converged = False)
    trust_rad: float = 1.0  # largest step on any phase (rad)
    armijo: float = 1e-4  # sufficient decrease of ‖F̃‖²: ‖F̃(θ+αs)‖² <= (1 − armijo·α)‖F̃(θ)‖²
    line_search_trials: int = 13  # α = 1, 1/2, …, 1/2^12; the smallest is taken anyway
    floor_factor: float = 64.0  # rounding floor = floor_factor·eps·scale·√n
    stability_shift: float = 1e-10  # relative to max|J̃|: stable iff λ_min(−J̃) > shift
    fast_iters: int = 12  # warm-started undamped iterations before the damped fallback
    step_done_rad: float = 1e-7  # a step this small: the next residual is at the rounding floor

    def rounding_floor(self, scale: float | Array, n: int) -> float | Array:
        """Smallest residual float64 resolves for an n-oscillator system of this ``scale``
        (scalar or one value per row)."""
        return scale * (self.floor_factor * EPS * math.sqrt(n))

    def target(self, scale: float, n: int, tol: float | None = None) -> float:
        """Residual at which iteration stops: max(tol, rounding floor)."""
        return max(self.tol if tol is None else tol, float(self.rounding_floor(scale, n)))

    def stability_threshold(self, jac_abs_max: float | Array) -> float | Array:
        """Shift below which the smallest eigenvalue of −J̃ counts as not stable."""
        return self.stability_shift * (jac_abs_max + 1e-300)


NEWTON = NewtonPolicy()


def trust_region(step: Array, policy: NewtonPolicy = NEWTON, lo: int = 0) -> Array:
    """Scale each row of ``step`` (B, M) so that max |step[:, lo:]| <= ``trust_rad`` (columns
    before ``lo`` are not phases, e.g. the collective frequency of the free frame)."""
    if float(np.abs(step[:, lo:]).max()) <= policy.trust_rad:
        return step
    big = np.abs(step[:, lo:]).max(axis=1, keepdims=True)
    return step * np.minimum(1.0, policy.trust_rad / np.maximum(big, 1e-300))


_ROWS = np.arange(64)  # row indices of small batches (read only)
_ROWS.flags.writeable = False

Evaluate = Callable[[NDArray[np.intp], float], tuple[Array, Array, tuple[Array, ...]]]


def backtrack(
    evaluate: Evaluate, norm0: Array, floor: Array, policy: NewtonPolicy = NEWTON
) -> tuple[Array, Array, tuple[Array, ...]]:
    """Armijo backtracking for a batch of Newton steps, one step length per row.

    ``evaluate(rows, α)`` returns (trial state, F̃, cache arrays) of those rows at step length
    α; ``norm0`` (B,) is ‖F̃‖² before the step, ``floor`` (B,) the rounding floors. A row
    accepts the first α with ‖F̃‖² <= (1 − armijo·α)·norm0 or max|F̃| <= floor; after
    ``line_search_trials`` lengths the smallest is taken anyway (escapes plateaus).
    Returns (state, F̃, cache) of every row.
    """
    rows = _ROWS[: len(norm0)] if len(norm0) <= len(_ROWS) else np.arange(len(norm0))
    trial, F, cache = evaluate(rows, 1.0)
    good = np.einsum("bi,bi->b", F, F) <= (1.0 - policy.armijo) * norm0
    if good.all():  # the full Newton step decreases every row (the usual case)
        return trial, F, cache
    good |= np.abs(F).max(axis=1) <= floor
    p = np.flatnonzero(~good)
    alpha = 1.0
    for trial_no in range(1, policy.line_search_trials):
        if p.size == 0:
            break
        alpha *= 0.5
        tp, Fp, cp = evaluate(p, alpha)
        ok = np.einsum("bi,bi->b", Fp, Fp) <= (1.0 - policy.armijo * alpha) * norm0[p]
        ok |= np.abs(Fp).max(axis=1) <= floor[p]
        if trial_no == policy.line_search_trials - 1:
            ok[:] = True
        q = p[ok]
        trial[q] = tp[ok]
        F[q] = Fp[ok]
        for x, y in zip(cache, cp, strict=True):
            x[q] = y[ok]
        p = p[~ok]
    return trial, F, cache


def active_rows(active: NDArray[np.bool_]) -> NDArray[np.intp] | None:
    """Indices of the ``active`` rows of a batch; None when every row is active (the caller
    works on the whole batch in place, no gathers), an empty array when none is."""
    if len(active) == 1:
        return None if active[0] else _ROWS[:0]
    a = np.flatnonzero(active)
    return None if a.size == len(active) else a


def stalled(new_res: Array, res: Array, floor: Array) -> NDArray[np.bool_]:
    """Rows whose residual stopped decreasing at the rounding floor (further steps only
    shuffle rounding errors)."""
    return np.asarray((new_res >= res) & (res <= floor), dtype=np.bool_)
