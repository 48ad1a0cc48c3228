"""End to end: the pyvisa bench driver (real pyvisa-py over TCP sockets) against the emulated
SCPI instruments, compared with the same chip in-process; fault matrix; training acceptance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.backends.visa import VisaBench
from phasegrad_hw.backends.visa_config import VisaBenchModel, bench_for_chip
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.presets import layered
from phasegrad_hw.device.registry import load_device_model, open_substrate
from phasegrad_hw.device.substrate import OscillatorSubstrate
from phasegrad_hw.errors import DeviceError, DeviceTimeoutError, LimitError, SubstrateError
from phasegrad_hw.firmware_models.instruments import BenchEmulator, Fault
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from tests.conftest import REPO, VOWELS_CSV, require

RES = {k: "TCPIP::127.0.0.1::1::SOCKET" for k in ("smu", "phase_meter", "injection")}
CMOS_FILE = REPO / "examples" / "devices" / "cmos-2-5-2.toml"
FAST = {
    "retries": 3,
    "reconnect_backoff_s": 0.01,
    "measure_timeout_s": 0.4,
    "resync_timeout_s": 1.5,
}


def chip_model() -> SimulatedDeviceModel:
    return layered(2, 5, 2, np.random.default_rng(0))


@pytest.fixture
def emu() -> Iterator[BenchEmulator]:
    e = BenchEmulator(bench_for_chip(chip_model(), RES))
    with e.running():
        yield e


def fast_config(e: BenchEmulator, **kw: Any) -> VisaBenchModel:
    cfg = e.bench_config(**{**FAST, **kw})
    data = cfg.model_dump(mode="json")
    for name in ("smu", "phase_meter", "injection"):
        data[name]["timeout_s"] = 0.25
    return VisaBenchModel.model_validate(data)


async def ep_sequence(sub: OscillatorSubstrate, n: int = 4, averages: int = 1) -> np.ndarray:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        w = rng.uniform(-1.0, 1.0, sub.model.n)
        await sub.set_frequencies(w)
        out.append((await sub.read_phases(averages)).phases)
        await sub.clamp(rng.uniform(-0.5, 0.5, 2), 0.1, direction=1 if i % 2 == 0 else -1)
        out.append((await sub.read_phases(averages)).phases)
        await sub.release()
    return np.array(out)


def assert_safe(e: BenchEmulator) -> None:
    """Chip nudge off and every bias at its safe value (as the chip would see it)."""
    assert not e.injection.on.any(), "injection outputs left on"
    assert np.array_equal(e.chip.effective_biases(), e.chip.safe), "biases not at safe values"


@pytest.mark.parametrize("link", ["auto", "pyvisa"])
def test_visa_matches_in_process_simulated(emu: BenchEmulator, link: str) -> None:
    """Over the driver's own socket link (``auto`` for SOCKET resources) and over pyvisa-py."""
    bench = VisaBench(emu.bench_config(link=link))
    got = asyncio.run(_run(bench))
    ref = asyncio.run(_run(SimulatedSubstrate(chip_model())))
    assert got.shape == (8, 9)
    assert np.abs(got - ref).max() <= 1e-9
    assert bench.retries_used == 0
    # a step costs few round trips: connect + 4 × (bias, read×2, clamp, release) + close
    assert bench.round_trips <= 10 + 4 * 7 + 4
    assert_safe(emu)


async def _run(sub: OscillatorSubstrate) -> np.ndarray:
    async with sub:
        return await ep_sequence(sub)


def test_channel_maps_are_honoured() -> None:
    """Permuted wiring: the driver must address each oscillator through its own channels."""
    model = chip_model()
    base = bench_for_chip(model, RES).model_dump(mode="json")
    base["smu"]["channels"] = [9, 8, 7, 6, 5, 4, 3, 2, 1]
    base["phase_meter"]["channels"] = [3, 1, 2, 12, 11, 10, 4, 6, 5]
    base["injection"]["channels"] = [2, 1]
    e = BenchEmulator(VisaBenchModel.model_validate(base))
    with e.running():
        got = asyncio.run(_run(VisaBench(e.bench_config())))
    ref = asyncio.run(_run(SimulatedSubstrate(model)))
    assert np.abs(got - ref).max() <= 1e-9


def test_cmos_chip_with_noise_and_reseed_matches_in_process() -> None:
    require(CMOS_FILE.exists(), f"CMOS device file {CMOS_FILE}")
    chip = load_device_model(CMOS_FILE)
    e = BenchEmulator(bench_for_chip(chip, RES), seed=3)

    async def run(sub: OscillatorSubstrate) -> np.ndarray:
        async with sub:
            sub.reseed(11)  # type: ignore[attr-defined]
            return await ep_sequence(sub, n=3, averages=8)

    with e.running():
        got = asyncio.run(run(VisaBench(e.bench_config())))
    ref = asyncio.run(run(open_substrate(CMOS_FILE, seed=3)))
    assert np.abs(got - ref).max() <= 1e-9
    assert np.std(ref[:, 1:]) > 0  # the phases are not trivially equal


