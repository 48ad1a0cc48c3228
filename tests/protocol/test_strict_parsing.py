"""Strict parsing (hardening issue, item 8): SCPI header suffixes are read whole as plain
decimal integers (SCPI-1999 vol. 1 §6.2.5), the board's CRC trailer is exactly four
upper-case hex digits, and board numbers follow the documented grammar — none of Python's
extra syntax (``_`` separators, ``inf``/``nan``, whitespace, other digit scripts)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.backends.visa_config import bench_for_chip
from phasegrad_hw.device.presets import layered
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.firmware_models.instruments import BenchEmulator
from phasegrad_hw.wire import board as P
from phasegrad_hw.wire.scpi import HeaderError, header_nodes, parse_node
from tests.protocol.test_board_protocol import board_model

RES = {k: "TCPIP::127.0.0.1::1::SOCKET" for k in ("smu", "phase_meter", "injection")}


def smu_levels(e: BenchEmulator) -> np.ndarray:
    return e.smu.level.copy()


def run_line(e: BenchEmulator, line: str) -> tuple[str | None, list[tuple[int, str]]]:
    async def go() -> tuple[str | None, list[tuple[int, str]]]:
        reply = await e.smu.execute(line)
        errors = list(e.smu.errors.items)
        e.smu.errors.clear()
        return reply, errors

    return asyncio.run(go())


# --------------------------------------------------------------------------- SCPI suffixes
def test_long_suffix_is_not_cut_to_another_channel() -> None:
    """``:SOUR00000019:VOLT`` is channel 19 (out of range on a 9-channel SMU), never 1."""
    e = BenchEmulator(bench_for_chip(layered(2, 5, 2, np.random.default_rng(0)), RES))
    before = smu_levels(e)
    _, errors = run_line(e, ":SOUR00000019:VOLT 0.3")
    assert [c for c, _ in errors] == [-114]
    np.testing.assert_array_equal(smu_levels(e), before)
    _, errors = run_line(e, ":SOUR0:VOLT 0.3")
    assert [c for c, _ in errors] == [-114]
    _, errors = run_line(e, ":SOUR0001:VOLT 0.3")  # leading zeros: a plain decimal 1
    assert errors == [] and e.smu.level[1] == 0.3


@settings(max_examples=200, deadline=None)
@given(digits=st.text(alphabet="0123456789", min_size=1, max_size=40))
def test_suffix_addresses_exactly_its_decimal_value(digits: str) -> None:
    e = BenchEmulator(bench_for_chip(layered(2, 5, 2, np.random.default_rng(0)), RES))
    before = smu_levels(e)
    _, errors = run_line(e, f":SOUR{digits}:VOLT 0.3")
    value = int(digits)
    after = smu_levels(e)
    if 1 <= value <= 9:
        assert errors == []
        expected = before.copy()
        expected[value] = 0.3
        np.testing.assert_array_equal(after, expected)
    else:
        assert [c for c, _ in errors] == [-114]
        np.testing.assert_array_equal(after, before)


def test_header_grammar() -> None:
    assert parse_node("sour12") == parse_node("SOUR012")
    assert parse_node("VOLT").suffix is None
    assert [n.mnemonic for n in header_nodes(":SOUR2:VOLT?")] == ["SOUR", "VOLT"]
    for bad, code in (("SO2UR", -113), ("SOUR0", -114), ("SOUR1234567890", -114), ("S_1", -113)):
        with pytest.raises(HeaderError) as info:
            parse_node(bad)
        assert info.value.code == code


# --------------------------------------------------------------------------- board CRC
@pytest.mark.parametrize(
    "trailer", [b"0x92", b" 077", b"8_66", b"+1A2", b"1a2b", b"12 4", b"\xd9\xa3"]
)
def test_crc_trailer_must_be_four_upper_case_hex_digits(trailer: bytes) -> None:
    with pytest.raises(P.FrameError) as info:
        P.unframe(b"1 PING*" + trailer)
    assert info.value.code == P.ErrorCode.MALFORMED


@settings(max_examples=300, deadline=None)
@given(
    body=st.text(alphabet="0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ?.-", min_size=1, max_size=30),
    trailer=st.text(min_size=4, max_size=4),
)
def test_crc_trailer_fuzz(body: str, trailer: str) -> None:
    raw = trailer.encode("utf-8")
    line = body.encode() + b"*" + raw
    valid = len(raw) == 4 and all(c in "0123456789ABCDEF" for c in trailer)
    if not valid:
        with pytest.raises(P.FrameError) as info:
            P.unframe(line)
        assert info.value.code == P.ErrorCode.MALFORMED
    elif int(trailer, 16) == P.crc16(body.encode()):
        assert P.unframe(line) == body
    else:
        with pytest.raises(P.FrameError) as info:
            P.unframe(line)
        assert info.value.code == P.ErrorCode.CHECKSUM


# --------------------------------------------------------------------------- board numbers
PYTHON_ONLY_FLOATS = [
    "0_1",
    "1e5_0",
    "1_000.5",
    "inf",
    "-inf",
    "nan",
    "NaN",
    "infinity",
    " 1.0",
    "1.0 ",
    "١",
]


@pytest.mark.parametrize("text", PYTHON_ONLY_FLOATS)
def test_python_only_float_syntax_is_refused(text: str) -> None:
    float(text)  # Python itself would accept it
    with pytest.raises(P.FrameError) as info:
        P.parse_float(text, "x")
    assert info.value.code == P.ErrorCode.BAD_NUMBER


@pytest.mark.parametrize("text", ["1_0", "٣", " 7", "+-1", "0x10", "1" * 13])
def test_python_only_integer_syntax_is_refused(text: str) -> None:
    with pytest.raises(P.FrameError) as info:
        P.parse_int(text, "n")
    assert info.value.code == P.ErrorCode.BAD_NUMBER


@settings(max_examples=500, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_float_round_trips_bit_exactly(x: float) -> None:
    y = P.parse_float(P.fmt_float(x), "x")
    assert y == x and math.copysign(1.0, y) == math.copysign(1.0, x)


@settings(max_examples=300, deadline=None)
@given(s=st.text(alphabet="0123456789._eE+-infatyINFATY ", min_size=1, max_size=12))
def test_float_grammar_fuzz(s: str) -> None:
    """Exactly the decimal literals are accepted, with Python's value."""
    import re

    literal = re.fullmatch(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", s)
    if literal and math.isfinite(float(s)):
        assert P.parse_float(s, "x") == float(s)
    else:
        with pytest.raises(P.FrameError):
            P.parse_float(s, "x")


@pytest.mark.parametrize(
    ("args", "field"),
    [("0_1 0 0 0 0 0 0 0 0", "omega[0]"), ("0 0 0 0 0 0 0 0 1e5_0", "omega[8]")],
)
def test_firmware_refuses_python_only_numbers(args: str, field: str) -> None:
    fw = BoardFirmware(SimulatedSubstrate(board_model()))
    reply = asyncio.run(fw.handle_line(P.frame(f"5 W {args}")[:-1]))
    assert reply is not None
    rep = P.parse_reply(reply[:-1])
    assert rep.code == P.ErrorCode.BAD_NUMBER and rep.text.startswith(f"{field}:")
    seq_reply = asyncio.run(fw.handle_line(P.frame("1_0 PING")[:-1]))
    assert seq_reply is not None and P.parse_reply(seq_reply[:-1]).code == P.ErrorCode.MALFORMED
