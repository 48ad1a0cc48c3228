"""Controller-board protocol, layer 1: transcripts — the exact bytes the firmware answers and
the exact bytes the host driver sends (docs/protocol.md)."""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from phasegrad_hw.backends.board_link import PyserialStream
from phasegrad_hw.backends.serial import SerialOptions, SerialSubstrate, open_uri, pyserial_url
from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.presets import vowel_2_5_2
from phasegrad_hw.errors import ConfigError, LimitError
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.firmware_models.server import FaultConfig, LineServer
from phasegrad_hw.wire import board as P


def board_model(seed: int = 0, noise: float = 0.0) -> SimulatedDeviceModel:
    """The 2+5+2 vowel chip (published coupling ranges), optionally with readout noise."""
    m = vowel_2_5_2(np.random.default_rng(seed))
    return m.model_copy(update={"readout_noise_rad": noise})


@pytest.fixture
def fw() -> BoardFirmware:
    return BoardFirmware(SimulatedSubstrate(board_model()), serial_number="PGB-0001")


# request line (without \n) -> exact reply bytes, in this order on a fresh board
TRANSCRIPT: list[tuple[bytes, bytes | None]] = [
    (b"7 PING abc*FC77", b"7 OK PONG abc*FC0A\n"),
    (b"8 ID?*AD09", b"8 OK phasegrad-board fw=1.0 sn=PGB-0001 boot=0*BFB8\n"),
    (b"9 B?*718A", b"9 OK 32768 32768 32768 32768 32768 32768 32768 32768 32768*7D05\n"),
    (
        b"10 W 0 0 0 0 0 0 0 0 3.5*733B",
        b"10 ERR 6 omega[8]: 3.5 is outside the device limit [-3.0, 3.0]*0DB5\n",
    ),
    (b"11 FOO*FE19", b"11 ERR 3 unknown command 'FOO'*A389\n"),
    (b"12 C 0.1 1 0.2*F198", b"12 ERR 4 C takes 4 arguments, got 3*59A4\n"),
    (b"13 C 0.1 1 0.2 -0.2*D64B", b"13 OK*621D\n"),
    (b"14 I?*A785", b"14 OK 1 0.1 0.2 -0.2*703B\n"),
    (b"15 REL*3714", b"15 OK*4584\n"),
    (b"16 R 0*9202", b"16 ERR 6 averages: 0 is out of range; allowed 1...4096*BA28\n"),
    (
        b"17 B 0 0 0 0 0 0 0 0 65536*E3D3",
        b"17 ERR 6 code[8]: 65536 outside DAC range 0...65535*9408\n",
    ),
    (b"20 w 0 0 0 0 0 0 0 0 nan*CD76", b"20 ERR 5 omega[8]: 'nan' is not finite*DA11\n"),
    (b"21 C 0.1 2 0 0*5E01", b"21 ERR 6 direction: 2 must be 1 or -1*EB5D\n"),
    (b"70000 ID?*D32E", b"- ERR 2 sequence number '70000' not in 0...65535*E187\n"),
    (b"22 DESC? 99*2598", b"22 ERR 6 chunk: 99 outside 0...3*42C6\n"),
    (b"12 ID?*0000", b"- ERR 1 CRC mismatch (got 0000)*A356\n"),
    (b"garbage", b"- ERR 2 missing *CRC16 trailer*A006\n"),
    (b"23 id?*7A06\r", b"23 OK phasegrad-board fw=1.0 sn=PGB-0001 boot=0*DC59\n"),
    (b"\xff\xfe*1234", b"- ERR 1 CRC mismatch (got 1234)*71FB\n"),
    (b"", None),
    (b" \r", None),
]


def test_crc16_is_ccitt_false() -> None:
    # the published check value of CRC-16/CCITT-FALSE
    assert P.crc16(b"123456789") == 0x29B1
    assert P.frame("12 ID?") == b"12 ID?*9E97\n"
    assert P.unframe(b"12 ID?*9E97") == "12 ID?"


