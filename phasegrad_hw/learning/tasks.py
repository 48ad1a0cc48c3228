"""Tasks: the task names of the command line, input encoding, clamp targets and readouts.

:func:`load_task` turns a task string into a :class:`~phasegrad_hw.learning.datasets.Dataset`
(the loaders, splits and scaling live in :mod:`phasegrad_hw.learning.datasets`; their public
names are importable from here as well). An :class:`Encoding` maps a task onto a device:
input oscillator frequency ω = input_scale · x (model units), clamp targets for the output
oscillators and the decision rule.

Readouts (decision rule + the loss the clamp targets descend):

* ``template`` (default): targets −margin on the correct class' output, +margin on the
  others; loss ½Σ(θ_o − t)²; decision = nearest target template (wrapped distance).
* ``argmax_cos``: the published readout, argmax_o cos θ_o, trained with the same fixed
  templates. cos is even, so it cannot tell −margin from +margin (docs/design.md §2).
* ``difference``: a loss on the output phase *differences* whose minimum is the decision
  rule: L = ½Σ_{j≠y}(θ_y − θ_j + 2·margin)² (``difference_loss="quadratic"``) or its
  one-sided hinge ½Σ max(0, θ_y − θ_j + 2·margin)²; decision = argmin_o θ_o (for two
  outputs sign(θ_o1 − θ_o2)). On hardware the loss is applied by clamping toward
  t = θ*_out − ∂L/∂θ_out computed from the free reading, so that the linear nudge force at
  θ* is exactly −β ∂L/∂θ_out.
* ``mean_phase``: targets, loss and decision on the outputs' *common* phase (relative to the
  reference): class c puts every output at margin·(2c/(C−1) − 1) (−m / +m for two classes),
  loss ½Σ(θ_o − t)², decision = nearest template (for two classes: the sign of the mean
  output phase). On the published 2+5+2 network the input moves both outputs together
  (common-mode class separation ≈ 0.12 rad vs ≈ 6e-4 rad differential, measured), so this is
  the mode that ω-learning can use; ``difference`` fails there for the same reason.
  The class order matters: class 0 must be the one whose inputs give the lower output phase
  (true for a,i and o,u with input ω = 1.5·x and reference = input 0).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.learning.datasets import (
    MNIST_FILES,
    TEST_SPLIT_STATE,
    VAL_STREAM,
    VOWEL_STATS,
    VOWELS,
    Dataset,
    TaskError,
    digits,
    load_csv_task,
    load_mnist,
    load_vowels,
    read_idx,
    read_vowel_csv,
    sensor_bank,
    split_and_scale,
    split_fixed,
    synthetic_vowels,
    xor,
)
from phasegrad_hw.physics import wrap

log = logging.getLogger(__name__)
Array = NDArray[np.float64]

__all__ = [
    "MNIST_FILES",
    "TEST_SPLIT_STATE",
    "VAL_STREAM",
    "VOWELS",
    "VOWEL_STATS",
    "Dataset",
    "Encoding",
    "TaskError",
    "digits",
    "load_csv_task",
    "load_mnist",
    "load_task",
    "load_vowels",
    "read_idx",
    "read_vowel_csv",
    "sensor_bank",
    "split_and_scale",
    "split_fixed",
    "synthetic_vowels",
    "xor",
]


def load_task(
    spec: str,
    data: Path | None = None,
    seed: int = 0,
    *,
    label_column: str | None = None,
    val_fraction: float = 0.0,
) -> Dataset:
    """A task from a CLI string: ``vowels:a,i`` (CSV if given, else synthetic), ``xor``,
    ``digits`` or ``digits:0,1``, ``csv:PATH`` (``label_column``), ``mnist:DIR``, ``fm`` or
    ``fm:N`` (the driven-bank features of the published FM set-up, docs/design.md §9),
    ``sensor-bank`` or ``sensor-bank:N`` (quasi-static signals for a driven device).
    ``val_fraction`` applies to the chip-scale tasks (digits, csv, mnist)."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "vowels":
        cl = [c for c in rest.split(",") if c] if rest else ["a", "i"]
        if data is not None:
            return load_vowels(data, cl, seed=seed)
        return synthetic_vowels(cl, seed=seed)
    if kind == "xor":
        return xor(seed=seed)
    if kind == "digits":
        cls = [int(c) for c in rest.split(",")] if rest else None
        return digits(cls, seed=seed, val_fraction=val_fraction)
    if kind == "csv" and rest:
        return load_csv_task(Path(rest), label_column, seed, val_fraction)
    if kind == "mnist" and rest:
        return load_mnist(Path(rest), seed, val_fraction)
    if kind == "fm":
        return _fm_task(rest, seed)
    if kind == "sensor-bank":
        if rest and not rest.isdigit():
            raise TaskError(f"--task sensor-bank:{rest}: the number of classes must be an integer")
        return sensor_bank(int(rest) if rest else 2, seed=seed)
    raise TaskError(
        f"--task: {spec!r} is unknown; allowed: vowels:a,i (any of a,e,i,o,u), xor, "
        "digits[:0,1,…], csv:PATH, mnist:DIR, fm[:N_CLASSES], sensor-bank[:N_CLASSES]"
    )


