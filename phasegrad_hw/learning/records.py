"""What the EP controller takes and gives (docs/design.md §4): its settings
(:class:`EPConfig`), the trainable parameters, one training sample (with its held input phases
or drive), the running counts and one step's report. :mod:`phasegrad_hw.learning.controller`
uses them and exports them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import ClampTargets
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.optim import LockBounds

Array = NDArray[np.float64]

__all__ = [
    "ControllerStats",
    "DriveSetting",
    "EPConfig",
    "Parameters",
    "Sample",
    "StepReport",
]


class EPConfig(StrictModel):
    """The hardware loop's settings: the EP ``rule`` (β, mode, averages, learning rates,
    what learns, clip, basin jump, optimizer; :class:`~phasegrad_hw.learning.ep.EPRule`),
    ``edges``, indices into ``model.edges`` of the learnable couplings (None: all),
    ``batch_size`` samples per update (None: one per substrate) and, for held-input devices,
    the locking projections' ``omega_lock_frac`` and ``held_load_frac``
    (:func:`~phasegrad_hw.learning.optim.project_locking`)."""

    rule: EPRule = Field(default_factory=EPRule)
    edges: list[int] | None = None
    batch_size: int | None = Field(default=None, ge=1)
    omega_lock_frac: float = Field(default=0.9, gt=0.0, le=1.0)
    held_load_frac: float = Field(default=0.5, gt=0.0, lt=1.0)

    def lock_bounds(self, model: DeviceModel) -> LockBounds | None:
        """The locking projections for ``model`` (None without held inputs)."""
        if not model.roles.held:
            return None
        return LockBounds(self.omega_lock_frac, model.held_injection, self.held_load_frac)


@dataclass
class Parameters:
    """Trainable device parameters: ``omega`` (N,) natural frequencies (model units; the input
    oscillators' entries are overwritten per sample) and ``coupling`` (E,) on ``model.edges``."""

    omega: Array
    coupling: Array

    def copy(self) -> Parameters:
        return Parameters(self.omega.copy(), self.coupling.copy())


DriveSetting = tuple[
    Array, float
]  # drive amplitudes F (n_drive,) model units, quasi-static phase ψ (rad)


@dataclass(frozen=True)
class Sample:
    """One training sample: input-oscillator frequencies (n_inputs,), the clamp targets
    (n_outputs,) rad — or a function of the free output phases that returns them (or
    :class:`~phasegrad_hw.device.substrate.ClampTargets` with a gain) — the held input phases
    (n_held,) rad of a held-input device, and ``drive`` the sample's external drive on
    ``roles.drive`` (a driven sensor bank's input, set with ``set_drive`` before the free read;
    None: the drive is left as it is)."""

    input_omega: Array
    targets: Array | Callable[[Array], Array | ClampTargets]
    held_phases: Array | None = None
    drive: DriveSetting | None = None


@dataclass
class ControllerStats:
    """Running counts since the controller was made."""

    steps: int = 0
    updates: int = 0
    skipped_unlocked: int = 0
    skipped_basin_jump: int = 0
    errors: int = 0

    @property
    def skipped(self) -> int:
        return self.skipped_unlocked + self.skipped_basin_jump


class StepReport(NamedTuple):
    """What one step measured and did (an immutable record).

    ``free_phases`` (n_samples, N) rad, the free reading of each sample; ``free_locked`` its
    lock flag; ``valid`` mask of samples that contributed; ``grad_omega``
    (N,) and ``grad_coupling`` (E,) the valid samples' mean gradient (masked to the learnable
    subset, before clipping; None when nothing was valid or that set does not learn);
    ``loss`` mean over the valid samples of the nudge's loss toward the clamp targets at the
    free state (½Σ(θ_o − t)² linear, Σ(1 − cos(θ_o − t)) injection; rad²; NaN if none);
    ``targets`` (n_samples, n_outputs) the clamp targets each sample was nudged toward (rad;
    NaN for a sample that was not nudged).
    """

    free_phases: Array
    free_locked: NDArray[np.bool_]
    valid: NDArray[np.bool_]
    skipped_unlocked: int
    skipped_basin_jump: int
    updated: bool
    grad_omega: Array | None
    grad_coupling: Array | None
    loss: float
    targets: Array | None = None

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())