async def test_firmware_transcript(fw: BoardFirmware) -> None:
    for request, expected in TRANSCRIPT:
        assert await fw.handle_line(request) == expected, request


async def test_refused_command_changes_nothing(fw: BoardFirmware) -> None:
    ok = P.frame("1 W 0.1 0.2 0 0 0 0 0 0 0")[:-1]
    assert await fw.handle_line(ok) == P.ok_reply(1)
    before = await fw.chip.read_frequencies()
    bad = P.frame("2 W 0.5 0.5 0.5 0.5 0.5 0.5 0.5 0.5 9")[:-1]
    assert (await fw.handle_line(bad) or b"").startswith(b"2 ERR 6 omega[8]: 9")
    bad_code = P.frame("3 B 1 2 3 4 5 6 7 8 -1")[:-1]
    assert (await fw.handle_line(bad_code) or b"").startswith(b"3 ERR 6 code[8]: -1")
    np.testing.assert_array_equal(await fw.chip.read_frequencies(), before)


async def test_phase_reading_is_bit_exact(fw: BoardFirmware) -> None:
    """``R`` carries the chip's floats with round-trip precision."""
    twin = SimulatedSubstrate(board_model())
    w = np.random.default_rng(3).uniform(-1, 1, 9)
    await twin.set_frequencies(w)
    ref = await twin.read_phases(1)
    args = " ".join(repr(float(x)) for x in w)
    assert await fw.handle_line(P.frame(f"5 W {args}")[:-1]) == P.ok_reply(5)
    rep = P.parse_reply((await fw.handle_line(P.frame("6 R 1")[:-1]) or b"")[:-1])
    assert rep.ok and rep.seq == 6 and rep.fields[:3] == ("boot=0", "1", "1")
    phases = np.array([float(x) for x in rep.fields[4:13]])
    assert np.array_equal(phases, ref.phases)
    assert np.abs(phases).max() > 0.01  # a non-trivial state


async def test_dac_codes_round_trip(fw: BoardFirmware) -> None:
    codes = [0, 1, 100, 32767, 32768, 40000, 50000, 65534, 65535]
    line = P.frame("4 B " + " ".join(map(str, codes)))[:-1]
    assert await fw.handle_line(line) == P.ok_reply(4)
    assert await fw.handle_line(P.frame("5 B?")[:-1]) == P.ok_reply(5, *map(str, codes))
    lsb = 6.0 / 65535
    np.testing.assert_allclose(
        await fw.chip.read_frequencies(), -3.0 + np.array(codes) * lsb, rtol=0, atol=1e-12
    )


def test_line_splitter_resynchronises() -> None:
    s = P.LineSplitter(max_line=16)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\nde\n\n") == [b"abc", b"de", b""]
    # an overlong line is reported once and discarded up to the next newline
    assert s.feed(b"x" * 20) == [None]
    assert s.feed(b"y" * 50) == []
    assert s.feed(b"zz\nok\n") == [b"ok"]
    assert s.feed(b"q" * 17 + b"\nnext\n") == [None, b"next"]


def test_reply_parser() -> None:
    r = P.parse_reply(
        b"12 ERR 6 code[8]: 65536 outside*0000"[:-5]
        + b"*%04X" % P.crc16(b"12 ERR 6 code[8]: 65536 outside")
    )
    assert (
        not r.ok
        and r.seq == 12
        and r.code == P.ErrorCode.OUT_OF_RANGE
        and r.text == "code[8]: 65536 outside"
    )
    b = P.parse_reply(P.frame("! BOOT phasegrad-board fw=1.0 boot=3")[:-1])
    assert b.banner and b.seq == "!"
    with pytest.raises(P.FrameError) as e:
        P.parse_reply(b"12 OK 1.0*0000")
    assert e.value.code == P.ErrorCode.CHECKSUM


