"""The external drive of a driven oscillator network (docs/design.md §2, §9): a phase Ψ(t) in
rad, model time units. Public through :mod:`phasegrad_hw.physics.dynamics`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from phasegrad_hw.physics.coupling import Array, _as_float_array


@dataclass(frozen=True)
class Drive:
    """An external drive phase Ψ(t) (rad), one signal or one per sample (shape () or (B,)).

    Built from a carrier and a sampled phase modulation, Ψ(t) = phase0 + carrier·t + m(t),
    with ``carrier`` (rad per time unit) and ``phase0`` (rad) scalars or (B,), and m linearly
    interpolated between ``times`` (M,) on ``modulation`` (M,) or (B, M) (rad; held constant
    outside the samples) — :meth:`carrier_wave`; or from any callable t ↦ Ψ(t) with an
    optional callable for dΨ/dt (else a centred difference) — :meth:`from_callable`.
    """

    carrier: Array
    phase0: Array
    times: Array | None = None
    modulation: Array | None = None
    fn: Callable[[float], ArrayLike] | None = None
    fn_frequency: Callable[[float], ArrayLike] | None = None

    @classmethod
    def carrier_wave(
        cls,
        carrier: ArrayLike = 0.0,
        *,
        phase0: ArrayLike = 0.0,
        times: ArrayLike | None = None,
        modulation: ArrayLike | None = None,
    ) -> Drive:
        """Ψ(t) = phase0 + carrier·t + m(t) (see the class docstring for units and shapes)."""
        c = _as_float_array("carrier", carrier)
        p = _as_float_array("phase0", phase0)
        if c.ndim > 1 or p.ndim > 1:
            raise ValueError(f"carrier/phase0: shapes {c.shape}, {p.shape} must be () or (B,)")
        if (times is None) != (modulation is None):
            raise ValueError("times/modulation: give both (a sampled phase modulation) or neither")
        if times is None or modulation is None:
            return cls(c, p)
        t = _as_float_array("times", times)
        m = _as_float_array("modulation", modulation)
        if t.ndim != 1 or t.size < 2 or np.any(np.diff(t) <= 0):
            raise ValueError(f"times: shape {t.shape}; must be (M,), M >= 2, strictly increasing")
        if m.ndim not in (1, 2) or m.shape[-1] != t.size:
            raise ValueError(f"modulation: shape {m.shape} must be (M,) or (B, M), M = {t.size}")
        return cls(c, p, t, m)

    @classmethod
    def from_callable(
        cls,
        phase: Callable[[float], ArrayLike],
        frequency: Callable[[float], ArrayLike] | None = None,
    ) -> Drive:
        """Ψ(t) = ``phase(t)`` (rad, scalar or (B,)); dΨ/dt = ``frequency(t)`` if given."""
        zero = np.zeros(())
        return cls(zero, zero, fn=phase, fn_frequency=frequency)

    def phase(self, t: float) -> Array:
        """Ψ(t) (rad), shape () or (B,)."""
        if self.fn is not None:
            return _as_float_array("drive phase", self.fn(float(t)))
        psi = self.phase0 + self.carrier * t
        if self.times is not None and self.modulation is not None:
            psi = psi + _interp_rows(self.times, self.modulation, t)
        return np.asarray(psi, dtype=np.float64)

    def phases(self, ts: ArrayLike) -> Array:
        """Ψ at each time of ``ts`` (T,): shape (T,) or (T, B)."""
        return np.stack([self.phase(float(t)) for t in np.asarray(ts, dtype=np.float64)])

    def frequency(self, t: float) -> Array:
        """dΨ/dt (rad per time unit) at t; the slope of m is that of its interpolation
        segment (a centred difference for a callable without ``frequency``)."""
        if self.fn is not None:
            if self.fn_frequency is not None:
                return _as_float_array("drive frequency", self.fn_frequency(float(t)))
            h = 1e-6 * max(1.0, abs(t))
            return (self.phase(t + h) - self.phase(t - h)) / (2.0 * h)
        f = np.asarray(self.carrier, dtype=np.float64)
        if self.times is not None and self.modulation is not None:
            k = int(np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, self.times.size))
            if k < self.times.size - 1 and t >= self.times[0]:
                m = self.modulation
                f = f + (m[..., k + 1] - m[..., k]) / (self.times[k + 1] - self.times[k])
        return np.asarray(f, dtype=np.float64)


def _interp_rows(times: Array, values: Array, t: float) -> Array:
    """Linear interpolation of every row of ``values`` (…, M) at t (held outside)."""
    if t <= times[0]:
        return values[..., 0]
    if t >= times[-1]:
        return values[..., -1]
    k = int(np.searchsorted(times, t, side="right") - 1)
    a = (t - times[k]) / (times[k + 1] - times[k])
    return values[..., k] * (1.0 - a) + values[..., k + 1] * a
