"""The substrate contract: anything that can bias oscillator frequencies, read phases and
clamp (nudge) its outputs (docs/design.md §4).

Public methods validate against the device model *before* anything reaches a device and then
call the backend's ``_apply_*`` / ``_read`` hooks, each bounded by ``operation_timeout_s`` (a hung
backend raises :class:`~phasegrad_hw.errors.DeviceTimeoutError` instead of blocking the
controller). ``async with substrate:`` connects, and on leaving — normally, by an exception or
by cancellation — releases the clamp and puts every bias at its safe value before closing.

Optional abilities are declared, never probed: a substrate lists them in ``capabilities``
(:class:`Capability`) and the base class's method for an ability it lacks raises
:class:`~phasegrad_hw.errors.DeviceError`. ``frequency_map`` is the ω ↔ bias map
``set_frequencies`` goes through (:mod:`phasegrad_hw.device.frequency_map`): the backend's
nominal curve by default, a calibrated map once a transfer calibration assigns one, ``None``
for devices that take frequencies natively.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.device.frequency_map import FrequencyMap
from phasegrad_hw.errors import DeviceError, DeviceTimeoutError, LimitError

if TYPE_CHECKING:
    from phasegrad_hw.device.model import DeviceModel

log = logging.getLogger(__name__)
Array = NDArray[np.float64]
T = TypeVar("T")
DEFAULT_TIMEOUT_S = 60.0  # bound on any one operation unless a backend or caller sets another


class Capability(StrEnum):
    """Optional abilities a substrate declares in ``capabilities``."""

    COUPLINGS = "couplings"  # set_couplings works
    FREQUENCY_COUNTER = "frequency_counter"  # read_frequencies works
    RESEED = "reseed"  # reseed(seed) restarts the device's noise stream (emulators)
    EXACT_GRADIENT = "exact_gradient"  # true_state() and exact_gradient() (emulators)
    HELD_PHASES = "held_phases"  # set_held_phases works (roles.held, roles.bias)
    DRIVE = "drive"  # set_drive works (roles.drive: an external injected signal)


# --------------------------------------------------------------------------- readings
class ClampTargets(NamedTuple):
    """Where and how hard to clamp the outputs: ``targets`` (n_out,) rad and the ``gain`` κ
    (the clamp strength is β·κ, capped at ``limits.beta_max``; the EP rule still divides by
    β)."""

    targets: NDArray[np.float64]
    gain: float


# rad, or a function of the free output phases giving them (or a ClampTargets)
Targets = ArrayLike | Callable[[NDArray[np.float64]], ArrayLike | ClampTargets]


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
        if s.shape[0] == 1:  # one read: its own phasor (the mean of one), spread 0
            return cls(np.angle(np.exp(1j * s[0])), np.zeros(s.shape[1]), locked, time.time(),
                       1, settle_s)  # fmt: skip
        z = np.exp(1j * s).mean(axis=0)
        spread = np.sqrt(-2.0 * np.log(np.clip(np.abs(z), 1e-300, 1.0)))
        return cls(np.angle(z), spread, locked, time.time(), s.shape[0], settle_s)


@dataclass(frozen=True)
class EPPhases:
    """One EP measurement: the free reading, and when the free state locked the nudged
    reading(s) and the clamp targets (rad) they were taken with."""

    free: PhaseReading
    plus: PhaseReading | None = None
    minus: PhaseReading | None = None
    targets: Array | None = None


# --------------------------------------------------------------------------- contract
class OscillatorSubstrate(ABC):
    """Async device interface. Subclasses implement the underscore hooks.

    Units: frequencies in model units (rad per model time unit, rotating frame); biases in
    the device's physical unit (``model.limits.bias.unit``: V, A, mW); β in model units of
    the nudge strength; phases in rad.
    """

    model: DeviceModel
    capabilities: frozenset[Capability] = frozenset()
    frequency_map: FrequencyMap | None
    operation_timeout_s: float | None = DEFAULT_TIMEOUT_S  # None: in-process computation

    def __init__(self, model: DeviceModel) -> None:
        self.model = model
        self.clamped = False
        self.frequency_map = self.nominal_map()

    def nominal_map(self) -> FrequencyMap | None:
        """The backend's design ω ↔ bias curve; ``None``: the device takes ω natively."""
        return None

    @property
    def map_source(self) -> str:
        """Where ``set_frequencies``' ω → bias map comes from: ``"device"`` (native),
        ``"nominal"`` (design curve) or a calibration source (``"frequency_counter"``,
        ``"phase_response"``)."""
        return "device" if self.frequency_map is None else self.frequency_map.source

    def _bounded(self, op: str, aw: Awaitable[T]) -> Awaitable[T]:
        """Bound one backend operation to ``operation_timeout_s`` seconds (await the result).
        A backend whose operations are computation in this process (the emulators) sets it to
        None: nothing there waits on anything outside, so no timer is armed and ``aw`` is
        awaited as it is."""
        if self.operation_timeout_s is None:
            return aw
        return self._timed(op, aw, self.operation_timeout_s)

    async def _timed(self, op: str, aw: Awaitable[T], timeout_s: float) -> T:
        try:
            async with asyncio.timeout(timeout_s):
                return await aw
        except TimeoutError as exc:
            if isinstance(exc, DeviceTimeoutError):
                raise
            raise DeviceTimeoutError(
                f"{self.model.name}: {op} did not finish within {timeout_s:g} s"
            ) from None

    # -- lifecycle ---------------------------------------------------------------
    async def connect(self) -> None:
        """Open the connection; the default does nothing."""
        return None

    async def close(self) -> None:
        """Make the device safe, then drop the connection."""
        try:
            await self.make_safe()
        finally:
            await self._bounded("disconnect", self._disconnect())

    async def _disconnect(self) -> None:
        """Release transport resources; the default does nothing."""
        return None

    async def make_safe(self) -> None:
        """Release the clamp, switch an external drive off (``drive``) and put every bias at
        its safe value."""
        try:
            await self.release()
            if Capability.DRIVE in self.capabilities:
                off = np.zeros(len(self.model.roles.drive))
                await self._bounded("make_safe", self._apply_drive(off, 0.0))
        finally:
            await self._bounded("make_safe", self._apply_biases(self.model.safe_biases()))

    async def __aenter__(self) -> OscillatorSubstrate:
        await self._bounded("connect", self.connect())
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
        """Set natural frequencies ω (N,), model units, through ``frequency_map`` (the biases
        it gives are limit-checked like any other) or natively when there is no map."""
        w = self.model.check_frequencies(omega)
        fmap = self.frequency_map
        if fmap is None:
            await self._bounded("set_frequencies", self._apply_frequencies(w))
            return
        try:
            biases = self.model.check_biases(fmap.bias(w))
        except LimitError as exc:
            raise LimitError(
                f"{exc} (the {fmap.source} frequency map maps omega "
                f"{np.round(w, 4).tolist()} to biases the device refuses)"
            ) from None
        await self._bounded("set_frequencies", self._apply_biases(biases))

    async def set_biases(self, values: ArrayLike) -> None:
        """Set raw biases (N,) in the device's physical unit, limit-checked per channel."""
        await self._bounded("set_biases", self._apply_biases(self.model.check_biases(values)))

    async def set_couplings(self, values: ArrayLike) -> None:
        """Set couplings on the model's edges (E,), model units; needs ``couplings``."""
        if Capability.COUPLINGS not in self.capabilities:
            raise DeviceError(f"{type(self).__name__}: this device cannot set couplings")
        k = self.model.check_couplings(values)
        await self._bounded("set_couplings", self._apply_couplings(k))

    async def clamp(self, target: ArrayLike, beta: float, direction: int = 1) -> None:
        """Nudge the output oscillators toward ``target`` (one phase per output, rad).

        ``beta`` >= 0 is the nudge strength; ``direction`` −1 pushes away from the target
        (the −β state of a centred estimate).
        """
        t, b = self.model.check_clamp(target, beta)
        if direction not in (1, -1):
            raise LimitError(f"direction: {direction!r} must be +1 or -1")
        await self._bounded("clamp", self._apply_clamp(t, b, direction))
        self.clamped = True

    async def set_held_phases(self, phases_rad: ArrayLike) -> None:
        """Set the injection phases (rad) of the held input oscillators, ``roles.held`` in
        that order (needs ``held_phases``). A held oscillator is injection-locked by the
        reference clock through a programmable phase shifter (strength
        ``model.held_injection``), so its phase follows φ_in; the bias oscillators
        (``roles.bias``) stay at ``model.bias_phases_rad``, applied by the backend on connect.
        docs/design.md §8."""
        if Capability.HELD_PHASES not in self.capabilities:
            raise DeviceError(f"{type(self).__name__}: this device has no held inputs")
        p = self.model.check_held_phases(phases_rad)
        await self._bounded("set_held_phases", self._apply_held_phases(p))

    async def set_drive(self, amplitude: ArrayLike, phase_rad: float) -> None:
        """Inject the external signal Ψ into the drive oscillators ``roles.drive`` (needs
        ``drive``): dθ_i/dt gains F_i·sin(Ψ − θ_i) with ``amplitude`` F (n_drive,) model
        units in [0, ``limits.drive_max``], quasi-static phase Ψ = ``phase_rad`` relative to
        the reference. Amplitude 0 switches the drive off (``make_safe`` does).
        docs/design.md §9."""
        if Capability.DRIVE not in self.capabilities:
            raise DeviceError(f"{type(self).__name__}: this device cannot apply a drive")
        a, p = self.model.check_drive(amplitude, phase_rad)
        await self._bounded("set_drive", self._apply_drive(a, p))

    async def release(self) -> None:
        """Stop nudging."""
        await self._bounded("release", self._apply_release())
        self.clamped = False

    async def read_phases(self, averages: int = 1) -> PhaseReading:
        """Read wrapped phases relative to the reference, averaged over ``averages`` reads."""
        # a read is where the library's loops of single reads (calibration sweeps,
        # evaluation) pass: yield to the event loop here, so a cancellation (a signal in the
        # command line) is delivered even on in-process emulators, whose awaits never suspend
        await asyncio.sleep(0)
        return await self._read_checked(averages)

    async def _read_checked(self, averages: int) -> PhaseReading:
        """``read_phases`` without the yield (``measure_ep``: its caller, the EP step,
        yields once per step — the training loop's cancellation point)."""
        return await self._bounded("read_phases", self._read(self._check_averages(averages)))

    def _check_averages(self, averages: int) -> int:
        """``averages`` as an int in 1…limits.max_averages, else :class:`LimitError`."""
        if (
            not isinstance(averages, (int, np.integer))
            or not 1 <= averages <= self.model.limits.max_averages
        ):
            raise LimitError(
                f"averages: {averages!r} is out of range; "
                f"allowed 1…{self.model.limits.max_averages}"
            )
        return int(averages)

    def _check_rows(self, omegas: ArrayLike) -> Array:
        """``omegas`` as an (n, N) float array of frequency rows (shape only; each row is
        limit-checked where it is set), else :class:`LimitError`."""
        rows = np.asarray(omegas, dtype=np.float64)
        if rows.ndim != 2:
            raise LimitError(f"omegas: shape {rows.shape} must be (n, {self.model.n})")
        return rows

    async def read_frequencies(self) -> Array:
        """Free-running frequency of each oscillator (model units); needs ``frequency_counter``."""
        if Capability.FREQUENCY_COUNTER not in self.capabilities:
            raise DeviceError(f"{type(self).__name__}: this device has no frequency counter")
        await asyncio.sleep(0)  # a cancellation point, as in read_phases
        return await self._bounded("read_frequencies", self._read_frequencies())

    # -- compound measurements: one implementation here; a remote backend may send each as
    # -- one exchange (same operations, same order)
    async def measure_ep(
        self,
        omega: ArrayLike | None,
        targets: Targets,
        beta: float,
        averages: int = 1,
        centred: bool = False,
    ) -> EPPhases:
        """One EP measurement (docs/design.md §2): the free locked phases at ``omega`` (model
        units); if locked, the nudged phases — clamp the outputs toward ``targets`` (rad, or a
        function of the free output phases, which may return :class:`ClampTargets` to clamp
        with β·gain) with strength ``beta``, and with ``centred`` the −β phases too — then
        release. An unlocked free state is never nudged. ``omega`` None: the frequencies are
        already set."""
        if omega is not None:
            await self.set_frequencies(omega)
        free = await self._read_checked(averages)
        if not free.locked:
            return EPPhases(free)
        got = targets(free.phases[self.model.outputs]) if callable(targets) else targets
        if isinstance(got, ClampTargets):
            beta = min(beta * got.gain, self.model.limits.beta_max)
            got = got.targets
        t = np.asarray(got, dtype=np.float64)
        await self.clamp(t, beta)
        plus = await self._read_checked(averages)
        minus = None
        if centred:
            await self.clamp(t, beta, direction=-1)
            minus = await self._read_checked(averages)
        await self.release()
        return EPPhases(free, plus, minus, t)

    async def read_phases_at(self, omegas: ArrayLike, averages: int = 1) -> list[PhaseReading]:
        """Free phases at each row of ``omegas`` (n, N) model units, in order
        (``set_frequencies`` + ``read_phases`` per row); the device ends at the last row."""
        out = []
        for w in self._check_rows(omegas):
            await self.set_frequencies(w)
            out.append(await self.read_phases(averages))
        return out

    # -- optional abilities (declared in ``capabilities``; the base raises) ---------------
    def reseed(self, seed: int) -> None:
        """Restart the device's noise stream under ``seed`` (needs ``reseed``): an emulated
        chip returns to its power-on state, so a resumed run repeats an uninterrupted one."""
        raise DeviceError(f"{type(self).__name__}: this device cannot be reseeded")

    def true_state(self) -> tuple[Array, bool]:
        """The emulator's noiseless locked phases (N,) rad and whether it is locked (needs
        ``exact_gradient``)."""
        raise DeviceError(f"{type(self).__name__}: this device cannot report its true state")

    def exact_gradient(self, target: Array) -> Array:
        """The true ∂L/∂ω (N,) of the present free state for output ``target`` phases (rad),
        by implicit differentiation (needs ``exact_gradient``)."""
        raise DeviceError(f"{type(self).__name__}: this device cannot report its gradient")

    # -- backend hooks -------------------------------------------------------------
    async def _apply_frequencies(self, omega: Array) -> None:
        """Set ω natively (devices whose ``frequency_map`` is None)."""
        raise DeviceError(f"{type(self).__name__}: no frequency map and no native ω setting")

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

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        raise DeviceError(f"{type(self).__name__}: this device has no held inputs")

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        raise DeviceError(f"{type(self).__name__}: this device cannot apply a drive")
