"""The bench operator's workflow through the console script: calibration feeds training (the
noise map's β/averages/mode, said so), calibration never writes into the package's examples,
every run is kept (list, show, plot, export, check), its parameters evaluate on the chip and
seed a fine-tune, and progress works off a terminal and in a log file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from phasegrad_hw.store import RunStore
from phasegrad_hw.testing.benches import run_cli
from tests.conftest import REPO

DEVICES = REPO / "examples" / "devices"


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``phasegrad-hw ARGS`` (:func:`~phasegrad_hw.testing.benches.run_cli`), checked to
    succeed."""
    proc = run_cli(*args, cwd=cwd, timeout_s=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_calibrated_noise_feeds_training(tmp_path: Path) -> None:
    dev = tmp_path / "chip.toml"
    shutil.copy(DEVICES / "cmos-2-5-2.toml", dev)
    out = tmp_path / "cal"
    cal = cli("calibrate", "noise", "--device", str(dev), "--out", str(out), "--no-progress")
    for f in (out / "report.json", out / "noise.json", tmp_path / "chip.noise.json"):
        assert f"wrote {f}" in cal.stdout and f.exists()
    chosen = json.loads((tmp_path / "chip.noise.json").read_text())
    store = tmp_path / "runs.sqlite"
    res = tmp_path / "r.json"
    tr = cli(
        "train", "--device", str(dev), "--epochs", "1", "--store", str(store), "--json", str(res)
    )
    assert f"noise map {tmp_path / 'chip.noise.json'}" in tr.stdout
    opts = json.loads(res.read_text())["options"]
    assert (opts["beta"], opts["averages"], opts["mode"]) == (
        chosen["beta"],
        chosen["averages"],
        chosen["mode"],
    )
    # an explicit value wins over the map; --noise none ignores it
    res2 = tmp_path / "r2.json"
    cli("train", "--device", str(dev), "--epochs", "0", "--no-store", "--beta", "0.2",
        "--json", str(res2))  # fmt: skip
    assert json.loads(res2.read_text())["options"]["beta"] == 0.2
    cli("train", "--device", str(dev), "--epochs", "0", "--no-store", "--noise", "none",
        "--json", str(res2))  # fmt: skip
    assert json.loads(res2.read_text())["options"]["averages"] == 1
    with RunStore(store) as st:
        (run,) = st.list_runs()
        maps = st.run(run["id"])["config"]["maps"]
    assert maps["noise"]["path"] == str(tmp_path / "chip.noise.json")
    assert json.loads(maps["noise"]["text"]) == chosen


@pytest.mark.slow
def test_calibration_of_an_example_device_stays_out_of_the_examples(tmp_path: Path) -> None:
    before = sorted(p.name for p in DEVICES.iterdir())
    out = tmp_path / "cal"
    cal = cli(
        "calibrate",
        "noise",
        "--device",
        str(DEVICES / "cmos-2-5-2.toml"),
        "--out",
        str(out),
        "--no-progress",
    )
    assert sorted(p.name for p in DEVICES.iterdir()) == before
    assert f"--noise {out / 'noise.json'}" in cal.stdout


def test_every_run_is_kept_and_reused(tmp_path: Path) -> None:
    """Default store (the session's PHASEGRAD_HW_STORE), off-terminal progress, log file,
    runs list/show/plot/export/check, evaluate, --init-from."""
    dev = tmp_path / "sim.toml"
    shutil.copy(DEVICES / "simulated-2-5-2.toml", dev)
    log = tmp_path / "train.log"
    png = tmp_path / "curve.png"
    out = tmp_path / "r.json"
    tr = cli(
        "train", "--device", str(dev), "--epochs", "3", "--log-file", str(log),
        "--plot", str(png), "--json", str(out), "--operator", "ada", cwd=tmp_path,
    )  # fmt: skip
    first = tr.stdout.splitlines()[0]
    assert first.startswith("train vowels:a,i (synthetic formants)") and "lr 0.03" in first
    assert "readout mean_phase" in first and "20 epochs" not in first and "3 epochs" in first
    # stdout is a pipe here: one line per epoch
    assert [ln.split("/")[0] for ln in tr.stdout.splitlines() if ln.startswith("epoch ")] == [
        "epoch 1",
        "epoch 2",
        "epoch 3",
    ]
    assert sum("epoch " in ln and "loss" in ln for ln in log.read_text().splitlines()) == 3
    assert png.stat().st_size > 10_000
    res = json.loads(out.read_text())
    run_id = res["run_id"]
    assert len(res["history"]) == 3 and len(res["parameters"]["omega"]) == 9
    assert all(h["loss"] > 0 for h in res["history"])
    listed = cli("runs", "list", cwd=tmp_path).stdout
    assert run_id in listed and "finished" in listed
    show = cli("runs", "show", run_id, cwd=tmp_path).stdout
    import hashlib

    assert hashlib.sha256(dev.read_bytes()).hexdigest() in show
    assert "transfer map: none" in show and "operator ada" in show and "version " in show
    assert '"readout": "mean_phase"' in show
    exported = json.loads(cli("runs", "export", run_id, cwd=tmp_path).stdout)
    assert exported["latest_state"]["params"]["omega"] == res["parameters"]["omega"]
    assert exported["config"]["device_file"]["text"] == dev.read_text()
    png2 = tmp_path / "again.png"
    cli("runs", "plot", run_id, "--out", str(png2), cwd=tmp_path)
    assert png2.stat().st_size > 10_000
    assert "ok" in cli("runs", "check", cwd=tmp_path).stdout
    ev = tmp_path / "ev.json"
    cli("evaluate", "--run", run_id, "--device", str(dev), "--json", str(ev), cwd=tmp_path)
    assert json.loads(ev.read_text())["test_accuracy"] == res["final_test_accuracy"]
    # fine-tune from the run: starts where it ended
    ft = tmp_path / "ft.json"
    cli("train", "--device", str(dev), "--epochs", "1", "--lr", "1e-9", "--init-from", run_id,
        "--no-store", "--json", str(ft), cwd=tmp_path)  # fmt: skip
    a, b = json.loads(ft.read_text())["parameters"], res["parameters"]
    import numpy as np

    assert np.allclose(a["omega"], b["omega"], atol=1e-6)
    assert not list(tmp_path.glob("*.sqlite"))  # the default store is not in the cwd
