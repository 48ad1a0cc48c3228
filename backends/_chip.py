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
  covariance Σ from A Σ + Σ Aᵀ + Q = 0). The reference oscillator is locked to the chip's
  reference clock (the clock of the TDC / homodyne and of the injection source), so its
  phase is pinned at 0 and the array locks in the frame rotating at mean(ω) — the gauge of
  the core physics;
* loss of lock when no stable locked state exists (phases ramp and wrap between reads,
  ``locked = False``; never an exception from the physics);
* switchable failure modes (:class:`phasegrad_hw.models.FailureSpec`).

Two random streams: chip mismatch is drawn once from ``model.seed`` (a fixed property of
the chip); the noise stream is seeded by the ``seed`` argument and reset by :meth:`reseed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.gradients import implicit_gradient, loss_grad_theta
from phasegrad_hw.models import _ChipModel
from phasegrad_hw.physics import Array, centred, jacobian, rhs, solve_equilibrium, wrap
from phasegrad_hw.substrate import Capability, LimitError, OscillatorSubstrate, PhaseReading

log = logging.getLogger(__name__)

Transfer = Callable[[Array], Array]
_TOL = 1e-9  # residual of a read's locked state (rad per time unit); far below readout noise
_MAX_ITER = 30  # damped Newton iterations before a state is declared not locked
_TOL_EXACT = 1e-12  # for the ground-truth state of exact_gradient


def ou_step(tau_s: float, sigma: float, dt_s: float, rng: np.random.Generator,
            x: Array | float) -> Any:
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
        self.A = A
        lam, V = np.linalg.eig(A)
        self.lam = lam
        self.V = V
        self.Vinv = np.linalg.inv(V)
        Qt = (self.Vinv * q[None, :]) @ self.Vinv.conj().T
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


def _psd_chol(C: Array) -> Array:
    try:
        return np.asarray(np.linalg.cholesky(C + 1e-300 * np.eye(len(C))), dtype=np.float64)
    except np.linalg.LinAlgError:
        w, U = np.linalg.eigh(C)
        return U * np.sqrt(np.clip(w, 0.0, None))[None, :]


class EmulatedChip(OscillatorSubstrate):
    """Base class of the emulated chips. Subclasses provide the physical maps.

    Hooks for subclasses: ``_true_frequencies()`` (model units, the chip's real natural
    frequencies now), ``_nominal_forward/_nominal_inverse`` (ω ↔ bias, the design curve),
    ``_quantise_bias``, ``_true_coupling``, ``_clamp_physics``, ``_readout``,
    ``_diffusion()`` (rad² per model time unit, per oscillator), ``_time_unit_s``,
    ``_settle_extra_s()``, ``_advance_slow(dt_s)`` and ``_reset_slow()``.

    Calibration hook: :meth:`install_transfer` replaces the nominal ω ↔ bias curve used by
    ``set_frequencies`` (and by :meth:`frequencies`), e.g. with a measured transfer curve.
    """

    capabilities = frozenset(
        {Capability.COUPLINGS, Capability.FREQUENCY_COUNTER, Capability.EXACT_GRADIENT}
    )
    model: _ChipModel
    _time_unit_s: float = 1.0
    _ref_freq_hz: float = 1.0  # period of a phase cycle for settle-in-cycles

    def __init__(self, model: _ChipModel, seed: int | None = None) -> None:
        super().__init__(model)
        n = model.n
        self.n = n
        self.ref = model.roles.reference
        self.keep = np.arange(n) != self.ref
        self.H = model.coupling()
        self.chip_rng = np.random.default_rng([model.seed, 0x5EED, 4])
        self._draw_mismatch(self.chip_rng)
        fail = model.failures
        self._stuck = fail.stuck_channel
        self._forward: Transfer | None = None
        self._inverse: Transfer | None = None
        self._clamp: tuple[Array, Array, int] | None = None
        self._clamp_sign = 1
        self._free: tuple[Array, Array] | None = None
        self._plus_theta: Array | None = None
        self.K = self._true_coupling(model.coupling_values())
        self.bias = self._quantise_bias(model.safe_biases())
        self.seed = model.seed if seed is None else int(seed)
        self.reseed(self.seed)

    # -- randomness ------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Reset the noise stream and the chip's fluctuating state (phase deviation,
        temperature, drift, virtual clock, warm start) under ``seed``. Mismatch is a fixed
        property of the chip (drawn from ``model.seed``) and does not change."""
        self.rng = np.random.default_rng([int(seed), 0xD1FF])
        self.time_s = 0.0
        self.theta = np.zeros(self.n)
        self._x = np.zeros(self.n - 1)
        self._x_time = 0.0
        self._drift = np.zeros(self.n)
        self._dirty = True
        self._free = None
        self._plus_theta = None
        self._stuck_code = 0.0
        self._unlocked_since: float | None = None
        self._reset_slow()

    # -- subclass hooks ----------------------------------------------------------------
    def _draw_mismatch(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _true_frequencies(self) -> Array:
        raise NotImplementedError

    def _nominal_forward(self, omega: Array) -> Array:
        raise NotImplementedError

    def _nominal_inverse(self, bias: Array) -> Array:
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

    def _counter_noise_hz(self) -> float:
        return 1.0 / self.model_gate_s()

    def model_gate_s(self) -> float:
        return float(getattr(self.model, "counter_gate_s", 1e-3))

    def _freq_unit_hz(self) -> float:
        raise NotImplementedError

    # -- calibration hook ----------------------------------------------------------
    def install_transfer(self, forward: Transfer, inverse: Transfer | None = None) -> None:
        """Replace the nominal ω → bias curve (``forward``: (N,) model units → (N,) bias in
        the device unit; ``inverse`` bias → ω, optional) — what a transfer-curve calibration
        measured. ``set_frequencies`` uses it from now on; :meth:`reset_transfer` undoes it.
        Biases it produces are limit-checked like any other."""
        self._forward = forward
        self._inverse = inverse

    def reset_transfer(self) -> None:
        """Go back to the nominal (design) curve."""
        self._forward = None
        self._inverse = None

    def frequencies_to_biases(self, omega: Array) -> Array:
        """Biases the present transfer curve (calibrated or nominal) assigns to ω."""
        w = np.asarray(omega, dtype=np.float64)
        return self._forward(w) if self._forward is not None else self._nominal_forward(w)

    def biases_to_frequencies(self, bias: Array) -> Array:
        """ω the present transfer curve assigns to biases (nominal if no inverse installed)."""
        b = np.asarray(bias, dtype=np.float64)
        return self._inverse(b) if self._inverse is not None else self._nominal_inverse(b)

    # -- substrate hooks -------------------------------------------------------------
    async def _apply_frequencies(self, omega: Array) -> None:
        bias = np.asarray(self.frequencies_to_biases(omega), dtype=np.float64)
        try:
            checked = self.model.check_biases(bias)
        except LimitError as exc:
            raise LimitError(f"{exc} (the transfer curve maps omega {np.round(omega, 4).tolist()} "
                             "to biases the device refuses)") from None
        await self._apply_biases(checked)

    async def _apply_biases(self, values: Array) -> None:
        q = self._quantise_bias(values)
        if not np.array_equal(q, self.bias):
            self._on_bias_change(q)
            self.bias = q
            self._dirty = True
            self._free = None

    def _on_bias_change(self, new_bias: Array) -> None:
        """Called before the bias changes (thermal transients)."""

    async def _apply_couplings(self, values: Array) -> None:
        self.K = self._true_coupling(values)
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

    def solve(self, omega: Array | None = None, clamp: bool = True,
              tol: float = _TOL) -> tuple[Any, bool]:
        """Noise-free locked state (Equilibrium, ok) under the present true settings, by the
        core damped Newton :func:`~phasegrad_hw.physics.solve_equilibrium` (warm-started)."""
        w = centred(self._true_frequencies() if omega is None else omega)
        kw = self._nudge_kwargs() if clamp else {}
        theta0 = self._predict() if clamp else self.theta
        eq = solve_equilibrium(w, self.K, self.H, theta0=theta0, ref=self.ref,
                               nudge=self.model.nudge, tol=tol, max_iter=_MAX_ITER, **kw)
        if not eq.ok:  # a cold start finds the stable state a warm start jumped past
            eq2 = solve_equilibrium(w, self.K, self.H, ref=self.ref, nudge=self.model.nudge,
                                    tol=tol, max_iter=_MAX_ITER, **kw)
            if eq2.ok:
                eq = eq2
        return eq, bool(eq.ok)

    def _locked_state(self) -> tuple[Array, _Linearised | None]:
        """Locked state for a read and its linearisation (None: no stable locked state).

        Fast path: plain Newton on the core :func:`~phasegrad_hw.physics.rhs` /
        :func:`~phasegrad_hw.physics.jacobian` from the predicted warm start, accepted only if
        it converges with small steps and the state is stable (eigenvalues of the reduced
        Jacobian, which the noise model needs anyway); otherwise the core damped
        :meth:`solve` decides.
        """
        w = centred(self._true_frequencies())
        kw = self._nudge_kwargs()
        rkw: dict[str, Any] = {}
        if kw:
            rkw = {"beta": kw["beta"] * kw["direction"], "target": kw["target"],
                   "nudge": self.model.nudge}
        th = self._predict().copy()
        th -= th[self.ref]
        keep = self.keep
        for _ in range(8):
            F = rhs(th, w, self.K, self.H, **rkw)[keep]
            if float(np.abs(F).max()) <= _TOL:
                lin = self._linearise(th)
                if lin.margin > 1e-9:
                    th[keep] = wrap(th[keep])
                    return th, lin
                break
            J = jacobian(th, self.K, self.H, **rkw)[keep][:, keep]
            try:
                step = np.linalg.solve(J, -F)
            except np.linalg.LinAlgError:
                break
            if not np.all(np.isfinite(step)) or float(np.abs(step).max()) > 0.5:
                break
            th[keep] += step
        eq, ok = self.solve()
        if not ok:
            return np.asarray(eq.theta), None
        return np.asarray(eq.theta), self._linearise(np.asarray(eq.theta))

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
            out[self.keep] -= np.linalg.solve(A, force[self.keep])
        except np.linalg.LinAlgError:
            return self.theta
        return out

    def _linearise(self, theta: Array) -> _Linearised:
        kw = self._nudge_kwargs()
        if kw:
            b, t, d = kw["beta"], kw["target"], kw["direction"]
            J = jacobian(theta, self.K, self.H, beta=b * d, target=t, nudge=self.model.nudge)
        else:
            J = jacobian(theta, self.K, self.H)
        A = J[self.keep][:, self.keep]
        return _Linearised(A, self._diffusion()[self.keep])

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
        # settle first if anything changed: bias transients (e.g. thermal), then the lock,
        # whose settling time needs the new state's stability margin
        settle = 0.0
        if self._dirty:
            settle = min(self._settle_extra_s(), m.settling.max_settle_s)
            self._advance(settle)
        theta, lin = self._locked_state()
        if self._dirty:
            lock = self._lock_settle_s(lin.margin if lin is not None else 0.0)
            self._advance(lock)  # (drift over ≤ 1 µs of settling is negligible; not re-solved)
            settle += lock
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
            phases = self._unlocked_samples(averages, dt_read)
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

    def _locked_samples(self, theta: Array, lin: _Linearised, m: int, dt_s: float) -> Array:
        """(m, N) true phases at m conversions ``dt_s`` apart: θ* + OU deviation."""
        dt = dt_s / self._time_unit_s
        gap = max(0.0, (self.time_s - self._x_time)) / self._time_unit_s
        x = self._x
        n1 = self.n - 1
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
        ph = np.zeros((m, self.n))
        ph[:, self.keep] = theta[self.keep][None, :] + out
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
        eq, ok = self.solve(clamp=False, tol=_TOL_EXACT)
        return np.asarray(eq.theta), ok

    def exact_gradient(self, target: Array) -> Array:
        """∂L/∂ω^c (reference entry 0) by implicit differentiation at the chip's true free
        state, with its true (possibly asymmetric, non-odd) Jacobian. ``target`` (n_outputs,)
        rad; the loss pairs with ``model.nudge`` (injection: Σ(1 − cos(θ_o − t)))."""
        theta, _ = self.true_state()
        e = loss_grad_theta(theta, self.model.outputs, np.asarray(target, dtype=np.float64),
                            self.model.nudge)
        return implicit_gradient(theta, self.K, e, self.H, ref=self.ref)

    def true_frequencies(self) -> Array:
        """The chip's real natural frequencies now (model units, not centred)."""
        return self._true_frequencies()


def quantise(x: Array, lo: float, hi: float, bits: int) -> Array:
    """Round to a ``bits`` DAC over [lo, hi] (codes 0…2^bits − 1), clipped to the range."""
    steps = (1 << bits) - 1
    code = np.clip(np.round((x - lo) / (hi - lo) * steps), 0, steps)
    return lo + code * (hi - lo) / steps


def outputs_mask(n: int, outputs: NDArray[np.int64]) -> Array:
    m = np.zeros(n)
    m[outputs] = 1.0
    return m
