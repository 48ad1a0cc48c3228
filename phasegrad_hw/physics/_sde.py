"""Fixed-step stochastic integration of an oscillator network (docs/design.md §2, §5):
Euler–Maruyama and stochastic Heun, with a numpy stepper and the optional compiled one of
:mod:`phasegrad_hw.physics._dynamics_kernels` (same increments, same result to rounding).
Public through :func:`phasegrad_hw.physics.dynamics.integrate_sde`.

    dθ = f(θ, t) dt + √(2D) dW        (D in rad² per model time unit)
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from phasegrad_hw.physics._drive import Drive
from phasegrad_hw.physics._dynamics_model import Model, Trajectory, build_model, squeeze_out
from phasegrad_hw.physics.coupling import (
    SIN,
    Array,
    CouplingFunction,
    NudgeKind,
    _as_float_array,
)

SdeMethod = Literal["euler", "heun"]
Engine = Literal["auto", "numpy", "numba"]
_SDE_METHODS = ("euler", "heun")
_CHUNK_VALUES = 1 << 21  # Wiener increments drawn per chunk (16 MiB of float64)
_numba_state: list[ModuleType | None] = []


def _numba_kernels() -> ModuleType | None:
    """The compiled stepper's module (imported on first use), or None without numba."""
    if not _numba_state:
        try:
            from phasegrad_hw.physics import _dynamics_kernels
        except ImportError:  # numba is the optional extra "fast"
            _numba_state.append(None)
        else:
            _numba_state.append(_dynamics_kernels)
    return _numba_state[0]


