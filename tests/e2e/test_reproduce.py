"""CLI: demo JSON shape, train with the run store (resume == uninterrupted), reproduce rows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import cli_app

DEVICE = Path(__file__).resolve().parents[2] / "examples" / "devices" / "simulated-2-5-2.toml"


def test_registered_in_the_cli() -> None:
    from phasegrad_hw.cli import COMMAND_MODULES

    assert "train" in COMMAND_MODULES and "reproduce" in COMMAND_MODULES


def test_default_device_file_is_the_builder_network() -> None:
    from phasegrad_hw.device.presets import vowel_2_5_2
    from phasegrad_hw.studies import default_device_model

    m = default_device_model()
    built = vowel_2_5_2(np.random.default_rng(0))
    np.testing.assert_array_equal(m.edge_index, built.edge_index)
    np.testing.assert_allclose(m.coupling_values(), built.coupling_values(), rtol=0, atol=0)
    assert m.roles.outputs == [7, 8] and m.roles.reference == 0


def test_demo_json_shape(tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    res = CliRunner().invoke(
        cli_app("train", "reproduce"), ["demo", "--epochs", "3", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    for key, typ in (
        ("final_test_accuracy", float),
        ("epochs", int),
        ("seconds", float),
        ("skipped_samples", int),
        ("device", str),
    ):
        assert isinstance(d[key], typ), key
    assert d["epochs"] == 3 and 0.5 < d["final_test_accuracy"] <= 1.0
    assert "final test accuracy" in res.output and str(out) in res.output.replace("\n", "")


def test_demo_engine_and_loop_agree() -> None:
    from phasegrad_hw.studies import DemoOptions, run_demo

    a = asyncio.run(run_demo(DemoOptions(epochs=2, seed=3, engine="engine")))
    b = asyncio.run(run_demo(DemoOptions(epochs=2, seed=3, engine="loop")))
    assert a["final_test_accuracy"] == b["final_test_accuracy"]


def test_demo_rejects_bad_options() -> None:
    res = CliRunner().invoke(cli_app("train", "reproduce"), ["demo", "--readout", "softmax"])
    assert res.exit_code == 2
    assert "--readout" in res.output


def test_train_store_resume_equals_uninterrupted(tmp_path: Path) -> None:
    pytest.importorskip("phasegrad_hw.store")
    app = cli_app("train", "reproduce")
    store = tmp_path / "runs.sqlite"
    common = [
        "train",
        "--device",
        str(DEVICE),
        "--task",
        "vowels:a,i",
        "--seed",
        "4",
        "--lr",
        "0.02",
        "--params",
        "both",
    ]
    full = tmp_path / "full.json"
    r = CliRunner().invoke(app, [*common, "--epochs", "3", "--json", str(full)])
    assert r.exit_code == 0, r.output
    part = tmp_path / "part.json"
    r = CliRunner().invoke(
        app, [*common, "--epochs", "1", "--json", str(part), "--store", str(store)]
    )
    assert r.exit_code == 0, r.output
    run_id = json.loads(part.read_text())["run_id"]
    done = tmp_path / "done.json"
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--device",
            str(DEVICE),
            "--epochs",
            "3",
            "--store",
            str(store),
            "--resume",
            run_id,
            "--json",
            str(done),
        ],
    )
    assert r.exit_code == 0, r.output
    a, b = json.loads(full.read_text()), json.loads(done.read_text())
    assert b["epochs"] == 3 and b["run_id"] == run_id
    assert a["final_test_accuracy"] == b["final_test_accuracy"]
    from phasegrad_hw.store import RunStore

    with RunStore(store) as rs:
        _, state = rs.load_checkpoint(run_id)
    assert state.epoch == 3 and len(state.history) == 3


def test_train_unknown_device_is_a_clear_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli_app("train", "reproduce"),
        ["train", "--device", str(tmp_path / "nope.toml"), "--epochs", "1"],
    )
    assert r.exit_code != 0
    assert "nope.toml" in str(r.exception) + r.output


def test_reproduce_rows_shape(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    r = CliRunner().invoke(
        cli_app("train", "reproduce"),
        [
            "reproduce",
            "vowels",
            "--seeds",
            "3",
            "--epochs",
            "2",
            "--params",
            "omega,K7",
            "--json",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    rows = d["rows"]
    # published: 2 params x 2 inits x 2 readouts; mean_phase: 2 x 2; difference: omega/random
    assert len(rows) == 8 + 4 + 1
    need = {
        "task": str,
        "params": str,
        "init": str,
        "readout": str,
        "seeds": int,
        "success": int,
        "all_mean_acc": float,
    }
    for row in rows:
        for k, t in need.items():
            assert isinstance(row[k], t), k
        assert row["task"] == "a,i" and row["seeds"] == 3 and 0 <= row["success"] <= 3
        assert row["params"] in ("omega", "K7") and row["init"] in ("random", "spectral")
        assert row["success_mean_acc"] is None or row["success_mean_acc"] > 0.6
    assert {r["readout"] for r in rows} == {"argmax_cos", "template", "mean_phase", "difference"}
    ev = d["evidence"]["published/omega/random"]
    assert ev["common_class_separation_rad"] > 0 and ev["differential_std_rad"] >= 0


def test_reproduce_reports_significance_and_the_logistic_baseline(tmp_path: Path) -> None:
    """The JSON carries the study's p-values (Fisher, Welch, Mann–Whitney per comparison;
    Cochran's Q across set-ups) recomputed here from the per-seed accuracies it stores:
    seeds converged by final-epoch training accuracy > 0.6, the published test ω vs K7."""
    from phasegrad_hw.studies.stats import cochran_q, fisher_exact, welch_t

    out = tmp_path / "rows.json"
    r = CliRunner().invoke(
        cli_app("train", "reproduce"),
        ["reproduce", "vowels", "--seeds", "6", "--epochs", "4", "--setups", "published",
         "--params", "omega,K,K7", "--json", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "significance" in r.output and "logistic regression" in r.output
    d = json.loads(out.read_text())
    rows, st = d["rows"], d["statistics"]
    assert d["convergence"].startswith("final-epoch training accuracy > 0.6")
    assert d["draws"] == "published" and "published draws" in r.output  # the default
    for row in rows:
        assert len(row["accuracies"]) == len(row["train_accuracies"]) == 6
        conv = [a > 0.6 for a in row["train_accuracies"]]
        assert row["success"] == sum(conv)
        assert row["success_test_defined"] == sum(a > 0.6 for a in row["accuracies"])
        for key in ("success", "success_test_defined"):
            assert {f"{key}_mean_acc", f"{key}_std_acc"} <= row.keys()

    def pick(params: str) -> dict[str, Any]:
        return next(x for x in rows if x["params"] == params and x["init"] == "random"
                    and x["readout"] == "argmax_cos")  # fmt: skip

    w, k, k7 = pick("omega"), pick("K"), pick("K7")
    want = fisher_exact(w["success"], 6, k["success"], 6)
    assert st["omega_vs_K"]["fisher_exact"]["p_value"] == want.p_value
    ok = [[a > 0.6 for a in row["train_accuracies"]] for row in rows]
    assert st["cochran_q"]["p_value"] == cochran_q(list(zip(*ok, strict=True))).p_value
    # the published test: Welch on the K7 row's converged seeds, printed beside 1.8e-12
    cw = [a for a, t in zip(w["accuracies"], w["train_accuracies"], strict=True) if t > 0.6]
    ck = [a for a, t in zip(k7["accuracies"], k7["train_accuracies"], strict=True) if t > 0.6]
    p = welch_t(cw, ck).p_value
    assert st["omega_vs_K7"]["welch_t"]["p_value"] == p
    pt = d["published_test"]
    assert pt["comparison"] == "omega_vs_K7" and pt["p_value"] == p
    assert pt["n"] == [len(cw), len(ck)] and pt["published_p_value"] == 1.8e-12
    assert pt["within_10x"] == (0.1 <= p / 1.8e-12 <= 10)
    assert {"ratio", "published_n", "mean_test_accuracy", "std_test_accuracy",
            "published_mean_test_accuracy", "mann_whitney_u_p_value",
            "test_defined_p_value", "test_defined_n"} <= pt.keys()  # fmt: skip
    assert "published test" in r.output and "1.8e-12" in r.output
    lr = d["logistic_regression"]
    assert 0.5 < lr["test_accuracy"] <= 1.0 and 0.5 < lr["train_accuracy"] <= 1.0
