"""The controller's chip-scale path (docs/design.md §8): held phases per sample, softmax
cross-entropy clamp targets, mini-batches, the optimizer and the locking projections."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.device.registry import open_model
from phasegrad_hw.engine.layered import layered_from_device
from phasegrad_hw.learning.chip import PhaseEncoding
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.optim import LockBounds, Optimizer, project_locking
from phasegrad_hw.physics import wrap
from phasegrad_hw.physics.gradients import cosine
from phasegrad_hw.physics.layered import implicit_gradient, solve_layered
from phasegrad_hw.physics.multiclass import SoftmaxCE
from phasegrad_hw.testing.networks import model_layered_small


def _cmos_ideal(seed: int):  # type: ignore[no-untyped-def]
    """The emulated CMOS chip with every non-ideality that breaks the identity switched off
    (symmetric K, H = sin, no mismatch or noise, fine DACs)."""
    m = model_layered_small("cmos", seed=seed)
    return type(m).model_validate(
        {
            **m.model_dump(),
            "coupling_function": {"harmonics": [1.0]},
            "capacitors": {"mismatch": 0.0, "direction_mismatch": 0.0, "lsb_ff": 0.0},
            "oscillator": {"vth_mismatch_v": 0.0},
            "phase_noise": {"dbc_hz": -250.0},
            "tdc": {"lsb_s": 1e-21, "jitter_s": 0.0, "offset_sigma_s": 0.0},
            "thermal": {"sigma_c": 0.0},
            "injection": {"amplitude_bits": 24, "phase_bits": 24, "gain_mismatch": 0.0},
        }
    )


@pytest.mark.parametrize("backend", ["simulated", "cmos"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
async def test_controller_ep_equals_the_implicit_cross_entropy_gradient(
    backend: str, seed: int
) -> None:
    """Held inputs, two bias oscillators, signed couplings, the multi-class loss: the
    controller's centred EP estimate (clamp targets and gain from the loss gradient) equals the
    implicit gradient of the softmax cross-entropy (physics.layered.implicit_gradient, an
    independent reference) at small β, noise off: cosine >= 0.999999 for ∂L/∂K and ∂L/∂ω."""
    m = model_layered_small("simulated", seed=seed) if backend == "simulated" else _cmos_ideal(seed)
    dev = layered_from_device(m)
    rng = np.random.default_rng([seed, 21])
    K = m.coupling_values()
    enc = PhaseEncoding.for_device(m, loss_scale=4.0)
    x = rng.uniform(-1.0, 1.0, len(m.roles.held))
    y = int(rng.integers(len(m.roles.outputs)))
    rule = EPRule(params="both", beta=1e-4, mode="centred", lr_k=0.0, lr_omega=0.0)
    sub = open_model(m, seed=0)
    async with sub:
        ctl = EPController([sub], EPConfig(rule=rule), Parameters(np.zeros(m.n), K))
        rep = await ctl.step(
            [Sample(np.zeros(0), lambda out: enc.clamp(y, out), enc.held_phases(x))]
        )
    assert rep.n_valid == 1 and rep.grad_coupling is not None and rep.grad_omega is not None
    h = enc.held_phases(x)[None, :]
    eq = solve_layered(dev.net, np.zeros(dev.net.n_free), K[dev.edge_of], h)
    assert eq.ok[0]
    g_w, g_k = implicit_gradient(dev.net, K[dev.edge_of], eq.theta, SoftmaxCE(np.array([y]), 4.0))
    assert float(cosine(rep.grad_coupling[dev.edge_of], g_k[0])) >= 0.999999
    free = dev.order[dev.net.n_held :]
    assert float(cosine(rep.grad_omega[free], g_w[0])) >= 0.999999


@pytest.mark.parametrize("kind", ["linear", "injection"])
def test_clamp_targets_reproduce_the_loss_force(kind: str) -> None:
    """At the free state the clamp β·κ·(t − θ) or β·κ·sin(t − θ) equals −β·∂L/∂θ_out, and
    every target stays within max_offset_rad of the free phase."""
    rng = np.random.default_rng(3)
    enc = PhaseEncoding(loss_scale=6.0, nudge=kind)
    for _ in range(20):
        th = rng.uniform(-math.pi, math.pi, 10)
        y = int(rng.integers(10))
        c = enc.clamp(y, th)
        d = wrap(c.targets - th)
        force = c.gain * (d if kind == "linear" else np.sin(d))
        g = SoftmaxCE(np.array([y]), 6.0).grad(th[None])[0]
        np.testing.assert_allclose(force, -g, atol=1e-12)
        assert np.all(np.abs(d) <= enc.max_offset_rad + 1e-12) and c.gain >= 1.0


async def test_a_mini_batch_over_fewer_substrates_averages_its_samples() -> None:
    """A batch of 4 samples on 2 substrates (two rounds) updates once by the mean of the
    four single-sample gradients (SGD), the held phases set per sample."""
    m = model_layered_small("simulated", seed=1)
    K = m.coupling_values()
    enc = PhaseEncoding.for_device(m)
    rng = np.random.default_rng(5)
    xs = rng.uniform(-1, 1, (4, len(m.roles.held)))
    ys = [0, 1, 2, 1]
    rule = EPRule(params="K", beta=1e-3, mode="centred", lr_k=0.1)

    def sample(i: int) -> Sample:
        return Sample(np.zeros(0), lambda out: enc.clamp(ys[i], out), enc.held_phases(xs[i]))

    grads = []
    for i in range(4):
        ctl1 = EPController(
            [SimulatedSubstrate(m)], EPConfig(rule=rule), Parameters(np.zeros(m.n), K)
        )
        grads.append((await ctl1.step([sample(i)])).grad_coupling)
    subs = [SimulatedSubstrate(m), SimulatedSubstrate(m)]
    ctl = EPController(subs, EPConfig(rule=rule, batch_size=4), Parameters(np.zeros(m.n), K))
    rep = await ctl.step([sample(i) for i in range(4)])
    assert rep.n_valid == 4
    mean = np.mean(grads, axis=0)
    np.testing.assert_allclose(rep.grad_coupling, mean, rtol=1e-9, atol=1e-12)
    lo, hi = m.coupling_bounds()
    want = np.clip(K - 0.1 * np.clip(mean, -rule.clip, rule.clip), lo, hi)
    w_free, want, _, _ = project_locking(
        m.n, m.edge_index, np.array([*m.roles.held, *m.roles.bias]),
        np.array([*m.roles.hidden, *m.roles.outputs]), np.zeros(9), want,
        LockBounds(0.9, m.held_injection, 0.5),
    )  # fmt: skip
    np.testing.assert_allclose(ctl.params.coupling, want, rtol=1e-12, atol=1e-14)


def test_adam_state_round_trip_and_decay() -> None:
    rule = EPRule(optimizer="adam", lr_decay=0.5)
    a, b = Optimizer(rule, 3), Optimizer(rule, 3)
    g = np.array([1.0, -2.0, 0.5])
    d1 = a.step(g, 0.1)
    np.testing.assert_allclose(d1, 0.1 * np.sign(g), rtol=1e-6)  # Adam's first step: lr·sign
    b.load(a.state())
    np.testing.assert_array_equal(a.step(g, 0.1), b.step(g, 0.1))
