"""Significance tests for training studies (ablations over seeds and set-ups).

The seed paper's ablation (arXiv 2604.10272) compares set-ups with Fisher's exact test on
success counts (seeds that converge), Welch's t and Mann–Whitney U on test accuracies, and
Cochran's Q on the per-seed success of k set-ups run on the same seeds (related binary
outcomes). Every function returns a :class:`TestResult` (statistic, two-sided p-value unless
``alternative`` says otherwise, sample sizes). Fisher, Welch and Mann–Whitney come from
:mod:`scipy.stats`; Cochran's Q is computed here from its definition (scipy has none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

log = logging.getLogger(__name__)

Alternative = Literal["two-sided", "less", "greater"]


@dataclass(frozen=True)
class TestResult:
    """``statistic`` of ``test`` and its ``p_value``; ``n`` the sample size of each group
    (Cochran's Q: the number of blocks/seeds); ``df`` degrees of freedom where defined."""

    __test__ = False  # not a pytest test class

    test: str
    statistic: float
    p_value: float
    n: tuple[int, ...]
    df: float | None = None


def _counts(name: str, successes: int, total: int) -> tuple[int, int]:
    s, t = int(successes), int(total)
    if s != successes or t != total or not 0 <= s <= t or t < 1:
        raise ValueError(f"{name}: {successes} successes of {total}; need integers 0 <= s <= n")
    return s, t


def _sample(name: str, x: ArrayLike) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size < 2 or not np.isfinite(a).all():
        raise ValueError(f"{name}: {a.size} values; need >= 2, all finite")
    return a


def fisher_exact(
    successes_a: int,
    total_a: int,
    successes_b: int,
    total_b: int,
    alternative: Alternative = "two-sided",
) -> TestResult:
    """Fisher's exact test on the 2×2 table [[s_a, n_a − s_a], [s_b, n_b − s_b]] (e.g. seeds
    that converged under two initialisations). Statistic: the sample odds ratio."""
    sa, na = _counts("a", successes_a, total_a)
    sb, nb = _counts("b", successes_b, total_b)
    res = stats.fisher_exact([[sa, na - sa], [sb, nb - sb]], alternative=alternative)
    return TestResult("fisher_exact", float(res.statistic), float(res.pvalue), (na, nb))


def welch_t(a: ArrayLike, b: ArrayLike, alternative: Alternative = "two-sided") -> TestResult:
    """Welch's unequal-variance t-test on two samples (e.g. test accuracies of two set-ups);
    ``df`` is the Welch–Satterthwaite degrees of freedom."""
    x, y = _sample("a", a), _sample("b", b)
    res = stats.ttest_ind(x, y, equal_var=False, alternative=alternative)
    return TestResult(
        "welch_t", float(res.statistic), float(res.pvalue), (x.size, y.size), float(res.df)
    )


def mann_whitney_u(
    a: ArrayLike, b: ArrayLike, alternative: Alternative = "two-sided"
) -> TestResult:
    """Mann–Whitney U test (statistic U of sample ``a``: pairs with a > b, ties count ½).

    The p-value is exact (the permutation distribution of U) when there are no ties and
    both samples hold at most 100 values — an ablation over 10–100 seeds — and the normal
    approximation with continuity and tie corrections otherwise. (scipy's "auto" switches to
    the approximation above 8 values, which is 17× too large at U = 100 for 10 vs 10.)
    """
    x, y = _sample("a", a), _sample("b", b)
    ties = np.unique(np.concatenate([x, y])).size < x.size + y.size
    method = "exact" if not ties and max(x.size, y.size) <= 100 else "asymptotic"
    res = stats.mannwhitneyu(x, y, alternative=alternative, method=method)
    return TestResult("mann_whitney_u", float(res.statistic), float(res.pvalue), (x.size, y.size))


def cochran_q(outcomes: ArrayLike) -> TestResult:
    """Cochran's Q for k related binary outcomes: ``outcomes`` (b, k), row = block (seed),
    column = set-up, entries 0/1 (success). H0: every set-up has the same success rate.

    Q = (k − 1)·[k·Σ_j C_j² − T²] / (k·T − Σ_i R_i²), C_j column totals, R_i row totals,
    T the grand total; under H0, Q ~ χ²_{k−1} for many blocks (Cochran 1950). Blocks with
    all-equal outcomes carry no information (they cancel); with no discordant block at all
    the statistic is 0/0 and reported as Q = 0, p = 1 (no evidence of a difference).
    """
    x = np.asarray(outcomes)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] < 1:
        raise ValueError(f"outcomes: shape {x.shape} must be (blocks, k >= 2)")
    if not np.isin(x, (0, 1)).all():
        raise ValueError("outcomes: entries must be 0/1 (or booleans)")
    x = x.astype(np.float64)
    b, k = x.shape
    C = x.sum(axis=0)
    R = x.sum(axis=1)
    T = float(x.sum())
    den = k * T - float((R**2).sum())
    if den == 0.0:
        log.info("cochran_q: no discordant block among %d; Q = 0, p = 1", b)
        return TestResult("cochran_q", 0.0, 1.0, (b,), float(k - 1))
    q = (k - 1) * (k * float((C**2).sum()) - T * T) / den
    return TestResult("cochran_q", q, float(stats.chi2.sf(q, k - 1)), (b,), float(k - 1))
