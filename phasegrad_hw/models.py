"""Device models (Pydantic v2): topology, roles, limits, coupling function, backend parameters.

A device file (TOML, YAML or JSON; picked by suffix) names its ``backend``; the matching
model class validates it. Every validation failure is reported as one line per problem:
``<field path>: <value> — <what is allowed>``. Limits are checked here, before any value
reaches a device (:class:`phasegrad_hw.substrate.LimitError`).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import yaml
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from phasegrad_hw.physics import CouplingFunction
from phasegrad_hw.substrate import LimitError

Array = NDArray[np.float64]


class ConfigError(ValueError):
    """A configuration file or payload that does not validate (one line per problem)."""


def format_validation_error(exc: ValidationError, source: str = "") -> str:
    """One line per problem: ``path: value — message``."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = str(err["msg"]).removeprefix("Value error, ")
        val = err.get("input")
        if not err["loc"] and isinstance(val, dict):
            # whole-model checks (topology, consistency) name their own field path and value
            lines.append(f"{source}{msg}")
            continue
        shown = repr(val) if not isinstance(val, dict) or len(repr(val)) < 60 else "{…}"
        lines.append(f"{source}{path}: {shown} — {msg}")
    return "\n".join(lines)


class StrictModel(BaseModel):
    """Unknown fields are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class Range(StrictModel):
    """Closed interval [min, max] in the unit of the field that holds it."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.min < self.max:
            raise ValueError(f"limits must be ordered: min ({self.min}) < max ({self.max})")
        return self


class ChannelLimit(StrictModel):
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


class Limits(StrictModel):
    """Device limits. ``omega`` and ``coupling`` in model units; ``beta_max`` model units."""

    omega: Range = Range(min=-3.0, max=3.0)
    coupling: Range = Range(min=0.01, max=8.0)
    bias: BiasLimits = BiasLimits(min=-3.0, max=3.0, safe=0.0, unit="model")
    beta_max: float = Field(default=1.0, gt=0)
    max_averages: int = Field(default=4096, ge=1)


class EdgeSpec(StrictModel):
    """A coupling between oscillators i and j: K_ij = ``k``, K_ji = ``k_ji`` (default ``k``)."""

    i: int = Field(ge=0)
    j: int = Field(ge=0)
    k: float = Field(ge=0)
    k_ji: float | None = Field(default=None, ge=0)


class Roles(StrictModel):
    """Oscillator roles. The reference is pinned at phase 0 and read against."""

    inputs: list[int] = Field(default_factory=list)
    hidden: list[int] = Field(default_factory=list)
    outputs: list[int]
    reference: int = 0


class CouplingSpec(StrictModel):
    """H(φ) = Σ_k a_k sin(kφ − ψ) + b0 + b1 cos φ (see :class:`CouplingFunction`)."""

    harmonics: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    phase_lag_rad: float = 0.0
    offset: float = 0.0
    cos_offset: float = 0.0

    def function(self) -> CouplingFunction:
        return CouplingFunction(
            tuple(self.harmonics), self.phase_lag_rad, self.offset, self.cos_offset
        )


