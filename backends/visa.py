"""SCPI bench instruments through pyvisa (pyvisa-py, ``@py``): an SMU for the biases, a phase
meter behind a multiplexer for the phases, an injection source for the nudge (DESIGN.md §6).

The bench config (:class:`VisaBenchModel`, ``backend = "visa"``) holds the chip's topology,
roles and limits, one :class:`InstrumentConfig` per instrument (VISA resource string,
explicit read/write termination, timeout, channel map) and, optionally, the device model of
the chip behind the bench (``chip``), whose backend provides the nominal ω → bias map
(``frequencies_to_biases(model, omega)``; without it the bias *is* ω, unit ``model``).

One EP phase costs few round trips: every setting is one ``;``-chained message that ends in
``:SYST:ERR?`` (so the write is confirmed and any refusal is seen at once); a phase read is
one message ``:SAMP:COUN k;:READ?;:CALC:AVER:SDEV?;:STAT:QUES:COND?;:SYST:ERR?`` over a scan
list of all channels, followed by one SMU message that checks every output is still on and no
channel tripped its current compliance during the read.

I/O: see :class:`VisaBench` (``io_mode``). Failure handling: per-operation timeouts
(settings, measurements scaled with the sample count, resynchronisation); after a timeout
or a malformed reply the session is cleared (``clear()``) and resynchronised with a unique
``*ESE n;*ESE?`` marker, so a late reply is never taken for the answer to a later query; a
lost connection is reopened; all commands are absolute settings, so a retry is idempotent.
Past the retry budget the driver raises a clear error naming the instrument, the resource
and the last failure, after trying to leave the device safe. A reading is only returned
when its reply is complete, well-formed, fresh and
the SMU confirms the biases were applied throughout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import Field, model_validator

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.frequency_map import FrequencyMap
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.registry import chip_nominal_map
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import (
    DeviceError,
    DeviceTimeoutError,
    ProtocolError,
    SubstrateError,
)
from phasegrad_hw.physics import Array, wrap

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUMENTS = ("smu", "phase_meter", "injection")
#: QUEStionable bit the phase meter sets when the oscillators slipped during a read.
QUES_PHASE_UNLOCKED = 64
_NO_ERROR = re.compile(r'\+?0,\s*"No error.*"')
_ERROR_REPLY = re.compile(r'([+-]?\d+),\s*"(.*)"')


# --------------------------------------------------------------------------- config
class InstrumentConfig(StrictModel):
    """One instrument: VISA resource, termination characters, timeout, channel map.

    ``channels`` lists the instrument channel (1-based) of each role member: for the SMU and
    the phase meter one per oscillator (index = oscillator), for the injection source one per
    output oscillator (in ``roles.outputs`` order). ``timeout_s`` bounds every setting or
    query (s); measurements get their own timeout (:class:`VisaBenchModel`).
    """

    resource: str = Field(min_length=1)
    read_termination: str = Field(default="\n", min_length=1, max_length=2)
    write_termination: str = Field(default="\n", min_length=1, max_length=2)
    timeout_s: float = Field(default=2.0, gt=0.0, le=600.0)
    channels: list[int]


class VisaBenchModel(DeviceModel):
    """A bench of SCPI instruments around one chip (the chip's topology/roles/limits on top).

    Timeouts in s; ``current_protection_a`` the SMU compliance per channel (A);
    ``injection_v_per_beta`` the injection amplitude (V) per unit nudge strength β.
    """

    backend: Literal["visa"] = "visa"
    smu: InstrumentConfig
    phase_meter: InstrumentConfig
    injection: InstrumentConfig
    chip: dict[str, Any] | None = None
    visa_library: str = "@py"
    measure_timeout_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    measure_timeout_per_sample_s: float = Field(default=1e-3, ge=0.0, le=10.0)
    resync_timeout_s: float = Field(default=2.0, gt=0.0, le=600.0)
    retries: int = Field(default=3, ge=0, le=20)
    reconnect_backoff_s: float = Field(default=0.05, ge=0.0, le=10.0)
    current_protection_a: float = Field(default=0.01, gt=0.0, le=1.0)
    injection_v_per_beta: float = Field(default=1.0, gt=0.0, le=100.0)
    settle_s: float = Field(default=0.0, ge=0.0, le=60.0)
    io_mode: Literal["async", "thread", "inline"] = "async"

    @model_validator(mode="after")
    def _channel_maps(self) -> VisaBenchModel:
        need = {
            "smu": self.n_oscillators,
            "phase_meter": self.n_oscillators,
            "injection": len(self.roles.outputs),
        }
        problems = []
        for name, length in need.items():
            ch = getattr(self, name).channels
            if len(ch) != length:
                problems.append(
                    f"{name}.channels: {len(ch)} entries — need {length} "
                    f"({'one per oscillator' if name != 'injection' else 'one per output'})"
                )
            if any(c < 1 for c in ch):
                problems.append(f"{name}.channels: {ch} — channels are numbered from 1")
            if len(set(ch)) != len(ch):
                problems.append(f"{name}.channels: {ch} — a channel is used twice")
        if self.chip is not None:
            n = self.chip.get("n_oscillators")
            if n != self.n_oscillators:
                problems.append(
                    f"chip.n_oscillators: {n!r} — must equal n_oscillators ({self.n_oscillators})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- chip behind the bench -------------------------------------------------------
    def chip_model(self) -> DeviceModel | None:
        """The chip's own device model (None without a ``chip`` table)."""
        from phasegrad_hw.device.registry import chip_model

        return chip_model(self.chip, bench="visa")


def bench_for_chip(
    chip: DeviceModel, resources: dict[str, str], **overrides: Any
) -> VisaBenchModel:
    """A bench config for ``chip`` wired one-to-one (channel = oscillator/output index + 1)."""
    base = chip.chip_fields("json")
    n, n_out = chip.n, len(chip.roles.outputs)
    data: dict[str, Any] = {
        **base,
        "backend": "visa",
        "name": f"{chip.name}-bench",
        "smu": {"resource": resources["smu"], "channels": list(range(1, n + 1))},
        "phase_meter": {"resource": resources["phase_meter"], "channels": list(range(1, n + 1))},
        "injection": {"resource": resources["injection"], "channels": list(range(1, n_out + 1))},
        "chip": chip.model_dump(mode="json", exclude_none=True),
    }
    data.update(overrides)
    return VisaBenchModel.model_validate(data)


# --------------------------------------------------------------------------- errors
class InstrumentReportedError(ProtocolError):
    """The instrument queued an error for the message just sent (setting not applied)."""


def _socket_of(resource: Any) -> socket.socket | None:
    """The TCP socket under a pyvisa-py SOCKET session (None for other sessions)."""
    try:
        sock = resource.visalib.sessions[resource.session].interface
    except Exception:
        return None
    return sock if isinstance(sock, socket.socket) else None


def _peer_closed(resource: Any) -> bool:
    """True when the peer closed the TCP connection (EOF pending) or the socket is broken."""
    sock = _socket_of(resource)
    if sock is None:
        return False
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return data == b""


# --------------------------------------------------------------------------- driver
class VisaBench(OscillatorSubstrate):
    """The bench as a substrate.

    pyvisa is synchronous. ``io_mode = "async"`` (default) sends a query, waits for the reply
    on the event loop (the loop is never blocked while an instrument works) and reads it
    with pyvisa once a whole line is there; recovery and connection handling run in one
    worker thread. ``"thread"`` runs every query in that thread; ``"inline"`` blocks the
    loop (lowest latency, for single-device scripts).
    """

    model: VisaBenchModel

    def __init__(self, model: VisaBenchModel, seed: int | None = None) -> None:
        super().__init__(model)
        self._rm: Any = None
        self._res: dict[str, Any] = {}
        self._idn: dict[str, str] = {}
        self._marker = int(time.time() * 1000) % 200
        self._executor: ThreadPoolExecutor | None = None
        self._failed: SubstrateError | None = None
        self._pending: list[Future[None]] = []
        self._safe_failed = False
        self._interrupted: set[str] = set()  # instruments whose reply may still be in flight
        self._in_safe = False
        self.retries_used = 0  # recoveries performed (timeouts, bad replies, reconnects)
        self.round_trips = 0
        self.seed = model.seed if seed is None else seed
        n = model.n
        self._smu_ch = model.smu.channels
        self._meter_ch = model.phase_meter.channels
        self._inj_ch = model.injection.channels
        scan = ",".join(str(c) for c in self._smu_ch)
        self._trip_query = f":SENS:CURR:PROT:TRIP? (@{scan});:OUTP? (@{scan})"
        self._n = n

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="visa-bench")
        try:
            await self._run(self._connect_sync)
        except BaseException:
            # connect only resets the instruments and sets safe biases; release the sessions
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect_sync)
            executor.shutdown(wait=True)
            raise

    async def close(self) -> None:
        try:
            if self._failed is not None and self._safe_failed:
                # the error path already tried (and failed) to make the device safe; do not
                # spend another retry budget on an instrument that is gone
                log.error(
                    "bench: closing without making the device safe (it did not answer "
                    "after %s: %s); check the bench by hand",
                    type(self._failed).__name__,
                    self._failed,
                )
                await self._disconnect()
                return
            await super().close()
        except SubstrateError as exc:
            if self._failed is None:
                raise
            log.error(
                "bench: could not make the device safe while closing after %s: %s",
                type(self._failed).__name__,
                exc,
            )
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    async def _disconnect(self) -> None:
        if self._executor is not None:
            await self._run(self._disconnect_sync)

    async def make_safe(self) -> None:
        self._in_safe = True
        try:
            await super().make_safe()
        finally:
            self._in_safe = False

    def reseed(self, seed: int) -> None:
        """Reseed an *emulated* chip's noise (the loop calls this synchronously per epoch).

        Sent as the emulator-only ``:SYST:EMUL:SEED`` to the phase meter, queued on the I/O
        thread so it reaches the chip before any later operation; a real instrument (any
        other ``*IDN?``) gets nothing.
        """
        self.seed = int(seed)
        if self._executor is None or not self._is_emulator():
            return
        msg = f":SYST:EMUL:SEED {self.seed}"
        self._pending.append(self._executor.submit(self._write_checked, "phase_meter", msg))

    def _is_emulator(self) -> bool:
        return self._idn.get("phase_meter", "").upper().startswith("PHASEGRAD-HW")

    # -- hooks ---------------------------------------------------------------------------
    def nominal_map(self) -> FrequencyMap:
        """The design curve of the chip behind the bench (identity without a ``chip``)."""
        return chip_nominal_map(self.model.chip_model())

    async def _apply_biases(self, values: Array) -> None:
        msg = ";".join(
            f":SOUR{c}:VOLT {float(v):.17g}" for c, v in zip(self._smu_ch, values, strict=True)
        )
        await self._guarded(lambda: self._awrite_checked("smu", msg))
        if self.model.settle_s:
            await asyncio.sleep(self.model.settle_s)

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        amp = beta * self.model.injection_v_per_beta
        pol = "NORM" if direction > 0 else "INV"
        parts = []
        for c, t in zip(self._inj_ch, target, strict=True):
            deg = math.degrees(float(wrap(t)))
            parts.append(
                f":SOUR{c}:VOLT {amp:.17g};:SOUR{c}:PHAS {deg:.17g};:OUTP{c}:POL {pol};:OUTP{c} ON"
            )
        msg = ";".join(parts)
        await self._guarded(lambda: self._awrite_checked("injection", msg))

    async def _apply_release(self) -> None:
        msg = ";".join(f":OUTP{c} OFF" for c in self._inj_ch)
        await self._guarded(lambda: self._awrite_checked("injection", msg))

    async def _read(self, averages: int) -> PhaseReading:
        return await self._guarded(lambda: self._aread(averages))

    async def _aread(self, averages: int) -> PhaseReading:
        timeout = self.model.measure_timeout_s + averages * self.model.measure_timeout_per_sample_s
        msg = f":SAMP:COUN {averages};:READ?;:CALC:AVER:SDEV?;:STAT:QUES:COND?;:SYST:ERR?"
        phase = await self._aquery("phase_meter", msg, self._parse_phase, timeout)
        status = await self._aquery(
            "smu", self._trip_query, self._parse_smu, self.model.smu.timeout_s
        )
        return self._reading(averages, phase, status)

    # -- I/O plumbing ------------------------------------------------------------------------
    async def _guarded(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run one operation; on a fatal failure make the bench safe, then raise its cause."""
        if self._executor is None:
            raise DeviceError("bench: not connected (use `async with` or connect())")
        try:
            while self._pending:  # queued fire-and-forget operations (reseed): surface errors
                await asyncio.wrap_future(self._pending.pop(0))
            return await op()
        except _Fatal as exc:
            self._failed = exc.cause
            if not self._in_safe:
                try:
                    await self.make_safe()
                    self._safe_failed = False
                except SubstrateError as safe_exc:
                    self._safe_failed = True
                    log.error(
                        "bench: making the device safe after a fatal error failed: %s", safe_exc
                    )
            raise exc.cause from exc.cause.__cause__

    async def _io(self, fn: Callable[[], T]) -> T:
        """Run synchronous pyvisa work: in the worker thread, or inline (``io_mode``)."""
        if self._executor is None:
            raise DeviceError("bench: not connected (use `async with` or connect())")
        if self.model.io_mode == "inline":
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _run(self, fn: Callable[[], T]) -> T:
        """Synchronous work (connect, reseed, thread-mode queries) under :meth:`_guarded`."""

        async def op() -> T:
            return await self._io(fn)

        return await self._guarded(op)

    async def _awrite_checked(self, name: str, message: str) -> None:
        await self._aquery(
            name,
            f"{message};:SYST:ERR?",
            self._write_ok(name, message),
            getattr(self.model, name).timeout_s,
        )

    async def _aquery(
        self, name: str, message: str, parse: Callable[[str], T], timeout_s: float
    ) -> T:
        """One query. ``async`` mode: send, wait for the reply on the event loop (no thread
        hop), read; any failure is recovered in the worker thread (clear, resync, retry)."""
        if self.model.io_mode != "async" or name in self._interrupted:
            first: Exception | None = None
            if name in self._interrupted:
                self._interrupted.discard(name)
                first = ProtocolError("a query was interrupted; its reply may still arrive")
            return await self._io(lambda: self._transact(name, message, parse, timeout_s, first))
        res = self._res.get(name)
        sock = _socket_of(res) if res is not None else None
        if sock is None:
            return await self._io(lambda: self._transact(name, message, parse, timeout_s))
        self._interrupted.add(name)  # until the reply is in
        try:
            reply = await self._fast_query(res, sock, message, timeout_s)
            result = parse(reply)
        except Exception as exc:
            self._interrupted.discard(name)
            first = self._classify(exc, name, timeout_s)
            log.warning(
                "bench: %s: %s (attempt 1/%d) on %r",
                name,
                first,
                self.model.retries + 1,
                message[:60],
            )
            return await self._io(lambda: self._transact(name, message, parse, timeout_s, first))
        self._interrupted.discard(name)
        return result

    async def _fast_query(
        self, res: Any, sock: socket.socket, message: str, timeout_s: float
    ) -> str:
        session = res.visalib.sessions[res.session]
        if getattr(session, "_pending_buffer", b""):
            raise ProtocolError("unexpected bytes pending before a query")
        term = res.read_termination.encode("latin-1")[-1:] or b"\n"
        self.round_trips += 1
        res.write(message)  # a short message: the send does not block
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        fd = sock.fileno()
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _set_ready, ready)
            try:
                await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise DeviceTimeoutError(f"timeout after {timeout_s:g} s") from None
            finally:
                loop.remove_reader(fd)
            try:
                peek = sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            if not peek:
                raise ConnectionError("connection closed by the instrument")
            if term in peek:
                break  # a whole reply is waiting: pyvisa reads it without blocking
        res.timeout = max(1, int(timeout_s * 1000))
        reply: str = res.read()
        if not reply.isascii() or any(not (" " <= ch <= "~") for ch in reply):
            raise ProtocolError(f"non-ASCII/control bytes in reply {reply[:40]!r}")
        return reply

    # -- synchronous I/O (worker thread) ---------------------------------------------------
    def _open(self, name: str) -> Any:
        import pyvisa

        cfg: InstrumentConfig = getattr(self.model, name)
        if self._rm is None:
            try:
                self._rm = pyvisa.ResourceManager(self.model.visa_library)
            except Exception as exc:  # missing backend library
                raise DeviceError(
                    f"bench: cannot load VISA library {self.model.visa_library!r}: {exc}"
                ) from exc
        res = self._rm.open_resource(cfg.resource, open_timeout=int(cfg.timeout_s * 1000))
        res.read_termination = cfg.read_termination
        res.write_termination = cfg.write_termination
        res.timeout = int(cfg.timeout_s * 1000)
        res.encoding = "latin-1"  # non-ASCII bytes are checked (and refused) by the driver
        sock = _socket_of(res)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._res[name] = res
        return res

    def _reconnect(self, name: str) -> Any:
        old = self._res.pop(name, None)
        if old is not None:
            try:
                old.close()
            except Exception as exc:  # already broken
                log.debug("bench: closing %s: %s", name, exc)
        cfg: InstrumentConfig = getattr(self.model, name)
        log.warning("bench: reconnecting %s (%s)", name, cfg.resource)
        return self._open(name)

    def _connect_sync(self) -> None:
        for name in INSTRUMENTS:
            cfg: InstrumentConfig = getattr(self.model, name)
            last: Exception | None = None
            for attempt in range(self.model.retries + 1):
                self.retries_used += attempt > 0
                try:
                    self._reconnect(name) if name in self._res else self._open(name)
                    self._resync(name)
                    self._idn[name] = self._raw_query(name, "*IDN?", cfg.timeout_s).strip()
                    break
                except DeviceError:
                    raise
                except Exception as exc:  # refused, timed out, reset: try again
                    last = exc
                    time.sleep(self.model.reconnect_backoff_s * 2**attempt)
            else:
                raise DeviceTimeoutError(
                    f"bench: cannot open {name} at {cfg.resource} after "
                    f"{self.model.retries + 1} attempts: {type(last).__name__}: {last}"
                )
            log.info("bench: %s is %s", name, self._idn[name])
        prot = self.model.current_protection_a
        smu = ";".join(f":SENS{c}:CURR:PROT {prot:.17g}" for c in self._smu_ch)
        safe = ";".join(
            f":SOUR{c}:VOLT {v:.17g}"
            for c, v in zip(self._smu_ch, self.model.safe_biases(), strict=True)
        )
        on = ";".join(f":OUTP{c} ON" for c in self._smu_ch)
        self._write_checked("injection", "*RST;*CLS")
        self._write_checked("smu", f"*RST;*CLS;{smu};{safe};{on}")
        scan = ",".join(str(c) for c in self._meter_ch)
        self._write_checked(
            "phase_meter", f"*RST;*CLS;:CONF:PHAS;:FORM:PHAS CENT;:ROUT:CLOS (@{scan})"
        )
        if self._is_emulator():  # the emulated chip's noise seed: a declared ability
            self.capabilities = frozenset({Capability.RESEED})
            self._write_checked("phase_meter", f":SYST:EMUL:SEED {self.seed}")

    def _disconnect_sync(self) -> None:
        for name in list(self._res):
            try:
                self._res.pop(name).close()
            except Exception as exc:
                log.debug("bench: closing %s: %s", name, exc)
        if self._rm is not None:
            try:
                self._rm.close()
            except Exception as exc:
                log.debug("bench: closing resource manager: %s", exc)
            self._rm = None

    def _raw_query(self, name: str, message: str, timeout_s: float) -> str:
        res = self._res.get(name)
        if res is None:
            res = self._reconnect(name)
        res.timeout = max(1, int(timeout_s * 1000))
        self.round_trips += 1
        reply: str = res.query(message)
        if not reply.isascii() or any(not (" " <= ch <= "~") for ch in reply):
            raise ProtocolError(f"non-ASCII/control bytes in reply {reply[:40]!r}")
        return reply

    def _resync(self, name: str) -> None:
        """Discard anything in flight and wait for a fresh marker reply (``*ESE n;*ESE?``)."""
        res = self._res[name]
        if _peer_closed(res):
            res = self._reconnect(name)
        else:
            res.clear()
        self._marker = self._marker % 250 + 1
        marker = str(self._marker)
        deadline = time.monotonic() + self.model.resync_timeout_s
        res.timeout = max(1, int(self.model.resync_timeout_s * 1000))
        res.write(f"*ESE {marker};*ESE?")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceTimeoutError(f"no marker reply within {self.model.resync_timeout_s} s")
            res.timeout = max(1, int(remaining * 1000))
            try:
                line = res.read()
            except UnicodeDecodeError:
                continue
            if line.strip() == marker:
                return
            log.debug("bench: %s: discarded stale reply %r", name, line[:60])

    def _drain_errors(self, name: str) -> list[str]:
        errors = []
        for _ in range(32):
            reply = self._raw_query(name, ":SYST:ERR?", getattr(self.model, name).timeout_s).strip()
            if _NO_ERROR.fullmatch(reply):
                break
            errors.append(reply)
        return errors

    def _classify(self, exc: BaseException, name: str, timeout_s: float) -> Exception:
        """Map a failed attempt to: DeviceTimeoutError, ConnectionError or a SubstrateError."""
        import pyvisa

        if isinstance(exc, pyvisa.errors.VisaIOError):
            if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
                res = self._res.get(name)
                if res is not None and _peer_closed(res):
                    return ConnectionError(f"connection lost ({exc.description})")
                return DeviceTimeoutError(f"timeout after {timeout_s:g} s")
            return ConnectionError(f"I/O error: {exc}")
        if isinstance(exc, DeviceTimeoutError):
            res = self._res.get(name)
            if res is not None and _peer_closed(res):
                return ConnectionError("connection lost (closed by the instrument)")
            return exc
        if isinstance(exc, UnicodeDecodeError):
            return ProtocolError(f"undecodable reply ({exc.reason})")
        if isinstance(exc, SubstrateError | ConnectionError):
            return exc
        # OSError, and the bare Exception pyvisa-py raises when a connect fails
        return ConnectionError(f"{type(exc).__name__}: {exc}")

    def _transact(
        self,
        name: str,
        message: str,
        parse: Callable[[str], T],
        timeout_s: float,
        first_failure: Exception | None = None,
    ) -> T:
        """Send ``message``, parse its reply; recover and retry up to ``model.retries`` times.

        ``first_failure``: the first attempt already failed this way (recover before sending).
        """
        cfg: InstrumentConfig = getattr(self.model, name)
        last: Exception | None = first_failure
        for attempt in range(1 if first_failure is not None else 0, self.model.retries + 1):
            if attempt:
                self.retries_used += 1
                try:
                    if isinstance(last, ConnectionError):
                        time.sleep(self.model.reconnect_backoff_s * 2 ** (attempt - 1))
                        self._reconnect(name)
                    self._resync(name)
                    if isinstance(last, InstrumentReportedError | ProtocolError):
                        errs = self._drain_errors(name)
                        if errs:
                            log.warning("bench: %s reported %s", name, "; ".join(errs))
                except Exception as exc:  # recovery itself failed: count it, try again
                    log.warning("bench: %s: recovery failed: %s", name, exc)
                    last = exc if isinstance(exc, SubstrateError) else ConnectionError(str(exc))
                    continue
            try:
                reply = self._raw_query(name, message, timeout_s)
                return parse(reply)
            except Exception as exc:
                last = self._classify(exc, name, timeout_s)
            log.warning(
                "bench: %s: %s (attempt %d/%d) on %r",
                name,
                last,
                attempt + 1,
                self.model.retries + 1,
                message[:60],
            )
        kind: type[SubstrateError]
        if isinstance(last, DeviceTimeoutError | ConnectionError):
            kind = DeviceTimeoutError
        elif isinstance(last, InstrumentReportedError):
            kind = DeviceError
        else:
            kind = ProtocolError
        err = kind(
            f"bench: {name} ({cfg.resource}) gave no valid reply to {message[:60]!r} after "
            f"{self.model.retries + 1} attempts; last failure: {last}"
        )
        raise _Fatal(err)

    def _query(self, name: str, message: str, parse: Callable[[str], T]) -> T:
        return self._transact(name, message, parse, getattr(self.model, name).timeout_s)

    def _write_ok(self, name: str, message: str) -> Callable[[str], None]:
        """Parser of the ``:SYST:ERR?`` that confirms a chained write."""

        def ok(reply: str) -> None:
            r = reply.strip()
            if _NO_ERROR.fullmatch(r):
                return
            if _ERROR_REPLY.fullmatch(r):
                raise InstrumentReportedError(f"{name} refused {message[:60]!r}: {r}")
            raise ProtocolError(f"unexpected reply {r[:60]!r} to a confirmed write")

        return ok

    def _write_checked(self, name: str, message: str) -> None:
        """Send settings chained with ``:SYST:ERR?``; the instrument must report no error."""
        self._query(name, f"{message};:SYST:ERR?", self._write_ok(name, message))

    def _parse_phase(self, reply: str) -> tuple[Array, Array, int]:
        n = len(self._meter_ch)
        parts = reply.strip().split(";", 3)  # the error string may contain ';'
        if len(parts) == 4 and not _NO_ERROR.fullmatch(parts[3]):
            if _ERROR_REPLY.fullmatch(parts[3]):
                raise InstrumentReportedError(f"phase_meter reported {parts[3]}")
        if len(parts) != 4 or not _NO_ERROR.fullmatch(parts[3]):
            raise ProtocolError(f"phase reply has {len(parts)} parts, expected 4: {reply[:60]!r}")
        try:
            mean = np.array([float(x) for x in parts[0].split(",")])
            sdev = np.array([float(x) for x in parts[1].split(",")])
            ques = int(parts[2])
        except ValueError as exc:
            raise ProtocolError(f"malformed phase reply {reply[:60]!r}") from exc
        if mean.shape != (n,) or sdev.shape != (n,):
            raise ProtocolError(f"phase reply has {mean.size}/{sdev.size} values, expected {n}")
        if not (np.all(np.abs(mean) <= 180.0) and np.all((sdev >= 0) & (sdev < 1e6))):
            raise ProtocolError(f"phase reply out of range: {reply[:60]!r}")
        return mean, sdev, ques

    def _parse_smu(self, reply: str) -> tuple[list[int], list[int]]:
        m = len(self._smu_ch)
        parts = [p.split(",") for p in reply.strip().split(";")]
        if len(parts) != 2 or any(
            len(p) != m or any(x not in ("0", "1") for x in p) for p in parts
        ):
            raise ProtocolError(f"SMU status reply malformed: {reply[:60]!r}")
        return [int(x) for x in parts[0]], [int(x) for x in parts[1]]

    def _reading(
        self,
        averages: int,
        phase: tuple[Array, Array, int],
        status: tuple[list[int], list[int]],
    ) -> PhaseReading:
        """The reading, only if the SMU confirms every output stayed on and none tripped."""
        mean, sdev, ques = phase
        tripped, on = status
        bad = [i for i in range(len(self._smu_ch)) if tripped[i] or not on[i]]
        if bad:
            i = bad[0]
            why = (
                f"tripped its current compliance ({self.model.current_protection_a:g} A)"
                if tripped[i]
                else "has its output off"
            )
            raise _Fatal(
                DeviceError(
                    f"bench: SMU channel {self._smu_ch[i]} (oscillator {i}) {why}; "
                    "the phase reading taken with it is discarded and the bench is being made safe"
                )
            )
        phases = wrap(np.radians(mean))
        phases[self.model.roles.reference] = 0.0
        return PhaseReading(
            phases,
            np.radians(sdev),
            locked=not (ques & QUES_PHASE_UNLOCKED),
            averages=averages,
            settle_s=self.model.settle_s,
        )


def _set_ready(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Fatal(SubstrateError):
    """Internal wrapper: ``cause`` ends the operation; the bench is made safe first."""

    def __init__(self, cause: SubstrateError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def open_bench(model: VisaBenchModel, seed: int | None = None) -> VisaBench:
    """Registry opener: a (not yet connected) bench substrate."""
    return VisaBench(model, seed)
