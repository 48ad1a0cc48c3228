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
from pydantic import Field, PrivateAttr, model_validator

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
    """Channel k swept with the others at their rest biases: ``bias`` (device unit) and the
    fitted own frequency ``omega`` (model units, strictly monotone); ``error`` max held-out
    error relative to the span (every channel's frequency at held-out biases of channel k)."""

    bias: list[float] = Field(min_length=2)
    omega: list[float] = Field(min_length=2)
    increasing: bool = True
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


@dataclass(frozen=True)
class _Cubics:
    """N piecewise cubics (one per channel) evaluated together, one point per channel:
    breakpoints ``x`` (N, M) ascending, rows shorter than M padded with +inf; local power-basis
    coefficients ``c`` (4, N, M − 1) (scipy ``PPoly`` convention); ``lo``/``hi`` (N,) the
    ends. Outside [lo, hi] the value is NaN (no extrapolation)."""

    x: Array
    c: Array
    lo: Array
    hi: Array
    last: Array  # (N,) index of each row's last interval

    @classmethod
    def of(cls, polys: list[Any]) -> _Cubics:
        m = max(len(p.x) for p in polys)
        x = np.full((len(polys), m), np.inf)
        c = np.zeros((4, len(polys), m - 1))
        for k, p in enumerate(polys):
            x[k, : len(p.x)] = p.x
            c[:, k, : p.c.shape[1]] = p.c
        lo = x[:, 0].copy()
        hi = np.array([p.x[-1] for p in polys], dtype=np.float64)
        return cls(x, c, lo, hi, np.array([len(p.x) - 2 for p in polys]))

    def __call__(self, v: Array, derivative: bool = False) -> Array:
        rows = np.arange(len(v))
        seg = np.sum(self.x[:, 1:] <= v[:, None], axis=1)
        seg = np.minimum(seg, self.last)
        dx = v - self.x[rows, seg]
        a, b, c, d = self.c[:, rows, seg]
        out = (3.0 * a * dx + 2.0 * b) * dx + c if derivative else ((a * dx + b) * dx + c) * dx + d
        return np.where((v >= self.lo) & (v <= self.hi), out, np.nan)


def _legacy_crosstalk(data: dict[str, Any]) -> dict[str, Any]:
    """A map in the first file format (each channel's ``crosstalk``: (points, N), every
    channel's frequency change against the safe point in that channel's sweep) in the matrix
    form: per aggressor j a least-squares line c_ij ≈ X_ij·f_j(b) + d_ij over its sweep
    points; the rest point of channel j is its first sweep point, and the intercepts (plus
    X_ij·f_j(rest_j)) go into the victim's own curve, so ω_i = f_i(b_i) + Σ_j c_ij(b_j) is kept
    up to the curvature of c_ij in f_j."""
    chans = [dict(c) for c in data["channels"]]
    curves = [c.pop("crosstalk", None) for c in chans]
    n = len(chans)
    X = np.eye(n)
    shift = np.zeros(n)
    for j, (ch, cross) in enumerate(zip(chans, curves, strict=True)):
        if cross is None:
            continue
        f = np.asarray(ch["omega"], dtype=np.float64)
        Y = np.asarray(cross, dtype=np.float64)
        fc = f - f.mean()
        slope = fc @ (Y - Y.mean(axis=0)) / (fc @ fc)
        slope[j] = 0.0
        X[:, j] += slope
        shift += Y.mean(axis=0) - slope * f.mean() + slope * f[0]
    for ch, s in zip(chans, shift, strict=True):
        ch["omega"] = (np.asarray(ch["omega"], dtype=np.float64) + s).tolist()
    out = {**data, "channels": chans}
    if any(c is not None for c in curves):
        out["crosstalk_matrix"] = X.tolist()
        out["rest_bias"] = [float(c["bias"][0]) for c in chans]
    return out


