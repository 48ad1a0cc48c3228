"""The one EP rule: the controller, the engine's numpy path and the compiled engine give the
same update from the same readings; the rule's gradient is the loss gradient (IFT)."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.device.presets import vowel_2_5_2
from phasegrad_hw.device.substrate import EPPhases, PhaseReading
from phasegrad_hw.engine.ensemble import Ensemble
from phasegrad_hw.engine.members import TrainConfig, member_for_model
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters
from phasegrad_hw.learning.ep import EPNetwork, EPReadings, EPRule, EPState, ep_update
from phasegrad_hw.learning.tasks import Encoding, synthetic_vowels
from phasegrad_hw.physics import SIN, centred, solve_equilibrium, wrap
from phasegrad_hw.physics.gradients import (
    coupling_gradient_implicit,
    implicit_gradient,
    loss_grad_theta,
)

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
DATA = synthetic_vowels(("a", "i"), n_per_class=20, seed=2)
MODEL = vowel_2_5_2(np.random.default_rng(0))


def _kernels() -> Any:
    from tests.conftest import require

    require(HAVE_NUMBA, "numba (the compiled training kernels, extra 'fast')")
    from phasegrad_hw.engine import _kernels

    return _kernels


def _net() -> EPNetwork:
    return EPNetwork(MODEL.edge_index, MODEL.roles.reference, SIN, MODEL.limits)


def test_configs_embed_the_one_rule() -> None:
    assert EPConfig.model_fields["rule"].annotation is EPRule
    assert TrainConfig.model_fields["rule"].annotation is EPRule
    for outer in (EPConfig, TrainConfig):
        assert not set(outer.model_fields) & set(EPRule.model_fields)
    for bad in ({"beta": 0.0}, {"beta": 10.5}, {"clip": 0.0}, {"lr_k": -1.0}, {"params": "K7"}):
        with pytest.raises(ValidationError):
            EPRule.model_validate(bad)
    old = {"lr_omega": 0.01, "lr_k": 0.01, "beta": 0.2, "mode": "centred", "averages": 4}
    assert EPConfig(rule=EPRule.model_validate({**old, "params": "both"})).rule.averages == 4


def _random_case(rng: np.random.Generator, B: int) -> tuple[EPReadings, EPState]:
    n, E = MODEL.n, len(MODEL.edges)
    free = rng.uniform(-np.pi, np.pi, (B, 1, n))
    free[..., 0] = 0.0
    step = rng.normal(0.0, 0.15, (B, 1, n)) * rng.choice([1.0, 30.0], (B, 1, 1), p=[0.8, 0.2])
    step[..., 0] = 0.0
    plus = wrap(free + step)  # some members jump across the basin
    omega = rng.uniform(-3.0, 3.0, (B, n))
    coupling = rng.uniform(0.01, 8.0, (B, E))
    learn_w = rng.random((B, n)) < 0.7
    learn_k = rng.random((B, E)) < 0.7
    locked = np.ones((B, 1), dtype=bool)
    return EPReadings(free, plus, None, locked), EPState(omega, coupling, learn_w, learn_k)


def test_compiled_rule_equals_numpy_rule() -> None:
    K = _kernels()
    from phasegrad_hw.physics._kernels import make_graph

    rng = np.random.default_rng(11)
    rule = EPRule(params="both", beta=0.1, lr_omega=0.3, lr_k=0.3, clip=2.0, basin_jump_rad=1.0)
    readings, state = _random_case(rng, 400)
    want = ep_update(rule, readings, state, _net())
    lim = MODEL.limits
    krule = K.Rule(
        rule.beta, rule.lr_omega, rule.lr_k, rule.clip, rule.basin_jump_rad,
        lim.omega.min, lim.omega.max, lim.coupling.min, lim.coupling.max,
    )  # fmt: skip
    e = MODEL.edge_index
    g = make_graph(MODEL.n, e[:, 0], e[:, 1], MODEL.roles.reference)
    mem = K.Members(
        state.omega.copy(), state.coupling.copy(), state.learn_omega, state.learn_coupling
    )
    status = np.full(400, K.Status.NOT_RUN, dtype=np.int64)
    K.rule_update(krule, g, readings.free[:, 0], readings.plus[:, 0], mem, status)
    np.testing.assert_array_equal(status == K.Status.BASIN_JUMP, want.basin_jump[:, 0])
    np.testing.assert_array_equal(status == K.Status.UPDATED, want.valid[:, 0])
    np.testing.assert_allclose(mem.omega, want.omega, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mem.coupling, want.coupling, rtol=0, atol=1e-12)
    # not vacuous: jumps, clipped gradients and parameters projected onto both limits
    assert 20 < int(want.basin_jump.sum()) < 200
    assert (
        np.abs(want.grad_omega).max() > rule.clip and np.abs(want.grad_coupling).max() > rule.clip
    )
    moved = want.updated[:, None] & state.learn_omega
    assert np.any(want.omega[moved] == lim.omega.max) and np.any(want.omega[moved] == lim.omega.min)
    assert np.any(want.coupling == lim.coupling.min) and np.any(want.coupling == lim.coupling.max)
    assert np.any(want.omega[moved] != state.omega[moved])


def _physics_readings(
    omega: np.ndarray, coupling: np.ndarray, x: np.ndarray, y: int, enc: Encoding, rule: EPRule
) -> tuple[list[np.ndarray], np.ndarray]:
    """Free, nudged (and −β) states from the physics solver, independent of both trainers."""
    w = omega.copy()
    w[MODEL.roles.inputs] = enc.input_frequencies(x[None])[0]
    K = np.zeros((MODEL.n, MODEL.n))
    e = MODEL.edge_index
    K[e[:, 0], e[:, 1]] = coupling
    K[e[:, 1], e[:, 0]] = coupling
    free = solve_equilibrium(centred(w), K)
    assert free.ok
    out = MODEL.outputs
    tgt = np.zeros(MODEL.n)
    tgt[out] = enc.clamp_targets(np.array([y]), free.theta[None, out])[0]
    beta = np.zeros(MODEL.n)
    beta[out] = rule.beta
    states = [free.theta]
    for direction in (1, -1) if rule.mode == "centred" else (1,):
        eq = solve_equilibrium(
            centred(w), K, beta=beta, target=tgt, theta0=free.theta, direction=direction
        )
        assert eq.ok
        states.append(eq.theta)
    return states, tgt[out]


@pytest.mark.parametrize(
    ("mode", "readout"),
    [("one_sided", "template"), ("one_sided", "difference"), ("centred", "mean_phase")],
)
def test_controller_engine_and_compiled_updates_agree(
    mode: str, readout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = EPRule(params="both", mode=mode, lr_omega=0.05, lr_k=0.05)  # type: ignore[arg-type]
    cfg = TrainConfig(epochs=1, rule=rule)
    enc = Encoding(readout=readout)  # type: ignore[arg-type]
    member = member_for_model(MODEL, 3, cfg)
    engine = Ensemble(MODEL, [member], DATA, enc, cfg, compiled=False)
    compiled = None
    if mode == "one_sided":
        _kernels()
        compiled = Ensemble(MODEL, [member_for_model(MODEL, 3, cfg)], DATA, enc, cfg)

        def no_fallback(*a: object) -> None:
            raise AssertionError("the compiled step fell back to the numpy path")

        monkeypatch.setattr(compiled, "_step_rows", no_fallback)
    ctl = EPController(
        [SimulatedSubstrate(MODEL)],
        EPConfig(rule=rule),
        Parameters(member.omega.copy(), member.coupling.copy()),
        learnable_omega=member.learn_omega,
    )
    for s in range(6):
        x, y = DATA.x_train[s], int(DATA.y_train[s])
        states, targets = _physics_readings(ctl.params.omega, ctl.params.coupling, x, y, enc, rule)
        reads = [PhaseReading(th, np.zeros(MODEL.n), True) for th in states]
        minus = reads[2] if mode == "centred" else None
        rep = ctl._update([EPPhases(reads[0], reads[1], minus, targets)])
        assert rep.updated
        engine.step(np.array([[s]]))
        np.testing.assert_allclose(engine.omega[0], ctl.params.omega, rtol=0, atol=1e-12)
        np.testing.assert_allclose(engine.coupling[0], ctl.params.coupling, rtol=0, atol=1e-12)
        if compiled is not None:
            compiled.step(np.array([[s]]))
            np.testing.assert_allclose(compiled.omega[0], ctl.params.omega, rtol=0, atol=1e-12)
            np.testing.assert_allclose(
                compiled.coupling[0], ctl.params.coupling, rtol=0, atol=1e-12
            )
    assert np.abs(ctl.params.omega - member.omega).max() > 1e-4
    assert np.abs(ctl.params.coupling - member.coupling).max() > 1e-4


def test_rule_gradient_is_the_implicit_gradient() -> None:
    """Centred, small β: the rule's ω and K gradients equal the IFT gradients of ½Σ(θ_o − t)²."""
    rule = EPRule(params="both", mode="centred", beta=1e-3)
    member = member_for_model(MODEL, 1, TrainConfig(rule=rule))
    enc = Encoding(readout="template")
    (free, plus, minus), targets = _physics_readings(
        member.omega, member.coupling, DATA.x_train[0], int(DATA.y_train[0]), enc, rule
    )
    upd = ep_update(
        rule,
        EPReadings(free[None, None], plus[None, None], minus[None, None], np.ones((1, 1), bool)),
        EPState(member.omega[None], member.coupling[None], np.ones((1, MODEL.n), bool),
                np.ones((1, len(MODEL.edges)), bool)),
        _net(),
    )  # fmt: skip
    K = np.zeros((MODEL.n, MODEL.n))
    e = MODEL.edge_index
    K[e[:, 0], e[:, 1]] = member.coupling
    K[e[:, 1], e[:, 0]] = member.coupling
    g = implicit_gradient(free, K, loss_grad_theta(free, MODEL.outputs, targets))
    gk = coupling_gradient_implicit(free, g, e)
    assert np.abs(g).max() > 1e-2
    np.testing.assert_allclose(upd.grad_omega[0], g, rtol=0, atol=1e-5 * np.abs(g).max())
    np.testing.assert_allclose(upd.grad_coupling[0], gk, rtol=0, atol=1e-5 * np.abs(gk).max())