class CalibrationThresholds(StrictModel):
    """Pass/fail thresholds of the calibration suite (:mod:`phasegrad_hw.calibration`).

    ``max_asymmetry`` on ‖R − Rᵀ‖/‖R‖ of the phase response matrix (on the 2+5+2 chip
    ≈ ¼ of the per-edge asymmetry: 0.013 at 5 %, 0.05 at 20 %); ``max_edge_asymmetry`` on
    |k_ij − k_ji|/mean per edge (20 % random asymmetry costs ≈ 0.4 % gradient cosine, N = 15,
    DESIGN.md §2); ``nonodd_z`` significance (in standard errors) and ``max_phase_lag_rad`` /
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


M = TypeVar("M", bound="DeviceModel")
DEVICE_MODELS: dict[str, type[DeviceModel]] = {}


def register_model(backend: str) -> Callable[[type[M]], type[M]]:
    """Class decorator: device files whose ``backend`` is ``backend`` load into this class."""

    def deco(cls: type[M]) -> type[M]:
        DEVICE_MODELS[backend] = cls
        return cls

    return deco


class DeviceModel(StrictModel):
    """What every device file holds: topology, roles, limits, coupling function, nudge kind."""

    SUFFIXES: ClassVar[tuple[str, ...]] = (".toml", ".yaml", ".yml", ".json")

    backend: str
    name: str = "device"
    n_oscillators: int = Field(ge=2, le=1_000_000)
    edges: list[EdgeSpec] = Field(min_length=1)
    roles: Roles
    limits: Limits = Field(default_factory=Limits)
    coupling_function: CouplingSpec = Field(default_factory=CouplingSpec)
    nudge: Literal["linear", "injection"] = "linear"
    seed: int = 0
    calibration: CalibrationThresholds | None = None  # thresholds of the calibration suite

    @model_validator(mode="after")
    def _topology(self) -> DeviceModel:
        n = self.n_oscillators
        seen: set[tuple[int, int]] = set()
        for idx, e in enumerate(self.edges):
            for end in ("i", "j"):
                v = getattr(e, end)
                if v >= n:
                    raise ValueError(
                        f"edges[{idx}].{end}: {v} is not an oscillator (allowed 0…{n - 1})"
                    )
            if e.i == e.j:
                raise ValueError(f"edges[{idx}]: self-coupling {e.i}–{e.j} is not allowed")
            key = (min(e.i, e.j), max(e.i, e.j))
            if key in seen:
                raise ValueError(f"edges[{idx}]: edge {key} appears twice")
            seen.add(key)
        r = self.roles
        groups = {"inputs": r.inputs, "hidden": r.hidden, "outputs": r.outputs}
        for name, members in groups.items():
            for v in members:
                if not 0 <= v < n:
                    raise ValueError(f"roles.{name}: {v} is not an oscillator (allowed 0…{n - 1})")
            if len(set(members)) != len(members):
                raise ValueError(f"roles.{name}: {members} lists an oscillator twice")
        names = list(groups)
        for a in range(3):
            for b in range(a + 1, 3):
                common = set(groups[names[a]]) & set(groups[names[b]])
                if common:
                    raise ValueError(
                        f"roles: {sorted(common)} is in both {names[a]} and {names[b]}; "
                        "roles must not overlap"
                    )
        if not 0 <= r.reference < n:
            raise ValueError(
                f"roles.reference: {r.reference} is not an oscillator (allowed 0…{n - 1})"
            )
        if r.reference in r.outputs:
            raise ValueError(
                f"roles.reference: {r.reference} is an output; the reference cannot be nudged"
            )
        if not r.outputs:
            raise ValueError("roles.outputs: [] — at least one output oscillator is required")
        # connectivity (union-find)
        parent = list(range(n))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for e in self.edges:
            parent[find(e.i)] = find(e.j)
        comps = {find(x) for x in range(n)}
        if len(comps) > 1:
            lonely = sorted(x for x in range(n) if find(x) != find(r.reference))[:8]
            raise ValueError(
                f"edges: the coupling graph is not connected; oscillators {lonely} "
                "are cut off from the reference"
            )
        for idx, e in enumerate(self.edges):
            for name, v in (("k", e.k), ("k_ji", e.k_ji)):
                if (
                    v is not None
                    and v > 0
                    and not self.limits.coupling.min <= v <= self.limits.coupling.max
                ):
                    raise ValueError(
                        f"edges[{idx}].{name}: {v} is outside limits.coupling "
                        f"[{self.limits.coupling.min}, {self.limits.coupling.max}]"
                    )
        return self

    # -- derived ----------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.n_oscillators

    @property
    def edge_index(self) -> NDArray[np.int64]:
        """(E, 2) array of (i, j)."""
        return np.array([(e.i, e.j) for e in self.edges], dtype=np.int64).reshape(-1, 2)

    def coupling_values(self) -> Array:
        """(E,) nominal symmetric coupling per edge (``k``)."""
        return np.array([e.k for e in self.edges], dtype=np.float64)

    def coupling_matrix(self) -> Array:
        """(N, N) K with K[i, j] = k, K[j, i] = k_ji (or k)."""
        K = np.zeros((self.n, self.n))
        for e in self.edges:
            K[e.i, e.j] = e.k
            K[e.j, e.i] = e.k if e.k_ji is None else e.k_ji
        return K

    CHIP_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"name", "n_oscillators", "edges", "roles", "limits", "coupling_function", "nudge", "seed"}
    )

    def chip_fields(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """The chip's own description (topology, roles, limits, coupling, nudge, seed), without
        the backend-specific fields: what a driver's bench config copies from the chip model."""
        return self.model_dump(mode=mode, include=set(self.CHIP_FIELDS))

    def coupling(self) -> CouplingFunction:
        return self.coupling_function.function()

    @property
    def outputs(self) -> NDArray[np.int64]:
        return np.asarray(self.roles.outputs, dtype=np.int64)

    def safe_biases(self) -> Array:
        return np.array([self.limits.bias.channel(i).safe for i in range(self.n)])

    # -- limit checks (raise LimitError naming channel, value, limit) -------------
    def _vector(self, name: str, values: ArrayLike, length: int) -> Array:
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (length,):
            raise LimitError(
                f"{name}: shape {arr.shape} does not match the device; need ({length},)"
            )
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise LimitError(f"{name}[{bad[0]}]: {arr[bad[0]]} is not finite")
        return arr

    def check_frequencies(self, omega: ArrayLike) -> Array:
        w = self._vector("omega", omega, self.n)
        lo, hi = self.limits.omega.min, self.limits.omega.max
        bad = np.flatnonzero((w < lo) | (w > hi))
        if bad.size:
            raise LimitError(
                f"omega[{bad[0]}]: {w[bad[0]]:.6g} is outside the device limit [{lo}, {hi}]"
            )
        return w

    def check_biases(self, values: ArrayLike) -> Array:
        v = self._vector("bias", values, self.n)
        unit = self.limits.bias.unit
        for i, x in enumerate(v):
            c = self.limits.bias.channel(i)
            if not c.min <= x <= c.max:
                raise LimitError(
                    f"bias[{i}]: {x:.6g} {unit} is outside the channel limit "
                    f"[{c.min}, {c.max}] {unit}"
                )
        return v

    def check_couplings(self, values: ArrayLike) -> Array:
        k = self._vector("coupling", values, len(self.edges))
        lo, hi = self.limits.coupling.min, self.limits.coupling.max
        bad = np.flatnonzero((k < lo) | (k > hi))
        if bad.size:
            e = self.edges[bad[0]]
            raise LimitError(
                f"coupling[{bad[0]}] (edge {e.i}–{e.j}): {k[bad[0]]:.6g} "
                f"is outside the device limit [{lo}, {hi}]"
            )
        return k

    def check_clamp(self, target: ArrayLike, beta: float) -> tuple[Array, float]:
        t = self._vector("target", target, len(self.roles.outputs))
        b = float(beta)
        if not np.isfinite(b) or not 0.0 <= b <= self.limits.beta_max:
            raise LimitError(f"beta: {b} is outside the device limit [0, {self.limits.beta_max}]")
        return t, b

    # -- files ------------------------------------------------------------------
    @classmethod
    def load(cls: type[M], path: str | Path) -> M:
        """Load a device file; the class is picked from its ``backend`` field."""
        p = Path(path)
        data = read_config_file(p)
        return cls.from_dict(data, source=f"{p.name}: ")

    @classmethod
    def from_dict(cls: type[M], data: dict[str, Any], source: str = "") -> M:
        target: type[DeviceModel] = cls
        if cls is DeviceModel:
            backend = data.get("backend")
            if backend not in DEVICE_MODELS:
                raise ConfigError(
                    f"{source}backend: {backend!r} — allowed: {', '.join(sorted(DEVICE_MODELS))}"
                )
            target = DEVICE_MODELS[backend]
        try:
            return target.model_validate(data)  # type: ignore[return-value]
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None

    def save(self, path: str | Path) -> None:
        p = Path(path)
        data = self.model_dump(mode="json", exclude_none=True)
        write_config_file(p, data)


