"""phasegrad_hw.physics.gradients against independent references (finite differences, IFT)."""

from __future__ import annotations

import numpy as np
import pytest

from phasegrad_hw import physics as ph
from phasegrad_hw.physics import gradients as gr
from phasegrad_hw.physics import graphs as nw


def _setup(
    n: int = 12, seed: int = 0, kind: str = "linear", H: ph.CouplingFunction = ph.SIN
) -> tuple:
    rng = np.random.default_rng(seed)
    K = nw.erdos_renyi(n, rng)
    w = nw.random_frequencies(n, rng)
    free = ph.solve_equilibrium(w, K, H)
    assert free.ok
    outs = np.array([n - 2, n - 1])
    tgt = free.theta[outs] + np.array([0.3, -0.2])
    return w, K, free, outs, tgt


def _nudged(w, K, free, outs, tgt, beta, kind="linear", direction=1, H=ph.SIN):  # type: ignore[no-untyped-def]
    b, t = gr.nudge_vectors(len(w), outs, tgt, beta)
    eq = ph.solve_equilibrium(
        w, K, H, beta=b, target=t, theta0=free.theta, nudge=kind, direction=direction
    )
    assert eq.ok
    return eq.theta


def test_loss_and_its_theta_gradient() -> None:
    rng = np.random.default_rng(1)
    th = rng.uniform(-2, 2, 6)
    outs, tgt = np.array([4, 5]), np.array([0.3, -1.0])
    h = 1e-6
    for kind in ("linear", "injection"):
        e = gr.loss_grad_theta(th, outs, tgt, kind)  # type: ignore[arg-type]
        fd = np.array(
            [
                (gr.loss(th + h * u, outs, tgt, kind) - gr.loss(th - h * u, outs, tgt, kind))  # type: ignore[arg-type]
                / (2 * h)
                for u in np.eye(6)
            ]
        )
        np.testing.assert_allclose(e, fd, atol=1e-8)
    assert gr.loss(th, outs, th[outs]) == 0.0
    with pytest.raises(ValueError, match="kind"):
        gr.loss(th, outs, tgt, "cubic")  # type: ignore[arg-type]


def test_nudge_vectors() -> None:
    b, t = gr.nudge_vectors(5, [3, 4], [0.1, 0.2], 0.5)
    assert list(b) == [0, 0, 0, 0.5, 0.5] and list(t) == [0, 0, 0, 0.1, 0.2]
    b, t = gr.nudge_vectors(5, [3, 4], np.ones((7, 2)), 0.5)
    assert t.shape == (7, 5) and np.all(t[:, 3:] == 1.0)
    with pytest.raises(ValueError, match="beta"):
        gr.nudge_vectors(5, [3], [0.1], -1.0)


@pytest.mark.parametrize("n", [6, 15, 40])
def test_two_phase_matches_fd_and_ift(n: int) -> None:
    w, K, free, outs, tgt = _setup(n, seed=n)
    beta = 1e-4
    tp = gr.two_phase_gradient(free.theta, _nudged(w, K, free, outs, tgt, beta), beta)
    fd = gr.finite_difference_gradient(w, K, outs, tgt)
    ift = gr.implicit_gradient(free.theta, K, gr.loss_grad_theta(free.theta, outs, tgt))
    assert gr.cosine(tp, fd) >= 1 - 1e-9 and gr.cosine(ift, fd) >= 1 - 1e-12
    assert abs(gr.scale_error(tp, ift)) < 1e-3  # O(β)
    assert tp[0] == fd[0] == ift[0] == 0.0


def test_centred_is_second_order_one_sided_first_order() -> None:
    w, K, free, outs, tgt = _setup(12, seed=3)
    ift = gr.implicit_gradient(free.theta, K, gr.loss_grad_theta(free.theta, outs, tgt))
    err1, err2 = [], []
    for beta in (0.08, 0.04):
        plus = _nudged(w, K, free, outs, tgt, beta)
        minus = _nudged(w, K, free, outs, tgt, beta, direction=-1)
        err1.append(np.linalg.norm(gr.two_phase_gradient(free.theta, plus, beta) - ift))
        err2.append(np.linalg.norm(gr.two_phase_gradient(free.theta, plus, beta, minus) - ift))
    assert err1[0] / err1[1] == pytest.approx(2.0, rel=0.1)
    assert err2[0] / err2[1] == pytest.approx(4.0, rel=0.1)
    assert err2[0] < err1[0] / 10


def test_injection_nudge_matches_its_loss() -> None:
    w, K, free, outs, tgt = _setup(10, seed=4)
    beta = 1e-3
    plus = _nudged(w, K, free, outs, tgt, beta, kind="injection")
    minus = _nudged(w, K, free, outs, tgt, beta, kind="injection", direction=-1)
    tp = gr.two_phase_gradient(free.theta, plus, beta, minus)
    fd = gr.finite_difference_gradient(w, K, outs, tgt, kind="injection")
    assert gr.cosine(tp, fd) >= 1 - 1e-9
    assert abs(gr.scale_error(tp, fd)) < 1e-5


