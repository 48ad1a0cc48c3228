"""A small SCPI parser and instrument base class (IEEE 488.2 / SCPI-1999 conventions).

What an emulated instrument built on :class:`ScpiInstrument` understands:

* program messages of one or more units separated by ``;`` (one line, newline-terminated);
* headers are case-insensitive and accept the short form (upper-case part of the spelling in
  the pattern, e.g. ``VOLT``) or the long form (``VOLTAGE``); optional nodes in ``[...]``;
  nodes written ``NAME#`` take a numeric suffix (``SOUR2``), default 1, read strictly by
  :func:`phasegrad_hw.wire.scpi.parse_node` (a plain decimal integer, never cut: out of
  range → ``-114``);
* an optional leading ``:`` (start at the root); a unit without a leading colon that follows
  another unit in the same message is first tried relative to the previous unit's path
  (SCPI-1999 vol. 1 §6.2.4) and then from the root — real instruments differ here, so the
  drivers in this project always send the leading colon;
* common commands ``*IDN?``, ``*RST``, ``*CLS``, ``*OPC``, ``*OPC?``, ``*WAI``, ``*ESE``,
  ``*ESE?``, ``*ESR?``, ``*STB?`` and ``SYSTem:ERRor[:NEXT]?``, ``SYSTem:ERRor:COUNt?``,
  ``SYSTem:VERSion?``, ``STATus:QUEStionable:CONDition?``, ``STATus:QUEStionable[:EVENt]?``;
* an error queue (FIFO, 16 entries; a full queue replaces its last entry with
  ``-350,"Queue overflow"``) with the standard SCPI codes (SCPI-1999 vol. 2 §21.8).

Each unit is executed on its own: a unit with an error is refused (nothing of it applied)
and queued, and the following units still run. An erroneous query gives no response, so the
response message has fewer parts than the program message had queries. Responses of several
queries in one message are joined by ``;`` and terminated by a newline.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from phasegrad_hw.wire.scpi import (
    ERROR_MESSAGES,
    ERROR_QUEUE_LENGTH,
    ESR_CME,
    ESR_DDE,
    ESR_EXE,
    ESR_OPC,
    ESR_QYE,
    HEADER,
    STB_EAV,
    STB_ESB,
    STB_QUES,
    STB_RQS,
    HeaderError,
    format_error,
    parse_node,
)

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 65536


class ScpiError(Exception):
    """A refused unit: ``code`` from :data:`ERROR_MESSAGES`, ``info`` device-dependent text."""

    def __init__(self, code: int, info: str = "") -> None:
        super().__init__(f"{code},{ERROR_MESSAGES.get(code, 'Error')}{';' + info if info else ''}")
        self.code = code
        self.info = info


# --------------------------------------------------------------------------- parameters
_BAD_CHAR = re.compile(r"[^\x20-\x7e\t\r]")
_SPLIT_OUTSIDE_PARENS = {sep: re.compile(re.escape(sep) + r"(?![^()]*\))") for sep in ";,"}
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_CHANNEL_LIST = re.compile(r"\(\s*@([^()]*)\)")


def number(text: str, name: str, lo: float, hi: float) -> float:
    """Parse NRf decimal data and check it lies in [lo, hi] (else -222, naming the range)."""
    t = text.strip()
    if not t:
        raise ScpiError(-109, name)
    if not _NUMBER.fullmatch(t):
        if re.fullmatch(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z]+", t):
            raise ScpiError(-131, f"{name} {t!r}")
        if t[0] in "+-.0123456789":
            raise ScpiError(-121, f"{name} {t!r}")
        raise ScpiError(-104, f"{name} needs a number, got {t[:20]!r}")
    x = float(t)
    if not math.isfinite(x) or not lo <= x <= hi:
        raise ScpiError(-222, f"{name} {t} outside [{lo:g}, {hi:g}]")
    return x


def integer(text: str, name: str, lo: int, hi: int) -> int:
    """Parse NR1 integer data in [lo, hi]."""
    x = number(text, name, lo, hi)
    if x != int(x):
        raise ScpiError(-224, f"{name} {text.strip()} is not an integer")
    return int(x)


def boolean(text: str, name: str) -> bool:
    """``ON``/``OFF``/``1``/``0`` (case-insensitive)."""
    t = text.strip().upper()
    if t in ("ON", "1"):
        return True
    if t in ("OFF", "0"):
        return False
    if not t:
        raise ScpiError(-109, name)
    raise ScpiError(-224, f"{name} needs ON|OFF|1|0, got {text.strip()[:20]!r}")


def choice(text: str, name: str, options: dict[str, str]) -> str:
    """Character data matched against short/long forms, e.g. ``{"CENT": "CENTERED"}``."""
    t = text.strip().upper()
    for short, long_ in options.items():
        if t in (short, long_):
            return short
    if not t:
        raise ScpiError(-109, name)
    allowed = "|".join(options)
    raise ScpiError(-224, f"{name} needs {allowed}, got {text.strip()[:20]!r}")


def channel_list(text: str, name: str, lo: int, hi: int) -> list[int]:
    """A channel list ``(@1,3,5:8)`` (ranges inclusive, either order) → channel numbers."""
    return list(_channel_list(text, name, lo, hi))


@functools.lru_cache(maxsize=256)
def _channel_list(text: str, name: str, lo: int, hi: int) -> tuple[int, ...]:
    m = _CHANNEL_LIST.fullmatch(text.strip())
    if not m:
        raise ScpiError(
            -104, f"{name} needs a channel list like (@1,2:4), got {text.strip()[:20]!r}"
        )
    out: list[int] = []
    for item in m.group(1).split(","):
        a, sep, b = item.strip().partition(":")
        if not re.fullmatch(r"\d{1,6}", a) or (sep and not re.fullmatch(r"\d{1,6}", b.strip())):
            raise ScpiError(-224, f"{name} item {item.strip()[:20]!r} is not n or n:m")
        first, last = int(a), int(b) if sep else int(a)
        step = 1 if last >= first else -1
        for c in range(first, last + step, step):
            if not lo <= c <= hi:
                raise ScpiError(-222, f"{name} channel {c} outside {lo}..{hi}")
            out.append(c)
            if len(out) > 4096:
                raise ScpiError(-224, f"{name} lists more than 4096 channels")
    return tuple(out)


def format_float(x: float) -> str:
    """Decimal response with round-trip precision (``%.17g``); NaN → 9.91E+37."""
    return "9.91E+37" if not math.isfinite(x) else format(float(x), ".17g")


# --------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    suffix: bool
    optional: bool


def _parse_pattern(pattern: str) -> list[_Node]:
    """``"[:SOURce#]:VOLTage[:LEVel]"`` → nodes."""
    nodes: list[_Node] = []
    for m in re.finditer(r"(\[)?:?([A-Za-z]+)(#)?\]?", pattern.lstrip(":")):
        word = m.group(2)
        short = "".join(ch for ch in word if ch.isupper())
        nodes.append(_Node(short, word.upper(), bool(m.group(3)), bool(m.group(1))))
    if not nodes:
        raise ValueError(f"empty SCPI pattern {pattern!r}")
    return nodes


Handler = Callable[["Call"], "str | None | Awaitable[str | None]"]


@dataclass
class Call:
    """One parsed unit: numeric header suffixes (in pattern order), parameters, query flag."""

    header: str
    suffixes: tuple[int, ...]
    params: list[str]
    query: bool

    def suffix(self, index: int = 0) -> int:
        return self.suffixes[index]

    def no_params(self) -> None:
        if self.params:
            raise ScpiError(-108, f"{self.header} takes no parameter")

    def one_param(self) -> str:
        if not self.params:
            raise ScpiError(-109, f"{self.header} needs a parameter")
        if len(self.params) > 1:
            raise ScpiError(-108, f"{self.header} takes one parameter")
        return self.params[0]


@dataclass
class _Entry:
    nodes: list[_Node]
    set: Handler | None
    query: Handler | None
    suffix_max: int


@dataclass
class _Parsed:
    rooted: bool
    common: bool
    tokens: list[str]
    query: bool
    params: list[str]


def _split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside quotes and parentheses."""
    if '"' not in text and "'" not in text:
        if "(" not in text:
            return text.split(sep)  # fast path: nothing to protect
        return _SPLIT_OUTSIDE_PARENS[sep].split(text)
    parts: list[str] = []
    depth = 0
    quote = ""
    cur: list[str] = []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    if quote:
        raise ScpiError(-150, "unterminated string")
    return parts


