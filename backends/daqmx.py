"""NI-DAQmx bench (nidaqmx): analog outputs for the biases, the injection, the held inputs'
phase shifters and the drive, counter two-edge-separation measurements for the phases
(docs/design.md §6).

NOT RUN AGAINST A REAL NI DEVICE: the logic is tested against a stand-in for the part of the
nidaqmx API used here (``tests/protocol/test_daqmx.py``), wired to the chip emulators.

Wiring assumed (:class:`DaqmxBenchModel`, ``backend = "daqmx"``):

* one AO voltage channel per oscillator bias (``bias_channels``, e.g. ``Dev1/ao0``), limits
  from ``limits.bias`` (V), written as one on-demand sample per channel;
* the nudge through one I/Q vector modulator per output oscillator, driven by two AO
  channels (``injection_i_channels``, ``injection_q_channels``): I = a·cos φ, Q = a·sin φ
  with a = β·``injection_v_per_beta`` (V) and φ the target phase. The −β nudge of a centred
  estimate is φ + π (exact for injection nudging, −β sin(φ − θ) = β sin(φ + π − θ)); a
  device with a ``linear`` nudge cannot be given −β this way and is refused;
* held inputs (``roles.held``, docs/design.md §8): one AO channel per held oscillator
  (``held_channels``) sets the control voltage of the phase shifter between the reference
  clock and that oscillator, linearly: V = ``phase_v_per_rad`` · φ, φ in [−π, π] rad;
* the drive (``roles.drive``, docs/design.md §9): one AO channel per driven oscillator
  (``drive_channels``) sets its injected amplitude, V = ``drive_v_per_unit`` · F_i (F_i in
  model units, 0 V = off), and one (``drive_phase_channel``) the phase shifter of the common
  drive signal, V = ``phase_v_per_rad`` · Ψ (Ψ wrapped to [−π, π)). The maps are checked to
  fit the channel ranges when the bench model is loaded (``phase_range_v`` for phase
  channels, [0, ``drive_range_v``] for amplitudes), so every value the device model accepts
  has a voltage;
* one counter per non-reference oscillator measuring the two-edge separation (s) from an
  edge of the reference signal (``first_terminal``) to the next edge of the oscillator
  (``second_terminal``), both brought to ``measured_frequency_hz`` by a common down-converter
  (mixing with one LO keeps phase differences). An oscillator leading the reference by θ
  arrives Δt = T·((−θ/2π) mod 1) later, so θ = −2π Δt/T (wrapped); the mean is circular.
  Averaging = ``averages`` finite samples per counter (implicit timing). A read whose
  circular spread exceeds ``lock_spread_rad`` is reported unlocked (phases slipping).

``nidaqmx`` is imported lazily in :meth:`DaqmxBench.connect`; without the package or without
the NI-DAQmx runtime (the C library) the error says which is missing and how to install it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import Field, model_validator

from phasegrad_hw.device.frequency_map import FrequencyMap
from phasegrad_hw.device.model import DeviceFileModel, DeviceModel
from phasegrad_hw.device.registry import chip_nominal_map
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import DeviceError, DeviceTimeoutError
from phasegrad_hw.physics import Array, wrap

log = logging.getLogger(__name__)
T = TypeVar("T")


class CounterSpec(DeviceFileModel):
    """One counter: physical channel and the two terminals (reference, oscillator)."""

    counter: str = Field(min_length=1)
    first_terminal: str = Field(min_length=1)
    second_terminal: str = Field(min_length=1)


class DaqmxBenchModel(DeviceModel):
    """An NI-DAQmx bench around one chip. Voltages in V, times in s, frequencies in Hz."""

    backend: Literal["daqmx"] = "daqmx"
    bias_channels: list[str]
    injection_i_channels: list[str]
    injection_q_channels: list[str]
    counters: dict[int, CounterSpec]
    measured_frequency_hz: float = Field(default=1e5, gt=0.0, le=1e8)
    injection_v_per_beta: float = Field(default=1.0, gt=0.0, le=10.0)
    injection_range_v: float = Field(default=10.0, gt=0.0, le=10.0)
    held_channels: list[str] = Field(default_factory=list)  # one per roles.held
    drive_channels: list[str] = Field(default_factory=list)  # one per roles.drive
    drive_phase_channel: str | None = None  # needed with roles.drive
    phase_v_per_rad: float = Field(default=1.0, gt=0.0, le=10.0)  # phase-shifter control, V/rad
    phase_range_v: float = Field(default=5.0, gt=0.0, le=10.0)  # phase AO channels: ±V
    drive_v_per_unit: float = Field(default=1.0, gt=0.0, le=10.0)  # V per model unit of F
    drive_range_v: float = Field(default=10.0, gt=0.0, le=10.0)  # amplitude AO: [0, V]
    timeout_s: float = Field(default=2.0, gt=0.0, le=600.0)
    lock_spread_rad: float = Field(default=0.5, gt=0.0, le=math.pi)
    settle_s: float = Field(default=0.0, ge=0.0, le=60.0)
    chip: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _wiring(self) -> DaqmxBenchModel:
        problems = []
        n, n_out = self.n_oscillators, len(self.roles.outputs)
        for name, length in (
            ("bias_channels", n),
            ("injection_i_channels", n_out),
            ("injection_q_channels", n_out),
            ("held_channels", len(self.roles.held)),
            ("drive_channels", len(self.roles.drive)),
        ):
            ch = getattr(self, name)
            if len(ch) != length:
                problems.append(f"{name}: {len(ch)} entries — need {length}")
        if bool(self.roles.drive) != (self.drive_phase_channel is not None):
            problems.append(
                f"drive_phase_channel: {self.drive_phase_channel!r} — needed exactly when "
                "roles.drive is not empty"
            )
        if self.roles.held or self.roles.drive:
            top = self.phase_v_per_rad * math.pi
            if top > self.phase_range_v:
                problems.append(
                    f"phase_v_per_rad: {self.phase_v_per_rad:g} V/rad × π = {top:.4g} V "
                    f"exceeds phase_range_v {self.phase_range_v:g} V"
                )
        if self.roles.drive:
            top = self.drive_v_per_unit * self.limits.drive_max
            if top > self.drive_range_v:
                problems.append(
                    f"drive_v_per_unit: {self.drive_v_per_unit:g} V × limits.drive_max "
                    f"{self.limits.drive_max:g} = {top:.4g} V exceeds drive_range_v "
                    f"{self.drive_range_v:g} V"
                )
        ao = (
            self.bias_channels
            + self.injection_i_channels
            + self.injection_q_channels
            + self.held_channels
            + self.drive_channels
            + ([self.drive_phase_channel] if self.drive_phase_channel else [])
        )
        dup = sorted({c for c in ao if ao.count(c) > 1})
        if dup:
            problems.append(f"AO channels {dup} are used twice")
        need = set(range(n)) - {self.roles.reference}
        if set(self.counters) != need:
            problems.append(
                f"counters: oscillators {sorted(self.counters)} — need exactly "
                f"{sorted(need)} (every oscillator but the reference)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def chip_model(self) -> DeviceModel | None:
        """The chip's own device model (None without a ``chip`` table)."""
        from phasegrad_hw.device.registry import chip_model

        return chip_model(self.chip, bench="daqmx")


