"""Controller-board protocol, layer 2: end to end over real transports — pyserial on a
pseudo-terminal and on a ``socket://`` TCP connection — against the emulated firmware, and
the ``phasegrad-hw emulate board`` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from phasegrad_hw.backends.board_link import PyserialStream
from phasegrad_hw.backends.serial import SerialOptions, SerialSubstrate
from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.errors import DeviceError, DeviceTimeoutError
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.firmware_models.server import LineServer
from phasegrad_hw.learning.controller import EPConfig
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.loop import LoopOptions, LoopState, train_on_substrates
from phasegrad_hw.learning.tasks import Encoding, load_vowels
from phasegrad_hw.testing.doubles import ScriptedSubstrate
from tests.conftest import REPO, require
from tests.protocol.test_board_protocol import board_model

TOL = 1e-9


def _serve(chip: OscillatorSubstrate, kind: str) -> tuple[LineServer, str]:
    server = LineServer(BoardFirmware(chip))
    if kind == "pty":
        require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
        return server, f"serial://{server.start_pty()}"
    host, port = server.start_tcp()
    return server, f"serial://{host}:{port}"


@pytest.fixture(params=["pty", "tcp"])
def board(request: pytest.FixtureRequest) -> Iterator[tuple[SimulatedSubstrate, str]]:
    chip = SimulatedSubstrate(board_model(noise=0.02), seed=11)
    server, uri = _serve(chip, request.param)
    try:
        yield chip, uri
    finally:
        server.stop()


def _is_safe(chip: SimulatedSubstrate) -> bool:
    return chip._clamp is None and np.array_equal(chip.omega, chip.model.safe_biases())


async def test_board_equals_in_process(board: tuple[SimulatedSubstrate, str]) -> None:
    chip, uri = board
    twin = SimulatedSubstrate(board_model(noise=0.02), seed=11)
    sub = open_substrate(uri)
    assert isinstance(sub, SerialSubstrate)
    assert sub.capabilities == {
        Capability.COUPLINGS,
        Capability.FREQUENCY_COUNTER,
        Capability.RESEED,  # the emulated chip behind the board has a noise seed
    }
    assert sub.model.limits == twin.model.limits and sub.model.nudge == twin.model.nudge
    assert sub.chip_model == chip.model  # the full emulator model, noise parameters included
    rng = np.random.default_rng(5)
    worst = 0.0
    async with sub:
        for _ in range(5):
            w = rng.uniform(-1, 1, 9)
            k = twin.model.coupling_values() * rng.uniform(0.9, 1.1, len(twin.model.edges))
            target = rng.uniform(-0.3, 0.3, 2)
            for s in (sub, twin):
                await s.set_couplings(k)
                await s.set_frequencies(w)
            for direction in (1, -1):
                a, b = await sub.read_phases(4), await twin.read_phases(4)
                worst = max(
                    worst,
                    float(np.abs(a.phases - b.phases).max()),
                    float(np.abs(a.spread - b.spread).max()),
                )
                assert a.locked == b.locked and a.averages == b.averages == 4
                for s in (sub, twin):
                    await s.clamp(target, 0.1, direction)
            for s in (sub, twin):
                await s.release()
            np.testing.assert_array_equal(
                await sub.read_frequencies(), await twin.read_frequencies()
            )
        assert worst <= TOL
        assert sub.stats["retries"] == 0
        # raw biases go through the 16-bit DAC: quantised to LSB/2, read back as codes
        v = rng.uniform(-2, 2, 9)
        await sub.set_biases(v)
        await sub.flush()
        lsb = 6.0 / 65535
        assert np.abs(chip.omega - v).max() <= lsb / 2 + 1e-12
        np.testing.assert_array_equal(chip.omega, -3.0 + sub.bias_codes(v) * lsb)
        await sub.clamp([0.1, 0.1], 0.2)
        await sub.flush()
        assert chip._clamp is not None
    assert _is_safe(chip)  # leaving ``async with`` sends SAFE


async def test_reconnect_after_close(board: tuple[SimulatedSubstrate, str]) -> None:
    chip, uri = board
    sub = open_substrate(uri)
    assert isinstance(sub, SerialSubstrate)
    k = chip.model.coupling_values() * 1.05
    async with sub:
        await sub.set_couplings(k)
        await sub.set_frequencies(np.full(9, 0.3))
        await sub.read_phases(1)
    assert _is_safe(chip)
    async with sub:  # the same object reopens the port and re-sends its confirmed couplings
        r = await sub.read_phases(1)
        assert r.locked
        assert np.array_equal(chip.K, SimulatedSubstrate(board_model()).K * 1.05)
    assert _is_safe(chip) and sub.stats["retries"] == 0


async def test_reconnect_refuses_another_board() -> None:
    """A pty path outlives its board and is handed to the next pty opened on the machine (by
    any process): a host reconnecting to its old path must not drive the board it now finds.
    The link is reopened onto another board's pty: refused by serial number, and that board
    got nothing but ``ID?`` — no restored setpoints, no reading."""
    require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
    ours, theirs = SimulatedSubstrate(board_model()), SimulatedSubstrate(board_model())
    with LineServer(BoardFirmware(ours)) as a, LineServer(BoardFirmware(theirs)) as b:
        fw_b = b.service
        assert isinstance(fw_b, BoardFirmware)
        path_a, path_b = a.start_pty(), b.start_pty()
        sub = SerialSubstrate(path_a, options=SerialOptions(timeout_s=2.0, reconnect_s=1.0))
        async with sub:
            await sub.set_frequencies(np.full(9, 0.4))
            await sub.read_phases(1)
            sub.link.close()  # the link drops; its path now leads to the other board
            assert isinstance(sub.link.stream, PyserialStream)
            sub.link.stream.url = path_b
            commands = fw_b.commands
            with pytest.raises(DeviceError, match=r"another board answers .*refusing it"):
                await sub.read_phases(1)
            assert not sub.link.is_open
            assert fw_b.commands - commands <= 2  # ID? (and the best-effort SAFE's ID?) only
            assert np.array_equal(theirs.omega, theirs.model.safe_biases())
            sub.link.stream.url = path_a  # cabled back: carries on with its own board
            assert (await sub.read_phases(1)).locked
        assert _is_safe(ours)


async def test_a_held_port_is_not_opened_twice() -> None:
    """The host locks the port: a second host (here a second driver; another process alike)
    cannot open it while the first holds it, so it can neither read the first's replies nor
    write into its board; once the first lets go, it can."""
    require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
    chip = SimulatedSubstrate(board_model())
    with LineServer(BoardFirmware(chip)) as server:
        path = server.start_pty()
        opts = SerialOptions(timeout_s=2.0, reconnect_s=0.3)
        first = SerialSubstrate(path, options=opts)
        async with first:
            with pytest.raises(DeviceTimeoutError, match="cannot open the port .*lock"):
                SerialSubstrate(path, options=opts)
            assert (await first.read_phases(1)).locked and first.stats["retries"] == 0
        second = SerialSubstrate(path, options=opts)
        async with second:
            assert (await second.read_phases(1)).locked


async def test_wrapped_board_sends_its_safe_exit_before_closing() -> None:
    """A wrapper (the test doubles) leaves safe through the driver's hooks, as deferred
    setpoints: they reach the board before the port closes, and no background flush reopens
    the port afterwards (it did, and then found another process's board on the reused path)."""
    require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
    chip = SimulatedSubstrate(board_model())
    with LineServer(BoardFirmware(chip)) as server:
        sub = SerialSubstrate(server.start_pty())
        async with ScriptedSubstrate(sub) as wrapped:
            await wrapped.set_frequencies(np.full(9, 0.5))
            await wrapped.clamp([0.2, -0.2], 0.1)
            await wrapped.read_phases(1)
            assert chip._clamp is not None
        # at once, not by a later flush: clamp off, biases at safe (through the 16-bit DAC)
        assert chip._clamp is None and not sub.link.is_open
        assert np.abs(chip.omega - chip.model.safe_biases()).max() <= 6.0 / 65535 / 2
        reconnects = sub.stats["reconnects"]
        await asyncio.sleep(0.2)
        assert not sub.link.is_open and sub.stats["reconnects"] == reconnects


CMOS_DEVICE = REPO / "examples" / "devices" / "cmos-2-5-2.toml"


async def test_training_through_pty_equals_in_process(vowels_csv: Path) -> None:
    """Acceptance: /a/ vs /i/ trained through the board on a pty ends at the same parameters
    as in-process training on the CMOS emulator with the same seed (readout noise, TDC,
    DAC and thermal drift included). CI-sized: 2 epochs."""
    require(CMOS_DEVICE.exists(), f"CMOS device file {CMOS_DEVICE}")
    ds = load_vowels(vowels_csv, ("a", "i"), seed=0)  # the full 80/20 split
    cfg = EPConfig(
        rule=EPRule(beta=0.1, mode="centred", averages=4, lr_omega=0.02, params="both", lr_k=0.01)
    )
    enc = Encoding()
    chip = open_substrate(CMOS_DEVICE, seed=3)
    server, uri = _serve(chip, "pty")
    results = []
    try:
        for sub in (open_substrate(uri), open_substrate(CMOS_DEVICE, seed=3)):
            async with sub:
                results.append(
                    await train_on_substrates([sub], ds, enc, cfg, LoopOptions(epochs=2, seed=4))
                )
    finally:
        server.stop()
    board_res, local = results
    p0, p1 = board_res.state.params, local.state.params
    assert np.abs(p0.omega - p1.omega).max() <= TOL
    assert np.abs(p0.coupling - p1.coupling).max() <= TOL
    assert [h.test_accuracy for h in board_res.state.history] == [
        h.test_accuracy for h in local.state.history
    ]
    assert local.state.skipped_samples == board_res.state.skipped_samples
    # the run did move the parameters away from their start
    assert np.abs(p1.coupling - chip.model.coupling_values()).max() > 1e-3
    # safe afterwards: injection off, biases at the safe value (to the chip's DAC LSB)
    assert chip._clamp is None  # type: ignore[attr-defined]
    assert np.abs(chip.bias - chip.model.safe_biases()).max() <= 0.4 / 65535  # type: ignore[attr-defined]


def _cli(*args: str, command: tuple[str, ...] = ("emulate", "board")) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "phasegrad_hw.cli", *command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("transport", "sig"), [("--pty", signal.SIGTERM), ("--tcp", signal.SIGINT)]
)
async def test_cli_emulate_board(tmp_path: Path, transport: str, sig: signal.Signals) -> None:
    require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
    dev = tmp_path / "chip.json"
    board_model().save(dev)
    proc = _cli("--device", str(dev), transport, *(["0"] if transport == "--tcp" else []))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        kind, _, address = line.partition(" ")
        assert kind == "board", (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        if transport == "--pty":
            assert address.startswith("/dev/")
        else:
            assert address.startswith("127.0.0.1:") and int(address.rsplit(":", 1)[1]) > 0
        twin = SimulatedSubstrate(board_model())
        async with open_substrate(f"serial://{address}") as sub:
            w = np.linspace(-0.5, 0.5, 9)
            await sub.set_frequencies(w)
            await twin.set_frequencies(w)
            assert (
                np.abs((await sub.read_phases(1)).phases - (await twin.read_phases(1)).phases).max()
                <= TOL
            )
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_options(tmp_path: Path) -> None:
    dev = tmp_path / "chip.json"
    board_model().save(dev)
    proc = _cli("--device", str(dev))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "exactly one of --pty or --tcp" in err
    proc = _cli("--device", str(dev), "--pty", "--fault", "drop=2")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--fault: drop: '2'" in err


async def test_cli_train_through_board_needs_no_model_file(
    tmp_path: Path, vowels_csv: Path
) -> None:
    """``phasegrad-hw train --device serial://<pty>``: the board's descriptor replaces the
    device file, and the run ends at the parameters of the same chip trained in-process."""
    require(CMOS_DEVICE.exists(), f"CMOS device file {CMOS_DEVICE}")
    from phasegrad_hw.store import RunStore

    server, uri = _serve(open_substrate(CMOS_DEVICE, seed=2), "pty")
    states: list[LoopState] = []
    try:
        for device in (uri, str(CMOS_DEVICE)):
            out = tmp_path / f"run{len(states)}.json"
            store = tmp_path / "runs.sqlite"
            proc = _cli(
                "--device",
                device,
                "--task",
                "vowels:a,i",
                "--data",
                str(vowels_csv),
                "--epochs",
                "1",
                "--seed",
                "2",
                "--json",
                str(out),
                "--store",
                str(store),
                command=("train",),
            )
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            result = json.loads(out.read_text())
            assert result["device"] == device and result["epochs"] == 1
            states.append(RunStore(store).load_checkpoint(result["run_id"])[1])
    finally:
        server.stop()
    a, b = states
    assert np.abs(a.params.omega - b.params.omega).max() <= TOL
    assert np.abs(a.params.coupling - b.params.coupling).max() <= TOL
    assert a.history[-1].test_accuracy == b.history[-1].test_accuracy