def test_limits_refused_before_anything_is_sent(emu: BenchEmulator) -> None:
    async def run() -> None:
        async with VisaBench(emu.bench_config()) as bench:
            emu.transcript = []
            w = np.zeros(9)
            w[4] = 3.5
            with pytest.raises(LimitError, match=r"omega\[4\]: 3\.5 is outside the device limit"):
                await bench.set_frequencies(w)
            with pytest.raises(LimitError, match="beta"):
                await bench.clamp([0.0, 0.0], 2.0)
            assert emu.transcript == []
            await bench.set_frequencies(np.full(9, 0.25))
            assert emu.transcript[0][0] == "smu"
            sent = ";".join(f":SOUR{c}:VOLT 0.25" for c in range(1, 10)) + ";:SYST:ERR?\n"
            assert emu.transcript[0][1] == sent.encode()
            assert emu.transcript[0][2] == b'0,"No error"\n'
            emu.transcript = []
            await bench.read_phases(4)
            assert [t[1] for t in emu.transcript] == [
                b":SAMP:COUN 4;:READ?;:CALC:AVER:SDEV?;:STAT:QUES:COND?;:SYST:ERR?\n",
                b":SENS:CURR:PROT:TRIP? (@1,2,3,4,5,6,7,8,9);:OUTP? (@1,2,3,4,5,6,7,8,9)\n",
            ]
            assert emu.transcript[1][2] == b"0,0,0,0,0,0,0,0,0;1,1,1,1,1,1,1,1,1\n"
            emu.transcript = None

    asyncio.run(run())


# --------------------------------------------------------------------------- faults
FAULTS = [
    (kind, inst)
    for kind in ("delay", "drop", "corrupt", "disconnect", "scpi_error")
    for inst in ("smu", "phase_meter", "injection")
]


@pytest.mark.parametrize(("kind", "inst"), FAULTS)
def test_fault_matrix_recovers_transparently(kind: str, inst: str, caplog: Any) -> None:
    """A transient fault (fires twice) is recovered: the EP run through the controller gives
    exactly the parameters of the fault-free in-process run (no stale or corrupted reading
    was used), and the device is safe afterwards."""
    caplog.set_level(logging.WARNING)
    e = BenchEmulator(bench_for_chip(chip_model(), RES))
    with e.running():
        e.inject(Fault(kind=kind, instrument=inst, after=3, every=4, count=2, delay_s=0.6))
        bench = VisaBench(fast_config(e))
        got = asyncio.run(_train(bench))
        assert [f for f in e.faults.log if f[0] == kind] == [(kind, inst)] * 2
        assert bench.retries_used >= 2
        assert_safe(e)
    ref = asyncio.run(_train(SimulatedSubstrate(chip_model())))
    assert np.abs(got - ref).max() <= 1e-9


@pytest.mark.parametrize(
    ("kind", "inst"),
    [
        ("drop", "phase_meter"),
        ("corrupt", "smu"),
        ("disconnect", "injection"),
        ("delay", "phase_meter"),
    ],
)
@pytest.mark.parametrize("link", ["socket", "pyvisa"])
def test_fault_recovery_with_io_in_a_worker_thread(kind: str, inst: str, link: str) -> None:
    """The same recovery with ``io_mode = "thread"`` (every query in the worker thread),
    over the driver's own socket and over a pyvisa-py resource (public API only)."""
    e = BenchEmulator(bench_for_chip(chip_model(), RES))
    with e.running():
        e.inject(Fault(kind=kind, instrument=inst, after=3, count=1, delay_s=0.6))
        bench = VisaBench(fast_config(e, io_mode="thread", link=link))
        got = asyncio.run(_train(bench))
        assert bench.retries_used >= 1
        assert_safe(e)
    ref = asyncio.run(_train(SimulatedSubstrate(chip_model())))
    assert np.abs(got - ref).max() <= 1e-9


