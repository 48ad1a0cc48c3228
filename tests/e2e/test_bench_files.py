"""Bench files: the templates under examples/benches load as device files, and
``phasegrad-hw bench check`` reports an emulated SCPI bench without moving anything."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phasegrad_hw.device.registry import load_device_model
from tests.conftest import REPO
from tests.e2e.benches import scpi_query, start_emulated_bench
from tests.mosquitto import child_env

CLI = [sys.executable, "-m", "phasegrad_hw.cli"]
BENCHES = REPO / "examples" / "benches"


@pytest.mark.parametrize(
    "name,backend", [("scpi-bench.toml", "visa"), ("ni-daqmx-bench.toml", "daqmx")]
)
def test_templates_load_as_device_files(name: str, backend: str) -> None:
    model = load_device_model(BENCHES / name)
    assert model.backend == backend and model.n == 9
    assert model.chip_model() is not None  # type: ignore[attr-defined]
    text = (BENCHES / name).read_text()
    assert text.startswith("#") and "bench check" in text


def test_bench_check_reports_without_moving_anything(tmp_path: Path) -> None:
    pytest.importorskip("pyvisa")
    dev = REPO / "examples" / "devices" / "cmos-2-5-2.toml"
    bench_file = tmp_path / "bench.toml"
    proc, ports = start_emulated_bench(dev, bench_file)
    try:
        model = load_device_model(dev)
        # put the bench in a non-safe state a check must leave as it is
        levels = [float(0.5 * (b + model.limits.bias.max)) for b in model.safe_biases()]
        set_cmd = ";".join(f":SOUR{c}:VOLT {v!r}" for c, v in enumerate(levels, 1))
        scpi_query(ports["smu"], set_cmd + ";*OPC?")
        queries = [f":SOUR{c}:VOLT?" for c in range(1, 10)] + [":OUTP1?"]
        before = scpi_query(ports["smu"], *queries)
        res = subprocess.run(
            [*CLI, "bench", "check", str(bench_file)],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=120,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        out = res.stdout
        assert "nothing was changed" in out
        for name in ("smu", "phase_meter", "injection"):
            assert f"{name}: TCPIP::127.0.0.1::{ports[name]}::SOCKET" in out
        assert out.count("  smu ch") == 9 and "protection" in out and out.rstrip().endswith("ok")
        after = scpi_query(ports["smu"], *queries)
        assert after == before
        assert np.allclose([float(v) for v in after[:9]], levels)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bench_check_mistakes(tmp_path: Path) -> None:
    for args, needle in (
        ([str(tmp_path / "nope.toml")], "does not exist"),
        ([str(REPO / "examples" / "devices" / "cmos-2-5-2.toml")], "not a bench"),
    ):
        res = subprocess.run(
            [*CLI, "bench", "check", *args], capture_output=True, text=True, env=child_env()
        )
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr
