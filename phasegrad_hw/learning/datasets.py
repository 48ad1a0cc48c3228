"""Data sets of the tasks: loaders, splits and scaling (docs/design.md §2, §8).

A :class:`Dataset` holds features min–max scaled to [−1, 1] with the scaler fitted on the
training split only (the published vowel setting, docs/design.md §2, arXiv 2604.10272).
Small tasks (vowels, xor, fm) use a stratified random split (:func:`split_and_scale`);
chip-scale tasks (``digits``, ``csv:PATH``, ``mnist:DIR``; docs/design.md §8) use one fixed
stratified 80/20 train/test split (``random_state`` 0, or the files' own split for MNIST) and a
seed-dependent validation split of the training part (:func:`split_fixed`).
"""

from __future__ import annotations

import csv
import gzip
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

log = logging.getLogger(__name__)
Array = NDArray[np.float64]

__all__ = [
    "MNIST_FILES",
    "SENSOR_BANK_SENSORS",
    "TEST_SPLIT_STATE",
    "VAL_STREAM",
    "VOWELS",
    "VOWEL_STATS",
    "Dataset",
    "TaskError",
    "digits",
    "load_csv_task",
    "load_mnist",
    "load_vowels",
    "read_idx",
    "read_vowel_csv",
    "sensor_bank",
    "split_and_scale",
    "split_fixed",
    "synthetic_vowels",
    "xor",
]

VOWELS: tuple[str, ...] = ("a", "e", "i", "o", "u")

#: Per-vowel formant statistics (Hz) of the Hillenbrand et al. (1995) /hVd/ recordings as
#: tabulated in docs/design.md §2: n, mean F1, mean F2, sd F1, sd F2, corr(F1, F2).
VOWEL_STATS: dict[str, tuple[int, float, float, float, float, float]] = {
    "a": (136, 887.3, 1506.8, 136.7, 204.5, 0.650),
    "e": (139, 686.2, 2050.1, 100.7, 238.0, 0.537),
    "i": (139, 411.6, 2725.4, 61.6, 347.7, 0.684),
    "o": (137, 549.5, 1027.9, 75.7, 157.7, 0.767),
    "u": (138, 443.9, 1165.9, 60.6, 290.4, 0.472),
}


class TaskError(ValueError):
    """A data set or task specification that cannot be used (names the offending value)."""


@dataclass(frozen=True)
class Dataset:
    """A classification task, features scaled to [−1, 1] (scaler fitted on train only)."""

    name: str
    classes: tuple[str, ...]
    x_train: Array  # (n, d)
    y_train: NDArray[np.int64]  # (n,)
    x_test: Array
    y_test: NDArray[np.int64]
    x_val: Array = field(default_factory=lambda: np.zeros((0, 0)))  # empty: no validation split
    y_val: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- helpers
def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise TaskError(f"test_fraction: {test_fraction} must be in (0, 1)")


def split_and_scale(
    name: str,
    classes: Sequence[str],
    x: ArrayLike,
    y: ArrayLike,
    test_fraction: float,
    seed: int,
    *,
    stratify: bool = True,
) -> Dataset:
    """Stratified random split, then min–max scaling to [−1, 1] fitted on the train split.

    ``stratify=False``: the published vowel split instead (arXiv 2604.10272's per-seed draw):
    one permutation of all samples by ``default_rng(seed)``, its first
    ⌊(1 − test_fraction)·n⌋ entries train, the rest test, in permutation order (class counts
    vary with the seed). Test features are mapped with the training min/max, so they may fall
    slightly outside [−1, 1]. A feature that is constant on the training split maps to 0.
    """
    _check_fraction(test_fraction)
    X = np.asarray(x, dtype=np.float64)
    Y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or len(X) != len(Y):
        raise TaskError(f"{name}: features {X.shape} and labels {Y.shape} do not match")
    rng = np.random.default_rng(seed)
    if not stratify:
        perm = rng.permutation(len(Y))
        n_train = int((1.0 - test_fraction) * len(Y))
        if not 0 < n_train < len(Y):
            raise TaskError(f"{name}: {len(Y)} samples cannot be split {test_fraction} test")
        tr, te = perm[:n_train], perm[n_train:]
        scale = _fit_scaler(X[tr])
        return Dataset(name, tuple(classes), scale(X[tr]), Y[tr], scale(X[te]), Y[te])
    train_idx: list[NDArray[np.int64]] = []
    test_idx: list[NDArray[np.int64]] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(Y == c)
        if len(idx) < 2:
            raise TaskError(f"{name}: class {classes[c]!r} has {len(idx)} samples; need >= 2")
        idx = rng.permutation(idx)
        n_test = min(len(idx) - 1, max(1, int(round(test_fraction * len(idx)))))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = rng.permutation(np.concatenate(test_idx))
    scale = _fit_scaler(X[tr])
    return Dataset(name, tuple(classes), scale(X[tr]), Y[tr], scale(X[te]), Y[te])


