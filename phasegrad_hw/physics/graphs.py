"""Random network generators used by verification, benchmarks and tests.

Erdős–Rényi coupling graphs follow the seed paper's identity check (docs/design.md §2,
arXiv 2604.10272): edge probability p, K_ij = K_ji = k_scale·U(0.5, 1.5) on each edge,
ω ~ N(0, σ²). Draws are repeated until the graph is connected (a disconnected graph has no
locked state in one rotating frame).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from phasegrad_hw.physics.coupling import Array, centred


def is_connected(K: Array | sp.spmatrix | sp.sparray) -> bool:
    """True if the undirected graph of non-zero couplings is connected."""
    A = sp.csr_matrix(K) if sp.issparse(K) else sp.csr_matrix(np.asarray(K) != 0)
    return int(connected_components(A, directed=False)[0]) == 1


def erdos_renyi(
    n: int, rng: np.random.Generator, p: float = 0.6, k_scale: float = 5.0, max_tries: int = 1000
) -> Array:
    """Symmetric connected ER coupling matrix (N, N), K = k_scale·U(0.5, 1.5) on edges."""
    if n < 2:
        raise ValueError(f"n: {n} oscillators; need at least 2")
    if not 0 < p <= 1:
        raise ValueError(f"p: {p} must be in (0, 1]")
    for _ in range(max_tries):
        A = np.triu(rng.random((n, n)) < p, 1)
        K = k_scale * rng.uniform(0.5, 1.5, (n, n)) * A
        K = K + K.T
        if is_connected(K):
            return K
    raise RuntimeError(f"erdos_renyi: no connected graph in {max_tries} draws (n={n}, p={p})")


def random_frequencies(n: int, rng: np.random.Generator, sigma: float = 0.3) -> Array:
    """Centred natural frequencies ω^c, ω ~ N(0, σ²)."""
    return centred(rng.normal(0.0, sigma, n))


def asymmetric(
    K: Array,
    fraction: float,
    rng: np.random.Generator,
    mode: Literal["antisymmetric", "independent"] = "antisymmetric",
) -> Array:
    """K with "``fraction``·100 % random asymmetry".

    ``antisymmetric`` (default): each coupled pair i < j gets u ~ U(−1, 1) and
    K_ij ← K_ij (1 + fraction·u), K_ji ← K_ji (1 − fraction·u), so the relative asymmetry
    (K_ij − K_ji)/(K_ij + K_ji) is uniform on [−fraction, fraction] and the mean coupling of
    the pair is unchanged. With a one-output loss this reproduces the published figure
    (arXiv 2604.10272; N = 15: cosine 0.99977 / 0.99903 / 0.99577 at 5 / 10 / 20 %)
    to within 1e-3 (1000-network means 0.99978 / 0.99913 / 0.99652, pinned-reference
    system). ``independent``: K_ij ← K_ij (1 + fraction·u_ij), u_ij ~ U(−1, 1) for every
    direction separately (pair-mean changes too; ≈2× smaller antisymmetric part).
    """
    if not np.isfinite(fraction) or fraction < 0:
        raise ValueError(f"fraction: {fraction} must be finite and >= 0")
    if mode == "independent":
        return K * (1.0 + fraction * rng.uniform(-1.0, 1.0, K.shape))
    if mode != "antisymmetric":
        raise ValueError(f"mode: {mode!r}; use 'antisymmetric' or 'independent'")
    u = np.triu(rng.uniform(-1.0, 1.0, K.shape), 1)
    return K * (1.0 + fraction * (u - u.T))


def sparse_ring_network(
    n: int, rng: np.random.Generator, mean_degree: float = 10.0, k_scale: float = 5.0
) -> sp.csr_matrix:
    """Ring plus random long-range edges (mean degree ≈ ``mean_degree``), symmetric, CSR."""
    if n < 3:
        raise ValueError(f"n: {n} oscillators; a ring needs at least 3")
    i = np.arange(n)
    n_long = max(0, int(round(n * (mean_degree - 2.0) / 2.0)))
    a = rng.integers(0, n, n_long)
    b = rng.integers(0, n, n_long)
    keep = a != b
    rows = np.concatenate([i, a[keep]])
    cols = np.concatenate([(i + 1) % n, b[keep]])
    vals = k_scale * rng.uniform(0.5, 1.5, len(rows))
    K = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    K = K + K.T
    K.sum_duplicates()
    return K.tocsr()
