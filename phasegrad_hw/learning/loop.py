"""The hardware training loop: epochs of EP steps on one or several substrates.

Online SGD (the published setting, arXiv 2604.10272) with one substrate; with S substrates
each step measures S samples in parallel and applies their mean gradient (mini-batch S).

Reproducibility without RNG state: the sample order of epoch e is
``np.random.default_rng([seed, e]).permutation(n_train)``, and at the start of every epoch
each substrate that declares ``Capability.RESEED`` (noisy emulators) is reseeded with
:func:`seed_for` ``(seed, e, device_index)``. A run resumed from a :class:`LoopState`
therefore reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample, StepReport

if TYPE_CHECKING:
    from phasegrad_hw.learning.tasks import Dataset, Encoding

log = logging.getLogger(__name__)
Array = NDArray[np.float64]

__all__ = ["EpochRecord", "LoopResult", "LoopState", "seed_for", "train_on_substrates"]


@dataclass
class EpochRecord:
    """Metrics after one epoch: accuracies in [0, 1], ``skipped`` samples of this epoch,
    ``seconds`` its wall time. ``epoch`` counts from 1 (the number of epochs done)."""

    epoch: int
    train_accuracy: float
    test_accuracy: float
    skipped: int
    seconds: float


@dataclass
class LoopState:
    """Everything needed to resume exactly: epochs completed, parameters, history and the
    running count of skipped samples."""

    epoch: int
    params: Parameters
    history: list[EpochRecord] = field(default_factory=list)
    skipped_samples: int = 0

    def copy(self) -> LoopState:
        return LoopState(self.epoch, self.params.copy(), list(self.history), self.skipped_samples)


@dataclass
class LoopResult:
    """Final state, test accuracy after the last epoch, and wall time of this call (s)."""

    state: LoopState
    final_test_accuracy: float
    seconds: float


def seed_for(seed: int, epoch: int, device: int) -> int:
    """Noise seed of substrate ``device`` in epoch ``epoch`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, device, 0x5EED]).generate_state(1)[0])


def _reseed(substrates: Sequence[OscillatorSubstrate], seed: int, epoch: int) -> None:
    for d, s in enumerate(substrates):
        if Capability.RESEED in s.capabilities:
            s.reseed(seed_for(seed, epoch, d))


async def _accuracy(ctl: EPController, encoding: Encoding, x: Array, y: NDArray[np.int64]) -> float:
    if len(x) == 0:
        return float("nan")
    phases, _ = await ctl.infer_many(encoding.input_frequencies(x))
    pred = encoding.predict(phases[:, ctl.model.outputs])
    return float(np.mean(pred == y))


async def train_on_substrates(
    substrates: Sequence[OscillatorSubstrate],
    dataset: Dataset,
    encoding: Encoding,
    config: EPConfig,
    *,
    epochs: int,
    seed: int,
    params: Parameters | None = None,
    init: Literal["random", "spectral"] = "random",
    start: LoopState | None = None,
    on_epoch_end: Callable[[LoopState], Awaitable[None] | None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    progress: bool = False,
    train_eval: Literal["epoch_end", "online"] = "epoch_end",
    learnable_omega: NDArray[np.bool_] | None = None,
) -> LoopResult:
    """Train ``epochs`` epochs (in total, counting those in ``start``) and return the result.

    Substrates must be connected (``async with``); they are left connected, with the clamp
    released. Initial parameters: ``start.params`` when resuming, else ``params``, else
    :func:`phasegrad_hw.learning.seeding.initial_parameters` with ``np.random.default_rng(seed)``.
    ``train_eval``: ``epoch_end`` measures train accuracy with the final parameters of each
    epoch (extra reads); ``online`` uses the free reads taken during the epoch (no extra
    reads; the published code's running accuracy). Test accuracy is always measured at the
    end of the epoch. ``on_epoch_end`` receives a copy of the state (store it to resume).
    """
    t_start = time.perf_counter()
    if epochs < 0:
        raise ConfigError(f"epochs: {epochs} must be >= 0")
    if not substrates:
        raise ConfigError("substrates: [] — at least one substrate is required")
    model = substrates[0].model
    if start is not None:
        state = start.copy()
        if state.epoch > epochs:
            raise ConfigError(f"start.epoch: {state.epoch} already exceeds epochs={epochs}")
    else:
        if params is None:
            from phasegrad_hw.learning.seeding import initial_parameters

            params = initial_parameters(model, np.random.default_rng(seed), init)
        state = LoopState(0, params.copy(), [], 0)
    ctl = EPController(substrates, config, state.params, learnable_omega=learnable_omega)
    x_train = np.asarray(dataset.x_train, dtype=np.float64)
    y_train = np.asarray(dataset.y_train, dtype=np.int64)
    w_train = np.asarray(encoding.input_frequencies(x_train), dtype=np.float64)
    n_train, n_sub = len(x_train), len(substrates)
    outputs = model.outputs
    clamp_fns = [partial(encoding.clamp_targets, int(y)) for y in y_train]

    bar: Any = None
    task_id: Any = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=False)
        bar.start()
        task_id = bar.add_task("training", total=(epochs - state.epoch) * n_train)
    try:
        for e in range(state.epoch, epochs):
            t_epoch = time.perf_counter()
            _reseed(substrates, seed, e)
            order = np.random.default_rng([seed, e]).permutation(n_train)
            skipped = 0
            correct = 0
            for b in range(0, n_train, n_sub):
                idx = order[b : b + n_sub]
                batch = [Sample(w_train[i], clamp_fns[i]) for i in idx]
                rep = await ctl.step(batch)
                skipped += rep.skipped_unlocked + rep.skipped_basin_jump
                if train_eval == "online":
                    pred = encoding.predict(rep.free_phases[:, outputs])
                    correct += int(np.sum(pred == y_train[idx]))
                if on_step is not None:
                    on_step(rep)
                if bar is not None:
                    bar.advance(task_id, len(idx))
            if train_eval == "online":
                train_acc = correct / n_train if n_train else float("nan")
            else:
                train_acc = await _accuracy(ctl, encoding, x_train, y_train)
            test_acc = await _accuracy(ctl, encoding, dataset.x_test, dataset.y_test)
            rec = EpochRecord(e + 1, train_acc, test_acc, skipped, time.perf_counter() - t_epoch)
            state = LoopState(
                e + 1, ctl.params.copy(), [*state.history, rec], state.skipped_samples + skipped
            )
            log.debug(
                "epoch %d: train %.3f test %.3f skipped %d", e + 1, train_acc, test_acc, skipped
            )
            if bar is not None:
                bar.update(
                    task_id, description=f"epoch {e + 1}/{epochs} test {100 * test_acc:5.1f} %"
                )
            if on_epoch_end is not None:
                res = on_epoch_end(state.copy())
                if inspect.isawaitable(res):
                    await res
    finally:
        if bar is not None:
            bar.stop()
    if state.history:
        final = state.history[-1].test_accuracy
    else:
        final = await _accuracy(ctl, encoding, dataset.x_test, dataset.y_test)
    seconds = time.perf_counter() - t_start
    log.info(
        "trained %d epochs on %d substrate(s) in %.2f s: test accuracy %.3f, %d skipped",
        epochs,
        n_sub,
        seconds,
        final,
        state.skipped_samples,
    )
    return LoopResult(state, final, seconds)