def _fit_scaler(x_train: Array) -> Callable[[Array], Array]:
    """Min–max map to [−1, 1] fitted on ``x_train``; a constant feature maps to 0."""
    lo = x_train.min(axis=0)
    hi = x_train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)

    def scale(a: Array) -> Array:
        s = 2.0 * (a - lo) / span - 1.0
        out: Array = np.where(hi > lo, s, 0.0)
        return out

    return scale


TEST_SPLIT_STATE = 0  # random_state of the fixed train/test split of chip-scale tasks
VAL_STREAM = 2  # numpy stream [seed, VAL_STREAM] of the validation split


def split_fixed(
    name: str,
    classes: Sequence[str],
    x: ArrayLike,
    y: ArrayLike,
    seed: int = 0,
    val_fraction: float = 0.0,
    test: tuple[ArrayLike, ArrayLike] | None = None,
) -> Dataset:
    """The split of the chip-scale tasks: a fixed stratified 80/20 train/test split
    (scikit-learn ``train_test_split``, ``random_state`` 0, the same for every seed) unless
    ``test`` gives the test set; then a stratified validation split of ``val_fraction`` of the
    training part that depends on ``seed``; min–max scaling to [−1, 1] fitted on what remains
    for training."""
    try:
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise TaskError(f"{name}: needs scikit-learn (pip install 'phasegrad-hw[ml]')") from None
    if not 0.0 <= val_fraction < 1.0:
        raise TaskError(f"val_fraction: {val_fraction} must be in [0, 1)")
    X = np.asarray(x, dtype=np.float64)
    Y = np.asarray(y, dtype=np.int64)
    if test is None:
        counts = np.bincount(Y, minlength=len(classes))
        if counts.min() < 2:
            c = int(np.argmin(counts))
            raise TaskError(f"{name}: class {classes[c]!r} has {counts[c]} samples; need >= 2")
        Xtr, Xte, ytr, yte = train_test_split(
            X, Y, test_size=0.2, stratify=Y, random_state=TEST_SPLIT_STATE
        )
    else:
        Xtr, ytr = X, Y
        Xte, yte = np.asarray(test[0], dtype=np.float64), np.asarray(test[1], dtype=np.int64)
    Xva, yva = Xtr[:0], ytr[:0]
    if val_fraction > 0:
        state = int(np.random.default_rng([seed, VAL_STREAM]).integers(2**31))
        Xtr, Xva, ytr, yva = train_test_split(
            Xtr, ytr, test_size=val_fraction, stratify=ytr, random_state=state
        )
    scale = _fit_scaler(Xtr)
    return Dataset(
        name, tuple(classes), scale(Xtr), ytr, scale(Xte), yte, scale(Xva), np.asarray(yva)
    )


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    cl = tuple(str(c).strip().lower() for c in classes)
    for c in cl:
        if c not in VOWELS:
            raise TaskError(f"classes: vowel {c!r} is unknown; allowed: {', '.join(VOWELS)}")
    if len(set(cl)) != len(cl) or len(cl) < 2:
        raise TaskError(f"classes: {list(cl)} must name at least two different vowels")
    return cl


