"""Serve a line-oriented firmware model on a pseudo-terminal or a TCP port, with fault injection.

:class:`LineServer` runs its own asyncio event loop in a background thread, so a test's
client (pyserial, pyvisa) in the main thread talks to it over a real transport exactly as
it would to hardware. Any object with the :class:`LineService` methods can be served
(the controller-board firmware here; SCPI instruments may reuse it for TCP).

Faults (:class:`FaultConfig`, also ``--fault delay=0.2,drop=0.1,…`` on the CLI) act on the
board's side of the wire: delayed replies, dropped replies, corrupted reply bytes, garbage
bytes, periodic disconnects (TCP: connection closed; pty: the board drops off the line for
``disconnect_s`` and comes back rebooted, like a USB brown-out) and periodic resets (a DTR
reset: registers lost, chip safe, boot banner).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
import tty
from collections.abc import Callable
from typing import Protocol

import numpy as np
from pydantic import Field, ValidationError

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.wire.board import LineSplitter

log = logging.getLogger(__name__)


class LineService(Protocol):
    """What a served firmware model provides."""

    async def power_on(self) -> None: ...

    async def handle_line(self, line: bytes | None) -> bytes | None: ...

    async def reboot(self) -> bytes: ...

    async def make_safe(self) -> None: ...

    def banner(self) -> bytes: ...


class FaultConfig(StrictModel):
    """Injected faults. Probabilities per reply in [0, 1]; ``*_after`` every N-th line (0 = off)."""

    delay: float = Field(default=0.0, ge=0.0, le=60.0, description="reply delay, s")
    delay_p: float = Field(
        default=1.0, ge=0.0, le=1.0, description="probability a reply is delayed"
    )
    drop: float = Field(default=0.0, ge=0.0, le=1.0, description="probability a reply is lost")
    corrupt: float = Field(
        default=0.0, ge=0.0, le=1.0, description="probability a reply byte is flipped"
    )
    garbage: float = Field(
        default=0.0, ge=0.0, le=1.0, description="probability of noise bytes before a reply"
    )
    disconnect_after: int = Field(
        default=0, ge=0, description="drop the link after every N-th line"
    )
    disconnect_s: float = Field(
        default=0.3, ge=0.0, le=60.0, description="pty: silence before re-boot, s"
    )
    reset_after: int = Field(default=0, ge=0, description="DTR-style reboot after every N-th line")
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> FaultConfig:
        """``"delay=0.2,drop=0.1,disconnect_after=5"`` → FaultConfig (clear error per field)."""
        data: dict[str, str] = {}
        for item in filter(None, (t.strip() for t in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(
                    f"--fault: {item!r} — expected key=value (keys: {', '.join(cls.model_fields)})"
                )
            data[key.strip()] = value.strip()
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "--fault: ")) from None

    @property
    def active(self) -> bool:
        return any(
            (
                self.delay > 0,
                self.drop,
                self.corrupt,
                self.garbage,
                self.disconnect_after,
                self.reset_after,
            )
        )


class LineServer:
    """Serve ``service`` on a pty (:meth:`start_pty`) or TCP (:meth:`start_tcp`) from a thread."""

    def __init__(
        self,
        service: LineService,
        faults: FaultConfig | None = None,
        *,
        reset_on_connect: bool = False,
    ) -> None:
        self.service = service
        self.faults = faults or FaultConfig()
        self.reset_on_connect = reset_on_connect
        self.address = ""
        self.lines = 0  # non-blank lines handled
        self.injected: dict[str, int] = {
            "delay": 0,
            "drop": 0,
            "corrupt": 0,
            "garbage": 0,
            "disconnect": 0,
            "reset": 0,
        }
        self._rng = np.random.default_rng(self.faults.seed)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._queue: asyncio.Queue[tuple[int, bytes | None]] | None = None
        self._conn = 0  # id of the live connection; replies for older ones are dropped
        self._send: Callable[[bytes], None] = lambda b: None
        self._drop_link: Callable[[], None] = lambda: None
        self._muted = False

    # -- public ------------------------------------------------------------------------
    def start_pty(self) -> str:
        """Serve on a new pseudo-terminal; returns the slave path (e.g. ``/dev/pts/3``)."""
        self._start("pty", "", 0)
        return self.address

    def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Serve on TCP ``host:port`` (0 = any free port); returns the bound address."""
        self._start("tcp", host, port)
        h, _, p = self.address.rpartition(":")
        return h, int(p)

    def set_faults(self, faults: FaultConfig) -> None:
        """Switch the injected faults while serving (their RNG restarts from ``faults.seed``)."""
        self._rng = np.random.default_rng(faults.seed)
        self.faults = faults

    def stop(self) -> None:
        """Stop serving and leave the chip safe."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> LineServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_forever(
        self,
        kind: str,
        host: str = "127.0.0.1",
        port: int = 0,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        """Serve in the calling thread until :meth:`stop` (or a signal handler calling it)."""
        asyncio.run(self._main(kind, host, port, on_ready))

    # -- internals -----------------------------------------------------------------------
    def _start(self, kind: str, host: str, port: int) -> None:
        if self._thread is not None:
            raise RuntimeError("server already running")
        self._ready.clear()
        self._thread = threading.Thread(
            target=self.run_forever,
            args=(kind, host, port),
            name=f"line-server-{kind}",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        if not self.address:
            raise RuntimeError("line server did not start")

    async def _main(
        self, kind: str, host: str, port: int, on_ready: Callable[[str], None] | None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._queue = asyncio.Queue()
        worker = asyncio.create_task(self._worker())
        try:
            try:
                await self.service.power_on()
                cleanup = await (self._open_pty() if kind == "pty" else self._open_tcp(host, port))
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._ready.set()
            if on_ready is not None:
                on_ready(self.address)
            try:
                await self._stop.wait()
            finally:
                cleanup()
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            try:
                await self.service.make_safe()
            except Exception:
                log.exception("could not leave the chip safe")

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            conn, line = await self._queue.get()
            try:
                await self._serve_line(conn, line)
            except Exception:  # a served model must never take the line down with it
                log.exception("line server: failure while serving a line")

    async def _serve_line(self, conn: int, line: bytes | None) -> None:
        f = self.faults  # may be switched while serving
        if conn != self._conn or self._muted:
            return
        reply = await self.service.handle_line(line)
        if reply is None:
            return
        self.lines += 1
        if f.disconnect_after and self.lines % f.disconnect_after == 0:
            self.injected["disconnect"] += 1
            await self._disconnect()
            return
        if f.drop and self._rng.random() < f.drop:
            self.injected["drop"] += 1
            reply = b""
        elif f.corrupt and self._rng.random() < f.corrupt:
            self.injected["corrupt"] += 1
            buf = bytearray(reply)
            i = int(self._rng.integers(0, len(buf) - 1))  # never the final newline
            buf[i] ^= int(self._rng.integers(1, 128))
            reply = bytes(buf)
        if f.garbage and self._rng.random() < f.garbage:
            self.injected["garbage"] += 1
            reply = (
                bytes(self._rng.integers(0, 256, int(self._rng.integers(1, 40)), dtype=np.uint8))
                + reply
            )
        if f.delay and self._rng.random() < f.delay_p:
            self.injected["delay"] += 1
            await asyncio.sleep(f.delay)
        if reply and conn == self._conn:
            self._send(reply)
        if f.reset_after and self.lines % f.reset_after == 0:
            self.injected["reset"] += 1
            self._send(await self.service.reboot())

    async def _disconnect(self) -> None:
        self._drop_link()

    # -- pty -------------------------------------------------------------------------------
    async def _open_pty(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: a clean 8-bit line like a UART
        os.set_blocking(master, False)
        self.address = os.ttyname(slave)
        splitter = LineSplitter()
        pending = bytearray()

        def on_read() -> None:
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                return
            except OSError as exc:  # EIO when no one holds the slave (we do, so rare)
                if exc.errno != errno.EIO:
                    log.warning("pty read failed: %s", exc)
                return
            if self._muted:
                return
            assert self._queue is not None
            for line in splitter.feed(data):
                self._queue.put_nowait((self._conn, line))

        def flush() -> None:
            while pending:
                try:
                    n = os.write(master, pending)
                except BlockingIOError:
                    return
                except OSError as exc:
                    log.warning("pty write failed: %s", exc)
                    pending.clear()
                    return
                del pending[:n]
            loop.remove_writer(master)

        def send(data: bytes) -> None:
            had = bool(pending)
            pending.extend(data)
            if not had:
                flush()
                if pending:
                    loop.add_writer(master, flush)

        async def brownout() -> None:
            self._muted = True
            splitter.reset()
            await asyncio.sleep(self.faults.disconnect_s)
            banner = await self.service.reboot()
            self._conn += 1
            self._muted = False
            send(banner)

        def drop_link() -> None:
            loop.create_task(brownout())

        self._send = send
        self._drop_link = drop_link
        loop.add_reader(master, on_read)

        def cleanup() -> None:
            loop.remove_reader(master)
            loop.remove_writer(master)
            for fd in (master, slave):
                with contextlib.suppress(OSError):
                    os.close(fd)

        return cleanup

    # -- tcp -------------------------------------------------------------------------------
    async def _open_tcp(self, host: str, port: int) -> Callable[[], None]:
        current: list[asyncio.StreamWriter] = []

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for old in current:  # one client at a time, like a serial line
                old.close()
            current.clear()
            current.append(writer)
            self._conn += 1
            conn = self._conn
            assert self._queue is not None
            if self.reset_on_connect:
                writer.write(await self.service.reboot())
            splitter = LineSplitter()
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    for line in splitter.feed(data):
                        self._queue.put_nowait((conn, line))
            except (ConnectionError, OSError):
                pass
            finally:
                if writer in current:
                    current.remove(writer)
                writer.close()

        def send(data: bytes) -> None:
            for w in current:
                if not w.is_closing():
                    w.write(data)

        def drop_link() -> None:
            for w in current:
                w.transport.abort()
            current.clear()
            self._conn += 1

        self._send = send
        self._drop_link = drop_link
        server = await asyncio.start_server(client, host, port)
        sock = server.sockets[0].getsockname()
        self.address = f"{sock[0]}:{sock[1]}"

        def cleanup() -> None:
            server.close()
            for w in current:
                w.transport.abort()

        return cleanup
