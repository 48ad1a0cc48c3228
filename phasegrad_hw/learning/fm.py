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
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.learning.datasets import Dataset, split_and_scale
from phasegrad_hw.physics.coupling import Array
from phasegrad_hw.physics.dynamics import Drive, integrate_sde, lock_beat_features

log = logging.getLogger(__name__)

__all__ = [
    "BankFeatures",
    "FMSignals",
    "SensorBank",
    "bank_features",
    "fm_dataset",
    "fm_signals",
]

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


@dataclass(frozen=True)
class SensorBank:
    """A driven sensor bank (module doc): ``sensors`` natural frequencies evenly spaced over
    ``band`` (rad per time unit), drive strength ``drive_amplitude`` F on each (rad per time
    unit), phase diffusion ``diffusion`` D (rad² per time unit), Heun step ``dt`` and
    recording every ``record_every`` steps; features over [``transient``, end of the signal]
    (time units): ``coherence`` or ``coherence+beat``. Defaults: the measured set-up of
    ``reproduce fm`` (16 sensors over [0, 4], F = 1, window from 20)."""

    sensors: int = 16
    band: tuple[float, float] = (0.0, 4.0)
    drive_amplitude: float = 1.0
    diffusion: float = 0.0
    dt: float = 0.01
    record_every: int = 5
    transient: float = 20.0
    features: Literal["coherence", "coherence+beat"] = "coherence"

    @property
    def omega(self) -> Array:
        """The sensors' natural frequencies (rad per time unit)."""
        return np.linspace(self.band[0], self.band[1], self.sensors)


@dataclass(frozen=True)
class BankFeatures:
    """Features (n, d) of every signal, their names, and the integration time (s)."""

    X: Array
    names: tuple[str, ...]
    seconds: float


def bank_features(signals: FMSignals, bank: SensorBank, seed: int) -> BankFeatures:
    """Integrate ``bank`` under every signal of ``signals`` (all at once, one batch) and
    return its lock/beat features; the diffusion noise is drawn from ``seed``."""
    duration = float(signals.t[-1])
    if not bank.transient < duration:
        raise ValueError(f"transient: {bank.transient} must be below duration {duration}")
    omega = bank.omega
    drive = signals.drive()
    t0 = time.perf_counter()
    tr = integrate_sde(
        np.zeros((signals.labels.size, bank.sensors)),
        omega,
        None,
        t_span=(0.0, duration),
        dt=bank.dt,
        diffusion=bank.diffusion,
        drive=drive,
        drive_amplitude=np.full(bank.sensors, bank.drive_amplitude),
        rng=np.random.default_rng([seed, 0xB4]),
        record_every=bank.record_every,
    )
    f = lock_beat_features(tr, drive, window=(bank.transient, duration))
    names = [f"coherence@{w:.3g}" for w in omega]
    X = f.coherence
    if bank.features == "coherence+beat":
        names += [f"beat@{w:.3g}" for w in omega]
        X = np.hstack([f.coherence, f.beat_frequency])
    seconds = time.perf_counter() - t0
    return BankFeatures(np.asarray(X, dtype=np.float64), tuple(names), seconds)


def fm_dataset(
    seed: int = 0,
    *,
    n_classes: int = 3,
    per_class: int = PER_CLASS,
    duration: float = 60.0,
    bank: SensorBank | None = None,
    test_fraction: float = 0.2,
) -> tuple[Dataset, float]:
    """The ``fm`` task: the published signals of seed ``seed`` (:func:`fm_signals`), the
    bank's features, a stratified split with min–max scaling to [−1, 1] on train; and the
    bank's integration time (s)."""
    sig = fm_signals(n_classes=n_classes, per_class=per_class, duration=duration, seed=seed)
    feats = bank_features(sig, bank or SensorBank(), seed)
    ds = split_and_scale("fm", sig.classes, feats.X, sig.labels, test_fraction, seed)
    return ds, feats.seconds
