"""Emulated SCPI bench instruments around one emulated chip, each on its own TCP port.

* :class:`Smu` — a multi-channel source-measure unit (Keysight B2900-style), one channel per
  oscillator bias: ``[:SOUR<n>]:VOLT[:LEV][:IMM][:AMPL] <v>`` (and ``?``),
  ``:SENS<n>:CURR[:DC]:PROT[:LEV] <a>`` (and ``?``), ``:SENS<n>:CURR[:DC]:PROT:TRIP?``,
  ``:OUTP<n>[:STAT] ON|OFF`` (and ``?``), ``:MEAS:CURR[:DC]? [(@<n>,…)]``. The chip load is a
  conductance ``load_conductance_s`` (1 mS); a channel whose current exceeds its compliance
  trips: its output goes off (the chip sees that channel's safe bias) until ``:OUTP<n> ON``.
* :class:`PhaseMeter` — a time-interval/phase analyzer (53230A-style) behind a multiplexer:
  ``:ROUT:CLOS (@<n>[,…|:m])`` selects the oscillator(s) measured against the reference (a
  scan list of several channels is measured in one acquisition — the chip's phases are read
  simultaneously, like a multi-channel TDC), ``:SAMP:COUN <k>``, ``:CONF:PHAS [(@list)]``,
  ``:READ?`` (new acquisition; mean phase per channel in degrees, ``%.17g``),
  ``:FETC?`` (last acquisition), ``:FORM:PHAS POS|CENT`` (0…360 or −180…180),
  ``:CALC:AVER:SDEV?`` (circular standard deviation per channel, degrees). A read during
  which the chip was not locked sets QUEStionable bit 6 (``:STAT:QUES:COND?`` → 64).
  Emulator-only: ``:SYST:EMUL:SEED <n>`` reseeds the chip's noise (for reproducible runs).
* :class:`InjectionSource` — one channel per output oscillator:
  ``[:SOUR<n>]:VOLT <amplitude>`` (V; β = amplitude / ``injection_v_per_beta``),
  ``[:SOUR<n>]:PHAS[:ADJ] <deg>``, ``:OUTP<n>[:STAT] ON|OFF``, ``:OUTP<n>:POL NORM|INV``
  (inverted polarity = the −β nudge of a centred estimate). The chip is nudged when every
  output channel is on with the same amplitude and polarity, released when all are off;
  anything in between cannot be expressed by the chip emulator and makes the next phase
  read fail with ``-221,"Settings conflict"``.
* :class:`InputSource` — on a chip with held inputs or driven oscillators (the bench's
  ``input_source``): the same channel commands as the injection source, one channel per held
  input (its phase is the held input's phase φ; the injection level is the chip's
  ``held_injection``, docs/design.md §8; the channel's output must be on) followed by one
  per driven oscillator (amplitude V = ``drive_v_per_unit``·F_i, output off = 0; every drive
  channel carries the one drive phase Ψ, docs/design.md §9). A held channel that is off, or
  drive channels with different phases, cannot be expressed by the chip emulator and make
  the next phase read fail with ``-221,"Settings conflict"``.

All instruments share one :class:`BenchChip`: settings are pushed to the emulated chip's substrate
hooks lazily, once, before the next acquisition. Out-of-range settings are refused with
``-222`` and never applied. Every server speaks newline-terminated SCPI (port 5025 style).

Fault injection (:class:`Fault`, switchable at run time from tests and from the CLI): delayed
replies, dropped replies, corrupted bytes (a reply byte with its high bit set — TCP itself
cannot corrupt silently, so this models a broken instrument/encoding), disconnects, SCPI
errors (the first unit of a message refused with ``-300``) and compliance trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.backends.visa_config import VisaBenchModel
from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.firmware_models.scpi import (
    Call,
    ScpiError,
    ScpiInstrument,
    boolean,
    channel_list,
    choice,
    format_float,
    integer,
    number,
)
from phasegrad_hw.physics import Array, wrap
from phasegrad_hw.wire.scpi import QUES_CURRENT, QUES_PHASE_UNLOCKED

log = logging.getLogger(__name__)

InstrumentName = Literal["smu", "phase_meter", "injection", "input_source"]


# --------------------------------------------------------------------------- faults
class Fault(StrictModel):
    """One injected fault. It fires on eligible messages number ``after``, ``after+every``, …
    (counted per fault from when it was added), at most ``count`` times (None = forever).

    Eligible: ``delay``/``drop``/``corrupt`` — messages that produce a reply; the others —
    every message to the instrument. ``delay_s`` for ``delay``; ``channel`` for ``trip``.
    """

    kind: Literal["delay", "drop", "corrupt", "disconnect", "scpi_error", "trip"]
    instrument: Literal["smu", "phase_meter", "injection", "input_source", "any"] = "any"
    after: int = Field(default=0, ge=0)
    every: int = Field(default=1, ge=1)
    count: int | None = Field(default=1, ge=1)
    delay_s: float = Field(default=0.5, ge=0.0, le=60.0)
    channel: int = Field(default=1, ge=1)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``KIND[:INSTRUMENT][:key=value…]``, e.g. ``drop:phase_meter:after=3:count=2``."""
        parts = [p for p in spec.split(":") if p]
        if not parts:
            raise ConfigError(f"--fault: {spec!r} — expected KIND[:INSTRUMENT][:key=value…]")
        data: dict[str, Any] = {"kind": parts[0]}
        for p in parts[1:]:
            key, eq, value = p.partition("=")
            if not eq:
                data["instrument"] = key
            else:
                data[key] = None if value.lower() == "none" else value
        try:
            return cls.model_validate(data)
        except Exception as exc:
            raise ConfigError(f"--fault {spec!r}: {exc}".splitlines()[0] + " …") from None