def import_nidaqmx() -> ModuleType:
    """``nidaqmx``, or a :class:`DeviceError` that says what is missing."""
    try:
        return importlib.import_module("nidaqmx")
    except ImportError as exc:
        raise DeviceError(
            "daqmx: the Python package 'nidaqmx' is not installed "
            f"({exc}); install it with: pip install 'phasegrad-hw[daq]'"
        ) from None


class DaqmxBench(OscillatorSubstrate):
    """The DAQ bench as a substrate; nidaqmx calls run in one worker thread. Declares
    ``held_phases`` / ``drive`` when the device has held inputs / driven oscillators (the
    bench model then wires their AO channels)."""

    model: DaqmxBenchModel

    def __init__(
        self,
        model: DaqmxBenchModel,
        seed: int | None = None,
        *,
        daqmx: ModuleType | Any | None = None,
    ) -> None:
        super().__init__(model)
        self._daqmx = daqmx
        self._executor: ThreadPoolExecutor | None = None
        self._ao_bias: Any = None
        self._ao_inj: Any = None
        self._ao_held: Any = None
        self._ao_drive: Any = None
        self._ci: dict[int, Any] = {}
        self._samples: dict[int, int] = {}
        lim = model.limits.bias
        self._ao_range = (
            min(lim.channel(i).min for i in range(model.n)),
            max(lim.channel(i).max for i in range(model.n)),
        )
        self.capabilities = frozenset(
            {Capability.HELD_PHASES} if model.roles.held else set()
        ) | frozenset({Capability.DRIVE} if model.roles.drive else set())

    # -- lifecycle ---------------------------------------------------------------------
    async def connect(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="daqmx")
        try:
            await self._run(self._connect_sync)
        except BaseException:
            await self._run(self._disconnect_sync)
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def _disconnect(self) -> None:
        if self._executor is not None:
            await self._run(self._disconnect_sync)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise DeviceError("daqmx: not connected (use `async with` or connect())")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _new_task(self, dm: Any, what: str) -> Any:
        try:
            return dm.Task()
        except Exception as exc:
            if type(exc).__name__ == "DaqNotFoundError":
                raise DeviceError(
                    "daqmx: the NI-DAQmx runtime (driver library) is not installed on this "
                    "machine — the Python package 'nidaqmx' is, but it needs NI-DAQmx from "
                    "ni.com (on Linux: `python -m nidaqmx installdriver`); "
                    f"creating the {what} task failed: {exc}"
                ) from None
            raise DeviceError(f"daqmx: creating the {what} task failed: {exc}") from exc

    def _connect_sync(self) -> None:
        dm = self._daqmx if self._daqmx is not None else import_nidaqmx()
        self._daqmx = dm
        m = self.model
        c = dm.constants
        try:
            self._ao_bias = self._new_task(dm, "bias AO")
            lo, hi = self._ao_range
            for ch in m.bias_channels:
                self._ao_bias.ao_channels.add_ao_voltage_chan(ch, min_val=lo, max_val=hi)
            self._ao_inj = self._new_task(dm, "injection AO")
            r = m.injection_range_v
            for ch in m.injection_i_channels + m.injection_q_channels:
                self._ao_inj.ao_channels.add_ao_voltage_chan(ch, min_val=-r, max_val=r)
            p = m.phase_range_v
            if m.held_channels:
                self._ao_held = self._new_task(dm, "held-phase AO")
                for ch in m.held_channels:
                    self._ao_held.ao_channels.add_ao_voltage_chan(ch, min_val=-p, max_val=p)
            if m.drive_phase_channel is not None:
                self._ao_drive = self._new_task(dm, "drive AO")
                for ch in m.drive_channels:
                    self._ao_drive.ao_channels.add_ao_voltage_chan(
                        ch, min_val=0.0, max_val=m.drive_range_v
                    )
                self._ao_drive.ao_channels.add_ao_voltage_chan(
                    m.drive_phase_channel, min_val=-p, max_val=p
                )
            period = 1.0 / m.measured_frequency_hz
            for osc, spec in sorted(m.counters.items()):
                task = self._new_task(dm, f"counter {spec.counter}")
                chan = task.ci_channels.add_ci_two_edge_sep_chan(
                    spec.counter,
                    min_val=period * 1e-4,
                    max_val=period * 1.5,
                    units=c.TimeUnits.SECONDS,
                    first_edge=c.Edge.RISING,
                    second_edge=c.Edge.RISING,
                )
                chan.ci_two_edge_sep_first_term = spec.first_terminal
                chan.ci_two_edge_sep_second_term = spec.second_terminal
                self._ci[osc] = task
            self._write_bias_sync(m.safe_biases())
            self._write_injection_sync(
                np.zeros(len(m.roles.outputs)), np.zeros(len(m.roles.outputs))
            )
            if self._ao_held is not None:  # power-on: every phase shifter at 0 rad
                self._write_held_sync(np.zeros(len(m.roles.held)))
            if self._ao_drive is not None:  # and the drive off
                self._write_drive_sync(np.zeros(len(m.roles.drive)), 0.0)
        except DeviceError:
            raise
        except Exception as exc:
            raise DeviceError(f"daqmx: configuring the tasks failed: {exc}") from exc

    def _disconnect_sync(self) -> None:
        for task in [
            self._ao_bias,
            self._ao_inj,
            self._ao_held,
            self._ao_drive,
            *self._ci.values(),
        ]:
            if task is not None:
                try:
                    task.close()
                except Exception as exc:
                    log.debug("daqmx: closing a task: %s", exc)
        self._ao_bias = self._ao_inj = self._ao_held = self._ao_drive = None
        self._ci.clear()
        self._samples.clear()

    # -- writes ---------------------------------------------------------------------------
    def _write_bias_sync(self, values: Array) -> None:
        self._ao_bias.write(
            [float(v) for v in values], auto_start=True, timeout=self.model.timeout_s
        )

    def _write_injection_sync(self, i_v: Array, q_v: Array) -> None:
        data = [float(v) for v in np.concatenate([i_v, q_v])]
        self._ao_inj.write(data, auto_start=True, timeout=self.model.timeout_s)

    def held_volts(self, phases_rad: Array) -> Array:
        """Held input phases (rad, [−π, π]) → phase-shifter control voltages (V)."""
        out: Array = self.model.phase_v_per_rad * phases_rad
        return out

    def drive_volts(self, amplitude: Array, phase_rad: float) -> tuple[Array, float]:
        """Drive amplitudes (model units) and phase (rad) → amplitude voltages (V) and the
        drive phase shifter's control voltage (V); Ψ is wrapped to [−π, π) first."""
        psi = phase_rad if abs(phase_rad) <= math.pi else float(wrap(phase_rad))
        return self.model.drive_v_per_unit * amplitude, self.model.phase_v_per_rad * psi

    def _write_held_sync(self, phases_rad: Array) -> None:
        v = self.held_volts(phases_rad)
        self._ao_held.write([float(x) for x in v], auto_start=True, timeout=self.model.timeout_s)

    def _write_drive_sync(self, amplitude: Array, phase_rad: float) -> None:
        amp_v, phase_v = self.drive_volts(amplitude, phase_rad)
        data = [*(float(x) for x in amp_v), float(phase_v)]
        self._ao_drive.write(data, auto_start=True, timeout=self.model.timeout_s)

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        await self._run(lambda: self._write_held_sync(phases_rad))

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        await self._run(lambda: self._write_drive_sync(amplitude, phase_rad))

    def nominal_map(self) -> FrequencyMap:
        """The design curve of the chip behind the bench (identity without a ``chip``)."""
        return chip_nominal_map(self.model.chip_model())

    async def _apply_biases(self, values: Array) -> None:
        await self._run(lambda: self._write_bias_sync(values))
        if self.model.settle_s:
            await asyncio.sleep(self.model.settle_s)

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        if direction < 0 and self.model.nudge == "linear":
            raise DeviceError(
                "daqmx: an I/Q injection cannot produce the −β nudge of a device "
                "with a linear nudge; use one-sided EP or nudge = 'injection'"
            )
        a = beta * self.model.injection_v_per_beta
        phi = target + (math.pi if direction < 0 else 0.0)
        i_v, q_v = a * np.cos(phi), a * np.sin(phi)
        if a > self.model.injection_range_v:
            raise DeviceError(
                f"daqmx: injection amplitude {a:g} V exceeds injection_range_v "
                f"{self.model.injection_range_v:g} V"
            )
        await self._run(lambda: self._write_injection_sync(i_v, q_v))

    async def _apply_release(self) -> None:
        z = np.zeros(len(self.model.roles.outputs))
        await self._run(lambda: self._write_injection_sync(z, z))

    # -- reads ----------------------------------------------------------------------------
    def _read_sync(self, averages: int) -> PhaseReading:
        m = self.model
        c = self._daqmx.constants  # type: ignore[union-attr]
        period = 1.0 / m.measured_frequency_hz
        samples = np.zeros((averages, m.n))
        for osc, task in self._ci.items():
            if self._samples.get(osc) != averages:
                task.timing.cfg_implicit_timing(
                    sample_mode=c.AcquisitionType.FINITE, samps_per_chan=averages
                )
                self._samples[osc] = averages
            try:
                data = task.read(number_of_samples_per_channel=averages, timeout=m.timeout_s)
            except Exception as exc:
                if "timeout" in str(exc).lower() or "-200284" in str(exc):
                    raise DeviceTimeoutError(
                        f"daqmx: counter {m.counters[osc].counter} "
                        f"(oscillator {osc}) timed out: {exc}"
                    ) from exc
                raise DeviceError(
                    f"daqmx: reading counter {m.counters[osc].counter}: {exc}"
                ) from exc
            dt = np.atleast_1d(np.asarray(data, dtype=np.float64))
            if dt.shape != (averages,) or not np.all(np.isfinite(dt)) or np.any(dt < 0):
                raise DeviceError(
                    f"daqmx: counter {m.counters[osc].counter} returned "
                    f"{dt.size} samples {dt[:4]}, expected {averages} finite >= 0"
                )
            samples[:, osc] = wrap(-2.0 * math.pi * dt / period)
        reading = PhaseReading.from_samples(samples, settle_s=m.settle_s)
        locked = bool(np.all(reading.spread <= m.lock_spread_rad))
        return PhaseReading(
            reading.phases, reading.spread, locked, reading.timestamp, averages, m.settle_s
        )

    async def _read(self, averages: int) -> PhaseReading:
        return await self._run(lambda: self._read_sync(averages))


