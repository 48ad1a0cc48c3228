"""The NI-DAQmx backend, tested against a stand-in for the part of the nidaqmx API it uses
(AO voltage tasks, counter two-edge-separation tasks), wired to the chip emulator.

The stand-in's method signatures are checked against the installed nidaqmx package, so it
cannot silently drift from the real API. No real NI device was used.
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import inspect
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.daqmx import DaqmxBench, DaqmxBenchModel, daqmx_bench_for_chip
from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.device.presets import layered
from phasegrad_hw.device.substrate import OscillatorSubstrate
from phasegrad_hw.errors import ConfigError, DeviceError, DeviceTimeoutError, LimitError


def chip_model(nudge: str = "injection", **kw: Any) -> SimulatedDeviceModel:
    base = layered(2, 5, 2, np.random.default_rng(0)).model_dump()
    return SimulatedDeviceModel.model_validate({**base, "nudge": nudge, **kw})


# --------------------------------------------------------------------------- stand-in
class FakeDaqError(Exception):
    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(f"{message}\nStatus Code: {error_code}")
        self.error_code = error_code


class _Constants:
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

    ``Dev1/ao0…ao{n-1}`` bias oscillator i; the next AO lines are I then Q of each output's
    vector modulator; ``/Dev1/PFI<i>`` carries oscillator i (down-converted to ``freq_hz``).
    Counters that are read in one round share one acquisition (a triggered start).
    """

    def __init__(self, chip: OscillatorSubstrate, freq_hz: float, v_per_beta: float) -> None:
        self.chip = chip
        self.n = chip.model.n
        self.outputs = list(chip.model.roles.outputs)
        self.period = 1.0 / freq_hz
        self.v_per_beta = v_per_beta
        self.ao: dict[str, float] = {}
        self.calls: list[str] = []
        self.cache: tuple[np.ndarray, set[int]] | None = None
        self.fail_reads = 0
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def apply(self) -> None:
        n, m = self.n, len(self.outputs)
        if all(f"Dev1/ao{i}" in self.ao for i in range(n)):
            self.run(self.chip._apply_biases(np.array([self.ao[f"Dev1/ao{i}"] for i in range(n)])))
        iq = [f"Dev1/ao{n + k}" for k in range(2 * m)]
        if all(c in self.ao for c in iq):
            i_v = np.array([self.ao[c] for c in iq[:m]])
            q_v = np.array([self.ao[c] for c in iq[m:]])
            amp = np.hypot(i_v, q_v)
            if not amp.any():
                self.run(self.chip._apply_release())
            else:
                assert np.ptp(amp) < 1e-12, "outputs must share one amplitude"
                self.run(
                    self.chip._apply_clamp(np.arctan2(q_v, i_v), float(amp[0]) / self.v_per_beta, 1)
                )
        self.cache = None

    def edge_separations(self, osc: int, k: int) -> np.ndarray:
        if self.fail_reads:
            self.fail_reads -= 1
            raise FakeDaqError(
                "Some or all of the samples requested have not yet been acquired (timeout).",
                -200284,
            )
        if self.cache is None or osc in self.cache[1]:
            reading = self.run(self.chip._read(1))
            base = reading.phases
            j = np.arange(k)[:, None]
            # a locked chip gives the same phases every sample; an unlocked one slips
            slip = 0.0 if reading.locked else 1.3 * j * np.arange(self.n)[None, :]
            samples = np.repeat(base[None, :], k, axis=0) + slip
            self.cache = (samples, set())
        samples, used = self.cache
        used.add(osc)
        theta = samples[:k, osc]
        return self.period * np.mod(-theta / (2 * math.pi), 1.0)


class FakeAOChannels:
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
    ci_two_edge_sep_first_term = ""
    ci_two_edge_sep_second_term = ""


class FakeCIChannels:
    def __init__(self, task: FakeTask) -> None:
        self.task = task

    def add_ci_two_edge_sep_chan(
        self,
        counter: str,
        name_to_assign_to_channel: str = "",
        min_val: float = 1e-6,
        max_val: float = 1.0,
        units: Any = _Constants.TimeUnits.SECONDS,
        first_edge: Any = _Constants.Edge.RISING,
        second_edge: Any = _Constants.Edge.FALLING,
    ) -> FakeCIChannel:
        assert units is _Constants.TimeUnits.SECONDS
        assert first_edge is second_edge is _Constants.Edge.RISING
        ch = FakeCIChannel()
        self.task.ci.append((counter, min_val, max_val, ch))
        return ch


