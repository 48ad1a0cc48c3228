"""Packaging: one import namespace, mapped sub-packages, a working console script."""

from __future__ import annotations

import shutil
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


def _source_copy(dst):  # type: ignore[no-untyped-def]
    """The checkout's sources copied to ``dst`` (setuptools writes build/ and egg-info into
    the tree it builds: never into the checkout)."""
    skip = shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "*.sqlite"
    )
    shutil.copytree(REPO, dst, ignore=skip)
    return dst


@pytest.mark.slow
def test_wheel_contains_mapped_packages_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-w",
            str(wheels),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = wheels.glob("phasegrad_hw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("backends", "firmware_models", "calibration"):
        assert f"phasegrad_hw/{pkg}/__init__.py" in names
        assert not any(n.startswith(f"{pkg}/") for n in names), f"top-level {pkg}/ in wheel"


def test_extras_split_lab_and_development() -> None:
    """``[all]`` is what a lab user needs to run everything; tools are in ``[dev]``; the
    README's test command installs both and is .ci/run's last line."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["all"] == ["phasegrad-hw[visa,serial,daq,mqtt,plots,ml,fast]"]
    dev = " ".join(extras["dev"])
    for tool in ("pytest", "mypy", "ruff", "hypothesis"):
        assert tool in dev and tool not in " ".join(extras["all"])
    readme = (REPO / "README.md").read_text()
    test_cmd = "pip install -e '.[all,dev]' && python -m pytest"
    assert test_cmd in readme
    last = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln.strip()][-1]
    assert last == test_cmd
