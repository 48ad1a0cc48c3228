"""Progress display of the command line: on a terminal a rich progress bar with a live
curve (sparklines of test accuracy and loss) that observes the hardware loop
(:class:`~phasegrad_hw.learning.loop.LoopObserver`) and ensemble runs
(:class:`~phasegrad_hw.studies.progress.EnsembleProgress`); off a terminal (output redirected
to a file, a scheduler's log) and in ``--log-file`` one plain line per epoch
(:class:`EpochLines`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

import numpy as np
from rich.console import Console
from rich.progress import Progress, TaskID

from phasegrad_hw.learning.loop import LoopObserver

if TYPE_CHECKING:
    from phasegrad_hw.engine.results import EpochSummary
    from phasegrad_hw.learning.controller import StepReport
    from phasegrad_hw.learning.loop import LoopState, RunPlan


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], width: int = 24) -> str:
    """The last ``width`` finite values as block characters scaled to their own min…max."""
    vals = [v for v in values if v is not None and math.isfinite(v)][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return SPARKS[len(SPARKS) // 2] * len(vals)
    top = len(SPARKS) - 1
    return "".join(SPARKS[round((v - lo) / (hi - lo) * top)] for v in vals)


def _loss(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def epoch_line(state: LoopState, epochs: int) -> str:
    """``epoch 3/30  train 95.0 %  test 96.4 %  loss 0.0123 rad²  skipped 0  1.9 s``, with
    ``  cos 0.9987`` (the epoch's gradient checks, ``train --check-gradients``) when checked."""
    r = state.history[-1]
    cos = "" if r.gradient_cosine is None else f"  cos {r.gradient_cosine:.4f}"
    return (
        f"epoch {r.epoch}/{epochs}  train {100 * r.train_accuracy:5.1f} %  "
        f"test {100 * r.test_accuracy:5.1f} %  loss {_loss(r.loss)} rad²  "
        f"skipped {r.skipped}  {r.seconds:.1f} s{cos}"
    )


class EpochLines(LoopObserver):
    """One line per epoch (:func:`epoch_line`) on ``stream``, flushed at once (a file stays
    current while the run goes on); ``stamp`` prefixes the local time (log files)."""

    def __init__(self, stream: TextIO, *, stamp: bool = False) -> None:
        self.stream, self.stamp = stream, stamp
        self._epochs = 0

    def on_run_start(self, plan: RunPlan) -> None:
        self._epochs = plan.epochs
        self._write(
            f"training epochs {plan.first_epoch + 1}…{plan.epochs}, "
            f"{plan.samples_per_epoch} samples per epoch"
        )

    def on_epoch_end(self, state: LoopState) -> None:
        if state.history:
            self._write(epoch_line(state, self._epochs))

    def _write(self, text: str) -> None:
        prefix = time.strftime("%Y-%m-%d %H:%M:%S  ") if self.stamp else ""
        self.stream.write(prefix + text + "\n")
        self.stream.flush()


class RichProgress(LoopObserver):
    """``with RichProgress() as bar:`` shows one bar per loop run or ensemble run; pass
    ``bar`` to ``train_on_substrates(observers=...)`` or a study's ``progress``."""

    def __init__(self, console: Console | None = None, *, enabled: bool = True) -> None:
        self.progress = Progress(console=console, transient=False, disable=not enabled)
        self._task: TaskID | None = None
        self._epochs = 0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    # LoopObserver
    def on_run_start(self, plan: RunPlan) -> None:
        total = (plan.epochs - plan.first_epoch) * plan.samples_per_epoch
        self._task = self.progress.add_task("training", total=total)
        self._epochs = plan.epochs

    def on_step(self, report: StepReport) -> None:
        if self._task is not None:
            self.progress.advance(self._task, len(report.free_locked))

    def on_epoch_end(self, state: LoopState) -> None:
        if self._task is not None and state.history:
            h = state.history
            desc = (
                f"epoch {state.epoch}/{self._epochs} test {100 * h[-1].test_accuracy:5.1f} % "
                f"{sparkline([r.test_accuracy for r in h])} loss {_loss(h[-1].loss)} "
                f"{sparkline([r.loss for r in h])}"
            )
            if h[-1].gradient_cosine is not None:
                desc += f" cos {h[-1].gradient_cosine:.4f}"
            self.progress.update(self._task, description=desc)

    # EnsembleProgress
    def track(self, label: str, epochs: int) -> Callable[[EpochSummary], None]:
        task = self.progress.add_task(label, total=epochs)

        def on_epoch(s: EpochSummary) -> None:
            desc = f"{label}: epoch {s.epoch}/{epochs}"
            desc += f" train {100 * float(np.mean(s.train_accuracy)):5.1f} %"
            if s.test_accuracy is not None:
                desc += f" test {100 * float(np.mean(s.test_accuracy)):5.1f} %"
            self.progress.update(task, advance=1, description=desc)

        return on_epoch
