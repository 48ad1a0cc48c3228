"""Run store: exact round trips, transactional checkpoints (exception and SIGKILL), CLI."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from phasegrad_hw.learning.controller import Parameters
from phasegrad_hw.learning.loop import EpochRecord, LoopState
from phasegrad_hw.store import RunStore, StoreError
from tests.conftest import cli_app


def make_state(epoch: int, rng: np.random.Generator, n: int = 9, e: int = 24) -> LoopState:
    hist = [
        EpochRecord(
            k + 1,
            float(rng.random()),
            float(rng.random()),
            int(rng.integers(5)),
            float(rng.random()),
        )
        for k in range(epoch)
    ]
    return LoopState(
        epoch,
        Parameters(rng.standard_normal(n), rng.random(e) * 3),
        hist,
        sum(h.skipped for h in hist),
    )


def assert_same_state(a: LoopState, b: LoopState) -> None:
    assert a.epoch == b.epoch and a.skipped_samples == b.skipped_samples
    assert np.array_equal(a.params.omega, b.params.omega)  # bit-exact
    assert np.array_equal(a.params.coupling, b.params.coupling)
    assert a.params.omega.dtype == b.params.omega.dtype
    assert a.history == b.history


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    config = {"task": "vowels:a,i", "epochs": 5, "seed": 3, "lr": 1e-3, "nested": {"x": [1, 2]}}
    with RunStore(tmp_path / "runs.sqlite") as st:
        rid = st.create_run(config, "sim.toml")
        states = [make_state(k, rng) for k in (1, 2, 3)]
        for s in states:
            st.save_checkpoint(rid, s)
        cfg, back = st.load_checkpoint(rid)
        assert cfg == config
        assert isinstance(back, LoopState) and isinstance(back.history[0], EpochRecord)
        assert_same_state(back, states[-1])
        assert [e["epoch"] for e in st.epochs(rid)] == [1, 2, 3]
        assert st.epochs(rid)[1]["test_accuracy"] == states[-1].history[1].test_accuracy
        st.finish_run(rid, {"final_test_accuracy": 0.5})
        info = st.run(rid[:12])  # unique prefix resolves
        assert info["status"] == "finished" and info["checkpoint_epochs"] == [1, 2, 3]
    # a fresh connection (new process view) sees the same
    with RunStore(tmp_path / "runs.sqlite") as st2:
        assert_same_state(st2.load_checkpoint(rid)[1], states[-1])
        mode = st2._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_clear_errors(tmp_path: Path) -> None:
    with RunStore(tmp_path / "runs.sqlite") as st:
        rid = st.create_run({"a": 1}, "dev")
        with pytest.raises(StoreError, match=f"run {rid}: no checkpoint yet"):
            st.load_checkpoint(rid)
        with pytest.raises(StoreError, match="'nope': not in"):
            st.load_checkpoint("nope")
        assert st.run_config(rid) == {"a": 1}
        # a corrupted checkpoint is detected, not loaded
        st.save_checkpoint(rid, make_state(1, np.random.default_rng(0)))
        st._db.execute(
            "UPDATE checkpoints SET state = replace(state, '\"epoch\":1', '\"epoch\":7')"
        )
        with pytest.raises(StoreError, match="corrupt"):
            st.load_checkpoint(rid)
    with pytest.raises(StoreError, match="does not exist"):
        RunStore(tmp_path / "missing-dir" / "x.sqlite")


def test_failed_checkpoint_rolls_back_completely(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with RunStore(tmp_path / "runs.sqlite") as st:
        rid = st.create_run({}, "dev")
        good = make_state(1, rng)
        st.save_checkpoint(rid, good)
        bad = make_state(2, rng)
        bad.history[1] = {"no_epoch_field": 1}  # type: ignore[call-overload]
        st.record_step(rid, 2, {"loss": 0.1})
        with pytest.raises(KeyError):
            st.save_checkpoint(rid, bad)  # fails after the checkpoint row was inserted
        _, back = st.load_checkpoint(rid)
        assert_same_state(back, good)
        assert st.run(rid)["checkpoint_epochs"] == [1]
        assert [e["epoch"] for e in st.epochs(rid)] == [1]
        assert st.steps(rid) == []


def test_steps_are_written_with_their_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with RunStore(tmp_path / "runs.sqlite") as st:
        rid = st.create_run({}, "dev")
        for k in range(3):
            st.record_step(rid, 0, {"k": k, "cos": np.float64(0.5), "g": np.arange(2.0)})
        assert st.steps(rid) == []  # buffered
        st.save_checkpoint(rid, make_state(1, rng))
        got = st.steps(rid)
        assert [s["k"] for s in got] == [0, 1, 2]
        assert got[0]["g"] == {"__ndarray__": [0.0, 1.0], "dtype": "float64", "shape": [2]}
        st.record_step(rid, 1, {"k": 3})  # after the checkpoint ...
        st.load_checkpoint(rid)  # ... a resume replays that epoch: the buffer is dropped
        st.save_checkpoint(rid, make_state(2, rng))
        assert [s["k"] for s in st.steps(rid)] == [0, 1, 2]
        cid = st.save_calibration("dev", "symmetry", {"asymmetry": np.array([0.1, 0.2])}, rid)
        cal = st.calibrations("dev")
        assert cal[0]["id"] == cid and cal[0]["run_id"] == rid
        assert cal[0]["report"]["asymmetry"]["__ndarray__"] == [0.1, 0.2]


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from phasegrad_hw.learning.controller import Parameters
    from phasegrad_hw.learning.loop import EpochRecord, LoopState
    from phasegrad_hw.store import RunStore
    st = RunStore(sys.argv[1]); rid = sys.argv[2]
    n = 200_000  # big checkpoints: the kill lands inside a write
    for ep in range(1, 10_000):
        omega = np.full(n, float(ep))
        hist = [EpochRecord(k, 0.5, 0.5, 0, 0.1) for k in range(1, ep + 1)]
        st.save_checkpoint(rid, LoopState(ep, Parameters(omega, omega[:24].copy()), hist, ep))
        if ep == 2:
            print("go", flush=True)
""")


