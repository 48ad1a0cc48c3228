"""Calibration report and CLI: the JSON ``symmetry`` part, figures, summary, exit codes, the
transfer map saved with the device, and all-or-nothing output when a calibration is
interrupted (exception, cancellation, failure while writing) — with the device left safe."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.calibration import report as report_mod
from phasegrad_hw.calibration.report import CalibrationReport, run_calibration, save_report
from phasegrad_hw.cli import calibrate as cli_cal
from phasegrad_hw.device.substrate import PhaseReading
from phasegrad_hw.errors import DeviceError
from phasegrad_hw.testing.calibration import cmos_model
from tests.conftest import cli_app
from tests.unit.test_calibration_common import is_safe

SUMMARY_KEYS = {"asymmetry", "uncertainty", "passed", "non_odd", "edges"}
EDGE_KEYS = {"i", "j", "k_ij", "k_ji", "asymmetry"}


def _device_file(tmp_path: Path, asym: float = 0.0) -> Path:
    p = tmp_path / "chip.toml"
    cmos_model(asym).save(p)
    return p


def test_cli_symmetry_json_and_figures(tmp_path: Path) -> None:
    dev = _device_file(tmp_path, 0.2)
    out, js = tmp_path / "out", tmp_path / "r.json"
    r = CliRunner().invoke(
        cli_app("calibrate"),
        [
            "calibrate",
            "symmetry",
            "--device",
            str(dev),
            "--out",
            str(out),
            "--json",
            str(js),
            "--no-progress",
        ],
    )
    assert r.exit_code == 1, r.output  # the 20 % chip fails the symmetry check
    assert "symmetry        FAIL" in r.output and "overall         FAIL" in r.output
    data = json.loads(js.read_text())
    sym = data["symmetry"]
    assert set(sym) == SUMMARY_KEYS and sym["passed"] is False and sym["non_odd"] is False
    assert all(set(e) == EDGE_KEYS for e in sym["edges"]) and len(sym["edges"]) == 24
    for e in sym["edges"]:
        assert e["asymmetry"] == pytest.approx(
            abs(e["k_ij"] - e["k_ji"]) / (0.5 * (e["k_ij"] + e["k_ji"]))
        )
    assert sorted(p.name for p in out.iterdir()) == [
        "edge_asymmetry.png",
        "report.json",
        "response_matrix.png",
        "summary.txt",
    ]
    assert json.loads((out / "report.json").read_text()) == data


def test_cli_all_passes_and_saves_transfer_with_device(tmp_path: Path) -> None:
    dev = _device_file(tmp_path)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli_app("calibrate"),
        ["calibrate", "all", "--device", str(dev), "--out", str(out), "--no-progress"],
    )
    assert r.exit_code == 0, r.output
    for name in ("symmetry", "stability", "transfer", "noise/β", "overall"):
        assert any(
            line.strip().startswith(name) and "PASS" in line for line in r.output.splitlines()
        ), (name, r.output)
    names = {p.name for p in out.iterdir()}
    assert {
        "response_matrix.png",
        "edge_asymmetry.png",
        "transfer_curves.png",
        "lock_margins.png",
        "noise_choice.png",
        "report.json",
        "summary.txt",
        "transfer.json",
    } <= names
    assert (tmp_path / "chip.transfer.json").exists()
    rep = CalibrationReport.model_validate_json((out / "report.json").read_text())
    assert rep.passed and rep.noise is not None and rep.noise.measured_cosine >= 0.99
    # the next run installs the saved map first (the sum-rule test then has frequencies)
    r2 = CliRunner().invoke(
        cli_app("calibrate"),
        [
            "calibrate",
            "symmetry",
            "--device",
            str(dev),
            "--out",
            str(tmp_path / "o2"),
            "--no-progress",
        ],
    )
    assert r2.exit_code == 0, r2.output


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli_app("calibrate"),
        [
            "calibrate",
            "noise",
            "--device",
            str(tmp_path / "nope.toml"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2
    assert "neither an existing device file nor a URI" in r.output
    assert not (tmp_path / "o").exists()


class Faulty(CMOSSubstrate):
    """A CMOS chip whose ``fail_after``-th read raises (or signals, for cancellation)."""

    fail_after = 10**9
    signal: asyncio.Event | None = None

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.reads = 0

    async def _read(self, averages: int) -> PhaseReading:
        self.reads += 1
        if self.reads == self.fail_after:
            if self.signal is not None:
                self.signal.set()
                await asyncio.sleep(3600)  # cancelled here
            raise DeviceError("emulated fault: the phase meter stopped answering")
        return await super()._read(averages)


def _opts(tmp_path: Path, routine: str = "all") -> cli_cal.CalibrateOptions:
    return cli_cal.CalibrateOptions(
        routine=routine,
        device=str(_device_file(tmp_path)),  # type: ignore[arg-type]
        out=tmp_path / "out",
        json_path=tmp_path / "r.json",
    )


@pytest.mark.parametrize("routine,fail_after", [("all", 40), ("stability", 30), ("noise", 6)])
async def test_exception_midway_leaves_device_safe_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, routine: str, fail_after: int
) -> None:
    chip = Faulty(cmos_model(), 1)
    chip.fail_after = fail_after
    monkeypatch.setattr(
        "phasegrad_hw.device.registry.open_substrate", lambda spec, seed=None, transfer=None: chip
    )
    with pytest.raises(DeviceError, match="emulated fault"):
        await cli_cal.run(_opts(tmp_path, routine), progress=False)
    assert chip.reads == fail_after and is_safe(chip)
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.json").exists()
    assert not (tmp_path / "chip.transfer.json").exists()


async def test_cancellation_midway_leaves_device_safe_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chip = Faulty(cmos_model(), 1)
    chip.fail_after = 25
    chip.signal = asyncio.Event()
    monkeypatch.setattr(
        "phasegrad_hw.device.registry.open_substrate", lambda spec, seed=None, transfer=None: chip
    )
    task = asyncio.create_task(cli_cal.run(_opts(tmp_path, "symmetry"), progress=False))
    await chip.signal.wait()
    assert not is_safe(chip)  # mid-measurement: frequencies are set
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert is_safe(chip)
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.json").exists()


async def test_failure_while_writing_keeps_nothing_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with CMOSSubstrate(cmos_model(), 1) as chip:
        rep = await run_calibration(chip, "symmetry")
    out = tmp_path / "out"
    save_report(rep, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("figure backend crashed")

    monkeypatch.setattr(report_mod, "_fig_edges", boom)
    rep.device = "changed"
    with pytest.raises(RuntimeError, match="crashed"):
        save_report(rep, out)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # the old complete report is untouched, no temp files remain
    assert np.isfinite(rep.symmetry_details.summary.asymmetry)


def test_thresholds_come_from_the_device_file(tmp_path: Path) -> None:
    from phasegrad_hw.device.registry import load_device_model

    d = cmos_model(0.05).model_dump(mode="json", exclude_none=True)
    d["calibration"] = {"max_asymmetry": 0.005, "max_edge_asymmetry": 0.5}
    dev = tmp_path / "strict.json"
    dev.write_text(json.dumps(d))
    assert load_device_model(dev).calibration is not None  # the section validates
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli_app("calibrate"),
        [
            "calibrate",
            "symmetry",
            "--device",
            str(dev),
            "--out",
            str(out),
            "--no-progress",
            "--no-figures",
        ],
    )
    assert r.exit_code == 1, r.output
    rep = CalibrationReport.model_validate_json((out / "report.json").read_text())
    assert rep.thresholds.max_asymmetry == 0.005
    assert rep.symmetry is not None and not rep.symmetry.passed  # 5 % asymmetry > strict limit
    assert rep.symmetry_details is not None and rep.symmetry_details.edge_asymmetry_passed
    bad = dict(d, calibration={"max_asymmetry": -1})
    dev.write_text(json.dumps(bad))
    r = CliRunner().invoke(
        cli_app("calibrate"),
        ["calibrate", "symmetry", "--device", str(dev), "--out", str(out / "x")],
    )
    assert r.exit_code == 2 and "calibration.max_asymmetry: -1" in r.output
