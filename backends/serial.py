"""Host driver for the phasegrad controller board over pyserial (docs/protocol.md).

Three layers: the link (:mod:`.board_link`: byte stream, framing, sequence numbers,
retry/resync, reconnect, reboot detection), the board's command table
(:mod:`.board_commands`: each command's line, argument validators and reply parser) and
this substrate, which composes them (deferred setpoints, state to restore, safety).

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
on the second turn of the event loop; :meth:`SerialSubstrate.flush` waits for confirmation.
Blocking pyserial I/O runs in a worker thread (``asyncio.to_thread``), one per exchange.
Construction opens the port and reads the descriptor synchronously (a few ms).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import numpy as np
from pydantic import Field, ValidationError

from phasegrad_hw.backends.board_commands import (
    BoardReading,
    board_commands,
    bootstrap_commands,
)
from phasegrad_hw.backends.board_link import BoardLink, ByteStream, PyserialStream
from phasegrad_hw.backends.commands import Command, CommandTable
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
from phasegrad_hw.physics import Array, wrap
from phasegrad_hw.wire.board import Reply

log = logging.getLogger(__name__)
T = TypeVar("T")

_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
_WIRE_CAPS = {
    Capability.COUPLINGS,
    Capability.FREQUENCY_COUNTER,
    Capability.HELD_PHASES,
    Capability.DRIVE,
}


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


async def _port_io(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread. A cancelled caller still waits for the thread to
    finish before the cancellation propagates, so the port lock is never released while an
    exchange is still running on the port (the next exchange, or a close, would race it)."""
    work = asyncio.get_running_loop().run_in_executor(None, fn, *args)
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
    ``stream``: another byte stream than the pyserial port of ``url`` (e.g. the in-memory
    links of :mod:`phasegrad_hw.testing.transcripts`).
    """

    def __init__(
        self,
        url: str,
        *,
        options: SerialOptions | None = None,
        seed: int | None = None,
        stream: ByteStream | None = None,
    ) -> None:
        self.url = url
        self.options = opts = options or SerialOptions()
        if stream is None:
            stream = PyserialStream(
                url, baudrate=opts.baudrate, write_timeout_s=opts.timeout_s, open_s=opts.reconnect_s
            )
        self.link = BoardLink(stream, name=url, timeout_s=opts.timeout_s, retries=opts.retries)
        self.link.restore = lambda: list(self._state.values())
        self._locks: dict[int, asyncio.Lock] = {}  # per event loop (a Lock binds to one)
        self._state: dict[str, str] = {}  # last confirmed setpoint lines
        # deferred setpoints, in call order (not merged: an emulated chip may care about the
        # path, e.g. thermal transients of every bias step)
        self._pending: list[tuple[str, str]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._deferred_error: Exception | None = None
        self.descriptor: dict[str, Any] = {}
        self.link.open()
        try:
            self._fetch_descriptor()
            model = self._host_model()
        except BaseException:
            self.link.close()
            raise
        super().__init__(model)
        self.chip_model = self._typed_chip_model()
        self.capabilities = frozenset(
            Capability(c) for c in self.descriptor["capabilities"] if c in _WIRE_CAPS
        ) | ({Capability.RESEED} if self.descriptor.get("reseed") else set())
        m = self.model
        lim = [m.limits.bias.channel(i) for i in range(m.n)]
        self.dac_max = (1 << int(self.descriptor["dac_bits"])) - 1
        self._bias_min = np.array([c.min for c in lim])
        self._bias_lsb = np.array([(c.max - c.min) / self.dac_max for c in lim])
        self.commands: CommandTable = board_commands(
            n=m.n,
            n_edges=len(m.edges),
            n_outputs=len(m.roles.outputs),
            dac_bits=int(self.descriptor["dac_bits"]),
            beta_max=m.limits.beta_max,
            max_averages=m.limits.max_averages,
            n_held=len(m.roles.held),
            n_drive=len(m.roles.drive),
            drive_max=m.limits.drive_max,
        )

    @property
    def stats(self) -> dict[str, int]:
        """Exchanges, retries, stale and damaged replies, reconnects and reboots."""
        return self.link.stats

    # -- descriptor ------------------------------------------------------------------
    def _fetch_descriptor(self) -> None:
        boot = bootstrap_commands()
        try:
            first = self._parsed(
                boot.descriptor, self.link.transact([boot.descriptor(chunk=0)], restore=False)[0]
            )
            _, n, chunk = first
            chunks = [chunk]
            if n > 1:
                more = [boot.descriptor(chunk=k) for k in range(1, n)]
                chunks += [
                    self._parsed(boot.descriptor, r)[2]
                    for r in self.link.transact(more, restore=False)
                ]
            desc = json.loads(base64.b64decode("".join(chunks)))
            for key in ("model", "capabilities", "dac_bits"):
                desc[key]
        except (
            ValueError,
            UnicodeDecodeError,
            IndexError,
            KeyError,
            TypeError,
            ProtocolError,
        ) as exc:
            raise ProtocolError(
                f"board at {self.url}: unreadable chip descriptor ({type(exc).__name__}: {exc})"
            ) from None
        self.descriptor = desc
        ident = self.link.transact([boot.identify()], restore=False)[0]
        self.link.boot_id = self.link.identified(ident)
        log.info(
            "board %s: %s, %d oscillators",
            self.url,
            " ".join(ident.fields),
            self.descriptor["model"]["n_oscillators"],
        )

    def _parsed(self, command: Command, reply: Reply) -> Any:
        """A reply's values through ``command``'s parser (ProtocolError naming the board)."""
        try:
            return command.reply(" ".join(reply.fields))
        except ProtocolError as exc:
            raise ProtocolError(f"board at {self.url}: {exc}") from None

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

    def _forget_unsafe(self) -> None:
        """The board went safe (``SAFE``): the clamp, drive and biases are no state to restore."""
        for key in ("clamp", "drive", "bias"):
            self._state.pop(key, None)

    def _safe_sync(self) -> None:
        """Best effort: one short attempt to put the chip safe (after a failure)."""
        self.link.safe()
        self._forget_unsafe()

    async def _run(self, lines: list[str], state_key: str | None = None) -> list[Reply]:
        """Send any deferred setpoints plus ``lines`` in one exchange; returns ``lines``'
        replies."""
        async with self._lock():
            if self._deferred_error is not None:
                err, self._deferred_error = self._deferred_error, None
                raise err
            pending, self._pending = self._pending, []
            batch = [c for c, _ in pending] + lines
            if not batch:  # nothing to send (a flush after the setpoints went): no exchange
                return []
            try:
                replies = await _port_io(self.link.transact, batch)
            except (DeviceTimeoutError, ProtocolError, DeviceError) as exc:
                if not isinstance(exc, LimitError):
                    await _port_io(self._safe_sync)
                    self.clamped = False
                raise
            for c, key in pending:
                if not key.startswith("!"):  # one-shot commands are not state to restore
                    self._state[key] = c
            if state_key is not None:
                self._state[state_key] = lines[-1]
            return replies[len(pending) :]

    async def _query(self, command: Command, line: str) -> Any:
        """One query (with any deferred setpoints); its reply through the command's parser."""
        rep = (await self._run([line]))[0]
        return self._parsed(command, rep)

    async def _set(self, key: str, line: str) -> None:
        """A setpoint: sent now, or (``pipeline``) with the next exchange — at the latest on
        the second turn of the event loop (:meth:`flush` waits for it)."""
        if not self.options.pipeline:
            await self._run([line], key)
            return
        self._pending.append((line, key))
        if len(self._pending) >= 32:  # a caller that never yields: do not let lines pile up
            await self._run([])
            return
        loop = asyncio.get_running_loop()
        f = self._flusher
        if f is None or f.done() or f.get_loop() is not loop:
            self._flusher = loop.create_task(self._background_flush())

    async def _background_flush(self) -> None:
        # one more turn first: ``read_phases`` yields once (a cancellation point) before its
        # exchange, and a read that follows the setpoints must take them along
        await asyncio.sleep(0)
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
        if not self.link.is_open:
            async with self._lock():
                await _port_io(self.link.open)
                self.link.need_restore = True

    async def _disconnect(self) -> None:
        # deferred setpoints (e.g. the safe biases a wrapping double's exit wrote through the
        # hooks) go out before the port closes — a background flush after the close would
        # reopen the port, possibly after its board is gone and the path serves another
        if self._pending:
            await self.flush()
        async with self._lock():
            await _port_io(self.link.close)

    async def make_safe(self) -> None:
        """One ``SAFE`` line: injection and drive off, every bias at its safe value (deferred
        setpoints are dropped; held phases stay)."""
        self._pending.clear()
        self._deferred_error = None
        await self._run([self.commands.safe()])
        self._forget_unsafe()
        self.clamped = False

    def reseed(self, seed: int) -> None:
        """Reseed the chip emulator's noise (needs ``reseed``: the descriptor says whether the
        board's chip has a seed; else :class:`DeviceError`, like every undeclared ability)."""
        if Capability.RESEED not in self.capabilities:
            super().reseed(seed)
        line = self.commands.seed(seed=int(seed))
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no event loop: nothing else can be using the port
            self.link.transact([line])
            return
        # inside a loop an exchange may be running in a worker thread: send with the next one
        self._pending.append((line, "!seed"))

    # -- hooks -----------------------------------------------------------------------------
    async def _apply_frequencies(self, omega: Array) -> None:
        await self._set("bias", self.commands.set_frequencies(omega=omega))

    def bias_codes(self, values: Array) -> np.ndarray:
        """Bias (device unit) → DAC codes, code = round((v − min)/LSB), LSB = span/(2^bits − 1)."""
        return np.rint((values - self._bias_min) / self._bias_lsb).astype(np.int64)

    async def _apply_biases(self, values: Array) -> None:
        codes = np.clip(self.bias_codes(values), 0, self.dac_max)
        await self._set("bias", self.commands.set_codes(codes=codes))

    async def _apply_couplings(self, values: Array) -> None:
        await self._set("K", self.commands.set_couplings(k=values))

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        line = self.commands.clamp(beta=float(beta), direction=int(direction), targets=target)
        await self._set("clamp", line)

    async def _apply_release(self) -> None:
        await self._set("clamp", self.commands.release())

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        await self._set("held", self.commands.set_held_phases(phases=phases_rad))

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        # the phase register holds [−π, π]: Ψ outside it is wrapped (the same drive: sin is
        # 2π-periodic); a phase inside goes bit-exactly
        phase = phase_rad if abs(phase_rad) <= np.pi else float(wrap(phase_rad))
        line = self.commands.set_drive(phase=phase, amplitude=amplitude)
        await self._set("drive", line)

    async def _read(self, averages: int) -> PhaseReading:
        c = self.commands
        r: BoardReading = await self._query(c.read, c.read(averages=int(averages)))
        return PhaseReading(r.phases, r.spread, r.locked, time.time(), r.averages, r.settle_s)

    async def _read_frequencies(self) -> Array:
        c = self.commands
        freqs: Array = await self._query(c.frequencies, c.frequencies())
        return freqs

    def __repr__(self) -> str:
        return f"SerialSubstrate({self.url!r})"