def test_cancelled_read_does_not_leave_a_stale_reply(emu: BenchEmulator) -> None:
    """A read cancelled while its reply is in flight: the late reply is discarded and the
    next read returns fresh phases."""

    async def run() -> tuple[np.ndarray, np.ndarray, int]:
        async with VisaBench(fast_config(emu)) as bench:
            await bench.set_frequencies(np.full(9, 0.05))
            emu.inject(Fault(kind="delay", instrument="phase_meter", delay_s=0.3))
            task = asyncio.ensure_future(bench.read_phases())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            w = np.linspace(-0.5, 0.5, 9)
            await bench.set_frequencies(w)
            fresh = (await bench.read_phases()).phases
            retries = bench.retries_used
        ref = SimulatedSubstrate(chip_model())
        await ref.set_frequencies(w)
        return fresh, (await ref.read_phases()).phases, retries

    fresh, expected, retries = asyncio.run(run())
    assert np.abs(fresh - expected).max() <= 1e-9
    assert retries == 1  # one resynchronisation discarded the late reply


async def _train(sub: OscillatorSubstrate, steps: int = 4) -> np.ndarray:
    model = sub.model
    params = Parameters(np.zeros(model.n), model.coupling_values())
    cfg = EPConfig(rule=EPRule(beta=0.1, lr_omega=0.05, mode="centred"))
    rng = np.random.default_rng(3)
    history = []
    async with sub:
        ctl = EPController([sub], cfg, params)
        for _ in range(steps):
            rep = await ctl.step([Sample(rng.uniform(-1, 1, 2), np.array([-0.2, 0.2]))])
            assert rep.updated
            history.append(ctl.params.omega.copy())
    return np.array(history)


@pytest.mark.parametrize("inst", ["smu", "phase_meter", "injection"])
def test_persistent_fault_ends_in_clear_error_and_safe_device(inst: str) -> None:
    """Replies dropped for good: past the retry budget a clear error naming the instrument;
    the parameters are those of the last completed step; the device is left safe."""
    e = BenchEmulator(bench_for_chip(chip_model(), RES))
    with e.running():
        bench = VisaBench(fast_config(e, retries=1, resync_timeout_s=0.3))
        model = bench.model
        params = Parameters(np.zeros(model.n), model.coupling_values())

        async def run() -> tuple[Parameters, Parameters]:
            async with bench:
                ctl = EPController([bench], EPConfig(rule=EPRule(beta=0.1, lr_omega=0.05)), params)
                await ctl.step([Sample(np.array([0.3, -0.2]), np.array([-0.2, 0.2]))])
                before = ctl.params.copy()
                # only the instrument under test stops answering (reconnects too)
                e.inject(Fault(kind="drop", instrument=inst, count=None))
                e.inject(Fault(kind="disconnect", instrument=inst, after=2, count=None))
                with pytest.raises(DeviceTimeoutError, match=f"bench: {inst} .* after 2 attempts"):
                    await ctl.step([Sample(np.array([0.1, 0.4]), np.array([0.2, -0.2]))])
                return before, ctl.params

        try:
            before, after = asyncio.run(run())
        except SubstrateError:  # closing could not reach the dead instrument: still clear
            pytest.fail("close() must not mask the original error")
        assert np.array_equal(before.omega, after.omega)
        e.faults.clear()
        if inst != "smu":
            assert np.array_equal(e.chip.effective_biases(), e.chip.safe)
        if inst != "injection":
            assert not e.injection.on.any()


def test_compliance_trip_ends_in_clear_error_and_safe_device() -> None:
    e = BenchEmulator(bench_for_chip(chip_model(), RES))
    with e.running():
        bench = VisaBench(fast_config(e))

        async def run() -> None:
            async with bench:
                await bench.set_frequencies(np.full(9, 0.1))
                await bench.read_phases()
                await bench.clamp([0.1, -0.1], 0.1)
                e.inject(Fault(kind="trip", instrument="smu", channel=4))
                with pytest.raises(DeviceError, match=r"SMU channel 4 \(oscillator 3\) tripped"):
                    await bench.read_phases()
                # the error path already made the device safe
                assert_safe(e)
                assert not bench.clamped

        asyncio.run(run())
        assert_safe(e)


def test_unreachable_bench_gives_a_clear_error() -> None:
    model = bench_for_chip(chip_model(), {k: "TCPIP::127.0.0.1::9::SOCKET" for k in RES})
    model = VisaBenchModel.model_validate({**model.model_dump(mode="json"), **FAST, "retries": 1})

    async def run() -> None:
        async with VisaBench(model):
            pass

    match = r"cannot open smu at TCPIP::127\.0\.0\.1::9::SOCKET after 2 attempts"
    with pytest.raises(DeviceTimeoutError, match=match):
        asyncio.run(run())


