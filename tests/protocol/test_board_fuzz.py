"""Property-based fuzzing of the board firmware's line handler (hypothesis): random bytes and
random lines never crash or hang it, always get an error reply, and the next valid command
works. The host's reply parser gets the same treatment."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasegrad_hw.backends.serial import SerialOptions, SerialSubstrate
from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.firmware_models.server import LineServer
from phasegrad_hw.wire import board as P
from tests.conftest import require
from tests.protocol.test_board_held import recorder
from tests.protocol.test_board_protocol import board_model

FW = BoardFirmware(SimulatedSubstrate(board_model()))
COMMANDS = "ID? ST? DESC? PING W B B? K C I? REL R F? SAFE SEED H H? D D?".split()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _handle(line: bytes | None) -> bytes | None:
    return asyncio.run(asyncio.wait_for(FW.handle_line(line), timeout=5))


def _assert_next_valid_works() -> None:
    seq = int(time.monotonic_ns() % 60000)
    reply = _handle(P.frame(f"{seq} PING ok")[:-1])
    assert reply == P.ok_reply(seq, "PONG", "ok")


def _is_valid_request(line: bytes) -> bool:
    """True for the (astronomically unlikely) random line that is a checksummed request."""
    try:
        P.parse_request(line)
    except P.FrameError:
        return False
    return True


def _assert_error_reply(reply: bytes | None) -> P.Reply:
    assert reply is not None and reply.endswith(b"\n") and reply.count(b"\n") == 1
    rep = P.parse_reply(reply[:-1])  # a well-formed, checksummed reply
    assert not rep.ok and rep.code is not None
    return rep


@SETTINGS
@given(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"")))
def test_random_bytes_line(line: bytes) -> None:
    reply = _handle(line)
    if not line.strip(b"\r \t"):
        assert reply is None  # blank lines are ignored
    elif not _is_valid_request(line):
        _assert_error_reply(reply)
    _assert_next_valid_works()


@SETTINGS
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200))
def test_random_text_line(text: str) -> None:
    reply = _handle(text.encode())
    if text.strip() and not _is_valid_request(text.encode()):
        _assert_error_reply(reply)  # no valid checksum: always an error
    _assert_next_valid_works()


@SETTINGS
@given(
    st.integers(0, 65535),
    st.sampled_from(COMMANDS),
    st.lists(
        st.one_of(
            st.integers(-(2**40), 2**40).map(str),
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.text(alphabet="0123456789.-+eEnaif_x", min_size=1, max_size=12),
        ),
        max_size=30,
    ),
)
def test_well_framed_random_commands(seq: int, cmd: str, args: list[str]) -> None:
    """Checksummed lines with random arguments: a reply echoing the sequence number, OK or a
    numbered error, and the chip never leaves its limits."""
    reply = _handle(P.frame(" ".join([str(seq), cmd, *args]))[:-1])
    assert reply is not None
    rep = P.parse_reply(reply[:-1])
    assert rep.seq == seq
    if not rep.ok:
        assert rep.code is not None and rep.code not in P.RETRYABLE
    chip = FW.chip
    assert isinstance(chip, SimulatedSubstrate)
    lim = chip.model.limits
    assert np.all((chip.omega >= lim.bias.min) & (chip.omega <= lim.bias.max))
    e = chip.model.edge_index
    k = chip.K[e[:, 0], e[:, 1]]
    assert np.all((k >= lim.coupling.min) & (k <= lim.coupling.max))
    _assert_next_valid_works()


HELD_FW = BoardFirmware(recorder())
asyncio.run(HELD_FW.power_on())
_ARG = st.one_of(
    st.floats(-4.0, 4.0).map(repr),
    st.integers(-5, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet="0123456789.-+eEnaif_x", min_size=1, max_size=12),
)


@SETTINGS
@given(
    st.integers(0, 65535),
    st.sampled_from(["H", "H?", "D", "D?", "h", "d"]),
    st.one_of(
        st.lists(_ARG, max_size=6),
        # the right counts (H: 2, D: 4) with values near and past the limits
        st.lists(st.floats(-0.2, 2.2).map(repr), min_size=2, max_size=4),
    ),
)
def test_well_framed_random_held_and_drive_commands(seq: int, cmd: str, args: list[str]) -> None:
    """Held-phase and drive lines with random arguments on a chip that has both: a reply
    echoing the sequence number; a refusal changes neither the registers nor the chip; the
    chip never leaves its limits (held phases in [−π, π], drive amplitudes in
    [0, drive_max], a finite drive phase in [−π, π])."""
    chip = HELD_FW.chip
    assert isinstance(chip, type(recorder()))
    before = (
        HELD_FW.held_phases.copy(),
        HELD_FW.drive_phase,
        HELD_FW.drive_amplitude.copy(),
        len(chip.calls),
    )
    reply = asyncio.run(HELD_FW.handle_line(P.frame(" ".join([str(seq), cmd, *args]))[:-1]))
    assert reply is not None
    rep = P.parse_reply(reply[:-1])
    assert rep.seq == seq
    if not rep.ok:
        assert rep.code in (P.ErrorCode.ARG_COUNT, P.ErrorCode.BAD_NUMBER, P.ErrorCode.OUT_OF_RANGE)
        assert np.array_equal(HELD_FW.held_phases, before[0])
        assert HELD_FW.drive_phase == before[1]
        assert np.array_equal(HELD_FW.drive_amplitude, before[2])
        assert len(chip.calls) == before[3]
    elif cmd.upper() in ("H?", "D?"):
        assert len(chip.calls) == before[3]
    assert np.all(np.abs(chip.held_phases_rad) <= np.pi)
    assert np.array_equal(chip.held_phases_rad, HELD_FW.held_phases)
    lim = chip.model.limits.drive_max
    assert np.all((chip.drive_amplitude >= 0.0) & (chip.drive_amplitude <= lim))
    assert np.isfinite(chip.drive_phase_rad) and abs(chip.drive_phase_rad) <= np.pi
    assert np.array_equal(chip.drive_amplitude, HELD_FW.drive_amplitude)


@SETTINGS
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=8))
def test_random_byte_stream(chunks: list[bytes]) -> None:
    """Random stream through the line splitter: one error reply per non-blank line, then a
    valid command terminated normally is understood (resynchronisation at the newline)."""
    splitter = P.LineSplitter(max_line=256)
    lines = [x for c in chunks for x in splitter.feed(c)]
    for line in lines:
        reply = _handle(line)
        if line is not None and not line.strip(b"\r \t"):
            assert reply is None
        elif line is None or not _is_valid_request(line):
            _assert_error_reply(reply)
    got = splitter.feed(b"\n" + P.frame("77 PING")) + []
    assert got[-1] == P.frame("77 PING")[:-1]
    assert _handle(got[-1]) == P.ok_reply(77, "PONG")


@SETTINGS
@given(st.binary(max_size=200))
def test_host_reply_parser_never_crashes(line: bytes) -> None:
    try:
        rep = P.parse_reply(line)
    except P.FrameError as exc:
        assert exc.code in (P.ErrorCode.CHECKSUM, P.ErrorCode.MALFORMED)
    else:  # only a line with a valid checksum gets here
        assert P.crc16(line[: line.rfind(b"*")]) == int(line[-4:], 16)
        assert isinstance(rep.seq, int | str)


@pytest.mark.parametrize("kind", ["pty", "tcp"])
async def test_noise_on_the_wire_then_driver_works(kind: str) -> None:
    """Random noise written straight onto the real transport: the board answers with errors,
    resynchronises, and the host driver connects and reads normally afterwards."""
    chip = SimulatedSubstrate(board_model())
    server = LineServer(BoardFirmware(chip))
    import serial

    if kind == "pty":
        require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
        url = server.start_pty()
    else:
        host, port = server.start_tcp()
        url = f"socket://{host}:{port}"
    try:
        rng = np.random.default_rng(1)
        noise = bytes(rng.integers(0, 256, 5000, dtype=np.uint8)) + b"\n"
        port = serial.serial_for_url(url, timeout=0.5)
        port.write(noise)
        t = time.monotonic() + 3
        got = b""
        while time.monotonic() < t and got.count(b"\n") < noise.count(b"\n"):
            got += port.read(4096)
        port.close()
        lines = [x for x in got.split(b"\n") if x]
        assert lines and all(not P.parse_reply(x).ok for x in lines)
        async with SerialSubstrate(url, options=SerialOptions(timeout_s=0.5)) as sub:
            await sub.set_frequencies(np.full(9, 0.2))
            assert (await sub.read_phases(1)).locked
            assert sub.stats["retries"] == 0
    finally:
        server.stop()
