"""Tasks: data sets, scaling on the train split only, encodings and readouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phasegrad_hw.learning.tasks import (
    VOWEL_STATS,
    Encoding,
    TaskError,
    digits,
    load_task,
    load_vowels,
    read_vowel_csv,
    split_and_scale,
    synthetic_vowels,
    xor,
)


def _raw(csv: Path, classes: tuple[str, ...]) -> np.ndarray:
    labels, X = read_vowel_csv(csv)
    return X[np.isin(labels, classes)]


def test_load_vowels_split_and_scaling(vowels_csv: Path) -> None:
    ds = load_vowels(vowels_csv, ("a", "i"), test_fraction=0.2, seed=0)
    assert len(ds.y_train) + len(ds.y_test) == 275  # published /a/ vs /i/ count
    assert len(ds.y_test) == 55
    np.testing.assert_allclose(ds.x_train.min(axis=0), -1.0)
    np.testing.assert_allclose(ds.x_train.max(axis=0), 1.0)
    assert set(np.unique(ds.y_train)) == {0, 1}
    # the scaled features are one affine map of the raw formants for both splits
    raw = _raw(vowels_csv, ("a", "i"))
    lo, hi = raw.min(axis=0), raw.max(axis=0)
    pooled = np.concatenate([ds.x_train, ds.x_test])
    assert np.all(pooled.min(axis=0) <= -1.0 + 1e-12) and np.all(pooled.max(axis=0) >= 1.0 - 1e-12)
    assert np.all(hi > lo)


def test_scaler_is_fitted_on_the_train_split_only() -> None:
    # one extreme outlier per feature; find a split seed that puts it into the test split
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    X[7] = [50.0, -50.0]
    y = np.arange(40) % 2
    for seed in range(50):
        ds = split_and_scale("t", ("p", "q"), X, y, 0.25, seed)
        if np.any(np.abs(ds.x_test) > 5):
            break
    else:
        pytest.fail("no split put the outlier into the test split")
    # train-only scaler: train spans exactly [-1, 1]; the outlier lands far outside
    np.testing.assert_allclose(ds.x_train.min(axis=0), -1.0)
    np.testing.assert_allclose(ds.x_train.max(axis=0), 1.0)
    assert np.abs(ds.x_test).max() > 5.0
    # a scaler fitted on all data would have squeezed the train split into a small interval
    assert np.ptp(ds.x_train[:, 0]) == pytest.approx(2.0)


def test_synthetic_vowels_match_design_statistics() -> None:
    rng_stats = {}
    for v in ("a", "u"):
        ds = synthetic_vowels((v, "i"), n_per_class=4000, test_fraction=0.1, seed=1)
        # undo nothing: check correlation and relative spread, which min-max scaling keeps
        X = np.concatenate([ds.x_train, ds.x_test])
        y = np.concatenate([ds.y_train, ds.y_test])
        xv = X[y == 0]
        r = np.corrcoef(xv.T)[0, 1]
        rng_stats[v] = r
        n, m1, m2, s1, s2, rho = VOWEL_STATS[v]
        assert r == pytest.approx(rho, abs=0.05)
    assert rng_stats["a"] != rng_stats["u"]


def test_unknown_vowel_and_malformed_csv(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="vowel 'x' is unknown"):
        synthetic_vowels(("a", "x"))
    bad = tmp_path / "bad.csv"
    bad.write_text("vowel,F1,F2\na,800,1500\ni,4x0,2700\n")
    with pytest.raises(TaskError, match=r"row 3, column F1: '4x0' is not a number"):
        load_vowels(bad)
    hdr = tmp_path / "hdr.csv"
    hdr.write_text("v,f1\na,1\n")
    with pytest.raises(TaskError, match="header"):
        load_vowels(hdr)
    with pytest.raises(TaskError, match="no rows"):
        bad.write_text("vowel,F1,F2\na,800,1500\na,810,1400\n")
        load_vowels(bad, ("a", "o"))


def test_xor_and_digits_and_task_strings() -> None:
    d = xor(n_per_class=40)
    assert d.n_features == 2 and d.classes == ("same", "different")
    # XOR labels: different signs -> class 1 (scaling keeps signs up to the centre offset)
    assert 0.3 < d.y_train.mean() < 0.7
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(TaskError, match="scikit-learn"):
            digits()
    else:
        g = digits([0, 1])
        assert g.n_features == 64 and g.classes == ("0", "1")
    assert load_task("vowels:o,u").classes == ("o", "u")
    with pytest.raises(TaskError, match="--task"):
        load_task("mnist")


def test_encoding_templates_and_readouts() -> None:
    enc = Encoding(readout="template", margin=0.2)
    t0 = enc.clamp_targets(0, np.zeros(2))
    t1 = enc.clamp_targets(np.array([1]), np.zeros((1, 2)))
    np.testing.assert_allclose(t0, [-0.2, 0.2])
    np.testing.assert_allclose(t1, [[0.2, -0.2]])
    np.testing.assert_array_equal(enc.predict(np.array([t0, t1[0]])), [0, 1])
    # the published argmax-cos readout cannot tell the two templates apart (cos is even)
    cos = Encoding(readout="argmax_cos")
    p = cos.predict(np.array([t0, t1[0]]))
    assert p[0] == p[1]
    np.testing.assert_allclose(enc.input_frequencies([[1.0, -0.5]]), [[1.5, -0.75]])
    mp = Encoding(readout="mean_phase")
    np.testing.assert_allclose(
        mp.clamp_targets(np.array([0, 1]), np.zeros((2, 2))), [[-0.2, -0.2], [0.2, 0.2]]
    )
    np.testing.assert_array_equal(mp.predict(np.array([[-0.05, -0.01], [0.03, -0.01]])), [0, 1])


def test_difference_targets_apply_minus_loss_gradient() -> None:
    enc = Encoding(readout="difference", margin=0.2)
    out = np.array([[0.1, -0.05], [0.3, 0.2]])
    y = np.array([0, 1])
    t = enc.clamp_targets(y, out)
    # linear nudge force at the free state equals -dL/dθ_out; compare with finite differences
    eps = 1e-6
    for k in range(2):
        g = np.zeros(2)
        for o in range(2):
            d = np.zeros(2)
            d[o] = eps
            g[o] = (enc.loss(y[k], out[k] + d) - enc.loss(y[k], out[k] - d)) / (2 * eps)
        np.testing.assert_allclose(t[k] - out[k], -g, atol=1e-8)
    np.testing.assert_array_equal(enc.predict(np.array([[-0.3, 0.1], [0.2, -0.1]])), [0, 1])
    hinge = Encoding(readout="difference", difference_loss="hinge")
    np.testing.assert_allclose(hinge.clamp_targets(0, np.array([-0.5, 0.5])), [-0.5, 0.5])


def test_encoding_rejects_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="readout"):
        Encoding(readout="softmax")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="margin"):
        Encoding(margin=-1.0)
