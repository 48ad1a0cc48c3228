"""phasegrad_hw.physics.dynamics: time-domain integration, noise, drive, locking, lock time."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, special, stats

from phasegrad_hw import physics as ph
from phasegrad_hw.physics import dynamics as dy
from phasegrad_hw.physics import graphs as nw
from phasegrad_hw.physics._dynamics_model import build_model


def _locked_start(n: int, seed: int, k_scale: float = 5.0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng([seed, n, 15])
    K = nw.erdos_renyi(n, rng, p=0.6, k_scale=k_scale)
    w = nw.random_frequencies(n, rng, sigma=0.3)
    eq = ph.solve_equilibrium(w, K)
    assert eq.ok
    return w, K, eq.theta, rng.normal(0.0, 0.1, n)


# --------------------------------------------------------------------------- deterministic
@pytest.mark.parametrize("method", ["DOP853", "RK45", "LSODA"])
def test_integration_reaches_the_newton_equilibrium(method: str) -> None:
    """From 0.1 rad (rms) off a stable state, the flow settles on the Newton root (≤ 1e-6 rad,
    reference-pinned frame, wrapped) — 12 random connected networks, N = 4…15."""
    worst = 0.0
    for seed, n in enumerate((4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)):
        w, K, theta_star, kick = _locked_start(n, seed)
        res = dy.settle(theta_star + kick, w, K, tol=1e-7, t_max=500.0, method=method)
        assert res.locked, f"N={n} seed={seed} did not lock by t={res.t_end}"
        pinned = res.theta - res.theta[0]
        worst = max(worst, float(np.abs(ph.wrap(pinned - theta_star)).max()))
    assert worst <= 1e-6


def test_batched_integration_equals_one_by_one() -> None:
    w, K, theta_star, kick = _locked_start(6, 3)
    th0 = np.stack([theta_star + kick, theta_star - kick])
    W = np.stack([w, 0.5 * w])
    both = dy.integrate(th0, W, K, t_span=(0.0, 2.0), t_eval=[0.5, 1.0, 2.0])
    for b in range(2):
        one = dy.integrate(th0[b], W[b], K, t_span=(0.0, 2.0), t_eval=[0.5, 1.0, 2.0])
        np.testing.assert_allclose(both.theta[:, b], one.theta, atol=1e-8)
    assert both.theta.shape == (3, 2, 6)


def test_general_coupling_function_field_matches_rhs() -> None:
    """The integrator's drift is the physics rhs (phase lag, harmonics, offsets, nudge)."""
    H = ph.CouplingFunction(harmonics=(1.0, 0.2), phase_lag=0.1, offset=0.01, cos_offset=0.02)
    w, K, theta_star, kick = _locked_start(5, 1)
    th = theta_star + kick
    tr = dy.integrate(th, w, K, coupling=H, t_span=(0.0, 1e-6), t_eval=[0.0], beta=0.3, target=1.0)
    model, y = build_model(th, w, K, H, None, None, 0.3, 1.0, "linear")
    np.testing.assert_allclose(
        model.field(0.0, y)[0], ph.rhs(th, w, K, H, beta=0.3, target=1.0), atol=1e-14
    )
    np.testing.assert_allclose(tr.theta[0], th)