def read_config_file(p: Path) -> dict[str, Any]:
    """Parse a TOML/YAML/JSON file into a dict, with a one-line error on failure."""
    suffix = p.suffix.lower()
    if suffix not in DeviceModel.SUFFIXES:
        raise ConfigError(f"{p}: suffix {suffix!r} — allowed: {', '.join(DeviceModel.SUFFIXES)}")
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{p}: not valid {suffix[1:].upper()} ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a table/mapping, got {type(data).__name__}")
    return data


def write_config_file(p: Path, data: dict[str, Any]) -> None:
    suffix = p.suffix.lower()
    if suffix == ".toml":
        import tomli_w

        text = tomli_w.dumps(_toml_safe(data))
    elif suffix == ".json":
        text = json.dumps(data, indent=2)
    elif suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise ConfigError(f"{p}: suffix {suffix!r} — allowed: {', '.join(DeviceModel.SUFFIXES)}")
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(p)


def _toml_safe(x: Any) -> Any:
    """TOML tables need string keys (per-channel limits are keyed by int)."""
    if isinstance(x, dict):
        return {str(k): _toml_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_toml_safe(v) for v in x]
    return x


@register_model("simulated")
class SimulatedDeviceModel(DeviceModel):
    """The ideal device on the core physics, with optional seeded readout noise.

    ``readout_noise_rad`` rms Gaussian noise per single read (rad); ``quantisation_rad`` the
    readout LSB (rad, 0 = none). Biases are the frequencies themselves (unit ``model``).
    """

    backend: Literal["simulated"] = "simulated"
    readout_noise_rad: float = Field(default=0.0, ge=0.0, le=3.2)
    quantisation_rad: float = Field(default=0.0, ge=0.0, le=3.2)
    settle_s: float = Field(default=0.0, ge=0.0)