def open_daqmx(model: DaqmxBenchModel, seed: int | None = None) -> DaqmxBench:
    """Registry opener (``BACKENDS["daqmx"]``)."""
    return DaqmxBench(model, seed)


def daqmx_bench_for_chip(
    chip: DeviceModel, device: str = "Dev1", **overrides: Any
) -> DaqmxBenchModel:
    """A DAQ bench for ``chip``: ``ao0…`` biases, then I then Q per output, then one phase
    shifter per held input, one amplitude per driven oscillator and the drive phase; counter
    k on the oscillators but the reference, reference on ``PFI<ref>``, oscillator i on
    ``PFI<i>``."""
    n, outs, ref = chip.n, chip.roles.outputs, chip.roles.reference
    n_held, n_drive = len(chip.roles.held), len(chip.roles.drive)
    first_held = n + 2 * len(outs)
    first_drive = first_held + n_held
    base = chip.chip_fields("json")
    others = [i for i in range(n) if i != ref]
    data: dict[str, Any] = {
        **base,
        "backend": "daqmx",
        "name": f"{chip.name}-daq",
        "bias_channels": [f"{device}/ao{i}" for i in range(n)],
        "injection_i_channels": [f"{device}/ao{n + k}" for k in range(len(outs))],
        "injection_q_channels": [f"{device}/ao{n + len(outs) + k}" for k in range(len(outs))],
        "held_channels": [f"{device}/ao{first_held + k}" for k in range(n_held)],
        "drive_channels": [f"{device}/ao{first_drive + k}" for k in range(n_drive)],
        "drive_phase_channel": f"{device}/ao{first_drive + n_drive}" if n_drive else None,
        "counters": {
            i: {
                "counter": f"{device}/ctr{k}",
                "first_terminal": f"/{device}/PFI{ref}",
                "second_terminal": f"/{device}/PFI{i}",
            }
            for k, i in enumerate(others)
        },
        "chip": chip.model_dump(mode="json", exclude_none=True),
    }
    data.update(overrides)
    return DaqmxBenchModel.model_validate(data)