def test_device_file_round_trip(tmp_path: Path, emu: BenchEmulator) -> None:
    path = tmp_path / "bench.toml"
    emu.bench_config().save(path)
    model: DeviceModel = load_device_model(path)
    assert isinstance(model, VisaBenchModel)
    assert model.smu.resource == emu.resources()["smu"]
    sub = open_substrate(path)
    assert isinstance(sub, VisaBench)
    got = asyncio.run(_run(sub))
    ref = asyncio.run(_run(SimulatedSubstrate(chip_model())))
    assert np.abs(got - ref).max() <= 1e-9


# --------------------------------------------------------------------------- acceptance
@pytest.mark.slow
def test_training_through_the_bench_matches_in_process() -> None:
    """Acceptance: /a/ vs /i/ through the SCPI bench over TCP gives the final parameters of
    the in-process CMOS emulator with the same seed (≤ 1e-9)."""
    require(CMOS_FILE.exists(), f"CMOS device file {CMOS_FILE}")
    require(VOWELS_CSV.exists(), f"vowel data at {VOWELS_CSV}")
    from phasegrad_hw.learning.loop import LoopOptions, train_on_substrates
    from phasegrad_hw.learning.tasks import Encoding, load_vowels

    data = load_vowels(VOWELS_CSV, ("a", "i"), seed=0)
    enc = Encoding()
    cfg = EPConfig(rule=EPRule(beta=0.1, lr_omega=0.01, averages=2))
    chip = load_device_model(CMOS_FILE)

    async def train(sub: OscillatorSubstrate) -> Any:
        async with sub:
            return await train_on_substrates([sub], data, enc, cfg, LoopOptions(epochs=2, seed=5))

    e = BenchEmulator(bench_for_chip(chip, RES), seed=5)
    with e.running():
        bench = VisaBench(e.bench_config())
        got = asyncio.run(train(bench))
        assert bench.retries_used == 0
    ref = asyncio.run(train(open_substrate(CMOS_FILE, seed=5)))
    assert got.state.epoch == ref.state.epoch == 2
    assert np.abs(got.state.params.omega - ref.state.params.omega).max() <= 1e-9
    assert np.abs(got.state.params.coupling - ref.state.params.coupling).max() <= 1e-9
    from phasegrad_hw.learning.seeding import initial_parameters

    start = initial_parameters(chip, np.random.default_rng(5), "random")
    assert np.abs(ref.state.params.omega - start.omega).max() > 1e-4  # training moved them
    assert got.final_test_accuracy == ref.final_test_accuracy


def test_stop_ends_every_connection_task() -> None:
    """Clients still connected when the emulator stops (idle, half-way through a message, or
    waiting for a delayed reply):
    every connection's task is ended and awaited before the loop closes — none is left
    pending ("Task was destroyed but it is pending: BenchEmulator._serve" at exit)."""
    import socket

    e = BenchEmulator(bench_for_chip(chip_model(), RES), chip=SimulatedSubstrate(chip_model()))
    clients = []
    with e.running():
        for port in e.ports.values():
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"*IDN?\n")
            assert c.recv(256).endswith(b"\n")
            clients.append(c)
        clients[0].sendall(b":SOUR1:VOLT 0.1")  # no terminator yet
        e.inject(Fault.parse("delay:phase_meter:delay_s=30"))
        clients[1].sendall(b"*IDN?\n")  # its reply is held back: a task mid-message
        time.sleep(0.2)
        loop = e._loop
        assert loop is not None
    assert loop.is_closed()
    assert not asyncio.all_tasks(loop)  # nothing pending in the closed loop
    assert not e._serving
    for c in clients:
        with c:
            assert c.recv(256) == b""  # the emulator closed the connection (no late reply)


# --------------------------------------------------------------------------- CLI
def test_cli_emulate_bench_serves_until_sigterm(tmp_path: Path) -> None:
    import signal

    from phasegrad_hw.testing.benches import emulated_bench

    device = tmp_path / "chip.toml"
    chip_model().save(device)
    out = tmp_path / "bench.yaml"
    # the helper checks the output: ``<name> TCPIP::<host>::<port>::SOCKET`` lines, ``bench <out>``
    with emulated_bench(device, out, "--fault", "drop:phase_meter:after=2") as (proc, ports):
        assert list(ports) == ["smu", "phase_meter", "injection"]
        model = load_device_model(out)
        assert isinstance(model, VisaBenchModel)
        data = model.model_dump(mode="json")
        for name, port in ports.items():
            assert data[name]["resource"] == f"TCPIP::127.0.0.1::{port}::SOCKET"
        data.update(FAST)
        sub = VisaBench(VisaBenchModel.model_validate(data))
        got = asyncio.run(_run(sub))  # the injected drop is recovered
        assert sub.retries_used == 1
        ref = asyncio.run(_run(SimulatedSubstrate(chip_model())))
        assert np.abs(got - ref).max() <= 1e-9
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
