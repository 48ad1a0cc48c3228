"""Small devices and tasks for tests, examples and benchmarks.

* :func:`model_2_5_2` — the published 2+5+2 vowel topology (docs/design.md §2) as a
  simulated device model, couplings drawn from ``seed``;
* :func:`model_tiny` — a 5-oscillator device that learns :func:`blobs` in a few epochs;
* :func:`blobs` — a two-class 2-D task (a :class:`~phasegrad_hw.learning.tasks.Dataset`);
* :func:`model_layered_small` — a small layered device with held inputs, two bias
  oscillators, signed couplings and three outputs (docs/design.md §8), for any emulator;
* :func:`model_driven_small` — a small device with two driven sensor oscillators
  (docs/design.md §9), for any emulator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phasegrad_hw.backends.simulated import SimulatedDeviceModel
from phasegrad_hw.device.model import DeviceModel, Range
from phasegrad_hw.device.presets import layered, layered_chip
from phasegrad_hw.device.registry import model_class
from phasegrad_hw.learning.tasks import Dataset


def model_2_5_2(seed: int = 0, **overrides: Any) -> SimulatedDeviceModel:
    """The 2+5+2 vowel topology: inputs 0, 1 (0 = reference), hidden 2–6 chained, outputs
    7, 8; K = 2·U(0.5, 1.5) on layer edges, 2·U(0.5, 1.0) on the chain (model units), drawn
    from ``default_rng(seed)``; ``overrides`` replace model fields (e.g. readout noise)."""
    base = layered(2, 5, 2, np.random.default_rng(seed), name="test-2-5-2")
    if not overrides and isinstance(base, SimulatedDeviceModel):
        return base
    return SimulatedDeviceModel.model_validate({**base.model_dump(), **overrides})


def blobs(n_train: int = 40, n_test: int = 20, seed: int = 0, sep: float = 0.6) -> Dataset:
    """Two Gaussian classes in 2-D (centres ±``sep``, sd 0.35), min–max scaled to [−1, 1]
    on the train split."""
    rng = np.random.default_rng([seed, 0xB10B])
    n = n_train + n_test
    y = np.arange(n) % 2
    centres = np.array([[-sep, sep], [sep, -sep]])
    x = centres[y] + 0.35 * rng.standard_normal((n, 2))
    perm = rng.permutation(n)
    x, y = x[perm], y[perm]
    lo, hi = x[:n_train].min(axis=0), x[:n_train].max(axis=0)
    xs = 2 * (x - lo) / (hi - lo) - 1
    return Dataset(
        "blobs",
        ("a", "b"),
        xs[:n_train],
        y[:n_train].astype(np.int64),
        xs[n_train:],
        y[n_train:].astype(np.int64),
    )


def model_tiny(**overrides: Any) -> SimulatedDeviceModel:
    """A 5-oscillator device that learns :func:`blobs` in a few epochs: inputs 0
    (reference) and 1, hidden 2, outputs 3 and 4; output 3 follows input 0 and output 4
    follows input 1 through strong edges, so ω on the outputs sets the decision threshold."""
    data: dict[str, Any] = {
        "backend": "simulated",
        "name": "test-tiny",
        "n_oscillators": 5,
        "edges": [
            {"i": 0, "j": 2, "k": 1.0},
            {"i": 1, "j": 2, "k": 1.0},
            {"i": 2, "j": 3, "k": 1.0},
            {"i": 2, "j": 4, "k": 1.0},
            {"i": 1, "j": 4, "k": 2.0},
            {"i": 0, "j": 3, "k": 2.0},
        ],
        "roles": {"inputs": [0, 1], "hidden": [2], "outputs": [3, 4], "reference": 0},
    }
    data.update(overrides)
    return SimulatedDeviceModel.model_validate(data)


def model_layered_small(
    backend: str = "simulated", seed: int = 0, sizes: tuple[int, int, int] = (4, 6, 3)
) -> DeviceModel:
    """A layered held-input device for ``backend``: ``sizes`` = (held inputs, hidden,
    outputs), ``limits.omega`` [−1, 1], two bias oscillators at 0 and π/2 (the first is the
    reference), signed couplings K ~ N(0, (4/√fan_in)²) drawn from
    ``default_rng([seed, 0x1A4])`` in the edge order of
    :class:`~phasegrad_hw.physics.layered.LayeredNetwork` (model units)."""
    from phasegrad_hw.physics.layered import LayeredNetwork

    net = LayeredNetwork(sizes[0], (sizes[1],), sizes[2])
    rng = np.random.default_rng([seed, 0x1A4])
    fan_in = np.zeros(net.n)
    for b in net.blocks:
        fan_in[b.rows] += b.cols.size
    K = np.concatenate(
        [
            (
                rng.standard_normal((b.rows.size, b.cols.size))
                * 4.0
                / np.sqrt(fan_in[b.rows, None])
            ).ravel()
            for b in net.blocks
        ]
    )
    m = layered_chip(backend, sizes, (0.0, 0.5 * np.pi), K.tolist(), name=f"test-layered-{backend}")
    m.limits.omega = Range(min=-1.0, max=1.0)  # every setting in range locks
    return m


def model_driven_small(backend: str = "simulated") -> DeviceModel:
    """Five oscillators with two driven sensors: reference 0, sensors 1 and 2 (``roles.drive``,
    inputs), hidden 3 coupled to both, output 4 (model units, K ≈ 1)."""
    data: dict[str, Any] = {
        "backend": backend,
        "name": f"test-driven-{backend}",
        "n_oscillators": 5,
        "edges": [
            {"i": 0, "j": 3, "k": 1.0},
            {"i": 1, "j": 3, "k": 1.0},
            {"i": 2, "j": 3, "k": 1.2},
            {"i": 3, "j": 4, "k": 1.5},
            {"i": 1, "j": 2, "k": 0.5},
        ],
        "roles": {"inputs": [1, 2], "hidden": [3], "outputs": [4], "drive": [1, 2],
                  "reference": 0},
    }  # fmt: skip
    return model_class(backend).from_dict(data)