@dataclass
class _Armed:
    fault: Fault
    seen: int = 0
    fired: int = 0

    def fires(self) -> bool:
        i = self.seen
        self.seen += 1
        f = self.fault
        if f.count is not None and self.fired >= f.count:
            return False
        if i >= f.after and (i - f.after) % f.every == 0:
            self.fired += 1
            return True
        return False


_PRE = ("disconnect", "scpi_error", "trip")


@dataclass
class FaultInjector:
    """The armed faults of one bench (thread-safe to modify from another thread)."""

    armed: list[_Armed] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    log: list[tuple[str, str]] = field(default_factory=list)  # (kind, instrument) fired

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.armed.append(_Armed(fault))

    def clear(self) -> None:
        with self.lock:
            self.armed.clear()

    def fire(self, instrument: str, stage: Literal["pre", "post"]) -> list[Fault]:
        out = []
        with self.lock:
            for a in self.armed:
                f = a.fault
                if f.instrument not in ("any", instrument) or (f.kind in _PRE) != (stage == "pre"):
                    continue
                if a.fires():
                    out.append(f)
                    self.log.append((f.kind, instrument))
        return out


# --------------------------------------------------------------------------- chip
class BenchChip:
    """The one emulated chip behind every instrument.

    Settings land in the instruments; :meth:`measure` pushes the effective biases (SMU level
    where the output is on, the channel's safe bias otherwise), the injection state and the
    input source's held phases and drive to the chip's substrate hooks — only what changed —
    and then acquires.
    """

    def __init__(self, substrate: OscillatorSubstrate, bench: VisaBenchModel) -> None:
        self.sub = substrate
        self.bench = bench
        self.model: DeviceModel = substrate.model
        self.safe = self.model.safe_biases()
        self.smu: Smu | None = None
        self.injection: InjectionSource | None = None
        self.inputs: InputSource | None = None
        self._bias: Array | None = None
        self._clamp: tuple[Any, ...] | None = None
        self._held: tuple[float, ...] | None = None
        self._drive: tuple[tuple[float, ...], float] | None = None
        self.lock = asyncio.Lock()

    def effective_biases(self) -> Array:
        assert self.smu is not None
        ch = np.asarray(self.bench.smu.channels)  # instrument arrays are indexed by channel number
        on = self.smu.on[ch] & ~self.smu.tripped[ch]
        return np.where(on, self.smu.level[ch], self.safe)

    async def _sync(self) -> None:
        bias = self.effective_biases()
        if self._bias is None or not np.array_equal(bias, self._bias):
            await self.sub._apply_biases(bias)
            self._bias = bias
        assert self.injection is not None
        state = self.injection.chip_clamp()
        if state != self._clamp:
            if state[0] == "release":
                await self.sub._apply_release()
            elif state[0] == "clamp":
                _, target, beta, direction = state
                await self.sub._apply_clamp(np.array(target), beta, direction)
            else:
                raise ScpiError(-221, str(state[1]))
            self._clamp = state
        if self.inputs is not None:
            held, drive = self.inputs.chip_inputs()
            if held and held != self._held:
                await self.sub._apply_held_phases(np.array(held))
                self._held = held
            if drive[0] and drive != self._drive:
                await self.sub._apply_drive(np.array(drive[0]), drive[1])
                self._drive = drive

    async def measure(self, averages: int) -> PhaseReading:
        async with self.lock:
            await self._sync()
            return await self.sub._read(averages)

    async def reseed(self, seed: int) -> None:
        """Apply pending settings, then reseed the chip's noise (if it has any)."""
        async with self.lock:
            await self._sync()
            if Capability.RESEED in self.sub.capabilities:
                self.sub.reseed(seed)

    async def make_safe(self) -> None:
        """Release the nudge, switch a drive off and put every bias at its safe value
        (instruments reset)."""
        async with self.lock:
            for inst in (self.smu, self.injection, self.inputs):
                if inst is not None:
                    inst.reset()
            await self.sub._apply_release()
            if self.inputs is not None and self.model.roles.drive:
                off = np.zeros(len(self.model.roles.drive))
                await self.sub._apply_drive(off, 0.0)
                self._drive = (tuple(off.tolist()), 0.0)
            await self.sub._apply_biases(self.safe.copy())
            self._bias = self.safe.copy()
            self._clamp = ("release",)