def _parse_unit(unit: str) -> _Parsed:
    s = unit.strip(" \t\r")
    m = HEADER.match(s)
    if not m:
        if s.startswith(":") and s[1:2] in ("", ":", " "):
            raise ScpiError(-102, f"empty header in {s[:20]!r}")
        raise ScpiError(-113 if s[:1].isalpha() or s[:1] in ":*" else -102, f"{s[:20]!r}")
    rest = s[m.end() :]
    if rest and rest[0] not in " \t":
        if rest[0] == ":":
            raise ScpiError(-102, f"bad header {s[:24]!r}")
        raise ScpiError(-102, f"unexpected {rest[0]!r} after header {m.group(2)[:20]!r}")
    header = m.group(2)
    common = header.startswith("*")
    if common and ":" in header:
        raise ScpiError(-113, header[:20])
    params: list[str] = []
    rest = rest.strip(" \t")
    if rest:
        params = [p.strip(" \t") for p in _split_top(rest, ",")]
        if any(not p for p in params):
            raise ScpiError(-103, "empty parameter")
    tokens = [header.upper()] if common else header.upper().split(":")
    return _Parsed(bool(m.group(1)), common, tokens, bool(m.group(3)), params)


# --------------------------------------------------------------------------- instrument
@dataclass
class ErrorQueue:
    """FIFO of (code, info); full → the last entry becomes -350 Queue overflow."""

    capacity: int = ERROR_QUEUE_LENGTH
    items: deque[tuple[int, str]] = field(default_factory=deque)

    def push(self, code: int, info: str = "") -> None:
        if len(self.items) < self.capacity:
            self.items.append((code, info))
        else:
            self.items[-1] = (-350, "")

    def pop(self) -> tuple[int, str]:
        return self.items.popleft() if self.items else (0, "")

    def clear(self) -> None:
        self.items.clear()

    def __len__(self) -> int:
        return len(self.items)


