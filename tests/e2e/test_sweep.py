"""Sweeps on Ray: equal to serial runs, one run per trial in the store, retried after a worker
is killed, exclusive benches, resume after Ctrl-C, successive halving, reproduce vowels on Ray
equal to the local study, and the one-line errors (spec mistakes, ray missing)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import cli_app, require

DEVICE = Path(__file__).resolve().parents[2] / "examples" / "devices" / "simulated-2-5-2.toml"
BENCH = "bench:test-chip"


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray instance (2 CPUs, one emulated bench resource), shut down afterwards."""
    require(
        importlib.util.find_spec("ray") is not None, "ray (pip install 'phasegrad-hw[cluster]')"
    )
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, resources={BENCH: 1.0}, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _spec(tmp: Path, text: str) -> Path:
    p = tmp / "spec.toml"
    p.write_text(text)
    return p


GRID = f"""
study = "train"
search = "grid"
[base]
device = "{DEVICE}"
epochs = 2
params = "both"
[grid]
lr = [0.01, 0.05]
seed = [1, 2]
"""


def _plan(path: Path) -> tuple[Any, list[Any]]:
    from phasegrad_hw.studies.sweep import load_spec, plan_trials

    spec, base = load_spec(path)
    return spec, plan_trials(spec, base)


def _serial(options: dict[str, Any], epochs: int | None = None) -> Any:
    """The same trial run directly in this process (no Ray, no store)."""
    from phasegrad_hw.learning.loop import LoopObserver
    from phasegrad_hw.studies.training import TrainOptions, prepare, train_device

    class Last(LoopObserver):
        state: Any = None

        def on_epoch_end(self, state: Any) -> None:
            self.state = state

    o = TrainOptions.model_validate({**options, **({"epochs": epochs} if epochs else {})})
    last = Last()
    out = asyncio.run(train_device(prepare(o), observers=[last]))
    return out, last.state


def _same_state(a: Any, b: Any) -> None:
    assert a.epoch == b.epoch
    np.testing.assert_array_equal(a.params.omega, b.params.omega)
    np.testing.assert_array_equal(a.params.coupling, b.params.coupling)
    key = [(r.epoch, r.train_accuracy, r.test_accuracy, r.skipped) for r in a.history]
    assert key == [(r.epoch, r.train_accuracy, r.test_accuracy, r.skipped) for r in b.history]


