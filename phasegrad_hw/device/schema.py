"""The parts of a device file (Pydantic v2): limits, edges, roles, coupling function and
calibration thresholds, on one strict base that refuses ``inf``/``nan`` in every float field.
:class:`~phasegrad_hw.device.model.DeviceModel` puts them together (docs/design.md §4)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from phasegrad_hw.config import StrictModel
from phasegrad_hw.physics import CouplingFunction

__all__ = [
    "BiasLimits",
    "CalibrationThresholds",
    "ChannelLimit",
    "CouplingSpec",
    "DeviceFileModel",
    "EdgeSpec",
    "Limits",
    "Range",
    "Roles",
]


class DeviceFileModel(StrictModel):
    """Base of every model read from a device file: strict, and ``inf``/``nan`` rejected in
    every float field (a non-finite limit or coupling would pass every range check)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


class Range(DeviceFileModel):
    """Closed interval [min, max] in the unit of the field that holds it."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.min < self.max:
            raise ValueError(f"limits must be ordered: min ({self.min}) < max ({self.max})")
        return self


class ChannelLimit(DeviceFileModel):
    """Allowed range and safe value of one bias channel (device unit)."""

    min: float
    max: float
    safe: float

    @model_validator(mode="after")
    def _ordered(self) -> ChannelLimit:
        if not self.min < self.max:
            raise ValueError(f"limits must be ordered: min ({self.min}) < max ({self.max})")
        if not self.min <= self.safe <= self.max:
            raise ValueError(f"safe ({self.safe}) must lie within [{self.min}, {self.max}]")
        return self


class BiasLimits(ChannelLimit):
    """Bias limits for every channel, with optional per-channel overrides."""

    unit: Literal["V", "A", "mW", "model"] = "V"
    per_channel: dict[int, ChannelLimit] = Field(default_factory=dict)

    def channel(self, i: int) -> ChannelLimit:
        return self.per_channel.get(i, self)


class Limits(DeviceFileModel):
    """Device limits. ``omega`` and ``coupling`` in model units; ``beta_max`` model units."""

    omega: Range = Range(min=-3.0, max=3.0)
    coupling: Range = Range(min=0.01, max=8.0)
    bias: BiasLimits = BiasLimits(min=-3.0, max=3.0, safe=0.0, unit="model")
    beta_max: float = Field(default=1.0, gt=0)
    drive_max: float = Field(default=4.0, gt=0)  # largest drive amplitude F_i, model units
    max_averages: int = Field(default=4096, ge=1)

    @model_serializer(mode="wrap")
    def _omit_default_drive(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``drive_max`` is written only when set (existing files dump as before)."""
        out: dict[str, Any] = handler(self)
        if "drive_max" not in self.model_fields_set:
            out.pop("drive_max", None)
        return out


class EdgeSpec(DeviceFileModel):
    """A coupling between oscillators i and j: K_ij = ``k``, K_ji = ``k_ji`` (default ``k``),
    model units. ``invertible``: the edge has an inverted tap, so ``k`` may be negative."""

    i: int = Field(ge=0)
    j: int = Field(ge=0)
    k: float
    k_ji: float | None = None
    invertible: bool = False

    @model_serializer(mode="wrap")
    def _omit_plain(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``invertible`` is written only where it is true: the dump of an ordinary edge (and
        so every existing device file and board descriptor) stays as it was."""
        out: dict[str, Any] = handler(self)
        if not self.invertible:
            out.pop("invertible", None)
        return out


class Roles(DeviceFileModel):
    """Oscillator roles. The reference is pinned at phase 0 and read against. ``inputs``:
    frequency-encoded inputs; ``held``: phase-encoded (held) inputs; ``bias``: oscillators
    held at fixed phases (module doc)."""

    inputs: list[int] = Field(default_factory=list)
    held: list[int] = Field(default_factory=list)
    bias: list[int] = Field(default_factory=list)
    hidden: list[int] = Field(default_factory=list)
    outputs: list[int]
    drive: list[int] = Field(default_factory=list)
    reference: int = 0

    ROLE_NAMES: ClassVar[tuple[str, ...]] = ("inputs", "held", "bias", "hidden", "outputs")

    @model_serializer(mode="wrap")
    def _omit_no_drive(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``drive`` is written only when the device has driven oscillators (existing device
        files and board descriptors dump as before)."""
        out: dict[str, Any] = handler(self)
        if not self.drive:
            out.pop("drive", None)
        return out


class CouplingSpec(DeviceFileModel):
    """H(φ) = Σ_k a_k sin(kφ − ψ) + b0 + b1 cos φ (see :class:`CouplingFunction`)."""

    harmonics: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    phase_lag_rad: float = 0.0
    offset: float = 0.0
    cos_offset: float = 0.0

    def function(self) -> CouplingFunction:
        return CouplingFunction(
            tuple(self.harmonics), self.phase_lag_rad, self.offset, self.cos_offset
        )


class CalibrationThresholds(DeviceFileModel):
    """Pass/fail thresholds of the calibration suite (:mod:`phasegrad_hw.calibration`).

    ``max_asymmetry`` on ‖R − Rᵀ‖/‖R‖ of the phase response matrix (on the 2+5+2 chip
    ≈ ¼ of the per-edge asymmetry: 0.013 at 5 %, 0.05 at 20 %); ``max_edge_asymmetry`` on
    |k_ij − k_ji|/mean per edge (20 % random asymmetry costs ≈ 0.4 % gradient cosine, N = 15,
    docs/design.md §2); ``nonodd_z`` significance (in standard errors) and ``max_phase_lag_rad`` /
    ``max_even_fraction`` effect sizes above which H is flagged non-odd;
    ``min_phase_margin_rad`` on π/2 − |Δθ| per edge; ``min_eigenvalue`` on the reduced
    Laplacian (model frequency units); ``max_drift_rad_per_read`` phase drift between reads;
    ``max_transfer_error`` fit error relative to each channel's frequency span;
    ``target_cosine`` the gradient cosine the noise calibration must reach.
    """

    max_asymmetry: float = Field(default=0.025, gt=0.0, le=2.0)
    max_edge_asymmetry: float = Field(default=0.10, gt=0.0, le=2.0)
    nonodd_z: float = Field(default=4.0, gt=0.0)
    max_phase_lag_rad: float = Field(default=0.05, gt=0.0, le=3.2)
    max_even_fraction: float = Field(default=0.1, gt=0.0, le=10.0)
    min_phase_margin_rad: float = Field(default=0.2, ge=0.0, le=1.6)
    min_eigenvalue: float = Field(default=0.01, ge=0.0)
    max_drift_rad_per_read: float = Field(default=0.05, gt=0.0)
    max_transfer_error: float = Field(default=0.005, gt=0.0, le=1.0)
    target_cosine: float = Field(default=0.99, gt=0.0, lt=1.0)