# ----------------------------------------------------------------------------- host side
class Recorder:
    """Wraps the firmware: records every request line, lets a test tamper with replies."""

    def __init__(self, fw: BoardFirmware) -> None:
        self.fw = fw
        self.lines: list[bytes] = []
        self.tamper: Callable[[bytes, bytes], bytes] | None = None

    async def handle_line(self, line: bytes | None) -> bytes | None:
        if line is not None:
            self.lines.append(line)
        reply = await self.fw.handle_line(line)
        if reply is not None and self.tamper is not None and line is not None:
            reply = self.tamper(line, reply)
        return reply

    async def power_on(self) -> None:
        await self.fw.power_on()

    async def reboot(self) -> bytes:
        return await self.fw.reboot()

    async def make_safe(self) -> None:
        await self.fw.make_safe()

    def banner(self) -> bytes:
        return self.fw.banner()


@pytest.fixture
def recorded() -> Iterator[tuple[Recorder, str]]:
    rec = Recorder(BoardFirmware(SimulatedSubstrate(board_model())))
    server = LineServer(rec)
    host, port = server.start_tcp()
    try:
        yield rec, f"socket://{host}:{port}"
    finally:
        server.stop()


REQ = re.compile(rb"^(\d{1,5}) ([A-Z?]+)((?: \S+)*)\*([0-9A-F]{4})$")


def _check_request(line: bytes) -> tuple[int, str, list[str]]:
    m = REQ.match(line)
    assert m, line
    body = line[: line.rindex(b"*")]
    assert int(m.group(4), 16) == binascii.crc_hqx(body, 0xFFFF)  # independent CRC check
    return int(m.group(1)), m.group(2).decode(), m.group(3).decode().split()


async def test_driver_sends_exact_lines(recorded: tuple[Recorder, str]) -> None:
    rec, url = recorded
    sub = SerialSubstrate(url)
    # connect: the descriptor in chunks, then the identification
    cmds = [_check_request(x) for x in rec.lines]
    assert [c[1] for c in cmds] == ["DESC?"] * 4 + ["ID?"]
    assert [c[2] for c in cmds[:4]] == [[str(k)] for k in range(4)]
    assert isinstance(sub.model, DeviceModel) and sub.model.n == 9
    assert sub.model.edges == board_model().edges and sub.model.roles == board_model().roles
    rec.lines.clear()
    async with sub:
        w = np.array([0.1, -0.2, 1 / 3, 0.0, 2.5e-7, -1.0, 0.7, 0.25, -2.9])
        await sub.set_frequencies(w)
        await sub.read_phases(3)
        await sub.clamp(np.array([0.2, -0.2]), 0.1, direction=-1)
        await sub.read_phases(1)
        await sub.release()
        await sub.flush()
    cmds = [_check_request(x) for x in rec.lines]
    # setpoints travel with the next exchange: W+R, C+R, REL, then SAFE on close
    assert [c[1] for c in cmds] == ["W", "R", "C", "R", "REL", "SAFE"]
    seqs = [c[0] for c in cmds]
    assert len(set(seqs)) == len(seqs)
    assert all((b - a) % 65536 == 1 for a, b in zip(seqs[:-1], seqs[1:], strict=True))
    assert np.array_equal(np.array([float(x) for x in cmds[0][2]]), w)  # bit-exact floats
    assert cmds[1][2] == ["3"]
    assert cmds[2][2] == ["0.1", "-1", "0.2", "-0.2"]
    assert rec.fw.chip.clamped is False


