"""Declarative instrument commands: a command is its wire string, the validators of its
parameters and the parser of its reply (the middle layer of a driver, between the link that
moves bytes and the substrate that composes instruments; docs/design.md §6).

A :class:`Command` formats only values its validators accept, so a refused value never
reaches the wire: out of range → :class:`~phasegrad_hw.errors.LimitError` naming the
command, the parameter, the value and the range; a value of the wrong type →
:class:`TypeError`. Tables of commands for the SCPI instruments live in
:mod:`.scpi_instruments`, the board's in :mod:`.board_commands`.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from phasegrad_hw.errors import LimitError, ProtocolError


class Validator(Protocol):
    """Checks one parameter value and returns its wire text (raises before anything is sent)."""

    def __call__(self, where: str, value: Any) -> str: ...


def _real(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{where}: {value!r} is not a number")
    x = float(value)
    if not math.isfinite(x):
        raise LimitError(f"{where}: {x!r} is not finite")
    return x


@dataclass(frozen=True)
class Real:
    """A finite float in [lo, hi], written with ``fmt`` (``.17g``: round-trip exact, or
    ``repr`` for Python's shortest round-trip form)."""

    lo: float = -math.inf
    hi: float = math.inf
    fmt: str = ".17g"

    def text(self, x: float) -> str:
        return repr(x) if self.fmt == "repr" else format(x, self.fmt)

    def __call__(self, where: str, value: Any) -> str:
        x = _real(where, value)
        if not self.lo <= x <= self.hi:
            raise LimitError(f"{where}: {x!r} is outside [{self.lo:g}, {self.hi:g}]")
        return self.text(x)


@dataclass(frozen=True)
class Integer:
    """An integer in [lo, hi] (decimal)."""

    lo: int
    hi: int

    def __call__(self, where: str, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{where}: {value!r} is not an integer")
        if not self.lo <= int(value) <= self.hi:
            raise LimitError(f"{where}: {int(value)} is outside {self.lo}…{self.hi}")
        return str(int(value))


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values, each with its wire token (e.g. ``{True: "ON"}``)."""

    tokens: Mapping[Any, str]

    def __call__(self, where: str, value: Any) -> str:
        for key, token in self.tokens.items():
            if type(key) is type(value) and key == value:
                return token
        allowed = ", ".join(repr(k) for k in self.tokens)
        raise LimitError(f"{where}: {value!r} is not one of {allowed}")


@dataclass(frozen=True)
class ChannelList:
    """A SCPI channel list ``(@1,2,5)`` of channels in [lo, hi], none twice."""

    lo: int
    hi: int

    def __call__(self, where: str, value: Any) -> str:
        chans = list(value)
        check = Integer(self.lo, self.hi)
        body = ",".join(check(f"{where}[{i}]", c) for i, c in enumerate(chans))
        if not chans or len(set(chans)) != len(chans):
            raise LimitError(f"{where}: {chans} must list distinct channels")
        return f"(@{body})"


@dataclass(frozen=True)
class Vector:
    """Exactly ``length`` values, each checked by ``item``, joined by ``sep``."""

    length: int
    item: Validator
    sep: str = " "

    def __call__(self, where: str, value: Any) -> str:
        items = list(np.asarray(value).tolist()) if isinstance(value, np.ndarray) else list(value)
        if len(items) != self.length:
            raise LimitError(f"{where}: {len(items)} values, need {self.length}")
        return self.sep.join(self.item(f"{where}[{i}]", v) for i, v in enumerate(items))


Parser = Callable[[str], Any]


@dataclass(frozen=True)
class Command:
    """One instrument command: ``template`` with ``{name}`` fields, one validator per field,
    and ``parse`` for the reply of a query (None for a setting)."""

    name: str
    template: str
    params: Mapping[str, Validator] = field(default_factory=dict)
    parse: Parser | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f}
        if fields != set(self.params):
            raise ValueError(
                f"command {self.name}: template fields {sorted(fields)} != "
                f"validators {sorted(self.params)}"
            )

    @property
    def is_query(self) -> bool:
        return self.parse is not None

    def __call__(self, **values: Any) -> str:
        """The wire text for ``values`` (every value validated first)."""
        if set(values) != set(self.params):
            raise TypeError(f"{self.name}: takes {sorted(self.params)}, got {sorted(values)}")
        text = {k: v(f"{self.name} {k}", values[k]) for k, v in self.params.items()}
        return self.template.format(**text)

    def reply(self, text: str) -> Any:
        """Parse this query's reply; a malformed reply is a :class:`ProtocolError`."""
        if self.parse is None:
            raise TypeError(f"{self.name} is not a query")
        try:
            return self.parse(text)
        except ProtocolError:
            raise
        except (ValueError, IndexError) as exc:
            raise ProtocolError(f"{self.name}: malformed reply {text[:60]!r} ({exc})") from None


class CommandTable:
    """The commands of one instrument, by name (``table.set_voltage(ch=1, volts=0.5)``)."""

    def __init__(self, instrument: str, commands: Sequence[Command]) -> None:
        self.instrument = instrument
        self.commands: dict[str, Command] = {}
        for c in commands:
            if c.name in self.commands:
                raise ValueError(f"{instrument}: command {c.name} defined twice")
            self.commands[c.name] = c

    def __getattr__(self, name: str) -> Command:
        try:
            command: Command = self.__dict__["commands"][name]
            return command
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('instrument')}: no command {name}") from None

    def __iter__(self) -> Any:
        return iter(self.commands.values())

    def __len__(self) -> int:
        return len(self.commands)