def _fm_task(rest: str, seed: int) -> Dataset:
    """``fm[:N_CLASSES]``: the published FM set-up's driven-bank coherence features
    (:func:`phasegrad_hw.learning.fm.fm_dataset`; 3 classes unless given)."""
    from phasegrad_hw.learning.fm import fm_dataset

    try:
        n = int(rest) if rest else 3
    except ValueError:
        raise TaskError(f"--task fm:{rest}: the number of classes must be an integer") from None
    if not 2 <= n <= 20:
        raise TaskError(f"--task fm:{rest}: {n} classes; allowed 2…20")
    ds, seconds = fm_dataset(seed, n_classes=n)
    log.info(
        "fm task: %d signals through the sensor bank in %.1f s",
        len(ds.y_train) + len(ds.y_test),
        seconds,
    )
    return ds


# --------------------------------------------------------------------------- encoding
class Encoding(StrictModel):
    """How a task maps onto a device (inputs, clamp targets, decision rule).

    ``inputs``: ``frequency`` — input oscillator ω = input_scale · x (model units);
    ``drive`` — a driven sensor bank's quasi-static drive: amplitude F_i = drive_scale ·
    (x_i + 1)/2 (clipped to [0, drive_scale], model units) on ``roles.drive``, phase 0
    (docs/design.md §9)."""

    input_scale: float = Field(default=1.5, gt=0.0)  # input oscillator ω = input_scale · x
    margin: float = Field(default=0.2, gt=0.0, lt=1.5)  # target phase magnitude (rad)
    readout: Literal["template", "argmax_cos", "difference", "mean_phase"] = "template"
    difference_loss: Literal["quadratic", "hinge"] = "quadratic"
    inputs: Literal["frequency", "drive"] = "frequency"
    drive_scale: float = Field(default=1.0, gt=0.0)  # largest drive amplitude (model units)

    @classmethod
    def for_device(cls, model: DeviceModel, **fields: Any) -> Encoding:
        """The encoding of ``model``'s inputs: a drive on a device whose only inputs are its
        driven oscillators (``roles.drive``, no frequency or held inputs; amplitudes up to
        ``limits.drive_max``), else frequencies. ``fields``: the other settings."""
        if model.roles.drive and not model.feature_oscillators:
            return cls(inputs="drive", drive_scale=model.limits.drive_max, **fields)
        return cls(**fields)

    def input_frequencies(self, x: ArrayLike) -> Array:
        """(..., d) scaled features -> (..., d) input oscillator frequencies (model units)."""
        return self.input_scale * np.asarray(x, dtype=np.float64)

    def sample_inputs(self, x: ArrayLike) -> tuple[Array, Array | None]:
        """(n, d) scaled features -> (input frequencies (n, n_inputs), drive amplitudes
        (n, d) or None): frequency inputs, or no input oscillators and a drive per sample."""
        a = np.asarray(x, dtype=np.float64)
        if self.inputs == "frequency":
            return self.input_frequencies(a), None
        amp: Array = self.drive_scale * np.clip(0.5 * (a + 1.0), 0.0, 1.0)
        return np.zeros((len(a), 0)), amp

    def templates(self, n_out: int, n_classes: int | None = None) -> Array:
        """(n_classes, n_out) fixed targets (rad).

        One output per class (``template``/``argmax_cos``): −margin on the class' output,
        +margin elsewhere. ``mean_phase``: every output of class c at
        margin·(2c/(C−1) − 1), i.e. −margin / +margin for two classes.
        """
        if self.readout == "mean_phase":
            C = n_out if n_classes is None else n_classes
            levels = self.margin * (2.0 * np.arange(C) / max(C - 1, 1) - 1.0)
            return np.repeat(levels[:, None], n_out, axis=1)
        t = np.full((n_out, n_out), self.margin)
        np.fill_diagonal(t, -self.margin)
        return t

    def loss_grad(self, y: int | NDArray[np.int64], out: ArrayLike) -> Array:
        """∂L/∂θ_out (rad) of this encoding's loss at output phases ``out`` (..., n_out)."""
        o = np.asarray(out, dtype=np.float64)
        n_out = o.shape[-1]
        yy = np.broadcast_to(np.asarray(y, dtype=np.int64), o.shape[:-1])
        if self.readout != "difference":
            return wrap(o - self.templates(n_out)[yy])
        oy = np.take_along_axis(o, yy[..., None], axis=-1)  # (..., 1)
        r = wrap(oy - o) + 2.0 * self.margin  # r_j = θ_y − θ_j + 2m
        if self.difference_loss == "hinge":
            r = np.maximum(r, 0.0)
        onehot = np.arange(n_out) == yy[..., None]
        r = np.where(onehot, 0.0, r)
        g = -r  # ∂/∂θ_j (j ≠ y) of ½ r_j² is −r_j
        g = np.where(onehot, r.sum(axis=-1, keepdims=True), g)
        return g

    def loss(self, y: int | NDArray[np.int64], out: ArrayLike) -> Array:
        """The loss (rad²) that :meth:`clamp_targets` descends."""
        o = np.asarray(out, dtype=np.float64)
        yy = np.broadcast_to(np.asarray(y, dtype=np.int64), o.shape[:-1])
        if self.readout != "difference":
            return 0.5 * (wrap(o - self.templates(o.shape[-1])[yy]) ** 2).sum(axis=-1)
        oy = np.take_along_axis(o, yy[..., None], axis=-1)
        r = wrap(oy - o) + 2.0 * self.margin
        if self.difference_loss == "hinge":
            r = np.maximum(r, 0.0)
        r = np.where(np.arange(o.shape[-1]) == yy[..., None], 0.0, r)
        return 0.5 * (r**2).sum(axis=-1)

    def clamp_targets(self, y: int | NDArray[np.int64], free_out: ArrayLike) -> Array:
        """Phases (rad) to clamp the outputs toward, given the free output phases.

        Fixed templates for ``template``/``argmax_cos`` (``free_out`` only sets the shape);
        for ``difference`` t = θ*_out − ∂L/∂θ_out, so the linear nudge β(t − θ) at θ* equals
        −β ∂L/∂θ_out.
        """
        o = np.asarray(free_out, dtype=np.float64)
        if self.readout != "difference":
            yy = np.broadcast_to(np.asarray(y, dtype=np.int64), o.shape[:-1])
            return self.templates(o.shape[-1])[yy].copy()
        return wrap(o - self.loss_grad(y, o))

    def predict(self, out_phases: ArrayLike) -> NDArray[np.int64]:
        """(..., n_out) output phases (rad) -> (...,) class indices."""
        o = np.asarray(out_phases, dtype=np.float64)
        if self.readout == "argmax_cos":
            return np.argmax(np.cos(o), axis=-1).astype(np.int64)
        if self.readout == "difference":
            return np.argmin(o, axis=-1).astype(np.int64)
        t = self.templates(o.shape[-1])
        d = (wrap(o[..., None, :] - t) ** 2).sum(axis=-1)
        return np.argmin(d, axis=-1).astype(np.int64)
