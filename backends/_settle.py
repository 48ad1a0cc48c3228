"""How an emulated chip settles after a change: strategies as data over one read algorithm
(docs/design.md §5, §9).

:class:`~phasegrad_hw.backends._chip.EmulatedChip` reads a locked state in three moves —
settle, sample the conversions around the settled state, report the settling time — and a
strategy supplies the first and, when the array does not lock, the second:

* :class:`NewtonSettle` (device file ``settle = "newton"``, the default): the locked state
  by damped Newton (the physics retry ladder) and a settling time from its stability margin
  λ, max(lock_cycles/f, ln(1/tolerance)/λ) — fast, and exact for a state that exists; an
  array without a stable locked state ramps at its free-running frequencies.
* :class:`TransientSettle` (``settle = "transient"``): the chip integrates its own dynamics
  (:mod:`phasegrad_hw.physics.dynamics`) from the state it was in before the change,

      dθ_i = [ω_i − Ω + Σ_j K_ij H(θ_j − θ_i) + β_i sin(t_i − θ_i) + F_i sin(ψ − θ_i)] dt
             + √(2 D_i) dW_i,

  in the clock frame Ω, with the chip's true (mismatched, asymmetric) K and H, its clamp
  (injection nudge β, t), drive (F, ψ), held oscillators and the reference pinned while a
  clamp or drive is on (the injection source is the clock), and its phase diffusion D. The
  lock time, the basin reached after a step and — out of the locking range — the beat notes
  the conversions see all come from the integration. Lock is declared when every relative
  phase velocity stays below ``tolerance`` × its value right after the change (for a linear
  relaxation e^{−λt}: after ln(1/tolerance)/λ, the Newton strategy's estimate) for
  ``hold_cycles`` oscillation periods; with noise the criterion is applied to the mean
  velocity over windows of ``hold_cycles`` periods above the diffusion's floor. The reading
  reports that lock time (``PhaseReading.settle_s``); an array that does not lock within
  ``max_settle_s`` is read while it keeps integrating (phases slip: ``locked = False``).

Time in model units (1/(2π·freq_unit_hz) s on the CMOS chip), phases in rad, frequencies in
rad per model time unit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.physics import Array, CouplingFunction, wrap
from phasegrad_hw.physics.dynamics import Drive, integrate_sde, settle

if TYPE_CHECKING:
    from phasegrad_hw.backends._chip import EmulatedChip, _Linearised, _SymLinearised

log = logging.getLogger(__name__)

SettleMode = Literal["newton", "transient"]
_QUIET_RAD = 1e-7  # rms diffusion over the whole settle window below this: integrate noise-free
_VELOCITY_FLOOR = 1e-7  # rad per time unit, below the dense output error of dynamics.settle


@dataclass(frozen=True)
class Settled:
    """A settled state: ``theta`` (N,) rad in the clock frame, reference at 0; ``lin`` its
    linearisation (None: no stable locked state, the phases slip); ``lock_s`` the lock time (s)
    after the change (0 when nothing changed); ``lock_cycles`` the same in oscillation periods."""

    theta: Array
    lin: _Linearised | _SymLinearised | None
    lock_s: float
    lock_cycles: float


class SettleStrategy(Protocol):
    """How a chip reaches its state after a change (:class:`NewtonSettle`,
    :class:`TransientSettle`)."""

    def settle(self, chip: EmulatedChip, changed: bool) -> Settled: ...

    def slipping_samples(self, chip: EmulatedChip, m: int, dt_s: float) -> Array: ...


@dataclass(frozen=True)
class NewtonSettle:
    """The locked state by damped Newton; settling time from the stability margin."""

    def settle(self, chip: EmulatedChip, changed: bool) -> Settled:
        theta, lin = chip._locked_state()
        lock = chip._lock_settle_s(lin.margin if lin is not None else 0.0) if changed else 0.0
        return Settled(theta, lin, lock, lock * chip._ref_freq_hz)

    def slipping_samples(self, chip: EmulatedChip, m: int, dt_s: float) -> Array:
        return chip._unlocked_samples(m, dt_s)


@dataclass(frozen=True)
class _Problem:
    """The chip's dynamics in the clock frame (see the module doc), ready to integrate."""

    omega: Array  # (N,) ω − Ω, 0 on pinned oscillators
    K: Array  # (N, N), rows of pinned oscillators zero
    H: CouplingFunction
    beta: Array | None  # (N,) injection nudge strengths, or None
    target: Array | None  # (N,) rad
    drive: Drive | None
    drive_amplitude: Array | None  # (N,)
    diffusion: Array  # (N,) rad² per time unit, 0 on pinned oscillators
    moving: NDArray[np.int64]  # oscillators whose velocity decides lock
    ref: int
    held: bool  # held inputs: the reference is a held bias oscillator (the clock)

    def rate(self) -> float:
        """A bound on the fastest rate of the dynamics (per time unit): the integration step
        resolves it (stochastic Heun stays stable and accurate at ≤ 0.05/rate)."""
        h = float(np.abs(self.H.harmonics).sum() + abs(self.H.offset) + abs(self.H.cos_offset))
        r = np.abs(self.omega) + h * np.abs(self.K).sum(axis=1)
        if self.beta is not None:
            r = r + self.beta
        if self.drive_amplitude is not None:
            r = r + self.drive_amplitude
        return max(float(r.max()), 1e-12)

    def velocity(self, theta: Array) -> Array:
        """Relative phase velocities (N,) rad per time unit at ``theta`` (no noise)."""
        d = self.H.value(theta[None, :] - theta[:, None])
        v = self.omega + (self.K * d).sum(axis=1)
        if self.beta is not None and self.target is not None:
            v = v + self.beta * np.sin(self.target - theta)
        if self.drive is not None and self.drive_amplitude is not None:
            v = v + self.drive_amplitude * np.sin(float(self.drive.phase(0.0)) - theta)
        out: Array = v - v[self.ref]
        return out


