"""The ω ↔ bias map of a device (docs/design.md §4): what ``set_frequencies`` uses to turn
natural frequencies (model units, rad per model time unit) into biases (the device's unit: V,
A, mW).

A substrate's ``frequency_map`` is its backend's nominal design curve by default (a
:class:`CurveMap`), ``None`` for devices that take frequencies natively (the simulated device,
the controller board and a remote agent map ω themselves). A transfer calibration assigns a
measured :class:`TransferMap` instead; nothing else changes on the substrate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, PrivateAttr

from phasegrad_hw.config import StrictModel, atomic_write_text
from phasegrad_hw.errors import ConfigError, LimitError

if TYPE_CHECKING:
    from scipy.interpolate import PchipInterpolator

log = logging.getLogger(__name__)
Array = NDArray[np.float64]


@runtime_checkable
class FrequencyMap(Protocol):
    """ω (N,) model units ↔ biases (N,) in the device unit; ``source`` says where it came
    from: ``"nominal"`` (the design curve), ``"frequency_counter"`` or ``"phase_response"``
    (a transfer calibration)."""

    @property
    def source(self) -> str: ...

    def bias(self, omega: Any) -> Array: ...

    def frequency(self, bias: Any) -> Array: ...


@dataclass(frozen=True)
class CurveMap:
    """A map from two vectorised callables: a backend's nominal design curve (or, with
    ``identity``, biases that *are* the frequencies, unit ``model``)."""

    to_bias: Callable[[Array], Array]
    to_frequency: Callable[[Array], Array]
    source: str = "nominal"

    def bias(self, omega: Any) -> Array:
        return np.asarray(self.to_bias(np.asarray(omega, dtype=np.float64)), dtype=np.float64)

    def frequency(self, bias: Any) -> Array:
        return np.asarray(self.to_frequency(np.asarray(bias, dtype=np.float64)), dtype=np.float64)


def _copy(x: Array) -> Array:
    return np.array(x, dtype=np.float64)


IDENTITY = CurveMap(_copy, _copy)  # nominal map of a device whose bias unit is ``model``


class ChannelCurve(StrictModel):
    """Channel k swept with the others at their safe biases: ``bias`` (device unit) and the
    fitted own frequency ``omega`` (model units, strictly monotone); ``crosstalk`` (points,
    N) the change of every channel's frequency against the safe point (own column 0; None
    when below the counter noise); ``error`` max held-out error relative to the span."""

    bias: list[float] = Field(min_length=2)
    omega: list[float] = Field(min_length=2)
    increasing: bool = True
    crosstalk: list[list[float]] | None = None
    error: float | None = None
    holdout_bias: list[float] | None = None  # held-out bias points (device unit)
    holdout_residual: list[float] | None = None  # fit − measurement there (model units)

    def forward(self) -> PchipInterpolator:
        from scipy.interpolate import PchipInterpolator

        return PchipInterpolator(np.asarray(self.bias), np.asarray(self.omega), extrapolate=False)

    def inverse(self) -> PchipInterpolator:
        from scipy.interpolate import PchipInterpolator

        b, w = np.asarray(self.bias), np.asarray(self.omega)
        order = np.argsort(w)
        return PchipInterpolator(w[order], b[order], extrapolate=False)


class TransferMap(StrictModel):
    """Calibrated bias ↔ ω map (the ``transfer`` part of a report and the
    ``<device>.transfer.json`` file saved next to a device file).

    Separable model: ω_i(b) = f_i(b_i) + Σ_{j≠i} c_ij(b_j), f_i the channel's own curve
    (others at safe biases) and c_ij the crosstalk of channel j onto i measured in j's
    sweep (heater crosstalk; zero for a CMOS array). The inverse solves
    b_i = f_i⁻¹(ω_i − Σ_{j≠i} c_ij(b_j)) by fixed-point iteration (converges for crosstalk
    below 1, i.e. diagonally dominant)."""

    device: str
    unit: str
    channels: list[ChannelCurve]
    source: str = "frequency_counter"
    _cache: dict[str, Any] = PrivateAttr(default_factory=dict)

    def _interp(self) -> tuple[list[Any], list[Any], list[Any | None]]:
        if "f" not in self._cache:
            from scipy.interpolate import PchipInterpolator

            self._cache["f"] = [c.forward() for c in self.channels]
            self._cache["inv"] = [c.inverse() for c in self.channels]
            self._cache["x"] = [
                None
                if c.crosstalk is None
                else PchipInterpolator(
                    np.asarray(c.bias), np.asarray(c.crosstalk), axis=0, extrapolate=False
                )
                for c in self.channels
            ]
        return self._cache["f"], self._cache["inv"], self._cache["x"]

    def _range_error(self, name: str, values: Array, k: int, lo: float, hi: float) -> LimitError:
        unit = f" {self.unit}" if name == "bias" else ""
        return LimitError(
            f"{name}[{k}]: {values[k]:.6g}{unit} is outside the calibrated range "
            f"[{lo:.6g}, {hi:.6g}]{unit} of channel {k}"
        )

    def _crosstalk(self, b: Array) -> Array:
        _, _, xs = self._interp()
        out = np.zeros(len(self.channels))
        for x, v in zip(xs, b, strict=True):
            if x is not None:
                out += x(v)
        return out

    @staticmethod
    def _invert(f: Any, g: Any, y: float) -> float:
        """x with f(x) = y: the swapped PCHIP g as a start, then Newton on f itself (the two
        interpolants differ between knots; this makes bias() the exact inverse)."""
        x = float(g(y))
        if not np.isfinite(x):
            return x
        lo, hi = float(f.x[0]), float(f.x[-1])
        d = f.derivative()
        for _ in range(8):
            slope = float(d(x))
            if slope == 0 or not np.isfinite(slope):
                break
            step = (float(f(x)) - y) / slope
            x = min(max(x - step, lo), hi)
            if abs(step) < 1e-15 * max(1.0, abs(x)):
                break
        return x

    def frequency(self, bias: Any) -> Array:
        """ω (N,) model units for biases (N,) in the device unit."""
        b = np.asarray(bias, dtype=np.float64)
        fs, _, _ = self._interp()
        own = np.array([float(f(x)) for f, x in zip(fs, b, strict=True)])
        bad = np.flatnonzero(~np.isfinite(own))
        if bad.size:
            c = self.channels[int(bad[0])]
            raise self._range_error("bias", b, int(bad[0]), min(c.bias), max(c.bias))
        return own + self._crosstalk(b)

    def bias(self, omega: Any) -> Array:
        """Biases (N,) in the device unit that give ω (N,) model units."""
        w = np.asarray(omega, dtype=np.float64)
        n = len(self.channels)
        if w.shape != (n,):
            raise LimitError(f"omega: shape {w.shape} does not match the map ({n},)")
        _, inv, xs = self._interp()
        b = np.zeros(n)
        target = w.copy()
        fs, _, _ = self._interp()
        for _ in range(100):
            new = np.array([self._invert(f, g, x) for f, g, x in zip(fs, inv, target, strict=True)])
            bad = np.flatnonzero(~np.isfinite(new))
            if bad.size:
                k = int(bad[0])
                c = self.channels[k]
                raise self._range_error("omega", target, k, min(c.omega), max(c.omega))
            done = float(np.abs(new - b).max()) < 1e-13
            b = new
            if done or all(x is None for x in xs):
                break
            target = w - self._crosstalk(b)
        return b

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TransferMap:
        p = Path(path)
        try:
            return cls.model_validate_json(p.read_text())
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
        except ValueError as exc:
            raise ConfigError(f"{p}: not a transfer map ({str(exc).splitlines()[0]})") from None


def transfer_path(device_file: str | Path) -> Path:
    """Where a device file's transfer map lives: ``<stem>.transfer.json`` next to it."""
    p = Path(device_file)
    return p.with_name(p.stem + ".transfer.json")
