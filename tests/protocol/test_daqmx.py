"""The NI-DAQmx backend, tested against a stand-in for the part of the nidaqmx API it uses
(AO voltage tasks, counter two-edge-separation tasks; :mod:`phasegrad_hw.testing.daqmx`),
wired to the chip emulator.

The stand-in's method signatures are checked against the installed nidaqmx package, so it
cannot silently drift from the real API. No real NI device was used.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.daqmx import DaqmxBench, DaqmxBenchModel, daqmx_bench_for_chip
from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.device.presets import layered
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.errors import ConfigError, DeviceError, DeviceTimeoutError, LimitError
from phasegrad_hw.testing.daqmx import (
    Constants,
    FakeAOChannels,
    FakeCIChannels,
    FakeSystem,
    FakeTask,
    FakeTiming,
    fake_nidaqmx,
)
from phasegrad_hw.testing.doubles import HeldDriveRecorder
from tests.protocol.test_board_held import recorder


def chip_model(nudge: str = "injection", **kw: Any) -> SimulatedDeviceModel:
    base = layered(2, 5, 2, np.random.default_rng(0)).model_dump()
    return SimulatedDeviceModel.model_validate({**base, "nudge": nudge, **kw})


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
    assert nidaqmx.constants.TimeUnits.SECONDS.value == Constants.TimeUnits.SECONDS.value
    assert nidaqmx.constants.Edge.RISING.value == Constants.Edge.RISING.value
    assert nidaqmx.constants.AcquisitionType.FINITE.value == Constants.AcquisitionType.FINITE.value


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


# --------------------------------------------------------------------------- held / drive
def held_rig(**bench_overrides: Any) -> tuple[DaqmxBench, FakeSystem, HeldDriveRecorder]:
    """A DAQ bench around the held-and-driven 2-3-2 chip (a recording double: what reaches
    the chip through the AO lines is recorded)."""
    chip = recorder()
    bench_model = daqmx_bench_for_chip(chip.model, **bench_overrides)
    system = FakeSystem(
        chip,
        bench_model.measured_frequency_hz,
        bench_model.injection_v_per_beta,
        phase_v_per_rad=bench_model.phase_v_per_rad,
        drive_v_per_unit=bench_model.drive_v_per_unit,
    )
    return DaqmxBench(bench_model, daqmx=fake_nidaqmx(system)), system, chip


def test_held_phases_and_drive_through_analog_outputs() -> None:
    """Held phases → one phase-shifter voltage per held input (V = k_φ·φ), the drive → one
    amplitude voltage per driven oscillator (V = k_F·F_i) and the drive phase voltage;
    the chip receives the values back through the linear map."""
    bench, system, chip = held_rig(phase_v_per_rad=1.5, drive_v_per_unit=2.0)
    m = bench.model
    assert m.held_channels == ["Dev1/ao13", "Dev1/ao14"]
    assert m.drive_channels == ["Dev1/ao15", "Dev1/ao16", "Dev1/ao17"]
    assert m.drive_phase_channel == "Dev1/ao18"
    assert {Capability.HELD_PHASES, Capability.DRIVE} <= bench.capabilities

    async def run() -> None:
        async with bench:
            # power-on: phase shifters at 0 rad, the drive off
            assert [system.ao[c] for c in m.held_channels] == [0.0, 0.0]
            assert [system.ao[c] for c in m.drive_channels] == [0.0] * 3
            await bench.set_held_phases([0.5, -3.0])
            assert [system.ao[c] for c in m.held_channels] == [0.75, -4.5]
            np.testing.assert_allclose(chip.held_phases_rad, [0.5, -3.0], rtol=0, atol=1e-15)
            await bench.set_drive([0.5, 0.0, 2.0], 1.0)
            assert [system.ao[c] for c in m.drive_channels] == [1.0, 0.0, 4.0]
            assert system.ao["Dev1/ao18"] == 1.5
            np.testing.assert_allclose(chip.drive_amplitude, [0.5, 0.0, 2.0], rtol=0, atol=1e-15)
            assert chip.drive_phase_rad == pytest.approx(1.0, abs=1e-15)
            await bench.set_drive([0.5, 0.0, 2.0], 4.0)  # Ψ wrapped into [−π, π)
            assert system.ao["Dev1/ao18"] == pytest.approx(1.5 * (4.0 - 2 * np.pi), abs=1e-12)
            n = len(system.calls)
            with pytest.raises(LimitError, match=r"drive_amplitude\[2\]"):
                await bench.set_drive([0.5, 0.0, 2.5], 1.0)
            with pytest.raises(LimitError, match="held_phases"):
                await bench.set_held_phases([0.1, np.nan])
            assert len(system.calls) == n  # refused before anything was written
            # a held-phase write touches only the phase shifters
            drives = len([c for c in chip.calls if c[0] == "drive"])
            await bench.set_held_phases([0.0, 0.25])
            assert len([c for c in chip.calls if c[0] == "drive"]) == drives

    asyncio.run(run())
    # leaving `async with` switched the drive off; the held phases stay
    assert [system.ao[c] for c in bench.model.drive_channels] == [0.0] * 3
    assert chip.drive_amplitude.tolist() == [0.0] * 3
    assert [system.ao[c] for c in bench.model.held_channels] == [0.0, 0.375]
    assert chip.is_safe


def test_held_and_drive_wiring_errors_name_the_field() -> None:
    data = daqmx_bench_for_chip(recorder().model).model_dump(mode="json")
    bad = {
        **data,
        "held_channels": data["held_channels"][:1],
        "drive_phase_channel": None,
        "phase_v_per_rad": 2.0,
        "drive_v_per_unit": 6.0,
    }
    with pytest.raises(ConfigError) as ei:
        DaqmxBenchModel.from_dict(bad)
    msg = str(ei.value)
    assert "held_channels: 1 entries — need 2" in msg
    assert "drive_phase_channel: None" in msg
    assert "phase_v_per_rad: 2 V/rad × π = 6.283 V exceeds phase_range_v 5 V" in msg
    assert "drive_v_per_unit: 6 V × limits.drive_max 2 = 12 V exceeds drive_range_v 10 V" in msg
    dup = {**data, "drive_phase_channel": data["held_channels"][0]}
    with pytest.raises(ConfigError, match="used twice"):
        DaqmxBenchModel.from_dict(dup)


def test_a_chip_without_held_inputs_or_drive_declares_neither() -> None:
    bench, _, _ = rig()
    assert not {Capability.HELD_PHASES, Capability.DRIVE} & bench.capabilities
    assert bench.model.held_channels == [] and bench.model.drive_phase_channel is None
