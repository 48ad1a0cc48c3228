"""Leaving substrates safe when a step of the hardware loop fails or is cancelled
(docs/design.md §4): stop the other substrates' tasks, make every involved substrate safe
(clamp released, drive off, biases at safe values) even while the caller is being cancelled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from phasegrad_hw.device.substrate import OscillatorSubstrate

log = logging.getLogger(__name__)

__all__ = ["make_safe_all", "shielded"]


async def make_safe_all(
    tasks: Sequence[asyncio.Future[Any]], subs: Sequence[OscillatorSubstrate]
) -> None:
    """Cancel ``tasks``, wait for them, then ``make_safe`` every substrate of ``subs``
    (failures are logged, not raised: every substrate gets its chance)."""
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks)
    results = await asyncio.gather(*(s.make_safe() for s in subs), return_exceptions=True)
    for k, r in enumerate(results):
        if isinstance(r, BaseException):
            log.error("substrates[%d]: make_safe failed: %s: %s", k, type(r).__name__, r)


async def shielded(coro: Awaitable[None]) -> None:
    """Run ``coro`` to completion even if the calling task is cancelled (then re-raise)."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if not task.cancelled() and task.exception() is not None:
        log.error("cleanup failed: %r", task.exception())
    if cancelled:
        raise asyncio.CancelledError
