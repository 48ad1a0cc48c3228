"""Shared machinery of the emulated chips (:mod:`~phasegrad_hw.backends.cmos`,
:mod:`~phasegrad_hw.backends.optical`).

An emulated chip is the core Kuramoto physics (:func:`phasegrad_hw.physics.solve_equilibrium`
for the locked state) wrapped in the hardware effects a real chip adds around it:

* a virtual clock (s): settling, read intervals and counter gates advance it; slow
  processes (temperature, drift) evolve on it;
* phase noise as diffusion around the locked state: the linearised deviation x of the
  non-reference phases is an Ornstein–Uhlenbeck process dx = A x dt + dW, ⟨dW dWᵀ⟩ = Q dt
  (A the reduced Jacobian at the locked state, Q = diag(D_i) the free-running phase diffusion
  constants), propagated exactly between conversions: over a short dt the increment has rms
  √(D·dt) (√dt scaling); after many correlation times 1/λ it forgets (stationary
  covariance Σ from A Σ + Σ Aᵀ + Q = 0);
* the frame: the free array locks at its collective frequency Ω (every oscillator, the
  reference included, turning at the same rate: f_k(θ) = f_ref(θ), f the core :func:`rhs`).
  The chip's reference clock — the TDC start / homodyne LO and the injection source — is
  phase-locked to the reference oscillator of the free array (a slow PLL), so during a read
  the reference is pinned at phase 0 and the others lock to Ω: the core's reduced system
  (:func:`~phasegrad_hw.physics.solve_equilibrium`) at frequencies ω − Ω. With an odd H and
  symmetric K, Ω = mean(ω) and this is exactly the core's centred gauge; a phase lag ψ or
  offsets b0, b1 shift every coupled oscillator (by ≈ −K sin ψ, K b0, …), and Ω with them.
  The clock holds Ω while the outputs are nudged;
* loss of lock when no stable locked state exists (phases ramp and wrap between reads,
  ``locked = False``; never an exception from the physics);
* switchable failure modes (:class:`phasegrad_hw.device.model.FailureSpec`);
* held inputs and bias oscillators (``roles.held``, ``roles.bias``; ``held_phases``) and an
  external drive (``roles.drive``; ``drive``) are injected from the chip's clock
  (:mod:`~phasegrad_hw.backends._held`): held oscillators sit exactly at their phases, the
  clock is the reference oscillator (a bias oscillator), so the free oscillators see the
  detunings ω − ω_ref and are solved on the free block (layered solver for the start of a
  layered device, then Newton under the chip's true K and H); without held inputs the drive
  enters in the clock frame Ω like the clamp. On arrays with more than
  :data:`EXACT_OU_MAX` free oscillators the phase diffusion uses the symmetric part of the
  linearisation (:class:`_SymLinearised`) instead of a full eigen-decomposition per read.

Two random streams: chip mismatch is drawn once from ``model.seed`` (a fixed property of
the chip); the noise stream is seeded by the ``seed`` argument and reset by :meth:`reseed`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from phasegrad_hw.backends import _held
from phasegrad_hw.backends._settle import NewtonSettle, SettleStrategy, TransientSettle
from phasegrad_hw.device.model import DeviceFileModel, DeviceModel
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import LockLostError
from phasegrad_hw.physics import Array, jacobian, rhs, wrap
from phasegrad_hw.physics.compiled import warm_up
from phasegrad_hw.physics.gradients import implicit_gradient, loss_grad_theta
from phasegrad_hw.physics.ladder import Nudge, solve_locked

# --------------------------------------------------------------------------- emulated chips
# Physical parameters of the CMOS and optical emulators (phasegrad_hw.backends.cmos/optical).
# Literature ranges are quoted per field (docs/design.md §5); bounds outside them are still
# allowed where a user may want to explore what a chip must achieve, but never unphysical.


class FailureSpec(DeviceFileModel):
    """Switchable failure modes (all off by default).

    ``lock_loss_probability`` per read: the chip drops out of lock for that read (a supply
    glitch or an injection transient) and the phases ramp at ``slip_rate`` (model frequency
    units) — reported ``locked = False``. ``basin_jump_probability`` per read: one random
    non-reference oscillator locks half a cycle away (the inverted output of a differential
    ring, or the neighbouring longitudinal mode of a resonator) for that read.
    ``drift_units_per_sqrt_s``/``drift_tau_s``: an extra per-oscillator frequency drift
    (model units, Ornstein–Uhlenbeck, random walk below ``drift_tau_s``), strong enough to
    detune the array out of lock or into another basin. ``stuck_channel`` (with
    ``stuck_probability`` per read): that readout channel stops seeing edges; the readout
    repeats its last code and the lock detector reports ``locked = False``.
    """

    lock_loss_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    slip_rate: float = Field(default=0.5, gt=0.0, le=100.0)
    basin_jump_probability: float = Field(default=0.0, ge=0.0, le=1.0)
    drift_units_per_sqrt_s: float = Field(default=0.0, ge=0.0, le=1e6)
    drift_tau_s: float = Field(default=1e-3, gt=0.0)
    stuck_channel: int | None = Field(default=None, ge=0)
    stuck_probability: float = Field(default=1.0, ge=0.0, le=1.0)


class SettlingSpec(DeviceFileModel):
    """Settling after a step: ``lock_cycles`` oscillation periods at least (5–50 cycles for
    injection-/coupling-locked ring oscillators), longer near the locking edge where the
    stability margin λ → 0: settle = max(lock_cycles/f, ln(1/tolerance)/λ). ``sleep`` really
    waits that long (off for CI and benchmarks; the time is reported either way)."""

    lock_cycles: float = Field(default=20.0, ge=1.0, le=10_000.0)
    tolerance: float = Field(default=1e-4, gt=0.0, lt=1.0)
    max_settle_s: float = Field(default=1e-3, gt=0.0)
    sleep: bool = False
    # settle = "transient" (backends/_settle.py): lock detector hold, integration step and
    # give-up time, in oscillation periods
    hold_cycles: float = Field(default=5.0, gt=0.0, le=10_000.0)
    step_cycles: float = Field(default=0.05, gt=0.0, le=1.0)
    max_cycles: float = Field(default=2000.0, gt=0.0, le=1e7)


class _ChipModel(DeviceModel):
    """Common part of the emulated chips: failures, settling, drift. ``settle``: how the chip
    reaches its state after a change — ``newton`` (the locked state by damped Newton, settling
    time from its stability margin) or ``transient`` (the chip integrates its dynamics, with
    its phase noise; lock time, basin and beat notes come from the integration; needs the
    injection nudge). See :mod:`phasegrad_hw.backends._settle`."""

    failures: FailureSpec = Field(default_factory=FailureSpec)
    settling: SettlingSpec = Field(default_factory=SettlingSpec)
    settle: Literal["newton", "transient"] = "newton"

    @model_validator(mode="after")
    def _chip_consistency(self) -> _ChipModel:
        if self.settle == "transient" and self.nudge != "injection":
            raise ValueError(
                f"settle: 'transient' integrates the chip's injection nudge; nudge is "
                f"{self.nudge!r} (use nudge = 'injection' or settle = 'newton')"
            )
        sc = self.failures.stuck_channel
        if sc is not None and sc >= self.n_oscillators:
            raise ValueError(
                f"failures.stuck_channel: {sc} is not an oscillator "
                f"(allowed 0…{self.n_oscillators - 1})"
            )
        return self


log = logging.getLogger(__name__)

_TOL = 1e-9  # residual of a read's locked state (rad per time unit); far below readout noise
_MAX_ITER = 30  # damped Newton iterations before a state is declared not locked
_TOL_EXACT = 1e-12  # for the ground-truth state of exact_gradient
EXACT_OU_MAX = 32  # free oscillators up to which the diffusion uses the exact eigen-solution


def ou_step(
    tau_s: float, sigma: float, dt_s: float, rng: np.random.Generator, x: Array | float
) -> Any:
    """Exact Ornstein–Uhlenbeck update of ``x`` over ``dt_s`` (stationary rms ``sigma``)."""
    if dt_s <= 0.0 or sigma == 0.0:
        return x
    a = np.exp(-dt_s / tau_s)
    return a * np.asarray(x) + sigma * np.sqrt(max(0.0, 1.0 - a * a)) * rng.standard_normal(
        np.shape(x)
    )


class _Linearised:
    """Eigen-decomposition of the reduced Jacobian A at one locked state (model time units).

    Gives the stationary covariance Σ, the propagator Φ(dt) = e^{A dt} and the covariance of
    the noise added over dt, Σ − Φ Σ Φᵀ (≈ Q·dt for small dt: the √dt scaling of diffusion).
    """

    def __init__(self, A: Array, q: Array) -> None:
        """``A`` (n, n) drift matrix; ``q`` (n,) diagonal or (n, n) noise covariance rate."""
        self.A = A
        lam, V = np.linalg.eig(A)
        self.lam = lam
        self.V = V
        self.Vinv = np.linalg.inv(V)
        Q = np.diag(q) if np.ndim(q) == 1 else np.asarray(q)
        Qt = self.Vinv @ Q @ self.Vinv.conj().T
        S = -Qt / (lam[:, None] + lam.conj()[None, :])
        sigma = (V @ S @ V.conj().T).real
        self.sigma = 0.5 * (sigma + sigma.T)
        self.margin = float(-lam.real.max())
        self._chol_sigma: Array | None = None

    def chol_sigma(self) -> Array:
        if self._chol_sigma is None:
            self._chol_sigma = _psd_chol(self.sigma)
        return self._chol_sigma

    def propagator(self, dt: float) -> Array:
        return (self.V * np.exp(self.lam * dt)[None, :] @ self.Vinv).real

    def step_cov(self, dt: float) -> tuple[Array, Array]:
        """(Φ, chol of the added covariance) over dt."""
        P = self.propagator(dt)
        C = self.sigma - P @ self.sigma @ P.T
        return P, _psd_chol(0.5 * (C + C.T))


class _SymLinearised:
    """Cheap stand-in of :class:`_Linearised` for large arrays (the held 64-64-10 chips): the
    stationary covariance of the *symmetric part* A_s of A with Q = D·I, Σ = (D/2)·(−A_s)⁻¹
    (exact for symmetric K and odd H; the few % asymmetry of a chip changes it to that order),
    and every mode relaxing at the slowest rate λ_min of −A_s between conversions
    (Φ(dt) = e^{−λ_min dt}·I: correlations between conversions are over-, never
    under-estimated). One Cholesky factorisation per state instead of an eigen-decomposition.
    ``margin`` is λ_min (> 0 iff −A_s is positive definite, which implies a stable A);
    ``margin`` 0 when it is not."""

    def __init__(self, A: Array, q: Array) -> None:
        self.A = A
        As = -0.5 * (A + A.T)
        n = len(A)
        self.sigma = np.zeros((n, n))
        self.margin = 0.0
        try:
            L = np.linalg.cholesky(As)
        except np.linalg.LinAlgError:
            return
        inv = np.linalg.inv(As)
        self.sigma = 0.5 * float(np.mean(q)) * 0.5 * (inv + inv.T)
        v = np.ones(n) / np.sqrt(n)
        lam = 0.0
        for _ in range(8):  # inverse iteration: smallest eigenvalue of −A_s
            y = np.linalg.solve(L.T, np.linalg.solve(L, v))
            lam = 1.0 / float(np.linalg.norm(y))
            v = y * lam
        self.margin = lam
        self._chol_sigma: Array | None = None

    def chol_sigma(self) -> Array:
        if self._chol_sigma is None:
            self._chol_sigma = _psd_chol(self.sigma)
        return self._chol_sigma

    def propagator(self, dt: float) -> Array:
        return np.exp(-self.margin * dt) * np.eye(len(self.A))

    def step_cov(self, dt: float) -> tuple[Array, Array]:
        rho = float(np.exp(-self.margin * dt))
        return rho * np.eye(len(self.A)), np.sqrt(max(0.0, 1.0 - rho * rho)) * self.chol_sigma()


def _psd_chol(C: Array) -> Array:
    try:
        return np.asarray(np.linalg.cholesky(C + 1e-300 * np.eye(len(C))), dtype=np.float64)
    except np.linalg.LinAlgError:
        w, U = np.linalg.eigh(C)
        return U * np.sqrt(np.clip(w, 0.0, None))[None, :]


class EmulatedChip(OscillatorSubstrate):
    """Base class of the emulated chips. Subclasses provide the physical maps.

    Hooks for subclasses: ``_true_frequencies()`` (model units, the chip's real natural
    frequencies now), ``nominal_map()`` (ω ↔ bias, the design curve),
    ``_quantise_bias``, ``_true_coupling``, ``_clamp_physics``, ``_readout``,
    ``_diffusion()`` (rad² per model time unit, per oscillator), ``_time_unit_s``,
    ``_settle_extra_s()``, ``_advance_slow(dt_s)`` and ``_reset_slow()``.

    ``set_frequencies`` maps ω to biases through ``frequency_map`` (the nominal curve until a
    transfer calibration assigns a measured one).
    """

    operation_timeout_s = None  # computation in this process: nothing to time out
    capabilities = frozenset(
        {
            Capability.COUPLINGS,
            Capability.FREQUENCY_COUNTER,
            Capability.EXACT_GRADIENT,
            Capability.RESEED,
        }
    )
    model: _ChipModel
    _time_unit_s: float = 1.0
    _ref_freq_hz: float = 1.0  # period of a phase cycle for settle-in-cycles

    def __init__(self, model: _ChipModel, seed: int | None = None) -> None:
        super().__init__(model)
        warm_up()  # the solver kernels loaded before the first (possibly timed) read
        n = model.n
        self.n = n
        self.ref = model.roles.reference
        self.keep = np.arange(n) != self.ref
        r = model.roles
        caps = set(type(self).capabilities)
        caps |= {Capability.HELD_PHASES} if r.held else set()
        caps |= {Capability.DRIVE} if r.drive else set()
        self.capabilities = frozenset(caps)
        self._lay = _held.layout(model)
        # the oscillators whose phases are solved (and diffuse): all but the reference, or
        # the free ones of a device with held inputs
        self._var = self._lay.free if r.held else np.flatnonzero(self.keep)
        self.held_rad = model.input_phases(np.zeros(len(r.held)))
        self.drive: tuple[Array, float] = (np.zeros(n), 0.0)
        self._lsolver: tuple[tuple[int, bytes], _held.LayeredSolver] | None = None
        self._k_version = 0  # bumped by every coupling change (the layered solver's cache key)
        self.H = model.coupling()
        self.chip_rng = np.random.default_rng([model.seed, 0x5EED, 4])
        self._draw_mismatch(self.chip_rng)
        fail = model.failures
        self._stuck = fail.stuck_channel
        self._clamp: tuple[Array, Array, int] | None = None
        self._clamp_sign = 1
        self._free: tuple[Array, Array] | None = None
        self._plus_theta: Array | None = None
        self.K = self._true_coupling(model.coupling_values())
        st = model.settling
        self.settler: SettleStrategy = (
            NewtonSettle()
            if model.settle == "newton"
            else TransientSettle(
                st.tolerance, st.hold_cycles, st.max_settle_s, st.step_cycles, st.max_cycles
            )
        )
        self.seed = model.seed if seed is None else int(seed)
        self.reseed(self.seed)

    # -- randomness ------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Return the chip to its power-on state under noise seed ``seed``: noise stream,
        fluctuating state (phase deviation, temperature, drift, thermal transients), virtual
        clock, warm start, clamp off and biases at their safe values — so a run resumed on a
        fresh chip continues exactly like an uninterrupted one. Mismatch is a fixed property
        of the chip (drawn from ``model.seed``) and does not change."""
        self.rng = np.random.default_rng([int(seed), 0xD1FF])
        self.bias = self._quantise_bias(self.model.safe_biases())
        self._clamp = None
        self.clamped = False
        self.time_s = 0.0
        self.theta = np.zeros(self.n)
        self._x = np.zeros(self._var.size)
        self._x_time = 0.0
        self._drift = np.zeros(self.n)
        self._dirty = True
        self._bias_changed = True  # heater/bias transients pending (clamp changes have none)
        self._free = None
        self._plus_theta = None
        self._frame_omega: float | None = None
        self._frame_at: tuple[Array, Array, Array | None] = (np.zeros(self.n), self.theta, None)
        self._stuck_code = 0.0
        self._unlocked_since: float | None = None
        self._reset_slow()

    # -- subclass hooks ----------------------------------------------------------------
    def _draw_mismatch(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _true_frequencies(self) -> Array:
        raise NotImplementedError

    def _quantise_bias(self, bias: Array) -> Array:
        return bias.copy()

    def _true_coupling(self, k: Array) -> Array:
        raise NotImplementedError

    def _clamp_physics(
        self, target: Array, beta: float, direction: int
    ) -> tuple[Array, Array, int]:
        raise NotImplementedError

    def _readout(self, phases: Array) -> Array:
        raise NotImplementedError

    def _diffusion(self) -> Array:
        raise NotImplementedError

    def _settle_extra_s(self) -> float:
        return 0.0

    def _advance_slow(self, dt_s: float) -> None:
        """Evolve temperature/ambient over ``dt_s``."""

    def _reset_slow(self) -> None:
        """Reset temperature/ambient state (called by :meth:`reseed`)."""

    def model_gate_s(self) -> float:
        return float(getattr(self.model, "counter_gate_s", 1e-3))

    def _freq_unit_hz(self) -> float:
        raise NotImplementedError

    # -- substrate hooks -------------------------------------------------------------
    async def _apply_biases(self, values: Array) -> None:
        q = self._quantise_bias(values)
        if not np.array_equal(q, self.bias):
            self._on_bias_change(q)
            self.bias = q
            self._dirty = True
            self._bias_changed = True
            self._free = None

    def _on_bias_change(self, new_bias: Array) -> None:
        """Called before the bias changes (thermal transients)."""

    async def _apply_couplings(self, values: Array) -> None:
        self.K = self._true_coupling(values)
        self._k_version += 1
        self._dirty = True
        self._free = None

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        self._clamp = self._clamp_physics(target, beta, direction)
        self._clamp_sign = direction
        if direction > 0:
            self._plus_theta = None
        self._dirty = True

    async def _apply_release(self) -> None:
        if self._clamp is not None:
            self._clamp = None
            self._dirty = True

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        """The phase shifters of the held inputs (their injection follows at once)."""
        if not np.array_equal(phases_rad, self.held_rad):
            self.held_rad = phases_rad.copy()
            self._dirty = True
            self._free = None
            self._plus_theta = None

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        """The external drive, synthesised from the clock: amplitude F (roles.drive), phase ψ."""
        a = np.zeros(self.n)
        a[self.model.roles.drive] = amplitude
        self.drive = (a, float(phase_rad))
        self._dirty = True
        self._free = None
        self._plus_theta = None

    async def _read_frequencies(self) -> Array:
        """Free-running frequencies (model units, not centred) by a gated counter (±1 count
        in ``counter_gate_s``; couplings and injection gated off for the count)."""
        gate = self.model_gate_s()
        self._advance(gate)
        hz = self._true_frequencies() * self._freq_unit_hz()
        counts = np.floor(hz * gate + self.rng.random(self.n))
        return counts / gate / self._freq_unit_hz()

    # -- physics ---------------------------------------------------------------------
    def _advance(self, dt_s: float) -> None:
        if dt_s <= 0.0:
            return
        self.time_s += dt_s
        f = self.model.failures
        if f.drift_units_per_sqrt_s > 0.0:
            sig = f.drift_units_per_sqrt_s * np.sqrt(f.drift_tau_s / 2.0)
            self._drift = ou_step(f.drift_tau_s, sig, dt_s, self.rng, self._drift)
        self._advance_slow(dt_s)

    def _nudge_kwargs(self) -> dict[str, Any]:
        if self._clamp is None:
            return {}
        b, t, d = self._clamp
        return {"beta": b, "target": t, "direction": d}

    # -- locked states -------------------------------------------------------------
    def _rkw(self, clamp: bool = True) -> dict[str, Any]:
        kw = self._nudge_kwargs() if clamp else {}
        if not kw:
            return {}
        return {
            "beta": kw["beta"] * kw["direction"],
            "target": kw["target"],
            "nudge": self.model.nudge,
        }

    def _ladder(
        self, w: Array, start: Array, tol: float, *, free: bool, clamp: bool = False
    ) -> Array | None:
        """The physics retry ladder (:func:`~phasegrad_hw.physics.ladder.solve_locked`:
        damped Newton from ``start``, then from a cold start) on the free frame (Ω solved,
        ``free``) or on the pinned system at ``w`` (already in the clock frame) with the
        present clamp; None when Newton does not converge. Lock (stability) is judged by
        the caller from :meth:`_linearise`, whose eigen-decomposition the readout needs
        anyway, so the ladder accepts a converged state and checks no stability itself."""
        nudge = None
        if clamp and self._clamp is not None:
            b, t, d = self._clamp
            nudge = Nudge(b[None], t[None], self.model.nudge, d)
        res = solve_locked(
            w[None], start[None], self.H, K=self.K[None], ref=self.ref, nudge=nudge,
            frame="free" if free else "pinned", tol=tol, max_iter=_MAX_ITER, accept="converged",
        )  # fmt: skip
        return res.theta[0] if res.ok[0] else None

    def _free_frame(self, w: Array, start: Array, tol: float) -> tuple[Array, float] | None:
        """Free locked state and collective frequency Ω (model units), or None."""
        th = self._ladder(w, start, tol, free=True)
        if th is None:
            return None
        return th, float(rhs(th, w, self.K, self.H)[self.ref])

    def solve_state(
        self,
        omega: Array | None = None,
        clamp: bool = True,
        tol: float = _TOL,
        theta0: Array | None = None,
    ) -> tuple[Array, _Linearised | _SymLinearised | None]:
        """Locked state θ (rad, θ_ref = 0) under the present settings and its linearisation
        (None: no stable locked state — the phases slip).

        Free state: the physics ladder on the free frame (all N equations f_k = Ω, θ_ref = 0,
        Ω solved with the phases; warm, then cold); it sets the clock frame Ω. Nudged
        state: the ladder on the pinned system at ω − Ω from the predicted state. Locked =
        converged and every eigenvalue of the pinned Jacobian has a negative real part.
        """
        w = np.asarray(self._true_frequencies() if omega is None else omega, dtype=np.float64)
        rkw = self._rkw(clamp)
        start = (self._predict() if clamp else self.theta) if theta0 is None else theta0
        if self._forced():
            return self._forced_state(w, rkw, start, tol)
        if not rkw or self._frame_omega is None:
            free = self._free_frame(w, self.theta if rkw else start, tol)
            if free is None:
                return self.theta.copy(), None
            th, self._frame_omega = free
            self._frame_at = (w.copy(), th.copy(), None)
        if rkw:
            th_n = self._ladder(w - self._tracked_frame(w), start, tol, free=False, clamp=True)
            if th_n is None:
                return self.theta.copy(), None
            th = th_n
        lin = self._linearise(th, rkw)
        if lin.margin <= 1e-9:
            return th, None
        return th, lin

    def _forced(self) -> bool:
        return bool(self.model.roles.held) or bool(np.any(self.drive[0]))

    def _forcing(self, rkw: dict[str, Any]) -> _held.Forcing:
        return _held.Forcing(self.drive[0], self.drive[1], rkw)

    def _forced_state(
        self, w: Array, rkw: dict[str, Any], start: Array, tol: float
    ) -> tuple[Array, _Linearised | _SymLinearised | None]:
        """Locked state with held inputs or a drive (module doc): the free oscillators by
        Newton (:func:`~phasegrad_hw.backends._held.solve_free`) from the layered solver's
        free state (layered device, no clamp), the predicted/warm state, then the held phases."""
        held = bool(self.model.roles.held)
        if held:
            w_rel = w - w[self.ref]
            th_held = _held.held_phases(self.model, self.held_rad)
        else:
            if self._frame_omega is None:
                free = self._free_frame(w, self.theta, tol)
                if free is None:
                    return self.theta.copy(), None
                self._frame_omega = free[1]
                self._frame_at = (w.copy(), free[0].copy(), None)
            w_rel = w - self._tracked_frame(w)
            th_held = np.zeros(self.n)
        f = self._forcing(rkw)
        warm = start.copy()
        warm[self._lay.held] = th_held[self._lay.held]
        if held and self._lay.net is not None and not np.any(self.drive[0]):
            th_l = self._layered(w_rel, th_held, f, warm, bool(rkw), tol)
            if th_l is not None:
                lin = self._linearise(th_l, rkw)
                if lin.margin > 1e-9:
                    return th_l, lin
            return warm, None
        for s0 in (warm, th_held):
            th = _held.solve_free(s0, w_rel, self.K, self.H, self._var, f, tol, _MAX_ITER)
            if th is None:
                continue
            lin = self._linearise(th, rkw)
            if lin.margin > 1e-9:
                return th, lin
        return warm, None

    def _layered(
        self, w_rel: Array, th_held: Array, f: _held.Forcing, warm: Array, nudged: bool, tol: float
    ) -> Array | None:
        """Layered held device: :class:`~phasegrad_hw.backends._held.LayeredSolver` (any H,
        asymmetric K) — the free state from the feed-forward start (a function of the settings
        and the input, as in the layered engine), a nudged one from the predicted state; the
        warm state as a second start."""
        key = (self._k_version, self.held_rad.tobytes())
        if self._lsolver is None or self._lsolver[0] != key:
            self._lsolver = (key, _held.LayeredSolver(self._lay, w_rel, self.K, self.H, th_held))
        ls = self._lsolver[1]
        ls.set_frequencies(w_rel)
        near = (warm[ls.out], warm[ls.hid])
        starts = [(near, 1e6), (near, 1.0)] if nudged else [(ls.feed_forward(), 1.0), (near, 1.0)]
        for (th_o, th_h), dt0 in starts:
            th = ls.solve(th_o, th_h, f, tol, 4 * _MAX_ITER, dt0)
            if th is not None:
                return th
        return None

    def _tracked_frame(self, w: Array) -> float:
        """Ω for the present true ω: the clock follows the array's free collective frequency
        (it is derived from the reference oscillator), also while clamped — to first order
        Ω + u·(ω − ω_free), u the left null vector of the free Jacobian with u·1 = 1 (a
        common shift of every ω moves Ω by the same amount and no phase; only the
        differential part of a drift moves the clamped phases)."""
        assert self._frame_omega is not None
        w_free, th_free, u = self._frame_at
        dw = w - w_free
        if not np.any(dw):
            return self._frame_omega
        if u is None:
            U, _, _ = np.linalg.svd(jacobian(th_free, self.K, self.H))
            u = U[:, -1] / U[:, -1].sum()
            self._frame_at = (w_free, th_free, u)
        return self._frame_omega + float(u @ dw)

    @property
    def frame_frequency(self) -> float | None:
        """Ω (model units): collective frequency of the free array the clock is locked to."""
        return self._frame_omega

    def solve(
        self, omega: Array | None = None, clamp: bool = True, tol: float = _TOL
    ) -> tuple[Array, bool]:
        """(θ, locked) under the present true settings (see :meth:`solve_state`)."""
        th, lin = self.solve_state(omega, clamp, tol)
        return th, lin is not None

    def _locked_state(self) -> tuple[Array, _Linearised | _SymLinearised | None]:
        return self.solve_state()

    # -- what a transient settle integrates (backends/_settle.py) -----------------------
    def _held_now(self) -> tuple[NDArray[np.int64], Array] | None:
        """Held oscillators (held inputs and bias oscillators, the reference among them)
        and their phases (rad, clock frame), or None on a device without held inputs."""
        if not self.model.roles.held:
            return None
        held = self._lay.held
        return held, _held.held_phases(self.model, self.held_rad)[held]

    def _drive_now(self) -> tuple[Array, float] | None:
        """The drive: amplitudes F (N,) model units (0 off the driven oscillators) and the
        quasi-static phase ψ (rad, clock frame), or None when it is off."""
        return self.drive if np.any(self.drive[0]) else None

    def _clock_frame(self, w: Array) -> float:
        """Ω (model units) of the clock an injection is referenced to: the free array's
        collective frequency the clock's PLL follows (solved once if no read set it yet; the
        mean frequency when the free array has no locked state)."""
        if self._frame_omega is None:
            free = self._free_frame(w, self.theta, _TOL)
            if free is None:
                return float(np.mean(w))
            self._frame_omega = free[1]
            self._frame_at = (w.copy(), free[0].copy(), None)
        return self._tracked_frame(w)

    def _set_clock(self, theta: Array) -> None:
        """A free locked state reached: the clock follows its collective frequency."""
        w = np.asarray(self._true_frequencies(), dtype=np.float64)
        self._frame_omega = float(rhs(theta, w, self.K, self.H)[self.ref])
        self._frame_at = (w.copy(), theta.copy(), None)

    def _predict(self) -> Array:
        """Warm start for the next solve: the nudged state to first order from the free one
        (θ* − A⁻¹ n(θ*)), the −β state as 2θ* − θ^{+β} (second order)."""
        free = self._free
        if free is None:
            return self.theta
        if self._clamp is None:
            return free[0]
        theta_f, A = free
        b, t, d = self._clamp
        if self._clamp_sign < 0 and self._plus_theta is not None:
            return theta_f - wrap(self._plus_theta - theta_f)
        dlt = t - theta_f
        force = b * d * (np.sin(dlt) if self.model.nudge == "injection" else dlt)
        out = theta_f.copy()
        try:
            out[self._var] -= np.linalg.solve(A, force[self._var])
        except np.linalg.LinAlgError:
            return self.theta
        return out

    def _linearise(self, theta: Array, rkw: dict[str, Any]) -> _Linearised | _SymLinearised:
        """Linearised dynamics around the locked state: A the Jacobian of the solved
        oscillators (the non-reference ones, or the free ones with held inputs; clamp ``rkw``
        and drive included), noise rate diag(D_k) on them (the reference and the held
        oscillators follow the clock; clock jitter belongs to the readout)."""
        var = self._var
        A = _held.free_jacobian(theta, self.K, self.H, var, self._forcing(rkw))
        if var.size > EXACT_OU_MAX:
            return _SymLinearised(A, self._diffusion()[var])
        return _Linearised(A, self._diffusion()[var])

    def _lock_settle_s(self, margin: float) -> float:
        """Lock settling (s): max(lock_cycles/f, ln(1/tol)/λ) — grows as the stability margin
        λ (model units) shrinks near the locking edge; capped at ``max_settle_s``."""
        s = self.model.settling
        lock = s.lock_cycles / self._ref_freq_hz
        if margin > 0:
            lock = max(lock, float(np.log(1.0 / s.tolerance)) / margin * self._time_unit_s)
        else:
            lock = s.max_settle_s
        return float(min(s.max_settle_s, lock))

    async def _read(self, averages: int) -> PhaseReading:
        m = self.model
        f = m.failures
        dt_read = self._read_interval_s()
        # settle first if anything changed: bias transients (e.g. thermal; only after a bias
        # change — a clamp or coupling change has none), then the lock, whose settling time
        # needs the new state's stability margin
        settle = 0.0
        if self._bias_changed:
            settle = min(self._settle_extra_s(), m.settling.max_settle_s)
            self._advance(settle)
            self._bias_changed = False
        st = self.settler.settle(self, self._dirty)
        theta, lin = st.theta, st.lin
        if self._dirty:
            self._advance(st.lock_s)  # (drift over ≤ 1 µs of settling is negligible)
            settle += st.lock_s
            self._dirty = False
        locked = lin is not None
        if lin is not None:
            self.theta = theta
            self._unlocked_since = None
            if self._clamp is None:
                self._free = (theta.copy(), lin.A)
            elif self._clamp_sign > 0:
                self._plus_theta = theta.copy()
            phases = self._locked_samples(theta, lin, averages, dt_read)
        else:
            phases = self.settler.slipping_samples(self, averages, dt_read)
        ok = locked
        self._advance(averages * dt_read)
        # forced loss of lock: one oscillator slips for the whole read
        if f.lock_loss_probability > 0 and self.rng.random() < f.lock_loss_probability:
            k = int(self.rng.choice(np.flatnonzero(self.keep)))
            t = (np.arange(averages) + self.rng.random()) * dt_read / self._time_unit_s
            phases[:, k] += f.slip_rate * t + 2 * np.pi * self.rng.random()
            locked = False
        skew = getattr(getattr(m, "tdc", None), "skew_s", 0.0)
        if skew and ok:
            d = self._diffusion()
            lag = np.arange(self.n) * skew / self._time_unit_s
            phases += np.sqrt(d * lag)[None, :] * self.rng.standard_normal(phases.shape)
        meas = self._readout(phases)
        if f.basin_jump_probability > 0 and self.rng.random() < f.basin_jump_probability:
            cand = np.flatnonzero(self.keep)
            k = int(self.rng.choice(cand))
            meas[:, k] = wrap(meas[:, k] + np.pi)
        if self._stuck is not None and self.rng.random() < f.stuck_probability:
            meas[:, self._stuck] = self._stuck_code
            locked = False
        elif self._stuck is not None:
            self._stuck_code = float(np.angle(np.exp(1j * meas[:, self._stuck]).mean()))
        meas[:, self.ref] = 0.0
        if m.settling.sleep and settle > 0:
            await asyncio.sleep(settle)
        return PhaseReading.from_samples(meas, locked=locked, settle_s=settle)

    def _read_interval_s(self) -> float:
        raise NotImplementedError

    def _locked_samples(
        self, theta: Array, lin: _Linearised | _SymLinearised, m: int, dt_s: float
    ) -> Array:
        """(m, N) true phases at m conversions ``dt_s`` apart: θ* + OU deviation."""
        dt = dt_s / self._time_unit_s
        gap = max(0.0, (self.time_s - self._x_time)) / self._time_unit_s
        x = self._x
        n1 = self._var.size
        out = np.empty((m, n1))
        if lin.margin * min(dt, gap if gap > 0 else dt) > 40.0:
            # conversions many correlation times apart: independent stationary draws
            out = self.rng.standard_normal((m, n1)) @ lin.chol_sigma().T
        else:
            P0, L0 = lin.step_cov(gap) if gap > 0 else (np.eye(n1), np.zeros((n1, n1)))
            x = P0 @ x + L0 @ self.rng.standard_normal(n1)
            P, L = lin.step_cov(dt)
            z = self.rng.standard_normal((m, n1)) @ L.T
            for k in range(m):
                if k:
                    x = P @ x + z[k]
                out[k] = x
        self._x = out[-1].copy()
        self._x_time = self.time_s + (m - 1) * dt_s
        ph = np.repeat(theta[None, :], m, axis=0)
        ph[:, self._var] += out
        return ph

    def _unlocked_samples(self, m: int, dt_s: float) -> Array:
        """No stable locked state: every oscillator runs at its own frequency in the frame
        of the reference (phases ramp and wrap)."""
        w = self._true_frequencies()
        rel = w - w[self.ref]
        if self._unlocked_since is None:
            self._unlocked_since = self.time_s
        t = (self.time_s - self._unlocked_since + np.arange(m) * dt_s) / self._time_unit_s
        ph = self.theta[None, :] + rel[None, :] * t[:, None]
        d = self._diffusion()
        step = np.sqrt(d * max(dt_s / self._time_unit_s, 0.0))
        ph += step[None, :] * self.rng.standard_normal(ph.shape)
        ph[:, self.ref] = 0.0
        return wrap(ph)

    # -- ground truth ---------------------------------------------------------------
    def true_state(self) -> tuple[Array, bool]:
        """The noise-free free-running locked state (rad) and whether it is locked."""
        th, lin = self.solve_state(clamp=False, tol=_TOL_EXACT)
        return th, lin is not None

    def exact_gradient(self, target: Array) -> Array:
        """∂L/∂ω^c (reference entry 0) by implicit differentiation at the chip's true free
        state, with its true (possibly asymmetric, non-odd) Jacobian in the clock frame:
        −J̃⁻ᵀe (:func:`~phasegrad_hw.physics.gradients.implicit_gradient`), e = ∂L/∂θ. The two-phase
        estimate −Δθ/β approaches −J̃⁻¹e, so they agree iff J̃ is symmetric. ``target``
        (n_outputs,) rad; the loss pairs with ``model.nudge`` (injection: Σ(1 − cos(θ_o − t))).
        """
        th, lin = self.solve_state(clamp=False, tol=_TOL_EXACT)
        if lin is None:
            raise LockLostError("exact_gradient: the chip has no locked free state")
        t = np.asarray(target, dtype=np.float64)
        if self._forced():  # held inputs / drive: the free block, wrapped clamp (module doc)
            e = _held.loss_grad(th, self.model.outputs, t, self.model.nudge)
            J = _held.free_jacobian(th, self.K, self.H, self._var, self._forcing({}))
            return _held.free_implicit_gradient(J, e[self._var], self.n, self._var)
        e = loss_grad_theta(th, self.model.outputs, t, self.model.nudge)
        return np.asarray(implicit_gradient(th, self.K, e, self.H, ref=self.ref))

    def true_frequencies(self) -> Array:
        """The chip's real natural frequencies now (model units, not centred)."""
        return self._true_frequencies()


def quantise(x: Array, lo: float, hi: float, bits: int) -> Array:
    """Round to a ``bits`` DAC over [lo, hi] (codes 0…2^bits − 1), clipped to the range."""
    steps = (1 << bits) - 1
    code = np.clip(np.round((x - lo) / (hi - lo) * steps), 0, steps)
    return lo + code * (hi - lo) / steps