def _fd_coupling(w, K, outs, tgt, edges, free_theta, eps=1e-6, H=ph.SIN):  # type: ignore[no-untyped-def]
    g = []
    for i, j in edges:
        vals = []
        for s in (1, -1):
            Kp = K.copy()
            Kp[i, j] += s * eps
            Kp[j, i] += s * eps
            vals.append(gr.loss(ph.solve_equilibrium(w, Kp, H, theta0=free_theta).theta, outs, tgt))
        g.append((vals[0] - vals[1]) / (2 * eps))
    return np.array(g)


@pytest.mark.parametrize("H", [ph.SIN, ph.CouplingFunction(harmonics=(1.0, 0.3))])
def test_coupling_gradients_match_fd_on_K(H: ph.CouplingFunction) -> None:
    w, K, free, outs, tgt = _setup(8, seed=5, H=H)
    edges = np.argwhere(np.triu(K) > 0)[:10]
    fd = _fd_coupling(w, K, outs, tgt, edges, free.theta, H=H)
    g_w = gr.implicit_gradient(free.theta, K, gr.loss_grad_theta(free.theta, outs, tgt), H)
    imp = gr.coupling_gradient_implicit(free.theta, g_w, edges, H)
    np.testing.assert_allclose(imp, fd, atol=1e-7 * np.abs(fd).max())
    beta = 1e-3
    plus = _nudged(w, K, free, outs, tgt, beta, H=H)
    minus = _nudged(w, K, free, outs, tgt, beta, direction=-1, H=H)
    tp = gr.coupling_gradient_two_phase(free.theta, plus, edges, beta, minus, H)
    assert gr.cosine(tp, fd) >= 1 - 1e-8
    one = gr.coupling_gradient_two_phase(free.theta, plus, edges, beta, coupling=H)
    assert gr.cosine(one, fd) >= 1 - 1e-4


def test_fd_fallback_for_asymmetric_K_matches_pinned_ift() -> None:
    rng = np.random.default_rng(6)
    K = nw.asymmetric(nw.erdos_renyi(10, rng), 0.2, rng)
    w = nw.random_frequencies(10, rng)
    free = ph.solve_equilibrium(w, K)
    assert free.ok
    outs, tgt = np.array([9]), free.theta[[9]] + 0.2
    fd = gr.finite_difference_gradient(w, K, outs, tgt)
    ift = gr.implicit_gradient(free.theta, K, gr.loss_grad_theta(free.theta, outs, tgt))
    assert gr.cosine(fd, ift) >= 1 - 1e-10


def test_implicit_sparse_matches_dense_and_batched() -> None:
    rng = np.random.default_rng(7)
    Ks = nw.sparse_ring_network(200, rng)
    w = nw.random_frequencies(200, rng)
    free = ph.solve_equilibrium(w, Ks)
    e = gr.loss_grad_theta(free.theta, [198, 199], free.theta[[198, 199]] + 0.1)
    gs = gr.implicit_gradient(free.theta, Ks, e)
    gd = gr.implicit_gradient(free.theta, Ks.toarray(), e)
    np.testing.assert_allclose(gs, gd, atol=1e-10 * np.abs(gd).max())
    gb = gr.implicit_gradient(
        np.stack([free.theta] * 2), np.stack([Ks.toarray()] * 2), np.stack([e] * 2)
    )
    np.testing.assert_allclose(gb[1], gd, atol=1e-12)


def test_displacements_are_wrapped() -> None:
    free = np.array([0.0, np.pi - 0.01])
    nudged = np.array([0.0, -np.pi + 0.01])  # moved +0.02 rad across the cut
    g = gr.two_phase_gradient(free, nudged, 0.1)
    assert g[1] == pytest.approx(-0.2)


def test_cosine_and_scale_error() -> None:
    a = np.array([1.0, 2.0, 3.0])
    assert gr.cosine(a, 2 * a) == pytest.approx(1.0)
    assert gr.cosine(a, -a) == pytest.approx(-1.0)
    assert gr.scale_error(1.01 * a, a) == pytest.approx(0.01)


def test_bad_inputs_name_the_argument() -> None:
    th = np.zeros(4)
    with pytest.raises(ValueError, match="beta"):
        gr.two_phase_gradient(th, th, 0.0)
    with pytest.raises(ValueError, match="beta"):
        gr.coupling_gradient_two_phase(th, th, [[0, 1]], -1.0)
    with pytest.raises(ValueError, match="theta_free"):
        gr.two_phase_gradient(np.zeros(3), th, 0.1)
    with pytest.raises(ValueError, match="theta_nudged"):
        gr.two_phase_gradient(th, np.array([0, np.nan, 0, 0]), 0.1)
    with pytest.raises(ValueError, match="ref"):
        gr.two_phase_gradient(th, th, 0.1, ref=9)
    with pytest.raises(ValueError, match="edges"):
        gr.coupling_gradient_two_phase(th, th, [0, 1], 0.1)
    with pytest.raises(ValueError, match="dL_dtheta"):
        gr.implicit_gradient(th, np.ones((4, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="eps"):
        gr.finite_difference_gradient(th, np.ones((4, 4)), [3], [0.0], eps=0.0)
    with pytest.raises(ValueError, match="omega_c"):
        gr.finite_difference_gradient(np.zeros((2, 4)), np.ones((4, 4)), [3], [0.0])