class FakeTiming:
    def __init__(self, task: FakeTask) -> None:
        self.task = task

    def cfg_implicit_timing(
        self, sample_mode: Any = _Constants.AcquisitionType.FINITE, samps_per_chan: int = 1000
    ) -> None:
        assert sample_mode is _Constants.AcquisitionType.FINITE
        self.task.samples = samps_per_chan


class FakeTask:
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
        assert not self.closed and auto_start is True
        values = list(data)
        assert len(values) == len(self.ao)
        for (name, lo, hi), v in zip(self.ao, values, strict=True):
            if not lo <= v <= hi:
                raise FakeDaqError(f"{name}: {v} V outside [{lo}, {hi}]", -200077)
            self.system.ao[name] = float(v)
        self.system.calls.append("write " + ",".join(n for n, _, _ in self.ao))
        self.system.apply()
        return len(values)

    def read(self, number_of_samples_per_channel: int = 1, timeout: float = 10.0) -> list[float]:
        assert not self.closed and len(self.ci) == 1
        assert number_of_samples_per_channel == self.samples, "implicit timing not configured"
        counter, lo, hi, ch = self.ci[0]
        assert ch.ci_two_edge_sep_first_term == "/Dev1/PFI0"
        osc = int(ch.ci_two_edge_sep_second_term.removeprefix("/Dev1/PFI"))
        self.system.calls.append(f"read {counter}")
        dt = self.system.edge_separations(osc, number_of_samples_per_channel)
        assert np.all((dt >= 0) & (dt <= hi))
        return [float(x) for x in dt]

    def close(self) -> None:
        self.closed = True


def fake_nidaqmx(system: FakeSystem) -> SimpleNamespace:
    return SimpleNamespace(
        Task=lambda: FakeTask(system),
        constants=_Constants,
        errors=SimpleNamespace(DaqError=FakeDaqError),
    )


def rig(nudge: str = "injection", **kw: Any) -> tuple[DaqmxBench, FakeSystem, SimulatedDeviceModel]:
    model = chip_model(nudge, **kw)
    bench_model = daqmx_bench_for_chip(model)
    system = FakeSystem(
        SimulatedSubstrate(model),
        bench_model.measured_frequency_hz,
        bench_model.injection_v_per_beta,
    )
    return DaqmxBench(bench_model, daqmx=fake_nidaqmx(system)), system, model


async def ep_sequence(sub: OscillatorSubstrate, averages: int = 3) -> np.ndarray:
    rng = np.random.default_rng(2)
    out = []
    async with sub:
        for i in range(4):
            await sub.set_frequencies(rng.uniform(-1, 1, 9))
            out.append((await sub.read_phases(averages)).phases)
            await sub.clamp(rng.uniform(-0.5, 0.5, 2), 0.2, direction=1 if i % 2 == 0 else -1)
            out.append((await sub.read_phases(averages)).phases)
            await sub.release()
    return np.array(out)


# --------------------------------------------------------------------------- tests
def test_stand_in_matches_the_real_nidaqmx_api() -> None:
    nidaqmx = importlib.import_module("nidaqmx")
    from nidaqmx.task import Timing
    from nidaqmx.task.channels import CIChannel
    from nidaqmx.task.collections import AOChannelCollection, CIChannelCollection

    pairs: list[tuple[Any, Any]] = [
        (FakeAOChannels.add_ao_voltage_chan, AOChannelCollection.add_ao_voltage_chan),
        (FakeCIChannels.add_ci_two_edge_sep_chan, CIChannelCollection.add_ci_two_edge_sep_chan),
        (FakeTiming.cfg_implicit_timing, Timing.cfg_implicit_timing),
        (FakeTask.write, nidaqmx.Task.write),
        (FakeTask.read, nidaqmx.Task.read),
    ]
    for fake, real in pairs:
        fake_params = list(inspect.signature(fake).parameters)
        real_params = list(inspect.signature(real).parameters)
        assert fake_params == real_params[: len(fake_params)], (fake, real_params)
    for attr in ("ci_two_edge_sep_first_term", "ci_two_edge_sep_second_term"):
        assert hasattr(CIChannel, attr)
    assert nidaqmx.constants.TimeUnits.SECONDS.value == _Constants.TimeUnits.SECONDS.value
    assert nidaqmx.constants.Edge.RISING.value == _Constants.Edge.RISING.value
    assert nidaqmx.constants.AcquisitionType.FINITE.value == _Constants.AcquisitionType.FINITE.value


