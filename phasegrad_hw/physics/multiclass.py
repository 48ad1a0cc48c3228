"""Multi-class readout of a layered oscillator network (docs/design.md §8).

Scores are z_o = s·sin θ_o (s a dimensionless scale), the loss is the softmax cross-entropy
L = −log softmax(z)[y] and the decision is argmax_o sin θ_o — the minimum of the loss is the
decision rule, so targets, loss and decision agree (docs/design.md §2, "classification readout").

Equilibrium propagation nudges the outputs with the force −β·∂L/∂θ_out. Each loss here exposes
what a solver needs for that nudge: ``value`` (B,), ``grad`` = ∂L/∂θ_out (B, n_out) in 1/rad and
``hessian`` = ∂²L/∂θ_out² (B, n_out, n_out) in 1/rad², and ``take`` (the rows of a sub-batch).

Hardware cannot apply an arbitrary force: it injects a reference at a programmable phase, which
near lock is a linear clamp κβ·(t − θ). :func:`clamp_targets` turns the loss gradient at the free
state into such targets: t = θ* − g/κ gives κβ·(t − θ*) = −β·g, the same force at the free state,
so the clamp nudge (a quadratic loss ½κ‖θ − t‖² whose gradient at θ* is g) yields the gradient
of the cross-entropy as β → 0. κ ≥ 1 keeps every target within ``max_offset_rad`` of θ*, where
the injection is still close to linear.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.physics.coupling import Array, wrap

IntArray = NDArray[np.int64]


class OutputLoss(Protocol):
    """A loss on the output phases of a batch (the nudge of equilibrium propagation)."""

    def value(self, theta_out: Array) -> Array:
        """L per sample (B,) at output phases ``theta_out`` (B, n_out), rad."""
        ...

    def grad(self, theta_out: Array) -> Array:
        """∂L/∂θ_out (B, n_out), 1/rad."""
        ...

    def hessian(self, theta_out: Array) -> Array:
        """∂²L/∂θ_out² (B, n_out, n_out), 1/rad²."""
        ...

    def take(self, rows: NDArray[np.intp]) -> OutputLoss:
        """The same loss on a sub-batch (rows of the batch)."""
        ...


def _softmax(z: Array) -> Array:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    p: Array = e / e.sum(axis=-1, keepdims=True)
    return p


def decide(theta_out: ArrayLike) -> IntArray:
    """Predicted class per sample: argmax_o sin θ_o (``theta_out`` (..., n_out), rad)."""
    th = np.asarray(theta_out, dtype=np.float64)
    return np.argmax(np.sin(th), axis=-1).astype(np.int64)


class SoftmaxCE:
    """L = −log softmax(s·sin θ_out)[y]; ``labels`` (B,) class indices, ``scale`` s > 0."""

    def __init__(self, labels: ArrayLike, scale: float) -> None:
        lab = np.asarray(labels)
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"labels: need a 1-d integer array, got {lab.dtype} {lab.shape}")
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale: {scale!r} must be a positive finite number")
        self.labels = lab.astype(np.int64)
        self.scale = float(scale)

    def _check(self, theta_out: Array) -> None:
        if theta_out.ndim != 2 or theta_out.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"theta_out: shape {theta_out.shape} does not fit {self.labels.shape[0]} labels"
            )
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= theta_out.shape[1]):
            raise ValueError(f"labels: need values in [0, {theta_out.shape[1]})")

    def _parts(self, theta_out: Array) -> tuple[Array, Array, Array]:
        self._check(theta_out)
        z = self.scale * np.sin(theta_out)
        p = _softmax(z)
        onehot = np.zeros_like(p)
        onehot[np.arange(p.shape[0]), self.labels] = 1.0
        return z, p, onehot

    def value(self, theta_out: Array) -> Array:
        z, _, _ = self._parts(theta_out)
        zmax = z.max(axis=-1)
        lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=-1))
        out: Array = lse - z[np.arange(z.shape[0]), self.labels]
        return out

    def grad(self, theta_out: Array) -> Array:
        _, p, onehot = self._parts(theta_out)
        g: Array = self.scale * np.cos(theta_out) * (p - onehot)
        return g

    def hessian(self, theta_out: Array) -> Array:
        _, p, onehot = self._parts(theta_out)
        sc = self.scale * np.cos(theta_out)
        # ∂²L/∂θ_o∂θ_q = s²cosθ_o cosθ_q (p_o δ_oq − p_o p_q) − δ_oq s sinθ_o (p_o − y_o)
        h = -(sc * p)[:, :, None] * (sc * p)[:, None, :]
        diag = sc * sc * p - self.scale * np.sin(theta_out) * (p - onehot)
        idx = np.arange(p.shape[1])
        h[:, idx, idx] += diag
        return h

    def take(self, rows: NDArray[np.intp]) -> SoftmaxCE:
        return SoftmaxCE(self.labels[rows], self.scale)


class LinearClamp:
    """The hardware clamp as a loss: L = ½·κ·‖wrap(θ_out − t)‖², force κβ·(t − θ) near lock.

    ``targets`` (B, n_out) phases (rad), ``gain`` κ per sample (B,) or scalar (dimensionless).
    """

    def __init__(self, targets: ArrayLike, gain: ArrayLike = 1.0) -> None:
        t = np.asarray(targets, dtype=np.float64)
        if t.ndim != 2:
            raise ValueError(f"targets: shape {t.shape} must be (B, n_out)")
        g = np.broadcast_to(np.asarray(gain, dtype=np.float64), (t.shape[0],))
        if not np.all(g > 0):
            raise ValueError("gain: every clamp gain must be > 0")
        self.targets = t
        self.gain = np.array(g)

    def _check(self, theta_out: Array) -> None:
        if theta_out.shape != self.targets.shape:
            raise ValueError(f"theta_out: shape {theta_out.shape} != targets {self.targets.shape}")

    def value(self, theta_out: Array) -> Array:
        self._check(theta_out)
        d = wrap(theta_out - self.targets)
        out: Array = 0.5 * self.gain * (d * d).sum(axis=-1)
        return out

    def grad(self, theta_out: Array) -> Array:
        self._check(theta_out)
        g: Array = self.gain[:, None] * wrap(theta_out - self.targets)
        return g

    def hessian(self, theta_out: Array) -> Array:
        self._check(theta_out)
        n = theta_out.shape[1]
        h: Array = self.gain[:, None, None] * np.eye(n)[None, :, :]
        return h

    def take(self, rows: NDArray[np.intp]) -> LinearClamp:
        return LinearClamp(self.targets[rows], self.gain[rows])


def clamp_targets(
    theta_out: ArrayLike, grad: ArrayLike, max_offset_rad: float = math.pi / 4
) -> LinearClamp:
    """Clamp that reproduces the force −β·∂L/∂θ_out at the free state ``theta_out`` (B, n_out).

    Targets t = θ* − g/κ with κ = max(1, max_o |g_o| / ``max_offset_rad``) per sample, so each
    target sits within ``max_offset_rad`` (rad) of the free phase (linear regime of an injection)
    and κβ·(t − θ*) = −β·g. Use the returned clamp as the nudge (its strength is β·κ).
    """
    th = np.asarray(theta_out, dtype=np.float64)
    g = np.asarray(grad, dtype=np.float64)
    if th.shape != g.shape or th.ndim != 2:
        raise ValueError(f"theta_out {th.shape} and grad {g.shape} must both be (B, n_out)")
    if not (0 < max_offset_rad < math.pi):
        raise ValueError(f"max_offset_rad: {max_offset_rad!r} must lie in (0, π)")
    kappa = np.maximum(1.0, np.abs(g).max(axis=1) / max_offset_rad)
    return LinearClamp(wrap(th - g / kappa[:, None]), kappa)
