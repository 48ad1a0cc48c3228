"""The emulated CMOS chip: bias curve, mismatch, DAC, coupling, noise, TDC, settling, drift,
clamp, counter, calibration hook, reproducibility, loss of lock and failure modes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends._chip import _Linearised
from phasegrad_hw.backends.cmos import (
    CMOSChipModel,
    CMOSSubstrate,
    biases_to_frequencies,
    diffusion_rad2_per_s,
    frequencies_to_biases,
)
from phasegrad_hw.device.frequency_map import CurveMap
from phasegrad_hw.device.registry import load_device_model
from phasegrad_hw.device.substrate import Capability
from phasegrad_hw.errors import LimitError, LockLostError
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.physics import centred, solve_equilibrium, wrap
from phasegrad_hw.physics.gradients import cosine, finite_difference_gradient, two_phase_gradient

REPO = Path(__file__).resolve().parents[2]
CMOS = REPO / "examples" / "devices" / "cmos-2-5-2.toml"
BASE: CMOSChipModel = load_device_model(CMOS)  # type: ignore[assignment]
OMEGA = np.array([0.6, -0.9, 0.2, -0.1, 0.3, -0.2, 0.1, 0.15, -0.25])
TARGET = np.array([-0.2, 0.2])


def chip_model(**sections: dict[str, Any] | Any) -> CMOSChipModel:
    """The vowel chip with some sections (or top-level fields) overridden."""
    d = BASE.model_dump()
    for key, val in sections.items():
        if isinstance(val, dict) and isinstance(d.get(key), dict):
            d[key].update(val)
        else:
            d[key] = val
    return CMOSChipModel.model_validate(d)


def ideal_model(**sections: Any) -> CMOSChipModel:
    """No mismatch, no noise, odd H, fine TDC: the chip reduces to the ideal physics."""
    base: dict[str, Any] = dict(
        oscillator={"vth_mismatch_v": 0.0},
        capacitors={"mismatch": 0.0, "direction_mismatch": 0.0, "lsb_ff": 0.0},
        coupling_function={"harmonics": [1.0], "offset": 0.0, "cos_offset": 0.0},
        phase_noise={"dbc_hz": -240.0},
        tdc={"lsb_s": 1e-24, "jitter_s": 0.0, "offset_sigma_s": 0.0},
        thermal={"sigma_c": 0.0, "tempco_mismatch": 0.0},
        injection={"gain_mismatch": 0.0, "amplitude_bits": 24, "phase_bits": 24},
        bias_dac={"bits": 24},
    )
    base.update(sections)
    return chip_model(**base)


# --------------------------------------------------------------------------- bias curve
def test_nominal_curve_is_the_alpha_power_law_and_inverts() -> None:
    o = BASE.oscillator
    v = np.linspace(0.85, 1.15, 7)
    g = (v - o.vth_v) ** o.alpha / v
    g_ref = (o.bias_ref_v - o.vth_v) ** o.alpha / o.bias_ref_v
    expected = o.f_center_hz * (g / g_ref - 1.0) / o.freq_unit_hz
    assert np.allclose(biases_to_frequencies(BASE, v), expected, rtol=1e-12, atol=1e-12)
    w = np.random.default_rng(0).uniform(-3, 3, (4, 9))  # vectorised over a batch
    b = frequencies_to_biases(BASE, w)
    assert b.shape == (4, 9)
    assert np.allclose(biases_to_frequencies(BASE, b), w, atol=1e-9)
    assert np.all(np.diff(biases_to_frequencies(BASE, np.linspace(0.8, 1.2, 50))) > 0)
    assert biases_to_frequencies(BASE, o.bias_ref_v) == pytest.approx(0.0, abs=1e-12)


async def test_mismatch_spread_dac_and_reproducible_chip() -> None:
    a, b = CMOSSubstrate(BASE, seed=1), CMOSSubstrate(BASE, seed=2)
    assert np.array_equal(a.vth_v, b.vth_v) and np.array_equal(a.K, b.K)  # chip = model.seed
    other = CMOSSubstrate(chip_model(seed=5))
    assert not np.array_equal(other.vth_v, a.vth_v)
    await a.set_frequencies(np.zeros(9))
    # nominal ω = 0 everywhere, real chip off by the threshold mismatch (≈1 % of f for a
    # few mV): a measurable spread in model units, zero mean
    err = a.true_frequencies() - a.temperature_c * 0  # no drift yet at t = 0
    spread_hz = err.std() * BASE.oscillator.freq_unit_hz
    assert 1e-3 < spread_hz / BASE.oscillator.f_center_hz < 3e-2
    # bias DAC: applied biases sit on the DAC grid
    lsb = (BASE.bias_dac.range_v.max - BASE.bias_dac.range_v.min) / (2**BASE.bias_dac.bits - 1)
    codes = (a.bias - BASE.bias_dac.range_v.min) / lsb
    assert np.allclose(codes, np.round(codes), atol=1e-6)
    assert np.max(np.abs(a.bias - frequencies_to_biases(BASE, np.zeros(9)))) <= lsb / 2 + 1e-15


def test_capacitive_coupling_mismatch_and_asymmetry() -> None:
    chip = CMOSSubstrate(BASE)
    e = BASE.edge_index
    k = BASE.coupling_values()
    kij, kji = chip.K[e[:, 0], e[:, 1]], chip.K[e[:, 1], e[:, 0]]
    assert not np.allclose(kij, kji)  # independent K_ij / K_ji errors
    rel = np.concatenate([kij / k - 1, kji / k - 1])
    assert 0.005 < rel.std() < 0.15  # a few % (capacitor + direction mismatch, LSB)
    # programmable capacitor bank: steps of k_per_ff·lsb_ff before the mismatch
    ideal = CMOSSubstrate(
        ideal_model(capacitors={"mismatch": 0.0, "direction_mismatch": 0.0, "lsb_ff": 0.5})
    )
    K = ideal._true_coupling(np.full(len(e), 1.03))
    step = 0.5 * BASE.capacitors.k_per_ff
    assert np.allclose(K[e[:, 0], e[:, 1]] / step, np.round(K[e[:, 0], e[:, 1]] / step))


# --------------------------------------------------------------------------- ground truth
async def test_ideal_chip_two_phase_equals_exact_gradient_and_fd() -> None:
    chip = CMOSSubstrate(ideal_model())
    async with chip:
        await chip.set_frequencies(OMEGA)
        free = await chip.read_phases()
        beta = 1e-3  # centred bias O(β²) ≈ 1e-6; read solve tolerance 1e-9/(2β) ≈ 5e-7
        await chip.clamp(TARGET, beta)
        plus = await chip.read_phases()
        await chip.clamp(TARGET, beta, direction=-1)
        minus = await chip.read_phases()
        exact = chip.exact_gradient(TARGET)
        # independent reference: finite differences of the injection loss on ω^c
        fd = finite_difference_gradient(
            centred(chip.true_frequencies()), chip.K, BASE.outputs, TARGET, chip.H, kind="injection"
        )
    assert np.allclose(exact, fd, atol=1e-7)
    g = two_phase_gradient(free.phases, plus.phases, beta, minus.phases)
    assert cosine(g, exact) > 0.999999
    assert np.allclose(g, exact, atol=3e-6)


async def test_real_chip_breaks_the_identity_a_little() -> None:
    """Asymmetric K and non-odd H: the noiseless two-phase estimate drifts from the truth."""
    quiet = dict(
        phase_noise={"dbc_hz": -240.0},
        tdc={"lsb_s": 1e-24, "jitter_s": 0.0, "offset_sigma_s": 0.0},
        thermal={"sigma_c": 0.0},
        injection={"gain_mismatch": 0.0, "amplitude_bits": 24, "phase_bits": 24},
    )
    chip = CMOSSubstrate(chip_model(**quiet))
    await chip.set_frequencies(OMEGA)
    beta = 1e-3
    free = await chip.read_phases()
    await chip.clamp(TARGET, beta)
    plus = await chip.read_phases()
    await chip.clamp(TARGET, beta, direction=-1)
    minus = await chip.read_phases()
    c = float(
        cosine(
            two_phase_gradient(free.phases, plus.phases, beta, minus.phases),
            chip.exact_gradient(TARGET),
        )
    )
    assert 0.98 < c < 0.99999


# --------------------------------------------------------------------------- noise model
def test_diffusion_scales_with_sqrt_dt_and_stationary_covariance() -> None:
    rng = np.random.default_rng(0)
    M = rng.normal(size=(4, 4))
    A = -(M @ M.T + 0.5 * np.eye(4)) + 0.1 * rng.normal(size=(4, 4))  # stable, non-symmetric
    q = np.array([1.0, 2.0, 0.5, 1.5])
    lin = _Linearised(A, q)
    assert np.allclose(A @ lin.sigma + lin.sigma @ A.T + np.diag(q), 0.0, atol=1e-10)
    for dt in (1e-4, 4e-4, 1.6e-3):
        _, L = lin.step_cov(dt)
        cov = L @ L.T
        assert np.allclose(np.diag(cov) / dt, q, rtol=0.02)  # variance ∝ dt: rms ∝ √dt
    _, L = lin.step_cov(200.0)
    assert np.allclose(L @ L.T, lin.sigma, atol=1e-9)  # long gaps forget


def test_phase_noise_constant_from_dbc() -> None:
    m = chip_model(phase_noise={"dbc_hz": -100.0, "offset_hz": 1e6})
    assert diffusion_rad2_per_s(m) == pytest.approx(4 * np.pi**2 * 1e12 * 1e-10)


async def test_locked_noise_matches_the_ou_covariance() -> None:
    """Single reads (far apart in time) scatter by the stationary OU covariance."""
    m = ideal_model(phase_noise={"dbc_hz": -80.0})
    chip = CMOSSubstrate(m, seed=4)
    await chip.set_frequencies(OMEGA)
    reads = np.array([(await chip.read_phases()).phases for _ in range(400)])
    theta, lin = chip._locked_state()
    assert lin is not None
    var = np.var(wrap(reads - theta), axis=0)[1:]
    assert np.allclose(var, np.diag(lin.sigma), rtol=0.25)


async def test_tdc_quantises_wraps_and_offsets() -> None:
    m = chip_model(tdc={"jitter_s": 0.0, "offset_sigma_s": 0.0, "lsb_s": 10e-12})
    chip = CMOSSubstrate(m)
    f = m.oscillator.f_center_hz
    lsb_rad = 2 * np.pi * f * 10e-12
    ph = np.array([[0.0, np.pi - 0.2 * lsb_rad, -np.pi + 0.01, 1.0, -1.0, 0.3, 0.0, 0.0, 0.0]])
    out = chip._readout(ph)
    assert np.all((out >= -np.pi) & (out < np.pi))
    assert np.allclose(wrap(out - ph), 0.0, atol=lsb_rad / 2 + 1e-12)
    assert np.allclose(
        np.round(np.mod(out, 2 * np.pi) / lsb_rad), np.mod(out, 2 * np.pi) / lsb_rad, atol=1e-6
    )
    assert out[0, 1] == pytest.approx(-np.pi, abs=1e-9) or out[0, 1] == pytest.approx(
        np.pi - lsb_rad, abs=1e-9
    )
    # fixed per-channel offsets from the chip seed
    chip2 = CMOSSubstrate(
        chip_model(tdc={"jitter_s": 0.0, "offset_sigma_s": 5e-12, "lsb_s": 1e-15})
    )
    off = chip2._readout(np.zeros((2, 9)))
    assert np.allclose(off[0], off[1])
    assert np.allclose(off[0], wrap(2 * np.pi * f * chip2.tdc_offset_s), atol=1e-5)


async def test_readout_noise_level_is_realistic() -> None:
    """Single-read rms of the default chip: TDC LSB/√12 + jitter + locked phase noise,
    ≈ 0.01 rad at 1 GHz (docs/design.md §5: 1 ps jitter ≈ 0.006 rad)."""
    chip = CMOSSubstrate(BASE, seed=0)
    await chip.set_frequencies(OMEGA)
    r = await chip.read_phases(256)
    assert np.all(r.spread[1:] > 0.003) and np.all(r.spread[1:] < 0.03)


# --------------------------------------------------------------------------- settling
async def test_settling_reported_grows_near_the_lock_edge_and_sleeps() -> None:
    chip = CMOSSubstrate(BASE)
    await chip.set_frequencies(OMEGA)
    first = await chip.read_phases()
    again = await chip.read_phases()
    assert first.settle_s >= BASE.settling.lock_cycles / BASE.oscillator.f_center_hz
    assert again.settle_s == 0.0
    # push the outputs toward the locking edge: the margin shrinks, settling grows
    edge = OMEGA.copy()
    edge[7:] = [2.9, -2.9]
    await chip.set_frequencies(edge)
    near = await chip.read_phases()
    assert near.locked and near.settle_s > first.settle_s
    slow = CMOSSubstrate(
        chip_model(settling={"sleep": True, "lock_cycles": 1e4}, oscillator={"f_center_hz": 2e8})
    )
    await slow.set_frequencies(OMEGA)
    t0 = time.perf_counter()
    r = await slow.read_phases()
    assert r.settle_s >= 5e-5 and time.perf_counter() - t0 >= r.settle_s


# --------------------------------------------------------------------------- drift
async def test_temperature_drift_is_a_slow_reproducible_random_walk() -> None:
    m = chip_model(thermal={"sigma_c": 5.0, "tau_s": 1e-3})
    a, b = CMOSSubstrate(m, seed=9), CMOSSubstrate(m, seed=9)
    for chip in (a, b):
        await chip.set_frequencies(OMEGA)
    wa, wb = [], []
    for _ in range(30):
        await a.read_phases(200)
        await b.read_phases(200)
        wa.append(centred(a.true_frequencies()))
        wb.append(centred(b.true_frequencies()))
    wa_arr = np.array(wa)
    assert np.array_equal(wa_arr, np.array(wb))
    steps = np.abs(np.diff(wa_arr, axis=0)).max(axis=1)
    assert steps.max() > 0 and steps.max() < 0.05  # differential tempco: small, slow


# --------------------------------------------------------------------------- clamp, counter
async def test_clamp_quantised_and_minus_beta_is_a_pi_phase_setting() -> None:
    m = ideal_model(injection={"gain_mismatch": 0.0, "amplitude_bits": 4, "phase_bits": 6})
    chip = CMOSSubstrate(m)
    await chip.set_frequencies(OMEGA)
    await chip.clamp(TARGET, 0.1)
    b, t, d = chip._clamp  # type: ignore[misc]
    assert b[7] == pytest.approx(round(0.1 * 15) / 15)  # 4-bit amplitude DAC over [0, 1]
    step = 2 * np.pi / 64
    assert np.allclose(t[7:] / step, np.round(t[7:] / step))
    await chip.clamp(TARGET, 0.1, direction=-1)
    b2, t2, d2 = chip._clamp  # type: ignore[misc]
    assert np.allclose(wrap(t2[7:] - t[7:]), -np.pi) and d2 == 1 and np.allclose(b2, b)
    theta, _ = chip._locked_state()
    ref = solve_equilibrium(
        centred(chip.true_frequencies()),
        chip.K,
        chip.H,
        nudge="injection",
        beta=b,
        target=t,
        direction=-1,
    )
    assert np.allclose(wrap(theta - ref.theta), 0.0, atol=1e-8)


async def test_frequency_counter_reads_the_true_free_running_frequencies() -> None:
    chip = CMOSSubstrate(BASE, seed=0)
    assert Capability.FREQUENCY_COUNTER in chip.capabilities
    await chip.set_frequencies(OMEGA)
    t0 = chip.time_s
    counted = await chip.read_frequencies()
    assert chip.time_s - t0 == pytest.approx(BASE.counter_gate_s)
    resolution = 1.0 / BASE.counter_gate_s / BASE.oscillator.freq_unit_hz
    assert np.all(np.abs(counted - chip.true_frequencies()) <= resolution + 1e-6)


async def test_assigned_frequency_map_replaces_the_nominal_curve() -> None:
    chip = CMOSSubstrate(BASE)
    assert chip.map_source == "nominal"
    calls: list[np.ndarray] = []

    def forward(w: np.ndarray) -> np.ndarray:
        calls.append(w)
        return frequencies_to_biases(BASE, w) + 0.01

    chip.frequency_map = CurveMap(
        forward, lambda v: biases_to_frequencies(BASE, v - 0.01), source="frequency_counter"
    )
    assert chip.map_source == "frequency_counter"
    await chip.set_frequencies(OMEGA)
    assert len(calls) == 1
    assert np.allclose(chip.bias, frequencies_to_biases(BASE, OMEGA) + 0.01, atol=1e-5)
    fmap = chip.frequency_map
    assert np.allclose(fmap.frequency(fmap.bias(OMEGA)), OMEGA)
    chip.frequency_map = CurveMap(lambda w: np.full(9, 1.3), fmap.frequency)  # out of limits
    before = chip.bias.copy()
    with pytest.raises(LimitError, match=r"bias\[0\]: 1.3 V is outside the channel limit"):
        await chip.set_frequencies(OMEGA)
    assert np.array_equal(chip.bias, before)  # nothing was sent
    chip.frequency_map = chip.nominal_map()
    await chip.set_frequencies(OMEGA)
    assert np.allclose(chip.bias, frequencies_to_biases(BASE, OMEGA), atol=1e-5)


async def test_limits_refused_before_anything_is_sent() -> None:
    chip = CMOSSubstrate(BASE)
    await chip.set_frequencies(OMEGA)
    before = chip.bias.copy()
    bad = OMEGA.copy()
    bad[3] = 3.5
    with pytest.raises(LimitError, match=r"omega\[3\]: 3.5 is outside the device limit"):
        await chip.set_frequencies(bad)
    with pytest.raises(LimitError, match=r"bias\[2\]: 1.25 V is outside"):
        await chip.set_biases(np.r_[1.0, 1.0, 1.25, np.ones(6)])
    assert np.array_equal(chip.bias, before)


# --------------------------------------------------------------------------- reproducibility
async def _trace(chip: CMOSSubstrate) -> np.ndarray:
    out = []
    await chip.set_frequencies(OMEGA)
    for avg in (1, 4, 16):
        out.append((await chip.read_phases(avg)).phases)
        await chip.clamp(TARGET, 0.1)
        out.append((await chip.read_phases(avg)).phases)
        await chip.release()
    return np.array(out)


async def test_reproducible_under_seed_and_reseed() -> None:
    a, b, c = CMOSSubstrate(BASE, seed=5), CMOSSubstrate(BASE, seed=5), CMOSSubstrate(BASE, seed=6)
    ta, tb, tc = await _trace(a), await _trace(b), await _trace(c)
    assert np.array_equal(ta, tb) and not np.array_equal(ta, tc)
    vth = a.vth_v.copy()
    a.reseed(6)
    assert np.array_equal(await _trace(a), tc)  # reseed = a fresh chip under that seed
    assert np.array_equal(a.vth_v, vth)  # mismatch is not reseeded


# --------------------------------------------------------------------------- loss of lock
async def test_loss_of_lock_shows_as_slipping_phases_not_an_exception() -> None:
    weak = BASE.model_copy(update={"edges": [e.model_copy(update={"k": 0.05}) for e in BASE.edges]})
    chip = CMOSSubstrate(CMOSChipModel.model_validate(weak.model_dump()))
    w = np.array([0.0, 2.5, -2.5, 2.0, -2.0, 1.5, -1.5, 2.8, -2.8])
    await chip.set_frequencies(w)
    r1 = await chip.read_phases(8)
    r2 = await chip.read_phases(8)
    assert not r1.locked and not r2.locked
    assert np.max(np.abs(wrap(r2.phases - r1.phases))) > 0.1  # ramping between reads
    assert np.all((r1.phases >= -np.pi) & (r1.phases < np.pi))
    with pytest.raises(LockLostError, match="no locked free state"):
        chip.exact_gradient(TARGET)
    await chip.set_couplings(BASE.coupling_values())  # recovers when it can lock again
    await chip.set_frequencies(OMEGA)
    assert (await chip.read_phases()).locked


# --------------------------------------------------------------------------- failure modes
FAILURES = {
    "lock_loss": {"lock_loss_probability": 0.3},
    "basin_jump": {"basin_jump_probability": 0.3},
    "drift": {"drift_units_per_sqrt_s": 800.0, "drift_tau_s": 1e-4},
    "stuck": {"stuck_channel": 8, "stuck_probability": 0.3},
}


@pytest.mark.parametrize("mode", list(FAILURES))
async def test_failure_modes_are_detected_by_the_controller(mode: str) -> None:
    m = chip_model(failures=FAILURES[mode])
    chip = CMOSSubstrate(m, seed=1)
    cfg = EPConfig(rule=EPRule(beta=0.2, mode="centred", averages=4, lr_omega=0.05))
    p0 = Parameters(OMEGA.copy(), m.coupling_values())
    rng = np.random.default_rng(0)
    async with chip:
        ctl = EPController([chip], cfg, p0)
        for _ in range(40):
            before = ctl.params.copy()
            x = rng.uniform(-1.0, 1.0, 2)
            rep = await ctl.step([Sample(x, TARGET)])
            if not rep.valid[0]:
                assert np.array_equal(ctl.params.omega, before.omega)  # nothing corrupted
            assert np.all(np.isfinite(ctl.params.omega))
            assert np.all((ctl.params.omega >= -3) & (ctl.params.omega <= 3))
        assert not chip.clamped
    s = ctl.stats
    assert s.steps == 40 and s.errors == 0
    assert s.skipped >= 3  # detected and counted
    assert s.updates >= 10  # training went on
    if mode == "basin_jump":
        assert s.skipped_basin_jump >= 3
    else:
        assert s.skipped_unlocked >= 3


async def test_no_failures_means_no_skips() -> None:
    chip = CMOSSubstrate(BASE, seed=1)
    ctl = EPController(
        [chip],
        EPConfig(rule=EPRule(beta=0.2, mode="centred", averages=4)),
        Parameters(OMEGA.copy(), BASE.coupling_values()),
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        await ctl.step([Sample(rng.uniform(-1.0, 1.0, 2), TARGET)])
    assert ctl.stats.skipped == 0 and ctl.stats.updates == 20


# --------------------------------------------------------------------------- training (CI size)
def tiny_chip_model() -> CMOSChipModel:
    """The loop tests' 5-oscillator network as a CMOS chip with the realistic defaults."""
    from phasegrad_hw.testing.networks import model_tiny

    t = model_tiny()
    return CMOSChipModel.model_validate(
        {
            "backend": "cmos",
            "name": "cmos-tiny",
            "n_oscillators": 5,
            "edges": [e.model_dump(exclude_none=True) for e in t.edges],
            "roles": t.roles.model_dump(),
            "seed": 2,
        }
    )