class TransferMap(StrictModel):
    """Calibrated bias ↔ ω map (the ``transfer`` part of a report and the
    ``<device>.transfer.json`` file saved next to a device file).

    Each channel's own curve f_k(b_k) is measured with the others at their rest biases r.
    Thermal crosstalk (docs/design.md §5: ΔT = r_th·X·P, linear in the heater powers P) is a
    matrix on the own frequency shifts y_j = f_j(b_j) − f_j(r_j), which are proportional to
    the powers: ω(b) = f(r) + X̂·y(b), X̂ (N, N) with 1 on the diagonal, X̂_ij = ∂ω_i/∂y_j
    (``crosstalk_matrix``; None: no crosstalk, ω_i = f_i(b_i), e.g. a CMOS array).
    ``bias(ω)`` solves the coupled system as one linear solve, y = X̂⁻¹(ω − f(r)), then
    inverts every own curve (vectorised Newton). The first file format (per-channel
    crosstalk curves) is read into this form."""

    device: str
    unit: str
    channels: list[ChannelCurve]
    source: str = "frequency_counter"
    crosstalk_matrix: list[list[float]] | None = None
    rest_bias: list[float] | None = None  # device unit: the others' biases in each sweep
    _cache: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _first_format(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(
            isinstance(c, dict) and "crosstalk" in c for c in data.get("channels", [])
        ):
            return _legacy_crosstalk(data)
        return data

    @model_validator(mode="after")
    def _shapes(self) -> TransferMap:
        n = len(self.channels)
        if (self.crosstalk_matrix is None) != (self.rest_bias is None):
            raise ValueError("crosstalk_matrix and rest_bias: give both or neither")
        if self.crosstalk_matrix is not None and self.rest_bias is not None:
            X = np.asarray(self.crosstalk_matrix, dtype=np.float64)
            if X.shape != (n, n) or len(self.rest_bias) != n:
                raise ValueError(
                    f"crosstalk_matrix {X.shape} / rest_bias ({len(self.rest_bias)},): "
                    f"need ({n}, {n}) / ({n},) for {n} channels"
                )
            if not np.allclose(np.diag(X), 1.0):
                raise ValueError("crosstalk_matrix: the diagonal must be 1")
        return self

    def __eq__(self, other: object) -> bool:
        """Equal content (the evaluation cache is not part of a map)."""
        if not isinstance(other, TransferMap):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    def _curves(self) -> tuple[_Cubics, _Cubics]:
        """The own curves and their swapped-point inverses, all channels together."""
        if "f" not in self._cache:
            self._cache["f"] = _Cubics.of([c.forward() for c in self.channels])
            self._cache["inv"] = _Cubics.of([c.inverse() for c in self.channels])
        return self._cache["f"], self._cache["inv"]

    def _coupled(self) -> tuple[Array, Array, Array] | None:
        """(X̂, X̂⁻¹, f(r)) when the map has a crosstalk matrix."""
        if self.crosstalk_matrix is None or self.rest_bias is None:
            return None
        if "X" not in self._cache:
            X = np.asarray(self.crosstalk_matrix, dtype=np.float64)
            f_r = self._curves()[0](np.asarray(self.rest_bias, dtype=np.float64))
            if not np.all(np.isfinite(f_r)):
                raise ConfigError("transfer map: a rest bias lies outside its channel's sweep")
            self._cache["X"] = (X, np.linalg.inv(X), f_r)
        out: tuple[Array, Array, Array] = self._cache["X"]
        return out

    def _range_error(self, name: str, values: Array, k: int, lo: float, hi: float) -> LimitError:
        unit = f" {self.unit}" if name == "bias" else ""
        return LimitError(
            f"{name}[{k}]: {values[k]:.6g}{unit} is outside the calibrated range "
            f"[{lo:.6g}, {hi:.6g}]{unit} of channel {k}"
        )

    def frequency(self, bias: Any) -> Array:
        """ω (N,) model units for biases (N,) in the device unit."""
        b = np.asarray(bias, dtype=np.float64)
        f, _ = self._curves()
        own = f(b)
        bad = np.flatnonzero(~np.isfinite(own))
        if bad.size:
            c = self.channels[int(bad[0])]
            raise self._range_error("bias", b, int(bad[0]), min(c.bias), max(c.bias))
        xt = self._coupled()
        if xt is None:
            return own
        X, _, f_r = xt
        out: Array = f_r + X @ (own - f_r)
        return out

    def bias(self, omega: Any) -> Array:
        """Biases (N,) in the device unit that give ω (N,) model units."""
        w = np.asarray(omega, dtype=np.float64)
        n = len(self.channels)
        if w.shape != (n,):
            raise LimitError(f"omega: shape {w.shape} does not match the map ({n},)")
        xt = self._coupled()
        target = w if xt is None else xt[2] + xt[1] @ (w - xt[2])  # own frequencies
        f, g = self._curves()
        b = g(target)  # the swapped PCHIP as a start, then Newton on f itself (exact inverse)
        bad = np.flatnonzero(~np.isfinite(b))
        if bad.size:
            k = int(bad[0])
            c = self.channels[k]
            raise self._range_error("omega", target, k, min(c.omega), max(c.omega))
        for _ in range(8):
            slope = f(b, derivative=True)
            ok = (slope != 0.0) & np.isfinite(slope)
            step = np.where(ok, (f(b) - target) / np.where(ok, slope, 1.0), 0.0)
            b = np.clip(b - step, f.lo, f.hi)
            if float(np.max(np.abs(step) / np.maximum(1.0, np.abs(b)))) < 1e-15:
                break
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
