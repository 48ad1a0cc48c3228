"""The emulated optical chip: heater → temperature → frequency map with crosstalk and a
thermal time constant, phase lag ψ, homodyne readout, laser phase noise, ambient drift,
attenuator/phase-shifter clamp, reproducibility and failure detection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.optical import (
    OpticalChipModel,
    OpticalSubstrate,
    biases_to_frequencies,
    crosstalk_matrix,
    frequencies_to_biases,
)
from phasegrad_hw.device.frequency_map import CurveMap
from phasegrad_hw.device.registry import load_device_model
from phasegrad_hw.errors import LimitError
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.physics import centred, wrap
from phasegrad_hw.physics.gradients import cosine, finite_difference_gradient, two_phase_gradient

REPO = Path(__file__).resolve().parents[2]
OPTICAL = REPO / "examples" / "devices" / "optical-2-5-2.toml"
BASE: OpticalChipModel = load_device_model(OPTICAL)  # type: ignore[assignment]
OMEGA = np.array([0.6, -0.9, 0.2, -0.1, 0.3, -0.2, 0.1, 0.15, -0.25])
TARGET = np.array([-0.2, 0.2])


def chip_model(**sections: Any) -> OpticalChipModel:
    d = BASE.model_dump()
    for key, val in sections.items():
        if isinstance(val, dict) and isinstance(d.get(key), dict):
            d[key].update(val)
        else:
            d[key] = val
    return OpticalChipModel.model_validate(d)


def quiet_model(psi: float = 0.0, **sections: Any) -> OpticalChipModel:
    """Mismatch-free, noise-free chip with phase lag ``psi``."""
    base: dict[str, Any] = dict(
        heaters={"resistance_mismatch": 0.0, "crosstalk_mismatch": 0.0, "dac_bits": 24},
        resonators={"offset_sigma_hz": 0.0},
        couplers={"magnitude_mismatch": 0.0, "nonreciprocity": 0.0, "lsb": 0.0},
        laser={"linewidth_hz": 0.0},
        homodyne={"iq_noise": 0.0, "offset_sigma_rad": 0.0},
        ambient={"sigma_k": 0.0},
        injection={"gain_mismatch": 0.0, "attenuator_step_db": 0.0, "phase_bits": 24},
        coupling_function={"harmonics": [1.0], "phase_lag_rad": psi},
        settling={"tolerance": 1e-10},  # no thermal residual left between reads
    )
    base.update(sections)
    return chip_model(**base)


def test_nominal_heater_curve_with_crosstalk_inverts() -> None:
    h, r = BASE.heaters, BASE.resonators
    v = np.full(9, np.sqrt(h.power_ref_mw * 1e-3 * h.resistance_ohm))
    assert np.allclose(biases_to_frequencies(BASE, v), 0.0, atol=1e-12)
    v2 = v.copy()
    v2[4] *= 1.1  # heating one ring shifts it and (by crosstalk) its index neighbours
    dw = biases_to_frequencies(BASE, v2)
    dp_mw = (v2[4] ** 2 - v[4] ** 2) / h.resistance_ohm * 1e3
    own = r.tuning_hz_per_k * h.r_th_k_per_mw * dp_mw / r.freq_unit_hz
    assert dw[4] == pytest.approx(own)
    assert dw[3] == pytest.approx(h.crosstalk * own) and dw[5] == pytest.approx(h.crosstalk * own)
    assert np.allclose(dw[[0, 1, 2, 6, 7, 8]], 0.0, atol=1e-12)
    w = np.random.default_rng(1).uniform(-3, 3, (5, 9))
    assert np.allclose(biases_to_frequencies(BASE, frequencies_to_biases(BASE, w)), w, atol=1e-9)
    X = crosstalk_matrix(4, 0.2)
    expected = [[1, 0.2, 0, 0], [0.2, 1, 0.2, 0], [0, 0.2, 1, 0.2], [0, 0, 0.2, 1]]
    assert np.array_equal(X, np.array(expected))


async def test_thermal_time_constant_and_settling() -> None:
    chip = OpticalSubstrate(quiet_model(), seed=0)
    await chip.set_frequencies(OMEGA)
    r = await chip.read_phases()
    tau = BASE.heaters.tau_s
    assert r.settle_s >= np.log(1.0 / BASE.settling.tolerance) * tau
    w_settled = centred(chip.true_frequencies())
    assert np.allclose(w_settled, centred(OMEGA), atol=1e-6)  # settled to the tolerance
    step = OMEGA.copy()
    step[4] += 1.0
    await chip.set_frequencies(step)
    t0 = chip.time_s
    w0 = chip.true_frequencies()[4]
    chip._advance(tau)  # one time constant later: 1 − 1/e of the way
    w1 = chip.true_frequencies()[4]
    chip._advance(10 * tau)
    w_inf = chip.true_frequencies()[4]
    assert (w1 - w0) / (w_inf - w0) == pytest.approx(1 - np.exp(-1), rel=1e-3)
    assert chip.time_s - t0 == pytest.approx(11 * tau)


async def test_mismatch_is_a_fixed_property_and_noise_reproducible() -> None:
    a, b = OpticalSubstrate(BASE, seed=1), OpticalSubstrate(BASE, seed=1)
    c = OpticalSubstrate(BASE, seed=2)
    assert np.array_equal(a.crosstalk, c.crosstalk) and np.array_equal(a.K, c.K)
    out = []
    for chip in (a, b, c):
        await chip.set_frequencies(OMEGA)
        out.append(np.array([(await chip.read_phases(4)).phases for _ in range(3)]))
    assert np.array_equal(out[0], out[1]) and not np.array_equal(out[0], out[2])
    a.reseed(2)
    await a.set_frequencies(OMEGA)
    again = np.array([(await a.read_phases(4)).phases for _ in range(3)])
    assert np.array_equal(again, out[2])


async def test_psi_zero_identity_holds_and_psi_breaks_it() -> None:
    cos = {}
    for psi in (0.0, 0.3):
        chip = OpticalSubstrate(quiet_model(psi))
        await chip.set_frequencies(OMEGA)
        beta = 1e-3
        free = await chip.read_phases()
        await chip.clamp(TARGET, beta)
        plus = await chip.read_phases()
        await chip.clamp(TARGET, beta, direction=-1)
        minus = await chip.read_phases()
        g = two_phase_gradient(free.phases, plus.phases, beta, minus.phases)
        exact = chip.exact_gradient(TARGET)
        # independent truth: finite differences in the clock frame (ω − Ω, reference pinned)
        assert chip.frame_frequency is not None
        w_frame = chip.true_frequencies() - chip.frame_frequency
        fd = finite_difference_gradient(
            w_frame, chip.K, BASE.outputs, TARGET, chip.H, kind="injection", theta0=free.phases
        )
        assert np.allclose(exact, fd, atol=1e-6)
        cos[psi] = float(cosine(g, exact))
    assert cos[0.0] > 0.99999
    # a non-symmetric Jacobian (J_ij − J_ji ∝ K sin Δ sin ψ) biases the estimate, a little
    assert 0.99 < cos[0.3] < cos[0.0] - 1e-4


def test_homodyne_readout_atan2_with_noise_and_offsets() -> None:
    chip = OpticalSubstrate(
        chip_model(homodyne={"iq_noise": 0.05, "offset_sigma_rad": 0.02}), seed=3
    )
    ph = np.tile(np.linspace(-3.0, 3.0, 9), (4000, 1))
    out = chip._readout(ph)
    assert np.all((out >= -np.pi) & (out <= np.pi))
    err = wrap(out - ph - chip.iq_offset[None, :])
    assert np.allclose(err.mean(axis=0), 0.0, atol=0.005)
    assert np.allclose(err.std(axis=0), 0.05, rtol=0.1)  # σ_φ ≈ σ_IQ / amplitude


async def test_laser_linewidth_sets_the_locked_phase_noise() -> None:
    spreads = []
    for lw in (1e5, 4e5):
        m = quiet_model(laser={"linewidth_hz": lw})
        chip = OpticalSubstrate(m, seed=0)
        await chip.set_frequencies(OMEGA)
        theta, lin = chip._locked_state()
        assert lin is not None
        reads = np.array([(await chip.read_phases()).phases for _ in range(300)])
        spreads.append(np.var(wrap(reads - theta), axis=0)[1:])
        d = 2 * np.pi * lw * chip._time_unit_s
        assert np.allclose(chip._diffusion()[1:], d)
        assert np.allclose(spreads[-1], np.diag(lin.sigma), rtol=0.3)
    assert np.allclose(spreads[1] / spreads[0], 4.0, rtol=0.35)  # variance ∝ linewidth


async def test_attenuator_and_phase_shifter_clamp() -> None:
    m = quiet_model(
        injection={
            "attenuator_step_db": 1.0,
            "phase_bits": 8,
            "gain_mismatch": 0.0,
            "max_attenuation_db": 40.0,
        }
    )
    chip = OpticalSubstrate(m)
    await chip.clamp(TARGET, 0.1)  # 20 dB below β_max = 1
    b, t, _ = chip._clamp  # type: ignore[misc]
    assert b[7] == pytest.approx(0.1)
    await chip.clamp(TARGET, 0.12)  # 18.42 dB → 18 dB step
    assert chip._clamp[0][7] == pytest.approx(10 ** (-18 / 20))  # type: ignore[index]
    await chip.clamp(TARGET, 0.001)  # 60 dB: beyond the attenuator range → no light
    assert chip._clamp[0][7] == 0.0  # type: ignore[index]
    await chip.clamp(TARGET, 0.1, direction=-1)
    assert np.allclose(wrap(chip._clamp[1][7:] - t[7:]), -np.pi, atol=2 * np.pi / 256)  # type: ignore[index]


async def test_ambient_drift_moves_frequencies_slowly() -> None:
    m = chip_model(ambient={"sigma_k": 0.1, "tau_s": 1e-3, "gradient_fraction": 0.05})
    chip = OpticalSubstrate(m, seed=2)
    await chip.set_frequencies(OMEGA)
    w = []
    for _ in range(20):
        await chip.read_phases(100)
        w.append(centred(chip.true_frequencies()))
    steps = np.abs(np.diff(np.array(w), axis=0)).max(axis=1)
    assert steps.max() > 1e-3 and steps.max() < 0.5


async def test_negative_heater_power_is_refused() -> None:
    chip = OpticalSubstrate(BASE)
    w = np.zeros(9)
    w[3] = 3.0  # +3 GHz means less heat than the reference; crosstalk pushes past zero power
    chip.frequency_map = CurveMap(lambda om: frequencies_to_biases(BASE, om * 20), lambda b: b)
    with pytest.raises(LimitError, match=r"bias\[3\]: -\S+ V is outside the channel limit"):
        await chip.set_frequencies(w)


@pytest.mark.parametrize(
    "failure",
    [
        {"lock_loss_probability": 0.3},
        {"basin_jump_probability": 0.3},
        {"stuck_channel": 7, "stuck_probability": 0.3},
    ],
)
async def test_failures_detected_by_the_controller(failure: dict[str, Any]) -> None:
    m = chip_model(failures=failure)
    chip = OpticalSubstrate(m, seed=1)
    ctl = EPController(
        [chip],
        EPConfig(rule=EPRule(beta=0.2, mode="centred", averages=4, lr_omega=0.05)),
        Parameters(OMEGA.copy(), m.coupling_values()),
    )
    rng = np.random.default_rng(0)
    for _ in range(60):  # ≈ 21 clean steps expected at p = 0.3 per read
        before = ctl.params.omega.copy()
        rep = await ctl.step([Sample(rng.uniform(-1.0, 1.0, 2), TARGET)])
        if not rep.valid[0]:
            assert np.array_equal(ctl.params.omega, before)
    assert ctl.stats.skipped >= 3 and ctl.stats.updates >= 10 and ctl.stats.errors == 0
