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
    train_accuracy: Array  # running accuracy of the free states seen during the epoch
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


def accuracy_from_outputs(out: Array, y: NDArray[np.int64], encoding: Encoding) -> Array:
    """Accuracy per member; unlocked samples (NaN phases) count as wrong."""
    bad = ~np.all(np.isfinite(out), axis=-1)
    pred = encoding.predict(np.where(bad[..., None], 0.0, out))
    right = (pred == y) & ~bad
    return np.asarray(right.mean(axis=-1), dtype=np.float64)
