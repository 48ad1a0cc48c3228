"""``reproduce noise``: gradient cosine vs the chip's exact gradient over β × averages ×
(one-sided, centred) — expected shape, reproducibility, JSON and the command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from phasegrad_hw.cli import Groups
from phasegrad_hw.cli.noise import format_table, register
from phasegrad_hw.studies import NoiseOptions, run_noise

REPO = Path(__file__).resolve().parents[2]
CMOS = REPO / "examples" / "devices" / "cmos-2-5-2.toml"


def _rows(result: dict[str, Any]) -> dict[tuple[float, int, str], dict[str, Any]]:
    return {(r["beta"], r["averages"], r["mode"]): r for r in result["rows"]}


@pytest.fixture(scope="module")
def table() -> dict[str, Any]:
    return asyncio.run(run_noise(NoiseOptions(device=str(CMOS), seed=3, settings=3, repeats=4)))


def test_table_has_every_cell(table: dict[str, Any]) -> None:
    rows = _rows(table)
    assert len(rows) == 4 * 3 * 2
    for b in (0.01, 0.03, 0.1, 0.3):
        for a in (1, 16, 256):
            for mode in ("one_sided", "centred"):
                r = rows[(b, a, mode)]
                assert set(r) >= {"beta", "averages", "mode", "mean_cos", "std_cos"}
                assert -1.0 <= r["mean_cos"] <= 1.0 and r["std_cos"] >= 0.0 and r["n"] == 12


def test_expected_shape(table: dict[str, Any]) -> None:
    rows = _rows(table)
    # single-shot small-β gradients are noise
    for mode in ("one_sided", "centred"):
        assert rows[(0.01, 1, mode)]["mean_cos"] < 0.5
    # centred, larger β and averaging recover the gradient
    best = rows[(0.3, 256, "centred")]
    assert best["mean_cos"] >= 0.99
    assert best["mean_cos"] > rows[(0.3, 256, "one_sided")]["mean_cos"]  # O(β²) vs O(β)
    for b in (0.03, 0.1, 0.3):
        assert rows[(b, 256, "centred")]["mean_cos"] > rows[(b, 1, "centred")]["mean_cos"]
    for a in (1, 16, 256):
        assert rows[(0.3, a, "centred")]["mean_cos"] > rows[(0.01, a, "centred")]["mean_cos"]


def test_reproducible_under_a_seed(table: dict[str, Any]) -> None:
    again = asyncio.run(run_noise(NoiseOptions(device=str(CMOS), seed=3, settings=3, repeats=4)))
    assert again["rows"] == table["rows"]
    other = asyncio.run(run_noise(NoiseOptions(device=str(CMOS), seed=4, settings=3, repeats=4)))
    assert other["rows"] != table["rows"]


def test_table_text(table: dict[str, Any]) -> None:
    text = format_table(table)
    lines = text.splitlines()
    assert len(lines) == 2 + 12
    assert "one-sided" in lines[1] and "centred" in lines[1]


def test_command_line_writes_json(tmp_path: Path) -> None:
    app = typer.Typer()
    groups = Groups(
        app=app,
        reproduce=typer.Typer(),
        emulate=typer.Typer(),
        calibrate=typer.Typer(),
        runs=typer.Typer(),
    )
    register(groups)
    app.add_typer(groups.reproduce, name="reproduce")
    out = tmp_path / "noise.json"
    res = CliRunner().invoke(
        app,
        [
            "reproduce",
            "noise",
            "--device",
            str(CMOS),
            "--json",
            str(out),
            "--seed",
            "1",
            "--settings",
            "1",
            "--repeats",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 24 and data["seed"] == 1
    assert "gradient cosine vs exact" in res.output
    bad = CliRunner().invoke(app, ["reproduce", "noise", "--device", str(CMOS), "--settings", "0"])
    assert bad.exit_code == 2
    assert "settings: 0 — Input should be greater than or equal to 1" in bad.output
