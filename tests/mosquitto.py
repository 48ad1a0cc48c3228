"""The mosquitto broker of the tests (:mod:`phasegrad_hw.testing.mosquitto`: users, ACL, TLS),
skipped (or failed under ``PHASEGRAD_HW_REQUIRE_ALL``) when mosquitto is not installed, and
the two ways tests run a device agent on it: :func:`agent_process` (the ``phasegrad-hw agent``
command in its own process; from :mod:`phasegrad_hw.testing.mosquitto`, with
:func:`~phasegrad_hw.testing.benches.child_env`) and :func:`local_agent` (in this event loop).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from phasegrad_hw.testing import mosquitto as _lib
from phasegrad_hw.testing.benches import child_env
from phasegrad_hw.testing.mosquitto import agent_args, agent_process, free_port, password
from tests.conftest import require

if TYPE_CHECKING:
    from phasegrad_hw.device.substrate import OscillatorSubstrate
    from phasegrad_hw.fleet.agent import Agent

__all__ = ["Mosquitto", "agent_args", "agent_process", "broker", "child_env", "free_port"]
__all__ += ["local_agent", "password"]


class Mosquitto(_lib.Mosquitto):
    """:class:`phasegrad_hw.testing.mosquitto.Mosquitto`; a test without the binaries is
    skipped (failed under ``PHASEGRAD_HW_REQUIRE_ALL``)."""

    def __init__(self, workdir: Path, port: int | None = None, **kw: Any) -> None:
        require(
            _lib.find("mosquitto") is not None and _lib.find("mosquitto_passwd") is not None,
            "mosquitto and mosquitto_passwd (apt-get install -y mosquitto)",
        )
        if kw.get("tls"):
            require(shutil.which("openssl") is not None, "openssl (for the TLS broker test)")
        super().__init__(workdir, port, **kw)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running broker, stopped after the test."""
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()


# --------------------------------------------------------------------------- agents
@asynccontextmanager
async def local_agent(
    b: Mosquitto, sub: OscillatorSubstrate, name: str = "lab/chip"
) -> AsyncIterator[Agent]:
    """An :class:`~phasegrad_hw.fleet.agent.Agent` serving ``sub`` in this event loop (user
    ``agent``), once it serves; cancelled at exit."""
    from phasegrad_hw.fleet.agent import Agent
    from phasegrad_hw.wire.mqtt import BrokerConfig

    cfg, _, _ = BrokerConfig.parse(b.uri("agent"))
    agent = Agent(sub, cfg, name)
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.ready.wait(), 10)
    try:
        yield agent
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
