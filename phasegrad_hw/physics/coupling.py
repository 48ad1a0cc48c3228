"""Kuramoto physics: coupling functions, right-hand side, Jacobian, energy, equilibria.

Model (docs/design.md §2), phases θ (rad), frequencies ω (rad per model time unit)::

    dθ_i/dt = ω_i + Σ_j K_ij H(θ_j − θ_i) + n_i(θ_i)

``K[i, j]`` is the coupling of oscillator j onto oscillator i (it may be asymmetric).
``n_i`` is an optional nudge toward a target phase: linear β_i (θ_tgt,i − θ_i) or injection
β_i sin(θ_tgt,i − θ_i). Equilibria are found in the rotating frame with the reference
oscillator pinned at phase 0 ("reduced system"); the caller passes frequencies in that frame
(see :func:`centred`). Dense arrays may be batched: ``omega`` (B, N), ``K`` (N, N) or
(B, N, N). A ``scipy.sparse`` K selects the sparse path (one network, large N).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

log = logging.getLogger(__name__)

Array = NDArray[np.float64]
NudgeKind = Literal["linear", "injection"]


# --------------------------------------------------------------------------- validation
def _as_float_array(name: str, value: ArrayLike) -> Array:
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = arr[~np.isfinite(arr)].ravel()[0]
        raise ValueError(f"{name}: contains a non-finite value ({bad}); all entries must be finite")
    return arr


def _check_ref(ref: int, n: int) -> int:
    if not isinstance(ref, (int, np.integer)) or not 0 <= int(ref) < n:
        raise ValueError(
            f"ref: {ref!r} is out of range; must be an oscillator index in [0, {n - 1}]"
        )
    return int(ref)


def diagonal_view(A: Array) -> Array:
    """Writable view (..., n) of the diagonals of a stack of square matrices (..., n, n) laid
    out contiguously (a fresh product: basic slicing, no fancy-index gathers); raises if A is
    not contiguous rather than writing into a copy."""
    n = A.shape[-1]
    flat = A.view()
    flat.shape = (*A.shape[:-2], n * n)  # AttributeError if this needs a copy
    return flat[..., :: n + 1]


def wrap(x: ArrayLike) -> Array:
    """Wrap angles (rad) to [−π, π): the angle of e^{ix}."""
    return np.remainder(np.asarray(x, dtype=np.float64) + np.pi, 2.0 * np.pi) - np.pi


def centred(omega: ArrayLike) -> Array:
    """Frequencies in the frame rotating at their mean: ω^c = ω − mean(ω) (last axis)."""
    w = np.asarray(omega, dtype=np.float64)
    return w - w.sum(axis=-1, keepdims=True) / w.shape[-1]  # (= mean, without its overhead)


# --------------------------------------------------------------------------- coupling
@dataclass(frozen=True)
class CouplingFunction:
    """H(φ) = Σ_k a_k sin(kφ − ψ) + b0 + b1 cos φ.

    ``harmonics`` = (a_1, a_2, …); ``phase_lag`` ψ (rad) is the Kuramoto–Sakaguchi lag of
    coupled lasers; ``offset`` b0 and ``cos_offset`` b1 are the non-odd terms typical of ring
    oscillators. H is odd (the gradient identity holds) iff ψ = 0 and b0 = b1 = 0.
    """

    harmonics: tuple[float, ...] = (1.0,)
    phase_lag: float = 0.0
    offset: float = 0.0
    cos_offset: float = 0.0

    def __post_init__(self) -> None:
        values = (*self.harmonics, self.phase_lag, self.offset, self.cos_offset)
        if len(self.harmonics) == 0:
            raise ValueError("harmonics: must hold at least one coefficient (a_1)")
        if not all(np.isfinite(v) for v in values):
            raise ValueError(f"coupling function: non-finite coefficient in {values}")

    @property
    def is_odd(self) -> bool:
        return self.phase_lag == 0.0 and self.offset == 0.0 and self.cos_offset == 0.0

    def _series(self, p: Array, trig: Callable[[Array], Array], derivative: bool) -> Array:
        """Σ_k w_k·trig(kφ − ψ) with w_k = a_k (H) or k·a_k (H')."""
        lag = self.phase_lag
        out = trig(p - lag if lag else p)
        if self.harmonics[0] != 1.0:
            out *= self.harmonics[0]
        for k, a in enumerate(self.harmonics[1:], start=2):
            if a:
                out += (k * a if derivative else a) * trig(k * p - lag if lag else k * p)
        return out

    def value(self, phi: ArrayLike) -> Array:
        """H(φ)."""
        p = np.asarray(phi, dtype=np.float64)
        out = self._series(p, np.sin, derivative=False)
        if self.offset:
            out += self.offset
        if self.cos_offset:
            out += self.cos_offset * np.cos(p)
        return out

    def derivative(self, phi: ArrayLike) -> Array:
        """H'(φ)."""
        p = np.asarray(phi, dtype=np.float64)
        out = self._series(p, np.cos, derivative=True)
        if self.cos_offset:
            out -= self.cos_offset * np.sin(p)
        return out

    def value_and_derivative(self, phi: Array) -> tuple[Array, Array]:
        """(H(φ), H'(φ)); the pure-sine case shares one pass."""
        if len(self.harmonics) == 1 and self.is_odd:
            a = self.harmonics[0]
            if a == 1.0:
                return np.sin(phi), np.cos(phi)
            return a * np.sin(phi), a * np.cos(phi)
        return self.value(phi), self.derivative(phi)

    def potential(self, phi: ArrayLike) -> Array:
        """V(φ) with V' = H (only for odd H): V = −Σ_k a_k cos(kφ)/k."""
        if not self.is_odd:
            raise ValueError("potential: H has a phase lag or offsets, so no energy exists")
        p = np.asarray(phi, dtype=np.float64)
        out = np.zeros_like(p)
        for k, a in enumerate(self.harmonics, start=1):
            out = out - a * np.cos(k * p) / k
        return out


SIN = CouplingFunction()


# --------------------------------------------------------------------------- dense model
def phase_differences(theta: Array) -> Array:
    """D[..., i, j] = θ_j − θ_i."""
    return theta[..., None, :] - theta[..., :, None]


def _nudge_terms(
    theta: Array, beta: Array | None, target: Array | None, nudge: NudgeKind
) -> tuple[Array, Array] | None:
    """Nudge force n(θ) and its diagonal derivative ∂n_i/∂θ_i, or None without a nudge."""
    if beta is None:
        return None
    tgt = np.zeros_like(theta) if target is None else target
    if nudge == "linear":
        return beta * (tgt - theta), np.broadcast_to(-beta, theta.shape)
    if nudge == "injection":
        d = tgt - theta
        return beta * np.sin(d), -beta * np.cos(d)
    raise ValueError(f"nudge: {nudge!r} is not a nudge kind; use 'linear' or 'injection'")


def rhs(
    theta: ArrayLike,
    omega: ArrayLike,
    K: ArrayLike,
    coupling: CouplingFunction = SIN,
    *,
    beta: ArrayLike | None = None,
    target: ArrayLike | None = None,
    nudge: NudgeKind = "linear",
) -> Array:
    """dθ/dt (rad per time unit) for dense K; shapes broadcast over a leading batch axis."""
    th = np.asarray(theta, dtype=np.float64)
    Km = np.asarray(K, dtype=np.float64)
    f = np.asarray(omega, dtype=np.float64) + np.einsum(
        "...ij,...ij->...i", Km, coupling.value(phase_differences(th))
    )
    nt = _nudge_terms(th, _opt(beta), _opt(target), nudge)
    return f if nt is None else f + nt[0]


def jacobian(
    theta: ArrayLike,
    K: ArrayLike,
    coupling: CouplingFunction = SIN,
    *,
    beta: ArrayLike | None = None,
    target: ArrayLike | None = None,
    nudge: NudgeKind = "linear",
) -> Array:
    """∂(dθ_i/dt)/∂θ_j: K_ij H'(θ_j − θ_i) off the diagonal, minus the row sum on it."""
    th = np.asarray(theta, dtype=np.float64)
    W = np.asarray(K, dtype=np.float64) * coupling.derivative(phase_differences(th))
    diag = diagonal_view(W)
    diag[...] = 0.0
    diag[...] = -W.sum(axis=-1)
    nt = _nudge_terms(th, _opt(beta), _opt(target), nudge)
    if nt is not None:
        diag += nt[1]
    return W


def energy(
    theta: ArrayLike, omega: ArrayLike, K: ArrayLike, coupling: CouplingFunction = SIN
) -> Array:
    """Lyapunov energy E = −Σ ω_i θ_i + ½ Σ_ij K_ij V(θ_j − θ_i) (V′ = H), dθ/dt = −∇E.

    For H = sin, V = −cos: E = −Σ ω_i θ_i − ½ Σ_ij K_ij cos(θ_j − θ_i).

    Exists only for symmetric K and odd H; raises ValueError otherwise.
    """
    Km = np.asarray(K, dtype=np.float64)
    if not np.allclose(Km, np.swapaxes(Km, -1, -2)):
        raise ValueError("K: energy needs a symmetric coupling matrix")
    th = np.asarray(theta, dtype=np.float64)
    V = coupling.potential(phase_differences(th))
    return -(np.asarray(omega) * th).sum(axis=-1) + 0.5 * (Km * V).sum(axis=(-1, -2))


def _opt(x: ArrayLike | None) -> Array | None:
    return None if x is None else np.asarray(x, dtype=np.float64)


def _nudge_args(
    beta: ArrayLike | None, target: ArrayLike | None, shape: tuple[int, ...], direction: int
) -> tuple[Array | None, Array | None]:
    """Validated (signed β, target) broadcast to ``shape``; the sign carries ``direction``."""
    if beta is None:
        return None, None
    b = _as_float_array("beta", beta)
    if (b < 0).any():
        raise ValueError(f"beta: {b[b < 0].ravel()[0]} is negative; nudge strength must be >= 0")
    t = _as_float_array("target", 0.0 if target is None else target)
    try:  # (arrays of the right shape as they are: broadcast_to is slow for small arrays)
        bb = b if b.shape == shape else np.broadcast_to(b, shape)
        tt = t if t.shape == shape else np.broadcast_to(t, shape)
    except ValueError as exc:
        raise ValueError(f"beta/target: shapes {b.shape}, {t.shape} do not fit {shape}") from exc
    return bb * float(direction), tt
