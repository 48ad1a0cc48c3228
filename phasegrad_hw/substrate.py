"""The substrate contract: anything that can bias oscillator frequencies, read phases and
clamp (nudge) its outputs (DESIGN.md §4).

Public methods validate against the device model *before* anything reaches a device and then
call the backend's ``_apply_*`` / ``_read`` hooks. ``async with substrate:`` connects, and on
leaving — normally, by an exception or by cancellation — releases the clamp and puts every
bias at its safe value before closing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from phasegrad_hw.models import DeviceModel

log = logging.getLogger(__name__)
Array = NDArray[np.float64]


# --------------------------------------------------------------------------- errors
class SubstrateError(Exception):
    """Base class of every device-side failure."""


class LimitError(SubstrateError, ValueError):
    """A value outside the device model's range; nothing was sent."""


class LockLostError(SubstrateError):
    """The oscillators are not phase-locked (phases slip between reads)."""


class DeviceTimeoutError(SubstrateError, TimeoutError):
    """The device did not answer within its timeout."""


class ProtocolError(SubstrateError):
    """A reply that breaks the protocol (bad checksum, wrong sequence number, garbage)."""


class DeviceError(SubstrateError):
    """The device reported an error or is in a state it cannot leave by itself."""


class Capability(StrEnum):
    """Optional abilities a substrate declares in ``capabilities``."""

    COUPLINGS = "couplings"  # set_couplings works
    FREQUENCY_COUNTER = "frequency_counter"  # read_frequencies works
    BATCH = "batch"  # many virtual chips in one call
    EXACT_GRADIENT = "exact_gradient"  # an emulator that can report its true gradient


# --------------------------------------------------------------------------- readings
@dataclass(frozen=True)
class PhaseReading:
    """One (possibly averaged) phase read.

    ``phases`` (N,) rad in [−π, π), relative to the reference oscillator (its entry is 0);
    ``spread`` (N,) rad, circular standard deviation across the averaged reads (0 for one
    read); ``locked`` the device saw no phase slip during the read; ``timestamp`` s (Unix);
    ``settle_s`` the settling time the device waited or would have waited.
    """

    phases: Array
    spread: Array
    locked: bool
    timestamp: float = field(default_factory=time.time)
    averages: int = 1
    settle_s: float = 0.0

    @classmethod
    def from_samples(
        cls, samples: ArrayLike, *, locked: bool = True, settle_s: float = 0.0
    ) -> PhaseReading:
        """Circular mean and spread of (M, N) wrapped phase samples (rad)."""
        s = np.atleast_2d(np.asarray(samples, dtype=np.float64))
        z = np.exp(1j * s).mean(axis=0)
        r = np.clip(np.abs(z), 1e-300, 1.0)
        spread = np.sqrt(-2.0 * np.log(r)) if s.shape[0] > 1 else np.zeros(s.shape[1])
        return cls(np.angle(z), spread, locked, time.time(), s.shape[0], settle_s)


# --------------------------------------------------------------------------- contract
class OscillatorSubstrate(ABC):
    """Async device interface. Subclasses implement the underscore hooks.

    Units: frequencies in model units (rad per model time unit, rotating frame); biases in
    the device's physical unit (``model.limits.bias.unit``: V, A, mW); β in model units of
    the nudge strength; phases in rad.
    """

    model: DeviceModel
    capabilities: frozenset[Capability] = frozenset()

    def __init__(self, model: DeviceModel) -> None:
        self.model = model
        self.clamped = False

    # -- lifecycle ---------------------------------------------------------------
    async def connect(self) -> None:
        """Open the connection; the default does nothing."""
        return None

    async def close(self) -> None:
        """Make the device safe, then drop the connection."""
        try:
            await self.make_safe()
        finally:
            await self._disconnect()

    async def _disconnect(self) -> None:
        """Release transport resources; the default does nothing."""
        return None

    async def make_safe(self) -> None:
        """Release the clamp and put every bias at its safe value."""
        try:
            await self.release()
        finally:
            await self._apply_biases(self.model.safe_biases())

    async def __aenter__(self) -> OscillatorSubstrate:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # shield: a cancelled task must still leave the device safe
        task = asyncio.ensure_future(self.close())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

    # -- validated public API ----------------------------------------------------
    async def set_frequencies(self, omega: ArrayLike) -> None:
        """Set natural frequencies ω (N,), model units; the backend maps them to biases."""
        await self._apply_frequencies(self.model.check_frequencies(omega))

    async def set_biases(self, values: ArrayLike) -> None:
        """Set raw biases (N,) in the device's physical unit, limit-checked per channel."""
        await self._apply_biases(self.model.check_biases(values))

    async def set_couplings(self, values: ArrayLike) -> None:
        """Set couplings on the model's edges (E,), model units; needs ``couplings``."""
        if Capability.COUPLINGS not in self.capabilities:
            raise DeviceError(f"{type(self).__name__}: this device cannot set couplings")
        await self._apply_couplings(self.model.check_couplings(values))

    async def clamp(self, target: ArrayLike, beta: float, direction: int = 1) -> None:
        """Nudge the output oscillators toward ``target`` (one phase per output, rad).

        ``beta`` >= 0 is the nudge strength; ``direction`` −1 pushes away from the target
        (the −β state of a centred estimate).
        """
        t, b = self.model.check_clamp(target, beta)
        if direction not in (1, -1):
            raise LimitError(f"direction: {direction!r} must be +1 or -1")
        await self._apply_clamp(t, b, direction)
        self.clamped = True

    async def release(self) -> None:
        """Stop nudging."""
        await self._apply_release()
        self.clamped = False

    async def read_phases(self, averages: int = 1) -> PhaseReading:
        """Read wrapped phases relative to the reference, averaged over ``averages`` reads."""
        if (
            not isinstance(averages, (int, np.integer))
            or not 1 <= averages <= self.model.limits.max_averages
        ):
            raise LimitError(
                f"averages: {averages!r} is out of range; "
                f"allowed 1…{self.model.limits.max_averages}"
            )
        return await self._read(int(averages))

    async def read_frequencies(self) -> Array:
        """Free-running frequency of each oscillator (model units); needs ``frequency_counter``."""
        if Capability.FREQUENCY_COUNTER not in self.capabilities:
            raise DeviceError(f"{type(self).__name__}: this device has no frequency counter")
        return await self._read_frequencies()

    # -- backend hooks -------------------------------------------------------------
    @abstractmethod
    async def _apply_frequencies(self, omega: Array) -> None: ...

    @abstractmethod
    async def _apply_biases(self, values: Array) -> None: ...

    @abstractmethod
    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None: ...

    @abstractmethod
    async def _apply_release(self) -> None: ...

    @abstractmethod
    async def _read(self, averages: int) -> PhaseReading: ...

    async def _apply_couplings(self, values: Array) -> None:
        raise DeviceError(f"{type(self).__name__}: this device cannot set couplings")

    async def _read_frequencies(self) -> Array:
        raise DeviceError(f"{type(self).__name__}: this device has no frequency counter")
