"""SCPI wire definitions shared by the host driver (:mod:`phasegrad_hw.backends.visa`) and the
emulated instruments (:mod:`phasegrad_hw.firmware_models.scpi`, ``.instruments``): standard
error codes and the error-queue reply format, status register bits, and the header grammar
(IEEE 488.2 §7.6.1, SCPI-1999 vol. 1 §6.2).

Header grammar (strict): a header is ``[:]node[:node…][?]`` or a common command
``*NAME[?]``; a node is a program mnemonic (letters) optionally followed by a numeric
suffix. A numeric suffix is a plain decimal integer ≥ 1 written with ASCII digits
(``SOUR2``, ``SOUR02`` = 2); it is read whole, never cut: a suffix whose value lies outside
what the node allows — including 0 and anything with more than :data:`MAX_SUFFIX_DIGITS`
significant digits — is refused with ``-114`` (Header suffix out of range). Nothing here
imports beyond the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Standard SCPI error codes (SCPI-1999 vol. 2 §21.8).
ERROR_MESSAGES: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -103: "Invalid separator",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -120: "Numeric data error",
    -121: "Invalid character in number",
    -131: "Invalid suffix",
    -141: "Invalid character data",
    -150: "String data error",
    -200: "Execution error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -300: "Device-specific error",
    -350: "Queue overflow",
    -363: "Input buffer overrun",
}

# -- status registers ------------------------------------------------------------------------
#: Event status register bits (IEEE 488.2 §11.5.1).
ESR_OPC, ESR_QYE, ESR_DDE, ESR_EXE, ESR_CME = 1, 4, 8, 16, 32
#: Status byte bits (IEEE 488.2 §11.2): error queue not empty, QUEStionable summary,
#: event status summary, request service.
STB_EAV, STB_QUES, STB_ESB, STB_RQS = 4, 8, 32, 64
#: QUEStionable bit 1: an SMU channel tripped its current compliance.
QUES_CURRENT = 2
#: QUEStionable bit 6: the oscillators slipped (were not phase-locked) during a phase read.
QUES_PHASE_UNLOCKED = 64

#: SCPI's "not a number" (SCPI-1999 vol. 1 §7.2.1.5).
SCPI_NAN = 9.91e37
ERROR_QUEUE_LENGTH = 16
#: Significant digits a numeric suffix may have (larger values are out of every range).
MAX_SUFFIX_DIGITS = 9


# -- error queue -------------------------------------------------------------------------------
def format_error(code: int, info: str = "") -> str:
    """``-222,"Data out of range;VOLT 9 outside [0, 1]"`` (quotes in info become ')."""
    text = ERROR_MESSAGES.get(code, "Error")
    if info:
        text += ";" + info.replace('"', "'").encode("ascii", "replace").decode("ascii")
    return f'{code},"{text}"'


NO_ERROR = re.compile(r'\+?0,\s*"No error.*"')
ERROR_REPLY = re.compile(r'([+-]?\d+),\s*"(.*)"')


def is_no_error(reply: str) -> bool:
    """True for the ``:SYST:ERR?`` reply of an empty error queue (``0,"No error"``)."""
    return NO_ERROR.fullmatch(reply.strip()) is not None


def parse_error(reply: str) -> tuple[int, str] | None:
    """A ``:SYST:ERR?`` reply → (code, text); None when it is not an error-queue entry."""
    m = ERROR_REPLY.fullmatch(reply.strip())
    return None if m is None else (int(m.group(1)), m.group(2))


# -- headers -----------------------------------------------------------------------------------
class HeaderError(ValueError):
    """A header the grammar refuses; ``code`` is the SCPI error code to queue."""

    def __init__(self, code: int, info: str) -> None:
        super().__init__(f"{code},{ERROR_MESSAGES.get(code, 'Error')};{info}")
        self.code = code
        self.info = info


#: ``[:]mnemonic[digits](:mnemonic[digits])*[?]`` or ``*NAME[?]`` (ASCII only).
HEADER = re.compile(r"(:?)(\*?[A-Za-z][A-Za-z0-9]*(?::[A-Za-z][A-Za-z0-9]*)*)(\?)?", re.ASCII)
_NODE = re.compile(r"([A-Za-z]+)([0-9]*)", re.ASCII)


@dataclass(frozen=True)
class Node:
    """One header node as received: upper-case mnemonic and numeric suffix (None: absent)."""

    mnemonic: str
    suffix: int | None


def parse_node(token: str) -> Node:
    """One header node (``SOUR2``, ``volt``) → :class:`Node`, strictly.

    Raises :class:`HeaderError`: ``-113`` for a node that is not letters + digits (a digit
    inside the mnemonic, e.g. ``SO2UR``), ``-114`` for a suffix 0 or with more than
    :data:`MAX_SUFFIX_DIGITS` significant digits.
    """
    m = _NODE.fullmatch(token)
    if m is None:
        raise HeaderError(-113, f"{token[:20]!r} is not mnemonic + numeric suffix")
    word, digits = m.group(1).upper(), m.group(2)
    if not digits:
        return Node(word, None)
    significant = digits.lstrip("0")
    if not significant or len(significant) > MAX_SUFFIX_DIGITS:
        raise HeaderError(-114, f"{word}{digits[:16]}: suffix must be 1…{'9' * MAX_SUFFIX_DIGITS}")
    return Node(word, int(significant))


def header_nodes(header: str) -> list[Node]:
    """A (non-common) header such as ``:SOUR2:VOLT?`` → its nodes (strict, see module doc)."""
    m = HEADER.fullmatch(header.strip())
    if m is None or m.group(2).startswith("*"):
        raise HeaderError(-102, f"{header[:24]!r} is not a SCPI header")
    return [parse_node(t) for t in m.group(2).split(":")]
