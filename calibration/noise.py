"""Readout noise and the choice of β and averages for a trustworthy two-phase gradient.

Model (docs/design.md §2, "readout noise is the real enemy"). The centred estimate
ĝ = −wrap(θ^{+β} − θ^{−β})/(2β), each state averaged over A reads, has

* a bias b(β) = c β² + O(β⁴) (the O(β²) error of a centred difference), and
* noise of variance v(A)/(2β²) summed over channels, v(A) = σ_w²/A + σ_s² + σ_d² A: a white
  part σ_w² that averages down, a slow part σ_s² that does not (a wandering common phase
  under injection) and a drift part σ_d² A — a random-walk drift (ambient temperature,
  docs/design.md §5) moves the phases between the +β and the −β read by an amount that grows
  with the time the reads take, so beyond A* = σ_w/σ_d more averaging makes the estimate
  *worse* (the regime an Allan-deviation plot shows). v(A) is measured as the spread of
  repeated centred differences θ^{+β} − θ^{−β} (clamped, β = β₁/2) at four A from 16 to the
  device's maximum and fitted by non-negative least squares (relative residuals).

For small errors the expected cosine to the true gradient g is
1 − cos ≈ (‖b_⊥‖² + v(A)/(2β²)) / (2‖g‖²), b_⊥ the bias across g.
The calibration measures σ_i (spread of ``reads`` single reads), c and g from two
high-average estimates at β₁ and β₁/2 (Richardson: g ≈ ĝ(β₁/2) − c β₁²/4), then for each
β of a grid the least A whose predicted 1 − cos stays inside (1 − target)/``safety``; the
pair with the least measurement time (2 states × (t₀ + A·t₁), read-time model measured on
the device) is chosen and then *verified*: ``verify_trials`` fresh estimates with the chosen
β and A are compared with the reference gradient (the device's exact gradient when it has
``exact_gradient``, else the Richardson estimate) and the mean cosine is reported. When the
measurement misses the target (noise the model does not see), the budget is tightened by
the observed shortfall and the choice re-verified, up to ``max_rounds`` rounds; every
round is reported.

On a device with held inputs (docs/design.md §8) the operating point is the one training runs
at: every held input at the middle of ``input_phase_range_rad`` and ω = 0 (unless ``omega`` is
given), and β stays below :data:`HELD_BETA_MAX` (the β found is the EP rule's; the chip-scale
controller clamps with β·gain, docs/design.md §8).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from pydantic import Field

from phasegrad_hw.calibration.common import (
    Progress,
    no_progress,
    non_reference,
    operating_point,
    read_locked,
    thresholds,
)
from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.physics import Array, wrap
from phasegrad_hw.physics.gradients import cosine

log = logging.getLogger(__name__)

#: largest β searched on a device with held inputs (model units; the layered engine's β):
#: the locked states of a freshly initialised 64-64-10 network have stability margins of
#: ≈ 0.01–0.1, the chip-scale controller clamps with β·gain (gain 1–8 from the cross-entropy
#: gradient), and a −β clamp stronger than the margin destabilises the state it measures
#: (measured on the emulated CMOS chip, 640 digits samples, 16 averages: β = 0.08 → 177
#: samples skipped, 25 % test accuracy after 20 steps; β = 0.02 → 26 skipped, 39 %)
HELD_BETA_MAX = 0.02


class NoiseConfig(StrictModel):
    """Options: ``target_cosine`` (default: the device threshold, 0.99); ``reads`` single
    reads for σ; ``betas`` candidate β (default 12 geometric steps up to β_max);
    ``beta_ref`` β₁ of the bias estimate (default β_max/2) with ``ref_averages``×
    ``ref_repeats`` reads per state; ``safety`` margin on the error budget;
    ``target_offset_rad`` clamp targets = free outputs ± this; ``verify_trials``."""

    target_cosine: float | None = Field(default=None, gt=0.0, lt=1.0)
    reads: int = Field(default=256, ge=8)
    betas: list[float] | None = None
    beta_ref: float | None = Field(default=None, gt=0.0)
    ref_averages: int = Field(default=1024, ge=1)
    ref_repeats: int = Field(default=4, ge=1, le=1000)
    safety: float = Field(default=2.0, ge=1.0)
    target_offset_rad: float = Field(default=0.3, gt=0.0, le=1.5)
    verify_trials: int = Field(default=8, ge=1, le=1000)
    noise_means: int = Field(default=13, ge=3, le=10_000)
    max_rounds: int = Field(default=4, ge=1, le=20)
    omega: list[float] | None = None
    amplitude: float | None = Field(default=None, gt=0.0)
    seed: int = 0


class Candidate(StrictModel):
    """One β of the grid: least averages reaching the budget (None: unreachable)."""

    beta: float
    averages: int | None
    predicted_cosine: float | None
    time_s: float | None


class VerifyRound(StrictModel):
    """One choose-and-verify round."""

    beta: float
    averages: int
    predicted_cosine: float
    measured_cosines: list[float]
    measured_cosine: float


class NoiseModel(StrictModel):
    """v(A) = σ_w²/A + σ_s² + σ_d²·A (rad², summed over the non-reference channels): the
    variance of one A-read state in a centred difference (see the module docstring)."""

    white_rad2: float = Field(ge=0.0)
    slow_rad2: float = Field(default=0.0, ge=0.0)
    drift_rad2: float = Field(default=0.0, ge=0.0)  # per read of the average

    def var(self, averages: float) -> float:
        return self.white_rad2 / averages + self.slow_rad2 + self.drift_rad2 * averages

    def least_averages(self, room: float) -> int | None:
        """Least A ≥ 1 with v(A) ≤ ``room`` (None: none; v is convex in A)."""
        r = room - self.slow_rad2
        w, d = self.white_rad2, self.drift_rad2
        if r <= 0:
            return None
        if d == 0.0:
            return max(1, math.ceil(w / r))
        disc = r * r - 4.0 * d * w
        if disc < 0:
            return None
        lo, hi = (r - math.sqrt(disc)) / (2.0 * d), (r + math.sqrt(disc)) / (2.0 * d)
        a = max(1, math.ceil(lo))
        return a if a <= hi else None

    def best_averages(self, max_averages: int) -> int:
        """A in [1, max_averages] with the least v(A): σ_w/σ_d when drift limits."""
        if self.drift_rad2 == 0.0:
            return max_averages
        a = math.sqrt(self.white_rad2 / self.drift_rad2)
        near = (min(max(1, r(a)), max_averages) for r in (math.floor, math.ceil))
        return min(near, key=self.var)

    @classmethod
    def fit(cls, averages: list[int], variances: list[float], floor_white: float) -> NoiseModel:
        """Non-negative fit to measured v(A) in relative terms (each point ±40 % or so);
        σ_w² at least ``floor_white`` (from the single-read spread)."""
        from scipy.optimize import nnls

        a = np.asarray(averages, dtype=np.float64)
        v = np.asarray(variances, dtype=np.float64)
        scale = np.maximum(v, 1e-300)
        design = np.stack([1.0 / a, np.ones_like(a), a], axis=1) / scale[:, None]
        coef, _ = nnls(design, np.ones_like(a))
        if len(a) < 3:  # too few points for the drift term
            coef[2] = 0.0
        return cls(
            white_rad2=max(float(coef[0]), floor_white),
            slow_rad2=float(coef[1]),
            drift_rad2=float(coef[2]),
        )


def _bias_across(g: Array, c: Array, beta: float) -> float:
    """‖b_⊥‖²: the part of the centred bias b = c β² across the gradient g."""
    b = c * beta**2
    b_perp = b - (b @ g) / float(g @ g) * g
    return float(b_perp @ b_perp)


def _choose(
    betas: list[float],
    beta_max: float,
    max_avg: int,
    c: Array,
    g: Array,
    noise: NoiseModel,
    target_cos: float,
    safety: float,
    t0_read: float,
    t1: float,
) -> tuple[list[Candidate], Candidate | None]:
    """Least averages per β inside the budget; the cheapest candidate (ties: fewer
    averages, smaller β)."""
    gn = float(g @ g)
    budget = 2.0 * (1.0 - target_cos) / safety * gn
    cands: list[Candidate] = []
    for beta in betas:
        if not 0 < beta <= beta_max:
            continue
        room = budget - _bias_across(g, c, beta)
        a = noise.least_averages(2.0 * beta**2 * room) if room > 0 else None
        if a is None or a > max_avg:
            cands.append(Candidate(beta=beta, averages=None, predicted_cosine=None, time_s=None))
            continue
        cands.append(
            Candidate(
                beta=beta,
                averages=a,
                predicted_cosine=predicted_cosine(g, c, noise, beta, a),
                time_s=2.0 * (t0_read + a * t1),
            )
        )
    ok = [x for x in cands if x.averages is not None]
    best = min(ok, key=lambda x: (x.time_s or 0.0, x.averages or 0, x.beta)) if ok else None
    return cands, best


class NoiseResult(StrictModel):
    """Measured noise, the chosen (β, averages) and the verification."""

    sigma_rad: list[float]  # single-read rms per channel (reference 0)
    averaging_efficiency: float  # measured/ideal noise of 16-read means (1 = white noise)
    noise: NoiseModel  # v(A) fitted to the measured spread of centred differences
    noise_averages: list[int]  # the A at which v(A) was measured
    noise_variances: list[float]  # v(A) measured there (rad², summed)
    read_time_s: tuple[float, float]  # t₀ + A·t₁ per read call (s)
    bias_coefficient: list[float]  # c of b(β) = c β² (per non-reference channel)
    gradient_norm: float
    reference: str  # "exact" or "richardson"
    target_rad: list[float]  # clamp targets of the outputs used throughout (rad)
    omega: list[float]  # operating point (model units)
    target_cosine: float
    candidates: list[Candidate]
    beta: float
    averages: int
    predicted_cosine: float
    measured_cosines: list[float]
    measured_cosine: float
    estimate_time_s: float
    passed: bool
    duration_s: float
    rounds: list[VerifyRound] = []


async def centred_estimate(
    sub: OscillatorSubstrate, target: Array, beta: float, averages: int, repeats: int = 1
) -> Array:
    """−wrap(θ^{+β} − θ^{−β})/(2β) (N,), each state averaged over averages×repeats reads
    (interleaved ± to cancel slow drift); the clamp is released afterwards."""
    acc = np.zeros(sub.model.n)
    try:
        for _ in range(repeats):
            await sub.clamp(target, beta, 1)
            plus = await read_locked(sub, averages)
            await sub.clamp(target, beta, -1)
            minus = await read_locked(sub, averages)
            acc += wrap(plus.phases - minus.phases)
    finally:
        await sub.release()
    g = -acc / repeats / (2.0 * beta)
    g[sub.model.roles.reference] = 0.0
    return g


def predicted_cosine(g: Array, c: Array, noise: NoiseModel, beta: float, averages: int) -> float:
    """1 − (‖b_⊥‖² + v(A)/(2β²)) / (2‖g‖²) with b = c β² (see the module docstring)."""
    err = _bias_across(g, c, beta) + noise.var(averages) / (2.0 * beta**2)
    return 1.0 - err / (2.0 * float(g @ g))


async def calibrate_noise(
    sub: OscillatorSubstrate,
    cfg: NoiseConfig | None = None,
    progress: Progress = no_progress,
) -> NoiseResult:
    """Measure noise, choose (β, averages), verify (see the module docstring)."""
    cfg = cfg or NoiseConfig()
    t0 = time.perf_counter()
    model = sub.model
    keep = non_reference(model)
    target_cos = cfg.target_cosine or thresholds(model).target_cosine
    max_avg = model.limits.max_averages
    beta_max = model.limits.beta_max
    if model.roles.held:  # the layered chips lock with margins ~0.01–0.1: nudge within them
        beta_max = min(beta_max, HELD_BETA_MAX)
    progress("operating point", 0.0)
    omega = None if cfg.omega is None else np.asarray(cfg.omega)
    if model.roles.held:  # chip scale: mid-range held inputs, ω = 0 (where training runs)
        await sub.set_held_phases(model.input_phases(np.full(len(model.roles.held), 0.5)))
        omega = np.zeros(model.n) if omega is None else omega
    omega0, _ = await operating_point(
        sub,
        omega,
        amplitude=cfg.amplitude,
        seed=cfg.seed,
        averages=min(64, max_avg),
    )
    # -- single-read noise and averaging
    progress("readout noise", 0.05)
    n_reads = min(cfg.reads, max_avg)
    tic = time.perf_counter()
    big = await read_locked(sub, n_reads)
    t_big = time.perf_counter() - tic
    sigma = big.spread.copy()
    tic = time.perf_counter()
    for _ in range(4):
        await read_locked(sub, 1)
    t_one = (time.perf_counter() - tic) / 4
    t1 = max((t_big - t_one) / max(n_reads - 1, 1), 0.0)
    t0_read = max(t_one - t1, 0.0)
    # -- targets
    free = await read_locked(sub, min(256, max_avg))
    signs = np.where(np.arange(len(model.roles.outputs)) % 2 == 0, 1.0, -1.0)
    target = wrap(free.phases[model.outputs] + cfg.target_offset_rad * signs)
    b1 = cfg.beta_ref or 0.5 * beta_max
    # noise as the estimator sees it: the spread of repeated centred differences
    # θ^{+β} − θ^{−β} (clamped states) at four A, fitted by v(A) (module docstring)

    async def diff_var(a: int) -> float:
        ds = []
        try:
            for _ in range(cfg.noise_means):
                await sub.clamp(target, 0.5 * b1, 1)
                plus = (await read_locked(sub, a)).phases
                await sub.clamp(target, 0.5 * b1, -1)
                minus = (await read_locked(sub, a)).phases
                ds.append(wrap(plus - minus)[keep])
        finally:
            await sub.release()
        d = np.stack(ds)
        return float(((d - d.mean(0)) ** 2).sum(axis=1).mean() * len(ds) / (len(ds) - 1) / 2.0)

    n_avg = sorted({max(1, min(a, max_avg)) for a in (16, 128, 1024, max_avg)})
    v_avg: list[float] = []
    for a in n_avg:
        progress(f"noise spread, {a} averages", 0.05 + 0.1 * len(v_avg) / len(n_avg))
        v_avg.append(await diff_var(a))
    single = float((sigma[keep] ** 2).sum())
    noise = NoiseModel.fit(n_avg, v_avg, floor_white=0.25 * single)
    eff = float(np.sqrt(v_avg[0] * n_avg[0] / max(single, 1e-300)))
    b2 = 0.5 * b1
    progress("bias estimate", 0.15)
    ref_avg = min(cfg.ref_averages, max_avg)
    g1 = (await centred_estimate(sub, target, b1, ref_avg, cfg.ref_repeats))[keep]
    g2 = (await centred_estimate(sub, target, b2, ref_avg, cfg.ref_repeats))[keep]
    c = (g1 - g2) / (b1**2 - b2**2)
    g_rich = g2 - c * b2**2
    if Capability.EXACT_GRADIENT in sub.capabilities:
        g_ref = np.asarray(sub.exact_gradient(target))[keep]
        reference = "exact"
    else:
        g_ref = g_rich
        reference = "richardson"
    # -- choose β, A; verify; if the measured cosine misses the target (noise the
    #    model does not see, e.g. correlated noise), tighten the
    #    budget by the observed shortfall and try again
    betas = cfg.betas or list(np.geomspace(beta_max / 100.0, beta_max, 24))
    safety = cfg.safety
    rounds: list[VerifyRound] = []
    for attempt in range(cfg.max_rounds):
        cands, best = _choose(
            betas, beta_max, max_avg, c, g_rich, noise, target_cos, safety, t0_read, t1
        )
        if best is None:
            # nothing meets the (tightened) budget: the best achievable (the least-noise A)
            a_best = noise.best_averages(max_avg)
            fall = [
                Candidate(
                    beta=b,
                    averages=a_best,
                    predicted_cosine=predicted_cosine(g_rich, c, noise, b, a_best),
                    time_s=2.0 * (t0_read + a_best * t1),
                )
                for b in betas
                if 0 < b <= beta_max
            ]
            best = max(fall, key=lambda x: x.predicted_cosine or 0.0) if fall else None
            if best is None or (
                rounds and best.averages == rounds[-1].averages and best.beta == rounds[-1].beta
            ):
                break
            log.warning(
                "noise: cosine %.3g is out of reach by the model; verifying the best "
                "achievable (β = %.3g, %d averages)",
                target_cos,
                best.beta,
                a_best,
            )
        if best is None:
            break
        assert best.averages is not None and best.predicted_cosine is not None
        cosines = []
        for k in range(cfg.verify_trials):
            progress(
                f"verify {k + 1}/{cfg.verify_trials} (round {attempt + 1})",
                0.3 + 0.7 * (attempt + k / cfg.verify_trials) / cfg.max_rounds,
            )
            g = (await centred_estimate(sub, target, best.beta, best.averages))[keep]
            cosines.append(float(cosine(g, g_ref)))
        measured = float(np.mean(cosines))
        rounds.append(
            VerifyRound(
                beta=best.beta,
                averages=best.averages,
                predicted_cosine=best.predicted_cosine,
                measured_cosines=cosines,
                measured_cosine=measured,
            )
        )
        if measured >= target_cos:
            break
        short = (1.0 - measured) / max(1.0 - best.predicted_cosine, 1e-12)
        safety *= max(2.0, 1.5 * short)
    if not rounds:
        raise RuntimeError(
            f"noise: no β ≤ {beta_max} reaches cosine {target_cos} with ≤ {max_avg} averages "
            f"(σ_w = {np.sqrt(noise.white_rad2):.3g} rad); lower the target or raise "
            "limits.max_averages"
        )
    last = rounds[-1]
    cosines = last.measured_cosines
    await sub.set_frequencies(omega0)
    progress("noise done", 1.0)
    return NoiseResult(
        rounds=rounds,
        noise=noise,
        noise_averages=n_avg,
        noise_variances=v_avg,
        sigma_rad=sigma.tolist(),
        averaging_efficiency=eff,
        read_time_s=(t0_read, t1),
        bias_coefficient=c.tolist(),
        gradient_norm=float(np.linalg.norm(g_ref)),
        reference=reference,
        target_rad=target.tolist(),
        omega=omega0.tolist(),
        target_cosine=target_cos,
        candidates=cands,
        beta=last.beta,
        averages=last.averages,
        predicted_cosine=last.predicted_cosine,
        measured_cosines=cosines,
        measured_cosine=last.measured_cosine,
        estimate_time_s=2.0 * (t0_read + last.averages * t1),
        passed=last.measured_cosine >= target_cos,
        duration_s=time.perf_counter() - t0,
    )
