"""The solver family: every path of solve_equilibrium finds the same locked states, records
which path ran, reads the one Newton policy; the retry ladder (docs/design.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from phasegrad_hw import physics as ph
from phasegrad_hw.physics import graphs as nw
from phasegrad_hw.physics.edge import EdgeNetwork, solve_edges
from phasegrad_hw.physics.ladder import COLD, FAST, Nudge, solve_locked
from phasegrad_hw.physics.policy import NewtonPolicy

ALL = ["dense", "edge", "sparse", "compiled", "auto"]
BATCHED = ["dense", "edge", "auto"]
NUDGES = [None, ("linear", 1), ("linear", -1), ("injection", 1), ("injection", -1)]


def _case(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random connected ER network (p random), its frequencies, a nudge (β, target)."""
    rng = np.random.default_rng([seed, n])
    K = nw.erdos_renyi(n, rng, p=float(rng.uniform(0.3, 0.9)))
    w = nw.random_frequencies(n, rng, sigma=float(rng.choice([0.3, 1.0])))
    b = np.zeros(n)
    b[rng.choice(n, size=2, replace=False)] = float(rng.uniform(0.05, 0.5))
    return w, K, b, rng.normal(0.0, 0.5, n)


def _kwargs(nudge: tuple[str, int] | None, b: np.ndarray, t: np.ndarray) -> dict:
    if nudge is None:
        return {}
    return {"beta": b, "target": t, "nudge": nudge[0], "direction": nudge[1]}


def _residual(theta: np.ndarray, w: np.ndarray, K: np.ndarray, kw: dict) -> float:
    """max |dθ/dt| off the reference (reference 0), from the core rhs (independent check)."""
    b = kw.get("beta")
    nk = {} if b is None else {"beta": b * kw["direction"], "target": kw["target"]}
    return float(np.abs(ph.rhs(theta, w, K, nudge=kw.get("nudge", "linear"), **nk)[1:]).max())


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("nudge", NUDGES)
def test_every_path_finds_the_same_single_network_state(method: str, nudge: tuple | None) -> None:
    checked = 0
    for seed in range(6):
        n = [5, 9, 14, 23, 31, 40][seed]
        w, K, b, t = _case(seed, n)
        kw = _kwargs(nudge, b, t)
        want = ph.solve_equilibrium(w, K, method="dense", **kw)
        if not want.ok:
            continue
        Km = sp.csr_matrix(K) if method == "sparse" else K
        got = ph.solve_equilibrium(w, Km, method=method, **kw)  # type: ignore[arg-type]
        assert got.path == ("compiled" if method == "auto" else method)
        assert bool(got.ok)
        np.testing.assert_allclose(got.theta, want.theta, rtol=0, atol=1e-10)
        assert _residual(got.theta, w, K, kw) <= 1e-10
        assert got.theta[0] == 0.0
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("method", BATCHED)
@pytest.mark.parametrize("nudge", NUDGES)
def test_batched_paths_match_one_by_one(method: str, nudge: tuple | None) -> None:
    n, B = 12, 7
    rng = np.random.default_rng(5)
    Ks = np.stack([nw.erdos_renyi(n, rng, p=0.5) for _ in range(B)])
    W = np.stack([nw.random_frequencies(n, rng) for _ in range(B)])
    b = np.zeros(n)
    b[[n - 2, n - 1]] = 0.3
    T = rng.normal(0.0, 0.5, (B, n))
    kws = [_kwargs(nudge, b, T[i]) for i in range(B)]
    kwb = _kwargs(nudge, b, T)
    got = ph.solve_equilibrium(W, Ks, method=method, theta0=np.zeros((B, n)), **kwb)
    assert got.path == ("dense" if method == "auto" else method)
    assert got.theta.shape == (B, n) and got.ok.shape == (B,)
    for i in range(B):
        one = ph.solve_equilibrium(W[i], Ks[i], method="dense", **kws[i])
        assert bool(got.ok[i]) == bool(one.ok)
        if one.ok:
            np.testing.assert_allclose(got.theta[i], one.theta, rtol=0, atol=1e-10)
            assert _residual(got.theta[i], W[i], Ks[i], kws[i]) <= 1e-10


