"""Fault-injecting substrate doubles (docs/design.md §4): wrap any substrate, record every
backend hook call, and fail, hang or corrupt chosen calls.

* :class:`ScriptedSubstrate` — the recording wrapper with per-call faults;
* :class:`FaultySubstrate` / :class:`HangingSubstrate` — its two common scripts (an error,
  or a read that never returns, on the n-th read).

The wrapper has the inner substrate's model, capabilities and frequency map; its hooks call
the inner substrate's hooks, so limit checks, the clamp flag, timeouts and the safe exit are
the base class's, exactly as for a real backend. Units as in
:class:`~phasegrad_hw.device.substrate.OscillatorSubstrate` (ω model units, biases in the
device unit, phases rad).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import DeviceTimeoutError
from phasegrad_hw.physics import Array, wrap


class ScriptedSubstrate(OscillatorSubstrate):
    """A recording, fault-injecting wrapper around ``inner`` (same model and capabilities).

    Counters are 1-based and count hook calls (``reads`` reads, ``clamps`` clamps).
    ``fail_read`` / ``fail_clamp``: {n: exception} raised on the n-th call (after recording
    it, before the inner device sees it). ``hang_read``: the n-th read sets ``hanging`` and
    waits forever (for cancellation and timeout tests). ``unlocked_reads``: reads reported
    as not locked. ``jump_reads``: {n: rad} added to the output phases of the n-th read (a
    basin jump). ``calls`` lists ``(hook, argument)`` in call order.
    """

    def __init__(
        self,
        inner: OscillatorSubstrate,
        *,
        fail_read: dict[int, BaseException] | None = None,
        fail_clamp: dict[int, BaseException] | None = None,
        hang_read: set[int] | None = None,
        unlocked_reads: set[int] | None = None,
        jump_reads: dict[int, float] | None = None,
    ) -> None:
        super().__init__(inner.model)
        self.inner = inner
        self.capabilities = inner.capabilities
        self.frequency_map = inner.frequency_map
        self.fail_read = fail_read or {}
        self.fail_clamp = fail_clamp or {}
        self.hang_read = hang_read or set()
        self.unlocked_reads = unlocked_reads or set()
        self.jump_reads = jump_reads or {}
        self.calls: list[tuple[str, Any]] = []
        self.reads = 0
        self.clamps = 0
        self.biases: Array | None = None
        self.clamp_active = False
        self.hanging = asyncio.Event()

    # -- state checks ---------------------------------------------------------------
    @property
    def is_safe(self) -> bool:
        """No clamp applied and the last biases written are the model's safe values."""
        return (
            not self.clamp_active
            and self.biases is not None
            and np.array_equal(self.biases, self.model.safe_biases())
        )

    def names(self) -> list[str]:
        """The hook names of ``calls``, in order."""
        return [c[0] for c in self.calls]

    # -- lifecycle: the inner device's connection ---------------------------------------
    async def connect(self) -> None:
        self.calls.append(("connect", None))
        await self.inner.connect()

    async def _disconnect(self) -> None:
        self.calls.append(("disconnect", None))
        await self.inner._disconnect()

    # -- optional abilities: forwarded (the inner device's declaration applies) ---------
    def reseed(self, seed: int) -> None:
        self.calls.append(("reseed", seed))
        if Capability.RESEED in self.capabilities:
            self.inner.reseed(seed)

    def true_state(self) -> tuple[Array, bool]:
        return self.inner.true_state()

    def exact_gradient(self, target: Array) -> Array:
        return self.inner.exact_gradient(target)

    # -- hooks ----------------------------------------------------------------------
    async def _apply_frequencies(self, omega: Array) -> None:
        self.calls.append(("frequencies", omega.copy()))
        self.biases = None
        await self.inner._apply_frequencies(omega)

    async def _apply_biases(self, values: Array) -> None:
        self.calls.append(("biases", values.copy()))
        self.biases = values.copy()
        await self.inner._apply_biases(values)

    async def _apply_couplings(self, values: Array) -> None:
        self.calls.append(("couplings", values.copy()))
        await self.inner._apply_couplings(values)

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        self.clamps += 1
        self.calls.append(("clamp", (target.copy(), beta, direction)))
        if self.clamps in self.fail_clamp:
            raise self.fail_clamp[self.clamps]
        self.clamp_active = True
        await self.inner._apply_clamp(target, beta, direction)

    async def _apply_release(self) -> None:
        self.calls.append(("release", None))
        self.clamp_active = False
        await self.inner._apply_release()

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        self.calls.append(("held_phases", phases_rad.copy()))
        await self.inner._apply_held_phases(phases_rad)

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        self.calls.append(("drive", (amplitude.copy(), phase_rad)))
        await self.inner._apply_drive(amplitude, phase_rad)

    async def _read(self, averages: int) -> PhaseReading:
        self.reads += 1
        n = self.reads
        self.calls.append(("read", averages))
        if n in self.fail_read:
            raise self.fail_read[n]
        if n in self.hang_read:
            self.hanging.set()
            await asyncio.Event().wait()
        r = await self.inner._read(averages)
        if n in self.unlocked_reads:
            r = PhaseReading(r.phases, r.spread, False, r.timestamp, r.averages, r.settle_s)
        if n in self.jump_reads:
            ph = r.phases.copy()
            ph[self.model.outputs] = wrap(ph[self.model.outputs] + self.jump_reads[n])
            r = PhaseReading(ph, r.spread, r.locked, r.timestamp, r.averages, r.settle_s)
        return r

    async def _read_frequencies(self) -> Array:
        return await self.inner._read_frequencies()