@dataclass(frozen=True)
class TransientSettle:
    """Settle by integrating the dynamics (module doc). ``tolerance`` relative velocity
    tolerance of the lock detector, ``hold_cycles`` oscillation periods it must hold,
    ``max_settle_s`` give-up time (s), ``step_cycles`` the stochastic integrator's step and
    the sampling of the deterministic one (periods; shorter when the dynamics are faster),
    ``max_cycles`` give-up time in periods (the earlier of the two give-up times applies)."""

    tolerance: float
    hold_cycles: float
    max_settle_s: float
    step_cycles: float
    max_cycles: float

    def _problem(self, chip: EmulatedChip) -> _Problem:
        """The chip's dynamics now, in the clock frame (or any rotating frame when free)."""
        w = np.asarray(chip._true_frequencies(), dtype=np.float64)
        pinned = np.zeros(chip.n, dtype=bool)
        held = chip._held_now()
        if held is not None:
            pinned[held[0]] = True
        beta = target = None
        if chip._clamp is not None:
            b, t, _ = chip._clamp  # injection nudge (direction folded into t by _clamp_physics)
            beta, target = b, t
        drive = amp = None
        drv = chip._drive_now()
        if drv is not None:
            amp, psi = drv
            drive = Drive.carrier_wave(0.0, phase0=psi)
        if held is not None:  # the clock is the reference (a held bias oscillator)
            omega_c = float(w[chip.ref])
        elif beta is not None or drive is not None:  # injected from the clock: ref pinned
            omega_c = chip._clock_frame(w)
            pinned[chip.ref] = True
        else:  # a free array: any rotating frame (only phase differences are read)
            omega_c = float(np.mean(w))
        K = np.array(chip.K, dtype=np.float64)
        K[pinned] = 0.0
        om = np.where(pinned, 0.0, w - omega_c)
        D = np.where(pinned, 0.0, chip._diffusion())
        moving = np.flatnonzero(~pinned & (np.arange(chip.n) != chip.ref))
        return _Problem(
            om, K, chip.H, beta, target, drive, amp, D, moving, chip.ref, held is not None
        )

    def _start(self, chip: EmulatedChip) -> Array:
        """The phases the change finds the chip in: its last state, held inputs at their
        new phases."""
        th = np.array(chip.theta, dtype=np.float64)
        held = chip._held_now()
        if held is not None:
            th[held[0]] = held[1]
        return th

    def settle(self, chip: EmulatedChip, changed: bool) -> Settled:
        prob = self._problem(chip)
        unit = chip._time_unit_s
        cyc = chip._ref_freq_hz * unit  # oscillation periods per model time unit
        th0 = self._start(chip)
        if not changed:  # slow drift only: the locked array follows it adiabatically
            th, lin = chip.solve_state(theta0=th0)
            return Settled(th, lin, 0.0, 0.0)
        # a binary step keeps every sample time of dynamics.settle exact (its sample grid is
        # built by repeated addition and must not step past a chunk's end)
        step = 2.0 ** math.floor(math.log2(min(self.step_cycles / cyc, 0.05 / prob.rate())))
        hold = step * math.ceil(self.hold_cycles / cyc / step)
        t_max = step * math.ceil(min(self.max_settle_s / unit, self.max_cycles / cyc) / step)
        v0 = prob.velocity(th0)
        tol = max(self.tolerance * float(np.abs(v0[prob.moving]).max(initial=0.0)), _VELOCITY_FLOOR)
        quiet = math.sqrt(2.0 * float(prob.diffusion.max(initial=0.0)) * t_max) < _QUIET_RAD
        if prob.moving.size == 0:
            th_end, lock_t = th0, 0.0
        elif quiet:
            res = settle(
                th0, prob.omega, prob.K, coupling=prob.H, drive=prob.drive,
                drive_amplitude=prob.drive_amplitude, beta=prob.beta, target=prob.target,
                nudge="injection", ref=prob.ref, oscillators=prob.moving, tol=tol,
                hold=hold, sample_dt=step, t_max=t_max,
            )  # fmt: skip
            th_end = np.asarray(res.theta, dtype=np.float64)
            lock_t = float(res.lock_time) if bool(res.locked) else math.nan
        else:
            th_end, lock_t = self._noisy(chip, prob, th0, tol, hold, step, t_max)
        th_end = th_end - th_end[chip.ref]
        locked = math.isfinite(lock_t)
        lin = chip._linearise(th_end, chip._rkw()) if locked else None
        if lin is not None and lin.margin <= 1e-9:
            lin = None
        if lin is not None and chip._clamp is None and prob.drive is None and not prob.held:
            chip._set_clock(th_end)  # a free lock: the clock PLL follows the array's Ω
        if lin is None:
            chip.theta = th_end  # slipping: the read continues the integration from here
        t_used = lock_t if locked else t_max
        return Settled(th_end, lin, t_used * unit, t_used * cyc)

    def _noisy(
        self,
        chip: EmulatedChip,
        prob: _Problem,
        th0: Array,
        tol: float,
        hold: float,
        step: float,
        t_max: float,
    ) -> tuple[Array, float]:
        """Stochastic Heun; the relative phases are kept every ``hold``/5. Locked at the
        first kept time t from which the mean relative velocity over [t, t + hold] is below
        tol plus the diffusion's floor 4·√(2D/hold) (a velocity below that cannot be told
        from the phase noise by any detector): the lock time under noise is when the
        relaxation is buried in the noise, shorter than the noise-free one at a tolerance
        below that floor."""
        sub = 5
        per = max(sub, sub * int(round(hold / step / sub)))
        dt = hold / per
        floor = 4.0 * math.sqrt(2.0 * float(prob.diffusion.max()) / hold)
        th = th0.copy()
        kept = [th0[prob.moving] - th0[prob.ref]]
        t = 0.0
        while t < t_max - 1e-12:
            tr = integrate_sde(
                th, prob.omega, prob.K, t_span=(0.0, hold), dt=dt, diffusion=prob.diffusion,
                coupling=prob.H, drive=prob.drive, drive_amplitude=prob.drive_amplitude,
                beta=prob.beta, target=prob.target, nudge="injection", rng=chip.rng,
                record_every=per // sub,
            )  # fmt: skip
            rec = np.asarray(tr.theta, dtype=np.float64)[1:]
            kept += list(rec[:, prob.moving] - rec[:, prob.ref : prob.ref + 1])
            th = rec[-1]
            t += hold
            rel = np.asarray(kept)
            v = np.abs(rel[sub:] - rel[:-sub]).max(axis=1) / hold  # mean over each window
            quiet = np.flatnonzero(v < tol + floor)
            if quiet.size:
                return th, float(quiet[0]) * hold / sub
        return th, math.nan

    def slipping_samples(self, chip: EmulatedChip, m: int, dt_s: float) -> Array:
        """The conversions of a read while the array slips: the dynamics keep integrating
        (with noise) and each conversion samples the phases, relative to the reference."""
        prob = self._problem(chip)
        dt = dt_s / chip._time_unit_s
        cyc = chip._ref_freq_hz * chip._time_unit_s
        sub = max(1, int(math.ceil(dt / min(self.step_cycles / cyc, 0.05 / prob.rate()))))
        th = np.array(chip.theta, dtype=np.float64)
        tr = integrate_sde(
            th, prob.omega, prob.K, t_span=(0.0, m * dt), dt=dt / sub, diffusion=prob.diffusion,
            coupling=prob.H, drive=prob.drive, drive_amplitude=prob.drive_amplitude,
            beta=prob.beta, target=prob.target, nudge="injection", rng=chip.rng,
            record_every=sub,
        )  # fmt: skip
        ph = np.asarray(tr.theta, dtype=np.float64)[1:]
        chip.theta = ph[-1] - ph[-1, chip.ref]
        return np.asarray(wrap(ph - ph[:, chip.ref : chip.ref + 1]), dtype=np.float64)