# --------------------------------------------------------------------------- stochastic
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_free_oscillator_phase_diffusion(method: str) -> None:
    """Weak check: a free oscillator's phase variance is 2·D_i·t. With M independent paths the
    mean square displacement S about ω·t obeys M·S/(2Dt) ~ χ²_M exactly, so the test bounds
    are the χ² quantiles at a two-sided level of 1e-6 (a correct integrator fails once in a
    million runs); the mean displacement is N(0, 2Dt/M), bounded at 5σ."""
    M, t_end = 20000, 4.0
    D = np.array([0.02, 0.08])
    omega = np.array([0.7, -0.3])
    tr = dy.integrate_sde(
        np.zeros((M, 2)),
        omega,
        t_span=(0.0, t_end),
        dt=0.05,
        diffusion=D,
        method=method,
        rng=7,
        record_every=40,
    )
    lo, hi = stats.chi2.ppf([0.5e-6, 1.0 - 0.5e-6], M) / M
    for k, t in enumerate(tr.t[1:], start=1):
        x = tr.theta[k] - omega * t  # (M, 2)
        ratio = (x**2).mean(axis=0) / (2.0 * D * t)
        assert np.all((ratio > lo) & (ratio < hi)), (t, ratio, lo, hi)
        assert np.all(np.abs(x.mean(axis=0)) < 5.0 * np.sqrt(2.0 * D * t / M))