# --------------------------------------------------------------------------- vowels
def read_vowel_csv(csv_path: Path) -> tuple[list[str], Array]:
    """Rows of a Hillenbrand-format CSV (header ``vowel,F1,F2``; formants in Hz)."""
    p = Path(csv_path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise TaskError(f"{p}: cannot read vowel data ({exc.strerror})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise TaskError(f"{p}: empty file; expected a header 'vowel,F1,F2'")
    header = [h.strip() for h in rows[0]]
    need = ["vowel", "F1", "F2"]
    if [h.lower() for h in header[:3]] != [h.lower() for h in need]:
        raise TaskError(f"{p}: header {header} — expected columns {need}")
    labels: list[str] = []
    feats: list[tuple[float, float]] = []
    for ln, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 3:
            raise TaskError(f"{p}: row {ln}: {row} has {len(row)} columns; expected vowel,F1,F2")
        vals: list[float] = []
        for col, cell in zip(("F1", "F2"), row[1:3], strict=True):
            try:
                v = float(cell)
            except ValueError:
                raise TaskError(f"{p}: row {ln}, column {col}: {cell!r} is not a number") from None
            if not np.isfinite(v) or v <= 0:
                raise TaskError(
                    f"{p}: row {ln}, column {col}: {cell!r} must be a positive frequency (Hz)"
                )
            vals.append(v)
        labels.append(row[0].strip().lower())
        feats.append((vals[0], vals[1]))
    return labels, np.asarray(feats, dtype=np.float64).reshape(-1, 2)


def load_vowels(
    csv: Path,
    classes: Sequence[str] = ("a", "i"),
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    stratify: bool = True,
) -> Dataset:
    """Vowel classification from formants (F1, F2) in a Hillenbrand-format CSV (rows kept
    in file order; ``stratify`` as :func:`split_and_scale`).

    Published setting (arXiv 2604.10272): /a/ vs /i/, 80/20 split, min–max on train.
    """
    cl = _check_classes(classes)
    labels, X = read_vowel_csv(csv)
    present = set(labels)
    for c in cl:
        if c not in present:
            raise TaskError(
                f"classes: vowel {c!r} has no rows in {csv}; present: {sorted(present)}"
            )
    mask = np.array([lab in cl for lab in labels])
    y = np.array([cl.index(lab) for lab in labels if lab in cl], dtype=np.int64)
    return split_and_scale(
        "vowels:" + ",".join(cl), cl, X[mask], y, test_fraction, seed, stratify=stratify
    )


def synthetic_vowels(
    classes: Sequence[str] = ("a", "i"),
    n_per_class: int = 136,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    stratify: bool = True,
) -> Dataset:
    """Formants drawn from bivariate normals with the per-vowel means, SDs and F1–F2
    correlation of docs/design.md §2 (Hillenbrand et al. 1995 statistics); ``stratify`` as
    :func:`split_and_scale`."""
    cl = _check_classes(classes)
    if n_per_class < 2:
        raise TaskError(f"n_per_class: {n_per_class} must be >= 2")
    rng = np.random.default_rng([seed, 0x5F])
    xs, ys = [], []
    for c, v in enumerate(cl):
        _, m1, m2, s1, s2, r = VOWEL_STATS[v]
        cov = np.array([[s1 * s1, r * s1 * s2], [r * s1 * s2, s2 * s2]])
        xs.append(rng.multivariate_normal([m1, m2], cov, size=n_per_class))
        ys.append(np.full(n_per_class, c, dtype=np.int64))
    return split_and_scale(
        "synthetic-vowels:" + ",".join(cl),
        cl,
        np.concatenate(xs),
        np.concatenate(ys),
        test_fraction,
        seed,
        stratify=stratify,
    )


def xor(
    n_per_class: int = 100, noise: float = 0.15, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """XOR: Gaussian blobs at (±1, ±1); class = sign(x1) ≠ sign(x2)."""
    if n_per_class < 4:
        raise TaskError(f"n_per_class: {n_per_class} must be >= 4")
    if noise < 0:
        raise TaskError(f"noise: {noise} must be >= 0")
    rng = np.random.default_rng([seed, 0x0A])
    centres = np.array([[-1, -1], [1, 1], [-1, 1], [1, -1]], dtype=np.float64)
    lab = np.array([0, 0, 1, 1])
    k = np.arange(2 * n_per_class) % 4
    X = centres[k] + noise * rng.standard_normal((len(k), 2))
    return split_and_scale("xor", ("same", "different"), X, lab[k], test_fraction, seed)


def digits(
    classes: Sequence[int] | None = None, seed: int = 0, val_fraction: float = 0.0
) -> Dataset:
    """scikit-learn's 8×8 digits (64 features, 0–16 intensities; 1 797 images, no download),
    optionally a class subset, split by :func:`split_fixed`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise TaskError("digits: needs scikit-learn (pip install 'phasegrad-hw[ml]')") from None
    d = load_digits()
    X = np.asarray(d.data, dtype=np.float64)
    y = np.asarray(d.target, dtype=np.int64)
    cls = list(range(10)) if classes is None else [int(c) for c in classes]
    for c in cls:
        if not 0 <= c <= 9:
            raise TaskError(f"classes: digit {c} is not in 0…9")
    mask = np.isin(y, cls)
    yy = np.array([cls.index(int(v)) for v in y[mask]], dtype=np.int64)
    names = tuple(str(c) for c in cls)
    return split_fixed("digits", names, X[mask], yy, seed, val_fraction)


def load_csv_task(
    path: Path, label_column: str | None = None, seed: int = 0, val_fraction: float = 0.0
) -> Dataset:
    """A classification CSV with a header: the label is the last column (or ``label_column``),
    every other column a numeric feature; classes are the sorted distinct labels."""
    p = Path(path)
    try:
        rows = list(csv.reader(p.read_text().splitlines()))
    except OSError as exc:
        raise TaskError(f"--task csv:{p}: cannot read ({exc.strerror})") from None
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise TaskError(f"--task csv:{p}: need a header and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label_column is None:
        li = len(header) - 1
    elif label_column in header:
        li = header.index(label_column)
    else:
        raise TaskError(
            f"--label-column: {label_column!r} is not a column of {p}; columns: {header}"
        )
    if len(header) < 2:
        raise TaskError(f"{p}: header {header} — need at least one feature and a label column")
    feats = [c for c in range(len(header)) if c != li]
    X = np.empty((len(rows) - 1, len(feats)))
    labels: list[str] = []
    for r, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise TaskError(f"{p}: row {r + 2}: {len(row)} columns; the header has {len(header)}")
        labels.append(row[li].strip())
        for k, c in enumerate(feats):
            try:
                X[r, k] = float(row[c])
            except ValueError:
                raise TaskError(
                    f"{p}: column {header[c]!r}, row {r + 2}: {row[c]!r} is not a number "
                    "(every column but the label must be a numeric feature)"
                ) from None
            if not np.isfinite(X[r, k]):
                raise TaskError(f"{p}: column {header[c]!r}, row {r + 2}: {row[c]!r} is not finite")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise TaskError(
            f"{p}: label column {header[li]!r} has a single class {classes}; need at least two"
        )
    y = np.array([classes.index(v) for v in labels], dtype=np.int64)
    return split_fixed(f"csv:{p.name}", classes, X, y, seed, val_fraction)


MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> NDArray[np.uint8]:
    """An IDX file of unsigned bytes (magic 0x00 0x00 0x08 ndim, big-endian dims), gz or not."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise TaskError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4]!r})")
    nd = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(nd))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd)
    if body.size != int(np.prod(dims)):
        raise TaskError(f"{path}: {body.size} bytes of data for dimensions {dims}")
    return body.reshape(dims)


