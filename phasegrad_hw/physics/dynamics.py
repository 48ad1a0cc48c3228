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

The pieces live in private modules by idea and are public here: the drive (:mod:`._drive`), the
drift and trajectories (:mod:`._dynamics_model`), the stochastic integrators (:mod:`._sde`),
settling (:mod:`._settle`) and the beat features (:mod:`._beat`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.integrate import solve_ivp

from phasegrad_hw.physics._beat import BeatFeatures, lock_beat_features
from phasegrad_hw.physics._drive import Drive
from phasegrad_hw.physics._dynamics_model import (
    ODE_METHODS,
    OdeMethod,
    Trajectory,
    build_model,
    squeeze_out,
)
from phasegrad_hw.physics._sde import Engine, SdeMethod, integrate_sde
from phasegrad_hw.physics._settle import Settled, settle
from phasegrad_hw.physics.coupling import SIN, Array, CouplingFunction, NudgeKind, _as_float_array

__all__ = [
    "BeatFeatures",
    "Drive",
    "Engine",
    "OdeMethod",
    "SdeMethod",
    "Settled",
    "Trajectory",
    "integrate",
    "integrate_sde",
    "lock_beat_features",
    "settle",
]


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
    if method not in ODE_METHODS:
        raise ValueError(f"method: {method!r}; use one of {', '.join(ODE_METHODS)}")
    model, th0 = build_model(
        theta0, omega, K, coupling, drive, drive_amplitude, beta, target, nudge
    )
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
    return Trajectory(np.asarray(sol.t, dtype=np.float64), squeeze_out(model, theta))
