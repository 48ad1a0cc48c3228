"""Time-domain dynamics of a (driven, noisy) oscillator network (docs/design.md §2, §5, §9).

Phases θ (rad), time t in model time units, frequencies in rad per model time unit::

    dθ_i = [ω_i + Σ_j K_ij H(θ_j − θ_i) + F_i sin(Ψ(t) − θ_i) + n_i(θ_i)] dt + √(2 D_i) dW_i

H is a :class:`~phasegrad_hw.physics.coupling.CouplingFunction`; F_i ≥ 0 the injection
strength of the drive Ψ(t) (rad per time unit; an isolated oscillator injection-locks iff
|ω_i − dΨ/dt| < F_i, Adler's condition, and otherwise beats at √((ω_i − dΨ/dt)² − F_i²));
n_i the optional nudge of docs/design.md §2 (linear or injection); D_i ≥ 0 the phase-diffusion
constant (rad² per time unit: a free oscillator's phase variance grows as 2·D_i·t).

Everything is batched over samples: θ (B, N), ω (N,) or (B, N), K (N, N) or (B, N, N) or None
(no coupling: a bank of independent sensors), F (N,) or (B, N), Ψ one signal or one per sample.

* :func:`integrate` — deterministic, :func:`scipy.integrate.solve_ivp` (RK45, DOP853, LSODA);
* :func:`integrate_sde` — Euler–Maruyama or stochastic Heun (strong order 1 for this additive
  noise), numpy or an optional numba stepper with the same result;
* :func:`settle` — integrate until the phase velocities lock (to the reference oscillator or to
  the drive) and report the lock time in time units and carrier cycles;
* :func:`lock_beat_features` — per-oscillator coherence with the drive |⟨e^{i(θ_i − Ψ)}⟩| and
  beat frequency over a window of a trajectory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.integrate import cumulative_trapezoid, solve_ivp

from phasegrad_hw.physics.coupling import (
    SIN,
    Array,
    CouplingFunction,
    NudgeKind,
    _as_float_array,
    _check_ref,
    _nudge_terms,
)

log = logging.getLogger(__name__)

OdeMethod = Literal["RK45", "DOP853", "LSODA"]
SdeMethod = Literal["euler", "heun"]
Engine = Literal["auto", "numpy", "numba"]
_ODE_METHODS = ("RK45", "DOP853", "LSODA")
_SDE_METHODS = ("euler", "heun")
_CHUNK_VALUES = 1 << 21  # Wiener increments drawn per chunk (16 MiB of float64)


# --------------------------------------------------------------------------- drive
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


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class _Model:
    """Validated, batch-broadcast parameters; ``field(t, θ)`` is the drift (B, N)."""

    omega: Array  # (B, N)
    K: Array | None  # (B, N, N) or (N, N) or None
    coupling: CouplingFunction
    F: Array | None  # (B, N)
    drive: Drive | None
    beta: Array | None  # (B, N)
    target: Array | None  # (B, N)
    nudge: NudgeKind
    squeeze: bool

    @property
    def shape(self) -> tuple[int, int]:
        b, n = self.omega.shape
        return int(b), int(n)

    def drive_phase(self, t: float) -> Array:
        """Ψ(t) broadcast to (B,)."""
        assert self.drive is not None
        return np.broadcast_to(self.drive.phase(t), (self.shape[0],))

    def drift(self, th: Array, psi: Array | None) -> Array:
        """dθ/dt at phases ``th`` (…, B, N) with the drive phase ``psi`` (…, B) sampled."""
        f = np.broadcast_to(self.omega, th.shape).copy()
        if self.K is not None:
            H = self.coupling.value(th[..., None, :] - th[..., :, None])
            f += np.einsum("...ij,...ij->...i", self.K, H)
        if self.F is not None and psi is not None:
            f = f + self.F * np.sin(psi[..., None] - th)
        nt = _nudge_terms(th, self.beta, self.target, self.nudge)
        if nt is not None:
            f += nt[0]
        return f

    def field(self, t: float, th: Array) -> Array:
        """dθ/dt (B, N) at time t (time units)."""
        return self.drift(th, None if self.drive is None else self.drive_phase(t))


def _model(
    theta0: ArrayLike,
    omega: ArrayLike,
    K: ArrayLike | None,
    coupling: CouplingFunction,
    drive: Drive | None,
    drive_amplitude: ArrayLike | None,
    beta: ArrayLike | None,
    target: ArrayLike | None,
    nudge: NudgeKind,
) -> tuple[_Model, Array]:
    th = _as_float_array("theta0", theta0)
    w = _as_float_array("omega", omega)
    if th.ndim not in (1, 2) or w.ndim not in (1, 2):
        raise ValueError(f"theta0/omega: shapes {th.shape}, {w.shape} must be (N,) or (B, N)")
    n = th.shape[-1]
    if w.shape[-1] != n:
        raise ValueError(f"omega: {w.shape[-1]} oscillators, theta0 has {n}")
    batch: list[tuple[int, ...]] = [th.shape[:-1], w.shape[:-1]]
    Km: Array | None = None
    if K is not None:
        Km = _as_float_array("K", K)
        if Km.ndim not in (2, 3) or Km.shape[-2:] != (n, n):
            raise ValueError(f"K: shape {Km.shape} must be ({n}, {n}) or (B, {n}, {n})")
        batch.append(Km.shape[:-2])
    F: Array | None = None
    if drive_amplitude is not None:
        if drive is None:
            raise ValueError("drive_amplitude: given without a drive")
        F = _as_float_array("drive_amplitude", drive_amplitude)
        if np.any(F < 0):
            raise ValueError(f"drive_amplitude: {F[F < 0].ravel()[0]} is negative; F_i >= 0")
        if F.ndim > 2 or (F.ndim >= 1 and F.shape[-1] not in (1, n)):
            raise ValueError(f"drive_amplitude: shape {F.shape} must be (), (N,) or (B, N)")
        batch.append(F.shape[:-1] if F.ndim == 2 else ())
    elif drive is not None:
        raise ValueError("drive: given without drive_amplitude (the injection strengths F_i)")
    if drive is not None:
        batch.append(np.shape(drive.phase(0.0)))
    if nudge not in ("linear", "injection"):
        raise ValueError(f"nudge: {nudge!r} is not a nudge kind; use 'linear' or 'injection'")
    try:
        bshape = np.broadcast_shapes(*batch)
    except ValueError as exc:
        raise ValueError(f"batch shapes do not broadcast: {batch}") from exc
    if len(bshape) > 1:
        raise ValueError(f"batch shape {bshape}: one leading batch axis at most")
    squeeze = len(bshape) == 0
    B = 1 if squeeze else bshape[0]
    bt: Array | None = None
    tg: Array | None = None
    if beta is not None:
        b = _as_float_array("beta", beta)
        if np.any(b < 0):
            raise ValueError(f"beta: {b[b < 0].ravel()[0]} is negative; nudge strength >= 0")
        bt = np.ascontiguousarray(np.broadcast_to(b, (B, n)))
        tg = np.ascontiguousarray(
            np.broadcast_to(_as_float_array("target", 0.0 if target is None else target), (B, n))
        )
    model = _Model(
        omega=np.ascontiguousarray(np.broadcast_to(w, (B, n))),
        K=None if Km is None else (Km if Km.ndim == 2 else np.broadcast_to(Km, (B, n, n))),
        coupling=coupling,
        F=None if F is None else np.ascontiguousarray(np.broadcast_to(F, (B, n))),
        drive=drive,
        beta=bt,
        target=tg,
        nudge=nudge,
        squeeze=squeeze,
    )
    return model, np.array(np.broadcast_to(th, (B, n)))


# --------------------------------------------------------------------------- trajectories
@dataclass(frozen=True)
class Trajectory:
    """Samples of a run: ``t`` (T,) in time units, ``theta`` (T, N) or (T, B, N) unwrapped
    phases (rad; continuous in time, wrap them for readings)."""

    t: Array
    theta: Array

    @property
    def final(self) -> Array:
        """θ at the last sample, (N,) or (B, N)."""
        return self.theta[-1]


def _out(model: _Model, theta: Array) -> Array:
    """(…, B, N) → (…, N) for an unbatched call."""
    return theta[..., 0, :] if model.squeeze else theta


def integrate(
    theta0: ArrayLike,
    omega: ArrayLike,
    K: ArrayLike | None = None,
    *,
    t_span: tuple[float, float],
    coupling: CouplingFunction = SIN,
    drive: Drive | None = None,
    drive_amplitude: ArrayLike | None = None,
    beta: ArrayLike | None = None,
    target: ArrayLike | None = None,
    nudge: NudgeKind = "linear",
    method: OdeMethod = "DOP853",
    rtol: float = 1e-10,
    atol: float = 1e-12,
    t_eval: ArrayLike | None = None,
    max_step: float = np.inf,
) -> Trajectory:
    """Deterministic integration over ``t_span`` (time units) with scipy's ``solve_ivp``.

    All samples form one ODE system (one adaptive step size). ``t_eval`` (times in
    ``t_span``) selects the output samples; without it the solver's own steps are returned.
    Raises RuntimeError when the solver fails.
    """
    if method not in _ODE_METHODS:
        raise ValueError(f"method: {method!r}; use one of {', '.join(_ODE_METHODS)}")
    model, th0 = _model(theta0, omega, K, coupling, drive, drive_amplitude, beta, target, nudge)
    t0, t1 = float(t_span[0]), float(t_span[1])
    if not t1 > t0:
        raise ValueError(f"t_span: ({t0}, {t1}) must be increasing")
    shape = th0.shape

    def f(t: float, y: Array) -> Array:
        return model.field(t, y.reshape(shape)).ravel()

    te = None if t_eval is None else _as_float_array("t_eval", t_eval)
    sol = solve_ivp(
        f, (t0, t1), th0.ravel(), method=method, rtol=rtol, atol=atol, t_eval=te, max_step=max_step
    )
    if not sol.success:
        raise RuntimeError(f"integrate: {method} failed at t = {sol.t[-1]:.6g}: {sol.message}")
    theta = np.asarray(sol.y, dtype=np.float64).T.reshape(-1, *shape)
    return Trajectory(np.asarray(sol.t, dtype=np.float64), _out(model, theta))


# --------------------------------------------------------------------------- stochastic
_numba_state: list[Callable[..., Any] | None] = []


def _numba_stepper() -> Callable[..., Any] | None:
    """The compiled stepper (imported on first use), or None without numba."""
    if not _numba_state:
        try:
            from phasegrad_hw.physics._dynamics_kernels import step_chunk
        except ImportError:  # numba is the optional extra "fast"
            _numba_state.append(None)
        else:
            _numba_state.append(step_chunk)
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
    model, th = _model(theta0, omega, K, coupling, drive, drive_amplitude, beta, target, nudge)
    B, n = th.shape
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
    D = _as_float_array("diffusion", diffusion)
    if np.any(D < 0):
        raise ValueError(f"diffusion: {D[D < 0].ravel()[0]} is negative; D_i >= 0 (rad²/time)")
    try:
        sig = np.ascontiguousarray(np.broadcast_to(np.sqrt(2.0 * D), (B, n)))
    except ValueError as exc:
        raise ValueError(f"diffusion: shape {D.shape} does not fit ({B}, {n})") from exc
    given: Array | None = None
    if dW is not None:
        given = _as_float_array("dW", dW)
        if given.shape != (steps, B, n):
            raise ValueError(f"dW: shape {given.shape} must be (steps, B, N) = {(steps, B, n)}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    stepper = None if engine == "numpy" else _numba_stepper()
    if engine == "numba" and stepper is None:
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
        if stepper is not None:
            written += _step_numba(
                stepper, model, th, psi, sig, inc, dt, method, record_every, first, rec[written:]
            )
            continue
        for s in range(m):
            noise = sig * inc[s]
            f0 = model.drift(th, psi[s])
            if method == "heun":
                f1 = model.drift(th + f0 * dt + noise, psi[s + 1])
                th = th + 0.5 * (f0 + f1) * dt + noise
            else:
                th = th + f0 * dt + noise
            if (first + s + 1) % record_every == 0:
                rec[written] = th
                written += 1
    t = np.asarray(t0 + dt * record_every * np.arange(written), dtype=np.float64)
    return Trajectory(t, _out(model, rec[:written]))


def _step_numba(
    stepper: Callable[..., Any],
    model: _Model,
    th: Array,
    psi: Array,
    sig: Array,
    inc: Array,
    dt: float,
    method: SdeMethod,
    every: int,
    first: int,
    rec: Array,
) -> int:
    """One chunk through the compiled stepper (``th`` advanced in place)."""
    B, n = th.shape
    H = model.coupling
    has_k = model.K is not None
    K = (
        np.ascontiguousarray(np.broadcast_to(model.K, (B, n, n)))
        if model.K is not None
        else np.zeros((1, 1, 1))
    )
    F = model.F if model.F is not None else np.zeros((B, n))
    kind = 0 if model.beta is None else (1 if model.nudge == "linear" else 2)
    bet = model.beta if model.beta is not None else np.zeros((1, 1))
    tgt = model.target if model.target is not None else np.zeros((1, 1))
    return int(
        stepper(
            th,
            model.omega,
            K,
            has_k,
            np.asarray(H.harmonics, dtype=np.float64),
            float(H.phase_lag),
            float(H.offset),
            float(H.cos_offset),
            F,
            np.ascontiguousarray(psi),
            sig,
            np.ascontiguousarray(inc),
            float(dt),
            method == "heun",
            bet,
            tgt,
            kind,
            every,
            first,
            rec,
        )
    )


# --------------------------------------------------------------------------- settling
@dataclass(frozen=True)
class Settled:
    """Result of :func:`settle`. ``theta`` the final phases (rad, unwrapped), ``t_end`` the
    time reached (time units), ``locked`` per sample, ``lock_time`` (time units after the
    start; NaN when not locked) and ``lock_cycles`` = lock_time × ``cycles_per_unit``,
    ``velocity`` the final relative phase velocities (rad per time unit)."""

    theta: Array
    t_end: float
    locked: Array
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
    :func:`integrate_sde`; a noisy phase velocity never stays below a small ``tol``).
    """
    if method not in _ODE_METHODS:
        raise ValueError(f"method: {method!r}; use one of {', '.join(_ODE_METHODS)}")
    if relative_to not in ("reference", "drive"):
        raise ValueError(f"relative_to: {relative_to!r}; use 'reference' or 'drive'")
    for name, v in (("tol", tol), ("hold", hold), ("sample_dt", sample_dt), ("t_max", t_max)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name}: {v} must be finite and > 0")
    model, y = _model(theta0, omega, K, coupling, drive, drive_amplitude, beta, target, nudge)
    B, n = y.shape
    r = _check_ref(ref, n)
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

    def rel_velocity(ts: Array, th: Array) -> Array:
        """Relative phase velocities (T, B, N) at times ``ts`` (T,) and phases (T, B, N)."""
        psi = None
        if model.drive is not None:
            psi = np.stack([model.drive_phase(float(tk)) for tk in ts])
        v = model.drift(th, psi)
        if relative_to == "reference":
            return v - v[..., r : r + 1]
        assert model.drive is not None
        dpsi = np.stack([np.broadcast_to(model.drive.frequency(float(tk)), (B,)) for tk in ts])
        return v - dpsi[..., None]

    def f(t: float, x: Array) -> Array:
        return model.field(t, x.reshape(B, n)).ravel()

    v0 = rel_velocity(np.zeros(1), y[None])[0]
    cand = np.where(np.abs(v0[:, sel]).max(axis=1) < tol, 0.0, np.nan)
    chunk = max(2.0 * hold, 200.0 * sample_dt)
    t = 0.0
    done = np.zeros(B, dtype=bool)
    while t < t_max:
        t_next = min(t + chunk, t_max)
        steps = int(np.floor((t_next - t) / sample_dt + 1e-9))
        grid = np.asarray(t + sample_dt * np.arange(1, steps + 1), dtype=np.float64)
        if grid.size == 0 or grid[-1] < t_next - 1e-12:
            grid = np.append(grid, t_next)
        sol = solve_ivp(f, (t, t_next), y.ravel(), method=method, rtol=rtol, atol=atol, t_eval=grid)
        if not sol.success:
            raise RuntimeError(f"settle: {method} failed at t = {sol.t[-1]:.6g}: {sol.message}")
        states = np.asarray(sol.y, dtype=np.float64).T.reshape(-1, B, n)
        vel = rel_velocity(grid, states)
        bad = np.abs(vel[:, :, sel]).max(axis=2) >= tol  # (T, B)
        T = grid.size
        last = T - 1 - np.argmax(bad[::-1], axis=0)
        after = np.where(last + 1 < T, grid[np.minimum(last + 1, T - 1)], np.nan)
        cand = np.where(bad.any(axis=0), after, np.where(np.isnan(cand), grid[0], cand))
        y = states[-1]
        t = t_next
        done = np.isfinite(cand) & (t - cand >= hold - 1e-12)
        if done.all():
            break
    lock_time = np.where(done, cand, np.nan)
    velocity = rel_velocity(np.array([t]), y[None])[0]
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


# --------------------------------------------------------------------------- features
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
