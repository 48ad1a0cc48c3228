"""Stability calibration: lock check, margins and λ_min against the emulator's physics,
lock ranges against an independent bisection on the physics, over the pty board too."""

from __future__ import annotations

import numpy as np

from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.calibration.stability import StabilityConfig, calibrate_stability
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.physics import centred, jacobian, solve_equilibrium, wrap
from phasegrad_hw.testing.calibration import cmos_model, simulated_model
from tests.unit.test_calibration_common import is_safe, pty_board


async def test_cmos_margins_and_eigenvalue_match_physics() -> None:
    async with CMOSSubstrate(cmos_model(), 4) as chip:
        res = await calibrate_stability(chip, StabilityConfig(sweep=False))
        theta, locked = chip.true_state()
        K = chip.K
        H = chip.H
    assert locked and res.locked and res.slips == 0 and res.passed and res.restored
    e = chip.model.edge_index
    true_d = wrap(theta[e[:, 1]] - theta[e[:, 0]])
    got = np.array([x.dtheta_rad for x in res.edges])
    assert np.abs(wrap(got - true_d)).max() < 0.02  # TDC offsets + noise
    # relaxation rates of the phases relative to the reference: −(J̃ − 1·J_ref,keep)
    ref = chip.model.roles.reference
    keep = np.arange(chip.model.n) != ref
    J = jacobian(theta, K, H)
    A = J[np.ix_(keep, keep)] - J[ref, keep][None, :]
    lam = np.sort(np.linalg.eigvals(-A).real)[0]
    assert abs(res.min_eigenvalue - lam) / lam < 0.05
    assert res.max_drift_rad_per_read < 1e-3


async def test_lock_range_matches_physics_bisection() -> None:
    base = simulated_model()
    weak = [dict(e.model_dump(exclude_none=True), k=0.25 * e.k) for e in base.edges]
    model = simulated_model(edges=weak, readout_noise_rad=0.005)
    cfg = StabilityConfig(
        detune_step=0.2, bisect_steps=5, amplitude=0.2, reads=5, sweep_nodes=[4, 7]
    )
    async with SimulatedSubstrate(model) as chip:
        res = await calibrate_stability(chip, cfg)
        K, H, ref = chip.K, chip.H, model.roles.reference
    assert res.restored
    w0 = np.asarray(res.omega)
    assert {x.detuned for x in res.edges if x.detuned is not None} == {4, 7}
    finite = [x for x in res.edges if x.detuned is not None and not x.hi_at_limit]
    assert finite, "weak coupling must lose lock inside the ω limits"
    checked = set()
    for x in finite:
        k = x.detuned
        if k in checked:
            continue
        checked.add(k)
        # independent reference: continuation + bisection on the core physics
        good, bad, th = 0.0, None, None
        t = 0.02
        while bad is None:
            w = w0.copy()
            w[k] += t
            eq = solve_equilibrium(centred(w), K, H, theta0=th, ref=ref)
            if eq.ok:
                good, th, t = t, eq.theta, t + 0.02
            else:
                bad = t
        assert x.detune_hi is not None
        assert good - 0.03 <= x.detune_hi <= bad + 0.02, (k, x.detune_hi, good, bad)
    assert is_safe(chip)


async def test_stability_over_pty_board() -> None:
    chip = CMOSSubstrate(cmos_model(), 6)
    with pty_board(chip) as uri:
        sub = open_substrate(uri)
        async with sub:
            res = await calibrate_stability(
                sub, StabilityConfig(reads=8, detune_step=0.5, bisect_steps=2)
            )
    assert res.locked and res.slips == 0 and res.restored and res.passed
    assert all(x.detune_lo is not None and x.detune_lo < 0 < (x.detune_hi or 0) for x in res.edges)
    assert is_safe(chip)