# --------------------------------------------------------------------------- instruments
class Smu(ScpiInstrument):
    """Multi-channel SMU; channel levels in V (the chip's bias unit), currents in A."""

    model_name = "EMU-SMU"
    load_conductance_s = 1e-3

    def __init__(self, chip: BenchChip, n_channels: int) -> None:
        super().__init__()
        self.chip = chip
        chip.smu = self
        self.n = n_channels
        self.limits = [(-math.inf, math.inf)] * (n_channels + 1)
        for osc, ch in enumerate(chip.bench.smu.channels):
            c = chip.model.limits.bias.channel(osc)
            self.limits[ch] = (c.min, c.max)
        self.level = np.zeros(n_channels + 1)
        self.on = np.zeros(n_channels + 1, dtype=bool)
        self.tripped = np.zeros(n_channels + 1, dtype=bool)
        self.protection = np.zeros(n_channels + 1)
        self.reset()
        n = n_channels
        self.add(
            "[:SOURce#]:VOLTage[:LEVel][:IMMediate][:AMPLitude]",
            set=self._set_volt,
            query=lambda c: format_float(self.level[c.suffix()]),
            suffix_max=n,
        )
        self.add(
            ":SENSe#:CURRent[:DC]:PROTection[:LEVel]",
            set=self._set_prot,
            query=lambda c: format_float(self.protection[c.suffix()]),
            suffix_max=n,
        )
        self.add(
            ":SENSe#:CURRent[:DC]:PROTection:TRIPped",
            query=lambda c: self._per_channel(c, self.tripped),
            suffix_max=n,
        )
        self.add(
            ":OUTPut#[:STATe]",
            set=self._set_output,
            query=lambda c: self._per_channel(c, self.on),
            suffix_max=n,
        )
        self.add(":MEASure:CURRent[:DC]", query=self._measure_current)

    def reset(self) -> None:
        for ch in range(1, self.n + 1):
            lo, hi = self.limits[ch]
            self.level[ch] = min(max(0.0, lo), hi)
        for osc, ch in enumerate(self.chip.bench.smu.channels):
            self.level[ch] = self.chip.safe[osc]
        self.on[:] = False
        self.tripped[:] = False
        self.protection[:] = 1e-4

    def questionable(self) -> int:
        return QUES_CURRENT if self.tripped.any() else 0

    def current(self, ch: int) -> float:
        return float(self.level[ch] * self.load_conductance_s) if self.on[ch] else 0.0

    def _check_trip(self, ch: int) -> None:
        if self.on[ch] and abs(self.level[ch] * self.load_conductance_s) > self.protection[ch]:
            self.trip(ch)

    def trip(self, ch: int) -> None:
        """Compliance trip: the output goes off and the trip flag latches until OUTP ON."""
        if 1 <= ch <= self.n:
            log.info("SMU channel %d tripped", ch)
            self.on[ch] = False
            self.tripped[ch] = True
            self.ques_event |= QUES_CURRENT

    def _set_volt(self, c: Call) -> None:
        ch = c.suffix()
        lo, hi = self.limits[ch]
        self.level[ch] = number(c.one_param(), f"SOUR{ch}:VOLT", lo, hi)
        self._check_trip(ch)

    def _set_prot(self, c: Call) -> None:
        ch = c.suffix()
        self.protection[ch] = number(c.one_param(), f"SENS{ch}:CURR:PROT", 1e-9, 1.0)
        self._check_trip(ch)

    def _set_output(self, c: Call) -> None:
        ch = c.suffix()
        self.on[ch] = boolean(c.one_param(), f"OUTP{ch}")
        if self.on[ch]:
            self.tripped[ch] = False
            self._check_trip(ch)

    def _per_channel(self, c: Call, flags: NDArray[np.bool_]) -> str:
        """``<hdr><n>?`` → 0|1; ``<hdr>? (@list)`` → one 0|1 per listed channel (N6700-style)."""
        if not c.params:
            return str(int(flags[c.suffix()]))
        chans = channel_list(c.one_param(), c.header, 1, self.n)
        return ",".join(str(int(flags[ch])) for ch in chans)

    def _measure_current(self, c: Call) -> str:
        chans = [1] if not c.params else channel_list(c.one_param(), "MEAS:CURR", 1, self.n)
        return ",".join(format_float(self.current(ch)) for ch in chans)