# --------------------------------------------------------------------------- emulated chips
# Physical parameters of the CMOS and optical emulators (phasegrad_hw.backends.cmos/optical).
# Literature ranges are quoted per field (DESIGN.md §5); bounds outside them are still
# allowed where a user may want to explore what a chip must achieve, but never unphysical.


class FailureSpec(StrictModel):
    """Switchable failure modes (all off by default).

    ``lock_loss_probability`` per read: the chip drops out of lock for that read (a supply
    glitch or an injection transient) and the phases ramp at ``slip_rate`` (model frequency
    units) — reported ``locked = False``. ``basin_jump_probability`` per read: one random
    non-reference oscillator locks half a cycle away (the inverted output of a differential
    ring, or the neighbouring longitudinal mode of a resonator) for that read.
    ``drift_units_per_sqrt_s``/``drift_tau_s``: an extra per-oscillator frequency drift
    (model units, Ornstein–Uhlenbeck, random walk below ``drift_tau_s``), strong enough to
    detune the array out of lock or into another basin. ``stuck_channel`` (with
    ``stuck_probability`` per read): that readout channel stops seeing edges; the readout
    repeats its last code and the lock detector reports ``locked = False``.
    """

    lock_loss_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    slip_rate: float = Field(default=0.5, gt=0.0, le=100.0)
    basin_jump_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    drift_units_per_sqrt_s: float = Field(default=0.0, ge=0.0, le=1e6)
    drift_tau_s: float = Field(default=1e-3, gt=0.0)
    stuck_channel: int | None = Field(default=None, ge=0)
    stuck_probability: float = Field(default=1.0, ge=0.0, le=1.0)