def _runs(store: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT id, status, config FROM runs").fetchall()
    return [{"id": i, "status": s, "config": json.loads(c)} for i, s, c in rows]


def test_sweep_equals_serial_runs_one_run_per_trial(ray_local: Any, tmp_path: Path) -> None:
    from phasegrad_hw.store import RunStore
    from phasegrad_hw.studies.sweep import run_sweep

    spec, trials = _plan(_spec(tmp_path, GRID))
    assert len(trials) == 4
    store = tmp_path / "runs.sqlite"
    res = run_sweep(spec, trials, store)
    assert res["failed"] == [] and len(res["trials"]) == 4
    runs = _runs(store)
    assert len(runs) == 4 and {r["status"] for r in runs} == {"finished"}
    assert sorted(r["config"]["sweep"]["trial"] for r in runs) == [0, 1, 2, 3]
    with RunStore(store) as rs:
        for t, got in zip(trials, res["trials"], strict=True):
            out, state = _serial(t.options)
            assert got["summary"]["final_test_accuracy"] == out["final_test_accuracy"]
            np.testing.assert_array_equal(got["parameters"]["omega"], state.params.omega)
            _, stored = rs.load_checkpoint(got["run_id"])
            _same_state(stored, state)
            assert [h["test_accuracy"] for h in got["history"]] == [
                r.test_accuracy for r in state.history
            ]


def test_killed_worker_is_retried_without_duplicate_runs(
    ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phasegrad_hw.studies.sweep import FAULT_ENV, run_sweep

    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_ENV, f"kill-once:1:{marker}")
    spec, trials = _plan(_spec(tmp_path, GRID))
    store = tmp_path / "runs.sqlite"
    res = run_sweep(spec, trials, store)
    assert marker.exists(), "the fault was not injected"
    killed_pid = int(marker.read_text())
    assert res["failed"] == [] and len(res["trials"]) == 4
    assert res["trials"][1]["worker"]["pid"] != killed_pid  # ran again in a new worker
    runs = _runs(store)
    assert len(runs) == 4
    assert len({r["config"]["sweep"]["key"] for r in runs}) == 4
    _, state = _serial(trials[1].options)
    np.testing.assert_array_equal(res["trials"][1]["parameters"]["omega"], state.params.omega)


def test_trials_on_one_bench_never_overlap(ray_local: Any, tmp_path: Path) -> None:
    from phasegrad_hw.studies.sweep import run_sweep

    text = GRID.replace("seed = [1, 2]", "seed = [1]") + f'[benches]\n"{DEVICE}" = "Test Chip"\n'
    spec, trials = _plan(_spec(tmp_path, text))
    assert [t.bench for t in trials] == [BENCH, BENCH]
    res = run_sweep(spec, trials, tmp_path / "runs.sqlite")
    spans = sorted((t["worker"]["start_perf_s"], t["worker"]["end_perf_s"]) for t in res["trials"])
    assert all(t["worker"]["resources"].get(BENCH) == 1.0 for t in res["trials"])
    (a0, a1), (b0, b1) = spans
    assert a1 <= b0, f"trials on {BENCH} overlapped: {spans}"


def test_interrupted_sweep_resumes_without_rerunning(ray_local: Any, tmp_path: Path) -> None:
    from phasegrad_hw.studies.sweep import SweepInterrupted, run_sweep

    spec, trials = _plan(_spec(tmp_path, GRID))
    store = tmp_path / "runs.sqlite"
    seen: list[int] = []

    def stop_after_two(r: Any) -> None:
        seen.append(r.trial.index)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(SweepInterrupted) as info:
        run_sweep(spec, trials, store, on_result=stop_after_two)
    sid = info.value.sweep_id
    assert len(_runs(store)) == 2
    res = run_sweep(spec, trials, store, sweep_id=sid)
    resumed = sorted(t["index"] for t in res["trials"] if t["resumed"])
    assert resumed == sorted(seen)
    runs = _runs(store)
    assert len(runs) == 4 and {r["config"]["sweep"]["id"] for r in runs} == {sid}
    changed = spec.model_copy(update={"seed": 7})
    from phasegrad_hw.errors import ConfigError

    with pytest.raises(ConfigError, match="another spec"):
        run_sweep(changed, trials, store, sweep_id=sid)


def test_successive_halving_keeps_the_best_and_continues_exactly(
    ray_local: Any, tmp_path: Path
) -> None:
    from phasegrad_hw.store import RunStore
    from phasegrad_hw.studies.sweep import run_sweep

    text = f"""
study = "train"
search = "asha"
[base]
device = "{DEVICE}"
params = "both"
[grid]
lr = [0.005, 0.02, 0.05, 0.1]
[asha]
eta = 2
min_epochs = 1
max_epochs = 2
"""
    spec, trials = _plan(_spec(tmp_path, text))
    assert spec.asha.rungs == [1, 2]
    store = tmp_path / "runs.sqlite"
    res = run_sweep(spec, trials, store)
    assert len(_runs(store)) == 4
    pruned = [t for t in res["trials"] if t["pruned_at"] == 1]
    full = [t for t in res["trials"] if t["pruned_at"] is None]
    assert len(pruned) == 2 and len(full) == 2
    rung1 = {t["index"]: (t["history"][0]["test_accuracy"], -t["index"]) for t in res["trials"]}
    assert min(rung1[t["index"]] for t in full) >= max(rung1[t["index"]] for t in pruned)
    with RunStore(store) as rs:
        for t in full:  # resumed from its rung-1 state in a worker == 2 uninterrupted epochs
            _, state = _serial(trials[t["index"]].options, epochs=2)
            _, stored = rs.load_checkpoint(t["run_id"])
            _same_state(stored, state)
        for t in pruned:
            assert rs.run(t["run_id"])["checkpoint_epochs"] == [1]


def test_reproduce_vowels_on_ray_equals_local(ray_local: Any, tmp_path: Path) -> None:
    args = ["reproduce", "vowels", "--seeds", "4", "--epochs", "2", "--setups", "published"]
    args += ["--params", "omega,K7", "--inits", "random"]
    out = {}
    for ex in ("local", "ray"):
        path = tmp_path / f"{ex}.json"
        r = CliRunner().invoke(
            cli_app("sweep", "reproduce"), [*args, "--executor", ex, "--json", str(path)]
        )
        assert r.exit_code == 0, r.output
        out[ex] = json.loads(path.read_text())

    def exact(d: dict[str, Any]) -> Any:
        return [{k: v for k, v in row.items() if k != "ensemble_seconds"} for row in d["rows"]]

    assert exact(out["ray"]) == exact(out["local"]) and len(out["ray"]["rows"]) == 4
    assert out["ray"]["evidence"] == out["local"]["evidence"]


def test_spec_mistakes_are_one_line_each(tmp_path: Path) -> None:
    bad = GRID.replace("lr = [0.01, 0.05]", "lr = [0.01, 5.0]")
    r = CliRunner().invoke(cli_app("sweep", "reproduce"), ["sweep", str(_spec(tmp_path, bad))])
    assert r.exit_code == 2
    assert "grid.lr: 5.0 — Input should be less than or equal to 1" in r.output
    bad = GRID.replace("[grid]", "[grid]\nwobble = [1]")
    r = CliRunner().invoke(cli_app("sweep", "reproduce"), ["sweep", str(_spec(tmp_path, bad))])
    assert r.exit_code == 2 and "grid.wobble: not an option of study 'train'" in r.output
    bad = 'study = "vowels"\nsearch = "asha"\n[grid]\nseeds = [2, 4]\n[asha]\nmax_epochs = 4\n'
    r = CliRunner().invoke(cli_app("sweep", "reproduce"), ["sweep", str(_spec(tmp_path, bad))])
    assert r.exit_code == 2 and "allowed for study 'train' only" in r.output
    bad = GRID.replace(str(DEVICE), str(tmp_path / "nope.toml"))
    r = CliRunner().invoke(cli_app("sweep", "reproduce"), ["sweep", str(_spec(tmp_path, bad))])
    assert r.exit_code == 2 and "base.device:" in r.output and "nope.toml" in r.output


def test_bench_resources_are_named_after_the_bench(tmp_path: Path) -> None:
    from phasegrad_hw.fleet.cluster import bench_resource

    assert bench_resource("mqtt://u:pw@broker:1883/Lab/Chip-1?timeout=5") == "bench:lab-chip-1"
    assert bench_resource("serial:///dev/ttyUSB0") == "bench:serial-dev-ttyusb0"
    visa = tmp_path / "bench.toml"
    visa.write_text('backend = "visa"\nname = "Probe Station 2"\n')
    assert bench_resource(str(visa)) == "bench:probe-station-2"
    assert bench_resource(str(DEVICE)) is None  # emulated: unlimited
    assert bench_resource(str(DEVICE), {str(DEVICE): "Test Chip"}) == BENCH


def test_without_ray_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    r = CliRunner().invoke(cli_app("sweep", "reproduce"), ["sweep", str(_spec(tmp_path, GRID))])
    assert r.exit_code == 2 and "pip install 'phasegrad-hw[cluster]'" in r.output
    r = CliRunner().invoke(
        cli_app("sweep", "reproduce"), ["reproduce", "vowels", "--seeds", "1", "--executor", "ray"]
    )
    assert r.exit_code == 2 and "pip install 'phasegrad-hw[cluster]'" in r.output