class PhaseMeter(ScpiInstrument):
    """Phase analyzer behind a multiplexer; phases in degrees against the reference."""

    model_name = "EMU-PHASE"

    def __init__(self, chip: BenchChip, n_channels: int) -> None:
        super().__init__()
        self.chip = chip
        self.n = n_channels
        # mux channel -> oscillator
        self.osc_of = {ch: osc for osc, ch in enumerate(chip.bench.phase_meter.channels)}
        self.max_count = chip.model.limits.max_averages
        self.reset()
        self.add(":ROUTe:CLOSe", set=self._close, query=self._q_close)
        self.add(":SAMPle:COUNt", set=self._count, query=lambda c: str(self.count))
        self.add(":CONFigure:PHASe", set=self._conf)
        self.add(":CONFigure", query=lambda c: '"PHAS"')
        self.add(":FORMat:PHASe", set=self._form, query=lambda c: self.form)
        self.add(":READ", query=self._read)
        self.add(":INITiate[:IMMediate]", set=self._init)
        self.add(":FETCh", query=self._fetch)
        self.add(":CALCulate:AVERage:SDEViation", query=self._sdev)
        self.add(":SYSTem:EMULation:SEED", set=self._seed)

    def reset(self) -> None:
        self.scan = [min(self.osc_of)] if self.osc_of else [1]
        self.count = 1
        self.form = "POS"
        self.last: tuple[list[int], PhaseReading] | None = None
        self._unlocked = False

    def questionable(self) -> int:
        return QUES_PHASE_UNLOCKED if self._unlocked else 0

    def _close(self, c: Call) -> None:
        chans = channel_list(c.one_param(), "ROUT:CLOS", 1, self.n)
        missing = [ch for ch in chans if ch not in self.osc_of]
        if missing:
            raise ScpiError(-222, f"ROUT:CLOS channel {missing[0]} is not wired to an oscillator")
        self.scan = chans

    def _q_close(self, c: Call) -> str:
        return "(@" + ",".join(str(ch) for ch in self.scan) + ")"

    def _count(self, c: Call) -> None:
        self.count = integer(c.one_param(), "SAMP:COUN", 1, self.max_count)

    def _conf(self, c: Call) -> None:
        scan = None
        if c.params:
            scan = [ch for p in c.params for ch in channel_list(p, "CONF:PHAS", 1, self.n)]
            missing = [ch for ch in scan if ch not in self.osc_of]
            if missing:
                raise ScpiError(
                    -222, f"CONF:PHAS channel {missing[0]} is not wired to an oscillator"
                )
        self.count = 1
        if scan:
            self.scan = scan

    def _form(self, c: Call) -> None:
        self.form = choice(c.one_param(), "FORM:PHAS", {"POS": "POSITIVE", "CENT": "CENTERED"})

    async def _seed(self, c: Call) -> None:
        await self.chip.reseed(integer(c.one_param(), "SYST:EMUL:SEED", 0, 2**63 - 1))

    def _degrees(self, phases: Array) -> Array:
        d = np.degrees(phases)
        if self.form == "CENT":  # values already in range keep every bit
            return np.where((d >= -180.0) & (d < 180.0), d, (d + 180.0) % 360.0 - 180.0)
        return np.where((d >= 0.0) & (d < 360.0), d, d % 360.0)

    async def _acquire(self) -> None:
        reading = await self.chip.measure(self.count)
        self._unlocked = not reading.locked
        if self._unlocked:
            self.ques_event |= QUES_PHASE_UNLOCKED
        self.last = (list(self.scan), reading)

    def _values(self, which: Literal["mean", "sdev"]) -> str:
        if self.last is None:
            raise ScpiError(-230, "no acquisition since reset")
        scan, reading = self.last
        osc = [self.osc_of[ch] for ch in scan]
        vals = (
            self._degrees(reading.phases[osc])
            if which == "mean"
            else np.degrees(reading.spread[osc])
        )
        return ",".join(format_float(v) for v in vals)

    async def _read(self, c: Call) -> str:
        c.no_params()
        await self._acquire()
        return self._values("mean")

    async def _init(self, c: Call) -> None:
        c.no_params()
        await self._acquire()

    def _fetch(self, c: Call) -> str:
        c.no_params()
        return self._values("mean")

    def _sdev(self, c: Call) -> str:
        c.no_params()
        return self._values("sdev")


