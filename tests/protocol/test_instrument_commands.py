"""One transcript suite over every instrument command (SMU, phase meter, injection source,
controller board): each command's exact wire string, its validators refusing before
anything is sent, and its reply parser (accepting good replies, refusing bad ones).

The links are in-memory transcripts (:mod:`phasegrad_hw.testing.transcripts`), so these
tests check the driver layers without a server.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.board_commands import BoardReading, board_commands
from phasegrad_hw.backends.board_link import BoardLink
from phasegrad_hw.backends.commands import CommandTable
from phasegrad_hw.backends.scpi_instruments import (
    Instrument,
    injection_commands,
    phase_meter_commands,
    smu_commands,
)
from phasegrad_hw.errors import DeviceError, LimitError, ProtocolError
from phasegrad_hw.testing.transcripts import expected_exchanges, scpi_link

OK = '+0,"No error"'
TABLES: dict[str, CommandTable] = {
    "smu": smu_commands(9),
    "phase_meter": phase_meter_commands(12),
    "injection": injection_commands(2, amplitude_max_v=1.0),
}
BOARD = board_commands(
    n=3,
    n_edges=2,
    n_outputs=1,
    dac_bits=16,
    beta_max=1.0,
    max_averages=64,
    n_held=2,
    n_drive=2,
    drive_max=2.0,
)

# (instrument, command, parameters, wire string, reply to the query, parsed value)
SCPI_CASES: list[tuple[str, str, dict[str, Any], str, str | None, Any]] = []
for _inst in TABLES:
    SCPI_CASES += [
        (_inst, "identify", {}, "*IDN?", "ACME,X,1,2", "ACME,X,1,2"),
        (_inst, "reset", {}, "*RST", None, None),
        (_inst, "clear_status", {}, "*CLS", None, None),
        (_inst, "event_enable", {"mask": 37}, "*ESE 37", None, None),
        (_inst, "event_enable_query", {}, "*ESE?", "+37", 37),
        (
            _inst,
            "next_error",
            {},
            ":SYST:ERR?",
            '-222,"Data out of range"',
            (-222, "Data out of range"),
        ),
    ]
SCPI_CASES += [
    ("smu", "set_voltage", {"ch": 3, "volts": 0.1}, ":SOUR3:VOLT 0.10000000000000001", None, None),
    ("smu", "set_voltage", {"ch": 9, "volts": -2}, ":SOUR9:VOLT -2", None, None),
    ("smu", "set_current_protection", {"ch": 1, "amps": 0.01}, ":SENS1:CURR:PROT 0.01", None, None),
    ("smu", "set_output", {"ch": 2, "on": True}, ":OUTP2 ON", None, None),
    ("smu", "set_output", {"ch": 2, "on": False}, ":OUTP2 OFF", None, None),
    ("smu", "tripped", {"channels": [1, 3]}, ":SENS:CURR:PROT:TRIP? (@1,3)", "0,1", [0, 1]),
    ("smu", "outputs_on", {"channels": [4]}, ":OUTP? (@4)", "1", [1]),
    ("phase_meter", "route", {"channels": [3, 1, 12]}, ":ROUT:CLOS (@3,1,12)", None, None),
    ("phase_meter", "configure_phase", {}, ":CONF:PHAS", None, None),
    ("phase_meter", "phase_format", {"form": "centred"}, ":FORM:PHAS CENT", None, None),
    ("phase_meter", "phase_format", {"form": "positive"}, ":FORM:PHAS POS", None, None),
    ("phase_meter", "sample_count", {"count": 16}, ":SAMP:COUN 16", None, None),
    ("phase_meter", "read", {}, ":READ?", "-12.5,180,0", [-12.5, 180.0, 0.0]),
    ("phase_meter", "spread", {}, ":CALC:AVER:SDEV?", "0.25,1E-3", [0.25, 1e-3]),
    ("phase_meter", "questionable", {}, ":STAT:QUES:COND?", "64", 64),
    ("phase_meter", "emulator_seed", {"seed": 11}, ":SYST:EMUL:SEED 11", None, None),
    ("injection", "set_amplitude", {"ch": 1, "volts": 0.5}, ":SOUR1:VOLT 0.5", None, None),
    ("injection", "set_phase", {"ch": 2, "degrees": -90.0}, ":SOUR2:PHAS -90", None, None),
    ("injection", "set_polarity", {"ch": 1, "direction": 1}, ":OUTP1:POL NORM", None, None),
    ("injection", "set_polarity", {"ch": 1, "direction": -1}, ":OUTP1:POL INV", None, None),
    ("injection", "set_output", {"ch": 2, "on": True}, ":OUTP2 ON", None, None),
]

# (instrument, command, parameters, exception, text in its message)
SCPI_REFUSALS: list[tuple[str, str, dict[str, Any], type[Exception], str]] = [
    ("smu", "set_voltage", {"ch": 10, "volts": 0.1}, LimitError, "ch: 10 is outside 1…9"),
    ("smu", "set_voltage", {"ch": 0, "volts": 0.1}, LimitError, "ch: 0 is outside"),
    ("smu", "set_voltage", {"ch": 1, "volts": 211.0}, LimitError, "volts: 211.0 is outside"),
    ("smu", "set_voltage", {"ch": 1, "volts": float("nan")}, LimitError, "not finite"),
    ("smu", "set_voltage", {"ch": 1, "volts": "1"}, TypeError, "is not a number"),
    ("smu", "set_voltage", {"ch": 1.0, "volts": 1.0}, TypeError, "is not an integer"),
    ("smu", "set_current_protection", {"ch": 1, "amps": 2.0}, LimitError, "amps: 2.0"),
    ("smu", "set_output", {"ch": 1, "on": 1}, LimitError, "is not one of True, False"),
    ("smu", "tripped", {"channels": [1, 1]}, LimitError, "distinct channels"),
    ("smu", "outputs_on", {"channels": []}, LimitError, "distinct channels"),
    ("phase_meter", "route", {"channels": [13]}, LimitError, "13 is outside 1…12"),
    ("phase_meter", "phase_format", {"form": "CENT"}, LimitError, "not one of"),
    ("phase_meter", "sample_count", {"count": 0}, LimitError, "count: 0 is outside"),
    ("phase_meter", "emulator_seed", {"seed": -1}, LimitError, "seed: -1"),
    ("injection", "set_amplitude", {"ch": 1, "volts": 1.5}, LimitError, "volts: 1.5"),
    ("injection", "set_amplitude", {"ch": 1, "volts": -0.1}, LimitError, "volts: -0.1"),
    ("injection", "set_phase", {"ch": 1, "degrees": 361.0}, LimitError, "degrees: 361.0"),
    ("injection", "set_polarity", {"ch": 1, "direction": 0}, LimitError, "not one of 1, -1"),
    ("injection", "set_output", {"ch": 3, "on": True}, LimitError, "ch: 3"),
    ("smu", "event_enable", {"mask": 256}, LimitError, "mask: 256"),
]

# (instrument, command, reply that its parser must refuse)
SCPI_BAD_REPLIES: list[tuple[str, str, str]] = [
    ("smu", "next_error", '+0,"No error'),
    ("smu", "identify", ""),
    ("phase_meter", "read", "181,0"),
    ("phase_meter", "read", "nan"),
    ("phase_meter", "read", "1;2"),
    ("phase_meter", "spread", "-0.1"),
    ("phase_meter", "spread", "1e6"),
    ("phase_meter", "questionable", "6.4E1"),
    ("phase_meter", "event_enable_query", "x"),
    ("injection", "next_error", "No error"),
]


def _instrument(name: str, transcript: Any) -> Instrument:
    return Instrument(TABLES[name], scpi_link(transcript, name))


def test_every_command_has_a_transcript() -> None:
    """Each command of each table has a wire transcript, and each with parameters a
    refusal case (a command added without them fails here)."""
    covered = {(i, c) for i, c, *_ in SCPI_CASES}
    for name, table in TABLES.items():
        assert {(name, c.name) for c in table} <= covered
    refused = {c for _, c, *_ in SCPI_REFUSALS}
    assert {c.name for t in TABLES.values() for c in t if c.params} <= refused
    assert {c.name for c in BOARD} <= {c for c, *_ in BOARD_CASES}
    assert {c.name for c in BOARD if c.params} <= {c for c, *_ in BOARD_REFUSALS}


@pytest.mark.parametrize(("inst", "cmd", "params", "wire", "reply", "parsed"), SCPI_CASES)
async def test_scpi_command_string_and_reply(
    inst: str, cmd: str, params: dict[str, Any], wire: str, reply: str | None, parsed: Any
) -> None:
    if reply is None:  # a setting: sent with the error-queue check that confirms it
        with expected_exchanges([(wire + ";:SYST:ERR?", OK)]) as t:
            ins = _instrument(inst, t)
            await ins.write(getattr(ins, cmd)(**params))
        return
    with expected_exchanges([(wire + ";:SYST:ERR?", f"{reply};{OK}")]) as t:
        ins = _instrument(inst, t)
        (value,) = await ins.ask(getattr(ins, cmd)(**params))
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(value, parsed)
    else:
        assert value == parsed


@pytest.mark.parametrize(("inst", "cmd", "params", "exc", "match"), SCPI_REFUSALS)
async def test_scpi_validators_refuse_before_sending(
    inst: str, cmd: str, params: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with expected_exchanges([]) as t:
        ins = _instrument(inst, t)
        with pytest.raises(exc, match=match):
            await ins.write(getattr(ins, cmd)(**params))
    assert t.position == 0


@pytest.mark.parametrize(("inst", "cmd", "reply"), SCPI_BAD_REPLIES)
async def test_scpi_reply_parsers_refuse_malformed_replies(inst: str, cmd: str, reply: str) -> None:
    wire = TABLES[inst].commands[cmd]()
    with expected_exchanges([(wire + ";:SYST:ERR?", f"{reply};{OK}")]) as t:
        ins = _instrument(inst, t)
        with pytest.raises(ProtocolError, match="gave no valid reply"):
            await ins.ask(getattr(ins, cmd)())


@pytest.mark.parametrize("flags", ["0,2", "1,,0", "1 ,0", "true"])
async def test_scpi_flag_lists_refused(flags: str) -> None:
    with expected_exchanges([(":OUTP? (@1,2);:SYST:ERR?", f"{flags};{OK}")]) as t:
        smu = _instrument("smu", t)
        with pytest.raises(ProtocolError, match="malformed reply"):
            await smu.ask(smu.outputs_on(channels=[1, 2]))


async def test_chained_message_and_refusal_from_the_error_queue() -> None:
    """Several settings travel as one message; a queued error refuses the whole write."""
    msg = ":SOUR1:VOLT 0.5;:OUTP1 ON;:SYST:ERR?"
    with expected_exchanges([(msg, '-222,"Data out of range;SOUR1:VOLT 0.5"')]) as t:
        smu = _instrument("smu", t)
        with pytest.raises(DeviceError, match=r"smu refused .*-222"):
            await smu.write(smu.set_voltage(ch=1, volts=0.5), smu.set_output(ch=1, on=True))
    # a query chain whose reply misses a part (an erroneous query gives no response)
    with expected_exchanges([(":READ?;:STAT:QUES:COND?;:SYST:ERR?", '1.5;+0,"No error"')]) as t:
        m = _instrument("phase_meter", t)
        with pytest.raises(ProtocolError, match="reply has 2 parts, expected 3"):
            await m.ask(m.read(), m.questionable())


async def test_the_bench_phase_read_is_one_message() -> None:
    """The exact message the bench sends for a phase read, and its parsed reply."""
    msg = ":SAMP:COUN 4;:READ?;:CALC:AVER:SDEV?;:STAT:QUES:COND?;:SYST:ERR?"
    with expected_exchanges([(msg, '10,-20;0.5,0.25;64;+0,"No error"')]) as t:
        m = _instrument("phase_meter", t)
        mean, sdev, ques = await m.ask(
            m.sample_count(count=4), m.read(), m.spread(), m.questionable()
        )
    np.testing.assert_array_equal(mean, [10.0, -20.0])
    np.testing.assert_array_equal(sdev, [0.5, 0.25])
    assert ques == 64


# --------------------------------------------------------------------------- board
READING = "boot=3 1 4 0.0 0.0 0.25 -1.5 0.0 0.01 0.02"
# (command, parameters, line body, reply body, parsed value of the reply's values)
BOARD_CASES: list[tuple[str, dict[str, Any], str, str, Any]] = [
    (
        "identify",
        {},
        "ID?",
        "OK phasegrad-board fw=1.0 sn=PGB-1 boot=3",
        {"model": "phasegrad-board", "fw": "1.0", "sn": "PGB-1", "boot": "3"},
    ),
    ("descriptor", {"chunk": 2}, "DESC? 2", "OK 2 5 eyJhIjogMX0=", (2, 5, "eyJhIjogMX0=")),
    ("ping", {}, "PING", "OK PONG", ["PONG"]),
    ("safe", {}, "SAFE", "OK", None),
    ("set_frequencies", {"omega": np.array([0.1, -0.2, 1e-17])}, "W 0.1 -0.2 1e-17", "OK", None),
    ("set_codes", {"codes": np.array([0, 65535, 7])}, "B 0 65535 7", "OK", None),
    ("codes", {}, "B?", "OK 0 65535 7", [0.0, 65535.0, 7.0]),
    ("set_couplings", {"k": [2.5, 1.0]}, "K 2.5 1.0", "OK", None),
    ("clamp", {"beta": 0.1, "direction": -1, "targets": [0.3]}, "C 0.1 -1 0.3", "OK", None),
    ("release", {}, "REL", "OK", None),
    ("read", {"averages": 4}, "R 4", f"OK {READING}", None),
    ("frequencies", {}, "F?", "OK 1.0 0.5 -0.25", [1.0, 0.5, -0.25]),
    ("seed", {"seed": 42}, "SEED 42", "OK", None),
    (
        "set_held_phases",
        {"phases": np.array([0.1, -np.pi])},
        "H 0.1 -3.141592653589793",
        "OK",
        None,
    ),
    ("held_phases", {}, "H?", "OK 0.1 -2.5", [0.1, -2.5]),
    (
        "set_drive",
        {"phase": np.pi, "amplitude": [2.0, 0.0]},
        "D 3.141592653589793 2.0 0.0",
        "OK",
        None,
    ),
    ("drive", {}, "D?", "OK -1.0 0.5 2.0", None),
]

BOARD_REFUSALS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("set_frequencies", {"omega": [0.1, 0.2]}, LimitError, "2 values, need 3"),
    ("set_frequencies", {"omega": [0.1, 0.2, float("inf")]}, LimitError, "omega\\[2\\]: inf"),
    ("set_codes", {"codes": [0, 65536, 1]}, LimitError, "codes\\[1\\]: 65536"),
    ("set_codes", {"codes": [0, -1, 1]}, LimitError, "codes\\[1\\]: -1"),
    ("set_codes", {"codes": [0.0, 1.0, 2.0]}, TypeError, "not an integer"),
    ("set_couplings", {"k": [1.0]}, LimitError, "1 values, need 2"),
    ("clamp", {"beta": 1.5, "direction": 1, "targets": [0.0]}, LimitError, "beta: 1.5"),
    ("clamp", {"beta": 0.1, "direction": 0, "targets": [0.0]}, LimitError, "direction"),
    ("clamp", {"beta": 0.1, "direction": 1, "targets": [0.0, 1.0]}, LimitError, "need 1"),
    ("read", {"averages": 0}, LimitError, "averages: 0"),
    ("read", {"averages": 65}, LimitError, "averages: 65"),
    ("seed", {"seed": 10**12}, LimitError, "seed"),
    ("descriptor", {"chunk": -1}, LimitError, "chunk: -1"),
    ("set_held_phases", {"phases": [0.1]}, LimitError, "1 values, need 2"),
    ("set_held_phases", {"phases": [0.1, 3.2]}, LimitError, "phases\\[1\\]: 3.2 is outside"),
    ("set_held_phases", {"phases": [0.1, float("nan")]}, LimitError, "not finite"),
    ("set_drive", {"phase": 0.0, "amplitude": [2.5, 0.0]}, LimitError, "amplitude\\[0\\]: 2.5"),
    ("set_drive", {"phase": 0.0, "amplitude": [0.0, -0.5]}, LimitError, "amplitude\\[1\\]"),
    ("set_drive", {"phase": 0.0, "amplitude": [0.0]}, LimitError, "1 values, need 2"),
    ("set_drive", {"phase": -3.5, "amplitude": [0.0, 0.0]}, LimitError, "phase: -3.5"),
    ("set_drive", {"phase": "0", "amplitude": [0.0, 0.0]}, TypeError, "not a number"),
]

BOARD_BAD_REPLIES: list[tuple[str, dict[str, Any], str]] = [
    ("read", {"averages": 4}, "boot=3 1 4 0.0 0.0 0.25 -1.5 0.0 0.01"),  # one value short
    ("read", {"averages": 4}, "boot=3 2 4 0.0 0.0 0.25 -1.5 0.0 0.01 0.02"),  # lock flag 2
    ("read", {"averages": 4}, "boot=3 1 4 0.0 0.0 0_25 -1.5 0.0 0.01 0.02"),  # Python-only
    ("read", {"averages": 4}, "boot=3 1 4 0.0 nan 0.25 -1.5 0.0 0.01 0.02"),
    ("frequencies", {}, "1.0 inf 0.5"),
    ("frequencies", {}, "1.0 0.5"),
    ("identify", {}, "phasegrad-board fw=1.0"),  # no boot id
    ("descriptor", {"chunk": 0}, "0 1"),
    ("held_phases", {}, "0.1"),
    ("held_phases", {}, "0.1 infinity"),
    ("drive", {}, "0.5 1.0"),
    ("drive", {}, "0.5 1.0 1_0"),
]


def _board(t: Any) -> BoardLink:
    link = BoardLink(t, name="transcript", timeout_s=0.05, retries=0, first_seq=100)
    link.open()
    link.boot_id = 3
    return link


@pytest.mark.parametrize(("cmd", "params", "body", "reply", "parsed"), BOARD_CASES)
def test_board_command_line_and_reply(
    cmd: str, params: dict[str, Any], body: str, reply: str, parsed: Any
) -> None:
    command = BOARD.commands[cmd]
    with expected_exchanges([(body, reply)], framing="board") as t:
        (rep,) = _board(t).transact([command(**params)])
    value = command.reply(" ".join(rep.fields))
    if cmd == "drive":
        phase, amplitude = value
        assert phase == -1.0
        np.testing.assert_array_equal(amplitude, [0.5, 2.0])
    elif cmd == "read":
        assert isinstance(value, BoardReading)
        assert (value.boot_id, value.locked, value.averages, value.settle_s) == (3, True, 4, 0.0)
        np.testing.assert_array_equal(value.phases, [0.0, 0.25, -1.5])
        np.testing.assert_array_equal(value.spread, [0.0, 0.01, 0.02])
    elif isinstance(value, np.ndarray):
        np.testing.assert_array_equal(value, parsed)
    else:
        assert value == parsed


@pytest.mark.parametrize(("cmd", "params", "exc", "match"), BOARD_REFUSALS)
def test_board_validators_refuse_before_sending(
    cmd: str, params: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with expected_exchanges([], framing="board") as t:
        with pytest.raises(exc, match=match):
            _board(t).transact([BOARD.commands[cmd](**params)])
    assert t.position == 0


@pytest.mark.parametrize(("cmd", "params", "values"), BOARD_BAD_REPLIES)
def test_board_reply_parsers_refuse_malformed_replies(
    cmd: str, params: dict[str, Any], values: str
) -> None:
    with pytest.raises(ProtocolError, match=cmd):
        BOARD.commands[cmd].reply(values)


def test_board_refusal_and_pipelined_exchange() -> None:
    """Setpoints and a read in one write; a refusal (ERR 6) is a LimitError naming it."""
    script = [("W 0.0 0.0 0.0", "OK"), ("R 1", f"OK {READING}")]
    with expected_exchanges(script, framing="board") as t:
        replies = _board(t).transact(
            [BOARD.set_frequencies(omega=[0.0, 0.0, 0.0]), BOARD.read(averages=1)]
        )
    assert [r.ok for r in replies] == [True, True]
    with expected_exchanges(
        [("W 9.0 0.0 0.0", "ERR 6 omega[0]: 9.0 outside")], framing="board"
    ) as t:
        with pytest.raises(LimitError, match="refused W: ERR 6 omega"):
            _board(t).transact([BOARD.set_frequencies(omega=[9.0, 0.0, 0.0])])
