"""A stand-in for the part of the ``nidaqmx`` API the daqmx backend uses (AO voltage tasks,
counter two-edge-separation tasks), wired to a chip emulator — so the DAQ driver runs
without NI hardware or the NI-DAQmx runtime.

``DaqmxBench(model, daqmx=fake_nidaqmx(FakeSystem(chip, f_hz, v_per_beta)))``. The stand-in's
method signatures are checked against the installed nidaqmx package by
``tests/protocol/test_daqmx.py``. A call the real API would not accept, or a use the driver
must not make (a write outside the channel range, a read before implicit timing is set),
raises :class:`AssertionError` or :class:`FakeDaqError` like the real driver library would.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np

from phasegrad_hw.device.substrate import OscillatorSubstrate
from phasegrad_hw.physics import Array

T = TypeVar("T")


def _expect(condition: bool, what: str) -> None:
    """The driver used the API the way the real library requires (else AssertionError)."""
    if not condition:
        raise AssertionError(what)


class FakeDaqError(Exception):
    """``nidaqmx.errors.DaqError``: message plus the NI status code."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(f"{message}\nStatus Code: {error_code}")
        self.error_code = error_code


class Constants:
    """The ``nidaqmx.constants`` members the driver uses (values as in nidaqmx)."""

    class TimeUnits(enum.Enum):
        SECONDS = 10364

    class Edge(enum.Enum):
        RISING = 10280
        FALLING = 10171

    class AcquisitionType(enum.Enum):
        FINITE = 10178
        CONTINUOUS = 10123


class FakeSystem:
    """The hardware behind the stand-in: AO lines into the chip, counters out of it.

    ``Dev1/ao0…ao{n-1}`` bias oscillator i (V); the next AO lines are I then Q of each
    output's vector modulator (amplitude ``v_per_beta`` V per unit β, phase = target); then
    the phase shifter of each held input (φ = V / ``phase_v_per_rad``), the amplitude of each
    driven oscillator (F_i = V / ``drive_v_per_unit``) and the drive's phase shifter
    (Ψ = V / ``phase_v_per_rad``) — the layout of
    :func:`~phasegrad_hw.backends.daqmx.daqmx_bench_for_chip`. A write hands the chip only
    the groups of lines it wrote (biases, injection, held phases, drive). ``/Dev1/PFI<i>``
    carries oscillator i down-converted to ``freq_hz`` (Hz), so a phase θ is an edge
    separation of (−θ/2π mod 1)/``freq_hz`` s after the reference edge. Counters read in one
    round share one acquisition (a triggered start; its k samples are k single-shot readings
    of the chip). ``fail_reads`` > 0: that many counter reads time out (NI status −200284).
    The chip's hooks run on the stand-in's own event loop (the driver calls it from its
    worker thread).
    """

    def __init__(
        self,
        chip: OscillatorSubstrate,
        freq_hz: float,
        v_per_beta: float,
        *,
        phase_v_per_rad: float = 1.0,
        drive_v_per_unit: float = 1.0,
    ) -> None:
        self.chip = chip
        self.n = chip.model.n
        self.outputs = list(chip.model.roles.outputs)
        self.reference = chip.model.roles.reference
        self.n_held = len(chip.model.roles.held)
        self.n_drive = len(chip.model.roles.drive)
        self.period = 1.0 / freq_hz
        self.v_per_beta = v_per_beta
        self.phase_v_per_rad = phase_v_per_rad
        self.drive_v_per_unit = drive_v_per_unit
        self.ao: dict[str, float] = {}
        self.calls: list[str] = []
        self.cache: tuple[Array, set[int]] | None = None
        self.fail_reads = 0
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        """Close the stand-in's event loop."""
        self.loop.close()

    def apply(self, written: set[str]) -> None:
        """Hand the AO levels of the groups ``written`` touched to the chip (biases, the
        injection, the held phases, the drive)."""
        n, m = self.n, len(self.outputs)
        bias = [f"Dev1/ao{i}" for i in range(n)]
        if written & set(bias) and all(c in self.ao for c in bias):
            self.run(self.chip._apply_biases(np.array([self.ao[c] for c in bias])))
        iq = [f"Dev1/ao{n + k}" for k in range(2 * m)]
        first_held = n + 2 * m
        held = [f"Dev1/ao{first_held + k}" for k in range(self.n_held)]
        first_drive = first_held + self.n_held
        drive = [f"Dev1/ao{first_drive + k}" for k in range(self.n_drive + 1)]  # + phase
        if held and written & set(held) and all(c in self.ao for c in held):
            phases = np.array([self.ao[c] for c in held]) / self.phase_v_per_rad
            self.run(self.chip._apply_held_phases(phases))
        if self.n_drive and written & set(drive) and all(c in self.ao for c in drive):
            volts = np.array([self.ao[c] for c in drive])
            amplitude = volts[:-1] / self.drive_v_per_unit
            self.run(self.chip._apply_drive(amplitude, float(volts[-1]) / self.phase_v_per_rad))
        if written & set(iq) and all(c in self.ao for c in iq):
            i_v = np.array([self.ao[c] for c in iq[:m]])
            q_v = np.array([self.ao[c] for c in iq[m:]])
            amp = np.hypot(i_v, q_v)
            if not amp.any():
                self.run(self.chip._apply_release())
            else:
                _expect(bool(np.ptp(amp) < 1e-12), "outputs must share one amplitude")
                beta = float(amp[0]) / self.v_per_beta
                self.run(self.chip._apply_clamp(np.arctan2(q_v, i_v), beta, 1))
        self.cache = None

    def edge_separations(self, osc: int, k: int) -> Array:
        """``k`` edge separations (s) of oscillator ``osc`` after the reference edge."""
        if self.fail_reads:
            self.fail_reads -= 1
            raise FakeDaqError(
                "Some or all of the samples requested have not yet been acquired (timeout).",
                -200284,
            )
        if self.cache is None or osc in self.cache[1]:
            # one single-shot conversion of the chip per sample (each with its own readout
            # noise); an unlocked chip slips from sample to sample
            readings = [self.run(self.chip._read(1)) for _ in range(k)]
            j = np.arange(k)[:, None]
            locked = all(r.locked for r in readings)
            slip = 0.0 if locked else 1.3 * j * np.arange(self.n)[None, :]
            samples = np.array([r.phases for r in readings]) + slip
            self.cache = (samples, set())
        samples, used = self.cache
        used.add(osc)
        theta = samples[:k, osc]
        return np.asarray(self.period * np.mod(-theta / (2 * math.pi), 1.0))