def integrate_sde(
    theta0: ArrayLike,
    omega: ArrayLike,
    K: ArrayLike | None = None,
    *,
    t_span: tuple[float, float],
    dt: float,
    diffusion: ArrayLike = 0.0,
    coupling: CouplingFunction = SIN,
    drive: Drive | None = None,
    drive_amplitude: ArrayLike | None = None,
    beta: ArrayLike | None = None,
    target: ArrayLike | None = None,
    nudge: NudgeKind = "linear",
    method: SdeMethod = "heun",
    rng: np.random.Generator | int | None = None,
    dW: ArrayLike | None = None,
    record_every: int = 1,
    engine: Engine = "auto",
) -> Trajectory:
    """Stochastic integration, fixed step ``dt`` (time units) over ``t_span``.

    dθ = f(θ, t) dt + √(2D) dW with ``diffusion`` D (rad² per time unit; scalar, (N,) or
    (B, N)). ``method`` "euler" (Euler–Maruyama) or "heun" (stochastic Heun: predictor
    θ̃ = θ + f dt + σΔW, then θ + ½(f(θ) + f(θ̃)) dt + σΔW; strong order 1 for additive
    noise, and second-order accurate in the drift). The Wiener increments ΔW (√time units,
    variance dt) come from ``rng`` (a Generator or a seed) or are given as ``dW``
    (steps, B, N) — e.g. a fine path summed to a coarser one for a convergence study.
    θ is recorded at t0 and after every ``record_every`` steps.

    ``engine``: "numpy", "numba" (the compiled stepper of
    :mod:`phasegrad_hw.physics._dynamics_kernels`, same increments, same result to rounding)
    or "auto" (numba when installed).
    """
    if method not in _SDE_METHODS:
        raise ValueError(f"method: {method!r}; use 'euler' or 'heun'")
    if engine not in ("auto", "numpy", "numba"):
        raise ValueError(f"engine: {engine!r}; use 'auto', 'numpy' or 'numba'")
    model, th = build_model(theta0, omega, K, coupling, drive, drive_amplitude, beta, target, nudge)
    B, n = th.shape
    t0, steps = _step_grid(t_span, dt, record_every)
    sig = _noise_amplitude(diffusion, B, n)
    given: Array | None = None
    if dW is not None:
        given = _as_float_array("dW", dW)
        if given.shape != (steps, B, n):
            raise ValueError(f"dW: shape {given.shape} must be (steps, B, N) = {(steps, B, n)}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    kern = None if engine == "numpy" else _numba_kernels()
    if engine == "numba" and kern is None:
        raise RuntimeError("engine: 'numba' needs numba (pip install 'phasegrad-hw[fast]')")

    sqdt = math.sqrt(dt)
    chunk = max(1, min(steps, _CHUNK_VALUES // (B * n)))
    rec = np.empty((steps // record_every + 1, B, n))
    rec[0] = th
    written = 1
    for first in range(0, steps, chunk):
        m = min(chunk, steps - first)
        inc = (
            given[first : first + m] if given is not None else sqdt * gen.standard_normal((m, B, n))
        )
        if model.drive is not None:
            psi = np.stack([model.drive_phase(t0 + (first + k) * dt) for k in range(m + 1)])
        else:
            psi = np.zeros((m + 1, B))
        grid = (sig, float(dt), method == "heun", record_every, first)
        if kern is not None:
            written += _step_numba(kern, model, th, psi, inc, grid, rec[written:])
        else:
            th, k = _step_numpy(model, th, psi, inc, grid, rec[written:])
            written += k
    t = np.asarray(t0 + dt * record_every * np.arange(written), dtype=np.float64)
    return Trajectory(t, squeeze_out(model, rec[:written]))


def _step_grid(t_span: tuple[float, float], dt: float, record_every: int) -> tuple[float, int]:
    """(t0, number of steps) of a fixed-step run; refuses a ``dt`` that does not divide it."""
    t0, t1 = float(t_span[0]), float(t_span[1])
    if not (t1 > t0 and np.isfinite(t1) and np.isfinite(t0)):
        raise ValueError(f"t_span: ({t0}, {t1}) must be finite and increasing")
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt: {dt} must be finite and > 0")
    steps = int(round((t1 - t0) / dt))
    if steps < 1 or abs(steps * dt - (t1 - t0)) > 1e-9 * max(1.0, t1 - t0):
        raise ValueError(f"dt: {dt} does not divide t_span length {t1 - t0} into whole steps")
    if not (isinstance(record_every, int) and record_every >= 1):
        raise ValueError(f"record_every: {record_every!r} must be an integer >= 1")
    return t0, steps


def _noise_amplitude(diffusion: ArrayLike, B: int, n: int) -> Array:
    """σ = √(2D) (B, N) from the diffusion constants D (rad² per time unit)."""
    D = _as_float_array("diffusion", diffusion)
    if np.any(D < 0):
        raise ValueError(f"diffusion: {D[D < 0].ravel()[0]} is negative; D_i >= 0 (rad²/time)")
    try:
        return np.ascontiguousarray(np.broadcast_to(np.sqrt(2.0 * D), (B, n)))
    except ValueError as exc:
        raise ValueError(f"diffusion: shape {D.shape} does not fit ({B}, {n})") from exc


_Grid = tuple[Array, float, bool, int, int]  # σ (B, N), dt, Heun, record every, first step


def _step_numpy(
    model: Model, th: Array, psi: Array, inc: Array, grid: _Grid, rec: Array
) -> tuple[Array, int]:
    """One chunk with numpy; returns (θ after it, records written)."""
    sig, dt, heun, every, first = grid
    written = 0
    for s in range(inc.shape[0]):
        noise = sig * inc[s]
        f0 = model.drift(th, psi[s])
        if heun:
            f1 = model.drift(th + f0 * dt + noise, psi[s + 1])
            th = th + 0.5 * (f0 + f1) * dt + noise
        else:
            th = th + f0 * dt + noise
        if (first + s + 1) % every == 0:
            rec[written] = th
            written += 1
    return th, written


def _step_numba(
    kern: ModuleType, model: Model, th: Array, psi: Array, inc: Array, grid: _Grid, rec: Array
) -> int:
    """One chunk through the compiled stepper (``th`` advanced in place)."""
    B, n = th.shape
    H = model.coupling
    K = (
        np.ascontiguousarray(np.broadcast_to(model.K, (B, n, n)))
        if model.K is not None
        else np.zeros((1, 1, 1))
    )
    drift = kern.Drift(
        model.omega,
        K,
        model.K is not None,
        model.F if model.F is not None else np.zeros((B, n)),
        model.beta if model.beta is not None else np.zeros((1, 1)),
        model.target if model.target is not None else np.zeros((1, 1)),
        0 if model.beta is None else (1 if model.nudge == "linear" else 2),
    )
    harm = kern.Harmonics(
        np.asarray(H.harmonics, dtype=np.float64),
        float(H.phase_lag),
        float(H.offset),
        float(H.cos_offset),
    )
    g = kern.Grid(*grid)
    out = kern.step_chunk(
        th, drift, harm, np.ascontiguousarray(psi), np.ascontiguousarray(inc), g, rec
    )
    return int(out)
