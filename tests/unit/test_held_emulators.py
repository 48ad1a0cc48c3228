"""Held inputs, bias oscillators and a drive in the emulators (backends/_held.py,
docs/design.md §8, §9): the states agree with the layered solver, the EP estimate from nudged
reads equals the emulator's implicit gradient, and the drive enters as F·sin(ψ − θ)."""

from __future__ import annotations

import numpy as np
import pytest

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.device.registry import open_model
from phasegrad_hw.physics import wrap
from phasegrad_hw.physics.gradients import cosine
from phasegrad_hw.physics.layered import LayeredNetwork, solve_layered
from phasegrad_hw.testing.networks import model_driven_small, model_layered_small


async def test_simulated_held_state_is_the_layered_solvers() -> None:
    m = model_layered_small("simulated", seed=1)
    sub = SimulatedSubstrate(m)
    rng = np.random.default_rng(4)
    x = rng.uniform(0.0, 1.0, len(m.roles.held))
    async with sub:
        await sub.set_frequencies(np.zeros(m.n))
        await sub.set_held_phases(m.input_phases(x))
        r = await sub.read_phases(1)
    net = LayeredNetwork(4, (6,), 3)
    order = np.array([*m.roles.held, *m.roles.bias, *m.roles.hidden, *m.roles.outputs])
    eq = solve_layered(net, np.zeros(net.n_free), m.coupling_values(), m.input_phases(x)[None])
    assert eq.ok[0] and r.locked
    np.testing.assert_allclose(wrap(r.phases[order] - eq.theta[0]), 0.0, atol=1e-8)


@pytest.mark.parametrize("backend", ["simulated", "cmos"])
@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_ep_on_held_devices_equals_the_implicit_gradient(backend: str, seed: int) -> None:
    """Centred EP from noise-free reads (−wrap(θ⁺ − θ⁻)/2β on the free oscillators) equals
    exact_gradient at small β: the emulated chip's mismatch (asymmetric K, a2, b0, b1 terms)
    is switched off so that its Jacobian is symmetric."""
    m = model_layered_small(backend, seed=seed)
    if backend == "cmos":
        m = type(m).model_validate(
            {
                **m.model_dump(),
                "coupling_function": {"harmonics": [1.0]},
                "capacitors": {"mismatch": 0.0, "direction_mismatch": 0.0, "lsb_ff": 0.0},
                "oscillator": {"vth_mismatch_v": 0.0},
                "phase_noise": {"dbc_hz": -200.0},
                "tdc": {"lsb_s": 1e-18, "jitter_s": 0.0, "offset_sigma_s": 0.0},
                "thermal": {"sigma_c": 0.0},
                "injection": {"amplitude_bits": 24, "phase_bits": 24, "gain_mismatch": 0.0},
            }
        )
    sub = open_model(m, seed=0)
    rng = np.random.default_rng([seed, 9])
    target = rng.uniform(-1.0, 1.0, len(m.roles.outputs))
    beta = 1e-4
    free = np.array([*m.roles.hidden, *m.roles.outputs])
    async with sub:
        await sub.set_held_phases(m.input_phases(rng.uniform(0, 1, len(m.roles.held))))
        await sub.read_phases(1)
        await sub.clamp(target, beta, direction=1)
        plus = (await sub.read_phases(1)).phases
        await sub.clamp(target, beta, direction=-1)
        minus = (await sub.read_phases(1)).phases
        await sub.release()
        exact = sub.exact_gradient(target)
    est = -wrap(plus - minus) / (2 * beta)
    assert np.all(exact[m.roles.held] == 0.0) and np.all(exact[m.roles.bias] == 0.0)
    assert float(cosine(est[free], exact[free])) >= 0.999999


async def test_drive_locks_a_sensor_to_its_phase() -> None:
    """An isolated view: strong drive F on the sensors pulls them to ψ (lag arcsin of the
    net force over F); with the drive off the state is the undriven one."""
    m = model_driven_small("simulated")
    sub = SimulatedSubstrate(m)
    async with sub:
        off = await sub.read_phases(1)
        await sub.set_drive(np.full(2, m.limits.drive_max), 1.0)
        on = await sub.read_phases(1)
        await sub.set_drive(np.zeros(2), 0.0)
        again = await sub.read_phases(1)
    assert on.locked and off.locked
    # the sensors moved toward ψ = 1 rad
    assert np.all(np.abs(wrap(on.phases[[1, 2]] - 1.0)) < np.abs(wrap(off.phases[[1, 2]] - 1.0)))
    np.testing.assert_allclose(again.phases, off.phases, atol=1e-9)
    # the residual of the driven state is zero with the drive term F sin(ψ − θ)
    th = on.phases
    K = sub.K
    F = np.zeros(m.n)
    F[[1, 2]] = m.limits.drive_max
    w = np.zeros(m.n)
    res = w + (K * np.sin(th[None, :] - th[:, None])).sum(axis=1) + F * np.sin(1.0 - th)
    np.testing.assert_allclose(res[1:], 0.0, atol=1e-8)