class _SourceChannels(ScpiInstrument):
    """The channels of an injection source: amplitude (V, 0 … ``amp_max``), phase (deg),
    output on/off, polarity."""

    def __init__(self, chip: BenchChip, n_channels: int, amp_max: float) -> None:
        super().__init__()
        self.chip = chip
        self.n = n_channels
        self.amp_max = amp_max
        self.amp = np.zeros(n_channels + 1)
        self.phase_deg = np.zeros(n_channels + 1)
        self.on = np.zeros(n_channels + 1, dtype=bool)
        self.inverted = np.zeros(n_channels + 1, dtype=bool)
        n = n_channels
        self.add(
            "[:SOURce#]:VOLTage[:LEVel][:IMMediate][:AMPLitude]",
            set=self._set_amp,
            query=lambda c: format_float(self.amp[c.suffix()]),
            suffix_max=n,
        )
        self.add(
            "[:SOURce#]:PHASe[:ADJust]",
            set=self._set_phase,
            query=lambda c: format_float(self.phase_deg[c.suffix()]),
            suffix_max=n,
        )
        self.add(
            ":OUTPut#[:STATe]",
            set=self._set_output,
            query=lambda c: str(int(self.on[c.suffix()])),
            suffix_max=n,
        )
        self.add(
            ":OUTPut#:POLarity",
            set=self._set_pol,
            query=lambda c: "INV" if self.inverted[c.suffix()] else "NORM",
            suffix_max=n,
        )

    def reset(self) -> None:
        self.amp[:] = 0.0
        self.phase_deg[:] = 0.0
        self.on[:] = False
        self.inverted[:] = False

    def _set_amp(self, c: Call) -> None:
        ch = c.suffix()
        self.amp[ch] = number(c.one_param(), f"SOUR{ch}:VOLT", 0.0, self.amp_max)

    def _set_phase(self, c: Call) -> None:
        ch = c.suffix()
        self.phase_deg[ch] = number(c.one_param(), f"SOUR{ch}:PHAS", -360.0, 360.0)

    def _set_output(self, c: Call) -> None:
        ch = c.suffix()
        self.on[ch] = boolean(c.one_param(), f"OUTP{ch}")

    def _set_pol(self, c: Call) -> None:
        ch = c.suffix()
        self.inverted[ch] = (
            choice(c.one_param(), f"OUTP{ch}:POL", {"NORM": "NORMAL", "INV": "INVERTED"}) == "INV"
        )


