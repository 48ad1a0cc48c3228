"""SCPI bench instruments through pyvisa (pyvisa-py, ``@py``): an SMU for the biases, a phase
meter behind a multiplexer for the phases, an injection source for the nudge and, on a chip
with held inputs or driven oscillators, an input source for the held phases and the drive
(docs/design.md §6, §8, §9).

Three layers: the link (:mod:`.scpi_link`: framing, retry, resync, reconnect, I/O mode; a
socket of its own for raw ``TCPIP::host::port::SOCKET`` resources, a pyvisa resource for the
rest), the instruments' command tables (:mod:`.scpi_instruments`: each command's string,
parameter validators and reply parser) and this substrate, which composes them.

The bench config (:class:`~.visa_config.VisaBenchModel`, ``backend = "visa"``) holds the
chip's topology, roles and limits, one :class:`InstrumentConfig` per instrument (VISA
resource string, explicit read/write termination, timeout, channel map) and, optionally,
the device model of the chip behind the bench (``chip``), whose backend provides the
nominal ω → bias map (without it the bias *is* ω, unit ``model``).

One EP phase costs few round trips: every setting is one ``;``-chained message that ends in
``:SYST:ERR?`` (so the write is confirmed and any refusal is seen at once); a phase read is
one message ``:SAMP:COUN k;:READ?;:CALC:AVER:SDEV?;:STAT:QUES:COND?;:SYST:ERR?`` over a scan
list of all channels, followed by one SMU message that checks every output is still on and no
channel tripped its current compliance during the read.

I/O: see :class:`~.scpi_link.IoRunner` (``io_mode``). Failure handling: per-operation timeouts
(settings, measurements scaled with the sample count, resynchronisation); after a timeout
or a malformed reply the session is cleared (``clear()``) and resynchronised with a unique
``*ESE n;*ESE?`` marker, so a late reply is never taken for the answer to a later query; a
lost connection is reopened; all commands are absolute settings, so a retry is idempotent.
Past the retry budget the driver raises a clear error naming the instrument, the resource
and the last failure, after trying to leave the device safe. A reading is only returned
when its reply is complete, well-formed, fresh and the SMU confirms the biases were applied
throughout.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np

from phasegrad_hw.backends.scpi_instruments import (
    Bound,
    Instrument,
    injection_commands,
    phase_meter_commands,
    smu_commands,
)
from phasegrad_hw.backends.scpi_link import (
    IoRunner,
    PyvisaTransport,
    ScpiLink,
    ScpiTransport,
    SocketTransport,
)
from phasegrad_hw.backends.visa_config import (
    INPUT_SOURCE,
    SOCKET_RESOURCE,
    InstrumentConfig,
    VisaBenchModel,
)
from phasegrad_hw.device.frequency_map import FrequencyMap
from phasegrad_hw.device.registry import chip_nominal_map
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import DeviceError, ProtocolError, SubstrateError
from phasegrad_hw.physics import Array, wrap
from phasegrad_hw.wire.scpi import QUES_PHASE_UNLOCKED

log = logging.getLogger(__name__)
T = TypeVar("T")


class VisaBench(OscillatorSubstrate):
    """The bench as a substrate: an SMU, a phase meter and an injection source, each an
    :class:`~.scpi_instruments.Instrument` (command table + :class:`~.scpi_link.ScpiLink`).

    ``retries_used`` counts recoveries (timeouts, bad replies, reconnects), ``round_trips``
    messages that expected a reply, over all instruments. With an input source
    (``model.input_source``) the bench declares ``held_phases`` (a channel per held input:
    its phase) and ``drive`` (a channel per driven oscillator: amplitude
    ``drive_v_per_unit``·F_i, phase Ψ) for the roles the chip has.
    """

    model: VisaBenchModel

    def __init__(self, model: VisaBenchModel, seed: int | None = None) -> None:
        super().__init__(model)
        self._rm: Any = None
        self._idn: dict[str, str] = {}
        self._io = IoRunner(model.io_mode)
        self._failed: SubstrateError | None = None
        self._pending: list[Future[None]] = []
        self._safe_failed = False
        self._in_safe = False
        self.seed = model.seed if seed is None else seed
        self._smu_ch = model.smu.channels
        self._meter_ch = model.phase_meter.channels
        self._inj_ch = model.injection.channels
        inputs = model.input_source.channels if model.input_source is not None else []
        self._held_ch = inputs[: len(model.roles.held)]
        self._drive_ch = inputs[len(model.roles.held) :]
        marker = int(time.time() * 1000)
        self.links = {
            name: ScpiLink(
                name,
                self._transport(getattr(model, name)),
                self._io,
                timeout_s=getattr(model, name).timeout_s,
                retries=model.retries,
                resync_timeout_s=model.resync_timeout_s,
                reconnect_backoff_s=model.reconnect_backoff_s,
                marker_seed=marker + i,
            )
            for i, name in enumerate(model.instruments())
        }
        amp_max = model.limits.beta_max * model.injection_v_per_beta
        self.smu = Instrument(smu_commands(max(self._smu_ch)), self.links["smu"])
        self.meter = Instrument(
            phase_meter_commands(max(self._meter_ch)), self.links["phase_meter"]
        )
        self.injection = Instrument(
            injection_commands(max(self._inj_ch), amp_max), self.links["injection"]
        )
        self.inputs: Instrument | None = None
        if inputs:
            drive_max_v = model.limits.drive_max * model.drive_v_per_unit
            self.inputs = Instrument(
                injection_commands(max(inputs), drive_max_v, INPUT_SOURCE),
                self.links[INPUT_SOURCE],
            )
        self._abilities = frozenset(
            {Capability.HELD_PHASES} if self._held_ch else set()
        ) | frozenset({Capability.DRIVE} if self._drive_ch else set())
        self.capabilities = self._abilities

    def _transport(self, cfg: InstrumentConfig) -> ScpiTransport:
        link = self.model.link
        if link == "socket" or (link == "auto" and SOCKET_RESOURCE.fullmatch(cfg.resource)):
            return SocketTransport(
                cfg.resource, open_timeout_s=cfg.timeout_s, read_termination=cfg.read_termination
            )
        return PyvisaTransport(
            cfg.resource,
            self._resource_manager,
            open_timeout_s=cfg.timeout_s,
            read_termination=cfg.read_termination,
            write_termination=cfg.write_termination,
        )

    def _resource_manager(self) -> Any:
        if self._rm is None:
            import pyvisa

            try:
                self._rm = pyvisa.ResourceManager(self.model.visa_library)
            except Exception as exc:  # missing backend library
                raise DeviceError(
                    f"bench: cannot load VISA library {self.model.visa_library!r}: {exc}"
                ) from exc
        return self._rm

    @property
    def retries_used(self) -> int:
        return sum(lk.retries_used for lk in self.links.values())

    @property
    def round_trips(self) -> int:
        return sum(lk.round_trips for lk in self.links.values())

    # -- lifecycle -------------------------------------------------------------------
    async def connect(self) -> None:
        self._io.start()
        try:
            await self._guarded(lambda: self._io.run(self._connect_sync))
        except BaseException:
            # connect only resets the instruments and sets safe biases; release the sessions
            executor = self._io.executor
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect_sync)
            self._io.stop()
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
            self._io.stop()

    async def _disconnect(self) -> None:
        if self._io.running:
            await self._io.run(self._disconnect_sync)

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
        if self._io.executor is None or not self._is_emulator():
            return
        msg = self.meter.emulator_seed(seed=self.seed)
        self._pending.append(self._io.executor.submit(self._write_sync, self.meter, msg))

    def _is_emulator(self) -> bool:
        return self._idn.get("phase_meter", "").upper().startswith("PHASEGRAD-HW")

    # -- hooks ---------------------------------------------------------------------------
    def nominal_map(self) -> FrequencyMap:
        """The design curve of the chip behind the bench (identity without a ``chip``)."""
        return chip_nominal_map(self.model.chip_model())

    async def _apply_biases(self, values: Array) -> None:
        smu = self.smu
        parts = [
            smu.set_voltage(ch=c, volts=float(v)) for c, v in zip(self._smu_ch, values, strict=True)
        ]
        await self._guarded(lambda: self._write(smu, *parts))
        if self.model.settle_s:
            await asyncio.sleep(self.model.settle_s)

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        inj = self.injection
        amp = beta * self.model.injection_v_per_beta
        parts = []
        for c, t in zip(self._inj_ch, target, strict=True):
            parts += [
                inj.set_amplitude(ch=c, volts=amp),
                inj.set_phase(ch=c, degrees=math.degrees(float(wrap(t)))),
                inj.set_polarity(ch=c, direction=1 if direction > 0 else -1),
                inj.set_output(ch=c, on=True),
            ]
        await self._guarded(lambda: self._write(inj, *parts))

    async def _apply_release(self) -> None:
        inj = self.injection
        parts = [inj.set_output(ch=c, on=False) for c in self._inj_ch]
        await self._guarded(lambda: self._write(inj, *parts))

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        src = self.inputs
        assert src is not None  # declared only with an input source
        parts = [
            src.set_phase(ch=c, degrees=math.degrees(float(p)))
            for c, p in zip(self._held_ch, phases_rad, strict=True)
        ]
        await self._guarded(lambda: self._write(src, *parts))

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        src = self.inputs
        assert src is not None  # declared only with an input source
        degrees = math.degrees(float(wrap(phase_rad)))
        parts = []
        for c, a in zip(self._drive_ch, amplitude, strict=True):
            parts += [
                src.set_amplitude(ch=c, volts=float(a) * self.model.drive_v_per_unit),
                src.set_phase(ch=c, degrees=degrees),
            ]
        await self._guarded(lambda: self._write(src, *parts))

    async def _read(self, averages: int) -> PhaseReading:
        return await self._guarded(lambda: self._aread(averages))

    async def _aread(self, averages: int) -> PhaseReading:
        m = self.meter
        timeout = self.model.measure_timeout_s + averages * self.model.measure_timeout_per_sample_s
        n = len(self._meter_ch)
        phase = await self._ask(
            m,
            [m.sample_count(count=averages), m.read(), m.spread(), m.questionable()],
            lambda r: _count("phase reply", r[:2], n),
            timeout_s=timeout,
        )
        s = self.smu
        status = await self._ask(
            s,
            [s.tripped(channels=self._smu_ch), s.outputs_on(channels=self._smu_ch)],
            lambda r: _count("SMU status reply", r, len(self._smu_ch)),
            check_errors=False,
        )
        return self._reading(averages, phase, status)

    # -- I/O plumbing ------------------------------------------------------------------------
    async def _guarded(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run one operation; on a fatal failure make the bench safe, then raise its cause."""
        if not self._io.running:
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

    async def _write(self, inst: Instrument, *parts: Bound) -> None:
        try:
            await inst.write(*parts)
        except SubstrateError as exc:  # the link gave up: fatal
            raise _Fatal(exc) from exc

    def _write_sync(self, inst: Instrument, *parts: Bound) -> None:
        try:
            inst.write_sync(*parts)
        except SubstrateError as exc:
            raise _Fatal(exc) from exc

    async def _ask(
        self,
        inst: Instrument,
        parts: list[Bound],
        check: Callable[[list[Any]], None],
        *,
        check_errors: bool = True,
        timeout_s: float | None = None,
    ) -> list[Any]:
        try:
            return await inst.ask(
                *parts, check=check, check_errors=check_errors, timeout_s=timeout_s
            )
        except SubstrateError as exc:
            raise _Fatal(exc) from exc

    # -- synchronous I/O (worker thread) ---------------------------------------------------
    def _connect_sync(self) -> None:
        for name, lk in self.links.items():
            self._idn[name] = lk.connect()
            log.info("bench: %s is %s", name, self._idn[name])
        inj, smu, m = self.injection, self.smu, self.meter
        prot = self.model.current_protection_a
        self._write_sync(inj, inj.reset(), inj.clear_status())
        self._write_sync(
            smu,
            smu.reset(),
            smu.clear_status(),
            *[smu.set_current_protection(ch=c, amps=prot) for c in self._smu_ch],
            *[
                smu.set_voltage(ch=c, volts=float(v))
                for c, v in zip(self._smu_ch, self.model.safe_biases(), strict=True)
            ],
            *[smu.set_output(ch=c, on=True) for c in self._smu_ch],
        )
        self._write_sync(
            m,
            m.reset(),
            m.clear_status(),
            m.configure_phase(),
            m.phase_format(form="centred"),
            m.route(channels=self._meter_ch),
        )
        if self.inputs is not None:  # held phases 0 rad, drive amplitude 0, outputs on
            src = self.inputs
            self._write_sync(
                src,
                src.reset(),
                src.clear_status(),
                *[src.set_output(ch=c, on=True) for c in self._held_ch + self._drive_ch],
            )
        if self._is_emulator():  # the emulated chip's noise seed: a declared ability
            self.capabilities = self._abilities | {Capability.RESEED}
            self._write_sync(m, m.emulator_seed(seed=int(self.seed)))

    def _disconnect_sync(self) -> None:
        for lk in self.links.values():
            lk.close()
        if self._rm is not None:
            try:
                self._rm.close()
            except Exception as exc:
                log.debug("bench: closing resource manager: %s", exc)
            self._rm = None

    def _reading(self, averages: int, phase: list[Any], status: list[Any]) -> PhaseReading:
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


def _count(what: str, values: list[Any], n: int) -> None:
    """Every per-channel list of a reply has ``n`` entries (else the reply is malformed)."""
    sizes = [len(v) for v in values]
    if any(s != n for s in sizes):
        raise ProtocolError(f"{what} has {'/'.join(map(str, sizes))} values, expected {n}")


class _Fatal(SubstrateError):
    """Internal wrapper: ``cause`` ends the operation; the bench is made safe first."""

    def __init__(self, cause: SubstrateError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def open_bench(model: VisaBenchModel, seed: int | None = None) -> VisaBench:
    """Registry opener: a (not yet connected) bench substrate."""
    return VisaBench(model, seed)
