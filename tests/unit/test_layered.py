"""Layered networks with held inputs, bias oscillators and signed couplings: solver against an
independent root finder, stability, EP gradients against implicit differentiation and finite
differences, the multi-class loss, the locking safeguards and a short training run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import root

from phasegrad_hw.engine.layered import (
    DigitsData,
    LayeredConfig,
    NoLockError,
    Split,
    digits_data,
    init_params,
    project_locking,
    train_layered,
)
from phasegrad_hw.physics.coupling import wrap
from phasegrad_hw.physics.layered import (
    LayeredBatch,
    LayeredNetwork,
    ep_gradient,
    free_jacobian,
    free_residual,
    implicit_gradient,
    solve_layered,
)
from phasegrad_hw.physics.multiclass import LinearClamp, SoftmaxCE, clamp_targets, decide


def random_case(seed: int, B: int = 4, n_in: int = 7, n_h: int = 9, n_out: int = 4):
    """A random layered network (signed couplings, bias oscillators) and a batch of inputs."""
    rng = np.random.default_rng(seed)
    net = LayeredNetwork(n_in, (n_h,), n_out)
    K = rng.normal(0.0, 1.0, net.n_edges)  # signed
    w = rng.normal(0.0, 0.15, net.n_free)
    x = rng.uniform(0.0, math.pi / 2, (B, n_in))
    labels = rng.integers(0, n_out, B)
    return net, w, K, x, labels


def locked_case(seed: int, B: int = 4):
    """The first random case from ``seed`` on whose free states all lock stably."""
    for k in range(50):
        case = random_case(seed * 50 + k, B)
        if solve_layered(*case[:4]).ok.all():
            return case
    raise AssertionError("no locking random case")  # pragma: no cover


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------- description
def test_network_structure() -> None:
    net = LayeredNetwork(64, (64,), 10)
    assert (net.n_held, net.n_free, net.n) == (66, 74, 140)
    assert net.n_edges == 64 * 66 + 10 * 64 + 10 * 2
    assert list(net.roles[[0, 63, 64, 65, 66, 129, 130, 139]]) == [
        "input", "input", "bias", "bias", "hidden", "hidden", "output", "output",
    ]  # fmt: skip
    lo, hi = net.edges.min(axis=1), net.edges.max(axis=1)
    layer = np.zeros(net.n, dtype=int)
    for k, idx in enumerate(net.layers):
        layer[idx] = k
    # every edge joins consecutive layers, or a bias to a free layer; never inside a layer
    bias = np.isin(lo, net.biases)
    assert np.all((layer[hi] - layer[lo] == 1) | bias) and np.all(layer[hi] != layer[lo])
    assert len({(int(a), int(b)) for a, b in net.edges}) == net.n_edges
    with pytest.raises(ValueError, match="one"):
        solve_layered(LayeredNetwork(3, (4, 4), 2), np.zeros(10), np.zeros(3 * 0), np.zeros((1, 3)))


# --------------------------------------------------------------------------- solver
def _free_part_residual(tf, net, w, K, full, loss, beta, direction):
    """Residual of the free oscillators with their phases ``tf`` (for scipy.optimize.root)."""
    t = full.copy()
    t[net.n_held :] = tf
    return free_residual(net, w, K, t[None], loss, beta, direction)[0]


@pytest.mark.parametrize("seed", range(4))
def test_solver_matches_scipy_root(seed: int) -> None:
    net, w, K, x, labels = locked_case(seed)
    ce = SoftmaxCE(labels, 2.0)
    rng = np.random.default_rng(seed + 100)
    for loss, beta, direction in ((None, 0.0, 1), (ce, 0.3, 1), (ce, 0.3, -1)):
        eq = solve_layered(net, w, K, x, loss=loss, beta=beta, direction=direction)
        assert eq.converged.all() and eq.stable.all()
        assert np.all(eq.residual <= 1e-11)
        assert np.allclose(eq.theta[:, net.held], net.held_phases(x))
        # the independent edge-list residual agrees with the solver's
        F = free_residual(net, w, K, eq.theta, loss, beta, direction)
        assert np.abs(F).max() <= 1e-11
        for b in range(x.shape[0]):
            full = eq.theta[b].copy()
            sub = None if loss is None else loss.take(np.array([b]))
            args = (net, w, K, full, sub, beta, direction)
            start = full[net.n_held :] + rng.normal(0.0, 0.05, net.n_free)
            ref = root(
                _free_part_residual, start, args=args, method="hybr", options={"xtol": 1e-14}
            )
            assert np.abs(_free_part_residual(ref.x, *args)).max() < 1e-12
            assert np.abs(wrap(ref.x - full[net.n_held :])).max() < 1e-10


REFERENCE = Path(__file__).parent / "data" / "layered_reference.json"


def reference_case(seed: int):
    """The networks of ``data/layered_reference.json``: 7 → 9 → 4, 12 samples; seed 2 nudges
    with the hardware clamp, seed 3 has detunings too large for most samples to lock."""
    rng = np.random.default_rng([seed, 12])
    net = LayeredNetwork(7, (9,), 4)
    K = rng.normal(0.0, 1.2, net.n_edges)
    w = rng.normal(0.0, 0.15 if seed < 3 else 1.2, net.n_free)
    x = rng.uniform(0.0, math.pi / 2, (12, 7))
    return net, w, K, x, rng.integers(0, 4, 12)


def test_solver_reproduces_the_reference_states() -> None:
    """Free, +β and −β states and their flags equal those of the solver before the Newton moved
    to its own module and was sped up (stored in data/layered_reference.json, computed with
    separate free / +β / −β calls): converged phases to 1e-10 rad, flags exactly, through
    :func:`solve_layered` and through one :class:`LayeredBatch` with a paired ±β run."""
    ref = json.loads(REFERENCE.read_text())["cases"]
    for case in ref:
        net, w, K, x, labels = reference_case(case["seed"])
        free = solve_layered(net, w, K, x)
        ce = SoftmaxCE(labels, 6.0)
        out = free.theta[:, net.outputs]
        nud = ce if case["seed"] != 2 else clamp_targets(out, ce.grad(out))
        plus = solve_layered(net, w, K, x, theta0=free.theta, loss=nud, beta=0.05)
        minus = solve_layered(net, w, K, x, theta0=free.theta, loss=nud, beta=0.05, direction=-1)
        batch = LayeredBatch(net, w, K, x)
        free2 = batch.solve()
        plus2, minus2 = batch.nudged_pair(free2.theta, nud, 0.05)
        for name, eqs in (
            ("free", (free, free2)),
            ("plus", (plus, plus2)),
            ("minus", (minus, minus2)),
        ):
            want = np.array(case[name]["theta_free"], dtype=np.float64)
            conv = np.array(case[name]["converged"])
            for eq in eqs:
                np.testing.assert_array_equal(eq.converged, conv)
                np.testing.assert_array_equal(eq.stable, case[name]["stable"])
                got = eq.theta[conv, net.n_held :]
                assert np.abs(wrap(got - want[conv])).max() <= 1e-10, (case["seed"], name)
    assert sum(not c for c in ref[3]["free"]["converged"]) >= 8  # failures are covered


def test_stability_flag_on_unstable_state() -> None:
    net = LayeredNetwork(1, (1,), 1, bias_phases_rad=(0.0,))
    # edges: input→hidden 2.0, bias→hidden 0, hidden→output 1.0, bias→output 0
    K = np.array([2.0, 0.0, 1.0, 0.0])
    w = np.zeros(2)
    x = np.array([[0.4]])
    theta0 = np.array([[0.4, 0.0, 0.4, 0.4 + math.pi]])  # output anti-phase: a root, unstable
    eq = solve_layered(net, w, K, x, theta0=theta0, max_iter=1)
    assert eq.converged[0] and not eq.stable[0]
    assert eq.margin[0] < 0
    good = solve_layered(net, w, K, x)  # feed-forward start: the stable in-phase state
    assert good.ok[0] and abs(wrap(good.theta[0, 3] - 0.4)) < 1e-12 and good.margin[0] > 0
    # a hidden oscillator whose detuning exceeds its field cannot lock
    bad = solve_layered(net, np.array([3.5, 0.0]), K, x)
    assert not bad.converged[0] and not bad.ok[0]


# --------------------------------------------------------------------------- gradients
def _ep(net, w, K, x, loss, beta, centred):
    free = solve_layered(net, w, K, x)
    plus = solve_layered(net, w, K, x, theta0=free.theta, loss=loss, beta=beta)
    if centred:
        minus = solve_layered(net, w, K, x, theta0=free.theta, loss=loss, beta=beta, direction=-1)
        assert minus.ok.all()
        return free, ep_gradient(net, plus.theta, minus.theta, 2 * beta)
    assert plus.ok.all()
    return free, ep_gradient(net, plus.theta, free.theta, beta)


def test_ep_gradient_equals_implicit_over_random_networks() -> None:
    cos_c, cos_o, cos_clamp = [], [], []
    for seed in range(24):
        net, w, K, x, labels = locked_case(1000 + seed, B=3)
        loss = SoftmaxCE(labels, 3.0)
        free, (gw, gk) = _ep(net, w, K, x, loss, 1e-4, centred=True)
        assert free.ok.all()
        iw, ik = implicit_gradient(net, K, free.theta, loss)
        _, (ow, ok) = _ep(net, w, K, x, loss, 1e-6, centred=False)
        clamp = clamp_targets(free.theta[:, net.outputs], loss.grad(free.theta[:, net.outputs]))
        _, (cw, ck) = _ep(net, w, K, x, clamp, 1e-4, centred=True)
        for b in range(x.shape[0]):
            ref = np.concatenate([iw[b], ik[b]])
            cos_c.append(cosine(np.concatenate([gw[b], gk[b]]), ref))
            cos_o.append(cosine(np.concatenate([ow[b], ok[b]]), ref))
            cos_clamp.append(cosine(np.concatenate([cw[b], ck[b]]), ref))
            # scale too, not only direction
            assert np.linalg.norm(np.concatenate([gw[b], gk[b]]) - ref) <= 1e-5 * np.linalg.norm(
                ref
            )
    assert min(cos_c) >= 0.999999 and min(cos_o) >= 0.999999 and min(cos_clamp) >= 0.999999


def test_implicit_gradient_matches_finite_differences() -> None:
    eps = 1e-6
    for seed in range(3):
        net, w, K, x, labels = locked_case(2000 + seed, B=2)
        loss = SoftmaxCE(labels, 2.0)
        free = solve_layered(net, w, K, x)
        iw, ik = implicit_gradient(net, K, free.theta, loss)
        rng = np.random.default_rng(seed)

        def total(w_: np.ndarray, K_: np.ndarray, net=net, x=x, free=free, loss=loss) -> np.ndarray:
            eq = solve_layered(net, w_, K_, x, theta0=free.theta)
            assert eq.ok.all()
            return loss.value(eq.theta[:, net.outputs])

        for f in rng.choice(net.n_free, 5, replace=False):
            d = np.zeros(net.n_free)
            d[f] = eps
            fd = (total(w + d, K) - total(w - d, K)) / (2 * eps)
            assert np.allclose(fd, iw[:, f], rtol=1e-5, atol=1e-8)
        # one edge of every block: held→hidden (incl. a bias edge), hidden→output, bias→output
        edges = [b.start for b in net.blocks] + [net.blocks[0].start + net.n_in]
        for e in edges:
            d = np.zeros(net.n_edges)
            d[e] = eps
            fd = (total(w, K + d) - total(w, K - d)) / (2 * eps)
            assert np.allclose(fd, ik[:, e], rtol=1e-5, atol=1e-8)


def test_jacobian_is_symmetric_and_matches_residual() -> None:
    net, w, K, x, labels = locked_case(7)
    loss = SoftmaxCE(labels, 2.0)
    th = solve_layered(net, w, K, x).theta
    J = free_jacobian(net, K, th, loss, 0.2)
    assert np.allclose(J, np.swapaxes(J, 1, 2), atol=1e-14)
    eps = 1e-6
    for f in (0, net.n_free - 1):
        tp, tm = th.copy(), th.copy()
        tp[:, net.n_held + f] += eps
        tm[:, net.n_held + f] -= eps
        col = free_residual(net, w, K, tp, loss, 0.2) - free_residual(net, w, K, tm, loss, 0.2)
        assert np.allclose(col / (2 * eps), J[:, :, f], atol=1e-7)


# --------------------------------------------------------------------------- loss and readout
def test_softmax_ce_derivatives_and_decision() -> None:
    rng = np.random.default_rng(3)
    th = rng.uniform(-math.pi, math.pi, (5, 6))
    y = rng.integers(0, 6, 5)
    L = SoftmaxCE(y, 2.5)
    z = 2.5 * np.sin(th)
    ref = -(z[np.arange(5), y] - np.log(np.exp(z).sum(axis=1)))
    assert np.allclose(L.value(th), ref, atol=1e-13)
    eps = 1e-6
    g, H = L.grad(th), L.hessian(th)
    for o in range(6):
        d = np.zeros(6)
        d[o] = eps
        assert np.allclose((L.value(th + d) - L.value(th - d)) / (2 * eps), g[:, o], atol=1e-8)
        assert np.allclose((L.grad(th + d) - L.grad(th - d)) / (2 * eps), H[:, :, o], atol=1e-7)
    assert np.array_equal(decide(th), np.argmax(np.sin(th), axis=1))
    # the loss is smallest where the decision is right: pushing the label's sin up lowers it
    th2 = th.copy()
    th2[np.arange(5), y] = math.pi / 2
    assert np.all(L.value(th2) < L.value(th)) and np.array_equal(decide(th2), y)
    with pytest.raises(ValueError):
        SoftmaxCE(y, 0.0)


def test_clamp_targets_reproduce_the_loss_force() -> None:
    rng = np.random.default_rng(4)
    th = rng.uniform(-math.pi, math.pi, (6, 5))
    g = rng.normal(0.0, 2.0, (6, 5))
    clamp = clamp_targets(th, g, max_offset_rad=0.5)
    assert np.all(np.abs(wrap(clamp.targets - th)) <= 0.5 + 1e-12)
    assert np.all(clamp.gain >= 1.0)
    # force of the clamp at the free state: −∂L_c/∂θ = κ(t − θ*) = −g
    assert np.allclose(clamp.grad(th), g, atol=1e-12)
    small = clamp_targets(th, 1e-3 * g)
    assert np.allclose(small.gain, 1.0) and np.allclose(wrap(th - small.targets), 1e-3 * g)
    lin = LinearClamp(th, 2.0)
    assert np.allclose(lin.hessian(th), 2.0 * np.eye(5)) and np.allclose(lin.value(th), 0.0)


# --------------------------------------------------------------------------- engine
def test_locking_projection() -> None:
    net = LayeredNetwork(3, (4,), 2)
    w, K = init_params(net, 1.0, 0)
    K = K.copy()
    K[0] = 50.0  # edge (hidden 0, input 0): a huge load on input 0
    w = np.full(net.n_free, 100.0)
    w2, K2, n_clip, n_scaled = project_locking(net, w, K, 0.9, 20.0, 0.5)
    load = np.zeros(net.n)
    np.add.at(load, net.edges[:, 1], np.abs(K2))
    assert n_scaled >= 1 and load[net.held].max() <= 10.0 + 1e-12
    row = np.zeros(net.n)
    np.add.at(row, net.edges[:, 0], np.abs(K2))
    np.add.at(row, net.edges[:, 1], np.abs(K2))
    assert n_clip == net.n_free and np.allclose(w2, 0.9 * row[net.n_held :])
    # untouched when inside the bounds
    w3, K3, c3, s3 = project_locking(net, np.zeros(net.n_free), K2, 0.9, 20.0, 0.5)
    assert (c3, s3) == (0, 0) and np.array_equal(K3, K2)


def _small_digits(n_train: int = 480, n_test: int = 160) -> DigitsData:
    d = digits_data(seed=0, val_fraction=0.0)
    tr = Split(d.train.phases[:n_train], d.train.labels[:n_train])
    te = Split(d.test.phases[:n_test], d.test.labels[:n_test])
    return DigitsData(tr, Split(d.test.phases[:0], d.test.labels[:0]), te)


def test_short_training_run_beats_chance() -> None:
    data = _small_digits()
    cfg = LayeredConfig(
        hidden=32, epochs=4, lr_k=2e-2, loss_scale=4.0, lr_omega=0.0, val_fraction=0.0, seed=1
    )
    run = train_layered(cfg, data)
    assert len(run.history) == 4 and run.best_epoch == 3
    assert run.test_accuracy >= 0.6  # chance is 0.1
    assert run.history[-1].train_loss < run.history[0].train_loss
    again = train_layered(cfg.model_copy(update={"epochs": 1}), data)  # seeded: the same run
    assert np.array_equal(again.history[0].test_accuracy, run.history[0].test_accuracy)


def test_no_lock_raises() -> None:
    data = _small_digits(64)
    cfg = LayeredConfig(hidden=8, epochs=1, basin_jump_rad=1e-15, val_fraction=0.0)
    with pytest.raises(NoLockError, match="none of 64"):
        train_layered(cfg, data)