def test_daqmx_matches_in_process() -> None:
    bench, system, model = rig()
    got = asyncio.run(ep_sequence(bench))
    ref = asyncio.run(ep_sequence(SimulatedSubstrate(model)))
    assert np.abs(got - ref).max() <= 1e-9
    assert np.abs(ref).max() > 0.05
    # one bias write per set_frequencies, one counter read per non-reference oscillator
    assert system.calls.count("read Dev1/ctr0") == 8
    # closing left the chip safe: biases at safe values, injection off
    assert system.ao["Dev1/ao3"] == model.safe_biases()[3]
    assert system.ao["Dev1/ao9"] == system.ao["Dev1/ao12"] == 0.0


def test_limits_refused_before_anything_is_written() -> None:
    bench, system, _ = rig()

    async def run() -> None:
        async with bench:
            n = len(system.calls)
            w = np.zeros(9)
            w[2] = -4.0
            with pytest.raises(LimitError, match=r"omega\[2\]: -4 is outside the device limit"):
                await bench.set_frequencies(w)
            assert len(system.calls) == n

    asyncio.run(run())


def test_unlocked_chip_is_reported_unlocked() -> None:
    bench, system, _ = rig()

    async def run() -> None:
        async with bench:
            await bench.set_frequencies(np.full(9, 0.1))
            assert (await bench.read_phases(4)).locked
            await system.chip._apply_couplings(np.full(24, 0.01))  # far too weak to lock
            w = np.linspace(-3.0, 3.0, 9)
            await bench.set_frequencies(w)
            r = await bench.read_phases(4)
            assert not r.locked and r.spread.max() > bench.model.lock_spread_rad

    asyncio.run(run())


def test_minus_beta_refused_for_linear_nudge_and_device_safe() -> None:
    bench, system, model = rig(nudge="linear")

    async def run() -> None:
        async with bench:
            await bench.clamp([0.1, 0.2], 0.1)
            assert system.ao["Dev1/ao9"] != 0.0
            with pytest.raises(DeviceError, match="linear nudge"):
                await bench.clamp([0.1, 0.2], 0.1, direction=-1)

    asyncio.run(run())  # leaving `async with` after the refusal makes the device safe
    assert system.ao["Dev1/ao9"] == system.ao["Dev1/ao10"] == 0.0
    assert [system.ao[f"Dev1/ao{i}"] for i in range(9)] == list(model.safe_biases())


def test_counter_timeout_is_a_clear_error() -> None:
    bench, system, _ = rig()
    system.fail_reads = 1

    async def run() -> None:
        async with bench:
            await bench.read_phases()

    with pytest.raises(DeviceTimeoutError, match=r"counter Dev1/ctr0 \(oscillator 1\) timed out"):
        asyncio.run(run())


def test_missing_runtime_gives_a_clear_error() -> None:
    """With the nidaqmx package but no NI-DAQmx runtime (this machine), using the backend
    names the missing runtime; importing the backend needs neither."""
    nidaqmx = importlib.import_module("nidaqmx")
    try:
        nidaqmx.Task().close()
        runtime = True
    except Exception:
        runtime = False
    if runtime:
        pytest.skip("an NI-DAQmx runtime is installed here")
    bench = DaqmxBench(daqmx_bench_for_chip(chip_model()))

    async def run() -> None:
        async with bench:
            pass

    with pytest.raises(DeviceError, match=r"NI-DAQmx runtime \(driver library\) is not installed"):
        asyncio.run(run())


def test_missing_package_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake_import(name: str, package: str | None = None) -> Any:
        if name == "nidaqmx":
            raise ModuleNotFoundError("No module named 'nidaqmx'")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    bench = DaqmxBench(daqmx_bench_for_chip(chip_model()))

    async def run() -> None:
        async with bench:
            pass

    with pytest.raises(DeviceError, match=r"package 'nidaqmx' is not installed.*pip install"):
        asyncio.run(run())


def test_config_errors_name_the_field() -> None:
    data = daqmx_bench_for_chip(chip_model()).model_dump(mode="json")
    data["bias_channels"] = data["bias_channels"][:5]
    del data["counters"]["3"]
    with pytest.raises(ConfigError) as ei:
        DaqmxBenchModel.from_dict(data)
    assert "bias_channels: 5 entries — need 9" in str(ei.value)
    assert "counters: oscillators" in str(ei.value)