class FaultySubstrate(ScriptedSubstrate):
    """Raises ``error`` on read number ``on_read`` (default 2: between free and nudged read;
    default error a :class:`DeviceTimeoutError`)."""

    def __init__(
        self, inner: OscillatorSubstrate, on_read: int = 2, error: BaseException | None = None
    ) -> None:
        err = error if error is not None else DeviceTimeoutError("phase meter did not answer")
        super().__init__(inner, fail_read={on_read: err})


class HangingSubstrate(ScriptedSubstrate):
    """Hangs forever on read number ``on_read`` (default 2); ``hanging`` is set when it does."""

    def __init__(self, inner: OscillatorSubstrate, on_read: int = 2) -> None:
        super().__init__(inner, hang_read={on_read})


class HeldDriveRecorder(ScriptedSubstrate):
    """A recording wrapper that declares ``held_phases`` and ``drive`` besides the inner
    device's abilities (its model needs ``roles.held`` / ``roles.drive``), for testing the
    layers that carry them over a wire before, or apart from, the physics behind them.

    ``set_held_phases`` and ``set_drive`` go through the base class's checks; the hook calls
    are recorded in ``calls`` (``("held_phases", phases_rad)``, ``("drive", (amplitude,
    phase_rad))``) and the present settings kept in ``held_phases_rad`` (rad, roles.held
    order), ``drive_amplitude`` (model units, roles.drive order; 0 = off) and
    ``drive_phase_rad``. They are forwarded to the inner device only when it declares the
    ability itself — otherwise its readings do not follow them.
    """

    def __init__(self, inner: OscillatorSubstrate) -> None:
        super().__init__(inner)
        self.capabilities = inner.capabilities | {Capability.HELD_PHASES, Capability.DRIVE}
        self.held_phases_rad = np.zeros(len(self.model.roles.held))
        self.drive_amplitude = np.zeros(len(self.model.roles.drive))
        self.drive_phase_rad = 0.0

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        self.held_phases_rad = phases_rad.copy()
        if Capability.HELD_PHASES in self.inner.capabilities:
            await super()._apply_held_phases(phases_rad)  # records and forwards
        else:
            self.calls.append(("held_phases", phases_rad.copy()))

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        self.drive_amplitude, self.drive_phase_rad = amplitude.copy(), phase_rad
        if Capability.DRIVE in self.inner.capabilities:
            await super()._apply_drive(amplitude, phase_rad)  # records and forwards
        else:
            self.calls.append(("drive", (amplitude.copy(), phase_rad)))
