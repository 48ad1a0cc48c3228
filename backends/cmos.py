"""Emulated CMOS ring-oscillator array with capacitive coupling (docs/design.md §5).

Physics around the core locked state (:mod:`phasegrad_hw.backends._chip`):

* **Bias → frequency**, alpha-power law (Sakurai & Newton, IEEE JSSC 25(2), 1990):
  f_i(V) = f_c · g(V, V_th,i)/g(V_ref, V_th), g(V, V_th) = (V − V_th)^α / V, α ≈ 1.3, with
  per-oscillator threshold mismatch V_th,i = V_th + δ_i (Pelgrom et al., IEEE JSSC 24(5),
  1989; a few mV → 1–3 % frequency spread). ω (model units) = (f − f_c)/``freq_unit_hz``.
  Biases go through a ``bias_dac.bits`` DAC (5–16 bit).
* **Coupling** K_ij = k_per_ff · C_ij (fF), capacitor mismatch per edge and independent
  K_ij / K_ji errors (asymmetric tap loading); H(φ) = sin φ + a2 sin 2φ + b0 + b1 cos φ from
  ``coupling_function`` (a2: second harmonic of the ring waveform; b0, b1: the non-odd,
  non-gradient part).
* **Phase noise** −85…−105 dBc/Hz at 1 MHz (Hajimiri & Lee, IEEE JSSC 34(6), 1999) → phase
  diffusion D = 4π²Δf²·10^(L/10) rad²/s, an OU process around the locked state.
* **Readout** by a TDC against the reference oscillator: time = φ/(2πf_c) + fixed channel
  offset + jitter, modulo one period, quantised to the LSB (1–20 ps), back to a phase that
  wraps at ±π; optional channel-to-channel sampling skew.
* **Settling** max(lock_cycles/f_c, ln(1/tol)/λ): 5–50 cycles, longer near the locking edge
  where the stability margin λ → 0 (reported as ``PhaseReading.settle_s``).
* **Temperature** OU (slow random walk) × tempco −1000…−3000 ppm/°C with per-ring spread.
* **Clamp** by injecting the reference through an amplitude DAC (β) and a phase DAC
  (target); −β is the same amplitude with the phase setting shifted by π.
* **Frequency counter** read for calibration.

The nominal ω ↔ bias curve is the pure, vectorised pair :func:`frequencies_to_biases` /
:func:`biases_to_frequencies` (no mismatch, no DAC), as a frequency map :func:`nominal_map` —
shared with drivers that talk to a board or bench emulating this chip; a transfer calibration
assigns a measured map to ``substrate.frequency_map`` instead.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import Field, model_validator

from phasegrad_hw.backends._chip import EmulatedChip, _ChipModel, ou_step, quantise
from phasegrad_hw.device.frequency_map import CurveMap, FrequencyMap
from phasegrad_hw.device.model import BiasLimits, CouplingSpec, DeviceFileModel, Limits, Range
from phasegrad_hw.physics import Array

__all__ = [
    "CMOSSubstrate",
    "biases_to_frequencies",
    "diffusion_rad2_per_s",
    "frequencies_to_biases",
    "nominal_map",
]


class AlphaPowerSpec(DeviceFileModel):
    """Ring-oscillator bias → frequency, alpha-power law (Sakurai & Newton, IEEE JSSC 25(2),
    1990): f(V) ∝ (V − V_th)^α / V, α ≈ 1.3 in short-channel CMOS. ``f_center_hz`` is the
    frequency at ``bias_ref_v`` (ω = 0); ω (model units) = (f − f_center)/``freq_unit_hz``,
    so the model time unit is 1/(2π·freq_unit_hz) s. ``vth_mismatch_v`` rms per-oscillator
    threshold mismatch (Pelgrom; a few mV gives the 1–3 % frequency spread of docs/design.md §5)."""

    f_center_hz: float = Field(default=1.0e9, gt=1e6, le=100e9)
    freq_unit_hz: float = Field(default=20e6, gt=0.0, le=10e9)
    alpha: float = Field(default=1.3, ge=1.0, le=2.0)
    vth_v: float = Field(default=0.45, gt=0.0, lt=2.0)
    vth_mismatch_v: float = Field(default=0.003, ge=0.0, le=0.1)
    bias_ref_v: float = Field(default=1.0, gt=0.0, le=5.0)


class DACSpec(DeviceFileModel):
    """A bias DAC: ``bits`` (5–16 in published oscillator arrays) over ``range_v`` (V)."""

    bits: int = Field(default=16, ge=5, le=24)
    range_v: Range = Range(min=0.8, max=1.2)


class CapacitorSpec(DeviceFileModel):
    """Capacitive coupling: K_ij = ``k_per_ff``·C_ij (model units per fF). ``mismatch`` rms
    relative capacitor mismatch (a few % for fF-scale MOM caps), ``direction_mismatch``
    independent rms errors of K_ij and K_ji (asymmetric loading of the two ring taps);
    ``lsb_ff`` the step of a programmable capacitor bank (0 = continuous)."""

    k_per_ff: float = Field(default=0.2, gt=0.0)
    mismatch: float = Field(default=0.03, ge=0.0, le=0.5)
    direction_mismatch: float = Field(default=0.02, ge=0.0, le=0.5)
    lsb_ff: float = Field(default=0.05, ge=0.0)


class PhaseNoiseSpec(DeviceFileModel):
    """Free-running phase noise L(Δf) (dBc/Hz) at offset ``offset_hz`` (white FM region;
    −85…−105 dBc/Hz at 1 MHz for GHz ring oscillators, Hajimiri & Lee, IEEE JSSC 34(6), 1999).
    Phase diffusion constant D = 4π²·Δf²·10^(L/10) rad²/s."""

    dbc_hz: float = Field(default=-95.0, ge=-250.0, le=-40.0)  # below ≈ −150: noise off
    offset_hz: float = Field(default=1e6, gt=0.0)


class TDCSpec(DeviceFileModel):
    """Time-to-digital converter against the reference oscillator: ``lsb_s`` (1–20 ps),
    rms ``jitter_s`` per conversion, per-channel fixed offsets of rms ``offset_sigma_s``,
    ``skew_s`` sampling skew between consecutive channels (channels read one after another),
    ``read_interval_s`` between successive conversions of the same channel."""

    lsb_s: float = Field(default=2e-12, gt=0.0, le=1e-9)
    jitter_s: float = Field(default=1e-12, ge=0.0, le=1e-9)
    offset_sigma_s: float = Field(default=1e-12, ge=0.0, le=1e-9)
    skew_s: float = Field(default=0.0, ge=0.0, le=1e-6)
    read_interval_s: float = Field(default=1e-6, gt=0.0, le=1.0)


class ThermalSpec(DeviceFileModel):
    """Chip temperature: Ornstein–Uhlenbeck with rms ``sigma_c`` (°C) and correlation time
    ``tau_s`` (a slow random walk on shorter times). Frequency coefficient
    ``tempco_ppm_per_c`` (−1000…−3000 ppm/°C for ring oscillators) with per-oscillator relative
    spread ``tempco_mismatch``; the common part cancels in the rotating frame."""

    tempco_ppm_per_c: float = Field(default=-2000.0, ge=-10_000.0, le=0.0)
    tempco_mismatch: float = Field(default=0.02, ge=0.0, le=1.0)
    sigma_c: float = Field(default=0.05, ge=0.0, le=50.0)
    tau_s: float = Field(default=10.0, gt=0.0)


class InjectionSpec(DeviceFileModel):
    """Clamp by injecting the reference: amplitude DAC of ``amplitude_bits`` over
    [0, limits.beta_max] (β), phase DAC of ``phase_bits`` over 2π (target); per-output
    injection gain error of rms ``gain_mismatch``."""

    amplitude_bits: int = Field(default=10, ge=2, le=24)
    phase_bits: int = Field(default=10, ge=2, le=24)
    gain_mismatch: float = Field(default=0.01, ge=0.0, le=0.5)


class CMOSChipModel(_ChipModel):
    """A CMOS ring-oscillator array with capacitive coupling (docs/design.md §5).

    Biases are supply/bias voltages (V, one per oscillator). See the section classes for the
    physics and literature ranges; the emulator is :mod:`phasegrad_hw.backends.cmos`.
    """

    backend: Literal["cmos"] = "cmos"
    nudge: Literal["linear", "injection"] = "injection"
    limits: Limits = Field(
        default_factory=lambda: Limits(
            bias=BiasLimits(min=0.8, max=1.2, safe=0.9, unit="V"), beta_max=1.0
        )
    )
    coupling_function: CouplingSpec = Field(
        default_factory=lambda: CouplingSpec(harmonics=[1.0, 0.1], offset=0.01, cos_offset=0.02)
    )
    oscillator: AlphaPowerSpec = Field(default_factory=AlphaPowerSpec)
    bias_dac: DACSpec = Field(default_factory=DACSpec)
    capacitors: CapacitorSpec = Field(default_factory=CapacitorSpec)
    phase_noise: PhaseNoiseSpec = Field(default_factory=PhaseNoiseSpec)
    tdc: TDCSpec = Field(default_factory=TDCSpec)
    thermal: ThermalSpec = Field(default_factory=ThermalSpec)
    injection: InjectionSpec = Field(default_factory=InjectionSpec)
    counter_gate_s: float = Field(default=1e-3, gt=0.0, le=10.0)

    @model_validator(mode="after")
    def _cmos_consistency(self) -> CMOSChipModel:
        o, b = self.oscillator, self.limits.bias
        if b.unit != "V":
            raise ValueError(f"limits.bias.unit: {b.unit!r} — a CMOS chip is biased in 'V'")
        rng = self.bias_dac.range_v
        for i in range(self.n_oscillators):
            c = b.channel(i)
            if not (rng.min <= c.min and c.max <= rng.max):
                where = f"limits.bias.per_channel.{i}" if i in b.per_channel else "limits.bias"
                raise ValueError(
                    f"{where}: [{c.min}, {c.max}] V — must lie within bias_dac.range_v "
                    f"[{rng.min}, {rng.max}] V"
                )
            if c.min <= o.vth_v + 4.0 * o.vth_mismatch_v:
                raise ValueError(
                    f"limits.bias.min: {c.min} V — must exceed oscillator.vth_v + 4σ mismatch "
                    f"({o.vth_v + 4.0 * o.vth_mismatch_v:.4g} V) so every ring oscillates"
                )
        if not b.min < o.bias_ref_v < b.max:
            raise ValueError(
                f"oscillator.bias_ref_v: {o.bias_ref_v} V — must lie inside limits.bias "
                f"({b.min}, {b.max}) V"
            )
        return self


def _g(v: Array, vth: Array | float, alpha: float) -> Array:
    return np.clip(v - vth, 0.0, None) ** alpha / v


def biases_to_frequencies(model: CMOSChipModel, bias_v: ArrayLike) -> Array:
    """Nominal (design) curve: bias voltages (..., N) V → ω (..., N) model units."""
    o = model.oscillator
    v = np.asarray(bias_v, dtype=np.float64)
    f = o.f_center_hz * _g(v, o.vth_v, o.alpha) / _g(np.asarray(o.bias_ref_v), o.vth_v, o.alpha)
    return (f - o.f_center_hz) / o.freq_unit_hz


def frequencies_to_biases(model: CMOSChipModel, omega: ArrayLike) -> Array:
    """Inverse of :func:`biases_to_frequencies` (Newton on the monotone alpha-power curve).

    ω (..., N) model units → bias (..., N) V. g(V) is increasing for V > V_th when α > 1, so
    the inverse is unique; ω beyond what any bias > V_th reaches returns NaN.
    """
    o = model.oscillator
    w = np.asarray(omega, dtype=np.float64)
    g_ref = float(_g(np.asarray(o.bias_ref_v), o.vth_v, o.alpha))
    ratio = 1.0 + w * o.freq_unit_hz / o.f_center_hz  # g(V)/g_ref
    target = ratio * g_ref
    # d ln g/dV at V_ref as the starting slope
    s_ref = o.alpha / (o.bias_ref_v - o.vth_v) - 1.0 / o.bias_ref_v
    v = o.bias_ref_v + np.log(np.clip(ratio, 1e-6, None)) / s_ref
    v = np.clip(v, o.vth_v + 1e-3, None)
    for _ in range(30):
        g = _g(v, o.vth_v, o.alpha)
        dg = g * (o.alpha / (v - o.vth_v) - 1.0 / v)
        step = (g - target) / dg
        v = np.clip(v - step, o.vth_v + 1e-6, None)
        if np.all(np.abs(step) < 1e-13):
            break
    return np.where(ratio > 0, v, np.nan)


def diffusion_rad2_per_s(model: CMOSChipModel) -> float:
    """Free-running phase diffusion D = 4π²Δf²·10^(L/10) (rad²/s) from L(Δf) dBc/Hz."""
    pn = model.phase_noise
    return float(4.0 * np.pi**2 * pn.offset_hz**2 * 10.0 ** (pn.dbc_hz / 10.0))


def nominal_map(model: CMOSChipModel) -> CurveMap:
    """The design ω ↔ bias curve of ``model`` (no mismatch, no DAC) as a frequency map."""
    return CurveMap(partial(frequencies_to_biases, model), partial(biases_to_frequencies, model))


class CMOSSubstrate(EmulatedChip):
    """Emulated CMOS capacitive-coupling chip (see the module docstring).

    ``seed`` seeds the noise stream (default ``model.seed``); mismatch comes from
    ``model.seed``. Exposes :meth:`exact_gradient` (the true implicit gradient),
    :meth:`reseed`, ``frequency_map`` and a frequency counter.
    """

    model: CMOSChipModel

    def __init__(self, model: CMOSChipModel, seed: int | None = None) -> None:
        o = model.oscillator
        self._time_unit_s = 1.0 / (2.0 * np.pi * o.freq_unit_hz)
        self._ref_freq_hz = o.f_center_hz
        super().__init__(model, seed)

    # -- chip properties (drawn once from model.seed) -----------------------------
    def _draw_mismatch(self, rng: np.random.Generator) -> None:
        m = self.model
        n, e = m.n, len(m.edges)
        self.vth_v = m.oscillator.vth_v + m.oscillator.vth_mismatch_v * rng.standard_normal(n)
        self.cap_err = m.capacitors.mismatch * rng.standard_normal(e)
        self.dir_err = m.capacitors.direction_mismatch * rng.standard_normal((e, 2))
        self.tdc_offset_s: Array = m.tdc.offset_sigma_s * rng.standard_normal((n,))
        self.tempco = (
            m.thermal.tempco_ppm_per_c
            * 1e-6
            * (1.0 + m.thermal.tempco_mismatch * rng.standard_normal(n))
        )
        self.inj_gain = 1.0 + m.injection.gain_mismatch * rng.standard_normal(len(m.roles.outputs))
        self._k_ratio = np.array(
            [1.0 if s.k_ji is None or s.k == 0 else s.k_ji / s.k for s in m.edges]
        )

    def _reset_slow(self) -> None:
        self.temperature_c = 0.0

    def _advance_slow(self, dt_s: float) -> None:
        th = self.model.thermal
        self.temperature_c = float(
            ou_step(th.tau_s, th.sigma_c, dt_s, self.rng, self.temperature_c)
        )

    def _freq_unit_hz(self) -> float:
        return self.model.oscillator.freq_unit_hz

    def _read_interval_s(self) -> float:
        return self.model.tdc.read_interval_s

    # -- maps --------------------------------------------------------------------
    def nominal_map(self) -> FrequencyMap:
        return nominal_map(self.model)

    def _quantise_bias(self, bias: Array) -> Array:
        d = self.model.bias_dac
        return quantise(bias, d.range_v.min, d.range_v.max, d.bits)

    def _true_frequencies(self) -> Array:
        o = self.model.oscillator
        g_ref = _g(np.asarray(o.bias_ref_v), o.vth_v, o.alpha)
        f = o.f_center_hz * _g(self.bias, self.vth_v, o.alpha) / g_ref
        f = f * (1.0 + self.tempco * self.temperature_c)
        return (f - o.f_center_hz) / o.freq_unit_hz + self._drift

    def _true_coupling(self, k: Array) -> Array:
        c = self.model.capacitors
        cap_ff = np.asarray(k, dtype=np.float64) / c.k_per_ff
        if c.lsb_ff > 0:
            cap_ff = np.round(cap_ff / c.lsb_ff) * c.lsb_ff
        base = c.k_per_ff * cap_ff * (1.0 + self.cap_err)
        e = self.model.edge_index
        K = np.zeros((self.n, self.n))
        K[e[:, 0], e[:, 1]] = base * (1.0 + self.dir_err[:, 0])
        K[e[:, 1], e[:, 0]] = base * self._k_ratio * (1.0 + self.dir_err[:, 1])
        # a capacitor cannot go negative; an invertible edge (inverted tap of the differential
        # ring, a π shift) carries the sign (docs/design.md §8)
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
        b_q = float(quantise(np.asarray(beta), 0.0, m.limits.beta_max, inj.amplitude_bits))
        phase = target + (np.pi if (direction < 0 and m.nudge == "injection") else 0.0)
        step = 2.0 * np.pi / (1 << inj.phase_bits)
        phase_q = np.round(phase / step) * step
        b = np.zeros(self.n)
        t = np.zeros(self.n)
        b[m.outputs] = b_q * self.inj_gain
        t[m.outputs] = phase_q
        d = direction if m.nudge == "linear" else 1
        return np.clip(b, 0.0, None), t, d

    def _diffusion(self) -> Array:
        d = diffusion_rad2_per_s(self.model) * self._time_unit_s
        out = np.full(self.n, d)
        return out

    def _readout(self, phases: Array) -> Array:
        """TDC: phase → time after the reference edge, offset + jitter, modulo one period,
        quantised to the LSB, back to a phase wrapped to [−π, π)."""
        t = self.model.tdc
        f = self.model.oscillator.f_center_hz
        period = 1.0 / f
        time_s = phases / (2.0 * np.pi * f) + self.tdc_offset_s[None, :]
        if t.jitter_s > 0:
            time_s = time_s + t.jitter_s * self.rng.standard_normal(phases.shape)
        time_s = np.mod(time_s, period)
        code = np.round(time_s / t.lsb_s)
        return np.asarray(np.mod(2.0 * np.pi * f * code * t.lsb_s + np.pi, 2.0 * np.pi) - np.pi)
