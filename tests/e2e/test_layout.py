"""Packaging: one import namespace, mapped sub-packages, a working console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

CHECK = (
    "import importlib.util as u, sys;"
    "mods = ['phasegrad_hw.backends', 'phasegrad_hw.firmware_models', 'phasegrad_hw.calibration'];"
    "assert all(u.find_spec(m) for m in mods), mods;"
    "assert u.find_spec('backends') is None and u.find_spec('calibration') is None;"
    "print('ok')"
)


def test_installed_namespace_outside_the_repo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_console_script_help(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [sys.executable, "-m", "phasegrad_hw.cli", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "verify" in proc.stdout


@pytest.mark.slow
def test_wheel_contains_mapped_packages_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("phasegrad_hw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("backends", "firmware_models", "calibration"):
        assert f"phasegrad_hw/{pkg}/__init__.py" in names
        assert not any(n.startswith(f"{pkg}/") for n in names), f"top-level {pkg}/ in wheel"
