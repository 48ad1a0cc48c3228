"""A real mosquitto broker for tests: free loopback port, password file, ACL; stop, kill, restart.
And the two ways tests and benchmarks run a device agent on it: :func:`agent_process` (the
``phasegrad-hw agent`` command in its own process) and :func:`local_agent` (in this event loop).

Users (password = ``<name>-pw``):

* ``agent``      — reads device requests (and clears retained ones), writes replies and its
  status;
* ``controller`` — writes device requests, publishes telemetry;
* ``watcher``    — reads telemetry and agent status only;
* ``outsider``   — may use ``outside/#`` only (authenticated, but outside the device ACL).

Every client may read the reply topic named by its own MQTT client id (``pattern … %c``), so
a controller reads its replies and no one else's (docs/mqtt.md). Anonymous clients are
refused, unless ``anonymous=True`` (then they may use ``phasegrad/#``). ``nodelay=False``
leaves out ``set_tcp_nodelay true`` (mosquitto's default configuration).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import require

if TYPE_CHECKING:
    from phasegrad_hw.device.substrate import OscillatorSubstrate
    from phasegrad_hw.fleet.agent import Agent

USERS = ("agent", "controller", "watcher", "outsider")
ACL = """\
pattern read phasegrad/+/+/rpc/rep/%c

user agent
topic readwrite phasegrad/+/+/rpc/req
topic write phasegrad/+/+/rpc/rep/#
topic readwrite phasegrad/+/+/agent

user controller
topic write phasegrad/+/+/rpc/req
topic read phasegrad/+/+/agent
topic readwrite phasegrad/+/+/status
topic readwrite phasegrad/+/+/metrics
topic readwrite phasegrad/+/+/steps
topic readwrite phasegrad/+/+/calibration

user watcher
topic read phasegrad/+/+/status
topic read phasegrad/+/+/metrics
topic read phasegrad/+/+/steps
topic read phasegrad/+/+/calibration
topic read phasegrad/+/+/agent

user outsider
topic readwrite outside/#
"""


def child_env() -> dict[str, str]:
    """Environment for a child Python process that imports this checkout (repo first on
    PYTHONPATH, the rest kept)."""
    from tests.conftest import REPO

    parts = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(parts)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def password(user: str) -> str:
    return f"{user}-pw"


class Mosquitto:
    """One broker process with a generated config in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        tls: bool = False,
        nodelay: bool = True,
        anonymous: bool = False,
    ) -> None:
        exe = shutil.which("mosquitto")
        passwd = shutil.which("mosquitto_passwd")
        require(
            exe is not None and passwd is not None,
            "mosquitto and mosquitto_passwd (apt-get install -y mosquitto)",
        )
        assert exe is not None and passwd is not None
        self.exe = exe
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        pw_file = self.dir / "passwd"
        for k, user in enumerate(USERS):
            args = [passwd, "-b", str(pw_file), user, password(user)]
            if k == 0:
                args.insert(1, "-c")
            subprocess.run(args, check=True, capture_output=True)
        (self.dir / "acl").write_text(("topic readwrite phasegrad/#\n" if anonymous else "") + ACL)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if anonymous else 'false'}",
            f"password_file {pw_file}",
            f"acl_file {self.dir / 'acl'}",
            "persistence false",
            *(["set_tcp_nodelay true"] if nodelay else []),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.getuid() == 0:  # mosquitto drops root privileges to "mosquitto" unless told
            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        self.tls_port: int | None = None
        self.ca: Path | None = None
        if tls:  # a second listener with a server certificate signed by a throw-away CA
            self.ca = self._make_certs()
            self.tls_port = free_port()
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.ca}",
                f"certfile {self.dir / 'server.crt'}",
                f"keyfile {self.dir / 'server.key'}",
            ]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "mosquitto.log"

    def _make_certs(self) -> Path:
        openssl = shutil.which("openssl")
        require(openssl is not None, "openssl (for the TLS broker test)")
        assert openssl is not None
        d = self.dir

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=phasegrad test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        )
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        )
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run(
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        )
        return d / "ca.crt"

    def tls_uri(self, user: str | None = "controller", path: str = "", ca: bool = True) -> str:
        """``mqtts://`` URI of the TLS listener (with ``?ca=`` the test CA)."""
        assert self.tls_port is not None, "started without tls=True"
        cred = f"{user}:{password(user)}@" if user else ""
        query = f"?ca={self.ca}" if ca else ""
        return f"mqtts://{cred}127.0.0.1:{self.tls_port}{'/' + path if path else ''}{query}"

    def uri(self, user: str | None = "controller", path: str = "") -> str:
        cred = f"{user}:{password(user)}@" if user else ""
        return f"mqtt://{cred}127.0.0.1:{self.port}{'/' + path if path else ''}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start and wait until the port accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout_s} s")

    def stop(self) -> None:
        """Terminate gracefully."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL (no clean disconnects, no wills sent, nothing persisted)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Kill, stay down ``down_s`` s, start again on the same port."""
        self.kill()
        time.sleep(down_s)
        self.start()


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