def test_noisy_pair_reaches_von_mises_statistics() -> None:
    """Weak check with coupling: for two identical oscillators the phase difference φ obeys
    dφ = −2K sin φ dt + √(2(D1 + D2)) dW, whose stationary law is von Mises with
    κ = 2K/(D1 + D2), so ⟨cos φ⟩ = I1(κ)/I0(κ). Bound: 5 standard errors of the ensemble."""
    M, Kc, D = 4000, 1.0, 0.5
    K = np.array([[0.0, Kc], [Kc, 0.0]])
    tr = dy.integrate_sde(
        np.zeros((M, 2)),
        np.zeros(2),
        K,
        t_span=(0.0, 8.0),
        dt=0.01,
        diffusion=D,
        rng=11,
        record_every=800,
    )
    c = np.cos(tr.final[:, 1] - tr.final[:, 0])
    kappa = 2.0 * Kc / (2.0 * D)
    expected = special.i1(kappa) / special.i0(kappa)
    assert abs(c.mean() - expected) < 5.0 * c.std() / np.sqrt(M)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_strong_convergence_as_dt_shrinks(method: str) -> None:
    """Strong check: on one Brownian path (a fine path summed onto coarser grids), the rms
    error against a 4096-step Heun solution shrinks at every halving of dt, at order ≈ 1
    (the strong order of both schemes for additive noise)."""
    w, K, theta_star, _ = _locked_start(6, 2, k_scale=2.0)
    T, fine, M = 2.0, 4096, 20
    dW = np.sqrt(T / fine) * np.random.default_rng(3).standard_normal((fine, M, 6))
    start = np.repeat(theta_star[None], M, axis=0)
    kw = {"t_span": (0.0, T), "diffusion": 0.1}
    ref = dy.integrate_sde(start, w, K, dt=T / fine, dW=dW, method="heun", **kw).final
    errs = []
    for steps in (32, 64, 128, 256):
        coarse = dW.reshape(steps, fine // steps, M, 6).sum(axis=1)
        x = dy.integrate_sde(start, w, K, dt=T / steps, dW=coarse, method=method, **kw).final
        errs.append(float(np.sqrt(np.mean((x - ref) ** 2))))
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    order = -np.polyfit(np.log([32, 64, 128, 256]), np.log(errs), 1)[0]
    assert 0.8 < order < 1.6, (errs, order)


def test_numba_and_numpy_steppers_agree() -> None:
    pytest.importorskip("numba")
    w, K, theta_star, _ = _locked_start(6, 4)
    H = ph.CouplingFunction(harmonics=(1.0, 0.2), phase_lag=0.1, offset=0.01, cos_offset=0.02)
    drive = dy.Drive.carrier_wave(
        0.1, times=np.linspace(0.0, 5.0, 11), modulation=np.sin(np.linspace(0.0, 5.0, 11))
    )
    for method in ("euler", "heun"):
        kw = {
            "t_span": (0.0, 5.0),
            "dt": 0.01,
            "diffusion": 0.05,
            "coupling": H,
            "drive": drive,
            "drive_amplitude": [0.5, 0, 0, 0, 0, 0.3],
            "beta": [0, 0, 0, 0, 0.2, 0],
            "target": 0.3,
            "record_every": 10,
            "method": method,
            "rng": 1,
        }
        start = np.stack([theta_star] * 3)
        a = dy.integrate_sde(start, w, K, engine="numpy", **kw)
        b = dy.integrate_sde(start, w, K, engine="numba", **kw)
        assert a.theta.shape == b.theta.shape == (51, 3, 6)
        np.testing.assert_allclose(a.theta, b.theta, rtol=0, atol=1e-10)
        assert np.ptp(a.theta[-1] - a.theta[0]) > 0.1  # the run really moved


def test_numba_stepper_is_bitwise_unchanged() -> None:
    """The compiled stepper gives exactly the values it gave before its parameters were
    grouped into NamedTuples (computed then with the same calls): coupling with harmonics, lag
    and offsets, a drive on some oscillators, a linear nudge, Heun, recording every 7 steps;
    and no coupling, an injection nudge, per-oscillator noise, Euler–Maruyama."""
    pytest.importorskip("numba")
    H = ph.CouplingFunction(harmonics=(1.0, 0.3), phase_lag=0.1, offset=0.02, cos_offset=0.05)
    rng = np.random.default_rng(5)
    K = rng.normal(0, 1, (2, 3, 3))
    K = K + K.transpose(0, 2, 1)
    w = rng.normal(0, 0.5, (2, 3))
    th0 = rng.uniform(-1, 1, (2, 3))
    drv = dy.Drive.carrier_wave(0.3, phase0=np.array([0.1, -0.2]))
    a = dy.integrate_sde(
        th0, w, K, coupling=H, drive=drv, drive_amplitude=[0.4, 0.0, 0.7], beta=[0.0, 0.0, 0.5],
        target=0.3, diffusion=0.01, dt=0.01, t_span=(0.0, 0.5), rng=3, record_every=7,
        method="heun", engine="numba",
    )  # fmt: skip
    b = dy.integrate_sde(
        th0, w, None, drive=drv, drive_amplitude=0.6, beta=0.2, target=[0.1, 0.2, 0.3],
        nudge="injection", diffusion=[0.0, 0.02, 0.05], dt=0.02, t_span=(0.0, 0.6), rng=4,
        method="euler", engine="numba",
    )  # fmt: skip
    want_a = [
        0.23093656241656818, 1.2566932790130145, -0.9186974349209477,
        1.5238218846846536, 0.44978541932684946, -1.0602627213336495,
    ]  # fmt: skip
    want_b = [
        0.13563118973502353, 0.5579912678814891, -0.5132080943108726,
        0.627774613065579, 0.40236834020283446, -0.6954126452817256,
    ]  # fmt: skip
    assert a.theta.shape == (8, 2, 3) and b.theta.shape == (31, 2, 3)
    assert a.theta[-1].ravel().tolist() == want_a
    assert b.theta[-1].ravel().tolist() == want_b
    assert float(a.theta[4].sum()) == 1.1827642966222942
    assert float(b.theta[15].sum()) == 0.3889902636699559


def test_sde_without_noise_matches_the_ode() -> None:
    w, K, theta_star, kick = _locked_start(5, 5)
    ode = dy.integrate(theta_star + kick, w, K, t_span=(0.0, 1.0), t_eval=[1.0]).final
    sde = dy.integrate_sde(theta_star + kick, w, K, t_span=(0.0, 1.0), dt=1e-3).final
    np.testing.assert_allclose(sde, ode, atol=1e-5)  # Heun: O(dt²) global error


# --------------------------------------------------------------------------- drive: Adler
F_DRIVE, CARRIER = 1.0, 2.0
DETUNING = np.array([-1.3, -1.05, -0.95, -0.5, 0.0, 0.5, 0.95, 1.05, 1.3])


@pytest.mark.parametrize("form", ["carrier", "callable"])
def test_isolated_driven_oscillator_locks_iff_within_the_locking_range(form: str) -> None:
    """Adler: dφ/dt = Δ − F sin φ (φ = θ − Ψ, Δ = ω − dΨ/dt) locks iff |Δ| < F; outside it
    beats at √(Δ² − F²) with coherence |⟨e^{iφ}⟩| = (|Δ| − √(Δ² − F²))/F."""
    if form == "carrier":
        drive = dy.Drive.carrier_wave(CARRIER, phase0=0.4)
    else:
        drive = dy.Drive.from_callable(lambda t: 0.4 + CARRIER * t)
    omega = (CARRIER + DETUNING)[:, None]
    tr = dy.integrate(
        np.zeros((DETUNING.size, 1)),
        omega,
        drive=drive,
        drive_amplitude=F_DRIVE,
        t_span=(0.0, 600.0),
        t_eval=np.linspace(0.0, 600.0, 60001),
    )
    f = dy.lock_beat_features(tr, drive, window=(200.0, 600.0))
    inside = np.abs(DETUNING) < F_DRIVE
    beat = np.sign(DETUNING) * np.sqrt(np.maximum(DETUNING**2 - F_DRIVE**2, 0.0))
    np.testing.assert_allclose(f.beat_frequency[:, 0], beat, rtol=1e-5, atol=1e-9)
    assert np.all(f.slips[inside, 0] == 0) and np.all(f.slips[~inside, 0] >= 10)
    coh = np.where(inside, 1.0, (np.abs(DETUNING) - np.abs(beat)) / F_DRIVE)
    np.testing.assert_allclose(f.coherence[:, 0], coh, atol=1e-5)
    # a locked oscillator sits at the Adler phase lag arcsin(Δ/F)
    lag = np.arcsin(DETUNING[inside] / F_DRIVE)
    np.testing.assert_allclose(f.phase_lag[inside, 0], lag, atol=1e-6)


def test_sensor_bank_with_a_modulated_drive_and_per_oscillator_strengths() -> None:
    """A bank of uncoupled sensors (K = None), F_i per oscillator: the ones within their own
    locking range lock, the rest beat — under a drive given as carrier + sampled modulation
    that is constant over the analysis window."""
    omega = np.array([1.0, 1.0, 1.0, 1.0])
    F = np.array([0.5, 0.2, 0.05, 0.0])
    times = np.array([0.0, 50.0, 100.0])
    drive = dy.Drive.carrier_wave(0.9, times=times, modulation=np.array([0.0, 3.0, 3.0]))
    np.testing.assert_allclose(drive.frequency(25.0), 0.9 + 3.0 / 50.0)
    np.testing.assert_allclose(drive.frequency(75.0), 0.9)
    tr = dy.integrate(
        np.zeros(4),
        omega,
        drive=drive,
        drive_amplitude=F,
        t_span=(0.0, 800.0),
        t_eval=np.linspace(0.0, 800.0, 40001),
    )
    f = dy.lock_beat_features(tr, drive, window=(200.0, 800.0))
    d = 0.1
    beat = np.sqrt(np.maximum(d**2 - F**2, 0.0))
    np.testing.assert_allclose(f.beat_frequency, beat, rtol=1e-4, atol=1e-9)
    assert np.all((f.coherence > 0.999) == (F > d))


def test_lock_time_grows_toward_the_lock_edge() -> None:
    """After a frequency step Δ (from a locked state at Δ = 0), the time until the phase
    velocity relative to the drive stays below tol grows monotonically as Δ → F, and it is the
    quadrature of the Adler equation t = ∫_0^{φ_tol} dφ/(Δ − F sin φ), sin φ_tol = (Δ − tol)/F,
    to the sampling resolution."""
    ratios = np.array([0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    tol, sample_dt = 1e-4, 0.01
    res = dy.settle(
        np.zeros((ratios.size, 1)),
        (CARRIER + ratios * F_DRIVE)[:, None],
        drive=dy.Drive.carrier_wave(CARRIER),
        drive_amplitude=F_DRIVE,
        relative_to="drive",
        tol=tol,
        sample_dt=sample_dt,
        hold=20.0,
        cycles_per_unit=1e9 / (2 * np.pi * 20e6),
    )
    assert np.all(res.locked)
    assert np.all(np.diff(res.lock_time) > 0), res.lock_time
    for r, t_lock in zip(ratios, res.lock_time, strict=True):
        d = r * F_DRIVE
        phi_tol = np.arcsin((d - tol) / F_DRIVE)
        t_ref = integrate.quad(lambda p, d=d: 1.0 / (d - F_DRIVE * np.sin(p)), 0.0, phi_tol)[0]
        assert t_ref - 1e-6 <= t_lock <= t_ref + sample_dt + 1e-6, (r, t_lock, t_ref)
    np.testing.assert_allclose(res.lock_cycles, res.lock_time * 1e9 / (2 * np.pi * 20e6))


def test_lock_time_of_a_coupled_pair_grows_toward_the_lock_edge() -> None:
    """The same in a network, relative to the reference: a pair locks iff |Δω| < 2K."""
    Kc = 1.0
    K = np.array([[0.0, Kc], [Kc, 0.0]])
    ratios = np.array([0.2, 0.5, 0.8, 0.9, 0.97])
    omega = np.stack([np.array([-0.5, 0.5]) * r * 2 * Kc for r in ratios])
    res = dy.settle(np.zeros((ratios.size, 2)), omega, K, tol=1e-5, hold=20.0)
    assert np.all(res.locked) and np.all(np.diff(res.lock_time) > 0), res.lock_time
    np.testing.assert_allclose(np.sin(res.theta[:, 1] - res.theta[:, 0]), ratios, atol=1e-4)
    beyond = dy.settle(np.zeros(2), np.array([-0.5, 0.5]) * 2.1 * Kc, K, tol=1e-5, t_max=200.0)
    assert not beyond.locked and np.isnan(beyond.lock_time)


# --------------------------------------------------------------------------- validation
def test_invalid_arguments_are_refused_with_their_name() -> None:
    with pytest.raises(ValueError, match="diffusion"):
        dy.integrate_sde(np.zeros(2), np.zeros(2), t_span=(0, 1), dt=0.1, diffusion=-1.0)
    with pytest.raises(ValueError, match="dt"):
        dy.integrate_sde(np.zeros(2), np.zeros(2), t_span=(0, 1), dt=0.3)
    with pytest.raises(ValueError, match="drive_amplitude"):
        dy.integrate(np.zeros(2), np.zeros(2), drive=dy.Drive.carrier_wave(1.0), t_span=(0, 1))
    with pytest.raises(ValueError, match="method"):
        dy.integrate(np.zeros(2), np.zeros(2), t_span=(0, 1), method="Euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dW"):
        dy.integrate_sde(np.zeros(2), np.zeros(2), t_span=(0, 1), dt=0.5, dW=np.zeros((3, 1, 2)))


def test_settle_sample_grid_stays_inside_each_chunk() -> None:
    """Sample times are in (t, t_next] and end exactly at t_next. The last chunk before
    t_max = 50·(200·0.017) starts at t ≈ 166.6: there t + 0.017·200 rounds 1.1e-13 past
    t_next, a grid solve_ivp refuses ("t_eval not within t_span")."""
    from phasegrad_hw.physics._settle import sample_grid

    dt = 0.017
    t, t_next = 166.60000000000014, 50 * (200 * dt)
    assert (t + dt * np.arange(1, 201))[-1] > t_next  # the rounding this guards against
    for end in (t_next, t + 1.0, t + 0.005):
        g = sample_grid(t, end, dt)
        assert g[0] > t and g[-1] == end and np.all(g <= end) and np.all(np.diff(g) > 0)
