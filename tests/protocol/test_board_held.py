"""Controller-board protocol: held input phases (``H``, ``H?``) and the drive (``D``, ``D?``)
— the firmware's exact replies and refusals, the host driver's exact lines (transcripts), its
refusals before sending, what it declares from the descriptor, and the safe state
(docs/protocol.md)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from phasegrad_hw.backends.serial import SerialOptions, SerialSubstrate
from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.device.presets import layered_chip
from phasegrad_hw.device.substrate import Capability
from phasegrad_hw.errors import DeviceError, LimitError
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.testing.doubles import HeldDriveRecorder
from phasegrad_hw.testing.transcripts import FirmwareStream, expected_exchanges
from phasegrad_hw.wire import board as P
from tests.protocol.test_board_protocol import board_model


def held_drive_model(drive_max: float = 2.0) -> SimulatedDeviceModel:
    """A 2-3-2 layered chip with held inputs 0, 1, bias oscillators 2, 3 (reference 2, at 0
    and π/2), hidden 4–6 (also the driven sensors) and outputs 7, 8."""
    m = layered_chip("simulated", (2, 3, 2), [0.0, np.pi / 2], np.linspace(0.5, 1.5, 22))
    data = m.model_dump()
    data["roles"]["drive"] = [4, 5, 6]
    data["limits"]["drive_max"] = drive_max
    return SimulatedDeviceModel.model_validate(data)


def recorder() -> HeldDriveRecorder:
    return HeldDriveRecorder(SimulatedSubstrate(held_drive_model()))


# request line (without \n) -> exact reply bytes, in this order on a freshly powered-on board
TRANSCRIPT: list[tuple[bytes, bytes]] = [
    (b"1 H 0.5 -1.25*0849", b"1 OK*BC06\n"),
    (b"2 H?*805E", b"2 OK 0.5 -1.25*AFFB\n"),
    (b"3 H 0.5*E778", b"3 ERR 4 H takes 2 arguments, got 1*54FC\n"),
    (b"4 H 0.5 3.5*6577", b"4 ERR 6 held_phases[1]: 3.5 outside [-pi, pi]*2B8C\n"),
    (b"5 H 0.5 nan*57CD", b"5 ERR 5 held_phases[1]: 'nan' is not finite*0333\n"),
    (b"6 H?*4AAF", b"6 OK 0.5 -1.25*525E\n"),
    (b"7 D 1.0 0.5 0 2.0*BC64", b"7 OK*9B9F\n"),
    (b"8 D?*AD98", b"8 OK 1.0 0.5 0.0 2.0*D971\n"),
    (b"9 D 1.0 0.5 0 2.5*099D", b"9 ERR 6 drive_amplitude[2]: 2.5 outside [0, 2.0]*A8B3\n"),
    (b"10 D 4 0 0 0*C39B", b"10 ERR 6 drive_phase: 4.0 outside [-pi, pi]*FA66\n"),
    (b"11 D 1 -0.1 0 0*8497", b"11 ERR 6 drive_amplitude[0]: -0.1 outside [0, 2.0]*14D3\n"),
    (b"12 D 1 0 0*2729", b"12 ERR 4 D takes 4 arguments, got 3*2CE0\n"),
    (b"13 D?*80F4", b"13 OK 1.0 0.5 0.0 2.0*ADFC\n"),
    (b"14 SAFE*4ACA", b"14 OK*3330\n"),
    (b"15 D?*A76D", b"15 OK 0.0 0.0 0.0 0.0*A706\n"),
    (b"16 H?*79DC", b"16 OK 0.5 -1.25*C895\n"),
]


async def test_firmware_transcript() -> None:
    chip = recorder()
    fw = BoardFirmware(chip)
    await fw.power_on()
    for request, expected in TRANSCRIPT:
        assert await fw.handle_line(request) == expected, request
    # what reached the chip: the power-on held phases, one held setting, one drive, and the
    # drive switched off by SAFE — none of the refused lines
    held = [c[1].tolist() for c in chip.calls if c[0] == "held_phases"]
    drives = [(c[1][0].tolist(), c[1][1]) for c in chip.calls if c[0] == "drive"]
    assert held == [[0.0, 0.0], [0.5, -1.25]]
    assert drives == [([0.0] * 3, 0.0), ([0.5, 0.0, 2.0], 1.0), ([0.0] * 3, 0.0)]


async def test_firmware_without_the_abilities_says_unsupported() -> None:
    fw = BoardFirmware(SimulatedSubstrate(board_model()))  # neither held inputs nor a drive
    await fw.power_on()
    for line, name in (("1 H", "held inputs"), ("2 D 0", "drive"), ("3 H?", "held")):
        rep = P.parse_reply((await fw.handle_line(P.frame(line)[:-1]) or b"")[:-1])
        assert rep.code == P.ErrorCode.UNSUPPORTED and name in rep.text


async def test_firmware_refusals_change_nothing() -> None:
    """Every refused H / D leaves the registers and the chip as they were."""
    chip = recorder()
    fw = BoardFirmware(chip)
    await fw.power_on()
    assert (await fw.handle_line(P.frame("1 H 0.25 0.5")[:-1])) == P.ok_reply(1)
    assert (await fw.handle_line(P.frame("2 D 0.5 1 1 1")[:-1])) == P.ok_reply(2)
    n_calls = len(chip.calls)
    refused = [
        "H 0.25",
        "H 0.25 0.5 0.75",
        "H 0.25 4",
        "H 0.25 -3.1416",
        "H 0.25 1e999",
        "H 0.25 0_5",
        "H 0.25 inf",
        "D 0.5 1 1",
        "D 0.5 1 1 2.0000001",
        "D 0.5 1 -1e-300 1",
        "D -3.2 1 1 1",
        "D nan 1 1 1",
        "D 0.5 1 1 0x1",
    ]
    for k, line in enumerate(refused, start=3):
        rep = P.parse_reply((await fw.handle_line(P.frame(f"{k} {line}")[:-1]) or b"")[:-1])
        assert not rep.ok and rep.code in (
            P.ErrorCode.ARG_COUNT,
            P.ErrorCode.OUT_OF_RANGE,
            P.ErrorCode.BAD_NUMBER,
        ), line
    assert len(chip.calls) == n_calls
    assert fw.held_phases.tolist() == [0.25, 0.5] and chip.held_phases_rad.tolist() == [0.25, 0.5]
    assert fw.drive_phase == 0.5 and fw.drive_amplitude.tolist() == [1.0, 1.0, 1.0]
    assert chip.drive_amplitude.tolist() == [1.0, 1.0, 1.0]


async def test_reboot_resets_the_registers() -> None:
    chip = recorder()
    fw = BoardFirmware(chip)
    await fw.power_on()
    await fw.handle_line(P.frame("1 H 0.25 0.5")[:-1])
    await fw.handle_line(P.frame("2 D 0.5 1 1 1")[:-1])
    await fw.reboot()
    assert fw.held_phases.tolist() == [0.0, 0.0] and chip.held_phases_rad.tolist() == [0.0, 0.0]
    assert fw.drive_amplitude.tolist() == [0.0] * 3 and chip.drive_amplitude.tolist() == [0.0] * 3


def _descriptor_script(fw: BoardFirmware) -> list[tuple[str, str | None]]:
    """The bootstrap exchanges of a driver that connects to ``fw`` (descriptor, ID?)."""
    n = len(fw._descriptor)
    return [(f"DESC? {k}", f"OK {k} {n} {fw._descriptor[k]}") for k in range(n)] + [
        ("ID?", f"OK phasegrad-board fw=1.0 sn={fw.serial_number} boot=0")
    ]


def _reading(n: int) -> str:
    return "OK boot=0 1 1 0.0 " + " ".join(["0.0"] * (2 * n))


async def test_driver_sends_exact_lines() -> None:
    """The host's H and D lines, bit-exact floats, sent with the next read; refused values
    never reach the wire (the transcript fails on any line it does not expect)."""
    fw = BoardFirmware(recorder())
    n = fw.model.n
    # the held phases as the substrate contract hands them on (wrapped to [−π, π) by the
    # device model, which may move an in-range value by an ulp), then bit-exact on the wire
    held = fw.model.check_held_phases([0.1, -2.5])
    script = [
        *_descriptor_script(fw),
        (f"H {float(held[0])!r} {float(held[1])!r}", "OK"),
        ("R 1", _reading(n)),
        ("D -1.0 0.3333333333333333 0.0 2.0", "OK"),
        ("R 1", _reading(n)),
        ("D 3.0 0.5 0.5 0.5", "OK"),  # Ψ = 3 rad is in [−π, π]: sent as given
        ("D -2.2831853071795862 0.5 0.5 0.5", "OK"),  # Ψ = 4 rad wrapped into [−π, π)
        ("SAFE", "OK"),
    ]
    with expected_exchanges(script, framing="board") as t:
        sub = SerialSubstrate("transcript", options=SerialOptions(timeout_s=0.2), stream=t)
        assert {Capability.HELD_PHASES, Capability.DRIVE} <= sub.capabilities
        await sub.set_held_phases([0.1, -2.5])
        await sub.read_phases(1)
        await sub.set_drive([1 / 3, 0.0, 2.0], -1.0)
        await sub.read_phases(1)
        for bad_held in ([0.1], [0.1, np.nan], [0.1, np.inf]):
            with pytest.raises(LimitError, match="held_phases"):
                await sub.set_held_phases(bad_held)
        for amp in ([0.5, 0.5, 2.01], [-0.1, 0.0, 0.0], [0.5, 0.5]):
            with pytest.raises(LimitError, match="drive_amplitude"):
                await sub.set_drive(amp, 0.0)
        with pytest.raises(LimitError, match="drive_phase"):
            await sub.set_drive([0.5, 0.5, 0.5], np.nan)
        await sub.set_drive([0.5] * 3, 3.0)
        await sub.set_drive([0.5] * 3, 4.0)
        await sub.flush()
        await sub.make_safe()


async def test_driver_declares_what_the_descriptor_says() -> None:
    """A chip without held inputs and drive: not declared, and the calls refused on the host."""
    fw = BoardFirmware(SimulatedSubstrate(board_model()))
    with expected_exchanges(_descriptor_script(fw), framing="board") as t:
        sub = SerialSubstrate("transcript", options=SerialOptions(timeout_s=0.2), stream=t)
        assert not {Capability.HELD_PHASES, Capability.DRIVE} & sub.capabilities
        with pytest.raises(DeviceError, match="no held inputs"):
            await sub.set_held_phases([])
        with pytest.raises(DeviceError, match="cannot apply a drive"):
            await sub.set_drive([], 0.0)


async def test_reseed_is_refused_when_the_chip_has_no_seed() -> None:
    """Declared, not probed: a board whose chip cannot reseed refuses ``reseed`` (it used to
    return silently) and sends nothing."""
    chip = HeldDriveRecorder(SimulatedSubstrate(held_drive_model()))
    chip.capabilities = chip.capabilities - {Capability.RESEED}
    fw = BoardFirmware(chip)
    with expected_exchanges(_descriptor_script(fw), framing="board") as t:
        sub = SerialSubstrate("transcript", options=SerialOptions(timeout_s=0.2), stream=t)
        assert Capability.RESEED not in sub.capabilities
        with pytest.raises(DeviceError, match="cannot be reseeded"):
            sub.reseed(3)
        await asyncio.sleep(0)
    fw = BoardFirmware(SimulatedSubstrate(held_drive_model()))  # reseeds
    with expected_exchanges([*_descriptor_script(fw), ("SEED 3", "OK")], framing="board") as t:
        sub = SerialSubstrate("transcript", options=SerialOptions(timeout_s=0.2), stream=t)
        assert Capability.RESEED in sub.capabilities
        sub.reseed(3)
        await sub.flush()


async def test_over_the_firmware_held_drive_and_safe_exit() -> None:
    """Through the firmware in process: settings arrive at the chip; leaving ``async with``
    switches the drive off (held phases stay); a reboot restores held phases and drive."""
    chip = recorder()
    with FirmwareStream(BoardFirmware(chip)) as stream:
        sub = SerialSubstrate("memory://board", options=SerialOptions(timeout_s=0.5), stream=stream)
        async with sub:
            await sub.set_held_phases([0.75, -0.5])
            await sub.set_drive([0.5, 1.0, 1.5], 0.25)
            await sub.flush()
            assert chip.held_phases_rad.tolist() == [0.75, -0.5]
            assert chip.drive_amplitude.tolist() == [0.5, 1.0, 1.5] and chip.drive_phase_rad == 0.25
            banner = await asyncio.to_thread(lambda: stream._call(stream.firmware.reboot()))
            assert chip.held_phases_rad.tolist() == [0.0, 0.0]
            stream._rx += banner
            await sub.read_phases(1)  # the banner: the driver restores its confirmed state
            assert sub.stats["reboots"] == 1
            assert chip.held_phases_rad.tolist() == [0.75, -0.5]
            assert chip.drive_amplitude.tolist() == [0.5, 1.0, 1.5] and chip.drive_phase_rad == 0.25
        assert chip.drive_amplitude.tolist() == [0.0] * 3
        assert chip.held_phases_rad.tolist() == [0.75, -0.5]
        assert chip.is_safe


async def test_setpoints_travel_with_the_next_read() -> None:
    """A held-phase or drive setting followed by a read costs one exchange (the read yields
    to the event loop before its exchange; the deferred line must still go with it)."""
    with FirmwareStream(BoardFirmware(recorder())) as stream:
        sub = SerialSubstrate("memory://board", options=SerialOptions(timeout_s=0.5), stream=stream)
        async with sub:
            for k in range(3):
                before = sub.stats["exchanges"]
                await sub.set_held_phases([0.1 * k, -0.2])
                await sub.set_drive([0.5, 0.5, 0.5], 0.1 * k)
                await sub.read_phases(1)
                assert sub.stats["exchanges"] - before == 1
