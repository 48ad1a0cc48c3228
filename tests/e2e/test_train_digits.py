"""``phasegrad-hw train`` on the shipped simulated 64-64-10 held-input device learns digits
(the vectorised layered engine; the full 5-seed acceptance run is benchmarks/bench_layered.py
--train-cli, not a test)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from phasegrad_hw.cli import build_app
from phasegrad_hw.store import RunStore
from tests.conftest import REPO

DEVICE = REPO / "examples" / "devices" / "simulated-64-64-10.toml"


def test_train_digits_on_the_layered_device(tmp_path: Path) -> None:
    out, store = tmp_path / "r.json", tmp_path / "runs.db"
    args = ["train", "--device", str(DEVICE), "--task", "digits", "--epochs", "3"]
    r = CliRunner().invoke(build_app(), [*args, "--json", str(out), "--store", str(store)])
    assert r.exit_code == 0, r.output
    assert "vectorised layered engine" in r.output
    res = json.loads(out.read_text())
    assert res["epochs"] == 3 and res["seconds"] > 0
    assert res["final_test_accuracy"] > 0.80  # chance is 0.10
    assert res["best_test_accuracy"] >= res["final_test_accuracy"]
    with RunStore(store) as rs:
        run = rs.run(res["run_id"])
    assert run["status"] == "finished"
