"""The drift of a (driven, nudged) oscillator network and the trajectory of a run
(docs/design.md §2): validated, batch-broadcast parameters shared by the integrators and the
settling loop of :mod:`phasegrad_hw.physics.dynamics`. Phases in rad, time in model units.

    dθ_i/dt = ω_i + Σ_j K_ij H(θ_j − θ_i) + F_i sin(Ψ(t) − θ_i) + n_i(θ_i)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from phasegrad_hw.physics._drive import Drive
from phasegrad_hw.physics.coupling import (
    Array,
    CouplingFunction,
    NudgeKind,
    _as_float_array,
    _nudge_terms,
)

OdeMethod = Literal["RK45", "DOP853", "LSODA"]
ODE_METHODS = ("RK45", "DOP853", "LSODA")


@dataclass(frozen=True)
class Model:
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


def build_model(
    theta0: ArrayLike,
    omega: ArrayLike,
    K: ArrayLike | None,
    coupling: CouplingFunction,
    drive: Drive | None,
    drive_amplitude: ArrayLike | None,
    beta: ArrayLike | None,
    target: ArrayLike | None,
    nudge: NudgeKind,
) -> tuple[Model, Array]:
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
    model = Model(
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


def squeeze_out(model: Model, theta: Array) -> Array:
    """(…, B, N) → (…, N) for an unbatched call."""
    return theta[..., 0, :] if model.squeeze else theta