class SettlingSpec(StrictModel):
    """Settling after a step: ``lock_cycles`` oscillation periods at least (5–50 cycles for
    injection-/coupling-locked ring oscillators), longer near the locking edge where the
    stability margin λ → 0: settle = max(lock_cycles/f, ln(1/tolerance)/λ). ``sleep`` really
    waits that long (off for CI and benchmarks; the time is reported either way)."""

    lock_cycles: float = Field(default=20.0, ge=1.0, le=10_000.0)
    tolerance: float = Field(default=1e-4, gt=0.0, lt=1.0)
    max_settle_s: float = Field(default=1e-3, gt=0.0)
    sleep: bool = False


class _ChipModel(DeviceModel):
    """Common part of the emulated chips: failures, settling, drift."""

    failures: FailureSpec = Field(default_factory=FailureSpec)
    settling: SettlingSpec = Field(default_factory=SettlingSpec)

    @model_validator(mode="after")
    def _chip_consistency(self) -> _ChipModel:
        sc = self.failures.stuck_channel
        if sc is not None and sc >= self.n_oscillators:
            raise ValueError(
                f"failures.stuck_channel: {sc} is not an oscillator "
                f"(allowed 0…{self.n_oscillators - 1})"
            )
        return self


class AlphaPowerSpec(StrictModel):
    """Ring-oscillator bias → frequency, alpha-power law (Sakurai & Newton, IEEE JSSC 25(2),
    1990): f(V) ∝ (V − V_th)^α / V, α ≈ 1.3 in short-channel CMOS. ``f_center_hz`` is the
    frequency at ``bias_ref_v`` (ω = 0); ω (model units) = (f − f_center)/``freq_unit_hz``,
    so the model time unit is 1/(2π·freq_unit_hz) s. ``vth_mismatch_v`` rms per-oscillator
    threshold mismatch (Pelgrom; a few mV gives the 1–3 % frequency spread of DESIGN.md §5)."""

    f_center_hz: float = Field(default=1.0e9, gt=1e6, le=100e9)
    freq_unit_hz: float = Field(default=20e6, gt=0.0, le=10e9)
    alpha: float = Field(default=1.3, ge=1.0, le=2.0)
    vth_v: float = Field(default=0.45, gt=0.0, lt=2.0)
    vth_mismatch_v: float = Field(default=0.003, ge=0.0, le=0.1)
    bias_ref_v: float = Field(default=1.0, gt=0.0, le=5.0)


class DACSpec(StrictModel):
    """A bias DAC: ``bits`` (5–16 in published oscillator arrays) over ``range_v`` (V)."""

    bits: int = Field(default=16, ge=5, le=24)
    range_v: Range = Range(min=0.8, max=1.2)


class CapacitorSpec(StrictModel):
    """Capacitive coupling: K_ij = ``k_per_ff``·C_ij (model units per fF). ``mismatch`` rms
    relative capacitor mismatch (a few % for fF-scale MOM caps), ``direction_mismatch``
    independent rms errors of K_ij and K_ji (asymmetric loading of the two ring taps);
    ``lsb_ff`` the step of a programmable capacitor bank (0 = continuous)."""

    k_per_ff: float = Field(default=0.2, gt=0.0)
    mismatch: float = Field(default=0.03, ge=0.0, le=0.5)
    direction_mismatch: float = Field(default=0.02, ge=0.0, le=0.5)
    lsb_ff: float = Field(default=0.05, ge=0.0)


class PhaseNoiseSpec(StrictModel):
    """Free-running phase noise L(Δf) (dBc/Hz) at offset ``offset_hz`` (white FM region;
    −85…−105 dBc/Hz at 1 MHz for GHz ring oscillators, Hajimiri & Lee, IEEE JSSC 34(6), 1999).
    Phase diffusion constant D = 4π²·Δf²·10^(L/10) rad²/s."""

    dbc_hz: float = Field(default=-95.0, ge=-250.0, le=-40.0)  # below ≈ −150: noise off
    offset_hz: float = Field(default=1e6, gt=0.0)


