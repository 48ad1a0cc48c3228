"""``phasegrad-hw train --resume``: a run killed with SIGKILL mid-epoch, resumed from the run
store, ends with exactly the parameters of an uninterrupted run (noisy simulated device)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from phasegrad_hw.store import RunStore
from phasegrad_hw.testing.networks import model_2_5_2
from tests.conftest import REPO
from tests.mosquitto import child_env

EPOCHS = 3
CLI = [sys.executable, "-m", "phasegrad_hw.cli"]


def device(tmp_path: Path) -> Path:
    """2+5+2 vowel network with seeded readout noise (reseeded per epoch by the loop)."""
    model = model_2_5_2(5, name="device", readout_noise_rad=0.005)
    p = tmp_path / "noisy-2-5-2.toml"
    model.save(p)
    return p


def train_args(dev: Path, store: Path, out: Path) -> list[str]:
    return [
        *CLI,
        "train",
        "--device",
        str(dev),
        "--task",
        "vowels:a,i",
        "--params",
        "both",
        "--epochs",
        str(EPOCHS),
        "--seed",
        "3",
        "--store",
        str(store),
        "--json",
        str(out),
    ]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, capture_output=True, text=True, cwd=REPO, timeout=300, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def latest(store: Path) -> tuple[str, np.ndarray, np.ndarray, int, list[dict[str, object]]]:
    with RunStore(store) as st:
        (info,) = st.list_runs()
        _, s = st.load_checkpoint(info["id"])
        return info["id"], s.params.omega, s.params.coupling, s.epoch, st.epochs(info["id"])


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    dev = device(tmp_path)
    ref_store, ref_json = tmp_path / "ref.sqlite", tmp_path / "ref.json"
    run(train_args(dev, ref_store, ref_json))
    _, ref_omega, ref_k, ref_epoch, ref_hist = latest(ref_store)
    assert ref_epoch == EPOCHS

    store, out = tmp_path / "killed.sqlite", tmp_path / "killed.json"
    proc = subprocess.Popen(
        train_args(dev, store, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=child_env(),
    )
    # wait for the first checkpoint, then kill inside epoch 2
    deadline = time.monotonic() + 120
    epoch_s = 0.0
    while time.monotonic() < deadline and proc.poll() is None:
        if store.exists():
            with RunStore(store) as st:
                runs = st.list_runs()
                if runs and runs[0]["epoch"] == 1:
                    epoch_s = float(st.epochs(runs[0]["id"])[0]["seconds"])
                    break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.4 * epoch_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    run_id, _, _, killed_epoch, _ = latest(store)
    assert killed_epoch == 1  # killed mid-epoch 2: the last whole checkpoint is epoch 1

    res = run(
        [
            *CLI,
            "train",
            "--device",
            str(dev),
            "--epochs",
            str(EPOCHS),
            "--store",
            str(store),
            "--resume",
            run_id,
            "--json",
            str(out),
        ]
    )
    assert "resuming" in res.stdout
    rid, omega, k, epoch, hist = latest(store)
    assert rid == run_id and epoch == EPOCHS
    assert np.array_equal(omega, ref_omega) and np.array_equal(k, ref_k)  # bit-identical
    assert [h["test_accuracy"] for h in hist] == [h["test_accuracy"] for h in ref_hist]
    assert (
        json.loads(out.read_text())["final_test_accuracy"]
        == json.loads(ref_json.read_text())["final_test_accuracy"]
    )
