"""Emulated benches and commands in their own processes, for tests, examples and benchmarks
that drive them from outside — the one way to start a child process: :func:`run_cli` (one
``phasegrad-hw`` command to its end), :func:`child_process` (any command, stopped at exit,
its remaining output collected on request; also behind
:func:`phasegrad_hw.testing.mosquitto.agent_process`), :func:`emulated_bench` (``phasegrad-hw
emulate bench`` and its instruments' TCP ports) and :func:`scpi_query` (SCPI queries to one
of those instruments). Every child imports this same ``phasegrad_hw`` (:func:`child_env`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CLI = [sys.executable, "-m", "phasegrad_hw.cli"]
"""The ``phasegrad-hw`` command of this interpreter (prefix of a child's argument list)."""


def child_env() -> dict[str, str]:
    """Environment for a child Python process that imports this same ``phasegrad_hw`` (the
    directory it was imported from first on ``PYTHONPATH``, the rest kept)."""
    import phasegrad_hw

    root = str(Path(phasegrad_hw.__file__).resolve().parents[1])
    parts = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(parts)}


def run_cli(
    *args: str, cwd: Path | None = None, timeout_s: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """``phasegrad-hw ARGS`` run to its end in a child importing this same ``phasegrad_hw``
    (:func:`child_env`), output captured as text; the caller checks the return code."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=cwd, env=child_env(), timeout=timeout_s
    )


@dataclass
class ChildProcess:
    """A process of :func:`child_process`: ``p`` while it runs; after the ``with`` block,
    with ``collect``, ``stdout_text`` and ``stderr_text`` hold the output it had not read."""

    p: subprocess.Popen[str]
    stdout_text: str = ""
    stderr_text: str = ""


@contextmanager
def child_process(
    args: list[str],
    *,
    stdout: int = subprocess.PIPE,
    cwd: Path | None = None,
    collect: bool = False,
    stop_s: float = 15.0,
) -> Iterator[ChildProcess]:
    """``args`` in a child process importing this same ``phasegrad_hw`` (:func:`child_env`;
    stderr piped, text mode). At exit: SIGTERM if it still runs, up to ``stop_s`` s to stop,
    then SIGKILL; ``collect``: its remaining output read to the end meanwhile (no pipe can
    fill and block its shutdown) and kept in :class:`ChildProcess`."""
    proc = subprocess.Popen(
        args, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=cwd, env=child_env()
    )
    child = ChildProcess(proc)
    try:
        yield child
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            if collect:
                child.stdout_text, child.stderr_text = proc.communicate(timeout=stop_s)
            else:
                proc.wait(stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            if collect:
                child.stdout_text, child.stderr_text = proc.communicate(timeout=5)
            else:
                proc.wait()


@contextmanager
def emulated_bench(
    device: Path, bench_file: Path, *extra: str, cwd: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    """``phasegrad-hw emulate bench`` for ``device`` (``extra``: more options, e.g.
    ``--seed 2``, ``--fault …``), writing its bench config to ``bench_file``. Yields the
    process and the TCP port of each instrument in the order printed (smu, phase_meter,
    injection[, input_source]) once it printed them all and ``bench <bench_file>``; checks
    that output's format. Stopped at exit (:func:`child_process`)."""
    args = [*CLI, "emulate", "bench", "--device", str(device), "--tcp", "0"]
    with child_process([*args, "--out", str(bench_file), *extra], cwd=cwd) as child:
        proc = child.p
        assert proc.stdout is not None
        ports: dict[str, int] = {}
        name = res = line = ""
        for _ in range(6):  # one line per instrument, then ``bench <file>``
            line = proc.stdout.readline()
            name, _, res = line.strip().partition(" ")
            if name == "bench" or not line:
                break
            ports[name] = _tcpip_socket(res)[1]
        if name != "bench":
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"emulate bench did not start: {line!r} {err[-2000:]}")
        assert res == str(bench_file), line
        yield proc, ports


def _tcpip_socket(resource: str) -> tuple[str, int]:
    """``TCPIP::<host>::<port>::SOCKET`` → (host, port)."""
    parts = resource.split("::")
    if len(parts) != 4 or parts[0] != "TCPIP" or parts[3] != "SOCKET" or not parts[2].isdigit():
        raise AssertionError(f"not a TCPIP::host::port::SOCKET resource: {resource!r}")
    return parts[1], int(parts[2])


def scpi_query(port: int, *queries: str) -> list[str]:
    """Send each SCPI query to the emulated instrument on ``port`` (loopback) and return its
    reply lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rw", newline="\n")
        out = []
        for q in queries:
            f.write(q + "\n")
            f.flush()
            out.append(f.readline().strip())
        return out
