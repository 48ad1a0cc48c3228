"""Noise calibration: measured readout noise against the emulator's, and the chosen β and
averages giving a measured gradient cosine ≥ 0.99 against the exact gradient — in process
and over the pty board (where the reference is the chip's own exact gradient)."""

from __future__ import annotations

import numpy as np
import pytest
from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.backends.optical import OpticalSubstrate
from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.calibration.noise import NoiseConfig, calibrate_noise, centred_estimate

from phasegrad_hw.devices import open_substrate
from phasegrad_hw.gradients import cosine
from tests.test_calibration_common import (
    cmos_model,
    is_safe,
    optical_model,
    pty_board,
    simulated_model,
)


async def test_simulated_noise_is_measured() -> None:
    async with SimulatedSubstrate(simulated_model(readout_noise_rad=0.02)) as chip:
        res = await calibrate_noise(chip, NoiseConfig(verify_trials=4))
    sig = np.asarray(res.sigma_rad)[1:]
    assert np.all(np.abs(sig - 0.02) < 0.004)  # 256 reads: ±10 % per channel
    assert 0.7 < res.averaging_efficiency < 1.3  # white noise averages as 1/√A
    assert res.measured_cosine >= 0.99 and res.passed


@pytest.mark.parametrize("seed", [11, 4])
async def test_chosen_beta_and_averages_reach_target(seed: int) -> None:
    chip = CMOSSubstrate(cmos_model(), seed)
    async with chip:
        res = await calibrate_noise(chip)
        assert res.reference == "exact" and res.passed
        # independent check: fresh estimates with the chosen (β, A) vs the exact gradient
        chip.reseed(1234)
        await chip.set_frequencies(np.asarray(res.omega))
        target = np.asarray(res.target_rad)
        await chip.read_phases(16)  # settle (heater transients) before the exact state
        exact = chip.exact_gradient(target)[1:]
        cos = [float(cosine((await centred_estimate(chip, target, res.beta, res.averages))[1:],
                            exact)) for _ in range(8)]
    assert np.mean(cos) >= 0.99, (seed, res.beta, res.averages, cos)
    assert res.averages <= chip.model.limits.max_averages
    # the choice is the cheapest feasible candidate
    feasible = [c for c in res.candidates if c.averages is not None]
    assert res.averages == min(c.averages for c in feasible if c.averages is not None)
    assert is_safe(chip)


async def test_noise_over_pty_board() -> None:
    chip = CMOSSubstrate(cmos_model(), 9)
    with pty_board(chip) as uri:
        sub = open_substrate(uri)
        async with sub:
            res = await calibrate_noise(sub, NoiseConfig(verify_trials=4, ref_repeats=2))
    assert res.reference == "richardson"  # the board does not report an exact gradient
    await chip.set_frequencies(np.asarray(res.omega))
    await chip.read_phases(16)
    exact = chip.exact_gradient(np.asarray(res.target_rad))[1:]
    rich = np.asarray(res.bias_coefficient)  # sanity: finite
    assert np.all(np.isfinite(rich))
    assert res.measured_cosine >= 0.99
    # the Richardson reference itself agrees with the chip's exact gradient
    assert res.gradient_norm == pytest.approx(float(np.linalg.norm(exact)), rel=0.05)


async def test_optical_verdict_is_the_measurement() -> None:
    """On the optical chip the reference-phase wander is partly slower than the noise
    measurement sees; the routine must then say so (verified, re-chosen), never claim."""
    async with OpticalSubstrate(optical_model(0.0), 1) as chip:
        res = await calibrate_noise(chip, NoiseConfig(max_rounds=2))
    assert res.rounds and res.measured_cosine == res.rounds[-1].measured_cosine
    assert res.passed == (res.measured_cosine >= 0.99)
    if not res.rounds[0].measured_cosine >= 0.99:
        assert len(res.rounds) == 2  # a failed verification triggers a re-choice