class ScpiInstrument:
    """Base class: a command table, an error queue, status registers, common commands.

    Subclasses call :meth:`add` for their commands in ``__init__`` and may override
    :meth:`reset` (``*RST``) and :meth:`questionable` (the QUEStionable condition register).
    """

    manufacturer = "PHASEGRAD-HW"
    model_name = "EMULATED"
    serial = "0"
    firmware = "1.0"

    def __init__(self) -> None:
        self.errors = ErrorQueue()
        self.esr = 0
        self.ese = 0
        self.ques_event = 0
        self._table: dict[tuple[str, ...], _Entry] = {}
        self._vocabulary: dict[str, str] = {}
        self._cache: dict[tuple[str, ...], tuple[_Entry, tuple[int, ...]] | None] = {}
        self.add("SYSTem:ERRor[:NEXT]", query=self._q_error)
        self.add("SYSTem:ERRor:COUNt", query=lambda c: str(len(self.errors)))
        self.add("SYSTem:VERSion", query=lambda c: "1999.0")
        self.add("STATus:QUEStionable:CONDition", query=lambda c: str(self.questionable()))
        self.add("STATus:QUEStionable[:EVENt]", query=self._q_ques_event)

    # -- registration ------------------------------------------------------------
    def add(
        self,
        pattern: str,
        *,
        set: Handler | None = None,
        query: Handler | None = None,
        suffix_max: int = 1,
    ) -> None:
        """Register a header pattern with a setter and/or a query handler.

        ``suffix_max`` bounds every numeric suffix in the pattern (1…suffix_max, else -114).
        """
        nodes = _parse_pattern(pattern)
        self._cache.clear()
        entry = _Entry(nodes, set, query, suffix_max)
        optional = [i for i, n in enumerate(nodes) if n.optional]
        for keep in itertools.product((True, False), repeat=len(optional)):
            dropped = {i for i, k in zip(optional, keep, strict=True) if not k}
            key = tuple(n.short for i, n in enumerate(nodes) if i not in dropped)
            self._table[key] = entry
        for n in nodes:
            self._vocabulary[n.short] = n.short
            self._vocabulary[n.long] = n.short

    # -- hooks ------------------------------------------------------------------
    def reset(self) -> None:
        """``*RST``: the instrument's defined reset state."""

    def questionable(self) -> int:
        """QUEStionable condition register (SCPI-1999 vol. 1 §9.4)."""
        return 0

    def identity(self) -> str:
        return f"{self.manufacturer},{self.model_name},{self.serial},{self.firmware}"

    # -- errors --------------------------------------------------------------------
    def push_error(self, code: int, info: str = "") -> None:
        self.errors.push(code, info)
        if -199 <= code <= -100:
            self.esr |= ESR_CME
        elif -299 <= code <= -200:
            self.esr |= ESR_EXE
        elif -399 <= code <= -300:
            self.esr |= ESR_DDE
        elif -499 <= code <= -400:
            self.esr |= ESR_QYE
        log.debug("%s: error %s", self.model_name, format_error(code, info))

    def _q_error(self, call: Call) -> str:
        return format_error(*self.errors.pop())

    def _q_ques_event(self, call: Call) -> str:
        value = self.ques_event | self.questionable()
        self.ques_event = 0
        return str(value)

    # -- execution -------------------------------------------------------------------
    def _common(self, p: _Parsed) -> str | None:
        name = p.tokens[0]
        call = Call(name, (), p.params, p.query)
        if name == "*IDN" and p.query:
            call.no_params()
            return self.identity()
        if name == "*RST" and not p.query:
            call.no_params()
            self.reset()
            return None
        if name == "*CLS" and not p.query:
            call.no_params()
            self.errors.clear()
            self.esr = 0
            self.ques_event = 0
            return None
        if name == "*OPC":
            call.no_params()
            if p.query:
                return "1"
            self.esr |= ESR_OPC
            return None
        if name == "*WAI" and not p.query:
            call.no_params()
            return None
        if name == "*ESE":
            if p.query:
                call.no_params()
                return str(self.ese)
            self.ese = integer(call.one_param(), "*ESE", 0, 255)
            return None
        if name == "*ESR" and p.query:
            call.no_params()
            value, self.esr = self.esr, 0
            return str(value)
        if name == "*STB" and p.query:
            call.no_params()
            stb = (STB_EAV if len(self.errors) else 0) | (STB_QUES if self.questionable() else 0)
            stb |= STB_ESB if self.esr & self.ese else 0
            return str(stb | (STB_RQS if stb else 0))
        raise ScpiError(-113, name + ("?" if p.query else ""))

    def _lookup(self, tokens: list[str]) -> tuple[_Entry, tuple[int, ...]] | None:
        key = tuple(tokens)
        if key in self._cache:
            return self._cache[key]
        found = self._lookup_uncached(tokens)
        if len(self._cache) < 4096:
            self._cache[key] = found
        return found

    def _lookup_uncached(self, tokens: list[str]) -> tuple[_Entry, tuple[int, ...]] | None:
        names: list[str] = []
        suffixes: list[int | None] = []
        for tok in tokens:
            try:
                node = parse_node(tok)
            except HeaderError as exc:
                raise ScpiError(exc.code, exc.info) from None
            if node.mnemonic not in self._vocabulary:
                return None
            names.append(self._vocabulary[node.mnemonic])
            suffixes.append(node.suffix)
        entry = self._table.get(tuple(names))
        if entry is None:
            return None
        by_name = dict(zip(names, suffixes, strict=True))
        values: list[int] = []
        for n in entry.nodes:
            given = by_name.get(n.short)
            if given is not None and not n.suffix:
                raise ScpiError(-114, f"{n.short}{given} takes no suffix")
            if n.suffix:
                v = 1 if given is None else given
                if not 1 <= v <= entry.suffix_max:
                    raise ScpiError(-114, f"{n.short}{v} (allowed 1..{entry.suffix_max})")
                values.append(v)
        return entry, tuple(values)

    async def execute(self, line: str) -> str | None:
        """Run one program message (without its terminator); the response message or None."""
        if len(line) > MAX_LINE_BYTES:
            self.push_error(-363, f"message longer than {MAX_LINE_BYTES} bytes")
            return None
        bad = _BAD_CHAR.search(line)
        if bad is not None:
            self.push_error(-101, f"byte 0x{ord(bad.group()):02X}")
            return None
        if not line.strip(" \t\r"):
            return None
        try:
            units = _split_top(line, ";")
        except ScpiError as exc:
            self.push_error(exc.code, exc.info)
            return None
        responses: list[str] = []
        path: list[str] = []
        for index, unit in enumerate(units):
            if not unit.strip(" \t\r"):
                if index == len(units) - 1 and index > 0:
                    break  # a trailing ';' is tolerated
                self.push_error(-102, "empty command")
                continue
            try:
                reply, path = await self._execute_unit(unit, path)
            except ScpiError as exc:
                self.push_error(exc.code, exc.info)
                continue
            except Exception as exc:  # a bug must not kill the instrument
                log.exception("%s: internal error on %r", self.model_name, unit)
                self.push_error(-300, f"internal: {type(exc).__name__}")
                continue
            if reply is not None:
                responses.append(reply)
        return ";".join(responses) if responses else None

    async def _execute_unit(self, unit: str, path: list[str]) -> tuple[str | None, list[str]]:
        p = _parse_unit(unit)
        if p.common:
            return self._common(p), path
        found = None
        tokens = p.tokens
        if not p.rooted and path:
            found = self._lookup(path + p.tokens)
            if found is not None:
                tokens = path + p.tokens
        if found is None:
            found = self._lookup(p.tokens)
        if found is None:
            raise ScpiError(-113, ":".join(p.tokens)[:32] + ("?" if p.query else ""))
        entry, suffixes = found
        handler = entry.query if p.query else entry.set
        if handler is None:
            raise ScpiError(
                -113,
                f"{':'.join(p.tokens)[:32]}{'?' if p.query else ''} "
                f"({'no query form' if p.query else 'query only'})",
            )
        call = Call(":".join(tokens), suffixes, p.params, p.query)
        result = handler(call)
        if result is not None and not isinstance(result, str) and inspect.isawaitable(result):
            result = await result
        return result, tokens[:-1]
