"""Command table of the phasegrad controller board (docs/protocol.md, "Commands"): each
command's line, the validators of its arguments (from the chip descriptor: N, E, O, H held
inputs, D driven oscillators, DAC bits, β, drive and averaging limits) and the parser of its
reply values.

Floats are written with Python's shortest round-trip form (``repr``), so values cross the
wire bit-exactly; replies are parsed with the strict number grammar of
:mod:`phasegrad_hw.wire.board`. A reply parser gets the reply's values joined by spaces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from phasegrad_hw.backends.commands import Choice, Command, CommandTable, Integer, Real, Vector
from phasegrad_hw.wire.board import parse_float, parse_int

#: Largest ``SEED`` the firmware reads (``parse_int``: at most 12 digits).
MAX_SEED = 10**12 - 1
FLOAT = Real(fmt="repr")
#: A phase register (held input phase shifter, drive phase): rad in [−π, π].
PHASE = Real(-np.pi, np.pi, fmt="repr")


@dataclass(frozen=True)
class BoardReading:
    """The values of an ``R`` reply: boot id, lock flag, averages, settle time (s), circular
    mean phases and spreads (rad)."""

    boot_id: int
    locked: bool
    averages: int
    settle_s: float
    phases: np.ndarray
    spread: np.ndarray


def _fields(text: str) -> list[str]:
    return text.split(" ") if text else []


def floats_reply(n: int, what: str) -> Callable[[str], np.ndarray]:
    """``n`` strict floats."""

    def parse(text: str) -> np.ndarray:
        f = _fields(text)
        if len(f) != n:
            raise ValueError(f"{what} has {len(f)} fields, expected {n}")
        return np.array([parse_float(x, f"{what}[{i}]") for i, x in enumerate(f)])

    return parse


def reading_reply(n: int) -> Callable[[str], BoardReading]:
    """``boot=<id> <locked> <m> <settle_s> <φ_0…φ_N-1> <σ_0…σ_N-1>``."""

    def parse(text: str) -> BoardReading:
        f = _fields(text)
        if len(f) != 4 + 2 * n:
            raise ValueError(f"phase reading has {len(f)} fields, expected {4 + 2 * n}")
        if not f[0].startswith("boot=") or f[1] not in ("0", "1"):
            raise ValueError(f"phase reading starts {' '.join(f[:2])!r}")
        vals = np.array([parse_float(x, "phase reading") for x in f[4:]])
        return BoardReading(
            parse_int(f[0][5:], "boot"),
            f[1] == "1",
            parse_int(f[2], "averages"),
            parse_float(f[3], "settle_s"),
            vals[:n],
            vals[n:],
        )

    return parse


def ident_reply(text: str) -> dict[str, str]:
    """``phasegrad-board fw=<v> sn=<serial> boot=<id>`` → {"model": …, "fw": …, …}."""
    f = _fields(text)
    out = {"model": f[0]} if f else {}
    for item in f[1:]:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"identification field {item!r} is not key=value")
        out[key] = value
    if "boot" not in out:
        raise ValueError("identification without boot id")
    parse_int(out["boot"], "boot")
    return out


def desc_reply(text: str) -> tuple[int, int, str]:
    """``<k> <n_chunks> <base64>``."""
    f = _fields(text)
    if len(f) != 3:
        raise ValueError(f"descriptor chunk has {len(f)} fields, expected 3")
    return parse_int(f[0], "chunk"), parse_int(f[1], "chunks"), f[2]


def ok_reply(text: str) -> None:
    """A setting's reply carries no values."""
    if text:
        raise ValueError(f"unexpected values {text[:40]!r}")


def bootstrap_commands() -> CommandTable:
    """What the driver sends before it knows the chip (descriptor, identification)."""
    return CommandTable("board", _common())


def _common() -> list[Command]:
    return [
        Command("identify", "ID?", parse=ident_reply),
        Command("descriptor", "DESC? {chunk}", {"chunk": Integer(0, 9999)}, parse=desc_reply),
        Command("ping", "PING", parse=_fields),
        Command("safe", "SAFE", parse=ok_reply, doc="injection off, every bias safe"),
    ]


def drive_reply(n_drive: int) -> Callable[[str], tuple[float, np.ndarray]]:
    """``<Ψ> <F_0> … <F_D-1>`` → (phase rad, amplitudes model units)."""
    parse_all = floats_reply(1 + n_drive, "drive registers")

    def parse(text: str) -> tuple[float, np.ndarray]:
        v = parse_all(text)
        return float(v[0]), v[1:]

    return parse


def board_commands(
    *,
    n: int,
    n_edges: int,
    n_outputs: int,
    dac_bits: int,
    beta_max: float,
    max_averages: int,
    n_held: int = 0,
    n_drive: int = 0,
    drive_max: float = 0.0,
) -> CommandTable:
    """The board's commands for a chip of ``n`` oscillators, ``n_edges`` couplings,
    ``n_outputs`` outputs, ``n_held`` held inputs and ``n_drive`` driven oscillators (drive
    amplitudes in [0, ``drive_max``], model units) behind ``dac_bits``-bit bias DACs."""
    dac_max = (1 << dac_bits) - 1
    return CommandTable(
        "board",
        [
            *_common(),
            Command("set_frequencies", "W {omega}", {"omega": Vector(n, FLOAT)}, parse=ok_reply),
            Command(
                "set_codes", "B {codes}", {"codes": Vector(n, Integer(0, dac_max))}, parse=ok_reply
            ),
            Command("codes", "B?", parse=floats_reply(n, "codes")),
            Command("set_couplings", "K {k}", {"k": Vector(n_edges, FLOAT)}, parse=ok_reply),
            Command(
                "clamp",
                "C {beta} {direction} {targets}",
                {
                    "beta": Real(0.0, beta_max, fmt="repr"),
                    "direction": Choice({1: "1", -1: "-1"}),
                    "targets": Vector(n_outputs, FLOAT),
                },
                parse=ok_reply,
            ),
            Command("release", "REL", parse=ok_reply),
            Command(
                "read",
                "R {averages}",
                {"averages": Integer(1, max_averages)},
                parse=reading_reply(n),
            ),
            Command("frequencies", "F?", parse=floats_reply(n, "frequency reading")),
            Command("seed", "SEED {seed}", {"seed": Integer(0, MAX_SEED)}, parse=ok_reply),
            Command(
                "set_held_phases",
                "H {phases}",
                {"phases": Vector(n_held, PHASE)},
                parse=ok_reply,
                doc="phase-shifter setting (rad) of every held input, roles.held order",
            ),
            Command("held_phases", "H?", parse=floats_reply(n_held, "held phases")),
            Command(
                "set_drive",
                "D {phase} {amplitude}",
                {"phase": PHASE, "amplitude": Vector(n_drive, Real(0.0, drive_max, fmt="repr"))},
                parse=ok_reply,
                doc="drive phase Ψ (rad) and amplitude F_i of every driven oscillator; 0 = off",
            ),
            Command("drive", "D?", parse=drive_reply(n_drive)),
        ],
    )
