"""FM classification with a driven sensor bank (issue #15; docs/design.md §9).

The driven sensor bank and its lock/beat coherence features are those of
:mod:`phasegrad_hw.learning.fm` (:class:`~phasegrad_hw.learning.fm.SensorBank`,
:func:`~phasegrad_hw.learning.fm.bank_features`; the ``fm`` task of ``train`` uses the same):
a sensor inside the locking range (|ω_i − ω_c| < F, Adler) tracks the drive through a
low-pass filter whose corner √(F² − (ω_i − ω_c)²) meets the modulating frequency, so the
phase error — and its coherence with the drive — depends on ω_m; sensors outside beat and
are pulled by the FM sidebands at ω_c ± k ω_m.

Classifiers on the same features and the same stratified split (min–max on the training
split): (a) EP — the batched layered trainer of :mod:`phasegrad_hw.engine.layered` with the
features as held input phases (π/2)·u, u ∈ [0, 1], one hidden layer, softmax readout on
sin θ_out; (b) logistic regression (:func:`phasegrad_hw.studies.baselines.logistic_regression`);
(c) the published numbers. Why the layered trainer: the published EP classifiers failed on
these features (37–68 % per seed) while logistic regression reached 100 %, so the features
are linearly separable and the bottleneck was the trainer, not the bank. Measured with the
defaults (16 sensors over ω ∈ [0, 4], F = 1, window [20, 60], 32 hidden, 40 epochs), 5 seeds:
EP 83.3 / 100 / 91.7 / 100 / 97.9 % (mean 94.6 %), logistic regression 100 % on every seed;
80 epochs: mean 95.4 % (89.6–100 %) at twice the training time. A narrower band or a weak
drive loses the classes 1.75 vs 3.0 (12 sensors over [1, 3] at F = 0.3: logistic regression
93 % in 5-fold cross-validation), because a locked sensor's phase error Δ/√(ω_m² + λ²) is then
nearly the same for both.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.learning import fm as learning_fm
from phasegrad_hw.learning.fm import SensorBank
from phasegrad_hw.physics.coupling import Array

log = logging.getLogger(__name__)

__all__ = ["PUBLISHED", "FMStudyOptions", "fm_dataset", "run_fm_study", "sensor_bank"]

#: Results of the published code base on the same FM set-up (issue #15), test accuracies.
PUBLISHED: dict[str, Any] = {
    "ep_transient_features_per_seed_range": [0.37, 0.68],
    "ep_quasi_static_per_seed_range": [0.33, 0.43],
    "logistic_regression_on_coherence_features": 1.0,
    "fm_demodulation_mean_10_seeds": 0.28,
    "trained_4_sensor_bank_range": [0.54, 0.61],
    "classes": 3,
}


class FMStudyOptions(StrictModel):
    """Options of :func:`run_fm_study`. Frequencies in rad per time unit, times in time units.

    Signals (published): ``n_classes``, ``per_class``, carrier 2.0, depth 0.5, modulating
    frequencies 0.5–3.0 with ±15 % jitter, ``duration``. Bank: ``sensors`` natural frequencies
    evenly spaced over ``band``, drive strength ``drive_amplitude`` F on each, phase
    diffusion ``diffusion`` D (rad² per time unit), Heun step ``dt``; features over the window
    [``transient``, ``duration``]. EP classifier: ``hidden`` oscillators, ``epochs``.
    """

    seeds: int = Field(default=5, ge=1, le=1000)
    n_classes: int = Field(default=3, ge=2, le=20)
    per_class: int = Field(default=80, ge=4)
    duration: float = Field(default=60.0, gt=0.0)
    transient: float = Field(default=20.0, ge=0.0)
    sensors: int = Field(default=16, ge=1, le=512)
    band: tuple[float, float] = (0.0, 4.0)
    drive_amplitude: float = Field(default=1.0, gt=0.0)
    diffusion: float = Field(default=0.0, ge=0.0)
    dt: float = Field(default=0.01, gt=0.0)
    record_every: int = Field(default=5, ge=1)
    features: Literal["coherence", "coherence+beat"] = "coherence"
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    hidden: int = Field(default=32, ge=1)
    epochs: int = Field(default=40, ge=1)


def sensor_bank(o: FMStudyOptions) -> SensorBank:
    """The study's bank options as a :class:`~phasegrad_hw.learning.fm.SensorBank`."""
    return SensorBank(
        sensors=o.sensors,
        band=o.band,
        drive_amplitude=o.drive_amplitude,
        diffusion=o.diffusion,
        dt=o.dt,
        record_every=o.record_every,
        transient=o.transient,
        features=o.features,
    )


