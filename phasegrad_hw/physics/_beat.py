"""Lock and beat features of a driven run (docs/design.md §9): per oscillator, the coherence
with the drive |⟨e^{i(θ_i − Ψ)}⟩| and the beat frequency (rad per model time unit) over a window
of a trajectory. Public through :func:`phasegrad_hw.physics.dynamics.lock_beat_features`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import cumulative_trapezoid

from phasegrad_hw.physics._drive import Drive
from phasegrad_hw.physics._dynamics_model import Trajectory
from phasegrad_hw.physics.coupling import Array


@dataclass(frozen=True)
class BeatFeatures:
    """Per-oscillator features of a driven run over a window, shape (N,) or (B, N).

    ``coherence`` |⟨e^{i(θ_i − Ψ)}⟩| ∈ [0, 1] (1: injection-locked, a constant phase lag;
    an Adler beat gives (|Δ| − √(Δ² − F²))/F); ``phase_lag`` arg⟨e^{i(θ_i − Ψ)}⟩ (rad);
    ``beat_frequency`` the mean rate of θ_i − Ψ (rad per time unit, signed; ≈ 0 when locked);
    ``slips`` whole 2π cycle slips in the window. When an oscillator slips at least once,
    the averages run over its whole slip cycles only (from the window start to the last
    completed slip), so a periodic beat is measured without the bias of a partial cycle.
    """

    coherence: Array
    phase_lag: Array
    beat_frequency: Array
    slips: Array


def lock_beat_features(
    trajectory: Trajectory, drive: Drive, *, window: tuple[float, float] | None = None
) -> BeatFeatures:
    """Coherence with the drive and beat frequency of each oscillator of ``trajectory``
    over ``window`` (time units; default the whole run). The samples must resolve the
    beat (phase steps < π between samples); averages are time averages (trapezoid rule)."""
    t = np.asarray(trajectory.t, dtype=np.float64)
    th = np.asarray(trajectory.theta, dtype=np.float64)
    w0, w1 = (float(t[0]), float(t[-1])) if window is None else map(float, window)
    mask = (t >= w0 - 1e-12) & (t <= w1 + 1e-12)
    if mask.sum() < 3:
        raise ValueError(f"window: ({w0}, {w1}) holds {int(mask.sum())} samples; need >= 3")
    t = t[mask]
    th = th[mask]
    psi = drive.phases(t)
    psi = psi.reshape(psi.shape + (1,) * (th.ndim - psi.ndim))
    phi = np.unwrap(th - psi, axis=0)
    d = phi - phi[0]
    total = d[-1]
    slips = np.floor(np.abs(total) / (2.0 * np.pi))
    level = 2.0 * np.pi * slips
    reached = (np.abs(d) >= level) & (slips >= 1)
    idx = np.where(slips >= 1, np.argmax(reached, axis=0), t.size - 1)
    lo = np.maximum(idx - 1, 0)
    a_lo = np.take_along_axis(np.abs(d), lo[None], axis=0)[0]
    a_hi = np.take_along_axis(np.abs(d), idx[None], axis=0)[0]
    frac = np.where(
        (slips >= 1) & (a_hi > a_lo), (level - a_lo) / np.where(a_hi > a_lo, a_hi - a_lo, 1.0), 1.0
    )
    t_end = t[lo] + frac * (t[idx] - t[lo])
    span = t_end - t[0]
    beat = np.where(slips >= 1, np.sign(total) * level / span, total / (t[-1] - t[0]))

    Z = cumulative_trapezoid(np.exp(1j * phi), t, axis=0, initial=0.0)
    z_lo = np.take_along_axis(Z, lo[None], axis=0)[0]
    z_hi = np.take_along_axis(Z, idx[None], axis=0)[0]
    z = (z_lo + frac * (z_hi - z_lo)) / span
    return BeatFeatures(
        coherence=np.abs(z),
        phase_lag=np.angle(z),
        beat_frequency=np.asarray(beat, dtype=np.float64),
        slips=slips,
    )
