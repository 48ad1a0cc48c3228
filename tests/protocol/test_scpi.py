"""SCPI parser and emulated bench instruments: unit tests and byte-exact transcripts.

The transcripts talk to the instruments over real TCP sockets (asyncio streams), so they
check the exact bytes a driver must send and will receive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.backends.visa_config import VisaBenchModel, bench_for_chip
from phasegrad_hw.device.presets import layered
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.firmware_models.instruments import BenchEmulator, Fault
from phasegrad_hw.firmware_models.scpi import (
    ScpiError,
    ScpiInstrument,
    channel_list,
    number,
)
from phasegrad_hw.wire.scpi import ERROR_QUEUE_LENGTH

RES = {
    "smu": "TCPIP::127.0.0.1::1::SOCKET",
    "phase_meter": "TCPIP::127.0.0.1::2::SOCKET",
    "injection": "TCPIP::127.0.0.1::3::SOCKET",
}


def chip_model() -> SimulatedDeviceModel:
    return layered(2, 5, 2, np.random.default_rng(0))


def bench_model() -> VisaBenchModel:
    return bench_for_chip(chip_model(), RES)


class Link:
    """A raw TCP connection to one instrument: send a line, read the reply bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def ask(self, data: bytes, timeout: float = 5.0) -> bytes:
        await self.send(data)
        return await asyncio.wait_for(self.reader.readuntil(b"\n"), timeout)

    async def silent(self, data: bytes, wait: float = 0.05) -> None:
        """Send a message that must produce no reply."""
        await self.send(data)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(self.reader.readuntil(b"\n"), wait)


@pytest.fixture
async def emu() -> AsyncIterator[BenchEmulator]:
    e = BenchEmulator(bench_model())
    await e.start()
    try:
        yield e
    finally:
        await e.stop()


async def link(e: BenchEmulator, name: str) -> AsyncIterator[Link]:
    r, w = await asyncio.open_connection("127.0.0.1", e.ports[name])
    try:
        yield Link(r, w)
    finally:
        w.close()


@pytest.fixture
async def smu(emu: BenchEmulator) -> AsyncIterator[Link]:
    async for lk in link(emu, "smu"):
        yield lk


@pytest.fixture
async def meter(emu: BenchEmulator) -> AsyncIterator[Link]:
    async for lk in link(emu, "phase_meter"):
        yield lk


@pytest.fixture
async def inj(emu: BenchEmulator) -> AsyncIterator[Link]:
    async for lk in link(emu, "injection"):
        yield lk


# --------------------------------------------------------------------------- parser units
def test_number_parsing_and_ranges() -> None:
    assert number(" +1.5e-1 ", "X", -1, 1) == 0.15
    assert number(".5", "X", 0, 1) == 0.5
    for text, code in [
        ("2", -222),
        ("abc", -104),
        ("nan", -104),
        ("inf", -104),
        ("1.0V", -131),
        ("1..2", -121),
        ("", -109),
        ("1e999", -222),
    ]:
        with pytest.raises(ScpiError) as ei:
            number(text, "X", -1, 1)
        assert ei.value.code == code, text


def test_channel_lists() -> None:
    assert channel_list("(@1,3,5:7)", "C", 1, 9) == [1, 3, 5, 6, 7]
    assert channel_list("(@ 4:2 )", "C", 1, 9) == [4, 3, 2]
    for text, code in [("(@0)", -222), ("(@1:10)", -222), ("1,2", -104), ("(@a)", -224)]:
        with pytest.raises(ScpiError) as ei:
            channel_list(text, "C", 1, 9)
        assert ei.value.code == code, text


async def test_headers_short_long_case_colon_and_relative_path() -> None:
    inst = ScpiInstrument()
    seen: list[tuple[tuple[int, ...], list[str]]] = []
    inst.add(
        "[:SOURce#]:VOLTage[:LEVel]",
        set=lambda c: seen.append((c.suffixes, c.params)),
        query=lambda c: f"v{c.suffix()}",
        suffix_max=4,
    )
    inst.add("[:SOURce#]:CURRent", set=lambda c: seen.append((c.suffixes, c.params)), suffix_max=4)
    for line in ["SOUR2:VOLT 1", ":source2:voltage:level 1", "sOuRcE2:VoLt 1", "VOLT 1"]:
        seen.clear()
        assert await inst.execute(line) is None
        assert len(inst.errors) == 0, line
        assert seen == [((2 if "2" in line else 1,), ["1"])]
    assert await inst.execute(":SOUR3:VOLT?;:SOUR4:VOLT?") == "v3;v4"
    seen.clear()
    # relative path: CURR after SOUR2:VOLT means SOUR2:CURR
    assert await inst.execute("SOUR2:VOLT 1;CURR 2") is None
    assert seen == [((2,), ["1"]), ((2,), ["2"])]
    # forms that are neither short nor long are undefined
    assert await inst.execute(":SOURC1:VOLT 1") is None
    assert inst.errors.pop()[0] == -113
    assert await inst.execute(":SOUR9:VOLT 1") is None
    assert inst.errors.pop()[0] == -114


