"""phasegrad_hw.physics.driven: forced equilibria and the phase-gradient identity on them."""

from __future__ import annotations

import numpy as np
import pytest

from phasegrad_hw import physics as ph
from phasegrad_hw.physics import driven as dv
from phasegrad_hw.physics import dynamics as dy
from phasegrad_hw.physics import gradients as gr
from phasegrad_hw.physics import graphs as nw

N, SENSORS, OUTS = 11, 6, np.array([9, 10])  # the published set-up: N = 11, 6 sensors


def _network(seed: int) -> tuple[np.ndarray, ...]:
    """(ω detunings, K, F, ψ): Erdős–Rényi K = 5·U(0.5, 1.5), ω ~ N(0, 0.3²), F = U(0.5, 1.5)
    on the first six oscillators, a random drive phase."""
    rng = np.random.default_rng([seed, N, 9])
    K = nw.erdos_renyi(N, rng, p=0.6, k_scale=5.0)
    w = nw.random_frequencies(N, rng, sigma=0.3)
    F = np.zeros(N)
    F[:SENSORS] = rng.uniform(0.5, 1.5, SENSORS)
    return w, K, F, np.asarray(rng.uniform(-np.pi, np.pi))


def _target(theta: np.ndarray, seed: int) -> np.ndarray:
    signs = np.random.default_rng([seed, 3]).choice(np.array([-1.0, 1.0]), OUTS.size)
    return theta[OUTS] + 0.2 * signs


def test_augmented_system_is_the_driven_model() -> None:
    """The forced state zeroes the driven right-hand side ω + Σ K H + F sin(ψ − θ) itself,
    and the reduced Jacobian is symmetric and negative definite."""
    w, K, F, psi = _network(0)
    eq = dv.forced_equilibrium(w, K, F, drive_phase=psi)
    assert eq.ok
    th = eq.theta
    f = ph.rhs(th, w, K) + F * np.sin(psi - th)
    assert np.abs(f).max() < 1e-11
    J = dv.reduced_jacobian(th, K, F, drive_phase=psi)
    assert np.array_equal(J, J.T)
    assert np.linalg.eigvalsh(J).max() < 0
    # the drive is a reference: the state moves rigidly with ψ
    shifted = dv.forced_equilibrium(w, K, F, drive_phase=psi + 0.7)
    assert np.abs(ph.wrap(shifted.theta - th - 0.7)).max() < 1e-10


def test_forced_identity_on_20_networks() -> None:
    """cos(two-phase at β = 1e-4, finite differences ε = 1e-5) ≥ 0.999999 and against the
    implicit gradient, on 20 random driven networks (N = 11, 6 sensors); the drive-strength
    and coupling gradients from the same two states agree with the IFT ones."""
    cos_fd, cos_ift, cos_F, cos_K = [], [], [], []
    beta = 1e-4
    for seed in range(20):
        w, K, F, psi = _network(seed)
        free = dv.forced_equilibrium(w, K, F, drive_phase=psi)
        assert free.ok, f"seed {seed} did not lock"
        tgt = _target(free.theta, seed)
        b, t = gr.nudge_vectors(N, OUTS, tgt, beta)
        nud = dv.forced_equilibrium(w, K, F, drive_phase=psi, beta=b, target=t, theta0=free.theta)
        assert nud.ok
        edges = np.argwhere(np.triu(K) > 0)
        tp = dv.forced_two_phase_gradient(free.theta, nud.theta, beta, drive_phase=psi, edges=edges)
        fd = dv.forced_finite_difference_gradient(
            w, K, F, OUTS, tgt, drive_phase=float(psi), theta0=free.theta
        )
        e = gr.loss_grad_theta(free.theta, OUTS, tgt)
        ift = dv.forced_implicit_gradient(free.theta, K, F, e, drive_phase=psi, edges=edges)
        assert np.all(fd != 0.0)  # every oscillator's detuning is a free parameter
        cos_fd.append(gr.cosine(tp.omega, fd))
        cos_ift.append(gr.cosine(tp.omega, ift.omega))
        cos_F.append(gr.cosine(tp.drive_amplitude, ift.drive_amplitude))
        assert tp.coupling is not None and ift.coupling is not None
        cos_K.append(gr.cosine(tp.coupling, ift.coupling))
        assert abs(gr.scale_error(ift.omega, fd)) < 1e-6
    assert min(cos_fd) >= 0.999999
    assert min(cos_ift) >= 0.999999
    assert min(cos_F) >= 0.99999
    assert min(cos_K) >= 0.99999


