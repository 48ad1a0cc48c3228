"""The hardware training loop: epochs of EP steps on one or several substrates.

Online SGD (the published setting, arXiv 2604.10272) with one substrate; with S substrates
each step measures S samples in parallel and applies their mean gradient (mini-batch S), or
``config.batch_size`` samples in rounds of S. A :class:`~phasegrad_hw.learning.chip.
PhaseEncoding` trains a held-input device (docs/design.md §8): features as held phases, targets
from the softmax cross-entropy gradient, argmax sin θ_out readout, the epoch's loss the
cross-entropy at the free state; the EP rule's optimizer state is checkpointed with the
parameters and its learning rates decay per epoch (``rule.lr_decay``).

Reproducibility without RNG state: the sample order of epoch e is
``np.random.default_rng([seed, e]).permutation(n_train)``, and at the start of every epoch
each substrate that declares ``Capability.RESEED`` (noisy emulators) is reseeded with
:func:`seed_for` ``(seed, e, device_index)``. A run resumed from a :class:`LoopState`
therefore reproduces the uninterrupted run exactly.

Interruptible on every backend: the loop yields to the event loop once per EP step
(``await asyncio.sleep(0)``; a cancellation an inner await swallowed is raised again), so a
cancellation (Ctrl-C, SIGTERM, SIGHUP in the command line) reaches it within one step even
when every await of an in-process emulator completes without suspending. A cancelled step
updates nothing that is kept: state is only handed to observers (the run store) at the end
of a complete epoch.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.errors import ConfigError, LockLostError
from phasegrad_hw.learning.chip import PhaseEncoding
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample, StepReport

if TYPE_CHECKING:
    from phasegrad_hw.learning.tasks import Dataset, Encoding

log = logging.getLogger(__name__)
Array = NDArray[np.float64]

__all__ = [
    "EpochRecord",
    "LoopObserver",
    "LoopOptions",
    "LoopResult",
    "LoopState",
    "RunPlan",
    "check_exact_gradient",
    "evaluate_parameters",
    "gradient_cosine",
    "seed_for",
    "train_on_substrates",
]


@dataclass
class EpochRecord:
    """Metrics after one epoch: accuracies in [0, 1], ``skipped`` samples of this epoch,
    ``seconds`` its wall time, ``loss`` the mean over the epoch's steps of the encoding's loss
    at the free state (rad²; None when no step had a valid sample, and in checkpoints
    written before the loss was recorded). ``epoch`` counts from 1 (the number of epochs done).
    ``gradient_cosine``: mean over the epoch's gradient checks (``LoopOptions.check_gradients``)
    of the cosine between the EP estimate and the device's implicit gradient (None: no check)."""

    epoch: int
    train_accuracy: float
    test_accuracy: float
    skipped: int
    seconds: float
    loss: float | None = None
    gradient_cosine: float | None = None


@dataclass
class LoopState:
    """Everything needed to resume exactly: epochs completed, parameters, history, the
    running count of skipped samples and the EP rule's optimizer moments (None for SGD)."""

    epoch: int
    params: Parameters
    history: list[EpochRecord] = field(default_factory=list)
    skipped_samples: int = 0
    optimizer: dict[str, Any] | None = None

    def copy(self) -> LoopState:
        opt = None if self.optimizer is None else copy.deepcopy(self.optimizer)
        return LoopState(
            self.epoch, self.params.copy(), list(self.history), self.skipped_samples, opt
        )


@dataclass
class LoopResult:
    """Final state, test accuracy after the last epoch, and wall time of this call (s)."""

    state: LoopState
    final_test_accuracy: float
    seconds: float


