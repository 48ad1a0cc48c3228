"""The result of a locked-state solve (every path returns it)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.physics.coupling import Array

log = logging.getLogger(__name__)

SolverPath = Literal["dense", "edge", "sparse", "compiled"]


class Equilibrium:
    """Result of :func:`solve_equilibrium`.

    ``theta`` phases (rad) with θ_ref = 0; ``residual`` max |F_i| over the reduced system;
    ``converged`` Newton reached the tolerance; ``stable`` the reduced Jacobian J̃ is negative
    definite (all eigenvalues with negative real part); ``margin`` the smallest eigenvalue of
    −J̃ (its smallest real part if J̃ is not symmetric) — the distance from losing stability.
    ``ok`` is converged and stable. Arrays carry the batch shape of the input. ``path`` names
    the solver that ran ("dense", "edge", "sparse" or "compiled"; None if not recorded).

    ``stable`` and ``margin`` may be passed as arrays or as zero-argument callables; a
    callable is evaluated once, on first access, and its value kept: a caller that judges
    stability itself (an emulated chip decides lock from its own linearisation) never pays
    for the solver's check, and the solver decides ``stable`` from a Cholesky factorisation
    without paying for the eigenvalue unless someone asks for ``margin``.
    """

    __slots__ = ("theta", "residual", "iterations", "converged", "_stable", "_margin", "path")

    def __init__(
        self,
        theta: Array,
        residual: Array,
        iterations: NDArray[np.int64] | Array,
        converged: NDArray[np.bool_],
        stable: NDArray[np.bool_] | Callable[[], NDArray[np.bool_]],
        margin: Array | Callable[[], Array],
        *,
        path: SolverPath | None = None,
    ) -> None:
        self.theta = theta
        self.residual = residual
        self.iterations = iterations
        self.converged = converged
        self._stable = stable
        self._margin = margin
        self.path: SolverPath | None = path

    @property
    def stable(self) -> NDArray[np.bool_]:
        if callable(self._stable):
            self._stable = np.asarray(self._stable(), dtype=np.bool_)
        return self._stable

    @property
    def margin(self) -> Array:
        if callable(self._margin):
            self._margin = np.asarray(self._margin(), dtype=np.float64)
        return self._margin

    @property
    def ok(self) -> NDArray[np.bool_]:
        return self.converged & self.stable

    def __repr__(self) -> str:
        return (
            f"Equilibrium(theta={self.theta!r}, residual={self.residual!r}, "
            f"iterations={self.iterations!r}, converged={self.converged!r}, "
            f"stable={self.stable!r}, path={self.path!r})"
        )
