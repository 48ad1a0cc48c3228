"""An emulated SCPI bench started as its own process (``phasegrad-hw emulate bench``), for
tests that drive it through a bench file."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.mosquitto import child_env

CLI = [sys.executable, "-m", "phasegrad_hw.cli"]


def start_emulated_bench(
    device: Path, bench_file: Path, *extra: str
) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """The emulator process (stop it yourself) and the TCP port of each instrument; the bench
    file it writes is ``bench_file``."""
    proc = subprocess.Popen(
        [*CLI, "emulate", "bench", "--device", str(device), "--tcp", "0", "--out",
         str(bench_file), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    ports: dict[str, int] = {}
    for _ in range(6):  # one line per instrument (3, or 4 with an input source), then the file
        line = proc.stdout.readline()
        name, _, res = line.strip().partition(" ")
        if name == "bench" or not line:
            break
        ports[name] = int(res.split("::")[2])
    assert name == "bench", f"emulate bench did not start: {line!r}"
    return proc, ports


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
