"""The published equilibrium method, written here as the speed baseline.

The seed paper (arXiv 2604.10272) solves the reduced system F̃(θ) = 0 (reference pinned at
0) with ``scipy.optimize.fsolve`` (MINPACK hybrd), no Jacobian supplied — so MINPACK builds
it by forward differences — one network at a time, at fsolve's default tolerance
``xtol`` = 1.49012e-08 (the published code passes none). That is the default here too, so a
speed ratio compares against the method as published; a tighter ``xtol`` (e.g. 1e-12, to
match our residual ≲ 1e-13) makes the baseline slower and is a choice the caller must state.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import fsolve

Array = NDArray[np.float64]
PUBLISHED_XTOL = 1.49012e-08  # scipy.optimize.fsolve's default, as the published code calls it


def reduced_residual(x: Array, omega_c: Array, K: Array) -> Array:
    """F̃_i = ω^c_i + Σ_j K_ij sin(θ_j − θ_i) for i ≠ 0, θ = (0, x) (rad per time unit)."""
    th = np.concatenate(([0.0], x))
    return (omega_c + (K * np.sin(th[None, :] - th[:, None])).sum(axis=1))[1:]


def fsolve_equilibrium(
    omega_c: Array, K: Array, theta0: Array | None = None, xtol: float = PUBLISHED_XTOL
) -> tuple[Array, float]:
    """(θ with θ_0 = 0, max |F̃|) by fsolve on the reduced system, no Jacobian."""
    n = omega_c.shape[0]
    x0 = np.zeros(n - 1) if theta0 is None else np.asarray(theta0[1:] - theta0[0], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # MINPACK "not making progress"
        x = np.asarray(fsolve(reduced_residual, x0, args=(omega_c, K), xtol=xtol), dtype=np.float64)
    return np.concatenate(([0.0], x)), float(np.abs(reduced_residual(x, omega_c, K)).max())


def fsolve_nudged(
    omega_c: Array,
    K: Array,
    beta: Array,
    target: Array,
    theta0: Array,
    xtol: float = PUBLISHED_XTOL,
) -> Array:
    """Nudged state (linear nudge β(θ_tgt − θ)) by fsolve on the reduced system."""

    def f(x: Array) -> Array:
        th = np.concatenate(([0.0], x))
        return reduced_residual(x, omega_c, K) + (beta * (target - th))[1:]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        x = fsolve(f, np.asarray(theta0[1:] - theta0[0], dtype=float), xtol=xtol)
    return np.concatenate(([0.0], np.asarray(x, dtype=np.float64)))
