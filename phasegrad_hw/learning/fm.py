"""The published FM-classification task (issue #15; docs/design.md §9): frequency-modulated
drive signals Ψ(t), one class per modulating frequency.

Signal of sample k (phases in rad, time in model time units, frequencies in rad per time
unit)::

    Ψ_k(t) = φ_k + ω_c t + (Δ/ω_m,k) sin(ω_m,k t + χ_k),   dΨ_k/dt = ω_c + Δ cos(ω_m,k t + χ_k)

with carrier ω_c (published 2.0), depth Δ (the peak frequency deviation, published 0.5) and a
modulating frequency ω_m,k = f_c·(1 + u), u ~ U(−jitter, +jitter) (published ±15 %), f_c the
class' nominal modulating frequency (published: evenly spaced over 0.5…3.0, three classes by
default), 80 samples per class. The carrier phase φ_k and modulation phase χ_k are uniform on
[0, 2π), so a class is defined by its modulating frequency only. Everything is drawn from one
seeded generator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.physics.coupling import Array
from phasegrad_hw.physics.dynamics import Drive

log = logging.getLogger(__name__)

__all__ = ["FMSignals", "fm_signals"]

CARRIER = 2.0  # rad per time unit (published)
DEPTH = 0.5  # peak frequency deviation, rad per time unit (published)
MOD_RANGE = (0.5, 3.0)  # nominal modulating frequencies, rad per time unit (published)
JITTER = 0.15  # relative jitter of the modulating frequency (published ±15 %)
PER_CLASS = 80  # samples per class (published)


@dataclass(frozen=True)
class FMSignals:
    """Sampled FM drives: ``t`` (T,) time units; ``modulation`` m_k(t) (n, T) rad, the phase
    modulation on top of the carrier; ``carrier`` ω_c (rad per time unit); ``phase0`` φ_k (n,)
    rad; ``labels`` (n,) class indices; ``classes`` names; ``modulating_frequency`` ω_m,k (n,)
    rad per time unit; ``depth`` Δ (rad per time unit)."""

    t: Array
    modulation: Array
    carrier: float
    phase0: Array
    labels: NDArray[np.int64]
    classes: tuple[str, ...]
    modulating_frequency: Array
    depth: float

    @property
    def psi(self) -> Array:
        """Ψ_k(t) (n, T), rad."""
        out: Array = self.phase0[:, None] + self.carrier * self.t + self.modulation
        return out

    def drive(self, index: NDArray[np.int64] | slice | None = None) -> Drive:
        """The :class:`~phasegrad_hw.physics.dynamics.Drive` of the selected samples (one
        signal per batch entry; the modulation is linearly interpolated between samples)."""
        sel = slice(None) if index is None else index
        return Drive.carrier_wave(
            self.carrier, phase0=self.phase0[sel], times=self.t, modulation=self.modulation[sel]
        )


def fm_signals(
    *,
    n_classes: int = 3,
    per_class: int = PER_CLASS,
    carrier: float = CARRIER,
    depth: float = DEPTH,
    mod_range: tuple[float, float] = MOD_RANGE,
    jitter: float = JITTER,
    duration: float = 60.0,
    sample_dt: float = 0.02,
    seed: int = 0,
) -> FMSignals:
    """The published FM set-up (module doc), sampled every ``sample_dt`` over ``duration``
    (time units). Samples are ordered class by class."""
    if n_classes < 2:
        raise ValueError(f"n_classes: {n_classes} must be >= 2")
    if per_class < 1:
        raise ValueError(f"per_class: {per_class} must be >= 1")
    lo, hi = float(mod_range[0]), float(mod_range[1])
    if not 0.0 < lo < hi:
        raise ValueError(f"mod_range: {mod_range} must satisfy 0 < low < high")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter: {jitter} must be in [0, 1)")
    if not (depth >= 0.0 and np.isfinite(carrier)):
        raise ValueError(f"depth/carrier: {depth}, {carrier}; need depth >= 0, finite carrier")
    if not (duration > 0.0 and 0.0 < sample_dt < duration):
        raise ValueError(f"duration/sample_dt: {duration}, {sample_dt}; need 0 < dt < duration")
    rng = np.random.default_rng([seed, 0xF3])
    nominal = np.linspace(lo, hi, n_classes)
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), per_class)
    n = labels.size
    wm = nominal[labels] * (1.0 + rng.uniform(-jitter, jitter, n))
    phase0 = rng.uniform(0.0, 2.0 * np.pi, n)
    chi = rng.uniform(0.0, 2.0 * np.pi, n)
    t: Array = sample_dt * np.arange(int(round(duration / sample_dt)) + 1, dtype=np.float64)
    m = (depth / wm)[:, None] * np.sin(wm[:, None] * t + chi[:, None])
    classes = tuple(f"fm{f:.2f}" for f in nominal)
    log.debug("fm_signals: %d classes %s, %d samples, T = %d", n_classes, classes, n, t.size)
    return FMSignals(t, m, float(carrier), phase0, labels, classes, wm, float(depth))
