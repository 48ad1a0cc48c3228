"""Shared test fixtures and helpers.

Hermetic: the run store every command uses by default is a per-session temporary file
(``PHASEGRAD_HW_STORE``, inherited by child processes), the operator is fixed, hypothesis keeps
its files in the system temporary directory, and :func:`hermetic_session` fails the session
when the checkout gained files (numba cache files in ``__pycache__`` excepted).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
VOWELS_CSV = SHARED_DATA / "hillenbrand_vowels.csv"
REQUIRE_ALL = os.environ.get("PHASEGRAD_HW_REQUIRE_ALL") == "1"

try:  # hypothesis keeps its example database and caches outside the checkout
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "phasegrad-hw-hypothesis")
except ImportError:
    pass


def require(condition: bool, what: str) -> None:
    """Skip when a real component is missing — or fail, in CI (PHASEGRAD_HW_REQUIRE_ALL=1)."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required component missing: {what} (PHASEGRAD_HW_REQUIRE_ALL=1)")
    pytest.skip(f"component missing: {what}")


@pytest.fixture
def vowels_csv() -> Path:
    require(VOWELS_CSV.exists(), f"vowel data at {VOWELS_CSV}")
    return VOWELS_CSV


def checkout_files() -> set[str] | None:
    """``git status --porcelain --ignored`` of the checkout without ``__pycache__`` entries
    (None when the checkout is not a git work tree)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--ignored", "-uall"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {ln for ln in out.stdout.splitlines() if "__pycache__" not in ln}


def gained(before: set[str], after: set[str]) -> list[str]:
    """Entries of ``after`` that ``before`` did not have (new or newly changed files)."""
    return sorted(after - before)


@pytest.fixture(scope="session", autouse=True)
def hermetic_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private default run store and operator for the whole session (child processes
    inherit them), and a check that the checkout gained no files."""
    home = tmp_path_factory.mktemp("phasegrad-hw-home")
    saved = {k: os.environ.get(k) for k in ("PHASEGRAD_HW_STORE", "PHASEGRAD_HW_OPERATOR")}
    os.environ["PHASEGRAD_HW_STORE"] = str(home / "runs.sqlite")
    os.environ["PHASEGRAD_HW_OPERATOR"] = "pytest"
    before = checkout_files()
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    after = checkout_files()
    if before is not None and after is not None:
        new = gained(before, after)
        assert not new, f"the test session wrote into the checkout {REPO}: {new[:10]}"


def cli_app(*families: str) -> typer.Typer:
    """A command-line app with only the named command families (modules of
    ``phasegrad_hw.cli``: "train", "reproduce", "sweep", "calibrate", "runs", …) registered,
    so a test of one area does not depend on the others' optional extras."""
    import importlib

    from phasegrad_hw.cli import Groups

    app = typer.Typer()
    groups = Groups(
        app=app,
        reproduce=typer.Typer(),
        emulate=typer.Typer(),
        calibrate=typer.Typer(),
        runs=typer.Typer(),
    )
    for name in families:
        importlib.import_module(f"phasegrad_hw.cli.{name}").register(groups)
    for name in ("reproduce", "emulate", "calibrate", "runs"):
        app.add_typer(getattr(groups, name), name=name)
    return app
