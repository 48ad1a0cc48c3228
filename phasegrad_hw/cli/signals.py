"""Signals of every command: SIGINT (Ctrl-C), SIGTERM (``kill``, a scheduler) and SIGHUP (a
dropped SSH session) stop a command cleanly instead of killing it.

* :func:`run_async` runs a command's coroutine on a fresh event loop with handlers installed:
  the first signal cancels the command's task. Cancellation reaches the task at its next
  suspension point — the hardware loop yields once per EP step and every single read
  (``read_phases``) yields, so even in-process emulators stop within one step — and unwinds
  through the ``async with`` blocks that leave every substrate safe (their ``close`` is shielded). A
  second signal cancels again, abandoning whatever cleanup remains (telemetry flush, …)
  except the shielded device close. The command then sees :class:`Interrupted`.
* :func:`interruptible` does the same for synchronous work (no device, e.g. the vectorised
  vowel study): inside it, a signal raises :class:`Interrupted` in the main thread.

Once a signal has arrived, log records below ERROR are no longer shown (the library's
warnings about the abandoned step): the command reports the interruption in one line.

Exit status of an interrupted command: 128 + signal number (130 for Ctrl-C).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):
    """A command stopped by a signal; ``name`` e.g. ``"SIGINT"``, ``exit_code`` 128 + number."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _QuietAfterSignal(logging.Filter):
    """Drops records below ERROR once a signal has been received."""

    def __init__(self, received: list[int]) -> None:
        super().__init__()
        self.received = received

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.received or record.levelno >= logging.ERROR


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion like :func:`asyncio.run`, but a signal of :data:`SIGNALS`
    cancels it and raises :class:`Interrupted` (see the module docstring)."""
    received: list[int] = []
    quiet = _QuietAfterSignal(received)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(quiet)

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            received.append(signum)
            if len(received) == 1:
                log.info("%s: stopping (device will be left safe)", signal.Signals(signum).name)
            else:
                log.info("second signal: aborting the remaining clean-up")
            task.cancel()

        for s in SIGNALS:
            loop.add_signal_handler(s, on_signal, int(s))
        try:
            return await main
        finally:
            for s in SIGNALS:
                loop.remove_signal_handler(s)
                if received:  # the command is on its way out: more signals change nothing
                    signal.signal(s, signal.SIG_IGN)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if received:
            raise Interrupted(received[0]) from None
        raise
    finally:
        for h in handlers:
            h.removeFilter(quiet)


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside the block a signal of :data:`SIGNALS` raises :class:`Interrupted` (synchronous
    work only; :func:`run_async` handles event loops)."""

    def on_signal(signum: int, frame: object) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, on_signal) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