@dataclass(frozen=True)
class LoopOptions:
    """How a run proceeds (the EP rule itself is the :class:`EPConfig`).

    ``epochs`` in total, counting those already in ``start``; ``seed`` fixes the initial
    parameters, the sample order and the noise reseeds. Initial parameters: ``start.params``
    when resuming, else ``params``, else
    :func:`phasegrad_hw.learning.seeding.initial_parameters` (``init``) with
    ``np.random.default_rng(seed)``. ``train_eval``: ``epoch_end`` measures train accuracy
    with the final parameters of each epoch (extra reads); ``online`` uses the free reads
    taken during the epoch (no extra reads; the published code's running accuracy).
    ``learnable_omega`` (N,) masks the frequencies that learn (default: the controller's).
    ``check_gradients`` N > 0: every N steps compare the step's EP estimate of ∂L/∂ω with the
    devices' implicit gradient (``Capability.EXACT_GRADIENT``, required of every substrate;
    :func:`gradient_cosine`), log the cosine and keep the epoch's mean in its record.
    """

    epochs: int
    seed: int = 0
    init: Literal["random", "spectral"] = "random"
    params: Parameters | None = None
    start: LoopState | None = None
    train_eval: Literal["epoch_end", "online"] = "epoch_end"
    learnable_omega: NDArray[np.bool_] | None = None
    check_gradients: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs: {self.epochs} must be >= 0")
        if self.check_gradients < 0:
            raise ConfigError(f"check_gradients: {self.check_gradients} must be >= 0 (0: off)")
        if self.start is not None and self.start.epoch > self.epochs:
            raise ConfigError(
                f"start.epoch: {self.start.epoch} already exceeds epochs={self.epochs}"
            )


@dataclass(frozen=True)
class RunPlan:
    """What a call of :func:`train_on_substrates` is about to do: epochs ``first_epoch`` …
    ``epochs`` (``first_epoch`` already done), ``samples_per_epoch`` training samples in
    steps of ``substrates`` samples."""

    first_epoch: int
    epochs: int
    samples_per_epoch: int
    substrates: int


class LoopObserver(Protocol):
    """Receives the loop's events, in order: ``on_run_start`` once, then per epoch one
    ``on_step`` per EP step and ``on_epoch_end`` with a copy of the new state (store that to
    resume; it may return an awaitable, which the loop awaits before the next epoch).

    An observer that raises stops the run (the substrates stay connected and are left safe by
    their owner). Subclass this Protocol to inherit no-op defaults.
    """

    def on_run_start(self, plan: RunPlan) -> None:
        return None

    def on_step(self, report: StepReport) -> None:
        return None

    def on_epoch_end(self, state: LoopState) -> Awaitable[None] | None:
        return None


def seed_for(seed: int, epoch: int, device: int) -> int:
    """Noise seed of substrate ``device`` in epoch ``epoch`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, device, 0x5EED]).generate_state(1)[0])


def _reseed(substrates: Sequence[OscillatorSubstrate], seed: int, epoch: int) -> None:
    for d, s in enumerate(substrates):
        if Capability.RESEED in s.capabilities:
            s.reseed(seed_for(seed, epoch, d))


def check_exact_gradient(substrates: Sequence[OscillatorSubstrate]) -> None:
    """Raise ConfigError (one line) unless every substrate reports its implicit gradient."""
    for k, s in enumerate(substrates):
        if Capability.EXACT_GRADIENT not in s.capabilities:
            raise ConfigError(
                f"--check-gradients: {s.model.name!r} ({type(s).__name__}, substrates[{k}]) "
                "cannot report its implicit gradient (no exact_gradient capability)"
            )


def gradient_cosine(
    substrates: Sequence[OscillatorSubstrate], report: StepReport, learnable: NDArray[np.bool_]
) -> float | None:
    """Cosine between a step's EP estimate of ∂L/∂ω (the valid samples' mean) and the mean of
    the devices' implicit gradients −J̃⁻ᵀe at the same settings and clamp targets, over the
    learnable frequencies (docs/design.md §2); None when the step had no valid sample. Call it
    right after the step: the substrates still hold the step's frequencies."""
    if report.grad_omega is None or report.targets is None or not report.valid.any():
        return None
    exact = np.mean(
        [
            substrates[int(k)].exact_gradient(report.targets[k])
            for k in np.flatnonzero(report.valid)
        ],
        axis=0,
    )
    a, b = report.grad_omega[learnable], exact[learnable]
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else None