def fm_dataset(o: FMStudyOptions, seed: int) -> tuple[Any, float]:
    """The bank features of seed ``seed`` as a :class:`~phasegrad_hw.learning.tasks.Dataset`
    (:func:`phasegrad_hw.learning.fm.fm_dataset`); and the integration time (s)."""
    return learning_fm.fm_dataset(
        seed,
        n_classes=o.n_classes,
        per_class=o.per_class,
        duration=o.duration,
        bank=sensor_bank(o),
        test_fraction=o.test_fraction,
    )


def _held_phases(x: Array) -> Array:
    """Scaled features x ∈ [−1, 1] → held input phases (π/2)·u, u = (x + 1)/2 clipped to [0, 1]."""
    out: Array = 0.5 * math.pi * np.clip(0.5 * (x + 1.0), 0.0, 1.0)
    return out


def _train_ep(o: FMStudyOptions, ds: Any, seed: int) -> tuple[float, float, int]:
    """EP (layered, held inputs) on a dataset; (test accuracy, train accuracy, best epoch)."""
    from phasegrad_hw.engine.layered import (
        DigitsData,
        LayeredConfig,
        Split,
        accuracy,
        train_layered,
    )

    tr = Split(_held_phases(ds.x_train), ds.y_train)
    te = Split(_held_phases(ds.x_test), ds.y_test)
    val = Split(tr.phases[:0], tr.labels[:0])  # no validation split: the last epoch is kept
    cfg = LayeredConfig(hidden=o.hidden, epochs=o.epochs, seed=seed, val_fraction=0.0)
    run = train_layered(cfg, DigitsData(tr, val, te))
    return run.test_accuracy, accuracy(run.net, run.omega, run.K, tr), run.best_epoch


def run_fm_study(seeds: int = 5, **options: Any) -> dict[str, Any]:
    """Per seed: signals, bank features, split; EP and logistic regression on the same split.

    ``options`` are the fields of :class:`FMStudyOptions` (validated). Returns
    ``{"ep": {"mean_test_accuracy", "per_seed", ...}, "logistic_regression": {...},
    "published": {...}, "options": {...}, "seconds": {...}}``; accuracies are fractions.
    """
    from phasegrad_hw.studies.baselines import logistic_regression

    o = FMStudyOptions(seeds=seeds, **options)
    t_start = time.perf_counter()
    ep_test: list[float] = []
    ep_train: list[float] = []
    lr_test: list[float] = []
    lr_train: list[float] = []
    t_bank = t_ep = 0.0
    for seed in range(o.seeds):
        ds, sec = fm_dataset(o, seed)
        t_bank += sec
        t0 = time.perf_counter()
        acc, acc_tr, _ = _train_ep(o, ds, seed)
        t_ep += time.perf_counter() - t0
        base = logistic_regression(ds, seed=seed)
        ep_test.append(acc)
        ep_train.append(acc_tr)
        lr_test.append(base.test_accuracy)
        lr_train.append(base.train_accuracy)
        log.info("fm seed %d: EP %.3f, logistic regression %.3f", seed, acc, base.test_accuracy)

    def summary(test: list[float], train: list[float]) -> dict[str, Any]:
        return {
            "mean_test_accuracy": float(np.mean(test)),
            "std_test_accuracy": float(np.std(test)),
            "per_seed": [float(a) for a in test],
            "per_seed_train": [float(a) for a in train],
        }

    return {
        "ep": {
            **summary(ep_test, ep_train),
            "classifier": f"layered EP, held inputs, {o.hidden} hidden, {o.epochs} epochs",
        },
        "logistic_regression": summary(lr_test, lr_train),
        "published": dict(PUBLISHED),
        "options": o.model_dump(mode="json"),
        "seconds": {
            "total": time.perf_counter() - t_start,
            "bank_integration": t_bank,
            "ep_training": t_ep,
        },
    }
