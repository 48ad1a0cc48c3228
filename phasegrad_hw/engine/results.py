"""What an ensemble run returns: per-epoch summaries, final parameters and accuracies."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.learning.tasks import Encoding

Array = NDArray[np.float64]


@dataclass
class EpochSummary:
    """Per-epoch summary over the ensemble (arrays have one entry per member)."""

    epoch: int  # 1-based count of completed epochs
    train_accuracy: Array  # the epoch's training accuracy (:func:`train_accuracy_from_outputs`)
    test_accuracy: Array | None  # None when the test split was not evaluated this epoch
    skipped: NDArray[np.int64]  # skipped samples this epoch
    seconds: float


@dataclass
class EnsembleResult:
    """Trained parameters and accuracies of an ensemble run."""

    seeds: list[int]
    omega: Array  # (B, N)
    coupling: Array  # (B, E)
    test_out: Array  # (B, n_test, n_out) final free output phases (NaN where not locked)
    test_accuracy: Array  # (B,) under the training encoding's readout
    # (B, n_train, n_out) the last epoch's free output phases per training sample (in the
    # split's order), taken just before that sample's update; NaN where the free or a nudged
    # state did not lock (the sample is not counted by the training accuracy)
    train_out: Array
    train_accuracy: Array  # (B,) last epoch's training accuracy under the training readout
    history: list[EpochSummary]
    skipped_unlocked: NDArray[np.int64]  # (B,)
    skipped_basin_jump: NDArray[np.int64]  # (B,)
    seconds: float
    steps: int = 0

    @property
    def skipped(self) -> NDArray[np.int64]:
        return self.skipped_unlocked + self.skipped_basin_jump

    def accuracy(self, encoding: Encoding, y_test: NDArray[np.int64]) -> Array:
        """(B,) test accuracy of the final networks under any readout of ``encoding``."""
        return accuracy_from_outputs(self.test_out, y_test, encoding)

    def train_accuracy_under(self, encoding: Encoding, y_train: NDArray[np.int64]) -> Array:
        """(B,) last-epoch training accuracy under any readout of ``encoding``."""
        return train_accuracy_from_outputs(self.train_out, y_train, encoding)


def _correct(
    out: Array,
    y: NDArray[np.int64],
    encoding: Encoding,
    locked: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(classified correctly, locked) per sample; a row with a NaN phase is not locked and
    not correct. ``locked``: the mask when the caller knows it (its rows finite)."""
    if locked is None:
        locked = np.all(np.isfinite(out), axis=-1)
    pred = encoding.predict(out if locked.all() else np.where(locked[..., None], out, 0.0))
    return (pred == y) & locked, locked


def accuracy_from_outputs(out: Array, y: NDArray[np.int64], encoding: Encoding) -> Array:
    """Accuracy per member; unlocked samples (NaN phases) count as wrong."""
    right, _ = _correct(out, y, encoding)
    return np.asarray(right.mean(axis=-1), dtype=np.float64)


def train_accuracy_from_outputs(
    out: Array,
    y: NDArray[np.int64],
    encoding: Encoding,
    locked: NDArray[np.bool_] | None = None,
) -> Array:
    """Training accuracy per member, the published definition (arXiv 2604.10272, its
    convergence criterion): among an epoch's online samples whose free and nudged states
    both locked (finite rows of ``out``, the free output phases just before the sample's
    update; or the mask ``locked`` when given, whose rows of ``out`` are finite), the
    fraction the free state classifies correctly; 0 when none locked."""
    right, ok = _correct(out, y, encoding, locked)
    return np.asarray(right.sum(axis=-1) / np.maximum(ok.sum(axis=-1), 1), dtype=np.float64)