async def test_unit_errors_do_not_stop_the_message_and_queue_is_fifo() -> None:
    inst = ScpiInstrument()
    reply = await inst.execute(":BOGUS 1;*OPC?;:NOPE?;*IDN?")
    assert reply == "1;PHASEGRAD-HW,EMULATED,0,1.0"
    assert await inst.execute("SYST:ERR?;SYST:ERR?;:SYST:ERR?") == (
        '-113,"Undefined header;BOGUS";-113,"Undefined header;NOPE?";0,"No error"'
    )


async def test_error_queue_overflow_and_cls() -> None:
    inst = ScpiInstrument()
    for _ in range(ERROR_QUEUE_LENGTH + 5):
        await inst.execute(":X")
    assert await inst.execute("SYST:ERR:COUN?") == str(ERROR_QUEUE_LENGTH)
    replies = [await inst.execute("SYST:ERR?") for _ in range(ERROR_QUEUE_LENGTH)]
    codes = [int((r or "").split(",")[0]) for r in replies]
    assert codes == [-113] * (ERROR_QUEUE_LENGTH - 1) + [-350]
    await inst.execute(":X;*CLS")
    assert await inst.execute("SYST:ERR?") == '0,"No error"'


async def test_status_registers() -> None:
    inst = ScpiInstrument()
    assert await inst.execute("*ESE 36;*ESE?") == "36"
    await inst.execute(":X")  # command error sets ESR bit 5
    assert await inst.execute("*STB?") == str(4 | 32 | 64)
    assert await inst.execute("*ESR?;*ESR?") == "32;0"
    for bad, code in [
        ("\x01IDN?", -101),
        ("*IDN? extra", -108),
        ("*ESE 300", -222),
        ("*IDN?;;*OPC?", -102),
        ("*RST?", -113),
        ("x" * 70000, -363),
    ]:
        await inst.execute("*CLS")
        await inst.execute(bad)
        assert inst.errors.pop()[0] == code, bad


def test_bench_config_errors_name_the_field() -> None:
    data = bench_model().model_dump(mode="json")
    data["smu"]["channels"] = [1, 2, 3]
    data["injection"]["channels"] = [1, 1]
    with pytest.raises(ConfigError) as ei:
        VisaBenchModel.from_dict(data)
    text = str(ei.value)
    assert "smu.channels: 3 entries — need 9" in text
    assert "injection.channels: [1, 1] — a channel is used twice" in text
    data = bench_model().model_dump(mode="json")
    data["smu"]["timeout_s"] = -1
    with pytest.raises(ConfigError, match=r"smu\.timeout_s: -1"):
        VisaBenchModel.from_dict(data)


def test_fault_specs() -> None:
    f = Fault.parse("drop:phase_meter:after=3:count=2")
    assert (f.kind, f.instrument, f.after, f.count) == ("drop", "phase_meter", 3, 2)
    assert Fault.parse("delay:any:delay_s=0.1:count=none").count is None
    with pytest.raises(ConfigError, match="explode"):
        Fault.parse("explode:smu")


# --------------------------------------------------------------------------- transcripts
async def test_transcript_identification_and_common(smu: Link, meter: Link, inj: Link) -> None:
    assert await smu.ask(b"*IDN?\n") == b"PHASEGRAD-HW,EMU-SMU,0,1.0\n"
    assert await meter.ask(b"*idn?\r\n") == b"PHASEGRAD-HW,EMU-PHASE,0,1.0\n"
    assert await inj.ask(b"*OPC?;*IDN?\n") == b"1;PHASEGRAD-HW,EMU-INJECT,0,1.0\n"
    assert await smu.ask(b"SYST:VERS?\n") == b"1999.0\n"


