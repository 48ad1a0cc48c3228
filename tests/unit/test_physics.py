"""phasegrad_hw.physics: coupling functions, rhs/Jacobian/energy, equilibria, stability."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phasegrad_hw import physics as ph
from phasegrad_hw.physics import compiled
from phasegrad_hw.physics import graphs as nw

H_CASES = [
    ph.SIN,
    ph.CouplingFunction(harmonics=(1.0, 0.3)),
    ph.CouplingFunction(phase_lag=0.3),
    ph.CouplingFunction(harmonics=(1.0, 0.1), offset=0.01, cos_offset=0.02),
]


def _net(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    K = nw.erdos_renyi(n, rng)
    return nw.random_frequencies(n, rng), K


def test_wrap_and_centred() -> None:
    x = np.array([0.0, np.pi, -np.pi, 3 * np.pi + 0.1, -0.5])
    w = ph.wrap(x)
    assert np.all(w >= -np.pi) and np.all(w < np.pi)
    np.testing.assert_allclose(np.exp(1j * w), np.exp(1j * x), atol=1e-12)
    c = ph.centred([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(c.mean(axis=1), 0.0, atol=1e-15)
    np.testing.assert_allclose(c[0], [-2.0, -1.0, 3.0])


@pytest.mark.parametrize("H", H_CASES)
def test_coupling_derivative_matches_finite_difference(H: ph.CouplingFunction) -> None:
    phi = np.linspace(-3.0, 3.0, 41)
    h = 1e-6
    fd = (H.value(phi + h) - H.value(phi - h)) / (2 * h)
    np.testing.assert_allclose(H.derivative(phi), fd, atol=1e-8)
    v, d = H.value_and_derivative(phi)
    np.testing.assert_allclose(v, H.value(phi), atol=1e-15)
    np.testing.assert_allclose(d, H.derivative(phi), atol=1e-15)


def test_coupling_potential_and_oddness() -> None:
    H = ph.CouplingFunction(harmonics=(1.0, 0.5))
    phi = np.linspace(-3, 3, 31)
    h = 1e-6
    np.testing.assert_allclose(
        (H.potential(phi + h) - H.potential(phi - h)) / (2 * h), H.value(phi), atol=1e-8
    )
    assert H.is_odd and not ph.CouplingFunction(phase_lag=0.1).is_odd
    with pytest.raises(ValueError, match="energy"):
        ph.CouplingFunction(offset=0.1).potential(phi)
    with pytest.raises(ValueError, match="harmonics"):
        ph.CouplingFunction(harmonics=())
    with pytest.raises(ValueError, match="non-finite"):
        ph.CouplingFunction(phase_lag=float("nan"))


@pytest.mark.parametrize("H", H_CASES)
@pytest.mark.parametrize("nudge", ["linear", "injection"])
def test_jacobian_matches_finite_difference_of_rhs(H: ph.CouplingFunction, nudge: str) -> None:
    rng = np.random.default_rng(1)
    n = 7
    K = nw.asymmetric(nw.erdos_renyi(n, rng), 0.2, rng)
    th, w = rng.uniform(-np.pi, np.pi, n), rng.normal(0, 0.3, n)
    beta, tgt = rng.uniform(0, 1, n), rng.uniform(-1, 1, n)
    kw = dict(beta=beta, target=tgt, nudge=nudge)
    J = ph.jacobian(th, K, H, **kw)  # type: ignore[arg-type]
    h = 1e-6
    fd = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = h
        fd[:, j] = (ph.rhs(th + e, w, K, H, **kw) - ph.rhs(th - e, w, K, H, **kw)) / (2 * h)  # type: ignore[arg-type]
    np.testing.assert_allclose(J, fd, atol=1e-7)


def test_energy_gradient_is_minus_rhs() -> None:
    w, K = _net(8)
    H = ph.CouplingFunction(harmonics=(1.0, 0.2))
    th = np.random.default_rng(2).uniform(-2, 2, 8)
    h = 1e-6
    grad = np.array(
        [
            (ph.energy(th + h * e, w, K, H) - ph.energy(th - h * e, w, K, H)) / (2 * h)
            for e in np.eye(8)
        ]
    )
    np.testing.assert_allclose(grad, -ph.rhs(th, w, K, H), atol=1e-7)
    with pytest.raises(ValueError, match="symmetric"):
        ph.energy(th, w, nw.asymmetric(K, 0.1, np.random.default_rng(0)))


@pytest.mark.parametrize("n", [2, 6, 15, 80])
def test_solve_equilibrium_is_a_stable_root(n: int) -> None:
    w, K = _net(n, seed=n)
    eq = ph.solve_equilibrium(w, K)
    assert eq.ok and eq.residual <= 1e-12 and eq.theta[0] == 0.0
    F = ph.rhs(eq.theta, w, K)
    assert np.abs(F[1:]).max() <= 1e-12
    J = ph.jacobian(eq.theta, K)[1:, 1:]
    assert np.linalg.eigvalsh(-J)[0] == pytest.approx(float(eq.margin), rel=1e-9)
    assert eq.margin > 0


def test_batched_matches_single_and_reference_choice() -> None:
    rng = np.random.default_rng(3)
    n, B = 9, 5
    Ks = np.stack([nw.erdos_renyi(n, rng) for _ in range(B)])
    W = np.stack([nw.random_frequencies(n, rng) for _ in range(B)])
    eqb = ph.solve_equilibrium(W, Ks)
    for b in range(B):
        e1 = ph.solve_equilibrium(W[b], Ks[b])
        np.testing.assert_allclose(eqb.theta[b], e1.theta, atol=1e-12)
        e3 = ph.solve_equilibrium(W[b], Ks[b], ref=3)
        assert e3.ok and e3.theta[3] == 0.0
        np.testing.assert_allclose(ph.wrap(e3.theta - e3.theta[0] - e1.theta), 0.0, atol=1e-11)
    assert eqb.ok.all() and eqb.margin.shape == (B,)
    # shared K with batched omega
    eqs = ph.solve_equilibrium(W, Ks[0])
    np.testing.assert_allclose(eqs.theta[0], eqb.theta[0], atol=1e-12)


def test_warm_start_converges_in_fewer_iterations() -> None:
    w, K = _net(30, seed=4)
    cold = ph.solve_equilibrium(w, K)
    warm = ph.solve_equilibrium(
        w + 1e-3 * np.random.default_rng(0).normal(size=30), K, theta0=cold.theta
    )
    assert warm.ok and warm.iterations <= cold.iterations


@pytest.mark.parametrize("H", H_CASES[1:])
def test_general_coupling_single_and_batched(H: ph.CouplingFunction) -> None:
    w, K = _net(10, seed=5)
    e1 = ph.solve_equilibrium(w, K, H, frame="free")
    eb = ph.solve_equilibrium(w[None], K, H, frame="free")
    assert e1.ok and eb.ok.all()
    np.testing.assert_allclose(eb.theta[0], e1.theta, atol=1e-12)
    # every oscillator, the reference included, turns at one common frequency Ω
    f = ph.rhs(e1.theta, w, K, H)
    assert np.ptp(f) <= 1e-11


def test_pinned_frame_keeps_reference_row_out() -> None:
    w, K = _net(8, seed=6)
    H = ph.CouplingFunction(harmonics=(1.0, 0.1), offset=0.01)
    eq = ph.solve_equilibrium(w, K, H)
    if eq.converged:
        assert np.abs(ph.rhs(eq.theta, w, K, H)[1:]).max() <= 1e-11


def test_two_oscillators_next_to_unstable_root_are_flagged() -> None:
    K = np.array([[0.0, 1.0], [1.0, 0.0]])
    eq = ph.solve_equilibrium(np.zeros(2), K, theta0=[0.0, 3.0])
    assert eq.converged and not eq.stable and not eq.ok
    assert abs(abs(eq.theta[1]) - np.pi) < 1e-9 and eq.margin < 0
    eqb = ph.solve_equilibrium(np.zeros((2, 2)), K, theta0=[[0.0, 3.0], [0.0, 0.1]])
    assert list(eqb.ok) == [False, True] and list(eqb.converged) == [True, True]


def test_unstable_twisted_ring_state_is_flagged() -> None:
    n = 6  # nearest-neighbour ring; twist q = 2: Δ = 2π·2/6 > π/2 on every edge, unstable
    K = np.zeros((n, n))
    for i in range(n):
        K[i, (i + 1) % n] = K[(i + 1) % n, i] = 1.0
    twist = 2 * np.pi * 2 * np.arange(n) / n
    eq = ph.solve_equilibrium(np.zeros(n), K, theta0=twist + 1e-3)
    assert eq.converged and not eq.stable
    ok = ph.solve_equilibrium(np.zeros(n), K, theta0=2 * np.pi * np.arange(n) / n)  # q = 1
    assert ok.converged and ok.stable


def test_past_locking_threshold_is_not_ok() -> None:
    K = np.array([[0.0, 1.0], [1.0, 0.0]])
    eq = ph.solve_equilibrium(np.array([-3.0, 3.0]), K)
    assert not eq.converged and not eq.ok and eq.residual > 1.0
    eqb = ph.solve_equilibrium(np.array([[-3.0, 3.0], [0.1, -0.1]]), K)
    assert list(eqb.ok) == [False, True]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 12),
    seed=st.integers(0, 10_000),
    spread=st.sampled_from([0.1, 1.0, 5.0, 20.0]),
    p=st.sampled_from([0.3, 0.6, 1.0]),
    start=st.sampled_from(["zero", "random"]),
)
def test_property_never_ok_with_large_residual(
    n: int, seed: int, spread: float, p: float, start: str
) -> None:
    rng = np.random.default_rng(seed)
    K = nw.erdos_renyi(n, rng, p=p, k_scale=1.0)
    w = ph.centred(rng.normal(0, spread, n))
    th0 = None if start == "zero" else rng.uniform(-np.pi, np.pi, n)
    eq = ph.solve_equilibrium(w, K, theta0=th0)
    eqb = ph.solve_equilibrium(np.stack([w, w]), K, theta0=th0)
    for e in (eq,):
        F = ph.rhs(e.theta, w, K)[1:]
        if e.ok:
            assert np.abs(F).max() <= 1e-10
            J = ph.jacobian(e.theta, K)[1:, 1:]
            assert np.linalg.eigvalsh(-J)[0] > 0
        if not e.converged:
            assert np.abs(F).max() > 1e-12
    assert bool(eqb.ok[0]) == bool(eqb.ok[1])
    if eqb.ok[0]:
        assert np.abs(ph.rhs(eqb.theta[0], w, K)[1:]).max() <= 1e-10
    # a spread far beyond the total coupling cannot lock
    if spread >= 20.0 and np.abs(w).max() > 2 * K.sum(axis=1).max():
        assert not eq.ok and not eqb.ok.any()


def test_sparse_agrees_with_dense() -> None:
    rng = np.random.default_rng(8)
    Ks = nw.sparse_ring_network(400, rng)
    w = nw.random_frequencies(400, rng)
    es, ed = ph.solve_equilibrium(w, Ks), ph.solve_equilibrium(w, Ks.toarray())
    assert es.ok and ed.ok and es.residual <= 1e-12
    np.testing.assert_allclose(ph.wrap(es.theta - ed.theta), 0.0, atol=1e-10)
    b = np.zeros(400)
    b[-2:] = 0.5
    t = np.zeros(400)
    t[-2:] = es.theta[-2:] + 0.3
    ns = ph.solve_equilibrium(w, Ks, beta=b, target=t, theta0=es.theta, nudge="injection")
    nd = ph.solve_equilibrium(w, Ks.toarray(), beta=b, target=t, theta0=ed.theta, nudge="injection")
    np.testing.assert_allclose(ph.wrap(ns.theta - nd.theta), 0.0, atol=1e-10)


def test_nudged_states_move_toward_target() -> None:
    w, K = _net(10, seed=9)
    free = ph.solve_equilibrium(w, K)
    b = np.zeros(10)
    b[-1] = 0.3
    t = np.zeros(10)
    t[-1] = free.theta[-1] + 0.5
    for nudge in ("linear", "injection"):
        plus = ph.solve_equilibrium(w, K, beta=b, target=t, theta0=free.theta, nudge=nudge)  # type: ignore[arg-type]
        minus = ph.solve_equilibrium(
            w,
            K,
            beta=b,
            target=t,
            theta0=free.theta,
            nudge=nudge,  # type: ignore[arg-type]
            direction=-1,
        )
        assert plus.ok and minus.ok
        assert plus.theta[-1] > free.theta[-1] > minus.theta[-1]
        F = ph.rhs(plus.theta, w, K, beta=b, target=t, nudge=nudge)  # type: ignore[arg-type]
        assert np.abs(F[1:]).max() <= 1e-12


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(omega=np.zeros(4), K=np.zeros((3, 3))), "K"),
        (dict(omega=np.array([0.0, np.nan, 0.0]), K=np.ones((3, 3))), "omega"),
        (dict(omega=np.zeros(3), K=np.full((3, 3), np.inf)), "K"),
        (dict(omega=np.zeros(3), K=np.ones((3, 3)), beta=-0.1), "beta"),
        (dict(omega=np.zeros(3), K=np.ones((3, 3)), ref=3), "ref"),
        (dict(omega=np.zeros(3), K=np.ones((3, 3)), ref=-1), "ref"),
        (dict(omega=np.zeros(3), K=np.ones((3, 3)), theta0=np.zeros(4)), "theta0"),
        (dict(omega=np.zeros(3), K=np.ones((3, 3)), direction=0), "direction"),
        (dict(omega=np.zeros(3), K=np.ones((3, 3)), nudge="magnetic"), "nudge"),
        (dict(omega=np.zeros(3), K=np.ones((3, 3)), frame="lab"), "frame"),
        (dict(omega=np.zeros(3), K=sp.csr_matrix(np.ones((4, 4)))), "omega"),
        (dict(omega=np.zeros(3), K=sp.csr_matrix(np.ones((3, 3))), ref=5), "ref"),
    ],
)
def test_bad_input_names_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ph.solve_equilibrium(**kwargs)


def test_bad_input_message_carries_value() -> None:
    with pytest.raises(ValueError, match=r"-0\.25"):
        ph.solve_equilibrium(np.zeros(3), np.ones((3, 3)), beta=-0.25)
    with pytest.raises(ValueError, match="7"):
        ph.solve_equilibrium(np.zeros(3), np.ones((3, 3)), ref=7)
    with pytest.raises(ValueError, match="nan"):
        ph.solve_equilibrium(np.array([0.0, np.nan, 1.0]), np.ones((3, 3)))


def test_phase_differences_and_rhs_batch() -> None:
    th = np.array([[0.0, 1.0, 3.0]])
    D = ph.phase_differences(th)
    assert D[0, 0, 2] == 3.0 and D[0, 2, 0] == -3.0
    w, K = _net(5)
    thb = np.random.default_rng(0).uniform(-1, 1, (3, 5))
    rb = ph.rhs(thb, w, K)
    for k in range(3):
        np.testing.assert_allclose(rb[k], ph.rhs(thb[k], w, K), atol=1e-14)


def test_sparse_stability_with_push_away_nudge() -> None:
    rng = np.random.default_rng(10)
    Ks = nw.sparse_ring_network(300, rng, k_scale=1.0)
    w = nw.random_frequencies(300, rng, sigma=0.05)
    free = ph.solve_equilibrium(w, Ks)
    for beta in (0.05, 50.0):  # a weak push keeps the state stable; a huge one cannot
        b = np.zeros(300)
        b[-3:] = beta
        eqs = ph.solve_equilibrium(
            w, Ks, beta=b, target=free.theta, theta0=free.theta, direction=-1
        )
        eqd = ph.solve_equilibrium(
            w, Ks.toarray(), beta=b, target=free.theta, theta0=free.theta, direction=-1
        )
        assert eqs.converged and eqd.converged
        assert bool(eqs.stable) == bool(eqd.stable) == (beta < 1.0)


def test_sparse_network_residual_matches_dense_rhs() -> None:
    rng = np.random.default_rng(11)
    K = nw.asymmetric(nw.erdos_renyi(12, rng), 0.1, rng)
    th, w = rng.uniform(-np.pi, np.pi, 12), rng.normal(0, 0.3, 12)
    net = ph.SparseNetwork.from_matrix(sp.csr_matrix(K))
    assert net.n == 12 and not net.symmetric and len(net.weights) == np.count_nonzero(K)
    np.testing.assert_allclose(net.residual(th, w, ph.SIN), ph.rhs(th, w, K), atol=1e-13)
    assert ph.SparseNetwork.from_matrix(sp.csr_matrix(K + K.T)).symmetric
    with pytest.raises(ValueError, match="square"):
        ph.SparseNetwork.from_matrix(sp.csr_matrix(np.ones((3, 4))))


def test_equilibrium_margin_is_lazy_and_ok_combines_flags() -> None:
    calls = []

    def margin() -> np.ndarray:
        calls.append(1)
        return np.array(2.5)

    eq = ph.Equilibrium(
        np.zeros(3), np.array(0.0), np.array(1), np.array(True), np.array(False), margin
    )
    assert not eq.ok and not calls
    assert float(eq.margin) == 2.5 and float(eq.margin) == 2.5 and len(calls) == 1
    assert "converged=" in repr(eq)


def _numpy_path(monkeypatch: pytest.MonkeyPatch, **kw: object) -> ph.Equilibrium:
    with monkeypatch.context() as m:
        m.setattr(compiled, "_compiled_kernels", lambda: None)
        return ph.solve_equilibrium(**kw)  # type: ignore[arg-type]


def test_compiled_small_path_equals_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numba")
    assert compiled._compiled_kernels() is not None
    rng = np.random.default_rng(2024)
    checked = unlocked = 0
    for trial in range(40):
        n = int(rng.integers(2, 16))
        K = nw.erdos_renyi(n, rng, p=float(rng.uniform(0.4, 1.0)))
        if not nw.is_connected(K):
            continue
        w = nw.random_frequencies(n, rng, sigma=float(rng.choice([0.3, 3.0, 8.0])))
        H = ph.SIN if trial % 3 else ph.CouplingFunction(harmonics=(0.7,))
        ref = int(rng.integers(0, n)) if trial % 4 == 0 else 0
        free_np = _numpy_path(monkeypatch, omega=w, K=K, coupling=H, ref=ref)
        free = ph.solve_equilibrium(w, K, H, ref=ref)
        th0 = rng.normal(0.0, 1.0, n)
        cases = [
            (free, free_np),
            (
                ph.solve_equilibrium(w, K, H, ref=ref, theta0=th0),
                _numpy_path(monkeypatch, omega=w, K=K, coupling=H, ref=ref, theta0=th0),
            ),
        ]
        if free_np.ok:
            outs = rng.choice(n, size=min(2, n - 1), replace=False)
            b = np.zeros(n)
            b[outs] = float(rng.uniform(1e-3, 0.5))
            t = free_np.theta + rng.normal(0.0, 0.3, n)
            for nudge in ("linear", "injection"):
                for direction in (1, -1):
                    kw = dict(
                        omega=w,
                        K=K,
                        coupling=H,
                        ref=ref,
                        beta=b,
                        target=t,
                        theta0=free_np.theta,
                        nudge=nudge,
                        direction=direction,
                    )
                    cases.append(
                        (
                            ph.solve_equilibrium(**kw),  # type: ignore[arg-type]
                            _numpy_path(monkeypatch, **kw),
                        )
                    )
            cases.append(
                (
                    ph.solve_equilibrium(w, K, H, ref=ref, beta=0.2, target=0.1),
                    _numpy_path(
                        monkeypatch, omega=w, K=K, coupling=H, ref=ref, beta=0.2, target=0.1
                    ),
                )
            )
        for got, want in cases:
            unlocked += not want.converged
            assert bool(got.converged) == bool(want.converged)
            if want.converged:
                assert bool(got.stable) == bool(want.stable)
                np.testing.assert_allclose(got.theta, want.theta, rtol=0, atol=1e-12)
                assert float(got.residual) <= 1e-12
                assert abs(float(got.margin) - float(want.margin)) <= 1e-9
                assert abs(int(got.iterations) - int(want.iterations)) <= 1
            assert got.theta[ref] == 0.0
            checked += 1
    assert checked >= 60 and unlocked >= 3


def _general_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, ph.CouplingFunction]:
    """A random network with asymmetric K (half the time) and a non-odd H (harmonics, lag,
    offsets: what the emulated CMOS and optical chips solve)."""
    n = int(rng.integers(2, 18))
    K = nw.erdos_renyi(n, rng, p=float(rng.uniform(0.4, 1.0)))
    if rng.random() < 0.5:
        K = K * rng.uniform(0.5, 1.5, K.shape)
    if rng.random() < 0.2:
        K[np.diag_indices(n)] = 0.3  # a self-coupling adds K_ii·H(0)
    nh = int(rng.integers(1, 4))
    H = ph.CouplingFunction(
        harmonics=tuple(float(a) for a in rng.uniform(-0.3, 1.0, nh)),
        phase_lag=float(rng.choice([0.0, 0.3])),
        offset=float(rng.choice([0.0, 0.05])),
        cos_offset=float(rng.choice([0.0, 0.1])),
    )
    return nw.random_frequencies(n, rng, sigma=float(rng.choice([0.1, 0.5, 2.0]))), K, H


def test_compiled_dense_path_equals_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any H, any K, both frames, both nudges, any reference: the dense kernel finds the numpy
    dense path's state (converged, stable, θ, margin, iterations)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(77)
    checked = unlocked = free_frames = 0
    for _ in range(160):
        w, K, H = _general_case(rng)
        n = len(w)
        kw: dict[str, object] = dict(omega=w, K=K, coupling=H, ref=int(rng.integers(0, n)))
        kw["frame"] = str(rng.choice(["pinned", "free"]))
        if rng.random() < 0.5:
            kw["theta0"] = rng.normal(0.0, 0.5, n)
        if rng.random() < 0.6:
            b = np.zeros(n)
            b[rng.choice(n, size=min(2, n), replace=False)] = float(rng.uniform(0.05, 0.5))
            kw.update(beta=b, target=rng.normal(0.0, 0.5, n))
            kw.update(nudge=str(rng.choice(["linear", "injection"])))
            kw.update(direction=int(rng.choice([1, -1])))
        got = ph.solve_equilibrium(**kw)  # type: ignore[arg-type]
        want = _numpy_path(monkeypatch, **kw)
        assert got.path == "compiled" and want.path == "dense"
        unlocked += not want.converged
        assert bool(got.converged) == bool(want.converged)
        if want.converged:
            free_frames += kw["frame"] == "free" and not H.is_odd
            assert bool(got.stable) == bool(want.stable)
            np.testing.assert_allclose(got.theta, want.theta, rtol=0, atol=1e-12)
            assert float(got.residual) <= max(1e-12, 10 * float(want.residual))
            assert abs(float(got.margin) - float(want.margin)) <= 1e-9
            assert abs(int(got.iterations) - int(want.iterations)) <= 1
        assert got.theta[int(kw["ref"])] == 0.0  # type: ignore[call-overload]
        checked += 1
    assert checked == 160 and unlocked >= 3 and free_frames >= 20


def test_compiled_small_path_unlocked_network_is_not_ok() -> None:
    pytest.importorskip("numba")
    n = 9
    K = 0.05 * (np.ones((n, n)) - np.eye(n))
    w = np.linspace(-2.0, 2.0, n)
    eq = ph.solve_equilibrium(w, K)
    assert not eq.converged and not eq.ok and np.all(np.isfinite(eq.theta))
    b = np.full(n, 0.1)
    eq = ph.solve_equilibrium(w, K, beta=b, target=np.zeros(n), nudge="injection")
    assert not eq.ok and np.all(np.isfinite(eq.theta))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(omega=np.array([0.0, np.nan, 0.0]), K=np.ones((3, 3))),
        dict(omega=np.zeros(3), K=np.array([[0, 1, np.inf], [1, 0, 1], [1, 1, 0.0]])),
        dict(omega=np.zeros(3), K=np.ones((3, 3)), beta=np.array([0.0, -0.1, 0.0])),
        dict(omega=np.zeros(3), K=np.ones((3, 3)), beta=0.1, target=np.array([0, np.nan, 0])),
        dict(omega=np.zeros(3), K=np.ones((3, 3)), theta0=np.array([0.0, np.inf, 0.0])),
        dict(omega=np.zeros(3), K=np.ones((3, 3)), ref=np.int64(3)),
    ],
)
def test_compiled_small_path_keeps_bad_input_errors(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ph.solve_equilibrium(**kwargs)


def test_compiled_asymmetric_sine_network_takes_the_dense_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """H = sin with an asymmetric K: the edge kernel declines, the dense kernel solves it."""
    pytest.importorskip("numba")
    w, K = _net(7, seed=4)
    K[1, 2] *= 1.3
    got = ph.solve_equilibrium(w, K)
    want = _numpy_path(monkeypatch, omega=w, K=K)
    assert got.path == "compiled" and want.path == "dense" and bool(got.ok) and bool(want.ok)
    np.testing.assert_allclose(got.theta, want.theta, rtol=0, atol=1e-12)
