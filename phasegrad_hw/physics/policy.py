"""The one Newton policy every locked-state solver reads (docs/design.md §2).

Damped Newton on the reduced system F̃(θ) = 0 (reference pinned): a step is limited to
``trust_rad`` (max-norm, rad), accepted by an Armijo test on ‖F̃‖² with factor ``armijo``
(halving up to ``line_search_halvings`` times), and iteration stops at the residual target
max(``tol``, rounding floor). The rounding floor is what float64 can resolve of F̃:
``floor_factor``·eps·scale·√n with scale = 1 + max|ω| + (coupling row sum) [+ nudge terms],
in rad per model time unit. A solution is stable when −J̃ − shift·I is positive definite with
shift = ``stability_shift``·max|J̃| (Cholesky), or, for a non-symmetric J̃, when every
eigenvalue's real part is below −shift.

Every path (dense, edge, sparse, compiled) takes its numbers from :data:`NEWTON`; the
compiled kernels receive them as arguments, so changing the policy changes every path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EPS = 2.220446049250313e-16  # float64 machine epsilon


@dataclass(frozen=True)
class NewtonPolicy:
    """Numbers of the damped Newton iteration (units in each field's comment)."""

    tol: float = 1e-12  # residual target, max |F̃_i| (rad per model time unit)
    max_iter: int = 60  # Newton iterations before giving up (converged = False)
    trust_rad: float = 1.0  # largest step on any phase (rad)
    armijo: float = 1e-4  # sufficient decrease of ‖F̃‖²: ‖F̃(θ+αs)‖² <= (1 − armijo·α)‖F̃(θ)‖²
    line_search_halvings: int = 13  # α = 1, 1/2, … before the smallest step is taken anyway
    floor_factor: float = 64.0  # rounding floor = floor_factor·eps·scale·√n
    stability_shift: float = 1e-10  # relative to max|J̃|: stable iff λ_min(−J̃) > shift
    fast_iters: int = 12  # warm-started undamped iterations before the damped fallback
    step_done_rad: float = 1e-7  # a step this small means the next residual is at the floor

    def rounding_floor(self, scale: float, n: int) -> float:
        """Smallest residual float64 resolves for an n-oscillator system of this ``scale``."""
        return self.floor_factor * EPS * scale * math.sqrt(n)

    def target(self, scale: float, n: int, tol: float | None = None) -> float:
        """Residual at which iteration stops: max(tol, rounding floor)."""
        return max(self.tol if tol is None else tol, self.rounding_floor(scale, n))

    def stability_threshold(self, jac_abs_max: float) -> float:
        """Shift below which the smallest eigenvalue of −J̃ counts as not stable."""
        return self.stability_shift * (jac_abs_max + 1e-300)


NEWTON = NewtonPolicy()