def load_mnist(directory: Path, seed: int = 0, val_fraction: float = 0.0) -> Dataset:
    """MNIST from the standard IDX files in ``directory`` (``train-images-idx3-ubyte`` etc.,
    ``.gz`` or not); images flattened to 784 features, the files' own train/test split."""
    d = Path(directory)
    arrays = {}
    for key, stem in MNIST_FILES.items():
        found = [d / stem, d / f"{stem}.gz"]
        hit = next((f for f in found if f.is_file()), None)
        if hit is None:
            raise TaskError(f"--task mnist:{d}: {stem}[.gz] not found")
        arrays[key] = read_idx(hit)
    xtr = arrays["train_images"].reshape(len(arrays["train_images"]), -1)
    xte = arrays["test_images"].reshape(len(arrays["test_images"]), -1)
    ytr, yte = arrays["train_labels"].astype(np.int64), arrays["test_labels"].astype(np.int64)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise TaskError(f"--task mnist:{d}: image and label counts differ")
    n_cls = int(max(ytr.max(), yte.max())) + 1
    classes = tuple(str(c) for c in range(n_cls))
    return split_fixed("mnist", classes, xtr, ytr, seed, val_fraction, test=(xte, yte))


SENSOR_BANK_SENSORS = 4  # filters (and driven sensor oscillators) of the sensor-bank task


def sensor_bank(
    n_classes: int = 2,
    n_sensors: int = SENSOR_BANK_SENSORS,
    per_class: int = 100,
    width: float = 0.35,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """The quasi-static sensor-bank task (docs/design.md §9): a signal of frequency f and
    amplitude A reaches a bank of ``n_sensors`` input filters with centres s_i evenly over
    [−1, 1] (normalised frequency) and half-width ``width``; filter i passes
    u_i = A / (1 + ((f − s_i)/width)²), the injection strength its sensor oscillator then
    receives (set_drive per sample). Classes are frequency bands: class c draws f uniformly
    from the c-th of ``n_classes`` equal bands of [−1, 1], A ~ U(0.6, 1.0). Features u
    (n, n_sensors), stratified split, min–max to [−1, 1] on train."""
    if not 2 <= n_classes <= 10:
        raise TaskError(f"sensor-bank: {n_classes} classes; allowed 2…10")
    if n_sensors < 1 or per_class < 2 or not width > 0:
        raise TaskError(
            f"sensor-bank: sensors {n_sensors}, per_class {per_class}, width {width}; "
            "need >= 1, >= 2 and > 0"
        )
    rng = np.random.default_rng([seed, 0x5B])
    edges = np.linspace(-1.0, 1.0, n_classes + 1)
    y = np.repeat(np.arange(n_classes, dtype=np.int64), per_class)
    f = rng.uniform(edges[y], edges[y + 1])
    amp = rng.uniform(0.6, 1.0, y.size)
    centres = np.linspace(-1.0, 1.0, n_sensors)
    u = amp[:, None] / (1.0 + ((f[:, None] - centres[None, :]) / width) ** 2)
    classes = tuple(f"band{c}" for c in range(n_classes))
    return split_and_scale("sensor-bank", classes, u, y, test_fraction, seed)
