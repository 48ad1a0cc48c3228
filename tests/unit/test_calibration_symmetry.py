"""Symmetry calibration: per-edge asymmetry on the CMOS emulator with injected asymmetry,
phase-lag detection on the optical emulator, exact identification on the ideal device,
and the same routine over the pty controller board."""

from __future__ import annotations

import numpy as np
import pytest

from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.backends.optical import OpticalSubstrate
from phasegrad_hw.calibration.symmetry import (
    SymmetryConfig,
    SymmetrySummary,
    analyse,
    calibrate_symmetry,
)
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.physics import jacobian
from phasegrad_hw.testing.calibration import (
    cmos_model,
    optical_model,
    simulated_model,
    true_edge_asymmetry,
)
from tests.unit.test_calibration_common import pty_board

SUMMARY_KEYS = {"asymmetry", "uncertainty", "passed", "non_odd", "edges"}
EDGE_KEYS = {"i", "j", "k_ij", "k_ji", "asymmetry"}


def _edge_rms(summary: SymmetrySummary, truth: dict[tuple[int, int], float]) -> float:
    d = [e.asymmetry - truth[(e.i, e.j)] for e in summary.edges]
    return float(np.sqrt(np.mean(np.square(d))))


@pytest.mark.parametrize("asym", [0.0, 0.05, 0.20])
async def test_cmos_injected_asymmetry_recovered(asym: float) -> None:
    model = cmos_model(asym)
    async with CMOSSubstrate(model, 7) as chip:
        res = await calibrate_symmetry(chip)
        truth = true_edge_asymmetry(chip.K, model.edge_index)
    s = res.summary
    # every edge, those at the reference included, is identified in both directions
    assert {(e.i, e.j) for e in s.edges} == set(truth)
    rms = _edge_rms(s, truth)
    assert rms <= 0.01, f"per-edge asymmetry RMS error {rms:.4f} > 1 pp"
    assert s.uncertainty > 0 and res.asymmetry_floor < 0.01
    assert not s.non_odd
    if asym == 0.0:
        assert s.passed and res.edge_asymmetry_passed
    if asym == 0.20:
        assert not s.passed and not res.edge_asymmetry_passed
    dumped = s.model_dump(mode="json")
    assert set(dumped) == SUMMARY_KEYS and all(set(e) == EDGE_KEYS for e in dumped["edges"])


@pytest.mark.parametrize("psi", [0.0, 0.3])
async def test_optical_phase_lag_flags_non_odd(psi: float) -> None:
    async with OpticalSubstrate(optical_model(psi, scale=1.0), 2) as chip:
        res = await calibrate_symmetry(chip)
    n = res.nonodd
    assert n.phase_lag_rad is not None and n.even_fraction is not None
    assert abs(n.phase_lag_rad - psi) < 0.03  # the lag itself is measured
    if psi:
        assert res.summary.non_odd and n.flagged_lag and n.flagged_even
        assert abs(n.even_fraction + np.sin(psi)) < 0.05  # H(0) = −sin ψ
    else:
        assert not res.summary.non_odd and res.summary.passed


async def test_quiet_chip_identifies_couplings_exactly() -> None:
    """A CMOS chip with the noise switched off and asymmetric couplings: K̂ (both directions,
    reference row included) and R̃ match the physics of the Ω-locked array."""
    model = cmos_model(
        0.15,
        coupling_function={"harmonics": [1.0]},
        tdc={"lsb_s": 1e-16, "jitter_s": 0.0, "offset_sigma_s": 0.0},
        phase_noise={"dbc_hz": -160.0},
        thermal__sigma_c=0.0,
        counter_gate_s=10.0,
        capacitors__lsb_ff=0.0,
    )
    async with CMOSSubstrate(model, 1) as chip:
        res = await calibrate_symmetry(
            chip, SymmetryConfig(averages=4, pilot_averages=4, repeats=1)
        )
        theta, _ = chip.true_state()
        K = chip.K
    Khat, _ = res.couplings()
    e = model.edge_index
    for a, b in ((e[:, 0], e[:, 1]), (e[:, 1], e[:, 0])):
        assert np.allclose(Khat[a, b], K[a, b], rtol=3e-3)
    # independent reference: linearise ω_i + Σ_j K_ij sin(θ_j − θ_i) = Ω about the state
    keep = np.asarray(res.indices)
    ref = model.roles.reference
    J = jacobian(theta, K, chip.H)
    A = J[np.ix_(keep, keep)] - J[ref, keep][None, :]
    R = -np.linalg.inv(A) @ (np.eye(len(keep)) + np.ones((len(keep), len(keep))))
    assert np.allclose(np.asarray(res.response), R, rtol=5e-3, atol=2e-4)
    expect = np.linalg.norm(R - R.T) / np.linalg.norm(R)
    assert res.summary.asymmetry == pytest.approx(expect, rel=0.03)


def test_lag_statistic_on_synthetic_jacobians() -> None:
    """The lag fit recovers ψ from J_ij = K cos(Δ−ψ), J_ji = K cos(Δ+ψ) built by hand, and
    random K mismatch alone is not flagged."""
    from phasegrad_hw.calibration.common import non_reference
    from phasegrad_hw.device.model import CalibrationThresholds
    from phasegrad_hw.physics import CouplingFunction

    model = simulated_model()
    rng = np.random.default_rng(1)
    theta = rng.uniform(-0.6, 0.6, model.n)
    theta[0] = 0.0
    keep = non_reference(model)
    from phasegrad_hw.calibration.symmetry import ProbeData

    for psi, mismatch in ((0.2, 0.0), (0.0, 0.2)):
        K = model.coupling_matrix()
        K = K * (1 + mismatch * rng.standard_normal(K.shape))
        J = jacobian(theta, K, CouplingFunction((1.0,), psi))
        # Ω-locked array, phases relative to the reference (see relative_matrix)
        A = J[np.ix_(keep, keep)] - J[0, keep][None, :]
        m = len(keep)
        dW = 1e-4 * np.eye(m)  # centred frequency probes; linear regime (factor 1)
        dT = -np.linalg.inv(A) @ (np.eye(m) + np.ones((m, m))) @ dW
        probes = ProbeData(
            dtheta=dT.tolist(), sigma=np.full_like(dW, 1e-12).tolist(), domega=dW.tolist(), reads=0
        )
        res = analyse(
            model_edges=model.edge_index,
            n=model.n,
            keep=keep,
            probes=probes,
            theta=theta,
            omega_c=None,
            harmonics=(1.0,),
            cfg=SymmetryConfig(),
            th_max=CalibrationThresholds(),
        )
        if psi:
            assert res.nonodd.phase_lag_rad == pytest.approx(psi, abs=1e-6)
            assert res.summary.non_odd
        else:
            assert not res.summary.non_odd


async def test_symmetry_over_pty_board() -> None:
    chip = CMOSSubstrate(cmos_model(0.20), 5)
    with pty_board(chip) as uri:
        sub = open_substrate(uri)
        async with sub:
            res = await calibrate_symmetry(sub)
    truth = true_edge_asymmetry(chip.K, chip.model.edge_index)
    assert _edge_rms(res.summary, truth) <= 0.01
    assert not res.summary.passed and not res.summary.non_odd
    assert chip._clamp is None
