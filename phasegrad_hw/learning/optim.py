"""Parameter updates shared by every EP trainer: the optimizer and the locking projections.

* :class:`Optimizer` — SGD, momentum or Adam on one parameter array (any shape) with its own
  learning rate; the EP rule (:func:`phasegrad_hw.learning.ep.ep_update`, the hardware
  controller) and the layered engine (:mod:`phasegrad_hw.engine.layered`) both step through it.
  The learning rate is the caller's (e.g. ``lr·decay^epoch``).
* :func:`project_locking` — the two safeguards that keep a trained layered network locked
  (docs/design.md §8): the frequency bound |ω_f| <= ``omega_lock_frac``·Σ_j |K_fj| on every
  free oscillator (locking needs the detuning below the total coupling that can pull it) and
  the held-load bound Σ_f |K_xf| <= ``held_load_frac``·``injection`` on every held oscillator
  (its phase error from the back-action of the network is then below
  arcsin(held_load_frac)); a held oscillator over the bound has all its couplings scaled
  down to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
IntArray = NDArray[np.intp] | NDArray[np.int64]

__all__ = ["LockBounds", "Optimizer", "OptimizerSettings", "project_locking"]


class OptimizerSettings(Protocol):
    """The optimizer fields of a trainer's config (the EP rule, the layered engine's)."""

    @property
    def optimizer(self) -> Literal["adam", "momentum", "sgd"]: ...
    @property
    def momentum(self) -> float: ...
    @property
    def adam_b1(self) -> float: ...
    @property
    def adam_b2(self) -> float: ...
    @property
    def adam_eps(self) -> float: ...


class Optimizer:
    """Adam / momentum / SGD on one parameter array of ``shape``: :meth:`step` returns the
    change to subtract for gradient ``g`` at learning rate ``lr``. ``state``/``load`` give the
    moments as plain arrays (checkpoints resume exactly)."""

    def __init__(self, cfg: OptimizerSettings, shape: int | tuple[int, ...]) -> None:
        self.cfg = cfg
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = 0

    def step(self, g: Array, lr: float) -> Array:
        c = self.cfg
        if c.optimizer == "sgd":
            out_sgd: Array = lr * g
            return out_sgd
        if c.optimizer == "momentum":
            self.m = c.momentum * self.m + g
            out_m: Array = lr * self.m
            return out_m
        self.t += 1
        self.m = c.adam_b1 * self.m + (1 - c.adam_b1) * g
        self.v = c.adam_b2 * self.v + (1 - c.adam_b2) * g * g
        mh = self.m / (1 - c.adam_b1**self.t)
        vh = self.v / (1 - c.adam_b2**self.t)
        out: Array = lr * mh / (np.sqrt(vh) + c.adam_eps)
        return out

    def state(self) -> dict[str, Array | int]:
        return {"m": self.m.copy(), "v": self.v.copy(), "t": self.t}

    def load(self, state: dict[str, Array | int]) -> None:
        m, v = np.asarray(state["m"], np.float64), np.asarray(state["v"], np.float64)
        if m.shape != self.m.shape or v.shape != self.v.shape:
            raise ValueError(f"optimizer state: shape {m.shape} does not match {self.m.shape}")
        self.m, self.v, self.t = m.copy(), v.copy(), int(state["t"])


@dataclass(frozen=True)
class LockBounds:
    """The locking safeguards (module doc): ``omega_lock_frac`` (0, 1], ``injection`` the held
    oscillators' injection strength (model units), ``held_load_frac`` (0, 1)."""

    omega_lock_frac: float
    injection: float
    held_load_frac: float


def project_locking(
    n: int,
    edges: IntArray,
    held: IntArray,
    free: IntArray,
    omega_free: Array,
    K: Array,
    bounds: LockBounds,
) -> tuple[Array, Array, int, int]:
    """Apply both safeguards (module doc) to a network of ``n`` oscillators with couplings
    ``K`` (E,) on ``edges`` (E, 2), held oscillators ``held`` and free ones ``free`` (whose
    frequencies are ``omega_free``, model units). Returns (ω_free, K, #ω clipped, #held
    oscillators scaled)."""
    i, j = edges[:, 0], edges[:, 1]
    a = np.abs(K)
    load = np.zeros(n)
    np.add.at(load, i, a)
    np.add.at(load, j, a)
    cap = bounds.held_load_frac * bounds.injection
    over = held[load[held] > cap]
    if over.size:
        factor = np.ones(n)
        factor[over] = cap / load[over]
        K = K * factor[i] * factor[j]
        a = np.abs(K)
        load = np.zeros(n)
        np.add.at(load, i, a)
        np.add.at(load, j, a)
    bound = bounds.omega_lock_frac * load[free]
    clipped = int((np.abs(omega_free) > bound).sum())
    return np.clip(omega_free, -bound, bound), K, clipped, int(over.size)