def test_edge_and_dense_agree_on_stability_of_an_unstable_state() -> None:
    """The twisted state of a ring is a root but not stable, on every path that checks."""
    n = 8
    K = np.zeros((n, n))
    for i in range(n):
        K[i, (i + 1) % n] = K[(i + 1) % n, i] = 1.0
    twist = 2 * np.pi * 3 * np.arange(n) / n  # |Δ| = 3π/4 on every edge: cos < 0
    for method in ("dense", "edge", "sparse"):
        Km = sp.csr_matrix(K) if method == "sparse" else K
        eq = ph.solve_equilibrium(np.zeros(n), Km, theta0=twist, method=method)  # type: ignore[arg-type]
        assert bool(eq.converged) and not bool(eq.stable), method


@pytest.mark.parametrize("method", ["dense", "edge", "sparse"])
def test_every_path_reads_the_policy(method: str) -> None:
    """A smaller trust region means more Newton steps from a cold start, on every path."""
    rng = np.random.default_rng(3)
    K = nw.erdos_renyi(12, rng, p=0.5, k_scale=0.5)  # weak coupling: phases spread over 1 rad
    w = nw.random_frequencies(12, rng, sigma=0.3)
    Km = sp.csr_matrix(K) if method == "sparse" else K
    base = ph.solve_equilibrium(w, Km, method=method)  # type: ignore[arg-type]
    assert float(np.abs(base.theta).max()) > 0.5
    small = ph.solve_equilibrium(w, Km, method=method, policy=NewtonPolicy(trust_rad=0.05))  # type: ignore[arg-type]
    assert small.ok and int(small.iterations) > int(base.iterations) + 5
    np.testing.assert_allclose(small.theta, base.theta, rtol=0, atol=1e-10)


def test_compiled_kernel_policy_round_trips_through_its_array() -> None:
    """The compiled path hands the kernel its policy as an array; unpacked in the kernel it is
    the same :class:`Newton` field by field (a new field without a slot would fail here), and
    a solve's tol/max_iter reach the kernel (fewer iterations allowed: not converged)."""
    kern = pytest.importorskip("phasegrad_hw.physics._kernels")
    pol = kern.Newton(1e-11, 37, 0.7, 1e-3, 9, 64.0, 1e-9, 6, 1e-13)
    back = kern.policy_from_array(kern.policy_array(pol))
    assert tuple(back) == tuple(pol)
    assert [type(v) for v in back] == [type(v) for v in pol]
    rng = np.random.default_rng(5)
    K = nw.erdos_renyi(9, rng, p=0.6, k_scale=0.5)
    w = nw.random_frequencies(9, rng, sigma=0.3)
    full = ph.solve_equilibrium(w, K, method="compiled")
    short = ph.solve_equilibrium(w, K, method="compiled", max_iter=1)
    assert full.ok and int(full.iterations) > 1 and not bool(short.converged)


def test_method_errors() -> None:
    w, K, _, _ = _case(1, 9)
    with pytest.raises(ValueError, match="method"):
        ph.solve_equilibrium(w, K, method="newton")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compiled"):
        ph.solve_equilibrium(w, K, method="compiled", policy=NewtonPolicy(trust_rad=0.5))
    with pytest.raises(ValueError, match="compiled"):  # one network only
        ph.solve_equilibrium(np.stack([w, w]), K, method="compiled")
    Ka = K.copy()
    Ka[0, 1] *= 1.1
    with pytest.raises(ValueError, match="symmetric"):
        ph.solve_equilibrium(w, Ka, method="edge")
    with pytest.raises(ValueError, match="odd"):
        ph.solve_equilibrium(w, K, ph.CouplingFunction(phase_lag=0.1), method="edge")
    with pytest.raises(ValueError, match="omega"):
        ph.solve_equilibrium(np.stack([w, w]), K, method="sparse")
    with pytest.raises(ValueError, match="omega"):  # bad input keeps its usual error
        ph.solve_equilibrium(np.r_[w[:-1], np.nan], K, method="compiled")


def test_free_frame_of_a_symmetric_network_is_the_centred_pinned_state() -> None:
    w, K, _, _ = _case(2, 14)
    shifted = w + 0.7  # not centred: the free frame turns at Ω = mean(ω)
    free = ph.solve_equilibrium(shifted, K, frame="free")
    pinned = ph.solve_equilibrium(w, K)
    np.testing.assert_allclose(free.theta, pinned.theta, rtol=0, atol=1e-10)
    f = ph.rhs(free.theta, shifted, K)
    assert np.ptp(f) <= 1e-10 and abs(float(f.mean()) - float(shifted.mean())) <= 1e-10


