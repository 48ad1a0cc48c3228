"""Property-based fuzzing of the emulated SCPI instruments (hypothesis).

Random bytes and random lines, in-process and over a real TCP socket: never a crash or a
hang, an error queued every time the input is invalid, only standard error codes, no
setting applied from an invalid message, and the next valid command works.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasegrad_hw.backends.visa_config import bench_for_chip
from phasegrad_hw.device.presets import layered
from phasegrad_hw.firmware_models.instruments import BenchEmulator
from phasegrad_hw.wire.scpi import ERROR_MESSAGES

RES = {k: "TCPIP::127.0.0.1::1::SOCKET" for k in ("smu", "phase_meter", "injection")}
FORBIDDEN = [b for b in range(256) if not (0x20 <= b <= 0x7E or b in (0x09, 0x0D, 0x0A))]
WORDS = [
    "SOUR",
    "SOURCE",
    "VOLT",
    "VOLTAGE",
    "OUTP",
    "SENS",
    "CURR",
    "PROT",
    "TRIP",
    "MEAS",
    "ROUT",
    "CLOS",
    "SAMP",
    "COUN",
    "CONF",
    "PHAS",
    "READ",
    "FETC",
    "FORM",
    "CALC",
    "AVER",
    "SDEV",
    "SYST",
    "ERR",
    "*IDN",
    "*RST",
    "*CLS",
    "*OPC",
    "*ESE",
    "LEV",
    "POL",
    "INIT",
]
PIECES = st.sampled_from(
    WORDS
    + [
        "1",
        "2",
        "9",
        "99",
        ":",
        ";",
        "?",
        " ",
        ",",
        "(@1:3)",
        "(@",
        "ON",
        "OFF",
        "CENT",
        "1e9",
        "-5",
        "0.5",
        "nan",
        '"',
        "'",
    ]
)
ALPHABET = ["smu", "phase_meter", "injection"]


def emulator() -> BenchEmulator:
    return BenchEmulator(bench_for_chip(layered(2, 5, 2, np.random.default_rng(0)), RES))


def state(e: BenchEmulator) -> tuple[bytes, ...]:
    return (
        e.smu.level.tobytes(),
        e.smu.on.tobytes(),
        e.injection.amp.tobytes(),
        e.injection.on.tobytes(),
        e.injection.phase_deg.tobytes(),
    )


# --------------------------------------------------------------------------- in-process
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), which=st.sampled_from(ALPHABET))
def test_random_bytes_in_process(data: bytes, which: str) -> None:
    e = emulator()
    inst = e.instruments[which]

    async def run() -> None:
        for line in data.split(b"\n"):
            await inst.execute(line.decode("latin-1").rstrip("\r"))
        while len(inst.errors):
            code, _ = inst.errors.pop()
            assert code in ERROR_MESSAGES
        assert (await inst.execute("*IDN?") or "").startswith("PHASEGRAD-HW,")
        assert await inst.execute("SYST:ERR?") == '0,"No error"'

    asyncio.run(run())


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.binary(max_size=40),
    bad=st.sampled_from(FORBIDDEN),
    suffix=st.binary(max_size=40),
    which=st.sampled_from(ALPHABET),
)
def test_invalid_bytes_are_refused_whole(
    prefix: bytes, bad: int, suffix: bytes, which: str
) -> None:
    e = emulator()
    inst = e.instruments[which]
    line = (prefix + bytes([bad]) + suffix).replace(b"\n", b" ").decode("latin-1")
    before = state(e)

    async def run() -> None:
        assert await inst.execute(line) is None
        assert inst.errors.pop()[0] == -101
        assert state(e) == before  # nothing of a message with an invalid byte is applied
        assert await inst.execute("*OPC?") == "1"

    asyncio.run(run())


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(PIECES, max_size=14), which=st.sampled_from(ALPHABET))
def test_random_scpi_lines(pieces: list[str], which: str) -> None:
    e = emulator()
    inst = e.instruments[which]
    line = "".join(pieces)

    async def run() -> None:
        await inst.execute(line)
        codes = []
        while len(inst.errors):
            codes.append(inst.errors.pop()[0])
        assert all(c in ERROR_MESSAGES and c < 0 for c in codes)
        assert (await inst.execute(":SYST:ERR?;*OPC?")) == '0,"No error";1'

    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(
    word=st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12
    ),
    query=st.booleans(),
    which=st.sampled_from(ALPHABET),
)
def test_unknown_headers_always_error(word: str, query: bool, which: str) -> None:
    e = emulator()
    inst = e.instruments[which]
    line = f":ZZ{word}:{word}{'?' if query else ' 1'}"

    async def run() -> None:
        assert await inst.execute(line) is None
        assert inst.errors.pop()[0] == -113

    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(
    ch=st.integers(1, 9),
    value=st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**9), 10**9)),
)
def test_out_of_range_settings_never_applied(ch: int, value: float) -> None:
    e = emulator()
    lo, hi = e.smu.limits[ch]

    async def run() -> None:
        before = float(e.smu.level[ch])
        await e.smu.execute(f":SOUR{ch}:VOLT {value!r}")
        code, _ = e.smu.errors.pop()
        if lo <= float(repr(value)) <= hi:
            assert code == 0 and e.smu.level[ch] == float(repr(value))
        else:
            assert code == -222 and e.smu.level[ch] == before

    asyncio.run(run())


# --------------------------------------------------------------------------- over TCP
@pytest.fixture(scope="module")
def tcp_emu() -> Iterator[BenchEmulator]:
    e = emulator()
    with e.running():
        yield e


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.buf = b""
        self.marker = 0

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "instrument closed the connection"
            self.buf += chunk
        out, _, self.buf = self.buf.partition(b"\n")
        return out

    def ask(self, msg: bytes) -> bytes:
        self.sock.sendall(msg + b"\n")
        return self.line()

    def sync(self) -> None:
        """Skip whatever the fuzz input produced, up to a fresh marker."""
        self.marker = self.marker % 250 + 1
        self.sock.sendall(f"*ESE {self.marker};*ESE?\n".encode())
        while self.line() != str(self.marker).encode():
            pass

    def errors(self) -> list[int]:
        codes: list[int] = []
        while True:
            code = int(self.ask(b"SYST:ERR?").split(b",")[0])
            if code == 0:
                return codes
            codes.append(code)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=300), bad=st.sampled_from(FORBIDDEN), which=st.sampled_from(ALPHABET)
)
def test_random_bytes_over_tcp(tcp_emu: BenchEmulator, data: bytes, bad: int, which: str) -> None:
    c = Client(tcp_emu.ports[which])
    try:
        c.sync()
        c.errors()
        msg = (data + bytes([bad])).replace(b"\n", b"")
        c.sock.sendall(msg + b"\n")
        c.sync()
        codes = c.errors()
        assert codes and codes[0] == -101  # an error every time
        assert c.ask(b"*IDN?").startswith(b"PHASEGRAD-HW,")  # the next valid command works
    finally:
        c.sock.close()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(min_size=1, max_size=2000))
def test_random_streams_with_newlines_over_tcp(tcp_emu: BenchEmulator, data: bytes) -> None:
    c = Client(tcp_emu.ports["phase_meter"])
    try:
        c.sock.sendall(data + b"\n")
        c.sync()
        assert all(code in ERROR_MESSAGES for code in c.errors())
        assert c.ask(b"*OPC?") == b"1"
    finally:
        c.sock.close()


def test_overlong_message_over_tcp(tcp_emu: BenchEmulator) -> None:
    c = Client(tcp_emu.ports["smu"])
    try:
        c.sync()
        c.errors()
        c.sock.sendall(b"A" * (3 << 20) + b"\n")
        c.sync()
        assert c.errors() == [-363]
        assert c.ask(b"*OPC?") == b"1"
    finally:
        c.sock.close()


@settings(max_examples=200, deadline=None)
@given(
    ch=st.integers(1, 5),
    volts=st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.floats(-0.5, 1.5)),
    degrees=st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.floats(-400, 400)),
)
def test_input_source_settings_never_leave_the_chip_limits(
    ch: int, volts: float, degrees: float
) -> None:
    """The held/drive input source: a setting outside its range is refused (-222) and not
    applied; whatever was accepted reaches the chip as held phases in [−π, π) and drive
    amplitudes in [0, drive_max]."""
    from tests.protocol.test_scpi_held import emulator as held_emulator

    e, chip = held_emulator()
    src = e.inputs
    assert src is not None
    amp_max = chip.model.limits.drive_max * e.bench.drive_v_per_unit

    async def run() -> None:
        await e.chip.make_safe()
        await src.execute(":OUTP1 ON;:OUTP2 ON;:OUTP3 ON;:OUTP4 ON;:OUTP5 ON")
        before = (float(src.amp[ch]), float(src.phase_deg[ch]))
        await src.execute(f":SOUR{ch}:VOLT {volts!r}")
        code, _ = src.errors.pop()
        v = float(repr(volts))
        assert (
            (code == 0 and src.amp[ch] == v)
            if 0 <= v <= amp_max
            else (code == -222 and src.amp[ch] == before[0])
        )
        await src.execute(f":SOUR{ch}:PHAS {degrees!r}")
        code, _ = src.errors.pop()
        d = float(repr(degrees))
        assert (
            (code == 0 and src.phase_deg[ch] == d)
            if -360 <= d <= 360
            else (code == -222 and src.phase_deg[ch] == before[1])
        )
        if ch >= 3:  # one drive phase on every drive channel
            await src.execute(
                ";".join(f":SOUR{c}:PHAS {float(src.phase_deg[ch])!r}" for c in (3, 4, 5))
            )
        reply = await e.phase_meter.execute(":READ?;:SYST:ERR?")
        assert reply is not None and reply.endswith('0,"No error"')
        assert np.all(np.abs(chip.held_phases_rad) <= np.pi)
        f_max = chip.model.limits.drive_max
        assert np.all((chip.drive_amplitude >= 0) & (chip.drive_amplitude <= f_max))
        assert abs(chip.drive_phase_rad) <= np.pi

    asyncio.run(run())
