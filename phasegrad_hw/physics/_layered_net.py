"""Description of a layered oscillator network (docs/design.md §8): layers, roles and the dense
edge blocks of the coupling vector. Sizes only; the parameters ω (model units) and K live in
arrays. Public through :mod:`phasegrad_hw.physics.layered`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.physics.coupling import Array

IntArray = NDArray[np.intp]
ROLE_INPUT, ROLE_BIAS, ROLE_HIDDEN, ROLE_OUTPUT = "input", "bias", "hidden", "output"


@dataclass(frozen=True)
class Block:
    """A dense block of edges: every (row, col) pair, row-major in the coupling vector.

    ``rows`` are oscillators of a free layer, ``cols`` of the layer below (or biases);
    couplings ``K[start:stop].reshape(len(rows), len(cols))``.
    """

    name: str
    rows: IntArray
    cols: IntArray
    start: int

    @property
    def stop(self) -> int:
        return self.start + self.rows.size * self.cols.size

    def view(self, K: Array) -> Array:
        """This block of a coupling vector ``K`` (..., E) as (..., rows, cols)."""
        return K[..., self.start : self.stop].reshape(*K.shape[:-1], self.rows.size, self.cols.size)


@dataclass(frozen=True)
class LayeredNetwork:
    """Frozen description of a layered network (sizes only; parameters live in arrays).

    Oscillator order: inputs, biases, hidden layer 1, …, outputs. ``bias_phases_rad`` are the
    phases at which the bias oscillators are held (rad). Parameters are ω (n_free,) for the free
    oscillators (hidden then outputs, model units) and K (n_edges,) on :attr:`edges`, block by
    block (:attr:`blocks`): held → hidden 1, then per later free layer: previous → it, bias → it.
    """

    n_in: int
    hidden: tuple[int, ...]
    n_out: int
    bias_phases_rad: tuple[float, ...] = (0.0, math.pi / 2)

    def __post_init__(self) -> None:
        if self.n_in < 1 or self.n_out < 1:
            raise ValueError(f"n_in, n_out: need >= 1, got {self.n_in}, {self.n_out}")
        if len(self.hidden) < 1 or min(self.hidden) < 1:
            raise ValueError(f"hidden: need at least one layer of size >= 1, got {self.hidden}")
        if not all(math.isfinite(p) for p in self.bias_phases_rad):
            raise ValueError(f"bias_phases_rad: {self.bias_phases_rad} must be finite")

    @property
    def n_bias(self) -> int:
        return len(self.bias_phases_rad)

    @property
    def n_held(self) -> int:
        return self.n_in + self.n_bias

    @property
    def n_free(self) -> int:
        return sum(self.hidden) + self.n_out

    @property
    def n(self) -> int:
        return self.n_held + self.n_free

    @cached_property
    def layers(self) -> tuple[IntArray, ...]:
        """Oscillator indices per layer: held (inputs + biases), hidden layers, outputs."""
        sizes = (self.n_held, *self.hidden, self.n_out)
        bounds = np.cumsum((0, *sizes))
        return tuple(np.arange(bounds[k], bounds[k + 1]) for k in range(len(sizes)))

    @property
    def inputs(self) -> IntArray:
        return np.arange(self.n_in)

    @property
    def biases(self) -> IntArray:
        return np.arange(self.n_in, self.n_held)

    @property
    def held(self) -> IntArray:
        return self.layers[0]

    @property
    def free(self) -> IntArray:
        return np.arange(self.n_held, self.n)

    @property
    def outputs(self) -> IntArray:
        return self.layers[-1]

    @cached_property
    def roles(self) -> NDArray[np.str_]:
        """Role of every oscillator: "input", "bias", "hidden" or "output"."""
        r = np.empty(self.n, dtype="<U6")
        r[self.inputs] = ROLE_INPUT
        r[self.biases] = ROLE_BIAS
        r[self.n_held : self.outputs[0]] = ROLE_HIDDEN
        r[self.outputs] = ROLE_OUTPUT
        return r

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        out: list[Block] = []
        start = 0
        first = self.layers[1]
        out.append(Block("held->hidden1", first, self.held, start))
        start = out[-1].stop
        for k in range(2, len(self.layers)):
            name = "output" if k == len(self.layers) - 1 else f"hidden{k}"
            prev = "hidden" + str(k - 1)
            out.append(Block(f"{prev}->{name}", self.layers[k], self.layers[k - 1], start))
            start = out[-1].stop
            out.append(Block(f"bias->{name}", self.layers[k], self.biases, start))
            start = out[-1].stop
        return tuple(out)

    @cached_property
    def edges(self) -> IntArray:
        """(n_edges, 2) oscillator pairs (i, j), i in the later layer, j below it."""
        parts = [
            np.stack(np.meshgrid(b.rows, b.cols, indexing="ij"), axis=-1).reshape(-1, 2)
            for b in self.blocks
        ]
        return np.concatenate(parts).astype(np.intp)

    @property
    def n_edges(self) -> int:
        return self.blocks[-1].stop

    def held_phases(self, inputs_rad: ArrayLike) -> Array:
        """Held phases (B, n_held): the input phases (B, n_in) followed by the bias phases."""
        x = np.asarray(inputs_rad, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"inputs_rad: shape {x.shape} must be (B, {self.n_in})")
        bias = np.broadcast_to(np.asarray(self.bias_phases_rad), (x.shape[0], self.n_bias))
        return np.concatenate([x, bias], axis=1)

    def check_params(self, omega: ArrayLike, K: ArrayLike) -> tuple[Array, Array]:
        w = np.asarray(omega, dtype=np.float64)
        k = np.asarray(K, dtype=np.float64)
        if w.shape != (self.n_free,):
            raise ValueError(f"omega: shape {w.shape} must be ({self.n_free},)")
        if k.shape != (self.n_edges,):
            raise ValueError(f"K: shape {k.shape} must be ({self.n_edges},)")
        if not (np.isfinite(w).all() and np.isfinite(k).all()):
            raise ValueError("omega, K: entries must be finite")
        return w, k
