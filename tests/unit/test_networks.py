"""phasegrad_hw.physics.graphs generators."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from phasegrad_hw.physics import graphs as nw


def test_erdos_renyi_is_symmetric_connected_and_scaled() -> None:
    rng = np.random.default_rng(0)
    K = nw.erdos_renyi(30, rng, p=0.6, k_scale=5.0)
    assert np.array_equal(K, K.T) and np.all(np.diag(K) == 0) and nw.is_connected(K)
    vals = K[np.triu(K) > 0]
    assert vals.min() >= 2.5 and vals.max() <= 7.5
    density = (K > 0).sum() / (30 * 29)
    assert 0.45 < density < 0.75
    with pytest.raises(ValueError, match="n"):
        nw.erdos_renyi(1, rng)
    with pytest.raises(ValueError, match="p"):
        nw.erdos_renyi(5, rng, p=0.0)


def test_is_connected_dense_and_sparse() -> None:
    K = np.zeros((4, 4))
    K[0, 1] = K[1, 0] = K[2, 3] = K[3, 2] = 1.0
    assert not nw.is_connected(K) and not nw.is_connected(sp.csr_matrix(K))
    K[1, 2] = K[2, 1] = 1.0
    assert nw.is_connected(K) and nw.is_connected(sp.csr_matrix(K))


def test_random_frequencies_are_centred() -> None:
    w = nw.random_frequencies(1000, np.random.default_rng(1), sigma=0.3)
    assert abs(w.mean()) < 1e-15 and 0.27 < w.std() < 0.33


def test_asymmetric_modes() -> None:
    rng = np.random.default_rng(2)
    K = nw.erdos_renyi(12, rng)
    A = nw.asymmetric(K, 0.2, np.random.default_rng(3))
    edge = K > 0
    assert np.all((A > 0) == edge)
    np.testing.assert_allclose((A + A.T)[edge], (K + K.T)[edge])  # pair means unchanged
    rel = (A - A.T)[edge] / (A + A.T)[edge]
    assert np.abs(rel).max() <= 0.2 and np.abs(rel).max() > 0.1
    B = nw.asymmetric(K, 0.2, np.random.default_rng(3), mode="independent")
    assert np.all(np.abs(B[edge] / K[edge] - 1) <= 0.2) and not np.allclose(B, B.T)
    assert np.array_equal(nw.asymmetric(K, 0.0, rng), K)
    with pytest.raises(ValueError, match="fraction"):
        nw.asymmetric(K, -0.1, rng)
    with pytest.raises(ValueError, match="mode"):
        nw.asymmetric(K, 0.1, rng, mode="other")  # type: ignore[arg-type]


def test_sparse_ring_network() -> None:
    K = nw.sparse_ring_network(2000, np.random.default_rng(4), mean_degree=10.0)
    assert sp.issparse(K) and K.shape == (2000, 2000)
    assert (abs(K - K.T)).max() == 0 and K.diagonal().max() == 0
    deg = (K > 0).sum(axis=1)
    assert 8.5 < deg.mean() < 10.5 and nw.is_connected(K)
    with pytest.raises(ValueError, match="n"):
        nw.sparse_ring_network(2, np.random.default_rng(0))
