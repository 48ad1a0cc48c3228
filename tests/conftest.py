"""Shared test fixtures and helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
VOWELS_CSV = SHARED_DATA / "hillenbrand_vowels.csv"
REQUIRE_ALL = os.environ.get("PHASEGRAD_HW_REQUIRE_ALL") == "1"


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
