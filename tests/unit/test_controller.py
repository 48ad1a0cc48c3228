"""EP controller: safety on errors and cancellation, validity checks, gradients against the
implicit reference, readout-noise statistics, parallel substrates, limits and projection."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import numpy as np
import pytest

from phasegrad_hw.backends.simulated import SimulatedBatch, SimulatedChip, SimulatedSubstrate
from phasegrad_hw.errors import (
    ConfigError,
    DeviceTimeoutError,
    LimitError,
    LockLostError,
    ProtocolError,
)
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.physics import centred, solve_equilibrium
from phasegrad_hw.physics.gradients import (
    cosine,
    coupling_gradient_implicit,
    implicit_gradient,
    loss_grad_theta,
)
from phasegrad_hw.testing.doubles import FaultySubstrate, HangingSubstrate, ScriptedSubstrate
from phasegrad_hw.testing.networks import model_2_5_2

TARGET = np.array([-0.2, 0.2])


def _params(model, seed: int = 1) -> Parameters:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    w = np.zeros(model.n)
    w[2:] = rng.uniform(-0.3, 0.3, model.n - 2)
    return Parameters(w, model.coupling_values())


def _sample(x0: float = 0.4, x1: float = -0.3, target: np.ndarray = TARGET) -> Sample:
    return Sample(np.array([x0, x1]), target)


def _exact(model, params: Parameters, x: np.ndarray, target: np.ndarray):  # type: ignore[no-untyped-def]
    """Implicit (IFT) ω and K gradients of ½Σ(θ_o − t)² at the free state (reference)."""
    w = params.omega.copy()
    w[model.roles.inputs] = x
    K = np.zeros((model.n, model.n))
    e = model.edge_index
    K[e[:, 0], e[:, 1]] = params.coupling
    K[e[:, 1], e[:, 0]] = params.coupling
    eq = solve_equilibrium(centred(w), K, ref=0)
    assert eq.ok
    g = implicit_gradient(eq.theta, K, loss_grad_theta(eq.theta, model.outputs, target), ref=0)
    gk = coupling_gradient_implicit(eq.theta, g, e)
    return g, gk


# --------------------------------------------------------------------------- safety
@pytest.mark.parametrize(
    ("mode", "script", "error"),
    [
        ("one_sided", {"fail_read": {2: DeviceTimeoutError("meter timeout")}}, DeviceTimeoutError),
        ("one_sided", {"fail_clamp": {1: ProtocolError("bad checksum")}}, ProtocolError),
        ("centred", {"fail_read": {3: LockLostError("slip during −β read")}}, LockLostError),
    ],
)
async def test_failure_between_free_and_nudged_read_leaves_params_and_device_safe(
    mode: Literal["one_sided", "centred"], script: dict[str, Any], error: type[Exception]
) -> None:
    m = model_2_5_2(0)
    inner = SimulatedSubstrate(m)
    sub = ScriptedSubstrate(inner, **script)
    p0 = _params(m)
    ctl = EPController(
        [sub], EPConfig(rule=EPRule(mode=mode, lr_omega=0.1, lr_k=0.1, params="both")), p0
    )
    with pytest.raises(error):
        await ctl.step([_sample()])
    assert np.array_equal(ctl.params.omega, p0.omega)
    assert np.array_equal(ctl.params.coupling, p0.coupling)
    assert sub.is_safe and inner._clamp is None and np.array_equal(inner.omega, m.safe_biases())
    assert sub.names()[-2:] == ["release", "biases"]
    assert "read" in sub.names()  # the free read happened before the failure
    assert (ctl.stats.errors, ctl.stats.updates, ctl.stats.steps) == (1, 0, 1)
    # the controller still works afterwards, and then does update
    ok = EPController([SimulatedSubstrate(m)], ctl.config, p0)
    rep = await ok.step([_sample()])
    assert rep.updated and not np.array_equal(ok.params.omega, p0.omega)


async def test_failure_on_one_of_parallel_substrates_makes_all_safe() -> None:
    m = model_2_5_2(0)
    subs = [
        ScriptedSubstrate(SimulatedSubstrate(m)),
        FaultySubstrate(SimulatedSubstrate(m), on_read=2),
        ScriptedSubstrate(SimulatedSubstrate(m)),
    ]
    p0 = _params(m)
    ctl = EPController(subs, EPConfig(rule=EPRule(lr_omega=0.1)), p0)
    with pytest.raises(DeviceTimeoutError):
        await ctl.step([_sample(0.1), _sample(0.2), _sample(0.3)])
    assert np.array_equal(ctl.params.omega, p0.omega)
    assert all(s.is_safe for s in subs)
    assert all(s.names()[-2:] == ["release", "biases"] for s in subs)


@pytest.mark.parametrize("n_subs", [1, 2])
async def test_cancellation_mid_step_leaves_params_and_device_safe(n_subs: int) -> None:
    m = model_2_5_2(0)
    hang = HangingSubstrate(SimulatedSubstrate(m), on_read=2)
    subs = [hang] + [ScriptedSubstrate(SimulatedSubstrate(m)) for _ in range(n_subs - 1)]
    p0 = _params(m)
    ctl = EPController(subs, EPConfig(rule=EPRule(lr_omega=0.1)), p0)
    task = asyncio.create_task(ctl.step([_sample(0.1 * k) for k in range(n_subs)]))
    await asyncio.wait_for(hang.hanging.wait(), 5.0)
    assert hang.clamp_active  # cancelled while nudged, between free and nudged read
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert np.array_equal(ctl.params.omega, p0.omega)
    assert all(s.is_safe for s in subs)
    assert ctl.stats.updates == 0 and ctl.stats.errors == 1


# --------------------------------------------------------------------------- validity
async def test_unlocked_and_basin_jump_samples_are_skipped_and_counted() -> None:
    m = model_2_5_2(0)
    # step 1: free read unlocked; step 2: nudged read unlocked; step 3: basin jump on the
    # nudged read; step 4: clean (reads 6, 7)
    sub = ScriptedSubstrate(SimulatedSubstrate(m), unlocked_reads={1, 3}, jump_reads={5: 1.5})
    p0 = _params(m)
    cfg = EPConfig(rule=EPRule(lr_omega=0.05))
    ctl = EPController([sub], cfg, p0)
    reps = [await ctl.step([_sample()]) for _ in range(4)]
    assert [r.updated for r in reps] == [False, False, False, True]
    assert [(r.skipped_unlocked, r.skipped_basin_jump) for r in reps] == [
        (1, 0),
        (1, 0),
        (0, 1),
        (0, 0),
    ]
    assert (ctl.stats.skipped_unlocked, ctl.stats.skipped_basin_jump, ctl.stats.updates) == (
        2,
        1,
        1,
    )
    assert sub.names()[:4] == [
        "couplings",
        "frequencies",
        "read",
        "frequencies",
    ]  # no nudge when unlocked
    assert reps[0].grad_omega is None and np.isnan(reps[0].loss)
    # the single update equals one clean step from the same parameters
    ref = EPController([SimulatedSubstrate(m)], cfg, p0)
    await ref.step([_sample()])
    assert np.allclose(ctl.params.omega, ref.params.omega, rtol=0, atol=1e-14)
    assert not np.array_equal(ctl.params.omega, p0.omega)


async def test_one_sample_lock_flags_are_shared_read_only_rows() -> None:
    """A single device's step reports its free lock flag as a read-only (1,) row of the
    rule's shared one-sample flags (an observer cannot corrupt them), with the values and
    dtype of the general path's per-sample flags."""
    m = model_2_5_2(0)
    sub = ScriptedSubstrate(SimulatedSubstrate(m), unlocked_reads={1})
    ctl = EPController([sub], EPConfig(), _params(m))
    reps = [await ctl.step([_sample()]) for _ in range(2)]
    assert [r.free_locked.tolist() for r in reps] == [[False], [True]]
    for r in reps:
        assert r.free_locked.shape == (1,) and r.free_locked.dtype == np.bool_
        with pytest.raises(ValueError, match="read-only"):
            r.free_locked[0] = not r.free_locked[0]
    subs = [ScriptedSubstrate(SimulatedSubstrate(m), unlocked_reads={1}), SimulatedSubstrate(m)]
    both = await EPController(subs, EPConfig(), _params(m)).step([_sample(), _sample()])
    assert both.free_locked.tolist() == [False, True] and both.free_locked.dtype == np.bool_


