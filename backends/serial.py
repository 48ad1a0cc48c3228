"""Host driver for the phasegrad controller board over pyserial (docs/protocol.md).

``--device serial:///dev/ttyACM0`` (a real port or a pty), ``serial://HOST:PORT`` (pyserial
``socket://`` semantics), or any pyserial URL after ``serial://`` (``serial://rfc2217://…``);
options as a query string, e.g. ``serial://127.0.0.1:7000?timeout_s=0.5&retries=5``.

The board sends its chip descriptor (topology, roles, limits; the full device model JSON),
so no model file is needed. Robustness:

* every request carries a fresh sequence number; replies with any other number (stale
  replies of an attempt that timed out) are discarded, never taken for a later request;
* replies are confirmed in order: the commands up to the first missing reply stand (the
  board executes in order), the rest is resent; a refusal in the confirmed part (``ERR 6``
  → :class:`LimitError`, others → :class:`DeviceError`) ends the exchange, so no reading
  taken after a refused setpoint is returned;
* per-exchange timeout ``timeout_s`` (restarted by each valid reply); after a timeout, a
  damaged line (bad CRC), an untrusted-sequence reply or a retryable error code: the input
  is flushed and a ``PING`` barrier drains whatever the board still had queued, then the
  unconfirmed commands are resent — every command is an idempotent setpoint or a read;
* a dropped link (pty hang-up, TCP reset) is reopened; a board reboot (boot banner, a new
  boot id on the reopened link, or a boot id in a phase reading that differs from the
  expected one — a DTR reset whose banner was lost) makes the driver re-send the last
  confirmed state first; no reading taken across a reboot is ever returned;
* past the retry budget: :class:`DeviceTimeoutError` (nothing answered, board unreachable)
  or :class:`ProtocolError` (only damaged answers), after a best-effort ``SAFE``.

Round trips: setpoints are deferred and go out with the next read in one write, so an EP
step costs one exchange per phase read (3 for a centred step). They are sent at the latest
on the next turn of the event loop; :meth:`SerialSubstrate.flush` waits for confirmation.
Blocking pyserial I/O runs in a worker thread (``asyncio.to_thread``), one per exchange.
Construction opens the port and reads the descriptor synchronously (a few ms).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import re
import select
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import numpy as np
from pydantic import Field, ValidationError

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import (
    ConfigError,
    DeviceError,
    DeviceTimeoutError,
    LimitError,
    ProtocolError,
)
from phasegrad_hw.physics import Array
from phasegrad_hw.wire.board import (
    MAX_LINE,
    RETRYABLE,
    SEQ_MOD,
    UNTRUSTED,
    ErrorCode,
    FrameError,
    Reply,
    Request,
    fmt_float,
    parse_reply,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
_WIRE_CAPS = {Capability.COUPLINGS, Capability.FREQUENCY_COUNTER}


class SerialOptions(StrictModel):
    """Transport options (query string of a ``serial://`` URI)."""

    timeout_s: float = Field(
        default=1.0, gt=0.0, le=120.0, description="per exchange, reset by each valid reply"
    )
    retries: int = Field(default=3, ge=0, le=50, description="extra attempts after the first")
    baudrate: int = Field(default=115200, ge=300, le=12_000_000)
    reconnect_s: float = Field(
        default=3.0, ge=0.0, le=120.0, description="how long to try reopening a lost link"
    )
    pipeline: bool = Field(
        default=True, description="send setpoints together with the next exchange"
    )


class _Retry(Exception):
    """Internal: this attempt failed in a way another attempt may fix."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


async def _port_io(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread. A cancelled caller still waits for the thread to
    finish before the cancellation propagates, so the port lock is never released while an
    exchange is still running on the port (the next exchange, or a close, would race it)."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})
        raise


def pyserial_url(spec: str) -> str:
    """``serial://…`` (or a bare path / host:port) → the URL for ``serial.serial_for_url``."""
    rest = spec.removeprefix("serial://")
    if "://" in rest:
        return rest
    if _HOSTPORT.match(rest) and not rest.startswith("/"):
        return f"socket://{rest}"
    if not rest:
        raise ConfigError(
            f"--device: {spec!r} names no port; use serial:///dev/ttyACM0 or serial://HOST:PORT"
        )
    return rest


def open_uri(uri: str, seed: int | None = None) -> SerialSubstrate:
    """Registry URI opener: ``serial://PATH`` or ``serial://HOST:PORT[?opts]``."""
    base, _, query = uri.partition("?")
    try:
        options = SerialOptions.model_validate(dict(parse_qsl(query, strict_parsing=bool(query))))
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            raise ConfigError(format_validation_error(exc, f"{uri}: ")) from None
        raise ConfigError(f"{uri}: query {query!r} is not key=value&…") from None
    return SerialSubstrate(pyserial_url(base), options=options, seed=seed)


class SerialSubstrate(OscillatorSubstrate):
    """A chip behind a phasegrad controller board on a serial line or TCP socket.

    Construction opens the port and reads the chip descriptor (so ``model`` is known at
    once); ``async with`` (re)connects and leaves the chip safe on exit. ``seed`` is unused
    (the board's chip has its own); the training loop reseeds via :meth:`reseed`.
    """

    def __init__(
        self, url: str, *, options: SerialOptions | None = None, seed: int | None = None
    ) -> None:
        self.url = url
        self.options = options or SerialOptions()
        self._port: Any = None
        self._seq = itertools.count(int(time.time() * 1000) % SEQ_MOD)
        self._rx = bytearray()
        self._locks: dict[int, asyncio.Lock] = {}  # per event loop (a Lock binds to one)
        self._boot_id: int | None = None
        self._need_restore = False
        self._last_link_error = ""
        self._state: dict[str, tuple[str, tuple[str, ...]]] = {}  # last confirmed setpoints
        # deferred setpoints, in call order (not merged: an emulated chip may care about the
        # path, e.g. thermal transients of every bias step)
        self._pending: list[tuple[tuple[str, tuple[str, ...]], str]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._deferred_error: Exception | None = None
        self.stats = {
            "exchanges": 0,
            "retries": 0,
            "stale": 0,
            "damaged": 0,
            "reconnects": 0,
            "reboots": 0,
        }
        self.descriptor: dict[str, Any] = {}
        self._open_port()
        try:
            self._fetch_descriptor()
            model = self._host_model()
        except BaseException:
            self._close_port()
            raise
        super().__init__(model)
        self.chip_model = self._typed_chip_model()
        self.capabilities = frozenset(
            Capability(c) for c in self.descriptor["capabilities"] if c in _WIRE_CAPS
        ) | ({Capability.RESEED} if self.descriptor.get("reseed") else set())
        lim = [self.model.limits.bias.channel(i) for i in range(self.model.n)]
        self.dac_max = (1 << int(self.descriptor["dac_bits"])) - 1
        self._bias_min = np.array([c.min for c in lim])
        self._bias_lsb = np.array([(c.max - c.min) / self.dac_max for c in lim])

    # -- descriptor ------------------------------------------------------------------
    def _fetch_descriptor(self) -> None:
        try:
            first = self._transact([("DESC?", ("0",))], restore=False)[0]
            n = int(first.fields[1])
            chunks = [first.fields[2]]
            if n > 1:
                more: list[tuple[str, tuple[str, ...]]] = [
                    ("DESC?", (str(k),)) for k in range(1, n)
                ]
                chunks += [r.fields[2] for r in self._transact(more, restore=False)]
            desc = json.loads(base64.b64decode("".join(chunks)))
            for key in ("model", "capabilities", "dac_bits"):
                desc[key]
        except (ValueError, UnicodeDecodeError, IndexError, KeyError, TypeError) as exc:
            raise ProtocolError(
                f"board at {self.url}: unreadable chip descriptor ({type(exc).__name__}: {exc})"
            ) from None
        self.descriptor = desc
        ident = self._transact([("ID?", ())], restore=False)[0]
        self._boot_id = self._boot_of(ident)
        log.info(
            "board %s: %s, %d oscillators",
            self.url,
            " ".join(ident.fields),
            self.descriptor["model"]["n_oscillators"],
        )

    def _host_model(self) -> DeviceModel:
        data = {k: v for k, v in self.descriptor["model"].items() if k in DeviceModel.model_fields}
        try:
            return DeviceModel.model_validate(data)
        except ValidationError as exc:
            detail = format_validation_error(exc)
            raise ProtocolError(
                f"board at {self.url}: chip descriptor does not validate:\n{detail}"
            ) from None

    def _typed_chip_model(self) -> DeviceModel:
        """The descriptor as its emulator's own model class (e.g. with the CMOS transfer-curve
        parameters) when that backend is installed here; else the generic model."""
        from phasegrad_hw.device.registry import file_backends

        data = self.descriptor["model"]
        backend = data.get("backend")
        if backend in file_backends():
            try:
                return DeviceModel.from_dict(data)
            except Exception as exc:  # optional detail: the generic model is enough to drive it
                log.debug("board %s: descriptor as %r model failed: %s", self.url, backend, exc)
        return self.model

    @staticmethod
    def _boot_of(reply: Reply) -> int:
        for f in reply.fields:
            if f.startswith("boot="):
                return int(f[5:])
        raise ProtocolError(f"reply {' '.join(reply.fields)!r} carries no boot id")

    # -- transport (blocking; called in a worker thread) -------------------------------
    def _open_port(self) -> None:
        import serial  # pyserial; imported lazily

        deadline = time.monotonic() + self.options.reconnect_s
        while True:
            try:
                port = serial.serial_for_url(
                    self.url,
                    baudrate=self.options.baudrate,
                    timeout=0,
                    write_timeout=self.options.timeout_s,
                )
                break
            except (serial.SerialException, OSError, ValueError) as exc:
                if time.monotonic() >= deadline:
                    raise DeviceTimeoutError(
                        f"board at {self.url}: cannot open the port ({exc})"
                    ) from None
                time.sleep(0.05)
        try:
            self._fd: int | None = int(port.fileno())
        except (AttributeError, OSError, ValueError):  # Windows ports, loop://: poll instead
            self._fd = None
            port.timeout = 0.002
        self._port = port
        self._rx.clear()

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:  # a dead link may fail to close cleanly
                log.debug("closing %s failed", self.url, exc_info=True)

    def _resync(self) -> None:
        """Discard everything received so far (replies that will still come are stale)."""
        self._rx.clear()
        if self._port is not None:
            try:
                self._port.reset_input_buffer()
            except Exception:
                self._close_port()

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
            if self._fd is None:
                self._rx += self._port.read(max(1, self._port.in_waiting))
                continue
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                data = self._port.read(65536)
                if not data:
                    raise OSError("link closed by the board")
                self._rx += data

    def _exchange(self, cmds: list[tuple[str, tuple[str, ...]]]) -> list[Reply | None]:
        """Send ``cmds`` in one write; collect their replies by sequence number.

        Returns one entry per command, ``None`` where no usable reply came (lost, damaged,
        or a retryable error). Stops waiting once every request is accounted for (answered
        or matched by a damaged line), or when ``timeout_s`` passes without a valid reply.
        Raises :class:`_Retry` when the board rebooted (nothing of this exchange counts).
        """
        reqs = [Request(next(self._seq) % SEQ_MOD, c, a) for c, a in cmds]
        want = {r.seq: i for i, r in enumerate(reqs)}
        out: list[Reply | None] = [None] * len(reqs)
        deadline = time.monotonic() + self.options.timeout_s
        pending, lost = len(reqs), 0
        try:
            self._port.write(b"".join(r.encode() for r in reqs))
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
                self._need_restore = True
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
            deadline = time.monotonic() + self.options.timeout_s
            if not rep.ok and rep.code in RETRYABLE:
                continue  # our request arrived damaged: resend it
            if rep.ok and reqs[idx].cmd == "R":
                boot = self._boot_of(rep)
                if boot != self._boot_id:
                    self.stats["reboots"] += 1
                    self._need_restore = True
                    raise _Retry(f"reading from boot {boot}, not {self._boot_id} (board reset)")
            out[idx] = rep
        return out

    def _link_lost(self, exc: BaseException) -> None:
        log.info("board %s: link lost (%s)", self.url, exc)
        self._last_link_error = str(exc)
        self._close_port()

    def _refused(self, cmd: str, rep: Reply) -> Exception:
        text = f"board at {self.url} refused {cmd}: {rep.error}"
        return LimitError(text) if rep.code == ErrorCode.OUT_OF_RANGE else DeviceError(text)

    def _sync(self) -> None:
        """Barrier after a failed attempt: a ``PING`` with a fresh sequence number, reading
        (and discarding) everything up to its reply. The board works through its input in
        order, so afterwards nothing of earlier attempts is still queued on either side —
        retries cannot pile up behind a slow board. The deadline is extended while stale
        replies keep arriving (the board is busy, not gone)."""
        self._resync()
        token = next(self._seq) % SEQ_MOD
        self._port.write(Request(token, "PING", ()).encode())
        deadline = time.monotonic() + self.options.timeout_s
        while True:
            line = self._readline(deadline)
            try:
                rep = parse_reply(line)
            except FrameError:
                continue
            if rep.banner:
                self.stats["reboots"] += 1
                self._need_restore = True
            elif rep.seq == token:
                return
            self.stats["stale"] += 1
            deadline = time.monotonic() + self.options.timeout_s

    def _check_boot(self) -> None:
        """``ID?`` on a fresh link: a changed boot id means the board rebooted meanwhile."""
        rep = self._exchange([("ID?", ())])[0]
        if rep is None or not rep.ok:
            raise _Retry("no identification on the new link", timeout=rep is None)
        boot = self._boot_of(rep)
        if self._boot_id is not None and boot != self._boot_id:
            self.stats["reboots"] += 1
            self._need_restore = True
        self._boot_id = boot

    def _restore(self) -> None:
        """After a reboot or reconnect: learn the new boot id, re-send confirmed setpoints."""
        cmds = [("ID?", ()), *self._state.values()]
        replies = self._exchange(cmds)
        for (cmd, _), rep in zip(cmds, replies, strict=True):
            if rep is None:
                raise _Retry("incomplete replies while restoring state")
            if not rep.ok:
                raise self._refused(cmd, rep)
        assert replies[0] is not None
        self._boot_id = self._boot_of(replies[0])
        self._need_restore = False
        log.info("board %s: state restored (boot %d)", self.url, self._boot_id)

    def _transact(
        self, cmds: list[tuple[str, tuple[str, ...]]], *, restore: bool = True
    ) -> list[Reply]:
        """One exchange with retries, resync, reconnect and state restore (blocking).

        Replies are confirmed in order: after a partial exchange, the commands up to the
        first missing reply stand (the board executes in order) and the rest is resent.
        A refusal anywhere in the confirmed part ends the exchange with its error, so no
        reading taken after a refused setpoint is ever returned.
        """

        self.stats["exchanges"] += 1
        problem = ""
        timeouts_only = True
        done: list[Reply] = []
        todo = cmds
        for attempt in range(self.options.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                log.debug("board %s: retry %d (%s)", self.url, attempt, problem)
            damaged = self.stats["damaged"]
            try:
                if self._port is None:
                    self.stats["reconnects"] += 1
                    self._open_port()
                    self._check_boot()  # a new link: did the board keep its state?
                elif attempt:
                    self._sync()
                if self._need_restore:
                    done, todo = [], cmds  # nothing confirmed before a reboot counts
                    if restore:
                        self._restore()
                    else:
                        self._need_restore = False
                out = self._exchange(todo)
            except _Retry as exc:
                problem = str(exc)
                timeouts_only &= exc.timeout and self.stats["damaged"] == damaged
                if self._need_restore:
                    done, todo = [], cmds
                self._resync()
                continue
            except (OSError, ValueError) as exc:  # reopening failed, or the link died again
                problem = f"link lost ({exc})"  # unreachable: counts as not answering
                self._close_port()
                time.sleep(0.02)
                continue
            k = next((i for i, r in enumerate(out) if r is None), len(out))
            for (cmd, _), rep in zip(todo[:k], out[:k], strict=True):
                assert rep is not None
                if not rep.ok:
                    raise self._refused(cmd, rep)
            done += [r for r in out[:k] if r is not None]
            todo = todo[k:]
            if not todo:
                return done
            if self._port is None:
                problem = f"link lost ({self._last_link_error})"
            elif self.stats["damaged"] > damaged:
                timeouts_only = False
                problem = f"damaged reply to {todo[0][0]}"
            else:
                problem = f"no reply to {todo[0][0]} within {self.options.timeout_s} s"
        what = " ".join(c for c, _ in cmds[:4])
        msg = (
            f"board at {self.url}: {what}: no valid reply after "
            f"{self.options.retries + 1} attempts "
            f"(timeout {self.options.timeout_s} s each); last problem: {problem}"
        )
        if timeouts_only:
            raise DeviceTimeoutError(msg)
        raise ProtocolError(msg)

    def _safe_sync(self) -> None:
        """Best effort: one short attempt to put the chip safe (after a failure)."""
        try:
            if self._port is None:
                self._open_port()
            self._resync()
            rep = self._exchange([("SAFE", ())])[0]
            if rep is None or not rep.ok:
                raise _Retry("no confirmation")
        except Exception as exc:
            log.error("board at %s: could not confirm SAFE after a failure (%s)", self.url, exc)
        self._state.pop("clamp", None)
        self._state.pop("bias", None)

    async def _run(
        self, cmds: list[tuple[str, tuple[str, ...]]], state_key: str | None = None
    ) -> list[Reply]:
        """Send any deferred setpoints plus ``cmds`` in one exchange; returns ``cmds``' replies."""
        async with self._lock():
            if self._deferred_error is not None:
                err, self._deferred_error = self._deferred_error, None
                raise err
            pending, self._pending = self._pending, []
            batch = [c for c, _ in pending] + cmds
            try:
                replies = await _port_io(self._transact, batch)
            except (DeviceTimeoutError, ProtocolError, DeviceError) as exc:
                if not isinstance(exc, LimitError):
                    await _port_io(self._safe_sync)
                    self.clamped = False
                raise
            for c, key in pending:
                if not key.startswith("!"):  # one-shot commands are not state to restore
                    self._state[key] = c
            if state_key is not None:
                self._state[state_key] = cmds[-1]
            return replies[len(pending) :]

    async def _set(self, key: str, cmd: tuple[str, tuple[str, ...]]) -> None:
        """A setpoint: sent now, or (``pipeline``) with the next exchange — at the latest on
        the next turn of the event loop (:meth:`flush` waits for it)."""
        if not self.options.pipeline:
            await self._run([cmd], key)
            return
        self._pending.append((cmd, key))
        if len(self._pending) >= 32:  # a caller that never yields: do not let lines pile up
            await self._run([])
            return
        loop = asyncio.get_running_loop()
        f = self._flusher
        if f is None or f.done() or f.get_loop() is not loop:
            self._flusher = loop.create_task(self._background_flush())

    async def _background_flush(self) -> None:
        if not self._pending:
            return
        try:
            await self._run([])
        except Exception as exc:  # reported by the next call
            if self._deferred_error is None:
                self._deferred_error = exc

    async def flush(self) -> None:
        """Send deferred setpoints now and wait for the board's confirmation."""
        await self._run([])

    def _lock(self) -> asyncio.Lock:
        """One exchange at a time on the port (per event loop: asyncio locks bind to one)."""
        loop_id = id(asyncio.get_running_loop())
        lock = self._locks.get(loop_id)
        if lock is None:
            self._locks = {loop_id: (lock := asyncio.Lock())}
        return lock

    # -- lifecycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._port is None:
            async with self._lock():
                await _port_io(self._open_port)
                self._need_restore = True

    async def _disconnect(self) -> None:
        async with self._lock():
            await _port_io(self._close_port)

    async def make_safe(self) -> None:
        """One ``SAFE`` line: injection off, every bias at its safe value (deferred
        setpoints are dropped)."""
        self._pending.clear()
        self._deferred_error = None
        await self._run([("SAFE", ())])
        self._state.pop("clamp", None)
        self._state.pop("bias", None)
        self.clamped = False

    def reseed(self, seed: int) -> None:
        """Reseed the chip emulator's noise (ignored by boards whose chip has none)."""
        if not self.descriptor.get("reseed"):
            return
        cmd = ("SEED", (str(int(seed)),))
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop: nothing else can be using the port
            self._transact([cmd])
            return
        # inside a loop an exchange may be running in a worker thread: send with the next one
        self._pending.append((cmd, "!seed"))

    # -- hooks -----------------------------------------------------------------------------
    async def _apply_frequencies(self, omega: Array) -> None:
        await self._set("bias", ("W", tuple(map(fmt_float, omega))))

    def bias_codes(self, values: Array) -> np.ndarray:
        """Bias (device unit) → DAC codes, code = round((v − min)/LSB), LSB = span/(2^bits − 1)."""
        return np.rint((values - self._bias_min) / self._bias_lsb).astype(np.int64)

    async def _apply_biases(self, values: Array) -> None:
        codes = np.clip(self.bias_codes(values), 0, self.dac_max)
        await self._set("bias", ("B", tuple(str(int(c)) for c in codes)))

    async def _apply_couplings(self, values: Array) -> None:
        await self._set("K", ("K", tuple(map(fmt_float, values))))

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        await self._set("clamp", ("C", (fmt_float(beta), str(direction), *map(fmt_float, target))))

    async def _apply_release(self) -> None:
        await self._set("clamp", ("REL", ()))

    async def _read(self, averages: int) -> PhaseReading:
        rep = (await self._run([("R", (str(averages),))]))[0]
        n = self.model.n
        f = rep.fields
        if len(f) != 4 + 2 * n:
            raise ProtocolError(
                f"board at {self.url}: phase reading has {len(f)} fields, expected {4 + 2 * n}"
            )
        try:
            vals = np.array([float(x) for x in f[4:]])
            return PhaseReading(
                vals[:n], vals[n:], f[1] == "1", time.time(), int(f[2]), float(f[3])
            )
        except ValueError as exc:
            raise ProtocolError(f"board at {self.url}: unreadable phase reading ({exc})") from None

    async def _read_frequencies(self) -> Array:
        rep = (await self._run([("F?", ())]))[0]
        if len(rep.fields) != self.model.n:
            raise ProtocolError(
                f"board at {self.url}: frequency reading has {len(rep.fields)} fields"
            )
        return np.array([float(x) for x in rep.fields])

    def __repr__(self) -> str:
        return f"SerialSubstrate({self.url!r})"