class InjectionSource(_SourceChannels):
    """One injection channel per output oscillator: the nudge (β = amplitude /
    ``injection_v_per_beta``, target = phase, direction = polarity)."""

    model_name = "EMU-INJECT"

    def __init__(self, chip: BenchChip, n_channels: int) -> None:
        self.v_per_beta = chip.bench.injection_v_per_beta
        super().__init__(chip, n_channels, chip.model.limits.beta_max * self.v_per_beta)
        chip.injection = self

    def chip_clamp(self) -> tuple[Any, ...]:
        """The chip's view: ("release",), ("clamp", target, β, direction) or ("conflict", why)."""
        ch = self.chip.bench.injection.channels
        on = self.on[ch]
        if not on.any():
            return ("release",)
        if not on.all():
            return ("conflict", "injection: some output channels on, others off")
        amps, inv = self.amp[ch], self.inverted[ch]
        if np.ptp(amps) != 0 or inv.any() != inv.all():
            return ("conflict", "injection: output channels differ in amplitude or polarity")
        target = tuple(float(x) for x in np.radians(self.phase_deg[ch]))
        return ("clamp", target, float(amps[0]) / self.v_per_beta, -1 if inv[0] else 1)


class InputSource(_SourceChannels):
    """The held inputs' and driven oscillators' injection source (module docstring): held
    channels first (``roles.held`` order), then drive channels (``roles.drive`` order)."""

    model_name = "EMU-INPUTS"

    def __init__(self, chip: BenchChip, n_channels: int) -> None:
        bench = chip.bench
        self.v_per_unit = bench.drive_v_per_unit
        super().__init__(chip, n_channels, chip.model.limits.drive_max * self.v_per_unit)
        chip.inputs = self
        assert bench.input_source is not None
        n_held = len(chip.model.roles.held)
        self.held_ch = np.asarray(bench.input_source.channels[:n_held], dtype=np.int64)
        self.drive_ch = np.asarray(bench.input_source.channels[n_held:], dtype=np.int64)

    def chip_inputs(self) -> tuple[tuple[float, ...], tuple[tuple[float, ...], float]]:
        """The chip's view: held phases (rad, wrapped) and the drive (amplitudes F_i, model
        units; Ψ rad, wrapped). Raises -221 for what the chip cannot express."""
        off = self.held_ch[~self.on[self.held_ch]]
        if off.size:
            raise ScpiError(-221, f"input_source: held input channel {int(off[0])} is off")
        held = tuple(float(x) for x in wrap(np.radians(self.phase_deg[self.held_ch])))
        d = self.drive_ch
        if d.size and np.ptp(self.phase_deg[d]) != 0:
            raise ScpiError(-221, "input_source: drive channels differ in phase")
        amp = np.where(self.on[d], self.amp[d], 0.0) / self.v_per_unit
        psi = float(wrap(np.radians(self.phase_deg[d[0]]))) if d.size else 0.0
        return held, (tuple(float(x) for x in amp), psi)