class TDCSpec(StrictModel):
    """Time-to-digital converter against the reference oscillator: ``lsb_s`` (1–20 ps),
    rms ``jitter_s`` per conversion, per-channel fixed offsets of rms ``offset_sigma_s``,
    ``skew_s`` sampling skew between consecutive channels (channels read one after another),
    ``read_interval_s`` between successive conversions of the same channel."""

    lsb_s: float = Field(default=2e-12, gt=0.0, le=1e-9)
    jitter_s: float = Field(default=1e-12, ge=0.0, le=1e-9)
    offset_sigma_s: float = Field(default=1e-12, ge=0.0, le=1e-9)
    skew_s: float = Field(default=0.0, ge=0.0, le=1e-6)
    read_interval_s: float = Field(default=1e-6, gt=0.0, le=1.0)


class ThermalSpec(StrictModel):
    """Chip temperature: Ornstein–Uhlenbeck with rms ``sigma_c`` (°C) and correlation time
    ``tau_s`` (a slow random walk on shorter times). Frequency coefficient
    ``tempco_ppm_per_c`` (−1000…−3000 ppm/°C for ring oscillators) with per-oscillator relative
    spread ``tempco_mismatch``; the common part cancels in the rotating frame."""

    tempco_ppm_per_c: float = Field(default=-2000.0, ge=-10_000.0, le=0.0)
    tempco_mismatch: float = Field(default=0.02, ge=0.0, le=1.0)
    sigma_c: float = Field(default=0.05, ge=0.0, le=50.0)
    tau_s: float = Field(default=10.0, gt=0.0)


class InjectionSpec(StrictModel):
    """Clamp by injecting the reference: amplitude DAC of ``amplitude_bits`` over
    [0, limits.beta_max] (β), phase DAC of ``phase_bits`` over 2π (target); per-output
    injection gain error of rms ``gain_mismatch``."""

    amplitude_bits: int = Field(default=10, ge=2, le=24)
    phase_bits: int = Field(default=10, ge=2, le=24)
    gain_mismatch: float = Field(default=0.01, ge=0.0, le=0.5)


@register_model("cmos")
class CMOSChipModel(_ChipModel):
    """A CMOS ring-oscillator array with capacitive coupling (DESIGN.md §5).

    Biases are supply/bias voltages (V, one per oscillator). See the section classes for the
    physics and literature ranges; the emulator is :mod:`phasegrad_hw.backends.cmos`.
    """

    backend: Literal["cmos"] = "cmos"
    nudge: Literal["linear", "injection"] = "injection"
    limits: Limits = Field(
        default_factory=lambda: Limits(
            bias=BiasLimits(min=0.8, max=1.2, safe=0.9, unit="V"), beta_max=1.0
        )
    )
    coupling_function: CouplingSpec = Field(
        default_factory=lambda: CouplingSpec(harmonics=[1.0, 0.1], offset=0.01, cos_offset=0.02)
    )
    oscillator: AlphaPowerSpec = Field(default_factory=AlphaPowerSpec)
    bias_dac: DACSpec = Field(default_factory=DACSpec)
    capacitors: CapacitorSpec = Field(default_factory=CapacitorSpec)
    phase_noise: PhaseNoiseSpec = Field(default_factory=PhaseNoiseSpec)
    tdc: TDCSpec = Field(default_factory=TDCSpec)
    thermal: ThermalSpec = Field(default_factory=ThermalSpec)
    injection: InjectionSpec = Field(default_factory=InjectionSpec)
    counter_gate_s: float = Field(default=1e-3, gt=0.0, le=10.0)

    @model_validator(mode="after")
    def _cmos_consistency(self) -> CMOSChipModel:
        o, b = self.oscillator, self.limits.bias
        if b.unit != "V":
            raise ValueError(f"limits.bias.unit: {b.unit!r} — a CMOS chip is biased in 'V'")
        rng = self.bias_dac.range_v
        for i in range(self.n_oscillators):
            c = b.channel(i)
            if not (rng.min <= c.min and c.max <= rng.max):
                where = f"limits.bias.per_channel.{i}" if i in b.per_channel else "limits.bias"
                raise ValueError(
                    f"{where}: [{c.min}, {c.max}] V — must lie within bias_dac.range_v "
                    f"[{rng.min}, {rng.max}] V"
                )
            if c.min <= o.vth_v + 4.0 * o.vth_mismatch_v:
                raise ValueError(
                    f"limits.bias.min: {c.min} V — must exceed oscillator.vth_v + 4σ mismatch "
                    f"({o.vth_v + 4.0 * o.vth_mismatch_v:.4g} V) so every ring oscillates"
                )
        if not b.min < o.bias_ref_v < b.max:
            raise ValueError(
                f"oscillator.bias_ref_v: {o.bias_ref_v} V — must lie inside limits.bias "
                f"({b.min}, {b.max}) V"
            )
        return self


