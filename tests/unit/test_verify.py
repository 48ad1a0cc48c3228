"""Tables of phasegrad_hw.studies.verify and the `verify` CLI."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from typer.testing import CliRunner

from phasegrad_hw.cli import build_app
from phasegrad_hw.studies import verify as v
from tests.conftest import require


def test_identity_rows_meet_published_precision() -> None:
    for row in v.identity_table((6, 10, 30)):
        assert row.cos_tp_fd >= 0.999999 and row.cos_tp_ift >= 0.999999
        assert row.residual <= 1e-12 and row.learnable == row.N - 1


def test_finite_beta_centred_beats_one_sided() -> None:
    rows = {(r.beta, r.mode): r for r in v.finite_beta_table(betas=(0.1,), networks=20)}
    c, o = rows[(0.1, "centred")], rows[(0.1, "one_sided")]
    assert c.worst_cos >= 0.999999 and c.mean_scale_error <= 1e-4
    assert o.mean_scale_error > 10 * c.mean_scale_error  # O(β) vs O(β²)


def test_asymmetry_within_published_tolerance() -> None:
    for row in v.asymmetry_table(levels=(0.0, 0.05, 0.1, 0.2)):
        ref = 1.0 if row.published is None else row.published
        assert abs(row.mean_cos - ref) <= 0.002, row


def test_phase_lag_degrades_cosine() -> None:
    rows = v.phase_lag_table()
    assert rows[0].mean_cos > 1 - 1e-12 and rows[2].mean_cos < rows[1].mean_cos < 1.0


def test_cli_verify_json(tmp_path: Path) -> None:
    out = tmp_path / "v.json"
    res = CliRunner().invoke(build_app(), ["verify", "--sizes", "6,10", "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert set(doc) >= {"identity", "finite_beta", "asymmetry", "phase_lag"}
    assert [r["N"] for r in doc["identity"]] == [6, 10]
    assert all({"N", "cos_tp_fd", "cos_tp_ift", "residual"} <= set(r) for r in doc["identity"])
    assert all(r["cos_tp_fd"] >= 0.999999 for r in doc["identity"])
    assert {"asymmetry", "mean_cos", "std_cos"} <= set(doc["asymmetry"][0])


def test_cli_verify_autograd_agrees_with_the_implicit_gradient(tmp_path: Path) -> None:
    require(importlib.util.find_spec("jax") is not None, "jax (extra 'autograd')")
    out = tmp_path / "v.json"
    res = CliRunner().invoke(
        build_app(), ["verify", "--sizes", "6,15", "--autograd", "--json", str(out)]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["autograd"]
    assert [r["N"] for r in rows] == [6, 15]
    assert all(r["rel_error_warm"] <= 1e-10 and r["rel_error_perturbed"] <= 1e-10 for r in rows)


def test_cli_verify_plot_writes_the_figures(tmp_path: Path) -> None:
    res = CliRunner().invoke(build_app(), ["verify", "--sizes", "6,10", "--plot", str(tmp_path)])
    assert res.exit_code == 0, res.output
    for name in ("identity", "finite_beta", "asymmetry"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_rejects_bad_sizes() -> None:
    res = CliRunner().invoke(build_app(), ["verify", "--sizes", "2,10"])
    assert res.exit_code != 0 and "2" in res.output
