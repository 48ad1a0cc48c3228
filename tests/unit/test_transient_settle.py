"""settle = "transient": emulated chips that settle by integrating their dynamics
(backends/_settle.py; docs/design.md §5, §9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends._settle import NewtonSettle, TransientSettle
from phasegrad_hw.backends.cmos import CMOSChipModel, CMOSSubstrate
from phasegrad_hw.device.registry import load_device_model
from phasegrad_hw.physics import wrap

REPO = Path(__file__).resolve().parents[2]
BASE: CMOSChipModel = load_device_model(REPO / "examples" / "devices" / "cmos-2-5-2.toml")  # type: ignore[assignment]
OMEGA = np.array([0.6, -0.9, 0.2, -0.1, 0.3, -0.2, 0.1, 0.15, -0.25])
QUIET = {"dbc_hz": -240.0}  # phase noise off (rms diffusion over the settle window < 1e-7 rad)


def model(**sections: Any) -> CMOSChipModel:
    d = BASE.model_dump()
    d["settle"] = "transient"
    for key, val in sections.items():
        if isinstance(val, dict) and isinstance(d.get(key), dict):
            d[key].update(val)
        else:
            d[key] = val
    return CMOSChipModel.model_validate(d)


def pair(**sections: Any) -> CMOSChipModel:
    """Reference + one ring, K = 1 both ways, odd H, no mismatch: the lock edge is |Δω| = 2K."""
    return model(
        n_oscillators=2,
        name="pair",
        edges=[{"i": 0, "j": 1, "k": 1.0}],
        roles={"inputs": [0], "hidden": [], "outputs": [1], "reference": 0},
        oscillator={"vth_mismatch_v": 0.0},
        capacitors={"mismatch": 0.0, "direction_mismatch": 0.0, "lsb_ff": 0.0},
        coupling_function={"harmonics": [1.0], "offset": 0.0, "cos_offset": 0.0},
        bias_dac={"bits": 24},
        **sections,
    )


def test_device_field_selects_the_strategy_and_needs_the_injection_nudge() -> None:
    assert BASE.settle == "newton"
    assert isinstance(CMOSSubstrate(BASE).settler, NewtonSettle)
    assert isinstance(CMOSSubstrate(model()).settler, TransientSettle)
    with pytest.raises(ValueError, match="injection"):
        model(nudge="linear")


async def test_integration_agrees_with_newton_free_and_clamped() -> None:
    """Noise off, tight lock detector: the integrated state is the Newton equilibrium
    (mismatched, asymmetric, non-odd chip), free and nudged, to 1e-6 rad."""
    m = model(phase_noise=QUIET, settling={"tolerance": 1e-6, "hold_cycles": 40.0})
    async with CMOSSubstrate(m, seed=0) as chip:
        await chip.set_frequencies(OMEGA)
        r = await chip.read_phases()
        assert r.locked and r.settle_s > 0
        th_t = chip.theta.copy()
        th_n, lin = chip.solve_state(theta0=th_t)
        assert lin is not None
        assert np.max(np.abs(wrap(th_t - th_n))) <= 1e-6
        await chip.clamp(np.array([-0.3, 0.3]), 0.5)
        r = await chip.read_phases()
        assert r.locked
        th_t = chip.theta.copy()
        th_n, lin = chip.solve_state(theta0=th_t)
        assert lin is not None
        assert np.max(np.abs(wrap(th_t - th_n))) <= 1e-6
        assert np.max(np.abs(wrap(th_t - chip.true_state()[0]))) > 1e-3  # the nudge moved it


async def test_optical_chip_integrates_with_its_laser_phase_noise() -> None:
    """The optical emulator (phase lag ψ, thermal tuning, laser phase noise): the transient
    agrees with Newton without noise, and locks near it with the 100 kHz linewidth."""
    from phasegrad_hw.backends.optical import OpticalSubstrate

    base = load_device_model(REPO / "examples" / "devices" / "optical-2-5-2.toml")
    for linewidth, tol in ((0.0, 1e-6), (1e5, 0.05)):
        d = base.model_dump()
        d.update(settle="transient")
        d["laser"]["linewidth_hz"] = linewidth
        d["settling"].update(tolerance=1e-6, hold_cycles=40.0)
        async with OpticalSubstrate(type(base).model_validate(d), seed=0) as chip:  # type: ignore[arg-type]
            await chip.set_frequencies(OMEGA)
            r = await chip.read_phases()
            assert r.locked
            th_n, lin = chip.solve_state(theta0=chip.theta.copy())
            assert lin is not None
            assert np.max(np.abs(wrap(chip.theta - th_n))) <= tol


async def lock_cycles(frac: float, **sections: Any) -> tuple[bool, float, Any]:
    """Step the ring from Δω = 0 to frac × the lock edge; (locked, lock cycles, reading)."""
    async with CMOSSubstrate(pair(**sections), seed=0) as chip:
        await chip.set_frequencies(np.array([0.0, 0.0]))
        await chip.read_phases()
        await chip.set_frequencies(np.array([0.0, 2.0 * frac]))
        r = await chip.read_phases(8)
        return r.locked, r.settle_s * chip.model.oscillator.f_center_hz, r


async def test_lock_acquisition_after_a_bias_step_slows_toward_the_lock_edge() -> None:
    """docs/design.md §5: lock within 5–50 cycles after a step away from the lock edge,
    longer toward it — from the integration (noise off), not a formula."""
    fracs = [0.2, 0.5, 0.8, 0.9, 0.97, 0.995]
    cycles = []
    for f in fracs:
        locked, c, _ = await lock_cycles(f, phase_noise=QUIET)
        assert locked
        cycles.append(c)
    assert all(5.0 <= c <= 50.0 for c, f in zip(cycles, fracs, strict=True) if f <= 0.8)
    assert np.all(np.diff(cycles) > 0), cycles  # grows toward the edge
    assert cycles[-1] > 2.0 * cycles[0]
    # the Adler relaxation rate λ = √(4K² − Δω²): lock after ≈ ln(1/tolerance)/λ
    lam = np.sqrt(4.0 - (2.0 * 0.5) ** 2)
    per_unit = BASE.oscillator.f_center_hz / (2 * np.pi * BASE.oscillator.freq_unit_hz)
    assert cycles[1] == pytest.approx(np.log(1 / BASE.settling.tolerance) / lam * per_unit, rel=0.2)


async def test_beyond_the_lock_edge_the_ring_beats_at_the_adler_rate() -> None:
    """|Δω| > 2K: no lock; the read's conversions follow the slipping phase of the
    integration (beat frequency √(Δω² − 4K²) in the reference's frame)."""
    async with CMOSSubstrate(pair(phase_noise=QUIET, settling={"max_cycles": 200.0}), seed=0) as c:
        await c.set_frequencies(np.array([0.0, 0.0]))
        await c.read_phases()
        await c.set_frequencies(np.array([0.0, 3.0]))
        r = await c.read_phases()
        assert not r.locked
        assert r.settle_s * c.model.oscillator.f_center_hz == pytest.approx(200.0, rel=0.01)
        dt_s = 1e-9  # one conversion per ns: resolves the beat
        phases = c.settler.slipping_samples(c, 400, dt_s)
        ph = np.unwrap(phases[:, 1])
        t = np.arange(400) * dt_s / c._time_unit_s
        slope = np.polyfit(t, ph, 1)[0]
        assert abs(slope) == pytest.approx(np.sqrt(3.0**2 - 4.0), rel=0.05)


async def test_noisy_transient_locks_and_reports_its_settle_time() -> None:
    """With the chip's phase noise the settle integrates the SDE: lock in tens of cycles
    away from the edge, readings scatter around the Newton state."""
    locked, c, r = await lock_cycles(0.5)
    assert locked and 5.0 <= c <= 50.0
    th_n = np.arcsin(0.5)  # Δω = 2K sin φ
    assert abs(wrap(np.asarray(r.phases[1] - th_n))) < 0.05


def quiet_transient(m: Any) -> CMOSChipModel:
    """A small test chip with settle = "transient", phase noise off, a tight lock detector."""
    d = m.model_dump()
    d["settle"] = "transient"
    d["phase_noise"] = QUIET
    d["settling"] = {**d.get("settling", {}), "tolerance": 1e-6, "hold_cycles": 40.0}
    return CMOSChipModel.model_validate(d)


async def test_transient_with_held_inputs_and_a_clamp_agrees_with_newton() -> None:
    """Held inputs and bias oscillators stay at their phases (the clock is the reference
    bias oscillator); the free block integrates to the Newton state, free and nudged."""
    from phasegrad_hw.testing.networks import model_layered_small

    m = quiet_transient(model_layered_small("cmos", seed=1))
    rng = np.random.default_rng(3)
    async with CMOSSubstrate(m, seed=0) as chip:
        await chip.set_frequencies(np.zeros(m.n))
        for _ in range(2):  # a second input: a step from the first state
            held = m.input_phases(rng.uniform(0, 1, len(m.roles.held)))
            await chip.set_held_phases(held)
            r = await chip.read_phases()
            assert r.locked and r.settle_s > 0
            th_n, lin = chip.solve_state(theta0=chip.theta.copy())
            assert lin is not None
            assert np.max(np.abs(wrap(chip.theta - th_n))) <= 1e-6
            assert np.allclose(wrap(chip.theta[m.roles.held] - held), 0.0, atol=1e-12)
        await chip.clamp(np.array([0.3, -0.2, 0.1]), 0.5)
        r = await chip.read_phases()
        th_n, lin = chip.solve_state(theta0=chip.theta.copy())
        assert r.locked and lin is not None
        assert np.max(np.abs(wrap(chip.theta - th_n))) <= 1e-6


async def test_transient_with_a_drive_agrees_with_newton_and_beats_beyond_lock() -> None:
    """A quasi-static drive F·sin(ψ − θ) on the sensors: the integration reaches the forced
    Newton state; a drive the array cannot follow (an input detuned beyond the locking range)
    leaves it slipping."""
    from phasegrad_hw.testing.networks import model_driven_small

    m = quiet_transient(model_driven_small("cmos"))
    async with CMOSSubstrate(m, seed=0) as chip:
        await chip.set_frequencies(np.array([0.0, 0.3, -0.2, 0.1, 0.0]))
        await chip.read_phases()
        await chip.set_drive(np.full(2, 1.5), 0.8)
        r = await chip.read_phases()
        assert r.locked
        th_n, lin = chip.solve_state(theta0=chip.theta.copy())
        assert lin is not None
        assert np.max(np.abs(wrap(chip.theta - th_n))) <= 1e-6
        await chip.set_drive(np.full(2, 0.05), 0.8)  # a weak drive: the sensors barely move
        r_weak = await chip.read_phases()
        assert r_weak.locked
        await chip.set_frequencies(np.array([0.0, 2.9, -2.9, 0.1, 0.0]))
        r = await chip.read_phases(8)
        assert not r.locked
