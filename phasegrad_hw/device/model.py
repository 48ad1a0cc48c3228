"""Device models (Pydantic v2): topology, roles, limits, coupling function, backend parameters.

A device file (TOML, YAML or JSON; picked by suffix) names its ``backend``; the matching
model class validates it. Every validation failure is reported as one line per problem:
``<field path>: <value> — <what is allowed>``; no field of a device file accepts ``inf`` or
``nan`` (:class:`DeviceFileModel`). Limits are checked here, before any value reaches a device
(:class:`phasegrad_hw.device.substrate.LimitError`).

Chip-scale layered devices (docs/design.md §8) add two roles and signed couplings:

* ``roles.held`` — input oscillators whose phases are set per sample: a strong injection from
  the reference clock (strength ``held_injection``, model units) with a programmable phase
  φ_in = lo + (hi − lo)·x for a feature x ∈ [0, 1] (``input_phase_range_rad`` = [lo, hi]);
  used with ``input_encoding = "phase"``. With ``input_encoding = "frequency"`` (default, the
  published 2+5+2 set-up) the features set the frequencies of ``roles.inputs`` instead.
* ``roles.bias`` — oscillators held at the fixed phases ``bias_phases_rad`` (e.g. [0, π/2]);
  their couplings to the layers are learnable biases.
* ``edges[].invertible = true`` — the edge has an inverted tap (the complementary output of a
  differential ring oscillator, or an optical phase shifter: a π shift), so
  K sin(θ_j + π − θ_i) = −K sin(θ_j − θ_i) and K may be negative; its limit is
  |K| <= ``limits.coupling.max``, other edges keep [min, max].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

from phasegrad_hw.config import (
    CONFIG_SUFFIXES,
    format_validation_error,
    read_config_file,
    write_config_file,
)
from phasegrad_hw.device.schema import (
    BiasLimits,
    CalibrationThresholds,
    ChannelLimit,
    CouplingSpec,
    DeviceFileModel,
    EdgeSpec,
    Limits,
    Range,
    Roles,
)
from phasegrad_hw.errors import ConfigError, LimitError
from phasegrad_hw.physics import CouplingFunction

Array = NDArray[np.float64]
_ALL, _FINITE = np.logical_and.reduce, np.isfinite  # the limit checks' fast path

__all__ = [
    "BiasLimits",
    "CalibrationThresholds",
    "ChannelLimit",
    "CouplingSpec",
    "DeviceFileModel",
    "DeviceModel",
    "EdgeSpec",
    "Limits",
    "Range",
    "Roles",
]


M = TypeVar("M", bound="DeviceModel")


class DeviceModel(DeviceFileModel):
    """What every device file holds: topology, roles, limits, coupling function, nudge kind."""

    SUFFIXES: ClassVar[tuple[str, ...]] = CONFIG_SUFFIXES

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
    input_encoding: Literal["frequency", "phase"] = "frequency"
    input_phase_range_rad: tuple[float, float] = (0.0, math.pi / 2)  # φ_in for x = 0, x = 1
    held_injection: float = Field(default=20.0, gt=0.0, le=1e6)  # model units
    bias_phases_rad: list[float] = Field(default_factory=list)  # one per roles.bias

    @model_validator(mode="after")
    def _topology(self) -> DeviceModel:
        """The network and its roles are consistent (each check raises naming the field)."""
        self._check_edges()
        self._check_roles()
        self._held_roles()
        self._check_connected()
        self._check_edge_couplings()
        return self

    def _check_edges(self) -> None:
        """Edge endpoints are oscillators; no self-coupling, no edge listed twice."""
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

    def _check_roles(self) -> None:
        """Role members are oscillators, listed once, in one role only; the reference is an
        oscillator and not an output; at least one output."""
        n = self.n_oscillators
        r = self.roles
        groups = {name: list(getattr(r, name)) for name in Roles.ROLE_NAMES}
        for name, members in groups.items():
            for v in members:
                if not 0 <= v < n:
                    raise ValueError(f"roles.{name}: {v} is not an oscillator (allowed 0…{n - 1})")
            if len(set(members)) != len(members):
                raise ValueError(f"roles.{name}: {members} lists an oscillator twice")
        names = list(groups)
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
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

    def _check_connected(self) -> None:
        """The coupling graph is connected (union-find), so every oscillator can lock."""
        n = self.n_oscillators
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
            ref = self.roles.reference
            lonely = sorted(x for x in range(n) if find(x) != find(ref))[:8]
            raise ValueError(
                f"edges: the coupling graph is not connected; oscillators {lonely} "
                "are cut off from the reference"
            )

    def _check_edge_couplings(self) -> None:
        """Initial couplings k, k_ji within limits.coupling (model units); negative only on an
        invertible edge (|k| <= max)."""
        lo, hi = self.limits.coupling.min, self.limits.coupling.max
        for idx, e in enumerate(self.edges):
            for name, v in (("k", e.k), ("k_ji", e.k_ji)):
                if v is None:
                    continue
                if e.invertible:
                    if abs(v) > hi:
                        raise ValueError(
                            f"edges[{idx}].{name}: {v} is outside limits.coupling for an "
                            f"invertible edge (|k| <= {hi})"
                        )
                elif v < 0:
                    raise ValueError(
                        f"edges[{idx}].{name}: {v} is negative — allowed [{lo}, {hi}]; a "
                        "negative coupling needs an inverted tap (invertible = true)"
                    )
                elif v > 0 and not lo <= v <= hi:
                    raise ValueError(
                        f"edges[{idx}].{name}: {v} is outside limits.coupling [{lo}, {hi}]"
                    )

    def _held_roles(self) -> None:
        """Consistency of held inputs, bias oscillators and the input encoding."""
        r = self.roles
        if self.input_encoding == "phase":
            if not r.held:
                raise ValueError(
                    'roles.held: [] — input_encoding = "phase" needs held input oscillators'
                )
            if r.inputs:
                raise ValueError(
                    f'roles.inputs: {r.inputs} — input_encoding = "phase" sets the held '
                    "inputs (roles.held); frequency inputs are not allowed with it"
                )
        elif r.held:
            raise ValueError(
                f'roles.held: {r.held} — held inputs need input_encoding = "phase" '
                '(it is "frequency")'
            )
        if len(self.bias_phases_rad) != len(r.bias):
            raise ValueError(
                f"bias_phases_rad: {self.bias_phases_rad} — need one phase per roles.bias "
                f"oscillator ({len(r.bias)})"
            )
        lo, hi = self.input_phase_range_rad
        if not (lo < hi and hi - lo <= 2 * math.pi):
            raise ValueError(
                f"input_phase_range_rad: [{lo}, {hi}] — need lo < hi and hi − lo <= 2π"
            )
        drive = set(r.drive)
        if len(drive) != len(r.drive) or not all(0 <= v < self.n_oscillators for v in drive):
            raise ValueError(
                f"roles.drive: {r.drive} — need distinct oscillators in 0…{self.n_oscillators - 1}"
            )
        pinned = drive & {*r.held, *r.bias, r.reference}
        if pinned:
            raise ValueError(
                f"roles.drive: {sorted(pinned)} is held or the reference; a driven (sensor) "
                "oscillator must be free to follow the drive"
            )
        if r.held and r.reference not in r.bias:
            raise ValueError(
                f"roles.reference: {r.reference} — a device with held inputs reads against "
                f"a bias oscillator (allowed: {r.bias})"
            )

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
        {
            "name", "n_oscillators", "edges", "roles", "limits", "coupling_function", "nudge",
            "seed", "input_encoding", "input_phase_range_rad", "held_injection",
            "bias_phases_rad",
        }
    )  # fmt: skip

    def chip_fields(self, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """The chip's own description (topology, roles, limits, coupling, nudge, seed), without
        the backend-specific fields: what a driver's bench config copies from the chip model."""
        return self.model_dump(mode=mode, include=set(self.CHIP_FIELDS))

    @property
    def feature_oscillators(self) -> list[int]:
        """The oscillators a task's features drive: ``roles.held`` with phase encoding, else
        ``roles.inputs`` (frequencies)."""
        return list(self.roles.held if self.input_encoding == "phase" else self.roles.inputs)

    def invertible_mask(self) -> NDArray[np.bool_]:
        """(E,) True where an edge has an inverted tap (K may be negative)."""
        return np.array([e.invertible for e in self.edges], dtype=bool)

    def coupling_bounds(self) -> tuple[Array, Array]:
        """(E,) lower and upper coupling limits: [−max, max] on invertible edges, else
        [min, max] (model units)."""
        lo, hi = self.limits.coupling.min, self.limits.coupling.max
        inv = self.invertible_mask()
        return np.where(inv, -hi, lo), np.full(inv.shape, hi)

    def input_phases(self, x: ArrayLike) -> Array:
        """Held input phases (rad) for features ``x`` (..., n_held) scaled to [0, 1]:
        φ = lo + (hi − lo)·clip(x, 0, 1) with [lo, hi] = ``input_phase_range_rad``."""
        lo, hi = self.input_phase_range_rad
        u = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
        out: Array = lo + (hi - lo) * u
        return out

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
        if arr.shape == (length,) and _ALL(_FINITE(arr)):  # (no warning on inf/nan)
            return arr
        if arr.shape != (length,):
            raise LimitError(
                f"{name}: shape {arr.shape} does not match the device; need ({length},)"
            )
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise LimitError(f"{name}[{bad[0]}]: {arr[bad[0]]} is not finite")
        return arr

    def check_frequencies(self, omega: ArrayLike) -> Array:
        lo, hi = self.limits.omega.min, self.limits.omega.max
        w = np.asarray(omega, dtype=np.float64)
        if w.shape == (self.n,) and w.size:  # in range and finite: NaN fails the comparisons
            w_min, w_max = np.minimum.reduce(w), np.maximum.reduce(w)
            if lo <= w_min and w_max <= hi and math.isfinite(w_min) and math.isfinite(w_max):
                return w
        w = self._vector("omega", w, self.n)
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
        lo, hi = self.coupling_bounds()
        bad = np.flatnonzero((k < lo) | (k > hi))
        if bad.size:
            b = bad[0]
            e = self.edges[b]
            kind = " (invertible edge)" if e.invertible else ""
            raise LimitError(
                f"coupling[{b}] (edge {e.i}–{e.j}){kind}: {k[b]:.6g} "
                f"is outside the device limit [{lo[b]:g}, {hi[b]:g}]"
            )
        return k

    def check_held_phases(self, phases_rad: ArrayLike) -> Array:
        """Held input phases (n_held,) rad: finite, wrapped to [−π, π) (values already in it
        are returned exactly as given)."""
        p = self._vector("held_phases", phases_rad, len(self.roles.held))
        inside = (p >= -np.pi) & (p < np.pi)
        out: Array = np.where(inside, p, (p + np.pi) % (2 * np.pi) - np.pi)
        return out

    def check_drive(self, amplitude: ArrayLike, phase_rad: float) -> tuple[Array, float]:
        """Drive amplitudes (n_drive,) in [0, ``limits.drive_max``] and a finite phase (rad)."""
        a = self._vector("drive_amplitude", amplitude, len(self.roles.drive))
        hi = self.limits.drive_max
        bad = np.flatnonzero((a < 0.0) | (a > hi))
        if bad.size:
            raise LimitError(
                f"drive_amplitude[{bad[0]}]: {a[bad[0]]:.6g} is outside the device limit [0, {hi}]"
            )
        p = float(phase_rad)
        if not np.isfinite(p):
            raise LimitError(f"drive_phase: {p} is not finite")
        return a, p

    def check_clamp(self, target: ArrayLike, beta: float) -> tuple[Array, float]:
        t = self._vector("target", target, len(self.roles.outputs))
        b = float(beta)
        if not math.isfinite(b) or not 0.0 <= b <= self.limits.beta_max:
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
        """Validate ``data``; on the base class the model class is picked from its ``backend``
        (:mod:`phasegrad_hw.device.registry`). ``source`` prefixes every error line."""
        target: type[DeviceModel] = cls
        if cls is DeviceModel:
            from phasegrad_hw.device.registry import model_class

            target = model_class(data.get("backend"), source=source)
        try:
            return target.model_validate(data)  # type: ignore[return-value]
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source)) from None

    def save(self, path: str | Path) -> None:
        p = Path(path)
        data = self.model_dump(mode="json", exclude_none=True)
        write_config_file(p, data)