# --------------------------------------------------------------------------- servers
def build_chip(bench: VisaBenchModel, seed: int | None = None) -> OscillatorSubstrate:
    """The emulated chip behind a bench: ``bench.chip`` via its backend, else the ideal
    simulated device on the bench's own topology."""
    from phasegrad_hw.device.registry import open_model

    chip_model = bench.chip_model()
    if chip_model is None:
        from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate

        data = bench.chip_fields()
        return SimulatedSubstrate(
            SimulatedDeviceModel.model_validate({**data, "backend": "simulated"}), seed
        )
    return open_model(chip_model, seed)


class BenchEmulator:
    """SMU, phase meter, injection source (and input source) on TCP ports around one chip.

    ``ports`` (smu, phase_meter, injection, input_source); 0 (or a missing entry) picks a
    free port. Use :meth:`start` /
    :meth:`stop` inside a running loop, or :meth:`running` to serve from a background thread
    (what tests and benchmarks do, since pyvisa is synchronous).
    """

    def __init__(
        self,
        bench: VisaBenchModel,
        chip: OscillatorSubstrate | None = None,
        *,
        host: str = "127.0.0.1",
        ports: tuple[int, ...] = (0, 0, 0, 0),
        seed: int | None = None,
    ) -> None:
        self.bench = bench
        self.chip = BenchChip(chip if chip is not None else build_chip(bench, seed), bench)
        n_smu = max(bench.smu.channels)
        n_mux = max(bench.phase_meter.channels)
        n_inj = max(bench.injection.channels)
        self.smu = Smu(self.chip, n_smu)
        self.phase_meter = PhaseMeter(self.chip, n_mux)
        self.injection = InjectionSource(self.chip, n_inj)
        self.instruments: dict[str, ScpiInstrument] = {
            "smu": self.smu,
            "phase_meter": self.phase_meter,
            "injection": self.injection,
        }
        self.inputs: InputSource | None = None
        if bench.input_source is not None:
            self.inputs = InputSource(self.chip, max(bench.input_source.channels))
            self.instruments["input_source"] = self.inputs
        self.host = host
        self.requested_ports = dict(zip(self.instruments, ports, strict=False))
        self.ports: dict[str, int] = {}
        self.faults = FaultInjector()
        #: (instrument, bytes received, bytes sent or None) per message when recording
        self.transcript: list[tuple[str, bytes, bytes | None]] | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[None]] = set()  # one per open connection (_serve)
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def resources(self) -> dict[str, str]:
        return {name: f"TCPIP::{self.host}::{port}::SOCKET" for name, port in self.ports.items()}

    def bench_config(self, **overrides: Any) -> VisaBenchModel:
        """The bench config with this emulator's resource strings filled in."""
        data = self.bench.model_dump(mode="json", exclude_none=True)
        for name, res in self.resources().items():
            data[name]["resource"] = res
        data.update(overrides)
        return VisaBenchModel.model_validate(data)

    def inject(self, fault: Fault) -> None:
        self.faults.add(fault)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = False
        await self.chip.make_safe()
        for name, inst in self.instruments.items():
            server = await asyncio.start_server(
                lambda r, w, n=name, i=inst: self._accept(n, i, r, w),  # type: ignore[misc]
                self.host,
                self.requested_ports.get(name, 0),
                limit=1 << 20,
            )
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]
        log.info("bench emulator: %s", self.resources())

    async def stop(self) -> None:
        """Close servers and connections, end every connection's task (cancelled and
        awaited: none is left pending in a loop about to close), then leave the chip safe."""
        self._closing = True  # a connection still being accepted is closed at once
        for server in self._servers:
            server.close()
        for w in list(self._writers):
            w.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()
        tasks = list(self._serving)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.chip.make_safe()

    def _accept(
        self,
        name: str,
        inst: ScpiInstrument,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """A new connection: its :meth:`_serve` task, owned here so :meth:`stop` can end it."""
        if self._closing:
            writer.close()
            return
        task = asyncio.get_running_loop().create_task(self._serve(name, inst, reader, writer))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(
        self,
        name: str,
        inst: ScpiInstrument,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            import socket

            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    # discard the over-long message up to its terminator
                    while True:
                        try:
                            await reader.readuntil(b"\n")
                            break
                        except asyncio.LimitOverrunError as exc:
                            await reader.readexactly(exc.consumed)
                    inst.push_error(-363, "message too long")
                    continue
                except asyncio.IncompleteReadError:
                    break
                if not await self._handle(name, inst, raw, writer):
                    break
        except (ConnectionError, OSError) as exc:
            log.debug("%s: connection error %s", name, exc)
        except Exception:  # never let a bug take the instrument down silently
            log.exception("%s: internal error; connection closed", name)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(
        self, name: str, inst: ScpiInstrument, raw: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Run one message; False when the connection must close (injected disconnect)."""
        line = raw.rstrip(b"\n").rstrip(b"\r").decode("latin-1")
        armed = bool(self.faults.armed)
        if armed and line.strip():
            for f in self.faults.fire(name, "pre"):
                if f.kind == "disconnect":
                    log.info("%s: injected disconnect", name)
                    return False
                if f.kind == "trip" and isinstance(inst, Smu):
                    inst.trip(f.channel)
                if f.kind == "scpi_error":
                    line = _refuse_first_unit(inst, line)
        reply = await inst.execute(line)
        if reply is None:
            if self.transcript is not None:
                self.transcript.append((name, raw, None))
            return True
        data = (reply + "\n").encode("ascii", "replace")
        for f in self.faults.fire(name, "post") if armed else ():
            if f.kind == "delay":
                await asyncio.sleep(f.delay_s)
            elif f.kind == "drop":
                log.info("%s: injected dropped reply", name)
                return True
            elif f.kind == "corrupt":
                b = bytearray(data)
                i = int(self.faults.rng.integers(0, max(1, len(b) - 1)))
                b[i] ^= 0x80
                data = bytes(b)
        if self.transcript is not None:
            self.transcript.append((name, raw, data))
        writer.write(data)
        await writer.drain()
        return True

    # -- background thread ------------------------------------------------------------
    @contextlib.contextmanager
    def running(self) -> Iterator[BenchEmulator]:
        """Serve from a background thread with its own event loop; stop (chip safe) on exit."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                error.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()

        thread = threading.Thread(target=run, name="bench-emulator", daemon=True)
        thread.start()
        started.wait(30)
        if error:
            raise error[0]
        try:
            yield self
        finally:
            fut = asyncio.run_coroutine_threadsafe(self.stop(), loop)
            with contextlib.suppress(Exception):
                fut.result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def _refuse_first_unit(inst: ScpiInstrument, line: str) -> str:
    """Injected SCPI error: the message's first unit is refused (-300) and not executed."""
    head, sep, rest = line.partition(";")
    while sep and not head.strip():
        head, sep, rest = rest.partition(";")
    inst.push_error(-300, f"injected fault; refused {head.strip()[:24]!r}")
    log.info("injected SCPI error on %r", head.strip()[:24])
    return rest if sep else ""
