"""Calibration suite: shared helpers (device variants, the pty board) and tests of the
common pieces (operating point, atomic writes, isotonic fit)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.calibration.common import operating_point
from phasegrad_hw.calibration.transfer import isotonic
from phasegrad_hw.config import atomic_write_text
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.device.substrate import OscillatorSubstrate
from phasegrad_hw.testing.calibration import cmos_model, optical_model
from tests.conftest import REPO, require

DEVICES = REPO / "examples" / "devices"


@contextmanager
def pty_board(chip: OscillatorSubstrate) -> Iterator[str]:
    """Serve ``chip`` through the emulated controller-board firmware on a pseudo-terminal;
    yields the ``serial://`` URI."""
    require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
    from phasegrad_hw.firmware_models.board import BoardFirmware
    from phasegrad_hw.firmware_models.server import LineServer

    server = LineServer(BoardFirmware(chip))
    try:
        yield f"serial://{server.start_pty()}"
    finally:
        server.stop()


def is_safe(chip: Any) -> bool:
    """Clamp released and every bias at its safe value (emulated chip or simulated)."""
    if isinstance(chip, SimulatedSubstrate):
        return chip._clamp is None and np.array_equal(chip.omega, chip.model.safe_biases())
    safe = chip._quantise_bias(chip.model.safe_biases())
    return chip._clamp is None and np.allclose(chip.bias, safe)


# --------------------------------------------------------------------------- tests
def test_isotonic_is_monotone_least_squares() -> None:
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 40)
    y = x**2 + 0.05 * rng.standard_normal(40)
    fit = isotonic(y)
    assert np.all(np.diff(fit) >= 0)
    # least squares among monotone fits: no worse than the sorted data or the true curve
    assert np.sum((fit - y) ** 2) <= np.sum((x**2 - y) ** 2)
    dec = isotonic(-y, increasing=False)
    assert np.allclose(dec, -fit)


def test_atomic_write_never_leaves_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "r.json"
    atomic_write_text(target, "old")

    def boom(*a: Any, **k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


async def test_operating_point_locks_with_spread_phases() -> None:
    async with CMOSSubstrate(cmos_model(), 3) as chip:
        w, rd = await operating_point(chip, seed=2)
        theta, locked = chip.true_state()
    assert locked and rd.locked
    d = np.abs(
        np.angle(
            np.exp(1j * (theta[chip.model.edge_index[:, 1]] - theta[chip.model.edge_index[:, 0]]))
        )
    )
    assert d.max() <= 1.0 and d.max() > 0.05  # locked, inside margins, not all in phase
    assert chip.model.limits.omega.min <= w.min() and w.max() <= chip.model.limits.omega.max


async def test_operating_point_acquires_lock_with_phase_lag() -> None:
    from phasegrad_hw.backends.optical import OpticalSubstrate

    async with OpticalSubstrate(optical_model(0.3, scale=1.0), 1) as chip:
        w, rd = await operating_point(chip)
        _, locked = chip.true_state()
    assert locked and rd.locked
    assert np.abs(rd.phases).max() > 0.05


def test_open_substrate_names_calibration_devices() -> None:
    assert isinstance(open_substrate(DEVICES / "cmos-2-5-2.toml"), CMOSSubstrate)