async def test_transcript_smu_settings_and_range(emu: BenchEmulator, smu: Link) -> None:
    await smu.silent(b":sour2:volt 0.5\n")
    assert await smu.ask(b":SOURce2:VOLTage:LEVel:IMMediate:AMPLitude?\n") == b"0.5\n"
    assert await smu.ask(b"SOUR3:VOLT 0.25;VOLT?\n") == b"0.25\n"  # VOLT? is SOUR3:VOLT?
    assert await smu.ask(b"SYST:ERR?\n") == b'0,"No error"\n'
    # out of range: refused, queued, never applied
    await smu.silent(b":SOUR2:VOLT 3.5\n")
    assert await smu.ask(b"SYST:ERR?\n") == (
        b'-222,"Data out of range;SOUR2:VOLT 3.5 outside [-3, 3]"\n'
    )
    assert await smu.ask(b":SOUR2:VOLT?\n") == b"0.5\n"
    assert emu.smu.level[2] == 0.5
    await smu.silent(b":SOUR1:VOLT\n")
    assert await smu.ask(b"SYST:ERR?\n") == (
        b'-109,"Missing parameter;SOUR1:VOLT needs a parameter"\n'
    )
    await smu.silent(b":SOUR10:VOLT 0\n")
    assert (await smu.ask(b"SYST:ERR?\n")).startswith(b"-114,")
    # full-precision round trip of a level
    x = 0.1 + 0.2
    await smu.silent(f":SOUR4:VOLT {x:.17g}\n".encode())
    assert float(await smu.ask(b":SOUR4:VOLT?\n")) == x


async def test_transcript_smu_outputs_current_and_trip(emu: BenchEmulator, smu: Link) -> None:
    assert await smu.ask(b":OUTP1?\n") == b"0\n"
    await smu.silent(b":SOUR1:VOLT 2;:SENS1:CURR:PROT 0.01;:OUTP1 ON\n")
    assert await smu.ask(b":OUTP1?;:MEAS:CURR? (@1,2)\n") == b"1;0.002,0\n"
    assert await smu.ask(b":SENS1:CURR:PROT:TRIP?\n") == b"0\n"
    # lower the compliance below the load current: the channel trips, output off
    await smu.silent(b":SENS1:CURR:PROT 0.001\n")
    assert await smu.ask(b":SENS1:CURR:PROT:TRIP?;:OUTP1?;:STAT:QUES:COND?\n") == b"1;0;2\n"
    assert await smu.ask(b":SENS:CURR:PROT:TRIP? (@1:3);:OUTP? (@2,1)\n") == b"1,0,0;0,0\n"
    assert emu.chip.effective_biases()[0] == emu.chip.safe[0]
    await smu.silent(b":SENS1:CURR:PROT 0.01;:OUTP1 ON\n")
    assert await smu.ask(b":SENS1:CURR:PROT:TRIP?;:OUTP1?\n") == b"0;1\n"
    await smu.silent(b"*RST\n")
    assert await smu.ask(b":OUTP1?;:SOUR1:VOLT?\n") == b"0;0\n"


async def test_transcript_phase_meter_matches_the_chip(
    emu: BenchEmulator, smu: Link, meter: Link
) -> None:
    omega = np.linspace(-0.6, 0.6, 9)
    volts = ";".join(f":SOUR{i + 1}:VOLT {w:.17g}" for i, w in enumerate(omega))
    on = ";".join(f":SENS{i + 1}:CURR:PROT 0.01;:OUTP{i + 1} ON" for i in range(9))
    await smu.silent(f"{volts};{on}\n".encode())
    assert await smu.ask(b":STAT:QUES:COND?\n") == b"0\n"  # nothing tripped
    assert await meter.ask(b":FETC?;*OPC?\n") == b"1\n"
    assert (await meter.ask(b"SYST:ERR?\n")).startswith(b"-230,")
    reply = await meter.ask(b":CONF:PHAS;:FORM:PHAS CENT;:ROUT:CLOS (@2,8:9);:SAMP:COUN 1;:READ?\n")
    ref = SimulatedSubstrate(chip_model())
    await ref.set_frequencies(omega)
    theta = (await ref.read_phases()).phases
    expected = ",".join(format(v, ".17g") for v in np.degrees(theta[[1, 7, 8]]))
    assert reply == (expected + "\n").encode()
    assert await meter.ask(b":FETC?\n") == reply  # no new acquisition
    assert await meter.ask(b":CALC:AVER:SDEV?;:STAT:QUES:COND?\n") == b"0,0,0;0\n"
    # POSitive format: 0…360
    await meter.silent(b":FORM:PHAS POS\n")
    pos = [float(x) for x in (await meter.ask(b":READ?\n")).split(b",")]
    assert np.allclose(pos, np.degrees(theta[[1, 7, 8]]) % 360.0, atol=1e-12)
    assert all(0 <= p < 360 for p in pos)
    await meter.silent(b":SAMP:COUN 5000\n")
    assert (await meter.ask(b"SYST:ERR?\n")).startswith(b"-222,")
    assert await meter.ask(b":SAMP:COUN?\n") == b"1\n"