def test_edge_network_from_matrix_and_back() -> None:
    _, K, _, _ = _case(4, 10)
    net, k = EdgeNetwork.from_matrix(K, ref=3)
    assert k.shape == (1, len(net.ei)) and np.all(net.ei < net.ej)
    np.testing.assert_array_equal(net.dense(k)[0], K)
    assert net.connected and 3 not in net.keep


def test_ladder_fast_rung_and_cold_rescue() -> None:
    """Warm start at a stable state: the fast edge rung finishes. Warm start at an unstable
    root (the twisted ring): fast and damped warm stay on it, the cold rung finds the
    synchronous state."""
    n = 8
    ring = np.zeros((n, n))
    for i in range(n):
        ring[i, (i + 1) % n] = ring[(i + 1) % n, i] = 1.0
    net, k = EdgeNetwork.from_matrix(ring)
    W = np.zeros((2, n))
    th0 = np.stack([np.zeros(n), 2 * np.pi * 3 * np.arange(n) / n])
    K2 = np.stack([ring, ring])
    res = solve_locked(W, th0, K=K2, edges=net, k=np.repeat(k, 2, axis=0))
    assert res.ok.all() and list(res.stage) == [FAST, COLD]
    np.testing.assert_allclose(res.theta[1], np.zeros(n), atol=1e-10)
    # the same without the edges (damped rungs only) and with a nudge both ways
    b = np.zeros((2, n))
    b[:, -1] = 0.2
    tgt = np.full((2, n), 0.3)
    for d in (1, -1):
        r1 = solve_locked(W, th0, K=K2, nudge=Nudge(b, tgt, "injection", d))
        nud = Nudge(b, tgt, "injection", d)
        r2 = solve_locked(W, th0, edges=net, k=np.repeat(k, 2, axis=0), nudge=nud)
        assert r1.ok.all() and r2.ok.all()
        np.testing.assert_allclose(r1.theta, r2.theta, rtol=0, atol=1e-10)


def test_edge_fast_mode_stops_after_fast_iters() -> None:
    w, K, _, _ = _case(5, 15)
    net, k = EdgeNetwork.from_matrix(K)
    eq = solve_edges(net, w[None], k, None, damped=False, policy=NewtonPolicy(fast_iters=1))
    assert int(eq.iterations[0]) == 1 and not eq.converged[0]
    eq = solve_edges(net, w[None], k, None, damped=False)
    want = ph.solve_equilibrium(w, K, method="dense")
    assert eq.ok[0] and eq.path == "edge"
    np.testing.assert_allclose(eq.theta[0], want.theta, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shuffled", [False, True])
def test_sparse_jacobian_pattern_matches_the_dense_jacobian(shuffled: bool) -> None:
    """The CSR pattern of J̃ is built once per solve (diagonal merged into the sorted edge
    list, or sorted when the edges come unsorted); values equal the dense jacobian."""
    from phasegrad_hw.physics.sparse import _SparseSystem

    w, K, b, t = _case(3, 23)
    net = ph.SparseNetwork.from_matrix(sp.csr_matrix(K))
    if shuffled:
        p = np.random.default_rng(0).permutation(len(net.rows))
        net = ph.SparseNetwork(net.n, net.rows[p], net.cols[p], net.weights[p], net.symmetric)
    theta = np.random.default_rng(1).normal(0.0, 0.5, 23)
    for r in (0, 7):
        sys = _SparseSystem(net, w, ph.SIN, r, -b, t, "injection")
        J = sys.jacobian(theta)[0]
        keep = np.flatnonzero(np.arange(23) != r)
        want = ph.jacobian(theta, K, beta=-b, target=t, nudge="injection")[np.ix_(keep, keep)]
        np.testing.assert_allclose(J.toarray(), want, rtol=0, atol=1e-12)
        np.testing.assert_allclose((-sys.jacobian(theta, -1.0)[0]).toarray(), want, atol=1e-12)


def test_compiled_path_takes_numpy_number_tolerances() -> None:
    """tol as a numpy scalar or 0-d array (what a config or a computation hands over) runs the
    same compiled solve as a float."""
    w, K, _, _ = _case(3, 9)
    want = ph.solve_equilibrium(w, K, tol=1e-11)
    for tol in (np.float64(1e-11), np.array(1e-11)):
        got = ph.solve_equilibrium(w, K, tol=tol)  # type: ignore[arg-type]
        assert got.path == want.path == "compiled"
        np.testing.assert_array_equal(got.theta, want.theta)