async def test_driver_discards_stale_and_retries_damaged(recorded: tuple[Recorder, str]) -> None:
    rec, url = recorded
    twin = SimulatedSubstrate(board_model())
    w = np.random.default_rng(7).uniform(-1, 1, 9)
    await twin.set_frequencies(w)
    ref = (await twin.read_phases(1)).phases
    sub = SerialSubstrate(url, options=SerialOptions(timeout_s=0.3, retries=2))
    done: list[str] = []

    def stale_then_real(line: bytes, reply: bytes) -> bytes:
        if b" R " not in line or "stale" in done:
            return reply
        done.append("stale")
        seq = int(line.split()[0])
        fake = P.ok_reply((seq - 1) % 65536, "boot=0", "1", "1", "0.0", *["1.0"] * 18)
        return fake + reply  # an old reply with plausible content first

    rec.tamper = stale_then_real
    async with sub:
        await sub.set_frequencies(w)
        got = await sub.read_phases(1)
        assert np.array_equal(got.phases, ref)
        assert sub.stats["stale"] == 1 and sub.stats["retries"] == 0

        def damage_once(line: bytes, reply: bytes) -> bytes:
            if b" R " not in line or "damaged" in done:
                return reply
            done.append("damaged")
            return reply.replace(b"OK", b"OJ", 1)

        rec.tamper = damage_once
        got = await sub.read_phases(1)
        assert np.array_equal(got.phases, ref)
        assert sub.stats["damaged"] == 1 and sub.stats["retries"] == 1


async def test_board_refusal_is_a_limit_error(recorded: tuple[Recorder, str]) -> None:
    rec, url = recorded
    async with SerialSubstrate(url) as sub:
        await sub.set_frequencies(np.full(9, 0.5))
        await sub.read_phases(1)
        before = await rec.fw.chip.read_frequencies()
        # bypass the host-side check to see the firmware's own refusal
        await sub._apply_frequencies(np.full(9, 3.5))
        with pytest.raises(LimitError, match=r"refused W: ERR 6 omega\[0\]: 3.5 is outside"):
            await sub.read_phases(1)
        np.testing.assert_array_equal(await rec.fw.chip.read_frequencies(), before)
        # host-side limits come from the board's descriptor: refused before anything is sent
        n = len(rec.lines)
        with pytest.raises(LimitError, match=r"omega\[2\]: 4"):
            await sub.set_frequencies([0, 0, 4, 0, 0, 0, 0, 0, 0])
        assert len(rec.lines) == n


def test_uri_parsing() -> None:
    assert pyserial_url("serial://127.0.0.1:7000") == "socket://127.0.0.1:7000"
    assert pyserial_url("serial://localhost:7000") == "socket://localhost:7000"
    assert pyserial_url("serial:///dev/pts/3") == "/dev/pts/3"
    assert pyserial_url("serial://COM3") == "COM3"
    assert pyserial_url("serial://rfc2217://host:2217") == "rfc2217://host:2217"
    with pytest.raises(ConfigError, match="names no port"):
        pyserial_url("serial://")
    with pytest.raises(ConfigError, match="timeout_s: '-1'"):
        open_uri("serial://127.0.0.1:1?timeout_s=-1")
    with pytest.raises(ConfigError, match="retriez"):
        open_uri("serial://127.0.0.1:1?retriez=3")


def test_fault_spec_parsing() -> None:
    f = FaultConfig.parse("delay=0.2,drop=0.1,corrupt=0.05,disconnect_after=7")
    assert (f.delay, f.drop, f.corrupt, f.disconnect_after) == (0.2, 0.1, 0.05, 7)
    with pytest.raises(ConfigError, match=r"--fault: drop: '1.5'"):
        FaultConfig.parse("drop=1.5")
    with pytest.raises(ConfigError, match="expected key=value"):
        FaultConfig.parse("drop")


async def test_driver_poll_mode_without_fileno(recorded: tuple[Recorder, str]) -> None:
    """Ports without a selectable file descriptor (Windows COM ports) are polled."""
    rec, url = recorded
    twin = SimulatedSubstrate(board_model())
    async with SerialSubstrate(url) as sub:
        assert isinstance(sub.link.stream, PyserialStream)
        sub.link.stream.poll()
        w = np.linspace(-1, 1, 9)
        for s in (sub, twin):
            await s.set_frequencies(w)
        assert np.array_equal((await sub.read_phases(2)).phases, (await twin.read_phases(2)).phases)
        assert sub.stats["retries"] == 0
