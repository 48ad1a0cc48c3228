"""A real mosquitto broker on a free loopback port for tests, examples and benchmarks: password
file, ACL, optional TLS listener; start, stop, kill, restart.

Users (password = ``<name>-pw``):

* ``agent``      — reads device requests (and clears retained ones), writes replies and its
  status;
* ``controller`` — writes device requests, publishes telemetry;
* ``watcher``    — reads telemetry and agent status only;
* ``outsider``   — may use ``outside/#`` only (authenticated, but outside the device ACL).

Every client may read the reply topic named by its own MQTT client id (``pattern … %c``), so
a controller reads its replies and no one else's (docs/mqtt.md). Anonymous clients are
refused, unless ``anonymous=True`` (then they may use ``phasegrad/#``). ``nodelay=False``
leaves out ``set_tcp_nodelay true`` (mosquitto's default configuration). Without the
mosquitto binaries :class:`Mosquitto` raises :class:`MissingBroker`.

:func:`agent_process` runs ``phasegrad-hw agent`` serving a device on such a broker in its
own Python process (:func:`phasegrad_hw.testing.benches.child_process`: the child imports this
same ``phasegrad_hw``, its output is collected when it stops).
"""

from __future__ import annotations

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasegrad_hw.testing.benches import ChildProcess, child_process


class MissingBroker(RuntimeError):
    """The mosquitto (or openssl) binary this helper needs is not installed."""


def find(name: str) -> str | None:
    """Path of the binary ``name``: on PATH, else in ``/usr/sbin`` (where Debian puts
    mosquitto, not always on a user's PATH); None if neither."""
    path = Path("/usr/sbin") / name
    return shutil.which(name) or (str(path) if path.exists() else None)


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
        exe, passwd = find("mosquitto"), find("mosquitto_passwd")
        if exe is None or passwd is None:
            raise MissingBroker(
                "mosquitto and mosquitto_passwd are not installed (apt-get install -y mosquitto)"
            )
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
        if openssl is None:
            raise MissingBroker("openssl is not installed (needed for a TLS listener)")
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


# --------------------------------------------------------------------------- agent process
@dataclass
class AgentProcess:
    """A ``phasegrad-hw agent`` process (``child``: its :class:`~phasegrad_hw.testing.benches.
    ChildProcess`); after the ``with`` block ``stdout_text`` and ``stderr_text`` hold its
    output and ``stats`` its ``agent stats`` line (parsed), if any."""

    child: ChildProcess
    stats: dict[str, Any] | None = None

    @property
    def p(self) -> subprocess.Popen[str]:
        return self.child.p

    @property
    def stdout_text(self) -> str:
        return self.child.stdout_text

    @property
    def stderr_text(self) -> str:
        return self.child.stderr_text

    def device_state(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The served device's state as the agent process sees it now, asked by SIGUSR1
        (needs ``agent_process(..., probe=True)``): ``clamped`` (a nudge is on) and
        ``biases`` (the bias vector in the device's unit, for substrates that keep one —
        the simulated device: its ω — else None)."""
        assert self.p.stdout is not None
        self.p.send_signal(signal.SIGUSR1)
        ready, _, _ = select.select([self.p.stdout], [], [], timeout_s)
        line = self.p.stdout.readline() if ready else ""
        if not line.startswith("agent state "):
            raise AssertionError(f"no device state from the agent: {line!r}")
        state: dict[str, Any] = json.loads(line.removeprefix("agent state "))
        return state


AGENT_CODE = (
    "import logging, sys; logging.basicConfig(level=logging.INFO); "
    "from phasegrad_hw.cli import main; sys.argv[0] = 'phasegrad-hw'; main()"
)
#: Run before :data:`AGENT_CODE` by ``agent_process(probe=True)``: SIGUSR1 prints the served
#: substrate's state as one line ``agent state {...}`` (a test's view inside the agent).
PROBE_CODE = """
import json, signal, sys
import numpy as np
from phasegrad_hw.fleet import agent as _agent_mod

_init = _agent_mod.Agent.__init__

def _probed_init(self, substrate, *args, **kw):
    _init(self, substrate, *args, **kw)

    def report(signum, frame):
        biases = getattr(substrate, "omega", None)
        state = {
            "clamped": bool(substrate.clamped),
            "biases": None if biases is None else np.asarray(biases, dtype=float).tolist(),
            "safe_biases": substrate.model.safe_biases().tolist(),
        }
        print("agent state " + json.dumps(state), flush=True)

    signal.signal(signal.SIGUSR1, report)

_agent_mod.Agent.__init__ = _probed_init
"""


def agent_args(broker_uri: str, device: Path | str, name: str, *extra: str) -> list[str]:
    """Arguments of ``phasegrad-hw agent`` serving ``device`` as ``name`` on ``broker_uri``."""
    return ["agent", "--device", str(device), "--broker", broker_uri, "--name", name, *extra]


@contextmanager
def agent_process(
    broker_uri: str,
    device: Path | str,
    name: str,
    *extra: str,
    ready_s: float = 30.0,
    probe: bool = False,
    cwd: Path | None = None,
) -> Iterator[AgentProcess]:
    """The agent command (INFO log on stderr) in its own process (:func:`~phasegrad_hw.
    testing.benches.child_process`, :func:`child_env`); returns once it prints ``agent NAME
    ready``. ``probe``: :meth:`AgentProcess.device_state` works. At exit: SIGTERM if still
    running, output collected."""
    code = (PROBE_CODE + "\n" if probe else "") + AGENT_CODE
    args = [sys.executable, "-c", code, *agent_args(broker_uri, device, name, *extra)]
    out: AgentProcess | None = None
    try:
        with child_process(args, cwd=cwd, collect=True, stop_s=10.0) as child:
            proc = child.p
            assert proc.stdout is not None and proc.stderr is not None
            ready, _, _ = select.select([proc.stdout], [], [], ready_s)
            line = proc.stdout.readline() if ready else ""
            if line.strip() != f"agent {name} ready":
                proc.kill()
                raise AssertionError(f"agent did not start: {line!r} {proc.stderr.read()[-2000:]}")
            out = AgentProcess(child)
            yield out
    finally:
        if out is not None:
            for ln in out.stdout_text.splitlines():
                if ln.startswith("agent stats "):
                    out.stats = json.loads(ln.removeprefix("agent stats "))
