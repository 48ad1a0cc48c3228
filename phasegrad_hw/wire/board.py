"""Line protocol of the phasegrad controller board (docs/protocol.md), shared by the emulated
firmware (:mod:`phasegrad_hw.firmware_models.board`) and the host driver
(:mod:`phasegrad_hw.backends.serial`).

One ASCII line per message, terminated by ``\\n`` (a trailing ``\\r`` is ignored)::

    request   <seq> <CMD> [arg ...]*<crc>
    reply     <seq> OK [value ...]*<crc>
              <seq> ERR <code> <text>*<crc>
    banner    ! BOOT <fields>*<crc>          (unsolicited, after every (re)boot)

``seq`` is a decimal integer 0…65535 chosen by the host and echoed by the board; a reply
to a line whose sequence number cannot be trusted (bad checksum, unparsable) carries ``-``.
``crc`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF; ``binascii.crc_hqx``) over every
byte before the ``*``, as exactly four upper-case hex digits. Floats are written with
Python's shortest round-trip ``repr``, so a float64 crosses the wire bit-exactly.

Parsing is strict (docs/protocol.md, "Numbers"): the trailer must match ``[0-9A-F]{4}``
(``*0x92``, ``* 077``, ``*8_66``, ``*92ab`` are MALFORMED); sequence numbers and integers
are ASCII decimal digits with an optional sign (no ``_``, no whitespace, no other digit
scripts); floats are decimal literals ``[+-]digits[.digits][e[+-]digits]`` — none of
Python's extras (``0_1``, ``1e5_0``, ``inf``, ``nan``, ``infinity``, surrounding spaces).
"""

from __future__ import annotations

import binascii
import math
import re
from dataclasses import dataclass
from enum import IntEnum

MAX_LINE = 4096  # bytes; longer lines are discarded up to the next newline (ERR LINE_TOO_LONG)
SEQ_MOD = 65536
UNSOLICITED = "!"
UNTRUSTED = "-"

