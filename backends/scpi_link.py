"""The link layer of the SCPI bench driver: one message channel per instrument, with framing
(newline-terminated ASCII messages), retry, resynchronisation, reconnect and the I/O mode.

Transports (what moves one message):

* :class:`SocketTransport` — a plain TCP socket of its own for raw
  ``TCPIP::host::port::SOCKET`` resources (port-5025 style instruments). Its replies can be
  awaited on the event loop without a thread hop (:meth:`SocketTransport.aquery`).
* :class:`PyvisaTransport` — a pyvisa resource (any VISA resource string: VXI-11, HiSLIP,
  USBTMC, GPIB, …) through pyvisa's public API only.

:class:`ScpiLink` runs the recovery protocol over a transport: after a timeout or a
malformed reply the input is cleared and a unique ``*ESE n;*ESE?`` marker is awaited, so a
late reply is never taken for the answer to a later query; a lost connection is reopened;
after a refusal the error queue is drained (and logged). Every message the bench sends is
an absolute setting or a read, so a retry is idempotent. Past the retry budget it raises a
:class:`~phasegrad_hw.errors.SubstrateError` naming the instrument, the resource and the
last failure.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol, TypeVar

from phasegrad_hw.backends.visa_config import SOCKET_RESOURCE
from phasegrad_hw.errors import DeviceError, DeviceTimeoutError, ProtocolError, SubstrateError
from phasegrad_hw.wire.scpi import is_no_error

log = logging.getLogger(__name__)
T = TypeVar("T")

IoMode = Literal["async", "thread", "inline"]


class InstrumentReportedError(ProtocolError):
    """The instrument queued an error for the message just sent (setting not applied)."""


def check_reply_text(reply: str) -> str:
    """A reply must be printable ASCII (anything else is line damage)."""
    if not reply.isascii() or any(not (" " <= ch <= "~") for ch in reply):
        raise ProtocolError(f"non-ASCII/control bytes in reply {reply[:40]!r}")
    return reply


# --------------------------------------------------------------------------- transports
class ScpiTransport(Protocol):
    """Moves whole messages to and from one instrument (blocking calls)."""

    resource: str

    def open(self) -> None: ...
    def close(self) -> None: ...
    def write(self, message: str) -> None: ...
    def read(self, timeout_s: float) -> str: ...
    def clear(self) -> None: ...
    def peer_closed(self) -> bool: ...


class SocketTransport:
    """A raw SCPI socket (``TCPIP::host::port::SOCKET``): our own non-blocking TCP socket and
    receive buffer. ``read``/``aquery`` return one message without its terminator; raises
    :class:`DeviceTimeoutError` (no whole message in time) or :class:`ConnectionError`."""

    def __init__(
        self, resource: str, *, open_timeout_s: float, read_termination: str = "\n"
    ) -> None:
        m = SOCKET_RESOURCE.fullmatch(resource)
        if m is None:
            raise DeviceError(f"{resource!r} is not a TCPIP::host::port::SOCKET resource")
        self.resource = resource
        self.address = (m.group(1).strip("[]"), int(m.group(2)))
        self.open_timeout_s = open_timeout_s
        self.term = read_termination.encode("latin-1")
        self.write_term = b"\n"
        self._sock: socket.socket | None = None
        self._rx = bytearray()

    # -- blocking -----------------------------------------------------------------
    def open(self) -> None:
        self.close()
        sock = socket.create_connection(self.address, timeout=self.open_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._sock = sock
        self._rx.clear()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._rx.clear()
        if sock is not None:
            try:
                sock.close()
            except OSError as exc:
                log.debug("%s: close: %s", self.resource, exc)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("not connected")
        return self._sock

    def write(self, message: str) -> None:
        sock = self._socket()
        data = memoryview(message.encode("latin-1") + self.write_term)
        deadline = time.monotonic() + self.open_timeout_s
        while data:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceTimeoutError("write blocked (instrument not reading)") from None
                select.select([], [sock], [], left)
                continue
            data = data[sent:]

    def _take_message(self) -> str | None:
        end = self._rx.find(self.term)
        if end < 0:
            return None
        raw = bytes(self._rx[:end])
        del self._rx[: end + len(self.term)]
        return check_reply_text(raw.decode("latin-1").rstrip("\r"))

    def _receive(self, sock: socket.socket) -> bool:
        """Append whatever is readable; False when nothing was (raises on EOF)."""
        try:
            data = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return False
        if not data:
            raise ConnectionError("connection closed by the instrument")
        self._rx += data
        return True

    def read(self, timeout_s: float) -> str:
        sock = self._socket()
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._take_message()
            if msg is not None:
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceTimeoutError(f"timeout after {timeout_s:g} s")
            ready, _, _ = select.select([sock], [], [], left)
            if ready:
                self._receive(sock)

    def clear(self) -> None:
        """Discard everything received so far (late replies are caught by the marker)."""
        self._rx.clear()
        sock = self._socket()
        while self._receive(sock):
            self._rx.clear()

    def peer_closed(self) -> bool:
        sock = self._sock
        if sock is None:
            return True
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return data == b""

    # -- on the event loop --------------------------------------------------------------
    async def aquery(self, message: str, timeout_s: float) -> str:
        """Send ``message`` and await one reply on the event loop (no thread)."""
        sock = self._socket()
        if self._rx:
            raise ProtocolError(
                f"unexpected bytes pending before a query: {bytes(self._rx[:40])!r}"
            )
        self.write(message)  # a short message: the send does not block
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        fd = sock.fileno()
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _set_ready, ready)
            try:
                # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives together with the reply (the caller would run on)
                done, _ = await asyncio.wait({ready}, timeout=max(0.0, deadline - loop.time()))
            finally:
                loop.remove_reader(fd)
            if not done:
                ready.cancel()
                raise DeviceTimeoutError(f"timeout after {timeout_s:g} s")
            self._receive(sock)
            msg = self._take_message()
            if msg is not None:
                return msg


def _set_ready(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class PyvisaTransport:
    """One pyvisa resource, used through pyvisa's public API (``open_resource``, ``write``,
    ``read``, ``clear``, ``close``, ``timeout``)."""

    def __init__(
        self,
        resource: str,
        resource_manager: Callable[[], Any],
        *,
        open_timeout_s: float,
        read_termination: str = "\n",
        write_termination: str = "\n",
    ) -> None:
        self.resource = resource
        self._rm = resource_manager
        self.open_timeout_s = open_timeout_s
        self.read_termination = read_termination
        self.write_termination = write_termination
        self._res: Any = None
        # pyvisa-py cannot tell a closed peer of a raw socket from silence (its clear()
        # would spin on the EOF): such sessions are reopened instead of cleared
        self._reopen_to_clear = SOCKET_RESOURCE.fullmatch(resource) is not None

    def open(self) -> None:
        self.close()
        try:
            res = self._rm().open_resource(
                self.resource, open_timeout=int(self.open_timeout_s * 1000)
            )
        except Exception as exc:
            raise self._translate(exc) from exc
        res.read_termination = self.read_termination
        res.write_termination = self.write_termination
        res.timeout = int(self.open_timeout_s * 1000)
        res.encoding = "latin-1"  # non-ASCII bytes are checked (and refused) by the driver
        self._res = res

    def close(self) -> None:
        res, self._res = self._res, None
        if res is not None:
            try:
                res.close()
            except Exception as exc:  # already broken
                log.debug("%s: close: %s", self.resource, exc)

    def _resource(self) -> Any:
        if self._res is None:
            raise ConnectionError("not connected")
        return self._res

    @staticmethod
    def _translate(exc: BaseException) -> Exception:
        import pyvisa

        if isinstance(exc, pyvisa.errors.VisaIOError):
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                return DeviceTimeoutError(f"timeout ({exc.description})")
            return ConnectionError(f"I/O error: {exc}")
        if isinstance(exc, UnicodeDecodeError):
            return ProtocolError(f"undecodable reply ({exc.reason})")
        if isinstance(exc, SubstrateError | ConnectionError):
            return exc
        return ConnectionError(f"{type(exc).__name__}: {exc}")

    def write(self, message: str) -> None:
        try:
            self._resource().write(message)
        except Exception as exc:
            raise self._translate(exc) from exc

    def read(self, timeout_s: float) -> str:
        res = self._resource()
        res.timeout = max(1, int(timeout_s * 1000))
        try:
            reply: str = res.read()
        except Exception as exc:
            raise self._translate(exc) from exc
        return check_reply_text(reply)

    def clear(self) -> None:
        if self._reopen_to_clear:
            self.open()
            return
        try:
            self._resource().clear()
        except Exception as exc:
            raise self._translate(exc) from exc

    def peer_closed(self) -> bool:
        return self._res is None


# --------------------------------------------------------------------------- I/O mode
class IoRunner:
    """Where blocking link work runs. ``"async"`` (default): queries over a socket transport
    are awaited on the event loop (the loop is never blocked while an instrument works);
    recovery, connection handling and pyvisa transports run in one worker thread.
    ``"thread"``: every query in that thread. ``"inline"``: block the loop (lowest latency,
    for single-device scripts)."""

    def __init__(self, mode: IoMode) -> None:
        self.mode = mode
        self.executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="visa-bench")

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None

    @property
    def running(self) -> bool:
        return self.executor is not None

    async def run(self, fn: Callable[[], T]) -> T:
        if self.executor is None:
            raise DeviceError("bench: not connected (use `async with` or connect())")
        if self.mode == "inline":
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)


# --------------------------------------------------------------------------- link
class ScpiLink:
    """One instrument's message channel with recovery (see the module docstring).

    ``transact`` is blocking (worker thread); ``aquery`` is the event-loop entry that uses
    the transport's own awaitable query when it has one. ``round_trips`` counts messages
    that expect a reply; ``retries_used`` recoveries (timeouts, bad replies, reconnects).
    """

    def __init__(
        self,
        name: str,
        transport: ScpiTransport,
        io: IoRunner,
        *,
        timeout_s: float,
        retries: int,
        resync_timeout_s: float,
        reconnect_backoff_s: float,
        marker_seed: int = 0,
    ) -> None:
        self.name = name
        self.transport = transport
        self.io = io
        self.timeout_s = timeout_s
        self.retries = retries
        self.resync_timeout_s = resync_timeout_s
        self.reconnect_backoff_s = reconnect_backoff_s
        self.round_trips = 0
        self.retries_used = 0
        self._marker = marker_seed % 250
        self._open = False
        self._interrupted = False  # a reply may still be in flight

    # -- connection -------------------------------------------------------------------
    def connect(self) -> str:
        """Open (with retries and backoff), resynchronise and identify; returns ``*IDN?``."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            self.retries_used += attempt > 0
            try:
                self.reconnect() if self._open else self.open()
                self.resync()
                return self.raw_query("*IDN?", self.timeout_s).strip()
            except DeviceError:
                raise
            except Exception as exc:  # refused, timed out, reset: try again
                last = exc
                time.sleep(self.reconnect_backoff_s * 2**attempt)
        raise DeviceTimeoutError(
            f"bench: cannot open {self.name} at {self.transport.resource} after "
            f"{self.retries + 1} attempts: {type(last).__name__}: {last}"
        )

    def open(self) -> None:
        self.transport.open()
        self._open = True

    def reconnect(self) -> None:
        log.warning("bench: reconnecting %s (%s)", self.name, self.transport.resource)
        self.transport.close()
        self._open = False
        self.open()

    def close(self) -> None:
        self.transport.close()
        self._open = False

    # -- primitives (blocking) ---------------------------------------------------------------
    def raw_query(self, message: str, timeout_s: float) -> str:
        if not self._open:
            self.reconnect()
        self.round_trips += 1
        self.transport.write(message)
        return self.transport.read(timeout_s)

    def resync(self) -> None:
        """Discard anything in flight and wait for a fresh marker reply (``*ESE n;*ESE?``)."""
        if not self._open or self.transport.peer_closed():
            self.reconnect()
        else:
            self.transport.clear()
        self._marker = self._marker % 250 + 1
        marker = str(self._marker)
        deadline = time.monotonic() + self.resync_timeout_s
        self.transport.write(f"*ESE {marker};*ESE?")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceTimeoutError(f"no marker reply within {self.resync_timeout_s} s")
            try:
                line = self.transport.read(remaining)
            except ProtocolError:  # a damaged stale reply
                continue
            if line.strip() == marker:
                return
            log.debug("bench: %s: discarded stale reply %r", self.name, line[:60])

    def drain_errors(self) -> list[str]:
        errors = []
        for _ in range(32):
            reply = self.raw_query(":SYST:ERR?", self.timeout_s).strip()
            if is_no_error(reply):
                break
            errors.append(reply)
        return errors

    def classify(self, exc: BaseException, timeout_s: float) -> Exception:
        """Map a failed attempt to: DeviceTimeoutError, ConnectionError or a SubstrateError."""
        if isinstance(exc, DeviceTimeoutError):
            if self._open and self.transport.peer_closed():
                return ConnectionError("connection lost (closed by the instrument)")
            return DeviceTimeoutError(f"timeout after {timeout_s:g} s")
        if isinstance(exc, UnicodeDecodeError):
            return ProtocolError(f"undecodable reply ({exc.reason})")
        if isinstance(exc, SubstrateError | ConnectionError):
            return exc
        return ConnectionError(f"{type(exc).__name__}: {exc}")

    # -- one exchange with recovery -----------------------------------------------------------
    def transact(
        self,
        message: str,
        parse: Callable[[str], T],
        timeout_s: float | None = None,
        first_failure: Exception | None = None,
    ) -> T:
        """Send ``message``, parse its reply; recover and retry up to ``retries`` times.

        ``first_failure``: the first attempt already failed this way (recover before sending).
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        last: Exception | None = first_failure
        for attempt in range(1 if first_failure is not None else 0, self.retries + 1):
            if attempt:
                self.retries_used += 1
                try:
                    if isinstance(last, ConnectionError):
                        time.sleep(self.reconnect_backoff_s * 2 ** (attempt - 1))
                        self.reconnect()
                    self.resync()
                    if isinstance(last, InstrumentReportedError | ProtocolError):
                        errs = self.drain_errors()
                        if errs:
                            log.warning("bench: %s reported %s", self.name, "; ".join(errs))
                except Exception as exc:  # recovery itself failed: count it, try again
                    log.warning("bench: %s: recovery failed: %s", self.name, exc)
                    last = exc if isinstance(exc, SubstrateError) else ConnectionError(str(exc))
                    continue
            try:
                return parse(self.raw_query(message, timeout_s))
            except Exception as exc:
                last = self.classify(exc, timeout_s)
            log.warning(
                "bench: %s: %s (attempt %d/%d) on %r",
                self.name,
                last,
                attempt + 1,
                self.retries + 1,
                message[:60],
            )
        kind: type[SubstrateError]
        if isinstance(last, DeviceTimeoutError | ConnectionError):
            kind = DeviceTimeoutError
        elif isinstance(last, InstrumentReportedError):
            kind = DeviceError
        else:
            kind = ProtocolError
        raise kind(
            f"bench: {self.name} ({self.transport.resource}) gave no valid reply to "
            f"{message[:60]!r} after {self.retries + 1} attempts; last failure: {last}"
        )

    async def aquery(
        self, message: str, parse: Callable[[str], T], timeout_s: float | None = None
    ) -> T:
        """One query from the event loop. ``async`` mode over a socket transport: send, await
        the reply on the loop, parse; any failure (or a cancelled earlier query whose reply
        may still arrive) is recovered in the worker thread."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        aq = getattr(self.transport, "aquery", None)
        if self.io.mode != "async" or self._interrupted or aq is None or not self._open:
            first: Exception | None = None
            if self._interrupted:
                self._interrupted = False
                first = ProtocolError("a query was interrupted; its reply may still arrive")
            return await self.io.run(lambda: self.transact(message, parse, timeout_s, first))
        self._interrupted = True  # until the reply is in
        try:
            self.round_trips += 1
            result = parse(await aq(message, timeout_s))
        except Exception as exc:
            self._interrupted = False
            failure = self.classify(exc, timeout_s)
            log.warning(
                "bench: %s: %s (attempt 1/%d) on %r",
                self.name,
                failure,
                self.retries + 1,
                message[:60],
            )
            return await self.io.run(lambda: self.transact(message, parse, timeout_s, failure))
        self._interrupted = False
        return result
