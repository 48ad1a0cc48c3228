"""How a study reports the progress of its vectorised ensembles (the hardware loop reports
through :class:`phasegrad_hw.learning.loop.LoopObserver`). The command line implements both
with a progress bar; a library caller passes nothing and gets no display."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from phasegrad_hw.engine.results import EpochSummary

__all__ = ["EnsembleProgress"]


class EnsembleProgress(Protocol):
    """Progress of ensemble runs (:meth:`phasegrad_hw.engine.ensemble.Ensemble.run`)."""

    def track(self, label: str, epochs: int) -> Callable[[EpochSummary], None]:
        """A callback for one ensemble run of ``epochs`` epochs, called after each epoch."""
        ...