_CRC = re.compile(rb"[0-9A-F]{4}")
_SEQ = re.compile(r"[0-9]{1,5}")
_INT = re.compile(r"[+-]?[0-9]{1,12}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class ErrorCode(IntEnum):
    """Numbered error replies (``<seq> ERR <code> <text>``)."""

    CHECKSUM = 1  # the line's CRC does not match (line noise): the host should retry
    MALFORMED = 2  # no '*', bad sequence number, non-ASCII bytes: the host should retry
    UNKNOWN_COMMAND = 3
    ARG_COUNT = 4
    BAD_NUMBER = 5
    OUT_OF_RANGE = 6  # refused, nothing applied
    UNSUPPORTED = 7  # the chip behind this board cannot do it
    LINE_TOO_LONG = 8
    CHIP = 9  # the chip reported a failure
    INTERNAL = 10


#: codes after which resending the same command may succeed (transport damage, not refusal)
RETRYABLE = frozenset({ErrorCode.CHECKSUM, ErrorCode.MALFORMED, ErrorCode.LINE_TOO_LONG})


class FrameError(ValueError):
    """A line that is not a valid frame; ``code`` says why."""

    def __init__(self, code: ErrorCode, text: str, seq: str = UNTRUSTED) -> None:
        super().__init__(f"{code.name}: {text}")
        self.code = code
        self.text = text
        self.seq = seq


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (check value 0x29B1 for b'123456789')."""
    return binascii.crc_hqx(data, 0xFFFF)


def frame(body: str) -> bytes:
    """``body`` → ``body*CRC\\n`` (ASCII)."""
    raw = body.encode("ascii")
    return raw + b"*%04X\n" % crc16(raw)


def unframe(line: bytes) -> str:
    """Check and strip the checksum of one line (without its ``\\n``); returns the body.

    Raises :class:`FrameError` (MALFORMED or CHECKSUM) with the sequence number left
    untrusted.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    star = line.rfind(b"*")
    if star < 0 or len(line) - star != 5:
        raise FrameError(ErrorCode.MALFORMED, "missing *CRC16 trailer")
    body, tail = line[:star], line[star + 1 :]
    if _CRC.fullmatch(tail) is None:
        raise FrameError(ErrorCode.MALFORMED, "CRC trailer is not 4 upper-case hex digits")
    want = int(tail, 16)
    if crc16(body) != want:
        raise FrameError(ErrorCode.CHECKSUM, f"CRC mismatch (got {want:04X})")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise FrameError(ErrorCode.MALFORMED, "non-ASCII bytes") from None
    if not text.isprintable():
        raise FrameError(ErrorCode.MALFORMED, "control characters in line")
    return text


@dataclass(frozen=True)
class Request:
    seq: int
    cmd: str
    args: tuple[str, ...]

    def encode(self) -> bytes:
        return frame(" ".join((str(self.seq), self.cmd, *self.args)))


def parse_request(line: bytes) -> Request:
    """Decode one request line (without ``\\n``); raises :class:`FrameError`."""
    text = unframe(line)
    parts = text.split()
    if len(parts) < 2:
        raise FrameError(ErrorCode.MALFORMED, "need '<seq> <command>'")
    if _SEQ.fullmatch(parts[0]) is None or int(parts[0]) >= SEQ_MOD:
        raise FrameError(
            ErrorCode.MALFORMED, f"sequence number {parts[0][:12]!r} not in 0…{SEQ_MOD - 1}"
        )
    return Request(int(parts[0]), parts[1].upper(), tuple(parts[2:]))


@dataclass(frozen=True)
class Reply:
    """A decoded reply: ``seq`` is an int, or the string ``'-'`` / ``'!'``."""

    seq: int | str
    ok: bool
    fields: tuple[str, ...]  # values after OK, or for ERR: (code, text words...)
    banner: bool = False

    @property
    def code(self) -> ErrorCode | None:
        if self.ok or self.banner:
            return None
        try:
            return ErrorCode(parse_int(self.fields[0], "code"))
        except (IndexError, ValueError):
            return ErrorCode.INTERNAL

    @property
    def error(self) -> str:
        """``ERR <code> <text>`` as received (for messages)."""
        return "ERR " + " ".join(self.fields)

    @property
    def text(self) -> str:
        return " ".join(self.fields[1:]) if not self.ok else " ".join(self.fields)


def parse_reply(line: bytes) -> Reply:
    """Decode one reply line (without ``\\n``); raises :class:`FrameError` on damage."""
    text = unframe(line)
    parts = text.split()
    if len(parts) < 2:
        raise FrameError(ErrorCode.MALFORMED, "reply too short")
    seq_s, kind = parts[0], parts[1]
    seq: int | str
    if seq_s in (UNTRUSTED, UNSOLICITED):
        seq = seq_s
    elif _SEQ.fullmatch(seq_s) is not None and int(seq_s) < SEQ_MOD:
        seq = int(seq_s)
    else:
        raise FrameError(ErrorCode.MALFORMED, f"bad sequence number {seq_s[:12]!r}")
    if seq_s == UNSOLICITED:
        return Reply(seq, True, tuple(parts[1:]), banner=kind == "BOOT")
    if kind == "OK":
        return Reply(seq, True, tuple(parts[2:]))
    if kind == "ERR":
        return Reply(seq, False, tuple(parts[2:]))
    raise FrameError(ErrorCode.MALFORMED, f"reply kind {kind[:12]!r} is neither OK nor ERR")


_ASCII = str.maketrans({"…": "...", "–": "-", "—": "-", "−": "-", "≤": "<=", "≥": ">="})


def ok_reply(seq: int | str, *values: str) -> bytes:
    return frame(" ".join((str(seq), "OK", *values)))


def err_reply(seq: int | str, code: ErrorCode, text: str) -> bytes:
    text = text.translate(_ASCII)
    clean = "".join(c if c.isprintable() and c.isascii() else "?" for c in text)[:200]
    return frame(f"{seq} ERR {int(code)} {clean}")


def fmt_float(x: float) -> str:
    """Shortest string that reads back to the same float64 (bit-exact round trip)."""
    return repr(float(x))


def parse_float(s: str, what: str) -> float:
    """A finite decimal float literal (see the module doc), or :class:`FrameError`
    BAD_NUMBER naming ``what``."""
    if _FLOAT.fullmatch(s) is None:
        try:
            special = not math.isfinite(float(s))  # Python's nan/inf spellings
        except ValueError:
            special = False
        why = "is not finite" if special else "is not a number"
        raise FrameError(ErrorCode.BAD_NUMBER, f"{what}: {s[:24]!r} {why}")
    v = float(s)
    if not math.isfinite(v):  # an exponent too large for a double
        raise FrameError(ErrorCode.BAD_NUMBER, f"{what}: {s[:24]!r} is not finite")
    return v


def parse_int(s: str, what: str) -> int:
    """A decimal integer (optional sign, at most 12 ASCII digits), or :class:`FrameError`
    BAD_NUMBER."""
    if _INT.fullmatch(s) is None:
        raise FrameError(ErrorCode.BAD_NUMBER, f"{what}: {s[:24]!r} is not an integer")
    return int(s)


class LineSplitter:
    """Byte stream → complete lines, discarding overlong lines up to the next newline.

    ``feed`` returns the complete lines (without ``\\n``); an overlong line is returned as
    ``None`` once (so the firmware can answer LINE_TOO_LONG), its remainder is dropped.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                chunk = data[start:]
                if not self._discarding:
                    self._buf += chunk
                    if len(self._buf) > self.max_line:
                        self._buf.clear()
                        self._discarding = True
                        out.append(None)
                return out
            chunk = data[start:nl]
            start = nl + 1
            if self._discarding:
                self._discarding = False
                continue
            self._buf += chunk
            if len(self._buf) > self.max_line:
                out.append(None)
            else:
                out.append(bytes(self._buf))
            self._buf.clear()

    def reset(self) -> None:
        self._buf.clear()
        self._discarding = False
