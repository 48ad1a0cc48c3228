"""Command tables of the bench instruments (docs/design.md §6) and :class:`Instrument`, which
sends their commands over a :class:`~.scpi_link.ScpiLink`.

* :func:`common_commands` — IEEE 488.2 common commands and the SCPI error queue;
* :func:`smu_commands` — multi-channel SMU (Keysight B2900-style): output level, current
  compliance, output state, compliance-trip and output-state queries over a channel list;
* :func:`phase_meter_commands` — time-interval/phase analyzer behind a multiplexer
  (53230A-style): scan list, sample count, phase format, ``READ?``, spread, QUEStionable
  condition (bit :data:`~phasegrad_hw.wire.scpi.QUES_PHASE_UNLOCKED`);
* :func:`injection_commands` — injection source (AWG-style): amplitude, phase, polarity,
  output state; the nudge source (one channel per output) and, on a chip with held inputs or
  a drive, the input source (one channel per held input and per driven oscillator).

Every message the bench sends is a ``;``-chain of such commands. A chain of settings ends
in ``:SYST:ERR?`` (the write is confirmed and a refusal is seen at once); a chain with
queries is parsed part by part, the last part being the error queue when it is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from phasegrad_hw.backends.commands import (
    ChannelList,
    Choice,
    Command,
    CommandTable,
    Integer,
    Real,
)
from phasegrad_hw.backends.scpi_link import InstrumentReportedError, ScpiLink
from phasegrad_hw.errors import ProtocolError
from phasegrad_hw.wire.scpi import header_nodes, is_no_error, parse_error

ON_OFF = Choice({True: "ON", False: "OFF"})
#: Output range of a B2900-class SMU channel (V).
SMU_RANGE_V = 210.0
#: Largest sample count of a 53230A-class counter.
MAX_SAMPLE_COUNT = 1_000_000


# --------------------------------------------------------------------------- reply parsers
def parse_identity(reply: str) -> str:
    """``*IDN?``: manufacturer,model,serial,firmware (non-empty)."""
    t = reply.strip()
    if not t:
        raise ValueError("empty identification")
    return t


def parse_int(reply: str) -> int:
    t = reply.strip()
    if not t.lstrip("+-").isdigit() or not t.isascii():
        raise ValueError(f"{t[:20]!r} is not an NR1 integer")
    return int(t)


def parse_flags(reply: str) -> list[int]:
    """``0,1,0`` → [0, 1, 0] (each exactly 0 or 1)."""
    flags = reply.strip().split(",")
    if any(f not in ("0", "1") for f in flags):
        raise ValueError("flags must be 0 or 1")
    return [int(f) for f in flags]


def parse_reals(lo: float, hi: float, *, hi_open: bool = False) -> Callable[[str], np.ndarray]:
    """Comma-separated NR3 values, each finite and in [lo, hi] (or [lo, hi))."""

    def parse(reply: str) -> np.ndarray:
        vals = np.array([float(x) for x in reply.strip().split(",")])
        ok = np.isfinite(vals) & (vals >= lo) & ((vals < hi) if hi_open else (vals <= hi))
        if not ok.all():
            raise ValueError(f"value outside [{lo:g}, {hi:g}{')' if hi_open else ']'}")
        return vals

    return parse


def parse_error_entry(reply: str) -> tuple[int, str]:
    """A ``:SYST:ERR?`` reply → (code, text)."""
    entry = parse_error(reply)
    if entry is None:
        raise ValueError("not an error-queue entry")
    return entry


def _table(instrument: str, commands: list[Command]) -> CommandTable:
    for c in commands:  # every header must be valid SCPI (the grammar of wire.scpi)
        head = c.template.split(" ", 1)[0].split(";")[0]
        if not head.startswith("*"):
            header_nodes(head.replace("{ch}", "1"))
    return CommandTable(instrument, commands)


# --------------------------------------------------------------------------- tables
def common_commands() -> list[Command]:
    """IEEE 488.2 common commands and the SCPI error queue (every instrument)."""
    return [
        Command("identify", "*IDN?", parse=parse_identity, doc="identification string"),
        Command("reset", "*RST", doc="instrument reset state"),
        Command("clear_status", "*CLS", doc="clear error queue and event registers"),
        Command("event_enable", "*ESE {mask}", {"mask": Integer(0, 255)}),
        Command("event_enable_query", "*ESE?", parse=parse_int),
        Command("next_error", ":SYST:ERR?", parse=parse_error_entry, doc="oldest queued error"),
    ]


def smu_commands(n_channels: int) -> CommandTable:
    """SMU with channels 1…``n_channels``: levels in V, compliance in A."""
    ch = Integer(1, n_channels)
    chans = ChannelList(1, n_channels)
    return _table(
        "smu",
        [
            *common_commands(),
            Command(
                "set_voltage",
                ":SOUR{ch}:VOLT {volts}",
                {"ch": ch, "volts": Real(-SMU_RANGE_V, SMU_RANGE_V)},
            ),
            Command(
                "set_current_protection",
                ":SENS{ch}:CURR:PROT {amps}",
                {"ch": ch, "amps": Real(1e-9, 1.0)},
            ),
            Command("set_output", ":OUTP{ch} {on}", {"ch": ch, "on": ON_OFF}),
            Command(
                "tripped",
                ":SENS:CURR:PROT:TRIP? {channels}",
                {"channels": chans},
                parse=parse_flags,
                doc="1 per listed channel that tripped its current compliance",
            ),
            Command(
                "outputs_on",
                ":OUTP? {channels}",
                {"channels": chans},
                parse=parse_flags,
                doc="1 per listed channel whose output is on",
            ),
        ],
    )


def phase_meter_commands(n_channels: int) -> CommandTable:
    """Phase analyzer behind a multiplexer of ``n_channels`` inputs; phases in degrees."""
    return _table(
        "phase_meter",
        [
            *common_commands(),
            Command("route", ":ROUT:CLOS {channels}", {"channels": ChannelList(1, n_channels)}),
            Command("configure_phase", ":CONF:PHAS"),
            Command(
                "phase_format",
                ":FORM:PHAS {form}",
                {"form": Choice({"centred": "CENT", "positive": "POS"})},
            ),
            Command("sample_count", ":SAMP:COUN {count}", {"count": Integer(1, MAX_SAMPLE_COUNT)}),
            Command(
                "read",
                ":READ?",
                parse=parse_reals(-180.0, 180.0),
                doc="new acquisition: circular mean phase per scanned channel (deg, centred)",
            ),
            Command(
                "spread",
                ":CALC:AVER:SDEV?",
                parse=parse_reals(0.0, 1e6, hi_open=True),
                doc="circular standard deviation per scanned channel (deg)",
            ),
            Command("questionable", ":STAT:QUES:COND?", parse=parse_int),
            Command(
                "emulator_seed",
                ":SYST:EMUL:SEED {seed}",
                {"seed": Integer(0, 2**63 - 1)},
                doc="emulated chip only: reseed its noise",
            ),
        ],
    )


def injection_commands(
    n_channels: int, amplitude_max_v: float, instrument: str = "injection"
) -> CommandTable:
    """Injection source ``instrument`` with channels 1…``n_channels``: amplitude in V (0 …
    ``amplitude_max_v``), phase in degrees."""
    ch = Integer(1, n_channels)
    return _table(
        instrument,
        [
            *common_commands(),
            Command(
                "set_amplitude",
                ":SOUR{ch}:VOLT {volts}",
                {"ch": ch, "volts": Real(0.0, amplitude_max_v)},
            ),
            Command(
                "set_phase", ":SOUR{ch}:PHAS {degrees}", {"ch": ch, "degrees": Real(-360.0, 360.0)}
            ),
            Command(
                "set_polarity",
                ":OUTP{ch}:POL {direction}",
                {"ch": ch, "direction": Choice({1: "NORM", -1: "INV"})},
            ),
            Command("set_output", ":OUTP{ch} {on}", {"ch": ch, "on": ON_OFF}),
        ],
    )


# --------------------------------------------------------------------------- binding
@dataclass(frozen=True)
class Bound:
    """A command with its (validated) parameters: the text to send and the reply parser."""

    command: Command
    text: str


def bind(command: Command, **values: Any) -> Bound:
    return Bound(command, command(**values))


class Instrument:
    """A command table bound to a link: chains commands into one message per round trip."""

    def __init__(self, table: CommandTable, link: ScpiLink) -> None:
        self.table = table
        self.link = link
        self.name = table.instrument

    def __getattr__(self, name: str) -> Callable[..., Bound]:
        command: Command = getattr(self.__dict__["table"], name)
        return lambda **values: bind(command, **values)

    def message(
        self,
        parts: list[Bound],
        *,
        check_errors: bool = True,
        check: Callable[[list[Any]], None] | None = None,
    ) -> tuple[str, Callable[[str], list[Any]]]:
        """The ``;``-chained message for ``parts`` and the parser of its reply.

        With ``check_errors`` the chain ends in ``:SYST:ERR?``: the reply is refused
        (:class:`InstrumentReportedError`) unless the queue is empty. ``check`` may refuse
        the parsed values (raising :class:`ProtocolError`, so the link retries).
        """
        queries = [p.command for p in parts if p.command.is_query]
        text = ";".join(p.text for p in parts)
        n = len(queries) + check_errors
        if check_errors:
            text += ";:SYST:ERR?"
        name = self.name

        def parse(reply: str) -> list[Any]:
            r = reply.strip()
            fields = r.split(";", n - 1) if n else []  # only the error text may contain ';'
            if check_errors and len(fields) == n and not is_no_error(fields[-1]):
                if parse_error(fields[-1]) is not None:
                    what = f"refused {text[:60]!r}: " if not queries else "reported "
                    raise InstrumentReportedError(f"{name} {what}{fields[-1]}")
                if not queries:
                    raise ProtocolError(f"unexpected reply {r[:60]!r} to a confirmed write")
            if len(fields) != n or (check_errors and not is_no_error(fields[-1])):
                raise ProtocolError(
                    f"{name}: reply has {len(fields)} parts, expected {n}: {r[:60]!r}"
                )
            values = [q.reply(f) for q, f in zip(queries, fields, strict=False)]
            if check is not None:
                check(values)
            return values

        return text, parse

    async def write(self, *parts: Bound) -> None:
        """Send settings as one message and confirm them (``…;:SYST:ERR?``)."""
        text, parse = self.message(list(parts))
        await self.link.aquery(text, parse)

    def write_sync(self, *parts: Bound) -> None:
        text, parse = self.message(list(parts))
        self.link.transact(text, parse)

    async def ask(
        self,
        *parts: Bound,
        check_errors: bool = True,
        check: Callable[[list[Any]], None] | None = None,
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Send settings and queries as one message; the parsed replies of the queries."""
        text, parse = self.message(list(parts), check_errors=check_errors, check=check)
        return await self.link.aquery(text, parse, timeout_s)
