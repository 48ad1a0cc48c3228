"""The link layer of the board driver (docs/protocol.md): a byte stream to the controller
board (serial port, pty, TCP through pyserial — or an in-memory stream in tests) and the
exchange protocol over it: framing and sequence numbers, confirmation in order, retry with a
``PING`` resynchronisation barrier, reconnect, and reboot detection (boot banner, boot id).

:class:`BoardLink` is blocking (the substrate runs it in a worker thread). It moves command
lines — ``"W 0.1 0.2"`` as produced by the command table (:mod:`.board_commands`) — and
returns the :class:`~phasegrad_hw.wire.board.Reply` of each.
"""

from __future__ import annotations

import itertools
import logging
import select
import time
from collections.abc import Callable
from typing import Any, Protocol

from phasegrad_hw.errors import DeviceError, DeviceTimeoutError, LimitError, ProtocolError
from phasegrad_hw.wire.board import (
    MAX_LINE,
    RETRYABLE,
    SEQ_MOD,
    UNTRUSTED,
    ErrorCode,
    FrameError,
    Reply,
    Request,
    parse_reply,
)

log = logging.getLogger(__name__)


class ByteStream(Protocol):
    """A bidirectional byte stream (blocking). ``read`` returns what arrived within
    ``timeout_s`` (``b""`` if nothing) and raises :class:`OSError` when the link is closed."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    def read(self, timeout_s: float) -> bytes: ...
    def reset_input(self) -> None: ...


class PyserialStream:
    """A pyserial port (``serial.serial_for_url``: device path, pty, ``socket://``,
    ``rfc2217://``…). Ports with a file descriptor are waited on with ``select``; others
    (Windows COM ports, ``loop://``) are polled every 2 ms.

    A device port is opened locked (pyserial ``exclusive``: ``flock``), so a second host —
    another process, or another driver here — cannot open it meanwhile and read our replies
    or write into the board (``TIOCEXCL`` would not stop one running as root). Opening a
    port another host holds is retried like an absent port, for ``open_s``."""

    def __init__(self, url: str, *, baudrate: int, write_timeout_s: float, open_s: float) -> None:
        self.url = url
        self.baudrate = baudrate
        self.write_timeout_s = write_timeout_s
        self.open_s = open_s
        self.port: Any = None
        self.fd: int | None = None

    def open(self) -> None:
        import serial  # pyserial; imported lazily

        deadline = time.monotonic() + self.open_s
        while True:
            try:
                port = serial.serial_for_url(
                    self.url,
                    baudrate=self.baudrate,
                    timeout=0,
                    write_timeout=self.write_timeout_s,
                    exclusive=True,
                )
                break
            except (serial.SerialException, OSError, ValueError) as exc:
                if time.monotonic() >= deadline:
                    raise DeviceTimeoutError(
                        f"board at {self.url}: cannot open the port ({exc})"
                    ) from None
                time.sleep(0.05)
        try:
            self.fd = int(port.fileno())
        except (AttributeError, OSError, ValueError):
            self.poll()
            port.timeout = 0.002
        self.port = port

    def poll(self) -> None:
        """Wait by polling instead of ``select`` (ports without a selectable descriptor)."""
        self.fd = None
        if self.port is not None:
            self.port.timeout = 0.002

    def close(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            try:
                port.close()
            except Exception:  # a dead link may fail to close cleanly
                log.debug("closing %s failed", self.url, exc_info=True)

    def write(self, data: bytes) -> None:
        if self.port is None:
            raise OSError("port closed")
        self.port.write(data)

    def read(self, timeout_s: float) -> bytes:
        if self.port is None:
            raise OSError("port closed")
        if self.fd is None:
            data: bytes = self.port.read(max(1, self.port.in_waiting))
            return data
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout_s))
        if not ready:
            return b""
        data = self.port.read(65536)
        if not data:
            raise OSError("link closed by the board")
        return data

    def reset_input(self) -> None:
        if self.port is not None:
            self.port.reset_input_buffer()


class _Retry(Exception):
    """Internal: this attempt failed in a way another attempt may fix."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


def serial_of(reply: Reply) -> str:
    """The ``sn=<serial>`` field of an ``ID?`` reply (``""`` when the board sends none)."""
    return next((f[3:] for f in reply.fields if f.startswith("sn=")), "")


def boot_of(reply: Reply) -> int:
    """The ``boot=<id>`` field of an ``ID?`` or ``R`` reply."""
    for f in reply.fields:
        if f.startswith("boot="):
            digits = f[5:]
            if digits.isascii() and digits.isdigit():
                return int(digits)
    raise ProtocolError(f"reply {' '.join(reply.fields)!r} carries no boot id")


class BoardLink:
    """Exchanges with the board over ``stream`` (blocking; see docs/protocol.md, "Host driver
    behaviour"). ``restore`` gives the confirmed setpoint lines to re-send after a reboot.

    ``stats`` counts exchanges, retries, stale and damaged replies, reconnects and reboots.

    ``serial`` is the serial number of the first ``ID?`` reply (:meth:`identified`); every new
    link must lead to that board again — a port reopened onto another board (re-cabled, or a
    pty path now served by someone else) is closed and refused with :class:`DeviceError`,
    before anything but ``ID?`` is sent to it.
    """

    def __init__(
        self,
        stream: ByteStream,
        *,
        name: str,
        timeout_s: float,
        retries: int,
        first_seq: int | None = None,
    ) -> None:
        self.stream = stream
        self.name = name
        self.timeout_s = timeout_s
        self.retries = retries
        start = int(time.time() * 1000) % SEQ_MOD if first_seq is None else first_seq
        self._seq = itertools.count(start)
        self._rx = bytearray()
        self.is_open = False
        self.boot_id: int | None = None
        self.serial: str | None = None
        self.need_restore = False
        self.restore: Callable[[], list[str]] = list
        self._last_link_error = ""
        self.stats = {
            "exchanges": 0,
            "retries": 0,
            "stale": 0,
            "damaged": 0,
            "reconnects": 0,
            "reboots": 0,
        }

    # -- stream ---------------------------------------------------------------------------
    def open(self) -> None:
        self.stream.open()
        self.is_open = True
        self._rx.clear()

    def close(self) -> None:
        self.is_open = False
        self.stream.close()

    def _resync(self) -> None:
        """Discard everything received so far (replies that will still come are stale)."""
        self._rx.clear()
        if self.is_open:
            try:
                self.stream.reset_input()
            except Exception:
                self.close()

    def _readline(self, deadline: float) -> bytes:
        while True:
            nl = self._rx.find(b"\n")
            if nl >= 0:
                line = bytes(self._rx[:nl])
                del self._rx[: nl + 1]
                return line
            if len(self._rx) > 4 * MAX_LINE:  # no newline in sight: noise, not a reply
                self._rx.clear()
                self.stats["damaged"] += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Retry("no reply within the timeout", timeout=True)
            self._rx += self.stream.read(left)

    def _next_seq(self) -> int:
        return next(self._seq) % SEQ_MOD

    # -- one exchange -----------------------------------------------------------------------
    def exchange(self, lines: list[str]) -> list[Reply | None]:
        """Send ``lines`` in one write; collect their replies by sequence number.

        Returns one entry per line, ``None`` where no usable reply came (lost, damaged, or a
        retryable error). Stops waiting once every request is accounted for (answered or
        matched by a damaged line), or when ``timeout_s`` passes without a valid reply.
        Raises :class:`_Retry` when the board rebooted (nothing of this exchange counts).
        """
        reqs = []
        for text in lines:
            cmd, *args = text.split(" ")
            reqs.append(Request(self._next_seq(), cmd, tuple(args)))
        want = {r.seq: i for i, r in enumerate(reqs)}
        out: list[Reply | None] = [None] * len(reqs)
        deadline = time.monotonic() + self.timeout_s
        pending, lost = len(reqs), 0
        try:
            self.stream.write(b"".join(r.encode() for r in reqs))
        except (OSError, ValueError) as exc:  # SerialException is an OSError
            self._link_lost(exc)
            return out
        while pending > lost:
            try:
                line = self._readline(deadline)
            except _Retry:
                break
            except (OSError, ValueError) as exc:
                self._link_lost(exc)
                break
            if not line.strip(b"\r"):
                continue
            try:
                rep = parse_reply(line)
            except FrameError as exc:
                self.stats["damaged"] += 1
                lost += 1
                log.debug("damaged reply line (%s)", exc)
                continue
            if rep.banner:
                self.stats["reboots"] += 1
                self.need_restore = True
                raise _Retry(f"board rebooted ({' '.join(rep.fields)})")
            if rep.seq == UNTRUSTED:  # the board could not read one of our lines
                self.stats["damaged"] += 1
                lost += 1
                continue
            idx = want.get(rep.seq) if isinstance(rep.seq, int) else None
            if idx is None or out[idx] is not None:
                self.stats["stale"] += 1
                log.debug("discarding stale reply seq=%s", rep.seq)
                continue
            pending -= 1
            deadline = time.monotonic() + self.timeout_s
            if not rep.ok and rep.code in RETRYABLE:
                continue  # our request arrived damaged: resend it
            if rep.ok and reqs[idx].cmd == "R":
                boot = boot_of(rep)
                if boot != self.boot_id:
                    self.stats["reboots"] += 1
                    self.need_restore = True
                    raise _Retry(f"reading from boot {boot}, not {self.boot_id} (board reset)")
            out[idx] = rep
        return out

    def _link_lost(self, exc: BaseException) -> None:
        log.info("board %s: link lost (%s)", self.name, exc)
        self._last_link_error = str(exc)
        self.close()

    def refused(self, line: str, rep: Reply) -> Exception:
        cmd = line.split(" ", 1)[0]
        text = f"board at {self.name} refused {cmd}: {rep.error}"
        return LimitError(text) if rep.code == ErrorCode.OUT_OF_RANGE else DeviceError(text)

    def _sync(self) -> None:
        """Barrier after a failed attempt: a ``PING`` with a fresh sequence number, reading
        (and discarding) everything up to its reply. The board works through its input in
        order, so afterwards nothing of earlier attempts is still queued on either side —
        retries cannot pile up behind a slow board. The deadline is extended while stale
        replies keep arriving (the board is busy, not gone)."""
        self._resync()
        token = self._next_seq()
        self.stream.write(Request(token, "PING", ()).encode())
        deadline = time.monotonic() + self.timeout_s
        while True:
            line = self._readline(deadline)
            try:
                rep = parse_reply(line)
            except FrameError:
                continue
            if rep.banner:
                self.stats["reboots"] += 1
                self.need_restore = True
            elif rep.seq == token:
                return
            self.stats["stale"] += 1
            deadline = time.monotonic() + self.timeout_s

    def identified(self, rep: Reply) -> int:
        """Check an ``ID?`` reply against the board of this link; returns its boot id.

        The first identification learns the serial number; a later one with another serial
        number is another board: the link is closed and :class:`DeviceError` raised."""
        sn = serial_of(rep)
        if self.serial is None:
            self.serial = sn
        elif sn != self.serial:
            self.close()
            raise DeviceError(
                f"board at {self.name}: another board answers on this port (sn={sn or '?'}, "
                f"expected sn={self.serial or '?'}); refusing it — was the port re-cabled, or "
                "its path reused for another board?"
            )
        return boot_of(rep)

    def _check_boot(self) -> None:
        """``ID?`` on a fresh link: the same board (serial number), and a changed boot id
        means it rebooted meanwhile."""
        rep = self.exchange(["ID?"])[0]
        if rep is None or not rep.ok:
            raise _Retry("no identification on the new link", timeout=rep is None)
        boot = self.identified(rep)
        if self.boot_id is not None and boot != self.boot_id:
            self.stats["reboots"] += 1
            self.need_restore = True
        self.boot_id = boot

    def _restore(self) -> None:
        """After a reboot or reconnect: learn the new boot id, re-send confirmed setpoints."""
        lines = ["ID?", *self.restore()]
        replies = self.exchange(lines)
        for line, rep in zip(lines, replies, strict=True):
            if rep is None:
                raise _Retry("incomplete replies while restoring state")
            if not rep.ok:
                raise self.refused(line, rep)
        assert replies[0] is not None
        self.boot_id = self.identified(replies[0])
        self.need_restore = False
        log.info("board %s: state restored (boot %d)", self.name, self.boot_id)

    def transact(self, lines: list[str], *, restore: bool = True) -> list[Reply]:
        """One exchange with retries, resync, reconnect and state restore (blocking).

        Replies are confirmed in order: after a partial exchange, the lines up to the first
        missing reply stand (the board executes in order) and the rest is resent. A refusal
        anywhere in the confirmed part ends the exchange with its error, so no reading taken
        after a refused setpoint is ever returned.
        """
        self.stats["exchanges"] += 1
        problem = ""
        timeouts_only = True
        done: list[Reply] = []
        todo = lines
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                log.debug("board %s: retry %d (%s)", self.name, attempt, problem)
            damaged = self.stats["damaged"]
            try:
                if not self.is_open:
                    self.stats["reconnects"] += 1
                    self.open()
                    self._check_boot()  # a new link: did the board keep its state?
                elif attempt:
                    self._sync()
                if self.need_restore:
                    done, todo = [], lines  # nothing confirmed before a reboot counts
                    if restore:
                        self._restore()
                    else:
                        self.need_restore = False
                out = self.exchange(todo)
            except _Retry as exc:
                problem = str(exc)
                timeouts_only &= exc.timeout and self.stats["damaged"] == damaged
                if self.need_restore:
                    done, todo = [], lines
                self._resync()
                continue
            except (OSError, ValueError) as exc:  # reopening failed, or the link died again
                problem = f"link lost ({exc})"  # unreachable: counts as not answering
                self.close()
                time.sleep(0.02)
                continue
            k = next((i for i, r in enumerate(out) if r is None), len(out))
            for line, rep in zip(todo[:k], out[:k], strict=True):
                assert rep is not None
                if not rep.ok:
                    raise self.refused(line, rep)
            done += [r for r in out[:k] if r is not None]
            todo = todo[k:]
            if not todo:
                return done
            if not self.is_open:
                problem = f"link lost ({self._last_link_error})"
            elif self.stats["damaged"] > damaged:
                timeouts_only = False
                problem = f"damaged reply to {todo[0].split(' ', 1)[0]}"
            else:
                problem = f"no reply to {todo[0].split(' ', 1)[0]} within {self.timeout_s} s"
        what = " ".join(line.split(" ", 1)[0] for line in lines[:4])
        msg = (
            f"board at {self.name}: {what}: no valid reply after {self.retries + 1} attempts "
            f"(timeout {self.timeout_s} s each); last problem: {problem}"
        )
        if timeouts_only:
            raise DeviceTimeoutError(msg)
        raise ProtocolError(msg)

    def safe(self) -> None:
        """Best effort: one short attempt to put the chip safe (after a failure)."""
        try:
            if not self.is_open:
                self.open()
                self._check_boot()  # never SAFE into another board
            self._resync()
            rep = self.exchange(["SAFE"])[0]
            if rep is None or not rep.ok:
                raise _Retry("no confirmation")
        except Exception as exc:
            log.error("board at %s: could not confirm SAFE after a failure (%s)", self.name, exc)
