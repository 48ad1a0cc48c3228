"""Settling of a (driven) oscillator network: integrate deterministically until the phase
velocities lock, to the reference oscillator or to the drive, and report the lock time in model
time units and in carrier cycles (docs/design.md §5). Public through
:func:`phasegrad_hw.physics.dynamics.settle`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.integrate import solve_ivp

from phasegrad_hw.physics._drive import Drive
from phasegrad_hw.physics._dynamics_model import ODE_METHODS, Model, OdeMethod, build_model
from phasegrad_hw.physics.coupling import SIN, Array, CouplingFunction, NudgeKind, _check_ref

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settled:
    """Result of :func:`settle`. ``theta`` the final phases (rad, unwrapped), ``t_end`` the
    time reached (time units), ``locked`` per sample, ``lock_time`` (time units after the
    start; NaN when not locked) and ``lock_cycles`` = lock_time × ``cycles_per_unit``,
    ``velocity`` the final relative phase velocities (rad per time unit)."""

    theta: Array
    t_end: float
    locked: NDArray[np.bool_] | np.bool_
    lock_time: Array
    lock_cycles: Array
    velocity: Array


def settle(
    theta0: ArrayLike,
    omega: ArrayLike,
    K: ArrayLike | None = None,
    *,
    coupling: CouplingFunction = SIN,
    drive: Drive | None = None,
    drive_amplitude: ArrayLike | None = None,
    beta: ArrayLike | None = None,
    target: ArrayLike | None = None,
    nudge: NudgeKind = "linear",
    relative_to: Literal["reference", "drive"] = "reference",
    ref: int = 0,
    oscillators: ArrayLike | None = None,
    tol: float = 1e-6,
    hold: float = 5.0,
    sample_dt: float = 0.01,
    t_max: float = 1e4,
    cycles_per_unit: float = 1.0,
    method: OdeMethod = "DOP853",
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> Settled:
    """Integrate (deterministically, from t = 0) until the phase velocities lock.

    Locked: max over ``oscillators`` of |dθ_i/dt − dθ_ref/dt| (``relative_to`` "reference")
    or |dθ_i/dt − dΨ/dt| ("drive") is below ``tol`` (rad per time unit) at every sample
    (spacing ``sample_dt``) for at least ``hold`` time units. The lock time is the first
    sample from which the criterion held on; it is resolved to ``sample_dt``. Default
    ``oscillators``: every non-reference one, or every driven one (F_i > 0). Gives up at
    ``t_max`` (those samples come back with ``locked`` False). ``cycles_per_unit``: carrier
    oscillation periods per model time unit (f_carrier × the time unit; for a chip whose
    model time unit is 1/(2π·f_unit) s, f_carrier/(2π·f_unit)), to state the lock time in
    cycles as docs/design.md §5 does (5–50 cycles, longer near the lock edge).

    The velocities are evaluated on the solver's dense output, which carries its error
    (≈1e-8 rad per time unit at ``rtol`` 1e-10 on an N = 8 network): keep ``tol`` well
    above that, or tighten ``rtol``/``atol``. Noise is not integrated here (see
    :func:`~phasegrad_hw.physics.dynamics.integrate_sde`; a noisy phase velocity never stays
    below a small ``tol``).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method: {method!r}; use one of {', '.join(ODE_METHODS)}")
    if relative_to not in ("reference", "drive"):
        raise ValueError(f"relative_to: {relative_to!r}; use 'reference' or 'drive'")
    for name, v in (("tol", tol), ("hold", hold), ("sample_dt", sample_dt), ("t_max", t_max)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name}: {v} must be finite and > 0")
    model, y = build_model(theta0, omega, K, coupling, drive, drive_amplitude, beta, target, nudge)
    r = _check_ref(ref, y.shape[1])
    rel = _RelativeVelocity(model, relative_to, r)
    crit = _Criterion(_watched(model, relative_to, r, oscillators), tol, hold, sample_dt, t_max)
    y, t, done, cand = _run_until_locked(model, rel, crit, y, (method, rtol, atol))
    B = y.shape[0]
    lock_time = np.where(done, cand, np.nan)
    velocity = rel(np.array([t]), y[None])[0]
    if not done.all():
        log.info("settle: %d of %d samples not locked by t = %g", int((~done).sum()), B, t)
    sq = model.squeeze
    return Settled(
        theta=y[0] if sq else y,
        t_end=t,
        locked=done[0] if sq else done,
        lock_time=lock_time[0] if sq else lock_time,
        lock_cycles=(lock_time * cycles_per_unit)[0] if sq else lock_time * cycles_per_unit,
        velocity=velocity[0] if sq else velocity,
    )


