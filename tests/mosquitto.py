"""The mosquitto broker of the tests (:mod:`phasegrad_hw.testing.mosquitto`: users, ACL, TLS),
skipped (or failed under ``PHASEGRAD_HW_REQUIRE_ALL``) when mosquitto is not installed, and
the two ways tests and benchmarks run a device agent on it: :func:`agent_process` (the
``phasegrad-hw agent`` command in its own process) and :func:`local_agent` (in this event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from phasegrad_hw.testing import mosquitto as _lib
from phasegrad_hw.testing.mosquitto import free_port, password
from tests.conftest import require

if TYPE_CHECKING:
    from phasegrad_hw.device.substrate import OscillatorSubstrate
    from phasegrad_hw.fleet.agent import Agent

__all__ = ["Mosquitto", "agent_process", "broker", "child_env", "free_port", "local_agent"]
__all__ += ["password"]


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


def child_env() -> dict[str, str]:
    """Environment for a child Python process that imports this checkout (repo first on
    PYTHONPATH, the rest kept)."""
    from tests.conftest import REPO

    parts = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(parts)}


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
@dataclass
class AgentProcess:
    """A ``phasegrad-hw agent`` process; after the ``with`` block ``stdout_text`` and
    ``stderr_text`` hold its output and ``stats`` its ``agent stats`` line (parsed), if any."""

    p: subprocess.Popen[str]
    stdout_text: str = ""
    stderr_text: str = ""
    stats: dict[str, Any] | None = None


AGENT_CODE = (
    "import logging, sys; logging.basicConfig(level=logging.INFO); "
    "from phasegrad_hw.cli import main; sys.argv[0] = 'phasegrad-hw'; main()"
)


def agent_args(broker_uri: str, device: Path | str, name: str, *extra: str) -> list[str]:
    """Arguments of ``phasegrad-hw agent`` serving ``device`` as ``name`` on ``broker_uri``."""
    return ["agent", "--device", str(device), "--broker", broker_uri, "--name", name, *extra]


@contextmanager
def agent_process(
    broker_uri: str, device: Path | str, name: str, *extra: str, ready_s: float = 30.0
) -> Iterator[AgentProcess]:
    """The agent command (INFO log on stderr) in its own process; returns once it prints
    ``agent NAME ready``. At exit: SIGTERM if still running, output collected."""
    from tests.conftest import REPO

    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT_CODE, *agent_args(broker_uri, device, name, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=child_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    ready, _, _ = select.select([proc.stdout], [], [], ready_s)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != f"agent {name} ready":
        proc.kill()
        raise AssertionError(f"agent did not start: {line!r} {proc.stderr.read()[-2000:]}")
    out = AgentProcess(proc)
    try:
        yield out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            o, e = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            o, e = proc.communicate(timeout=5)
        out.stdout_text, out.stderr_text = o, e
        for ln in o.splitlines():
            if ln.startswith("agent stats "):
                out.stats = json.loads(ln.removeprefix("agent stats "))


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