def test_sigkill_during_writes_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    with RunStore(db) as st:
        rid = st.create_run({"big": True}, "dev")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), rid], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"go"
    time.sleep(0.7)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with RunStore(db) as st:
        _, state = st.load_checkpoint(rid)  # checksum verified
        ep = state.epoch
        assert ep >= 2
        assert np.all(state.params.omega == float(ep)) and state.params.omega.size == 200_000
        assert len(state.history) == ep and state.skipped_samples == ep
        assert [e["epoch"] for e in st.epochs(rid)] == list(range(1, ep + 1))


def test_runs_cli_list_show_export(tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    rng = np.random.default_rng(4)
    with RunStore(db) as st:
        rid = st.create_run({"task": "vowels:a,i", "seed": 7}, "sim.toml")
        state = make_state(3, rng)
        st.save_checkpoint(rid, state)
        other = st.create_run({"task": "xor"}, "other.toml")
    app = cli_app("runs")
    r = CliRunner()
    out = r.invoke(app, ["runs", "list", "--store", str(db)])
    assert out.exit_code == 0, out.output
    assert rid in out.output and other in out.output and "sim.toml" in out.output
    out = r.invoke(app, ["runs", "show", rid, "--store", str(db)])
    assert out.exit_code == 0, out.output
    assert '"seed": 7' in out.output
    assert "checkpoints: epochs [3]" in " ".join(out.output.split())
    out = r.invoke(app, ["runs", "export", rid, "--format", "json", "--store", str(db)])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["latest_state"]["params"]["omega"] == state.params.omega.tolist()
    assert [e["epoch"] for e in data["epochs"]] == [1, 2, 3]
    csv_file = tmp_path / "e.csv"
    out = r.invoke(
        app, ["runs", "export", rid, "--format", "csv", "-o", str(csv_file), "--store", str(db)]
    )
    assert out.exit_code == 0, out.output
    lines = csv_file.read_text().splitlines()
    assert lines[0].split(",")[:3] == ["epoch", "train_accuracy", "test_accuracy"]
    assert len(lines) == 4 and float(lines[2].split(",")[2]) == state.history[1].test_accuracy
    out = r.invoke(app, ["runs", "export", rid, "--format", "xml", "--store", str(db)])
    assert out.exit_code == 2 and "allowed: json, csv" in out.output
    out = r.invoke(app, ["runs", "show", "zzz", "--store", str(db)])
    assert out.exit_code == 2 and "'zzz': not in" in out.output


def test_passwords_in_uris_are_not_stored(tmp_path: Path) -> None:
    from phasegrad_hw.wire.mqtt import BrokerConfig

    uri = "mqtt://controller:s3cret@broker.lab:1883/bench/chip?timeout=5"
    with RunStore(tmp_path / "runs.sqlite") as st:
        rid = st.create_run({"options": {"device": uri}, "telemetry": uri}, uri)
        info = st.run(rid)
    assert "s3cret" not in (tmp_path / "runs.sqlite").read_bytes().decode("latin-1")
    assert info["device"] == "mqtt://controller:***@broker.lab:1883/bench/chip?timeout=5"
    assert info["config"]["options"]["device"] == info["device"]
    cfg, path, _ = BrokerConfig.parse(info["device"], env={"PHASEGRAD_HW_MQTT_PASSWORD": "pw"})
    assert (cfg.username, cfg.password, path) == ("controller", "pw", "bench/chip")


async def test_run_recorder_hooks_record_a_training_run(tmp_path: Path) -> None:
    from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
    from phasegrad_hw.learning.controller import EPConfig, StepReport
    from phasegrad_hw.learning.loop import LoopObserver, LoopOptions, train_on_substrates
    from phasegrad_hw.learning.tasks import Encoding, synthetic_vowels
    from phasegrad_hw.store import RunRecorder

    model = SimulatedDeviceModel.model_validate(
        {
            "n_oscillators": 5,
            "edges": [
                {"i": 0, "j": 2, "k": 2.0},
                {"i": 1, "j": 2, "k": 1.5},
                {"i": 2, "j": 3, "k": 2.5},
                {"i": 2, "j": 4, "k": 1.0},
            ],
            "roles": {"inputs": [0, 1], "hidden": [2], "outputs": [3, 4], "reference": 0},
        }
    )
    data = synthetic_vowels(("a", "i"), n_per_class=5, seed=0)
    events: list[str] = []

    class Probe(LoopObserver):
        def on_step(self, report: StepReport) -> None:
            events.append("step")

        def on_epoch_end(self, state: LoopState) -> None:
            events.append(f"epoch{state.epoch}")

    with RunStore(tmp_path / "runs.sqlite") as st:
        rid = st.create_run({"task": "tiny"}, "sim")
        rec = RunRecorder(st, rid, step_every=3)
        async with SimulatedSubstrate(model) as chip:
            res = await train_on_substrates(
                [chip], data, Encoding(), EPConfig(), LoopOptions(epochs=2, seed=0), [rec, Probe()]
            )
        _, back = st.load_checkpoint(rid)
        steps = st.steps(rid)
    assert_same_state(back, res.state)
    n = len(data.x_train)
    assert events == ["step"] * n + ["epoch1"] + ["step"] * n + ["epoch2"]
    assert [s["step"] for s in steps] == list(range(3, 2 * n + 1, 3))
    assert [s["epoch"] for s in steps] == [1 if s["step"] <= n else 2 for s in steps]
    assert all(np.isfinite(s["loss"]) and s["n_valid"] == 1 for s in steps)
