"""phasegrad_hw.studies.stats against hand-computed and textbook values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from phasegrad_hw.studies import stats as st


def _hypergeom_two_sided(a: int, na: int, b: int, nb: int) -> float:
    """Fisher's two-sided p from its definition: the total probability (margins fixed) of
    every table at most as likely as the observed one."""
    s, n = a + b, na + nb

    def prob(x: int) -> float:
        return math.comb(na, x) * math.comb(nb, s - x) / math.comb(n, s)

    p_obs = prob(a)
    xs = range(max(0, s - nb), min(na, s) + 1)
    return sum(prob(x) for x in xs if prob(x) <= p_obs * (1 + 1e-7))


def test_fisher_exact_lady_tasting_tea() -> None:
    """Fisher's tea-tasting table [[3, 1], [1, 3]]: odds ratio 9, two-sided p = 34/70."""
    r = st.fisher_exact(3, 4, 1, 4)
    assert r.statistic == pytest.approx(9.0)
    assert r.p_value == pytest.approx(34 / 70, rel=1e-12)
    assert r.n == (4, 4)


@pytest.mark.parametrize("counts", [(46, 100, 100, 100), (19, 50, 50, 50), (7, 12, 2, 10)])
def test_fisher_exact_matches_the_hypergeometric_definition(counts: tuple[int, ...]) -> None:
    """Including the published seeding comparison (46/100 vs 100/100 converged seeds)."""
    r = st.fisher_exact(*counts)
    assert r.p_value == pytest.approx(_hypergeom_two_sided(*counts), rel=1e-9)


def test_welch_t_textbook_example() -> None:
    """Welch (1947) test, example 1 of the Wikipedia article "Welch's t-test" (two samples of
    15): t = −2.46, ν = 25.0, p = 0.021; t and ν also from their definitions."""
    a = np.array([27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0,
                  21.7, 21.4])  # fmt: skip
    b = np.array([27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9,
                  20.5, 24.4])  # fmt: skip
    r = st.welch_t(a, b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    nu = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    assert r.statistic == pytest.approx(t, rel=1e-12)
    assert r.df == pytest.approx(nu, rel=1e-12)
    assert round(r.statistic, 2) == -2.46 and round(r.df, 1) == 25.0
    assert round(r.p_value, 3) == 0.021
    assert r.n == (15, 15)


def test_mann_whitney_u_exact_distribution_by_enumeration() -> None:
    """U counts pairs with a > b; the exact two-sided p is 2·min(P(U <= u), P(U >= u)) over
    all C(7, 3) = 35 equally likely rank assignments (no ties)."""
    a, b = [1.1, 3.2, 5.3], [2.4, 4.5, 6.6, 7.7]
    r = st.mann_whitney_u(a, b)
    u = sum(1.0 for x in a for y in b if x > y)
    assert r.statistic == u == 3.0
    dist = []
    for ranks in itertools.combinations(range(7), 3):
        rank_sum = sum(ranks) + 3  # 1-based ranks of sample a
        dist.append(rank_sum - 3 * (3 + 1) / 2)  # U = R_a − n_a(n_a + 1)/2
    dist_arr = np.asarray(dist)
    p = 2 * min((dist_arr <= u).mean(), (dist_arr >= u).mean())
    assert r.p_value == pytest.approx(min(1.0, p), rel=1e-12) == pytest.approx(14 / 35)


def test_mann_whitney_u_separated_samples() -> None:
    """Completely separated samples of 10: U = 100 and exact p = 2/C(20, 10)."""
    r = st.mann_whitney_u(np.arange(10) + 20.0, np.arange(10))
    assert r.statistic == 100.0
    assert r.p_value == pytest.approx(2 / math.comb(20, 10), rel=1e-9)


def test_cochran_q_hand_computed_example() -> None:
    """Six seeds × three set-ups. C = (5, 3, 2), R = (2, 1, 3, 0, 2, 2), T = 10, ΣR² = 22:
    Q = 2·(3·38 − 100)/(30 − 22) = 3.5; with 2 degrees of freedom the χ² tail is
    exp(−Q/2) = exp(−1.75)."""
    x = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 1], [1, 1, 0]]
    r = st.cochran_q(x)
    assert r.statistic == pytest.approx(3.5, rel=1e-14)
    assert r.p_value == pytest.approx(math.exp(-1.75), rel=1e-12)
    assert r.n == (6,) and r.df == 2.0


def test_cochran_q_with_two_setups_is_mcnemar() -> None:
    """For k = 2, Q equals McNemar's χ² without continuity correction, (b − c)²/(b + c),
    b and c the discordant pairs; with 1 degree of freedom p = erfc(√(Q/2))."""
    rng = np.random.default_rng(5)
    x = (rng.random((60, 2)) < [0.7, 0.4]).astype(int)
    bc = int(((x[:, 0] == 1) & (x[:, 1] == 0)).sum())
    cb = int(((x[:, 0] == 0) & (x[:, 1] == 1)).sum())
    r = st.cochran_q(x)
    q = (bc - cb) ** 2 / (bc + cb)
    assert r.statistic == pytest.approx(q, rel=1e-12)
    assert r.p_value == pytest.approx(math.erfc(math.sqrt(q / 2)), rel=1e-9)


def test_cochran_q_alternative_form_and_degenerate_cases() -> None:
    """Q = k(k − 1) Σ_j (C_j − T/k)² / Σ_i R_i (k − R_i) (the same statistic, another form)."""
    rng = np.random.default_rng(9)
    x = (rng.random((40, 4)) < [0.9, 0.8, 0.5, 0.6]).astype(int)
    k, C, R = 4, x.sum(axis=0), x.sum(axis=1)
    q = k * (k - 1) * ((C - C.sum() / k) ** 2).sum() / (R * (k - R)).sum()
    assert st.cochran_q(x).statistic == pytest.approx(q, rel=1e-12)
    same = st.cochran_q(np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1]]))
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0/1"):
        st.cochran_q([[0, 2], [1, 1]])
    with pytest.raises(ValueError, match="successes"):
        st.fisher_exact(5, 4, 1, 4)


def test_mann_whitney_u_with_ties_uses_the_corrected_normal_approximation() -> None:
    """Ties count ½ in U; p from the normal law with the tie-corrected variance
    σ² = n_a n_b/12·[(n + 1) − Σ(t³ − t)/(n(n − 1))] and a continuity correction of ½."""
    a = np.array([1.0, 2.0, 2.0, 3.0, 6.0, 7.0])
    b = np.array([2.0, 3.0, 4.0, 5.0, 5.0, 8.0, 9.0])
    r = st.mann_whitney_u(a, b)
    u = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in a for y in b)
    assert r.statistic == u
    na, nb = a.size, b.size
    n = na + nb
    _, t = np.unique(np.concatenate([a, b]), return_counts=True)
    var = na * nb / 12 * ((n + 1) - (t**3 - t).sum() / (n * (n - 1)))
    z = (abs(u - na * nb / 2) - 0.5) / math.sqrt(var)
    assert r.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
