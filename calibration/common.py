"""Shared pieces of the calibration suite: thresholds, the operating point, locked reads,
edge phase differences, atomic file writes and progress callbacks.

Everything here talks to a device only through the substrate contract
(:class:`phasegrad_hw.device.substrate.OscillatorSubstrate`), so it runs unchanged on an emulator,
a board over serial, a SCPI bench or a remote device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.device.model import CalibrationThresholds, DeviceModel
from phasegrad_hw.device.substrate import OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import LockLostError
from phasegrad_hw.physics import Array, CouplingFunction, wrap

log = logging.getLogger(__name__)

#: progress callback: (message, fraction done in [0, 1])
Progress = Callable[[str, float], None]


def no_progress(message: str, fraction: float) -> None:
    """The default progress callback: log at debug level."""
    log.debug("%5.1f %% %s", 100.0 * fraction, message)


def thresholds(model: DeviceModel) -> CalibrationThresholds:
    """The device file's ``calibration`` thresholds, or the defaults."""
    return model.calibration if model.calibration is not None else CalibrationThresholds()


def odd_coupling(model: DeviceModel) -> CouplingFunction:
    """The odd part the identity assumes: the device's harmonics, no lag, no offsets."""
    return CouplingFunction(tuple(model.coupling_function.harmonics))


def non_reference(model: DeviceModel) -> NDArray[np.int64]:
    """Indices of the non-reference oscillators (the reduced system), ascending."""
    return np.flatnonzero(np.arange(model.n) != model.roles.reference).astype(np.int64)


def edge_dtheta(theta: Array, edges: NDArray[np.int64]) -> Array:
    """Wrapped phase difference θ_j − θ_i (rad) on every edge (i, j)."""
    return wrap(theta[edges[:, 1]] - theta[edges[:, 0]])


async def read_locked(sub: OscillatorSubstrate, averages: int, retries: int = 3) -> PhaseReading:
    """A locked (possibly averaged) read; re-reads up to ``retries`` times after a read that
    reports loss of lock (a transient), then raises :class:`LockLostError`."""
    reading = await sub.read_phases(averages)
    for _ in range(retries):
        if reading.locked:
            return reading
        reading = await sub.read_phases(averages)
    if not reading.locked:
        raise LockLostError(f"{sub.model.name}: not phase-locked after {retries + 1} reads")
    return reading


async def operating_point(
    sub: OscillatorSubstrate,
    omega: Array | None = None,
    *,
    amplitude: float | None = None,
    seed: int = 0,
    max_edge_rad: float = 1.0,
    averages: int = 16,
) -> tuple[Array, PhaseReading]:
    """Set and verify the operating point the calibration linearises around.

    Without ``omega``: seeded uniform frequencies of ``amplitude`` (default 30 % of the
    smaller |ω limit|), halved until the device locks with every edge inside
    ``max_edge_rad`` (spread phase differences give the non-odd test its power, small ones
    keep the lock margin); at each amplitude the reference is also detuned against the rest
    (lock acquisition when a phase lag or an even part of H shifts the locked frequency).
    Returns (ω, a locked reading there).
    """
    lim = sub.model.limits.omega
    if omega is not None:
        w = sub.model.check_frequencies(omega)
        await sub.set_frequencies(w)
        return w, await read_locked(sub, averages)
    amp0 = 0.3 * min(abs(lim.min), abs(lim.max)) if amplitude is None else float(amplitude)
    if not amp0 > 0:
        raise ValueError(f"amplitude: {amp0} must be > 0 (model frequency units)")
    centre = 0.5 * (lim.min + lim.max)
    u = np.random.default_rng(seed).uniform(-1.0, 1.0, sub.model.n)
    # reference detuning v: raises every non-reference centred frequency by 2t/N; acquires
    # lock when the coupling shifts the locked frequency (a phase lag, an offset in H)
    ref = sub.model.roles.reference
    v = np.ones(sub.model.n)
    v[ref] = -1.0
    t_max = 0.5 * (lim.max - lim.min)
    offsets = [0.0] + [s * f * t_max for f in (0.25, 0.5, 0.75, 0.9) for s in (1.0, -1.0)]
    edges = sub.model.edge_index
    last: Exception | None = None
    for amp in (amp0, amp0 / 2, amp0 / 4, amp0 / 8):
        for t in offsets:
            w = np.clip(centre + amp * u + t * v, lim.min, lim.max)
            await sub.set_frequencies(w)
            try:
                reading = await read_locked(sub, averages, retries=1)
            except LockLostError as exc:
                last = exc
                continue
            worst = float(np.abs(edge_dtheta(reading.phases, edges)).max())
            if worst <= max_edge_rad:
                log.info(
                    "operating point: amplitude %.3g, reference detuning %.3g, max |Δθ| %.3f rad",
                    amp,
                    t,
                    worst,
                )
                return w, reading
            last = LockLostError(f"max edge |Δθ| {worst:.3f} rad > {max_edge_rad} rad")
    raise LockLostError(f"{sub.model.name}: no locked operating point found ({last})")
