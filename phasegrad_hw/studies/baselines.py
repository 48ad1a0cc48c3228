"""Conventional baselines for a task, on exactly the split and scaling the EP run gets.

A :class:`~phasegrad_hw.learning.tasks.Dataset` already holds the stratified train/test split
and the min–max scaling to [−1, 1] fitted on the training split (what the input oscillators
are driven with), so a baseline fitted on it sees the same information as the oscillator
network. The seed paper (arXiv 2604.10272, docs/design.md §2) reports logistic regression at
100 % (/a/ vs /i/) and 83 % (/o/ vs /u/) test accuracy. scikit-learn is the optional extra
"ml" and is imported on first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from phasegrad_hw.learning.tasks import Dataset, TaskError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineResult:
    """Accuracies (fractions in [0, 1]) of one baseline on one task split."""

    task: str
    model: str
    train_accuracy: float
    test_accuracy: float
    n_train: int
    n_test: int


def logistic_regression(
    dataset: Dataset, *, C: float = 1.0, max_iter: int = 1000, seed: int = 0
) -> BaselineResult:
    """(Multinomial) logistic regression with L2 penalty of inverse strength ``C`` on the
    dataset's scaled features; train and test accuracy."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise TaskError("baseline: needs scikit-learn (pip install 'phasegrad-hw[ml]')") from None
    if not (np.isfinite(C) and C > 0):
        raise ValueError(f"C: {C} must be finite and > 0 (inverse regularisation strength)")
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit(dataset.x_train, dataset.y_train)
    train = float(np.mean(clf.predict(dataset.x_train) == dataset.y_train))
    test = float(np.mean(clf.predict(dataset.x_test) == dataset.y_test))
    log.info("logistic regression on %s: train %.3f, test %.3f", dataset.name, train, test)
    return BaselineResult(
        dataset.name, "logistic_regression", train, test, len(dataset.y_train), len(dataset.y_test)
    )