class HeaterSpec(StrictModel):
    """Micro-heaters: P = V²/R (``resistance_ohm``, rms relative ``resistance_mismatch``);
    temperature rise ΔT = r_th·X·P with thermal resistance ``r_th_k_per_mw`` and the crosstalk
    matrix X (1 on the diagonal, ``crosstalk`` to index neighbours i±1, 5–20 % typical, each
    entry off by rms ``crosstalk_mismatch`` relative); first-order thermal response with
    time constant ``tau_s`` (1–50 µs); ``power_ref_mw`` the heater power at ω = 0; a
    ``dac_bits`` voltage DAC over the bias limits."""

    resistance_ohm: float = Field(default=1000.0, gt=0.0)
    resistance_mismatch: float = Field(default=0.02, ge=0.0, le=0.5)
    r_th_k_per_mw: float = Field(default=2.5, gt=0.0)
    power_ref_mw: float = Field(default=0.5, gt=0.0)
    crosstalk: float = Field(default=0.1, ge=0.0, lt=0.5)
    crosstalk_mismatch: float = Field(default=0.1, ge=0.0, le=1.0)
    tau_s: float = Field(default=10e-6, gt=0.0, le=1.0)
    dac_bits: int = Field(default=16, ge=5, le=24)


class ResonatorSpec(StrictModel):
    """Thermo-optic tuning ``tuning_hz_per_k`` (≈ −10 GHz/K for silicon rings, red shift);
    ω (model units) = Δf/``freq_unit_hz``; ``offset_sigma_hz`` rms resonance offset left after
    trimming (a fixed property of the chip)."""

    tuning_hz_per_k: float = Field(default=-10e9, ge=-1e12, le=1e12)
    freq_unit_hz: float = Field(default=1e9, gt=0.0)
    offset_sigma_hz: float = Field(default=0.2e9, ge=0.0)

    @model_validator(mode="after")
    def _nonzero(self) -> ResonatorSpec:
        if self.tuning_hz_per_k == 0.0:
            raise ValueError("tuning_hz_per_k: 0.0 — must be non-zero (heaters must tune)")
        return self


class CouplerSpec(StrictModel):
    """Evanescent couplers: reciprocal in magnitude, each edge off by rms relative
    ``magnitude_mismatch``; optional non-reciprocity (rms relative K_ij/K_ji error)
    ``nonreciprocity``; ``lsb`` step of a tunable coupler (model units, 0 = continuous).
    The phase lag ψ is ``coupling_function.phase_lag_rad`` (Kuramoto–Sakaguchi)."""

    magnitude_mismatch: float = Field(default=0.02, ge=0.0, le=0.5)
    nonreciprocity: float = Field(default=0.0, ge=0.0, le=0.5)
    lsb: float = Field(default=0.001, ge=0.0)


