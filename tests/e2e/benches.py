"""Emulated benches and commands started as their own processes, for tests that drive them
from outside: :func:`child_process` (any command, stopped at exit), :func:`emulated_bench`
(``phasegrad-hw emulate bench`` and its instruments' ports), :func:`scpi_query`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO
from tests.mosquitto import child_env

CLI = [sys.executable, "-m", "phasegrad_hw.cli"]


@contextmanager
def child_process(
    args: list[str], *, stdout: int = subprocess.PIPE
) -> Iterator[subprocess.Popen[str]]:
    """``args`` in a child process importing this checkout (:func:`child_env`, cwd the
    checkout, stderr piped, text mode). At exit: SIGTERM if it still runs, up to 15 s to
    stop, then SIGKILL."""
    proc = subprocess.Popen(
        args, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=REPO, env=child_env()
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def emulated_bench(
    device: Path, bench_file: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    """``phasegrad-hw emulate bench`` for ``device`` writing ``bench_file``: the process and
    the TCP port of each instrument (3, or 4 with an input source); stopped at exit."""
    args = [*CLI, "emulate", "bench", "--device", str(device), "--tcp", "0"]
    with child_process([*args, "--out", str(bench_file), *extra]) as proc:
        assert proc.stdout is not None
        ports: dict[str, int] = {}
        name = line = ""
        for _ in range(6):  # one line per instrument, then ``bench <file>``
            line = proc.stdout.readline()
            name, _, res = line.strip().partition(" ")
            if name == "bench" or not line:
                break
            ports[name] = int(res.split("::")[2])
        if name != "bench":
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"emulate bench did not start: {line!r} {err[-2000:]}")
        yield proc, ports


def scpi_query(port: int, *queries: str) -> list[str]:
    """Send each SCPI query to the emulated instrument on ``port`` and return its reply lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rw", newline="\n")
        out = []
        for q in queries:
            f.write(q + "\n")
            f.flush()
            out.append(f.readline().strip())
        return out
