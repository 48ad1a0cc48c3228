"""Checkpoints written by 0.1.0 (before the sub-package move; dataclasses named by module path)
keep loading and resuming; new checkpoints name their dataclasses by stable type tags.

The fixture tests/fixtures/checkpoint-0.1.0/ is a run store made by 0.1.0 (README.md there),
with the parameters 0.1.0 reached when it resumed the run to 4 epochs (expected.json)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phasegrad_hw.learning.controller import Parameters
from phasegrad_hw.learning.loop import EpochRecord, LoopState
from phasegrad_hw.store import RunStore, StoreError, decode
from tests.conftest import REPO
from tests.mosquitto import child_env

FIXTURE = REPO / "tests" / "fixtures" / "checkpoint-0.1.0"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
RUN = EXPECTED["run_id"]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "checkpoint-0.1.0"
    shutil.copytree(FIXTURE, dst)
    return dst


def _states(db: Path) -> dict[int, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT epoch, state FROM checkpoints WHERE run_id = ?", (RUN,)))
    finally:
        con.close()


def test_fixture_is_what_0_1_0_wrote() -> None:
    """Guard: the fixture really holds module-path tags of the flat 0.1.0 package."""
    for text in _states(FIXTURE / "run.sqlite").values():
        assert '"__dataclass__":"phasegrad_hw.loop:LoopState"' in text
        assert '"__dataclass__":"phasegrad_hw.controller:Parameters"' in text
        assert '"__dataclass__":"phasegrad_hw.loop:EpochRecord"' in text
        assert '"__type__"' not in text


def test_0_1_0_checkpoint_loads_as_todays_classes(copy: Path) -> None:
    with RunStore(copy / "run.sqlite") as st:
        config, state = st.load_checkpoint(RUN)
    assert config["options"]["epochs"] == 2 and config["options"]["seed"] == 3
    assert isinstance(state, LoopState) and isinstance(state.params, Parameters)
    assert state.epoch == 2 and len(state.history) == 2
    assert all(isinstance(h, EpochRecord) for h in state.history)
    assert [h.epoch for h in state.history] == [1, 2]
    raw = json.loads(_states(copy / "run.sqlite")[2])
    omega = raw["params"]["omega"]["__ndarray__"]
    assert state.params.omega.dtype == np.float64 and state.params.omega.tolist() == omega


def test_resume_through_the_cli_reaches_what_0_1_0_reached(copy: Path) -> None:
    out = copy / "resumed.json"
    args = ["--store", "run.sqlite", "--resume", RUN, "--epochs", "4", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "phasegrad_hw.cli", "train", "--device", "device.toml", *args],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming run {RUN} at epoch 2" in proc.stdout
    with RunStore(copy / "run.sqlite") as st:
        _, state = st.load_checkpoint(RUN)
    assert state.epoch == EXPECTED["epoch"] == 4
    # what 0.1.0 reached: the locked-state solvers were unified since (one edge-list Newton,
    # one retry ladder), which reorders floating-point sums, so agreement is to rounding (two
    # epochs of updates: ~1e-16 here), not bit for bit; resume-equals-uninterrupted within one
    # release stays bitwise (tests/e2e/test_resume.py)
    np.testing.assert_allclose(state.params.omega, EXPECTED["omega"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(state.params.coupling, EXPECTED["coupling"], rtol=0, atol=1e-12)
    assert json.loads(out.read_text())["final_test_accuracy"] == EXPECTED["final_test_accuracy"]
    # new checkpoints (epochs 3, 4) carry type tags, not module paths; old ones are untouched
    states = _states(copy / "run.sqlite")
    assert sorted(states) == [1, 2, 3, 4]
    for epoch in (3, 4):
        text = states[epoch]
        assert '"__type__":"LoopState"' in text and '"__type__":"Parameters"' in text
        assert '"__type__":"EpochRecord"' in text
        assert "__dataclass__" not in text and "phasegrad_hw" not in text
    assert states[1] == _states(FIXTURE / "run.sqlite")[1]


def test_unknown_class_paths_and_tags_are_refused() -> None:
    evil = {"__dataclass__": "os:system", "command": "true"}
    with pytest.raises(StoreError, match="'os:system' is unknown"):
        decode(evil)
    with pytest.raises(StoreError, match="checkpoint type 'Nope' is unknown"):
        decode({"__type__": "Nope"})