def _inputs(
    encoding: Encoding | PhaseEncoding, x: Array
) -> tuple[Array, Array | None, Array | None]:
    """For features x: input frequencies (n, n_inputs), held phases (n, n_held) or None, and
    drive amplitudes (n, n_drive) or None."""
    if isinstance(encoding, PhaseEncoding):
        return np.zeros((len(x), 0)), encoding.held_phases(x), None
    w, f = encoding.sample_inputs(x)
    return w, None, f


async def _accuracy(
    ctl: EPController, encoding: Encoding | PhaseEncoding, x: Array, y: NDArray[np.int64]
) -> float:
    if len(x) == 0:
        return float("nan")
    w, held, drive = _inputs(encoding, np.asarray(x, dtype=np.float64))
    phases, locked = await ctl.infer_many(w, held, drive)
    right = encoding.predict(phases[:, ctl.model.outputs]) == y
    if held is not None:  # as the layered engine: a sample that does not lock counts as wrong
        right &= locked
    return float(np.mean(right))


def _initial_state(substrate: OscillatorSubstrate, options: LoopOptions) -> LoopState:
    if options.start is not None:
        return options.start.copy()
    params = options.params
    if params is None:
        from phasegrad_hw.learning.seeding import initial_parameters

        rng = np.random.default_rng(options.seed)
        params = initial_parameters(substrate.model, rng, options.init)
    return LoopState(0, params.copy(), [], 0)


def _training_samples(
    encoding: Encoding | PhaseEncoding,
    n_out: int,
    w: Array,
    held: Array | None,
    drive: Array | None,
    y: NDArray[np.int64],
) -> list[Sample]:
    """The training set as controller samples, made once per run (a sample's settings and
    targets do not change between epochs): input frequencies ``w`` (n, n_inputs) model
    units, held phases (n, n_held) rad or drive amplitudes (n, n_drive) model units (drive
    phase 0), classes ``y``. Clamp targets (rad): the fixed templates of the sample's class
    (a remote substrate then measures the whole step in one round trip; one vectorised call,
    read-only rows), or a function of the free output phases (``difference`` readout, the
    phase encoding's cross-entropy clamp)."""
    n = len(y)
    if isinstance(encoding, PhaseEncoding):
        assert held is not None
        return [Sample(w[i], partial(encoding.clamp, int(y[i])), held[i]) for i in range(n)]
    targets: list[Array | Callable[[Array], Array]]
    if encoding.readout == "difference":
        targets = [partial(encoding.clamp_targets, int(c)) for c in y]
    else:
        table = encoding.clamp_targets(y, np.zeros((n, n_out)))
        table.flags.writeable = False
        targets = list(table)
    drives = [None] * n if drive is None else [(drive[i], 0.0) for i in range(n)]
    return [Sample(w[i], targets[i], drive=drives[i]) for i in range(n)]


