"""Progress display of the command line: a rich progress bar that observes the hardware loop
(:class:`~phasegrad_hw.learning.loop.LoopObserver`) and ensemble runs
(:class:`~phasegrad_hw.studies.progress.EnsembleProgress`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import Progress, TaskID

from phasegrad_hw.learning.loop import LoopObserver

if TYPE_CHECKING:
    from phasegrad_hw.engine.results import EpochSummary
    from phasegrad_hw.learning.controller import StepReport
    from phasegrad_hw.learning.loop import LoopState, RunPlan


class RichProgress(LoopObserver):
    """``with RichProgress() as bar:`` shows one bar per loop run or ensemble run; pass
    ``bar`` to ``train_on_substrates(observers=...)`` or a study's ``progress``."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(console=console, transient=False)
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
            test = state.history[-1].test_accuracy
            desc = f"epoch {state.epoch}/{self._epochs} test {100 * test:5.1f} %"
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