def test_centred_estimate_and_injection_nudge() -> None:
    """Centred two-phase estimate at β = 0.05 with the injection nudge against the IFT
    gradient of L = Σ(1 − cos(θ_o − t)) and finite differences of the same loss."""
    for seed in range(5):
        w, K, F, psi = _network(100 + seed)
        free = dv.forced_equilibrium(w, K, F, drive_phase=psi)
        tgt = _target(free.theta, seed)
        b, t = gr.nudge_vectors(N, OUTS, tgt, 0.05)
        plus, minus = (
            dv.forced_equilibrium(
                w, K, F, drive_phase=psi, beta=b, target=t, theta0=free.theta,
                nudge="injection", direction=d,
            )
            for d in (1, -1)
        )  # fmt: skip
        tp = dv.forced_two_phase_gradient(
            free.theta, plus.theta, 0.05, minus.theta, drive_phase=psi
        )
        e = gr.loss_grad_theta(free.theta, OUTS, tgt, "injection")
        ift = dv.forced_implicit_gradient(free.theta, K, F, e, drive_phase=psi)
        fd = dv.forced_finite_difference_gradient(
            w, K, F, OUTS, tgt, drive_phase=float(psi), kind="injection", theta0=free.theta
        )
        assert gr.cosine(ift.omega, fd) > 0.9999999
        assert gr.cosine(tp.omega, ift.omega) > 0.9999


def test_batched_forced_states_equal_one_by_one() -> None:
    nets = [_network(s) for s in range(4)]
    W = np.stack([n[0] for n in nets])
    Ks = np.stack([n[1] for n in nets])
    Fs = np.stack([n[2] for n in nets])
    psi = np.stack([n[3] for n in nets])
    batch = dv.forced_equilibrium(W, Ks, Fs, drive_phase=psi)
    for k, (w, K, F, p) in enumerate(nets):
        one = dv.forced_equilibrium(w, K, F, drive_phase=p)
        assert np.abs(ph.wrap(batch.theta[k] - one.theta)).max() < 1e-10


def test_integration_converges_to_the_forced_equilibrium() -> None:
    """The time-domain driven dynamics (carrier Ω = 2 rad per time unit, physics.dynamics)
    started 0.1 rad rms off the forced state settle on it: θ_i(t) − Ψ(t) → θ*_i − ψ within
    1e-6 rad (measured: ≤ 3e-10 rad)."""
    worst = 0.0
    carrier = 2.0
    for seed in range(6):
        w, K, F, psi = _network(seed)
        eq = dv.forced_equilibrium(w, K, F, drive_phase=psi)
        kick = np.random.default_rng([seed, 7]).normal(0.0, 0.1, N)
        drive = dy.Drive.carrier_wave(carrier, phase0=psi)
        t_end = 100.0  # ≥ 40 / (slowest relaxation rate, ≥ 0.4 per time unit here)
        tr = dy.integrate(
            eq.theta + kick, w + carrier, K, drive=drive, drive_amplitude=F,
            t_span=(0.0, t_end), t_eval=[t_end], rtol=1e-12, atol=1e-12,
        )  # fmt: skip
        lag = tr.final - drive.phase(t_end)
        worst = max(worst, float(np.abs(ph.wrap(lag - (eq.theta - psi))).max()))
    assert worst <= 1e-6


def test_bad_inputs_are_refused() -> None:
    w, K, F, _ = _network(0)
    with pytest.raises(ValueError, match="drive_amplitude"):
        dv.forced_equilibrium(w, K, -F)
    with pytest.raises(ValueError, match="no oscillator is driven"):
        dv.forced_equilibrium(w, K, np.zeros(N))
    with pytest.raises(ValueError, match="K: shape"):
        dv.forced_equilibrium(w, K[:5, :5], F)
