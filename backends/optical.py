"""Emulated optical micro-resonator / coupled-laser chip (docs/design.md §5).

Physics around the core locked state (:mod:`phasegrad_hw.backends._chip`):

* **Heaters**: P_i = V_i²/R_i (W), R_i with fabrication mismatch; temperature rise
  ΔT = r_th · X · P through a thermal network with crosstalk matrix X (1 on the diagonal,
  5–20 % to neighbours; e.g. Jacobsen et al., Opt. Express 2017; Milanizadeh et al., JLT 37(4),
  2019) and a first-order time constant τ (1–50 µs, Harris et al., Opt. Express 22(9), 2014).
  Heater voltages go through a ``heaters.dac_bits`` DAC over the bias limits.
* **Tuning**: Δf = tuning_hz_per_k · ΔT (≈ −10 GHz/K thermo-optic red shift of silicon rings;
  0.1–2 nm/mW overall efficiency) plus a fixed per-resonator offset left after trimming;
  ω (model units) = Δf/``freq_unit_hz``.
* **Coupling**: evanescent, reciprocal in magnitude (per-edge fabrication mismatch,
  optional non-reciprocity), with a phase lag ψ — Kuramoto–Sakaguchi H(φ) = sin(φ − ψ)
  (Sakaguchi & Kuramoto, Prog. Theor. Phys. 76(3), 1986; coupled semiconductor lasers:
  Kozyreff, Vladimirov & Mandel, PRL 85, 2000), from ``coupling_function.phase_lag_rad``.
  ψ ≠ 0 makes the Jacobian non-symmetric and biases the two-phase estimate.
* **Laser phase noise**: Lorentzian linewidth Δν (1 kHz–2 MHz) → phase diffusion
  D = 2πΔν rad²/s, an OU process around the locked state.
* **Homodyne I/Q readout** against the reference laser: I = cos(φ + δ) + n_I,
  Q = sin(φ + δ) + n_Q, φ̂ = atan2(Q, I) (fixed per-channel offset δ; n small, shot noise).
* **Ambient drift**: OU (random walk on short times) ambient temperature; each resonator
  sees it with a fixed relative spread (the differential part survives the rotating frame).
* **Clamp**: attenuated master-laser light (attenuator steps set β ∝ injected field) through
  a phase shifter (target); −β is the same power with the phase shifted by π.

The nominal ω ↔ heater-voltage curve (design crosstalk, no mismatch, no DAC) is the pure,
vectorised pair :func:`frequencies_to_biases` / :func:`biases_to_frequencies`
(:func:`nominal_map`); a transfer calibration assigns a measured map to
``substrate.frequency_map`` instead.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import Field, model_validator

from phasegrad_hw.backends._chip import EmulatedChip, _ChipModel, ou_step, quantise
from phasegrad_hw.device.frequency_map import CurveMap, FrequencyMap
from phasegrad_hw.device.model import BiasLimits, DeviceFileModel, Limits
from phasegrad_hw.physics import Array

__all__ = [
    "OpticalSubstrate",
    "biases_to_frequencies",
    "crosstalk_matrix",
    "frequencies_to_biases",
    "nominal_map",
]


class HeaterSpec(DeviceFileModel):
    """Micro-heaters: P = V²/R (``resistance_ohm``, rms relative ``resistance_mismatch``);
    temperature rise ΔT = r_th·X·P with thermal resistance ``r_th_k_per_mw`` and the crosstalk
    matrix X (1 on the diagonal, ``crosstalk`` to index neighbours i±1, 5–20 % typical, each
    entry off by rms ``crosstalk_mismatch`` relative); first-order thermal response with
    time constant ``tau_s`` (1–50 µs); ``power_ref_mw`` the heater power at ω = 0; a
    ``dac_bits`` voltage DAC over the bias limits."""

    resistance_ohm: float = Field(default=1000.0, gt=0.0)
    resistance_mismatch: float = Field(default=0.02, ge=0.0, le=0.5)
    r_th_k_per_mw: float = Field(default=2.5, gt=0.0)
    power_ref_mw: float = Field(default=0.5, gt=0.0)
    crosstalk: float = Field(default=0.1, ge=0.0, lt=0.5)
    crosstalk_mismatch: float = Field(default=0.1, ge=0.0, le=1.0)
    tau_s: float = Field(default=10e-6, gt=0.0, le=1.0)
    dac_bits: int = Field(default=16, ge=5, le=24)


class ResonatorSpec(DeviceFileModel):
    """Thermo-optic tuning ``tuning_hz_per_k`` (≈ −10 GHz/K for silicon rings, red shift);
    ω (model units) = Δf/``freq_unit_hz``; ``offset_sigma_hz`` rms resonance offset left after
    trimming (a fixed property of the chip)."""

    tuning_hz_per_k: float = Field(default=-10e9, ge=-1e12, le=1e12)
    freq_unit_hz: float = Field(default=1e9, gt=0.0)
    offset_sigma_hz: float = Field(default=0.2e9, ge=0.0)

    @model_validator(mode="after")
    def _nonzero(self) -> ResonatorSpec:
        if self.tuning_hz_per_k == 0.0:
            raise ValueError("tuning_hz_per_k: 0.0 — must be non-zero (heaters must tune)")
        return self


class CouplerSpec(DeviceFileModel):
    """Evanescent couplers: reciprocal in magnitude, each edge off by rms relative
    ``magnitude_mismatch``; optional non-reciprocity (rms relative K_ij/K_ji error)
    ``nonreciprocity``; ``lsb`` step of a tunable coupler (model units, 0 = continuous).
    The phase lag ψ is ``coupling_function.phase_lag_rad`` (Kuramoto–Sakaguchi)."""

    magnitude_mismatch: float = Field(default=0.02, ge=0.0, le=0.5)
    nonreciprocity: float = Field(default=0.0, ge=0.0, le=0.5)
    lsb: float = Field(default=0.001, ge=0.0)


class LaserSpec(DeviceFileModel):
    """Laser phase noise from the Lorentzian linewidth Δν (1 kHz–2 MHz): D = 2π·Δν rad²/s."""

    linewidth_hz: float = Field(default=100e3, ge=0.0, le=100e6)


class HomodyneSpec(DeviceFileModel):
    """Homodyne I/Q against the reference laser: I = cos φ + n, Q = sin φ + n with rms
    ``iq_noise`` (relative to the field amplitude; shot noise is small), per-channel fixed
    phase offsets of rms ``offset_sigma_rad``, ``read_interval_s`` between conversions."""

    iq_noise: float = Field(default=0.01, ge=0.0, le=1.0)
    offset_sigma_rad: float = Field(default=0.01, ge=0.0, le=3.2)
    read_interval_s: float = Field(default=1e-6, gt=0.0, le=1.0)


class AmbientSpec(DeviceFileModel):
    """Ambient temperature (K): Ornstein–Uhlenbeck, rms ``sigma_k``, time ``tau_s``; each
    resonator sees it with a fixed relative spread ``gradient_fraction`` (the differential
    part that does not cancel in the rotating frame)."""

    sigma_k: float = Field(default=0.01, ge=0.0, le=10.0)
    tau_s: float = Field(default=10.0, gt=0.0)
    gradient_fraction: float = Field(default=0.05, ge=0.0, le=1.0)


class OpticalInjectionSpec(DeviceFileModel):
    """Clamp by injecting attenuated master-laser light: attenuator in ``attenuator_step_db``
    steps up to ``max_attenuation_db`` (β = β_max·10^(−A/20), β ∝ injected field), phase
    shifter of ``phase_bits``; per-output injection gain error ``gain_mismatch`` (rms)."""

    attenuator_step_db: float = Field(default=0.05, ge=0.0, le=10.0)
    max_attenuation_db: float = Field(default=80.0, gt=0.0)
    phase_bits: int = Field(default=12, ge=2, le=24)
    gain_mismatch: float = Field(default=0.01, ge=0.0, le=0.5)


class OpticalChipModel(_ChipModel):
    """Coupled optical micro-resonators / injection-locked lasers (docs/design.md §5).

    Biases are heater voltages (V). The emulator is :mod:`phasegrad_hw.backends.optical`.
    """

    backend: Literal["optical"] = "optical"
    nudge: Literal["linear", "injection"] = "injection"
    limits: Limits = Field(
        default_factory=lambda: Limits(
            bias=BiasLimits(min=0.0, max=1.2, safe=0.0, unit="V"), beta_max=1.0
        )
    )
    heaters: HeaterSpec = Field(default_factory=HeaterSpec)
    resonators: ResonatorSpec = Field(default_factory=ResonatorSpec)
    couplers: CouplerSpec = Field(default_factory=CouplerSpec)
    laser: LaserSpec = Field(default_factory=LaserSpec)
    homodyne: HomodyneSpec = Field(default_factory=HomodyneSpec)
    ambient: AmbientSpec = Field(default_factory=AmbientSpec)
    injection: OpticalInjectionSpec = Field(default_factory=OpticalInjectionSpec)
    counter_gate_s: float = Field(default=1e-3, gt=0.0, le=10.0)

    @model_validator(mode="after")
    def _optical_consistency(self) -> OpticalChipModel:
        b = self.limits.bias
        if b.unit != "V":
            raise ValueError(f"limits.bias.unit: {b.unit!r} — heaters are driven in 'V'")
        if b.min < 0.0:
            raise ValueError(f"limits.bias.min: {b.min} V — heater voltages must be >= 0")
        h = self.heaters
        v_ref = (h.power_ref_mw * 1e-3 * h.resistance_ohm) ** 0.5
        if not b.min < v_ref < b.max:
            raise ValueError(
                f"heaters.power_ref_mw: {h.power_ref_mw} mW (V = {v_ref:.4g} V) — must be "
                f"reachable inside limits.bias ({b.min}, {b.max}) V"
            )
        return self


def crosstalk_matrix(n: int, fraction: float) -> Array:
    """Nominal thermal crosstalk X (N, N): 1 on the diagonal, ``fraction`` to i ± 1."""
    X = np.eye(n)
    i = np.arange(n - 1)
    X[i, i + 1] = fraction
    X[i + 1, i] = fraction
    return X


def _omega_per_mw(model: OpticalChipModel) -> float:
    h, r = model.heaters, model.resonators
    return h.r_th_k_per_mw * r.tuning_hz_per_k / r.freq_unit_hz


def biases_to_frequencies(model: OpticalChipModel, bias_v: ArrayLike) -> Array:
    """Nominal curve: heater voltages (..., N) V → ω (..., N) model units.

    ω = (tuning · r_th / f_unit) · X (P − P_ref), P = V²/R in mW.
    """
    h = model.heaters
    v = np.asarray(bias_v, dtype=np.float64)
    p_mw = v * v / h.resistance_ohm * 1e3
    X = crosstalk_matrix(v.shape[-1], h.crosstalk)
    return _omega_per_mw(model) * ((p_mw - h.power_ref_mw) @ X.T)


def frequencies_to_biases(model: OpticalChipModel, omega: ArrayLike) -> Array:
    """Inverse of :func:`biases_to_frequencies`: ω (..., N) → heater voltages (..., N) V.

    Solves the crosstalk system for the heater powers; a power below zero (ω out of reach of
    a heater) gives a negative voltage, which the device limits then refuse.
    """
    h = model.heaters
    w = np.asarray(omega, dtype=np.float64)
    X = crosstalk_matrix(w.shape[-1], h.crosstalk)
    dp = np.linalg.solve(X, (w / _omega_per_mw(model))[..., None])[..., 0]
    p_w = (h.power_ref_mw + dp) * 1e-3
    return np.sign(p_w) * np.sqrt(np.abs(p_w) * h.resistance_ohm)


def nominal_map(model: OpticalChipModel) -> CurveMap:
    """The design ω ↔ bias curve of ``model`` (no mismatch, no DAC) as a frequency map."""
    return CurveMap(partial(frequencies_to_biases, model), partial(biases_to_frequencies, model))


class OpticalSubstrate(EmulatedChip):
    """Emulated optical micro-resonator chip (see the module docstring)."""

    model: OpticalChipModel

    def __init__(self, model: OpticalChipModel, seed: int | None = None) -> None:
        r = model.resonators
        self._time_unit_s = 1.0 / (2.0 * np.pi * r.freq_unit_hz)
        self._ref_freq_hz = r.freq_unit_hz
        super().__init__(model, seed)

    def _draw_mismatch(self, rng: np.random.Generator) -> None:
        m = self.model
        n, e = m.n, len(m.edges)
        h = m.heaters
        self.resistance = h.resistance_ohm * (1.0 + h.resistance_mismatch * rng.standard_normal(n))
        X = crosstalk_matrix(n, h.crosstalk)
        off = X * (1.0 - np.eye(n))
        err = h.crosstalk_mismatch * rng.standard_normal((n, n))
        self.crosstalk = np.eye(n) + off * (1.0 + err)
        self.offset_units = (
            m.resonators.offset_sigma_hz / m.resonators.freq_unit_hz * rng.standard_normal(n)
        )
        self.mag_err = m.couplers.magnitude_mismatch * rng.standard_normal(e)
        self.nonrecip = m.couplers.nonreciprocity * rng.standard_normal((e, 2))
        self.iq_offset: Array = m.homodyne.offset_sigma_rad * rng.standard_normal((n,))
        self.amb_weight = 1.0 + m.ambient.gradient_fraction * rng.standard_normal(n)
        self.inj_gain = 1.0 + m.injection.gain_mismatch * rng.standard_normal(len(m.roles.outputs))
        self._k_ratio = np.array(
            [1.0 if s.k_ji is None or s.k == 0 else s.k_ji / s.k for s in m.edges]
        )
        self._p_ref_mw = np.full(n, h.power_ref_mw)

    def _reset_slow(self) -> None:
        self.ambient_k = 0.0
        self._dT_start: Array | None = None
        self._t_change = 0.0

    def _advance_slow(self, dt_s: float) -> None:
        a = self.model.ambient
        self.ambient_k = float(ou_step(a.tau_s, a.sigma_k, dt_s, self.rng, self.ambient_k))

    def _freq_unit_hz(self) -> float:
        return self.model.resonators.freq_unit_hz

    def _read_interval_s(self) -> float:
        return self.model.homodyne.read_interval_s

    # -- maps ----------------------------------------------------------------------
    def nominal_map(self) -> FrequencyMap:
        return nominal_map(self.model)

    def _quantise_bias(self, bias: Array) -> Array:
        b = self.model.limits.bias
        return quantise(bias, b.min, b.max, self.model.heaters.dac_bits)

    def _steady_dT(self, bias: Array) -> Array:
        """Steady-state heater temperature rise (K) relative to the reference power."""
        h = self.model.heaters
        p_mw = bias * bias / self.resistance * 1e3
        return h.r_th_k_per_mw * (self.crosstalk @ (p_mw - self._p_ref_mw))

    def _on_bias_change(self, new_bias: Array) -> None:
        # first-order thermal response: remember where the transient starts
        self._dT_start = self._current_dT()
        self._t_change = self.time_s

    def _current_dT(self) -> Array:
        ss = self._steady_dT(self.bias)
        if self._dT_start is None:
            return ss
        decay = np.exp(-(self.time_s - self._t_change) / self.model.heaters.tau_s)
        return ss + (self._dT_start - ss) * decay

    def _settle_extra_s(self) -> float:
        """Thermal settling: ln(1/tol) thermal time constants after a heater step."""
        s = self.model.settling
        return float(np.log(1.0 / s.tolerance) * self.model.heaters.tau_s)

    def _true_frequencies(self) -> Array:
        r = self.model.resonators
        per_k = r.tuning_hz_per_k / r.freq_unit_hz
        dT = self._current_dT() + self.ambient_k * self.amb_weight
        return per_k * dT + self.offset_units + self._drift

    def _true_coupling(self, k: Array) -> Array:
        c = self.model.couplers
        kk = np.asarray(k, dtype=np.float64)
        if c.lsb > 0:
            kk = np.round(kk / c.lsb) * c.lsb
        base = kk * (1.0 + self.mag_err)
        e = self.model.edge_index
        K = np.zeros((self.n, self.n))
        K[e[:, 0], e[:, 1]] = base * (1.0 + self.nonrecip[:, 0])
        K[e[:, 1], e[:, 0]] = base * self._k_ratio * (1.0 + self.nonrecip[:, 1])
        # a coupler's field cannot go negative; an invertible edge (a π phase shifter after
        # the coupler) carries the sign (docs/design.md §8)
        floor = np.zeros((self.n, self.n))
        neg = np.where(self.model.invertible_mask(), -np.inf, 0.0)
        floor[e[:, 0], e[:, 1]] = neg
        floor[e[:, 1], e[:, 0]] = neg
        out: Array = np.maximum(K, floor)
        return out

    def _clamp_physics(
        self, target: Array, beta: float, direction: int
    ) -> tuple[Array, Array, int]:
        m = self.model
        inj = m.injection
        bmax = m.limits.beta_max
        if beta <= 0.0:
            b_q = 0.0
        else:
            att = -20.0 * np.log10(beta / bmax)
            if inj.attenuator_step_db > 0:
                att = np.round(att / inj.attenuator_step_db) * inj.attenuator_step_db
            b_q = 0.0 if att > inj.max_attenuation_db else float(bmax * 10.0 ** (-att / 20.0))
        phase = target + (np.pi if (direction < 0 and m.nudge == "injection") else 0.0)
        step = 2.0 * np.pi / (1 << inj.phase_bits)
        b = np.zeros(self.n)
        t = np.zeros(self.n)
        b[m.outputs] = b_q * self.inj_gain
        t[m.outputs] = np.round(phase / step) * step
        d = direction if m.nudge == "linear" else 1
        return np.clip(b, 0.0, None), t, d

    def _diffusion(self) -> Array:
        d = 2.0 * np.pi * self.model.laser.linewidth_hz * self._time_unit_s
        out = np.full(self.n, d)
        return out

    def _readout(self, phases: Array) -> Array:
        """Homodyne: φ̂ = atan2(Q, I) with I/Q noise and fixed channel offsets."""
        hd = self.model.homodyne
        ph = phases + self.iq_offset[None, :]
        i = np.cos(ph)
        q = np.sin(ph)
        if hd.iq_noise > 0:
            i = i + hd.iq_noise * self.rng.standard_normal(ph.shape)
            q = q + hd.iq_noise * self.rng.standard_normal(ph.shape)
        return np.arctan2(q, i)