def test_invalid_samples_do_not_move_parameters() -> None:
    rng = np.random.default_rng(5)
    readings, state = _random_case(rng, 4)
    r3 = EPReadings(
        np.repeat(readings.free, 3, axis=1),
        np.repeat(readings.plus, 3, axis=1),
        None,
        np.array([[False, False, False], [True, False, True], [False, True, False], [True] * 3]),
    )
    rule = EPRule(params="both", lr_omega=0.1, lr_k=0.1, basin_jump_rad=10.0)
    upd = ep_update(rule, r3, state, _net())
    np.testing.assert_array_equal(upd.updated, [False, True, True, True])
    np.testing.assert_array_equal(upd.unlocked, ~r3.locked)
    np.testing.assert_array_equal(upd.omega[0], state.omega[0])
    np.testing.assert_array_equal(upd.coupling[0], state.coupling[0])
    # the mean over valid copies of one sample is that sample's update
    one = ep_update(
        rule, EPReadings(readings.free, readings.plus, None, np.ones((4, 1), bool)), state, _net()
    )
    np.testing.assert_allclose(upd.omega[1:], one.omega[1:], rtol=0, atol=1e-15)
    np.testing.assert_allclose(upd.coupling[1:], one.coupling[1:], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="minus"):
        ep_update(rule.model_copy(update={"mode": "centred"}), r3, state, _net())
