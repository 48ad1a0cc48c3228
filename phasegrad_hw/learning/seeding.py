"""Initial natural frequencies: random (published) or spectral seeding (docs/design.md §2).

Spectral seeding for sparse layered binary classifiers: with v_i, λ_i the eigenpairs of the
reduced graph Laplacian L̃ = D − K (reference row/column removed) and
s_i = v_i[out1] − v_i[out2], ω ∝ Σ_i (s_i/λ_i) v_i = L̃⁻¹(e_out1 − e_out2), scaled so that
max|ω| = 0.3 (model units), inputs zeroed. In the linearised locked state θ ≈ L̃⁻¹ω this
is the frequency pattern that separates the two outputs most per unit of frequency.

Random init (our reading of the published code, arXiv 2604.10272): ω ~ U(−0.3, 0.3) on the
hidden and output oscillators, 0 on the inputs (overwritten per sample by the encoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.device.model import DeviceModel

if TYPE_CHECKING:
    from phasegrad_hw.learning.controller import Parameters

Array = NDArray[np.float64]
Init = Literal["random", "spectral"]
RANDOM_OMEGA_RANGE = 0.3  # |ω| bound of the random init (model units)
SPECTRAL_MAX_OMEGA = 0.3  # max|ω| after spectral seeding (docs/design.md §2)


def spectral_seed(K: ArrayLike, ref: int, out1: int, out2: int, inputs: Sequence[int]) -> Array:
    """ω (N,) ∝ Σ_i (s_i/λ_i) v_i on the reduced Laplacian of K, max|ω| = 0.3, inputs = 0."""
    Km = np.asarray(K, dtype=np.float64)
    n = Km.shape[0]
    if Km.shape != (n, n):
        raise ValueError(f"K: shape {Km.shape} must be square")
    for name, v in (("ref", ref), ("out1", out1), ("out2", out2)):
        if not 0 <= v < n:
            raise ValueError(f"{name}: {v} is not an oscillator (allowed 0…{n - 1})")
    if out1 == out2 or ref in (out1, out2):
        raise ValueError(
            f"out1/out2/ref: {out1}, {out2}, {ref} must be three different oscillators"
        )
    Ks = 0.5 * (Km + Km.T)
    L = np.diag(Ks.sum(axis=1)) - Ks
    keep = np.flatnonzero(np.arange(n) != ref)
    lam, V = np.linalg.eigh(L[np.ix_(keep, keep)])
    if lam[0] <= 1e-12 * max(1.0, lam[-1]):
        raise ValueError("K: the coupling graph is not connected to the reference (singular L̃)")
    pos = {int(k): a for a, k in enumerate(keep)}
    s = V[pos[out1]] - V[pos[out2]]
    w = np.zeros(n)
    w[keep] = V @ (s / lam)
    w[np.asarray(list(inputs), dtype=np.int64)] = 0.0
    big = np.abs(w).max()
    return w * (SPECTRAL_MAX_OMEGA / big) if big > 0 else w


def initial_omega(
    model: DeviceModel,
    rng: np.random.Generator,
    init: Init = "random",
    coupling: ArrayLike | None = None,
) -> Array:
    """(N,) initial natural frequencies (model units); see the module docstring."""
    n = model.n
    w = np.zeros(n)
    learn = np.asarray(model.roles.hidden + model.roles.outputs, dtype=np.int64)
    if init == "random":
        w[learn] = rng.uniform(-RANDOM_OMEGA_RANGE, RANDOM_OMEGA_RANGE, len(learn))
        return w
    if init == "spectral":
        if len(model.roles.outputs) != 2:
            raise ValueError(
                f"init: 'spectral' needs 2 outputs; the device has {len(model.roles.outputs)}"
            )
        K = model.coupling_matrix()
        if coupling is not None:
            e = model.edge_index
            K = np.zeros((n, n))
            K[e[:, 0], e[:, 1]] = coupling
            K[e[:, 1], e[:, 0]] = coupling
        o1, o2 = model.roles.outputs
        return spectral_seed(K, model.roles.reference, o1, o2, model.roles.inputs)
    raise ValueError(f"init: {init!r} — allowed: random, spectral")


def initial_parameters(
    model: DeviceModel, rng: np.random.Generator, init: Init = "random"
) -> Parameters:
    """Initial :class:`~phasegrad_hw.learning.controller.Parameters`: ω from :func:`initial_omega`,
    couplings from ``model.coupling_values()``."""
    from phasegrad_hw.learning.controller import Parameters

    return Parameters(omega=initial_omega(model, rng, init), coupling=model.coupling_values())