class LaserSpec(StrictModel):
    """Laser phase noise from the Lorentzian linewidth Δν (1 kHz–2 MHz): D = 2π·Δν rad²/s."""

    linewidth_hz: float = Field(default=100e3, ge=0.0, le=100e6)


class HomodyneSpec(StrictModel):
    """Homodyne I/Q against the reference laser: I = cos φ + n, Q = sin φ + n with rms
    ``iq_noise`` (relative to the field amplitude; shot noise is small), per-channel fixed
    phase offsets of rms ``offset_sigma_rad``, ``read_interval_s`` between conversions."""

    iq_noise: float = Field(default=0.01, ge=0.0, le=1.0)
    offset_sigma_rad: float = Field(default=0.01, ge=0.0, le=3.2)
    read_interval_s: float = Field(default=1e-6, gt=0.0, le=1.0)


class AmbientSpec(StrictModel):
    """Ambient temperature (K): Ornstein–Uhlenbeck, rms ``sigma_k``, time ``tau_s``; each
    resonator sees it with a fixed relative spread ``gradient_fraction`` (the differential
    part that does not cancel in the rotating frame)."""

    sigma_k: float = Field(default=0.01, ge=0.0, le=10.0)
    tau_s: float = Field(default=10.0, gt=0.0)
    gradient_fraction: float = Field(default=0.05, ge=0.0, le=1.0)


class OpticalInjectionSpec(StrictModel):
    """Clamp by injecting attenuated master-laser light: attenuator in ``attenuator_step_db``
    steps up to ``max_attenuation_db`` (β = β_max·10^(−A/20), β ∝ injected field), phase
    shifter of ``phase_bits``; per-output injection gain error ``gain_mismatch`` (rms)."""

    attenuator_step_db: float = Field(default=0.05, ge=0.0, le=10.0)
    max_attenuation_db: float = Field(default=80.0, gt=0.0)
    phase_bits: int = Field(default=12, ge=2, le=24)
    gain_mismatch: float = Field(default=0.01, ge=0.0, le=0.5)


@register_model("optical")
class OpticalChipModel(_ChipModel):
    """Coupled optical micro-resonators / injection-locked lasers (DESIGN.md §5).

    Biases are heater voltages (V). The emulator is :mod:`phasegrad_hw.backends.optical`.
    """

    backend: Literal["optical"] = "optical"
    nudge: Literal["linear", "injection"] = "injection"
    limits: Limits = Field(
        default_factory=lambda: Limits(
            bias=BiasLimits(min=0.0, max=1.2, safe=0.0, unit="V"), beta_max=1.0
        )
    )
    heaters: HeaterSpec = Field(default_factory=HeaterSpec)
    resonators: ResonatorSpec = Field(default_factory=ResonatorSpec)
    couplers: CouplerSpec = Field(default_factory=CouplerSpec)
    laser: LaserSpec = Field(default_factory=LaserSpec)
    homodyne: HomodyneSpec = Field(default_factory=HomodyneSpec)
    ambient: AmbientSpec = Field(default_factory=AmbientSpec)
    injection: OpticalInjectionSpec = Field(default_factory=OpticalInjectionSpec)
    counter_gate_s: float = Field(default=1e-3, gt=0.0, le=10.0)

    @model_validator(mode="after")
    def _optical_consistency(self) -> OpticalChipModel:
        b = self.limits.bias
        if b.unit != "V":
            raise ValueError(f"limits.bias.unit: {b.unit!r} — heaters are driven in 'V'")
        if b.min < 0.0:
            raise ValueError(f"limits.bias.min: {b.min} V — heater voltages must be >= 0")
        h = self.heaters
        v_ref = (h.power_ref_mw * 1e-3 * h.resistance_ohm) ** 0.5
        if not b.min < v_ref < b.max:
            raise ValueError(
                f"heaters.power_ref_mw: {h.power_ref_mw} mW (V = {v_ref:.4g} V) — must be "
                f"reachable inside limits.bias ({b.min}, {b.max}) V"
            )
        return self