class FakeAOChannels:
    """``task.ao_channels``."""

    def __init__(self, task: FakeTask) -> None:
        self.task = task

    def add_ao_voltage_chan(
        self,
        physical_channel: str,
        name_to_assign_to_channel: str = "",
        min_val: float = -10.0,
        max_val: float = 10.0,
    ) -> Any:
        self.task.ao.append((physical_channel, min_val, max_val))
        return SimpleNamespace(name=physical_channel)


class FakeCIChannel:
    """One counter-input channel (its two terminals are set by the driver)."""

    ci_two_edge_sep_first_term = ""
    ci_two_edge_sep_second_term = ""


class FakeCIChannels:
    """``task.ci_channels``."""

    def __init__(self, task: FakeTask) -> None:
        self.task = task

    def add_ci_two_edge_sep_chan(
        self,
        counter: str,
        name_to_assign_to_channel: str = "",
        min_val: float = 1e-6,
        max_val: float = 1.0,
        units: Any = Constants.TimeUnits.SECONDS,
        first_edge: Any = Constants.Edge.RISING,
        second_edge: Any = Constants.Edge.FALLING,
    ) -> FakeCIChannel:
        _expect(units is Constants.TimeUnits.SECONDS, "edge separations are read in seconds")
        _expect(first_edge is second_edge is Constants.Edge.RISING, "both edges must be RISING")
        ch = FakeCIChannel()
        self.task.ci.append((counter, min_val, max_val, ch))
        return ch


class FakeTiming:
    """``task.timing``."""

    def __init__(self, task: FakeTask) -> None:
        self.task = task

    def cfg_implicit_timing(
        self, sample_mode: Any = Constants.AcquisitionType.FINITE, samps_per_chan: int = 1000
    ) -> None:
        _expect(sample_mode is Constants.AcquisitionType.FINITE, "finite acquisition expected")
        self.task.samples = samps_per_chan


class FakeTask:
    """``nidaqmx.Task``: AO writes go to the chip, a counter read returns edge separations."""

    def __init__(self, system: FakeSystem) -> None:
        self.system = system
        self.ao: list[tuple[str, float, float]] = []
        self.ci: list[tuple[str, float, float, FakeCIChannel]] = []
        self.samples = 0
        self.closed = False
        self.ao_channels = FakeAOChannels(self)
        self.ci_channels = FakeCIChannels(self)
        self.timing = FakeTiming(self)

    def write(self, data: Any, auto_start: bool = True, timeout: float = 10.0) -> int:
        _expect(not self.closed and auto_start is True, "write on a closed task or no auto_start")
        values = list(data)
        _expect(len(values) == len(self.ao), "one value per AO channel")
        for (name, lo, hi), v in zip(self.ao, values, strict=True):
            if not lo <= v <= hi:
                raise FakeDaqError(f"{name}: {v} V outside [{lo}, {hi}]", -200077)
            self.system.ao[name] = float(v)
        self.system.calls.append("write " + ",".join(n for n, _, _ in self.ao))
        self.system.apply({n for n, _, _ in self.ao})
        return len(values)

    def read(self, number_of_samples_per_channel: int = 1, timeout: float = 10.0) -> list[float]:
        _expect(not self.closed and len(self.ci) == 1, "one counter channel per read task")
        _expect(number_of_samples_per_channel == self.samples, "implicit timing not configured")
        counter, lo, hi, ch = self.ci[0]
        ref = f"/Dev1/PFI{self.system.reference}"
        _expect(ch.ci_two_edge_sep_first_term == ref, "first terminal: the reference")
        osc = int(ch.ci_two_edge_sep_second_term.removeprefix("/Dev1/PFI"))
        self.system.calls.append(f"read {counter}")
        dt = self.system.edge_separations(osc, number_of_samples_per_channel)
        _expect(bool(np.all((dt >= 0) & (dt <= hi))), "edge separation outside the range")
        return [float(x) for x in dt]

    def close(self) -> None:
        self.closed = True


def fake_nidaqmx(system: FakeSystem) -> SimpleNamespace:
    """A module-like stand-in for ``nidaqmx`` (``Task``, ``constants``, ``errors``)."""
    return SimpleNamespace(
        Task=lambda: FakeTask(system),
        constants=Constants,
        errors=SimpleNamespace(DaqError=FakeDaqError),
    )
