"""The published draws (``draws="published"``): seed s redraws the authors' seed s — their
unstratified 80/20 split, their initial ω and couplings and their K7 edges — so a seed's
result is comparable with the authors' own (arXiv 2604.10272's per-seed ablation results)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phasegrad_hw.device.presets import builder, vowel_2_5_2
from phasegrad_hw.engine.ensemble import train_seeds
from phasegrad_hw.engine.members import TrainConfig, members_from_builder
from phasegrad_hw.learning.datasets import split_and_scale
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.tasks import Encoding
from phasegrad_hw.studies.vowels import VowelStudyOptions, load_study_data


def test_unstratified_split_is_one_permutation_of_all_samples() -> None:
    """stratify=False: the first ⌊0.8 n⌋ entries of default_rng(seed).permutation(n) train,
    the rest test (in that order), min–max fitted on train; class counts vary by seed."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(57, 2)) * [300.0, 900.0] + [700.0, 1800.0]
    y = (np.arange(57) % 3 == 0).astype(np.int64)
    counts, strat_counts = set(), set()
    for seed in range(8):
        ds = split_and_scale("t", ("p", "q"), X, y, 0.2, seed, stratify=False)
        perm = np.random.default_rng(seed).permutation(57)
        tr, te = perm[:45], perm[45:]
        lo, hi = X[tr].min(axis=0), X[tr].max(axis=0)
        np.testing.assert_array_equal(ds.y_train, y[tr])
        np.testing.assert_array_equal(ds.y_test, y[te])
        np.testing.assert_allclose(ds.x_train, 2 * (X[tr] - lo) / (hi - lo) - 1, atol=1e-15)
        np.testing.assert_allclose(ds.x_test, 2 * (X[te] - lo) / (hi - lo) - 1, atol=1e-15)
        counts.add(int(ds.y_test.sum()))
        strat_counts.add(int(split_and_scale("t", ("p", "q"), X, y, 0.2, seed).y_test.sum()))
    assert len(counts) > 1 and len(strat_counts) == 1


@pytest.mark.parametrize("seed", [0, 6, 42])
def test_published_members_follow_the_authors_draw_order(seed: int) -> None:
    """Reference: scalar draws in the published order from one default_rng(seed) — ω of the
    hidden and output oscillators U(±0.3), then input→hidden and hidden→output couplings
    2·U(0.5, 1.5), then the hidden chain 2·U(0.5, 1.0); the K7 edges are
    default_rng(seed + 10000).choice(24, 7) over the edges sorted by (i, j)."""
    rng = np.random.default_rng(seed)
    omega = np.zeros(9)
    for i in range(2, 9):
        omega[i] = rng.uniform(-0.3, 0.3)
    K: dict[tuple[int, int], float] = {}
    for i in (0, 1):
        for h in range(2, 7):
            K[i, h] = 2.0 * rng.uniform(0.5, 1.5)
    for h in range(2, 7):
        for o in (7, 8):
            K[h, o] = 2.0 * rng.uniform(0.5, 1.5)
    for h in range(2, 6):
        K[h, h + 1] = 2.0 * rng.uniform(0.5, 1.0)
    pairs = sorted(K)
    pick = np.random.default_rng(seed + 10000).choice(len(pairs), size=7, replace=False)

    cfg = TrainConfig(rule=EPRule(params="K"), k_subset=7, draws="published")
    template, (m,) = members_from_builder(builder(5), [seed], cfg)
    edges = [(int(i), int(j)) for i, j in template.edge_index]
    np.testing.assert_array_equal(m.omega, omega)
    np.testing.assert_array_equal(m.coupling, [K[e] for e in edges])
    assert {edges[k] for k in np.flatnonzero(m.learn_k)} == {pairs[p] for p in pick}
    # spectral init: same couplings (ω is drawn first, then replaced)
    spec = TrainConfig(rule=EPRule(params="omega"), init="spectral", draws="published")
    _, (ms,) = members_from_builder(builder(5), [seed], spec)
    np.testing.assert_array_equal(ms.coupling, m.coupling)
    assert not np.array_equal(ms.omega, m.omega)
    # the project's own streams draw another network for the same seed
    _, (own,) = members_from_builder(builder(5), [seed], TrainConfig(rule=EPRule(params="K")))
    assert not np.array_equal(own.coupling, m.coupling)


def test_study_split_follows_the_draws() -> None:
    """The study's per-seed split: unstratified under the published draws, stratified under
    the project's own."""
    pub = VowelStudyOptions(seeds=1)
    own = VowelStudyOptions(seeds=1, draws="own")
    n_test_pub = {int(load_study_data(pub, s).y_test.sum()) for s in range(6)}
    n_test_own = {int(load_study_data(own, s).y_test.sum()) for s in range(6)}
    assert len(n_test_pub) > 1 and len(n_test_own) == 1


@pytest.mark.slow
def test_published_draws_reproduce_the_authors_low_tail_seeds(vowels_csv: Path) -> None:
    """ω-only, 200 epochs, published draws: the authors' converged seeds with test accuracy
    below 90 % (their per-seed results, experiments/param_matched_results.json) come out
    with the same test accuracy and the training accuracy within one sample of 220 — though
    our engine accepts only stable locks, warm-starts from the same sample's previous
    free state and tests from a cold start (the protocol differences do not matter here)."""
    published = {6: (33 / 55, 0.6364), 34: (45 / 55, 0.7318), 74: (49 / 55, 0.9636),
                 81: (42 / 55, 0.9045)}  # fmt: skip
    o = VowelStudyOptions(data=vowels_csv)
    cfg = TrainConfig(epochs=200, test_every=200, rule=EPRule(params="omega"), draws="published")
    for seed, (test, train) in published.items():
        data = load_study_data(o, seed)
        res = train_seeds(vowel_2_5_2, [seed], data, Encoding(readout="argmax_cos"), cfg)
        assert res.test_accuracy[0] == pytest.approx(test, abs=1e-12)
        assert abs(res.train_accuracy[0] - train) <= 1 / 220 + 1e-4