async def test_ep_training_on_the_cmos_chip_learns_and_resumes_exactly() -> None:
    from phasegrad_hw.learning.loop import LoopOptions, train_on_substrates
    from phasegrad_hw.learning.tasks import Encoding
    from phasegrad_hw.testing.networks import blobs

    m = tiny_chip_model()
    data = blobs(40, 20, seed=0)
    cfg = EPConfig(rule=EPRule(beta=0.2, mode="centred", averages=16, lr_omega=0.05))
    p0 = Parameters(np.array([0.0, 0.0, 0.0, -0.6, 0.6]), m.coupling_values())
    enc = Encoding()
    async with CMOSSubstrate(m, seed=1) as chip:
        before = await train_on_substrates(
            [chip], data, enc, cfg, LoopOptions(epochs=0, seed=3, params=p0)
        )
        full = await train_on_substrates(
            [chip], data, enc, cfg, LoopOptions(epochs=4, seed=3, params=p0)
        )
    assert before.final_test_accuracy <= 0.7
    # a weakly coupled chip with mismatch occasionally fails to lock: skipped, counted
    assert full.final_test_accuracy >= 0.9 and full.state.skipped_samples <= 16
    # resume on a fresh chip (same device file) from the epoch-2 state: identical run
    async with CMOSSubstrate(m, seed=99) as chip:
        half = await train_on_substrates(
            [chip], data, enc, cfg, LoopOptions(epochs=2, seed=3, params=p0)
        )
    async with CMOSSubstrate(m, seed=7) as chip:
        resumed = await train_on_substrates(
            [chip], data, enc, cfg, LoopOptions(epochs=4, seed=3, start=half.state)
        )
    assert np.array_equal(resumed.state.params.omega, full.state.params.omega)
    assert [h.test_accuracy for h in resumed.state.history] == [
        h.test_accuracy for h in full.state.history
    ]


def test_an_emulated_chip_loads_the_solver_kernels_when_it_is_made() -> None:
    """The compiled kernels are loaded at construction (numba's first use costs ~0.5 s in a
    fresh process), not inside the first read, where a board or bench link times out."""
    import subprocess
    import sys

    pytest.importorskip("numba")
    code = (
        "import sys; from phasegrad_hw.device.registry import open_substrate; "
        "from phasegrad_hw.physics import _dense_kernel as d, _kernels as k; "
        "before = len(d.solve_dense_small.signatures) + len(k.solve_small.signatures); "
        f"open_substrate({str(CMOS)!r}, seed=1); "
        "print(before, len(d.solve_dense_small.signatures), len(k.solve_small.signatures))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    before, dense, small = (int(v) for v in out.stdout.split())
    assert before == 0 and dense >= 1 and small >= 1
