"""Executors of a study's vectorised ensembles: in this process (the default) or split over a
Ray cluster (``reproduce vowels --executor ray``).

Each ensemble member's arithmetic is row-wise independent (:mod:`phasegrad_hw.engine.ensemble`),
so training the members in chunks on different machines and concatenating the chunks gives the
members of the one-process run; the merged result feeds the same accuracy and evidence code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from phasegrad_hw.device.model import DeviceModel
    from phasegrad_hw.engine.ensemble import Ensemble, EnsembleResult, Member, TrainConfig
    from phasegrad_hw.learning.tasks import Dataset, Encoding

__all__ = ["EnsembleExecutor", "RayEnsembleExecutor", "merge_results"]

log = logging.getLogger(__name__)


class EnsembleExecutor(Protocol):
    """Trains a constructed (not yet run) ensemble and returns its result."""

    def run(self, ensemble: Ensemble) -> EnsembleResult: ...


def _train_chunk(
    template: DeviceModel,
    members: Sequence[Member],
    data: Dataset,
    encoding: Encoding,
    config: TrainConfig,
) -> EnsembleResult:
    """One Ray task: train ``members`` as an ensemble (one CPU: ``parallel`` off)."""
    from phasegrad_hw.engine.ensemble import Ensemble

    cfg = config.model_copy(update={"parallel": False})
    return Ensemble(template, members, data, encoding, cfg).run()


def merge_results(parts: Sequence[EnsembleResult]) -> EnsembleResult:
    """Concatenate chunk results (in member order) into one result; ``seconds`` is the
    slowest chunk's wall time (s), the per-epoch ``seconds`` likewise."""
    from phasegrad_hw.engine.ensemble import EnsembleResult, EpochSummary

    if not parts:
        raise ValueError("parts: at least one chunk result is required")

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts], axis=0)

    history = []
    for epochs in zip(*(p.history for p in parts), strict=True):
        tests = [e.test_accuracy for e in epochs]
        history.append(
            EpochSummary(
                epochs[0].epoch,
                np.concatenate([e.train_accuracy for e in epochs]),
                None if any(t is None for t in tests) else np.concatenate(tests),
                np.concatenate([e.skipped for e in epochs]),
                max(e.seconds for e in epochs),
            )
        )
    return EnsembleResult(
        [s for p in parts for s in p.seeds],
        cat("omega"),
        cat("coupling"),
        cat("test_out"),
        cat("test_accuracy"),
        cat("train_out"),
        cat("train_accuracy"),
        history,
        cat("skipped_unlocked"),
        cat("skipped_basin_jump"),
        max(p.seconds for p in parts),
        max(p.steps for p in parts),
    )


class RayEnsembleExecutor:
    """Split an ensemble's members into ``chunks`` Ray tasks (default: one per CPU of the
    cluster, at most one per member) of one CPU each; a task whose worker dies is retried
    ``max_retries`` times. Ray must be initialised (:class:`phasegrad_hw.fleet.cluster.Cluster`).
    """

    def __init__(self, chunks: int | None = None, max_retries: int = 3) -> None:
        self.chunks = chunks
        self.max_retries = max_retries

    def run(self, ensemble: Ensemble) -> EnsembleResult:
        from phasegrad_hw.fleet.cluster import Cluster, import_ray

        ray = import_ray()
        members = ensemble.members
        n = max(1, min(len(members), self.chunks or Cluster.cpus()))
        bounds = np.linspace(0, len(members), n + 1).round().astype(int)
        task = ray.remote(num_cpus=1, max_retries=self.max_retries)(_train_chunk)
        shared = [ray.put(x) for x in (ensemble.model, ensemble.data, ensemble.enc, ensemble.cfg)]
        refs = [
            task.remote(shared[0], members[a:b], *shared[1:])
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        log.info("ensemble of %d members in %d Ray tasks", len(members), n)
        try:
            parts = ray.get(refs)
        except BaseException:
            for r in refs:
                ray.cancel(r, force=True)
            raise
        return merge_results(parts)