@dataclass
class _Epoch:
    """One epoch's training pass over a fixed training set (samples made once per run)."""

    ctl: EPController
    encoding: Encoding | PhaseEncoding
    substrates: Sequence[OscillatorSubstrate]
    samples: list[Sample]
    y_train: NDArray[np.int64]
    observers: Sequence[LoopObserver]
    check_every: int = 0
    cosines: list[float] = field(default_factory=list)

    def _check(self, step: int, rep: StepReport) -> None:
        """Every ``check_every`` steps: the gradient check (:func:`gradient_cosine`)."""
        if self.check_every <= 0 or (step + 1) % self.check_every:
            return
        cos = gradient_cosine(self.substrates, rep, self.ctl.learnable_omega)
        if cos is None:
            log.info("gradient check at step %d: no valid sample", step + 1)
            return
        self.cosines.append(cos)
        log.info("gradient check at step %d: cosine(EP, implicit) = %.6f", step + 1, cos)

    def _loss(self, rep: StepReport, idx: NDArray[np.int64]) -> float:
        """The step's loss at the free state: the clamp's (frequency encodings) or the
        cross-entropy over the valid samples (phase encoding)."""
        if not isinstance(self.encoding, PhaseEncoding):
            return rep.loss
        if not rep.valid.any():
            return float("nan")
        out = rep.free_phases[rep.valid][:, self.ctl.model.outputs]
        return float(np.mean(self.encoding.loss(self.y_train[idx][rep.valid], out)))

    async def run(self, seed: int, e: int, online: bool) -> tuple[int, int, float | None]:
        """Train epoch ``e``; returns (skipped samples, correct online predictions — the free
        reads of the epoch classified together at its end, mean loss of the steps with a
        valid sample, rad² or nats). The epoch's gradient checks land in ``cosines``."""
        n_train = len(self.y_train)
        size = self.ctl.config.batch_size or len(self.substrates)
        steps_per_epoch = -(-n_train // size)
        self.cosines = []
        outputs = self.ctl.model.outputs
        _reseed(self.substrates, seed, e)
        self.ctl.forget_writes()  # a reseed returns an emulator to its power-on settings
        self.ctl.chip.epoch = e
        order = np.random.default_rng([seed, e]).permutation(n_train)
        free_out = np.empty((n_train if online else 0, len(outputs)))  # in `order`
        skipped = 0
        losses: list[float] = []
        for b in range(0, n_train, size):
            await _checkpoint()  # a cancellation point per step, on every backend
            idx = order[b : b + size]
            rep = await self.ctl.step([self.samples[i] for i in idx])
            self._check(e * steps_per_epoch + b // size, rep)
            skipped += rep.skipped_unlocked + rep.skipped_basin_jump
            loss = self._loss(rep, idx)
            if math.isfinite(loss):
                losses.append(loss)
            if online:
                free_out[b : b + len(idx)] = rep.free_phases[:, outputs]
            for obs in self.observers:
                obs.on_step(rep)
        correct = 0
        if online:
            correct = int(np.count_nonzero(self.encoding.predict(free_out) == self.y_train[order]))
        return skipped, correct, float(np.mean(losses)) if losses else None


async def _checkpoint() -> None:
    """Yield to the event loop once (a cancellation reaches the loop here even when every
    await of an in-process emulator completes without suspending), and re-raise a
    cancellation that an inner await swallowed (Python 3.11's ``wait_for`` returns a result
    that completed together with the cancellation): the task still counts it as pending."""
    await asyncio.sleep(0)
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _notify_epoch_end(observers: Sequence[LoopObserver], state: LoopState) -> None:
    for obs in observers:
        res = obs.on_epoch_end(state.copy())  # each observer gets its own copy
        if inspect.isawaitable(res):
            await res


async def _train_epoch(
    epoch: _Epoch, dataset: Dataset, options: LoopOptions, state: LoopState, e: int
) -> LoopState:
    """Epoch ``e``: the training pass, the accuracies, the state after it."""
    t_epoch = time.perf_counter()
    ctl, encoding = epoch.ctl, epoch.encoding
    online = options.train_eval == "online"
    skipped, correct, loss = await epoch.run(options.seed, e, online)
    n_train = len(epoch.y_train)
    if n_train and skipped >= n_train:  # nothing learned, nothing will: stop with the reason
        raise LockLostError(
            f"epoch {e + 1}: none of the {n_train} training samples gave locked free and "
            "nudged readings; the device does not lock at these settings — run "
            "`phasegrad-hw calibrate transfer --device DEVICE` first (a bias map saved next to "
            "the device file, which train then uses), or check β and the initial frequencies"
        )
    if online:
        train_acc = correct / n_train if n_train else float("nan")
    else:
        x_train = np.asarray(dataset.x_train, dtype=np.float64)
        train_acc = await _accuracy(ctl, encoding, x_train, epoch.y_train)
    test_acc = await _accuracy(ctl, encoding, dataset.x_test, dataset.y_test)
    cos = float(np.mean(epoch.cosines)) if epoch.cosines else None
    rec = EpochRecord(e + 1, train_acc, test_acc, skipped, time.perf_counter() - t_epoch, loss, cos)
    log.debug(
        "epoch %d: train %.3f test %.3f loss %s skipped %d",
        e + 1,
        train_acc,
        test_acc,
        loss,
        skipped,
    )
    return LoopState(
        e + 1,
        ctl.params.copy(),
        [*state.history, rec],
        state.skipped_samples + skipped,
        ctl.chip.optimizer_state(),
    )


async def train_on_substrates(
    substrates: Sequence[OscillatorSubstrate],
    dataset: Dataset,
    encoding: Encoding | PhaseEncoding,
    config: EPConfig,
    options: LoopOptions,
    observers: Sequence[LoopObserver] = (),
) -> LoopResult:
    """Train up to ``options.epochs`` epochs and return the result.

    Substrates must be connected (``async with``); they are left connected, with the clamp
    released. Test accuracy is measured at the end of every epoch; train accuracy as
    ``options.train_eval`` says. ``observers`` receive the events described in
    :class:`LoopObserver`.
    """
    t_start = time.perf_counter()
    if not substrates:
        raise ConfigError("substrates: [] — at least one substrate is required")
    state = _initial_state(substrates[0], options)
    ctl = EPController(substrates, config, state.params, learnable_omega=options.learnable_omega)
    ctl.chip.load_optimizer_state(state.optimizer)
    x_train = np.asarray(dataset.x_train, dtype=np.float64)
    y_train = np.asarray(dataset.y_train, dtype=np.int64)
    n_train, n_out = len(x_train), len(ctl.model.outputs)
    if options.check_gradients:
        check_exact_gradient(substrates)  # before anything is sent
    samples = _training_samples(encoding, n_out, *_inputs(encoding, x_train), y_train)
    epoch = _Epoch(ctl, encoding, substrates, samples, y_train, observers, options.check_gradients)
    plan = RunPlan(state.epoch, options.epochs, n_train, len(substrates))
    for obs in observers:
        obs.on_run_start(plan)
    for e in range(state.epoch, options.epochs):
        state = await _train_epoch(epoch, dataset, options, state, e)
        await _notify_epoch_end(observers, state)
    if state.history:
        final = state.history[-1].test_accuracy
    else:
        final = await _accuracy(ctl, encoding, dataset.x_test, dataset.y_test)
    seconds = time.perf_counter() - t_start
    log.info(
        "trained %d epochs on %d substrate(s) in %.2f s: test accuracy %.3f, %d skipped",
        options.epochs,
        len(substrates),
        seconds,
        final,
        state.skipped_samples,
    )
    return LoopResult(state, final, seconds)


async def evaluate_parameters(
    substrates: Sequence[OscillatorSubstrate],
    dataset: Dataset,
    encoding: Encoding | PhaseEncoding,
    params: Parameters,
    config: EPConfig | None = None,
) -> tuple[float, float]:
    """(train, test) accuracy in [0, 1] of ``params`` (e.g. a stored run's final ω and K)
    loaded onto connected ``substrates``: free reads only, nothing learns."""
    ctl = EPController(substrates, config or EPConfig(), params.copy())
    x_train = np.asarray(dataset.x_train, dtype=np.float64)
    y_train = np.asarray(dataset.y_train, dtype=np.int64)
    train = await _accuracy(ctl, encoding, x_train, y_train)
    test = await _accuracy(ctl, encoding, dataset.x_test, np.asarray(dataset.y_test, np.int64))
    return train, test
