"""Fault matrix: every fault injected by the emulated board either recovers transparently
(parameters identical to a fault-free in-process run) or ends in a clear error with the
parameters unchanged — never an update from a corrupted or stale reading — and the chip is
safe afterwards."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from phasegrad_hw.backends.serial import SerialOptions, SerialSubstrate
from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.errors import DeviceTimeoutError, ProtocolError
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.firmware_models.server import FaultConfig, LineServer
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from tests.conftest import require
from tests.protocol.test_board_protocol import board_model

TOL = 1e-9
CFG = EPConfig(rule=EPRule(beta=0.1, mode="centred", lr_omega=0.05, params="both", lr_k=0.02))

# Periodic faults (every N-th line) need N above the lines of one attempt (sync + restore +
# exchange, about 10 here); a board that resets more often than that cannot be used.
RECOVER = {  # name: (fault spec, transport, counter that must show the fault happened)
    "delay<timeout": ("delay=0.01", "tcp", "delay"),
    "delay>timeout,sometimes": ("delay=0.3,delay_p=0.05,seed=2", "tcp", "delay"),
    "drop": ("drop=0.1,seed=3", "tcp", "drop"),
    "corrupt": ("corrupt=0.2,seed=4", "tcp", "corrupt"),
    "corrupt-pty": ("corrupt=0.2,seed=5", "pty", "corrupt"),
    "garbage": ("garbage=0.2,seed=6", "tcp", "garbage"),
    "disconnect": ("disconnect_after=19", "tcp", "disconnect"),
    "brownout-pty": ("disconnect_after=19,disconnect_s=0.1", "pty", "disconnect"),
    "dtr-reset": ("reset_after=17", "tcp", "reset"),
    "dtr-reset-pty": ("reset_after=17", "pty", "reset"),
    "mixed": ("drop=0.03,corrupt=0.03,garbage=0.03,reset_after=29,seed=7", "tcp", "reset"),
}
FAIL = {  # name: (fault spec, expected error)
    "silent": ("drop=1", DeviceTimeoutError),
    "slow": ("delay=0.4", DeviceTimeoutError),
    "noisy": ("corrupt=1", ProtocolError),
}


def _start(server: LineServer, kind: str) -> str:
    if kind == "pty":
        require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
        return server.start_pty()
    host, port = server.start_tcp()
    return f"socket://{host}:{port}"


def _samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [
        Sample(rng.uniform(-1, 1, 2), np.array([-0.2, 0.2]) * rng.choice([-1, 1])) for _ in range(n)
    ]


def _params(model_seed: int = 0) -> Parameters:
    m = board_model(model_seed)
    omega = np.random.default_rng(9).uniform(-0.3, 0.3, m.n)
    return Parameters(omega, m.coupling_values())


def _is_safe(chip: SimulatedSubstrate) -> bool:
    return chip._clamp is None and np.array_equal(chip.omega, chip.model.safe_biases())


async def _wait_safe(chip: SimulatedSubstrate, timeout_s: float = 3.0) -> bool:
    t = time.monotonic() + timeout_s
    while time.monotonic() < t:
        if _is_safe(chip):
            return True
        await asyncio.sleep(0.02)
    return _is_safe(chip)


@pytest.mark.parametrize("name", list(RECOVER))
async def test_fault_recovers_transparently(name: str) -> None:
    spec, kind, counter = RECOVER[name]
    chip, twin = SimulatedSubstrate(board_model()), SimulatedSubstrate(board_model())
    server = LineServer(BoardFirmware(chip), FaultConfig.parse(spec))
    url = _start(server, kind)
    try:
        sub = SerialSubstrate(url, options=SerialOptions(timeout_s=0.25, retries=8))
        ref = EPController([twin], CFG, _params())
        async with sub:
            ctl = EPController([sub], CFG, _params())
            for s in _samples(8):
                r_ref = await ref.step([s])
                r = await ctl.step([s])
                assert r.updated == r_ref.updated
                assert np.abs(ctl.params.omega - ref.params.omega).max() <= TOL
                assert np.abs(ctl.params.coupling - ref.params.coupling).max() <= TOL
            assert ctl.stats.updates == 8 and ctl.stats.errors == 0
            # the fault really happened and the driver really had to work around it
            assert server.injected[counter] > 0
            assert sub.stats["retries"] + sub.stats["stale"] > 0 or counter == "delay"
        assert np.abs(ctl.params.omega - _params().omega).max() > 1e-3  # parameters did move
        assert await _wait_safe(chip)
    finally:
        server.stop()


@pytest.mark.parametrize("name", list(FAIL))
async def test_fault_ends_in_clear_error(name: str) -> None:
    spec, error = FAIL[name]
    chip = SimulatedSubstrate(board_model())
    server = LineServer(BoardFirmware(chip))
    url = _start(server, "tcp")
    try:
        sub = SerialSubstrate(url, options=SerialOptions(timeout_s=0.2, retries=2))
        async with sub:
            ctl = EPController([sub], CFG, _params())
            samples = _samples(3)
            await ctl.step([samples[0]])  # fault-free: updates
            assert ctl.stats.updates == 1
            before = ctl.params.copy()
            server.set_faults(FaultConfig.parse(spec))
            t0 = time.monotonic()
            with pytest.raises(
                error,
                match=r"board at socket://127\.0\.0\.1:\d+: .*no valid reply after 3 attempts",
            ):
                await ctl.step([samples[1]])
            assert time.monotonic() - t0 < 10  # bounded by the retry budget, no hang
            # no parameter update from a failed (corrupted/stale/missing) reading
            np.testing.assert_array_equal(ctl.params.omega, before.omega)
            np.testing.assert_array_equal(ctl.params.coupling, before.coupling)
            assert ctl.stats.updates == 1 and ctl.stats.errors == 1
            assert await _wait_safe(chip)  # the board executed SAFE even if its reply was lost
            # the fault goes away: the same driver object carries on
            server.set_faults(FaultConfig())
            await ctl.step([samples[2]])
            assert ctl.stats.updates == 2
        assert await _wait_safe(chip)
    finally:
        server.stop()


async def test_lost_reset_banner_detected_by_boot_id() -> None:
    """A DTR reset whose boot banner never reached the host: the reading carries the new boot
    id, the driver restores its setpoints and reads again — no reading from the reset chip."""
    chip, twin = SimulatedSubstrate(board_model()), SimulatedSubstrate(board_model())
    fw = BoardFirmware(chip)
    server = LineServer(fw)
    url = _start(server, "tcp")
    try:
        async with SerialSubstrate(url) as sub:
            w = np.linspace(-0.6, 0.6, 9)
            for s in (sub, twin):
                await s.set_frequencies(w)
                await s.clamp([0.3, -0.3], 0.2)
            await sub.read_phases(1)
            assert server._loop is not None
            asyncio.run_coroutine_threadsafe(fw.reboot(), server._loop).result(5)  # no banner sent
            assert _is_safe(chip)
            got = await sub.read_phases(1)
            assert np.abs(got.phases - (await twin.read_phases(1)).phases).max() <= TOL
            assert sub.stats["reboots"] == 1
            np.testing.assert_array_equal(chip.omega, w)  # state restored
            assert chip._clamp is not None
        assert _is_safe(chip)
    finally:
        server.stop()


async def test_board_gone_for_good() -> None:
    chip = SimulatedSubstrate(board_model())
    server = LineServer(BoardFirmware(chip))
    url = _start(server, "tcp")
    sub = SerialSubstrate(url, options=SerialOptions(timeout_s=0.2, retries=1, reconnect_s=0.3))
    await sub.connect()
    await sub.set_frequencies(np.zeros(9))
    await sub.read_phases(1)
    server.stop()  # the board leaves the chip safe as it goes
    assert _is_safe(chip)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeoutError, match="board at socket://"):
        await sub.read_phases(1)
    assert time.monotonic() - t0 < 5
    with pytest.raises(DeviceTimeoutError):
        await sub.close()


async def test_dtr_reset_on_reconnect_restores_state() -> None:
    """An Arduino-style board reboots whenever the port is opened (DTR). Reopening the link
    without a clean close: the driver sees the new boot id, re-sends its confirmed state,
    and the reading equals the never-interrupted in-process chip."""
    chip, twin = SimulatedSubstrate(board_model()), SimulatedSubstrate(board_model())
    server = LineServer(BoardFirmware(chip), reset_on_connect=True)
    url = _start(server, "tcp")
    try:
        sub = SerialSubstrate(url, options=SerialOptions(timeout_s=0.5))
        async with sub:
            w = np.linspace(-0.4, 0.8, 9)
            k = twin.model.coupling_values() * 0.9
            for s in (sub, twin):
                await s.set_couplings(k)
                await s.set_frequencies(w)
                await s.clamp([0.2, -0.1], 0.3)
            await sub.read_phases(1)
            sub.link.close()  # the link drops without SAFE; reopening resets the board
            boots = sub.stats["reboots"]
            got = await sub.read_phases(1)
            assert sub.stats["reconnects"] == 1 and sub.stats["reboots"] == boots + 1
            assert np.abs(got.phases - (await twin.read_phases(1)).phases).max() <= TOL
            np.testing.assert_array_equal(chip.omega, w)
            assert chip._clamp is not None
        assert _is_safe(chip)
    finally:
        server.stop()


def test_driver_survives_event_loop_changes() -> None:
    """One substrate object used from two successive ``asyncio.run`` calls (a CLI that opens
    the device, then runs the training loop)."""
    chip = SimulatedSubstrate(board_model())
    server = LineServer(BoardFirmware(chip))
    url = _start(server, "tcp")
    try:
        sub = SerialSubstrate(url)

        async def use(w: float) -> float:
            async with sub:
                await sub.set_frequencies(np.full(9, w))
                await asyncio.sleep(0.05)  # the deferred setpoint is flushed in the background
                assert np.array_equal(chip.omega, np.full(9, w))
                return float((await sub.read_phases(1)).phases[3])

        assert asyncio.run(use(0.1)) == asyncio.run(use(0.1))
        asyncio.run(use(0.2))
        assert _is_safe(chip)
    finally:
        server.stop()