async def test_basin_jump_threshold() -> None:
    m = model_2_5_2(0)
    below = ScriptedSubstrate(SimulatedSubstrate(m), jump_reads={2: 0.9})
    above = ScriptedSubstrate(SimulatedSubstrate(m), jump_reads={2: 1.1})
    cfg = EPConfig(rule=EPRule(basin_jump_rad=1.0))
    r_below = await EPController([below], cfg, _params(m)).step([_sample()])
    r_above = await EPController([above], cfg, _params(m)).step([_sample()])
    assert r_below.updated and r_below.skipped_basin_jump == 0
    assert not r_above.updated and r_above.skipped_basin_jump == 1


async def test_parallel_step_averages_only_valid_samples() -> None:
    m = model_2_5_2(0)
    xs = [_sample(0.5, -0.2), _sample(-0.4, 0.6), _sample(0.1, 0.1)]
    subs = [
        SimulatedSubstrate(m),
        ScriptedSubstrate(SimulatedSubstrate(m), unlocked_reads={2}),
        SimulatedSubstrate(m),
    ]
    cfg = EPConfig(rule=EPRule(beta=0.05, lr_omega=0.01))
    ctl = EPController(subs, cfg, _params(m))
    rep = await ctl.step(xs)
    assert list(rep.valid) == [True, False, True] and rep.skipped_unlocked == 1
    singles = []
    for s in (xs[0], xs[2]):
        r = await EPController([SimulatedSubstrate(m)], cfg, _params(m)).step([s])
        assert r.grad_omega is not None
        singles.append(r.grad_omega)
    assert rep.grad_omega is not None
    assert np.allclose(rep.grad_omega, np.mean(singles, axis=0), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", ["one_sided", "centred"])
async def test_step_gradient_matches_implicit_reference(
    mode: Literal["one_sided", "centred"],
) -> None:
    m = model_2_5_2(3)
    p = _params(m, 4)
    x = np.array([0.6, -0.9])
    beta = 1e-3
    ctl = EPController(
        [SimulatedSubstrate(m)], EPConfig(rule=EPRule(beta=beta, mode=mode, params="both")), p
    )
    rep = await ctl.step([Sample(x, TARGET)])
    g, gk = _exact(m, p, x, TARGET)
    g[~ctl.learnable_omega] = 0.0
    assert rep.grad_omega is not None and rep.grad_coupling is not None
    assert cosine(rep.grad_omega, g) > 1 - 1e-6
    assert (
        np.abs(rep.grad_omega - g).max() < (5e-3 if mode == "one_sided" else 1e-5) * np.abs(g).max()
    )
    assert cosine(rep.grad_coupling, gk) > 1 - 1e-6
    # update = −lr·clip(grad), then projection (nothing near the limits here)
    assert np.allclose(ctl.params.omega, p.omega - 1e-3 * rep.grad_omega, rtol=0, atol=1e-15)
    assert np.allclose(
        ctl.params.coupling, p.coupling - 1e-3 * rep.grad_coupling, rtol=0, atol=1e-15
    )


async def test_centred_bias_is_second_order() -> None:
    """At finite β the one-sided error is O(β) and the centred one O(β²) (docs/design.md §2)."""
    m = model_2_5_2(3)
    p = _params(m, 4)
    x = np.array([0.6, -0.9])
    g, _ = _exact(m, p, x, TARGET)
    errs = {}
    for mode in ("one_sided", "centred"):
        for beta in (0.2, 0.1):
            ctl = EPController(
                [SimulatedSubstrate(m)], EPConfig(rule=EPRule(beta=beta, mode=mode)), p
            )
            rep = await ctl.step([Sample(x, TARGET)])
            assert rep.grad_omega is not None
            errs[mode, beta] = np.linalg.norm(rep.grad_omega - np.where(ctl.learnable_omega, g, 0))
    # halving β halves the one-sided error and quarters the centred one (±15 %)
    assert 1.7 < errs["one_sided", 0.2] / errs["one_sided", 0.1] < 2.3
    assert 3.4 < errs["centred", 0.2] / errs["centred", 0.1] < 4.6
    assert errs["centred", 0.1] < 0.2 * errs["one_sided", 0.1]


def _predicted_cosine(
    g_mean: np.ndarray,
    g_true: np.ndarray,
    s: float,
    mask: np.ndarray,
    rng: np.random.Generator,
    draws: int = 200_000,
) -> float:
    """E cos(g_mean + s·z, g_true), z ~ N(0, I) on the learnable channels (Monte Carlo of
    the Gaussian noise model only — no device involved)."""
    z = np.zeros((draws, len(g_mean)))
    z[:, mask] = rng.standard_normal((draws, int(mask.sum())))
    return float(cosine(g_mean[None, :] + s * z, g_true[None, :]).mean())


async def _noisy_cosines(model, p, x, t, beta, mode, averages, trials):  # type: ignore[no-untyped-def]
    sub = SimulatedSubstrate(model, seed=11)
    ctl = EPController(
        [sub], EPConfig(rule=EPRule(beta=beta, mode=mode, averages=averages, lr_omega=0.0)), p
    )
    grads = []
    for _ in range(trials):
        rep = await ctl.step([Sample(x, t)])
        assert rep.updated
        grads.append(rep.grad_omega)
    return np.array(grads), ctl.learnable_omega


@pytest.mark.parametrize(("beta", "averages"), [(0.05, 1), (0.05, 4)])
async def test_readout_noise_degrades_cosine_as_predicted_and_centred_recovers(
    beta: float, averages: int
) -> None:
    sigma = 0.01  # rad per single read: ≈0.5 ps jitter at 3 GHz (docs/design.md §2)
    m = model_2_5_2(3, readout_noise_rad=sigma)
    clean = model_2_5_2(3)
    p = _params(m, 4)
    x, t = np.array([1.5, -1.5]), np.array([-0.8, 0.8])  # ‖∂L/∂ω‖ ≈ 0.16
    g, _ = _exact(clean, p, x, t)
    rng = np.random.default_rng(5)
    trials = 300
    # one-sided at small β: noise std per channel √2·σ/(β·√averages)
    G, mask = await _noisy_cosines(m, p, x, t, beta, "one_sided", averages, trials)
    g = np.where(mask, g, 0.0)
    s_pred = np.sqrt(2) * sigma / (beta * np.sqrt(averages))
    ctl0 = EPController([SimulatedSubstrate(clean)], EPConfig(rule=EPRule(beta=beta)), p)
    g_beta = (await ctl0.step([Sample(x, t)])).grad_omega  # noise-free estimate at this β
    assert g_beta is not None
    resid = (G - g_beta)[:, mask]
    s_meas = resid.std(ddof=1)
    # χ² spread of a std from n_df values (4 σ) + 2 % for the circular mean of few reads
    assert abs(s_meas / s_pred - 1) < 4 * np.sqrt(1 / (2 * resid.size)) + 0.02
    cos = cosine(G, g)
    pred = _predicted_cosine(g_beta, g, s_pred, mask, rng)
    assert abs(cos.mean() - pred) < 4 * cos.std(ddof=1) / np.sqrt(trials) + 0.01
    assert pred < 0.6  # the noise really does destroy much of the gradient here
    # centred at 10× larger β: noise std σ/(√2·β·√averages), bias O(β²)
    beta_c = 10 * beta
    Gc, _ = await _noisy_cosines(m, p, x, t, beta_c, "centred", averages, trials)
    ctl1 = EPController(
        [SimulatedSubstrate(clean)], EPConfig(rule=EPRule(beta=beta_c, mode="centred")), p
    )
    gc_beta = (await ctl1.step([Sample(x, t)])).grad_omega
    assert gc_beta is not None
    s_c = sigma / (np.sqrt(2) * beta_c * np.sqrt(averages))
    cos_c = cosine(Gc, g)
    pred_c = _predicted_cosine(gc_beta, g, s_c, mask, rng)
    assert abs(cos_c.mean() - pred_c) < 4 * cos_c.std(ddof=1) / np.sqrt(trials) + 0.005
    assert cos_c.mean() > 0.95 and cos_c.mean() > cos.mean() + 0.3


# --------------------------------------------------------------------------- parallel
async def test_parallel_substrates_average_single_device_gradients() -> None:
    m = model_2_5_2(2, readout_noise_rad=0.01)
    xs = [
        _sample(0.5, -0.2, np.array([-0.2, 0.2])),
        _sample(-0.4, 0.6, np.array([0.2, -0.2])),
        _sample(0.9, 0.3, np.array([-0.2, 0.2])),
    ]
    cfg = EPConfig(
        rule=EPRule(beta=0.1, mode="centred", lr_omega=0.01, lr_k=0.01, params="both", averages=2)
    )
    p0 = _params(m)
    singles_w, singles_k = [], []
    for k, s in enumerate(xs):
        r = await EPController([SimulatedSubstrate(m, seed=100 + k)], cfg, p0).step([s])
        assert r.grad_omega is not None and r.grad_coupling is not None
        singles_w.append(r.grad_omega)
        singles_k.append(r.grad_coupling)
    gw, gk = np.mean(singles_w, axis=0), np.mean(singles_k, axis=0)
    # independent substrates under asyncio.gather
    par = EPController([SimulatedSubstrate(m, seed=100 + k) for k in range(3)], cfg, p0)
    rep = await par.step(xs)
    # one batched device: 3 chips, each phase solved in one vectorised call
    batch = SimulatedBatch(m, 3)
    for k, c in enumerate(batch.chips):
        c.reseed(100 + k)
        c.theta = np.zeros(m.n)
    bctl = EPController(batch.chips, cfg, p0)
    brep = await bctl.step(xs)
    for r in (rep, brep):
        assert r.grad_omega is not None and r.grad_coupling is not None
        assert np.allclose(r.grad_omega, gw, rtol=0, atol=1e-12)
        assert np.allclose(r.grad_coupling, gk, rtol=0, atol=1e-12)
    assert np.allclose(par.params.omega, p0.omega - 0.01 * np.clip(gw, -2, 2), rtol=0, atol=1e-14)
    assert np.allclose(bctl.params.omega, par.params.omega, rtol=0, atol=1e-14)
    assert batch.solves == 3  # free, +β, −β: one solve each for all three chips
    assert all(isinstance(c, SimulatedChip) for c in batch.chips)


async def test_simulated_chip_reads_equal_single_substrate_reads() -> None:
    m = model_2_5_2(1, readout_noise_rad=0.03)
    batch = SimulatedBatch(m, 4, seed=9)
    singles = [SimulatedSubstrate(m) for _ in range(4)]
    ws = np.random.default_rng(0).uniform(-1, 1, (4, m.n))
    for k in range(4):
        batch.chips[k].reseed(50 + k)
        singles[k].reseed(50 + k)
        await batch.chips[k].set_frequencies(ws[k])
        await singles[k].set_frequencies(ws[k])
    rb = await asyncio.gather(*(c.read_phases(3) for c in batch.chips))
    rs = [await s.read_phases(3) for s in singles]
    assert batch.solves == 1
    for a, b in zip(rb, rs, strict=True):
        assert a.locked and b.locked
        assert np.allclose(a.phases, b.phases, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- limits
async def test_projection_onto_device_limits_and_clipping() -> None:
    m = model_2_5_2(0)
    p = _params(m)
    cfg = EPConfig(rule=EPRule(beta=0.1, lr_omega=1e5, lr_k=1e5, params="both", clip=0.5))
    ctl = EPController([SimulatedSubstrate(m)], cfg, p)
    rep = await ctl.step([_sample()])
    assert rep.grad_omega is not None and rep.grad_coupling is not None
    w, k = ctl.params.omega, ctl.params.coupling
    lim_w, lim_k = m.limits.omega, m.limits.coupling
    assert w.min() >= lim_w.min and w.max() <= lim_w.max
    assert k.min() >= lim_k.min and k.max() <= lim_k.max
    # clipped step −lr·clip(g, ±0.5) then projection, element by element
    exp_w = np.clip(p.omega - 1e5 * np.clip(rep.grad_omega, -0.5, 0.5), lim_w.min, lim_w.max)
    exp_k = np.clip(p.coupling - 1e5 * np.clip(rep.grad_coupling, -0.5, 0.5), lim_k.min, lim_k.max)
    assert np.array_equal(w, exp_w) and np.array_equal(k, exp_k)
    learn = ctl.learnable_omega
    assert np.all(
        (w[learn] == lim_w.min) | (w[learn] == lim_w.max)
    )  # every learnable ω hit a limit
    assert np.any(k == lim_k.min) and np.any(k == lim_k.max)
    assert np.array_equal(w[~learn], p.omega[~learn])
    # the projected parameters are accepted by the device at the next step
    await ctl.step([_sample()])


@pytest.mark.parametrize(
    ("sample_k", "bad"),
    [
        (0, Sample(np.array([5.0, 0.0]), TARGET)),  # input frequency beyond ω limit
        (1, Sample(np.array([0.1, 0.2]), np.array([0.1, np.nan]))),  # target not finite
        (1, Sample(np.array([0.1, 0.2]), np.array([0.1, 0.2, 0.3]))),  # wrong target shape
        (1, Sample(np.array([0.1]), TARGET)),  # wrong input shape
    ],
)
async def test_limit_error_before_anything_is_sent(sample_k: int, bad: Sample) -> None:
    m = model_2_5_2(0)
    subs = [ScriptedSubstrate(SimulatedSubstrate(m)) for _ in range(2)]
    p0 = _params(m)
    ctl = EPController(subs, EPConfig(), p0)
    batch = [_sample(), _sample()]
    batch[sample_k] = bad
    with pytest.raises(LimitError):
        await ctl.step(batch)
    assert all(s.calls == [] for s in subs)
    assert np.array_equal(ctl.params.omega, p0.omega)


async def test_beta_beyond_device_limit_is_refused() -> None:
    m = model_2_5_2(0, limits={"beta_max": 0.5})
    sub = ScriptedSubstrate(SimulatedSubstrate(m))
    with pytest.raises(LimitError, match="beta"):
        EPController([sub], EPConfig(rule=EPRule(beta=0.6)), _params(m))
    ctl = EPController([sub], EPConfig(rule=EPRule(beta=0.5)), _params(m))
    ctl.config.rule.beta = 0.7
    with pytest.raises(LimitError, match="beta: 0.7"):
        await ctl.step([_sample()])
    with pytest.raises(LimitError, match=r"omega\[0\]: 9 is outside the device limit"):
        await ctl.infer(np.array([9.0, 0.0]))
    assert sub.calls == []


async def test_callable_targets_get_free_output_phases() -> None:
    m = model_2_5_2(0)
    sub = ScriptedSubstrate(SimulatedSubstrate(m))
    seen = []

    def targets(free_out: np.ndarray) -> np.ndarray:
        seen.append(free_out.copy())
        return free_out - 0.1

    ctl = EPController([sub], EPConfig(), _params(m))
    rep = await ctl.step([Sample(np.array([0.3, 0.1]), targets)])
    assert np.array_equal(seen[0], rep.free_phases[0, m.outputs])
    clamp = [c for c in sub.calls if c[0] == "clamp"][0][1]
    assert np.allclose(clamp[0], seen[0] - 0.1) and clamp[1] == 0.1 and clamp[2] == 1


# --------------------------------------------------------------------------- writes, subsets
async def test_couplings_written_only_when_changed() -> None:
    m = model_2_5_2(0)
    a = ScriptedSubstrate(SimulatedSubstrate(m))
    ctl = EPController([a], EPConfig(rule=EPRule(params="omega")), _params(m))
    for _ in range(3):
        await ctl.step([_sample()])
    await ctl.infer(np.array([0.1, 0.1]))
    assert a.names().count("couplings") == 1
    b = ScriptedSubstrate(SimulatedSubstrate(m))
    ctl_k = EPController([b], EPConfig(rule=EPRule(params="K", lr_k=0.01)), _params(m))
    for _ in range(3):
        await ctl_k.step([_sample()])
    assert b.names().count("couplings") == 3
    written = [c[1] for c in b.calls if c[0] == "couplings"]
    assert not np.array_equal(written[1], written[2])


async def test_coupling_learning_needs_a_device_that_sets_couplings() -> None:
    m = model_2_5_2(0)
    sub = ScriptedSubstrate(SimulatedSubstrate(m))
    sub.capabilities = frozenset()
    with pytest.raises(ConfigError, match="params: 'K' needs couplings"):
        EPController([sub], EPConfig(rule=EPRule(params="K")), _params(m))
    ctl = EPController([sub], EPConfig(rule=EPRule(params="omega")), _params(m))
    await ctl.step([_sample()])
    assert "couplings" not in sub.names()


async def test_edge_subset_and_learnable_mask() -> None:
    m = model_2_5_2(0)
    p0 = _params(m)
    mask = np.zeros(m.n, dtype=bool)
    mask[[7, 8]] = True
    ctl = EPController(
        [SimulatedSubstrate(m)],
        EPConfig(edges=[3, 11], rule=EPRule(params="both", lr_k=0.1, lr_omega=0.1)),
        p0,
        learnable_omega=mask,
    )
    await ctl.step([_sample()])
    changed_k = np.flatnonzero(ctl.params.coupling != p0.coupling)
    changed_w = np.flatnonzero(ctl.params.omega != p0.omega)
    assert set(changed_k) == {3, 11} and set(changed_w) == {7, 8}
    with pytest.raises(ConfigError, match=r"config.edges\[1\]: 24 is not an edge index"):
        EPController([SimulatedSubstrate(m)], EPConfig(edges=[0, 24]), p0)


async def test_infer_reads_free_phases_under_current_params() -> None:
    m = model_2_5_2(0)
    sub = SimulatedSubstrate(m)
    p = _params(m)
    ctl = EPController([sub], EPConfig(), p)
    r = await ctl.infer(np.array([0.3, -0.6]))
    w = p.omega.copy()
    w[:2] = [0.3, -0.6]
    K = m.coupling_matrix()
    eq = solve_equilibrium(centred(w), K, ref=0)
    assert r.locked and np.allclose(r.phases, eq.theta, rtol=0, atol=1e-10)
    phases, locked = await ctl.infer_many(np.array([[0.3, -0.6], [0.0, 0.0]]))
    assert locked.all() and np.allclose(phases[0], r.phases, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- simulated device
@pytest.mark.parametrize("nudge", ["linear", "injection"])
async def test_simulated_fast_solver_matches_damped_newton(nudge: str) -> None:
    """The fast edge-Newton path of the simulated device lands on the state the core damped
    Newton solver finds, free and nudged both ways, and reports lock the same way."""
    m = model_2_5_2(4, nudge=nudge)
    sub = SimulatedSubstrate(m)
    assert sub._fast is not None and sub._ke is not None
    rng = np.random.default_rng(8)
    K = m.coupling_matrix()
    for trial in range(20):
        w = rng.uniform(-1.5, 1.5, m.n)
        await sub.set_frequencies(w)
        t = rng.uniform(-1, 1, 2)
        for direction in (0, 1, -1):
            if direction:
                await sub.clamp(t, 0.3, direction=direction)
            else:
                await sub.release()
            theta, ok = sub.solve()
            kw = (
                {}
                if not direction
                else {
                    "beta": np.r_[np.zeros(7), 0.3, 0.3],
                    "target": np.r_[np.zeros(7), t],
                    "direction": direction,
                }
            )
            eq = solve_equilibrium(centred(w), K, ref=0, nudge=m.nudge, **kw)
            assert ok == bool(eq.ok), (trial, direction)
            if ok:
                assert np.allclose(theta, eq.theta, rtol=0, atol=1e-10)


async def test_simulated_fast_solver_is_bypassed_when_its_assumptions_fail() -> None:
    m = model_2_5_2(0)
    edges = [dict(e.model_dump(exclude_none=True)) for e in m.edges]
    edges[0]["k_ji"] = edges[0]["k"] * 1.2  # asymmetric coupling
    asym = SimulatedSubstrate(model_2_5_2(0, edges=edges))
    assert asym._ke is None
    harm = SimulatedSubstrate(model_2_5_2(0, coupling_function={"harmonics": [1.0, 0.2]}))
    assert harm._fast is None
    sym = SimulatedSubstrate(m)
    await sym.set_couplings(np.r_[0.0 + m.limits.coupling.min, m.coupling_values()[1:]])
    assert sym._ke is not None  # still symmetric and positive
    w = np.r_[0.0, 0.4, np.zeros(7)]
    for s in (asym, harm):
        await s.set_frequencies(w)
        theta, ok = s.solve()
        eq = solve_equilibrium(centred(w), s.K, s.H, ref=0)
        assert ok and np.allclose(theta, eq.theta, rtol=0, atol=1e-10)
    # far beyond the locking range: no lock, as the core solver says
    unlocked = SimulatedSubstrate(m)
    await unlocked.set_couplings(np.full(len(m.edges), m.limits.coupling.min))
    w = np.r_[3.0, -3.0, 3.0, -3.0, 3.0, -3.0, 3.0, -3.0, 3.0]
    await unlocked.set_frequencies(w)
    r = await unlocked.read_phases()
    assert not r.locked and not solve_equilibrium(centred(w), unlocked.K, ref=0).ok


async def test_bad_callable_target_refused_after_free_read_and_device_made_safe() -> None:
    m = model_2_5_2(0)
    sub = ScriptedSubstrate(SimulatedSubstrate(m))
    p0 = _params(m)
    ctl = EPController([sub], EPConfig(rule=EPRule(lr_omega=0.1)), p0)
    with pytest.raises(LimitError, match=r"target\[1\]: nan is not finite"):
        await ctl.step([Sample(np.array([0.3, 0.1]), lambda out: np.array([0.0, np.nan]))])
    assert "clamp" not in sub.names() and sub.is_safe
    assert np.array_equal(ctl.params.omega, p0.omega) and ctl.stats.errors == 1


@pytest.mark.parametrize(
    ("script", "counts"), [({"unlocked_reads": {3}}, (1, 0)), ({"jump_reads": {3: 1.5}}, (0, 1))]
)
async def test_centred_minus_reading_is_checked_too(
    script: dict[str, Any], counts: tuple[int, int]
) -> None:
    m = model_2_5_2(0)
    sub = ScriptedSubstrate(SimulatedSubstrate(m), **script)  # read 3 = the −β read
    p0 = _params(m)
    ctl = EPController([sub], EPConfig(rule=EPRule(mode="centred", lr_omega=0.1)), p0)
    rep = await ctl.step([_sample()])
    assert not rep.updated and (rep.skipped_unlocked, rep.skipped_basin_jump) == counts
    assert np.array_equal(ctl.params.omega, p0.omega)
    assert [c[1][2] for c in sub.calls if c[0] == "clamp"] == [1, -1] and not sub.clamp_active


async def test_cancellation_while_batched_reads_wait_leaves_all_chips_safe() -> None:
    m = model_2_5_2(0)
    batch = SimulatedBatch(m, 3)
    p0 = _params(m)
    ctl = EPController(batch.chips, EPConfig(rule=EPRule(lr_omega=0.1)), p0)
    task = asyncio.create_task(ctl.step([_sample(0.1 * k) for k in range(3)]))
    # wait until the free reads are solved and the chips are nudged, then cancel
    while not all(c._clamp is not None for c in batch.chips):
        await asyncio.sleep(0)
    assert batch.solves == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert np.array_equal(ctl.params.omega, p0.omega)
    assert all(c._clamp is None and np.array_equal(c.omega, m.safe_biases()) for c in batch.chips)
    # the batch still works afterwards
    rep = await EPController(batch.chips, EPConfig(rule=EPRule(lr_omega=0.1)), p0).step(
        [_sample(0.2)] * 3
    )
    assert rep.updated and rep.n_valid == 3