def _watched(
    model: Model, relative_to: str, r: int, oscillators: ArrayLike | None
) -> NDArray[np.int64]:
    """The oscillators whose velocities decide the lock (validated indices)."""
    n = model.shape[1]
    if oscillators is not None:
        sel = np.atleast_1d(np.asarray(oscillators, dtype=np.int64))
        if sel.size == 0 or np.any((sel < 0) | (sel >= n)):
            raise ValueError(f"oscillators: {sel.tolist()} must be indices in [0, {n - 1}]")
    elif relative_to == "reference":
        sel = np.flatnonzero(np.arange(n) != r)
    else:
        if model.F is None:
            raise ValueError("relative_to: 'drive' needs a drive and drive_amplitude")
        sel = np.flatnonzero((model.F > 0).any(axis=0))
        if sel.size == 0:
            raise ValueError("drive_amplitude: no oscillator is driven (all F_i = 0)")
    if relative_to == "drive" and model.drive is None:
        raise ValueError("relative_to: 'drive' needs a drive and drive_amplitude")
    return sel


class _RelativeVelocity:
    """Phase velocities relative to the reference oscillator ``r`` or to the drive (rad per
    time unit): called with times ``ts`` (T,) and phases (T, B, N), returns (T, B, N)."""

    def __init__(self, model: Model, relative_to: str, r: int) -> None:
        self.model, self.relative_to, self.r = model, relative_to, r

    def __call__(self, ts: Array, th: Array) -> Array:
        model = self.model
        psi = None
        if model.drive is not None:
            psi = np.stack([model.drive_phase(float(tk)) for tk in ts])
        v = model.drift(th, psi)
        if self.relative_to == "reference":
            return v - v[..., self.r : self.r + 1]
        assert model.drive is not None
        B = model.shape[0]
        dpsi = np.stack([np.broadcast_to(model.drive.frequency(float(tk)), (B,)) for tk in ts])
        out: Array = v - dpsi[..., None]
        return out


@dataclass(frozen=True)
class _Criterion:
    """Locked: max |relative velocity| over ``sel`` below ``tol`` at every sample (spacing
    ``sample_dt``) for ``hold`` time units; give up at ``t_max``."""

    sel: NDArray[np.int64]
    tol: float
    hold: float
    sample_dt: float
    t_max: float


def _run_until_locked(
    model: Model,
    rel: _RelativeVelocity,
    crit: _Criterion,
    y: Array,
    ode: tuple[OdeMethod, float, float],
) -> tuple[Array, float, NDArray[np.bool_], Array]:
    """Integrate in chunks until every sample meets ``crit``; returns (θ, t reached, locked,
    first time from which the criterion held on (NaN: never))."""
    method, rtol, atol = ode
    B, n = y.shape
    sel, tol, sample_dt = crit.sel, crit.tol, crit.sample_dt

    def f(t: float, x: Array) -> Array:
        return model.field(t, x.reshape(B, n)).ravel()

    v0 = rel(np.zeros(1), y[None])[0]
    cand = np.where(np.abs(v0[:, sel]).max(axis=1) < tol, 0.0, np.nan)
    chunk = max(2.0 * crit.hold, 200.0 * sample_dt)
    t = 0.0
    done = np.zeros(B, dtype=bool)
    while t < crit.t_max:
        t_next = min(t + chunk, crit.t_max)
        grid = sample_grid(t, t_next, sample_dt)
        sol = solve_ivp(f, (t, t_next), y.ravel(), method=method, rtol=rtol, atol=atol, t_eval=grid)
        if not sol.success:
            raise RuntimeError(f"settle: {method} failed at t = {sol.t[-1]:.6g}: {sol.message}")
        states = np.asarray(sol.y, dtype=np.float64).T.reshape(-1, B, n)
        vel = rel(grid, states)
        bad = np.abs(vel[:, :, sel]).max(axis=2) >= tol  # (T, B)
        T = grid.size
        last = T - 1 - np.argmax(bad[::-1], axis=0)
        after = np.where(last + 1 < T, grid[np.minimum(last + 1, T - 1)], np.nan)
        cand = np.where(bad.any(axis=0), after, np.where(np.isnan(cand), grid[0], cand))
        y = states[-1]
        t = t_next
        done = np.isfinite(cand) & (t - cand >= crit.hold - 1e-12)
        if done.all():
            break
    return y, t, done, cand


def sample_grid(t: float, t_next: float, sample_dt: float) -> Array:
    """Sample times in (t, t_next] every ``sample_dt``, ending exactly at ``t_next`` (time
    units); rounding never carries a point past the end (solve_ivp refuses such a grid)."""
    steps = int(np.floor((t_next - t) / sample_dt + 1e-9))
    grid = np.minimum(t + sample_dt * np.arange(1, steps + 1), t_next)
    if grid.size == 0 or grid[-1] < t_next - 1e-12:
        grid = np.append(grid, t_next)
    return np.asarray(grid, dtype=np.float64)