async def test_transcript_injection_nudges_the_chip(
    emu: BenchEmulator, smu: Link, meter: Link, inj: Link
) -> None:
    on = ";".join(f":OUTP{i + 1} ON" for i in range(9))
    await smu.silent(f"{on}\n".encode())
    free = await meter.ask(b":FORM:PHAS CENT;:ROUT:CLOS (@8,9);:READ?\n")
    await inj.silent(
        b":SOUR1:VOLT 0.3;:SOUR1:PHAS 30;:SOUR2:VOLT 0.3;:SOUR2:PHAS -30;:OUTP1 ON;:OUTP2 ON\n"
    )
    nudged = await meter.ask(b":READ?\n")
    assert nudged != free
    ref = SimulatedSubstrate(chip_model())
    await ref.set_frequencies(np.zeros(9))
    await ref.clamp(np.radians([30.0, -30.0]), 0.3)
    theta = (await ref.read_phases()).phases
    expected = ",".join(format(v, ".17g") for v in np.degrees(theta[[7, 8]]))
    assert nudged == (expected + "\n").encode()
    # inverted polarity is the −β nudge
    await inj.silent(b":OUTP1:POL INV;:OUTP2:POL INVERTED\n")
    minus = await meter.ask(b":READ?\n")
    await ref.clamp(np.radians([30.0, -30.0]), 0.3, direction=-1)
    theta = (await ref.read_phases()).phases
    assert minus == (",".join(format(v, ".17g") for v in np.degrees(theta[[7, 8]])) + "\n").encode()
    # amplitude above β_max is refused and not applied
    await inj.silent(b":SOUR1:VOLT 1.5\n")
    assert (await inj.ask(b"SYST:ERR?\n")).startswith(b'-222,"Data out of range;SOUR1:VOLT 1.5')
    assert await inj.ask(b":SOUR1:VOLT?\n") == b"0.29999999999999999\n"
    # channels that disagree cannot be expressed: the read fails with -221
    await inj.silent(b":OUTP2 OFF\n")
    assert await meter.ask(b":READ?;*OPC?\n") == b"1\n"
    assert (await meter.ask(b"SYST:ERR?\n")).startswith(b'-221,"Settings conflict')
    await inj.silent(b":OUTP1 OFF\n")
    assert await meter.ask(b":READ?\n") == free


async def test_transcript_faults(emu: BenchEmulator, smu: Link) -> None:
    emu.inject(Fault(kind="corrupt", instrument="smu"))
    bad = await smu.ask(b"*OPC?\n")
    assert bad != b"1\n" and any(b >= 0x80 for b in bad)
    emu.inject(Fault(kind="drop", instrument="smu"))
    await smu.silent(b"*OPC?\n", wait=0.2)
    emu.inject(Fault(kind="scpi_error", instrument="smu"))
    assert await smu.ask(b":SOUR1:VOLT 0.5;:SOUR1:VOLT?\n") == b"0\n"  # first unit refused
    assert await smu.ask(b"SYST:ERR?\n") == (
        b"-300,\"Device-specific error;injected fault; refused ':SOUR1:VOLT 0.5'\"\n"
    )
    emu.inject(Fault(kind="trip", instrument="smu", channel=3))
    assert await smu.ask(b":SENS3:CURR:PROT:TRIP?\n") == b"1\n"
    emu.inject(Fault(kind="delay", instrument="smu", delay_s=0.3))
    t0 = asyncio.get_running_loop().time()
    assert await smu.ask(b"*OPC?\n") == b"1\n"
    assert asyncio.get_running_loop().time() - t0 >= 0.3
    emu.inject(Fault(kind="disconnect", instrument="smu"))
    await smu.send(b"*OPC?\n")
    assert await asyncio.wait_for(smu.reader.read(), 2.0) == b""  # EOF: connection closed
    assert emu.faults.log == [
        ("corrupt", "smu"),
        ("drop", "smu"),
        ("scpi_error", "smu"),
        ("trip", "smu"),
        ("delay", "smu"),
        ("disconnect", "smu"),
    ]


async def test_stop_leaves_the_chip_safe(emu: BenchEmulator, smu: Link, inj: Link) -> None:
    await smu.silent(b":SOUR2:VOLT 1.5;:OUTP2 ON\n")
    await inj.silent(b":SOUR1:VOLT 0.2;:SOUR2:VOLT 0.2;:OUTP1 ON;:OUTP2 ON\n")
    assert await inj.ask(b"*OPC?\n") == b"1\n"
    await emu.stop()
    assert np.array_equal(emu.chip.sub.omega, emu.chip.safe)
    assert emu.chip.sub._clamp is None
    assert not emu.smu.on.any() and not emu.injection.on.any()
