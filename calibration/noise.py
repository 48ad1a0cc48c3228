"""Readout noise and the choice of β and averages for a trustworthy two-phase gradient.

Model (DESIGN.md §2, "readout noise is the real enemy"). The centred estimate
ĝ = −wrap(θ^{+β} − θ^{−β})/(2β), each state averaged over A reads, has

* a bias b(β) = c β² + O(β⁴) (the O(β²) error of a centred difference), and
* noise of variance (σ_w²/A + σ_s²)/(2β²) summed over channels: a white part σ_w² that
  averages down and a slow part σ_s² that does not (a wandering common phase under
  injection, drift), both measured from the spread of repeated centred differences
  θ^{+β} − θ^{−β} (clamped, β = β₁/2) at two A.

For small errors the expected cosine to the true gradient g is
1 − cos ≈ (‖b_⊥‖² + (σ_w²/A + σ_s²)/(2β²)) / (2‖g‖²), b_⊥ the bias across g.
The calibration measures σ_i (spread of ``reads`` single reads), c and g from two
high-average estimates at β₁ and β₁/2 (Richardson: g ≈ ĝ(β₁/2) − c β₁²/4), then for each
β of a grid the least A whose predicted 1 − cos stays inside (1 − target)/``safety``; the
pair with the least measurement time (2 states × (t₀ + A·t₁), read-time model measured on
the device) is chosen and then *verified*: ``verify_trials`` fresh estimates with the chosen
β and A are compared with the reference gradient (the device's exact gradient when it has
``exact_gradient``, else the Richardson estimate) and the mean cosine is reported. When the
measurement misses the target (noise the white model does not see, e.g. drift between the
± states), the budget is tightened by the observed shortfall and the choice re-verified,
up to ``max_rounds`` rounds; every round is reported.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from phasegrad_hw.calibration.common import (
    Progress,
    no_progress,
    non_reference,
    operating_point,
    read_locked,
    thresholds,
)
from pydantic import Field

from phasegrad_hw.gradients import cosine
from phasegrad_hw.models import StrictModel
from phasegrad_hw.physics import Array, wrap
from phasegrad_hw.substrate import Capability, OscillatorSubstrate

log = logging.getLogger(__name__)


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


def _choose(betas: list[float], beta_max: float, max_avg: int, c: Array, g: Array,
            sigma2: float, target_cos: float, safety: float, t0_read: float, t1: float,
            slow2: float = 0.0) -> tuple[list[Candidate], Candidate | None]:
    """Least averages per β inside the budget; the cheapest candidate (ties: fewer
    averages, smaller β)."""
    gn = float(g @ g)
    budget = 2.0 * (1.0 - target_cos) / safety * gn
    cands: list[Candidate] = []
    for beta in betas:
        if not 0 < beta <= beta_max:
            continue
        b = c * beta**2
        b_perp = b - (b @ g) / gn * g
        room = budget - float(b_perp @ b_perp)
        room -= slow2 / (2.0 * beta**2)  # slow noise does not average away
        a = math.ceil(sigma2 / (2.0 * beta**2 * room)) if room > 0 else max_avg + 1
        if a > max_avg:
            cands.append(Candidate(beta=beta, averages=None, predicted_cosine=None, time_s=None))
            continue
        a = max(1, a)
        cands.append(Candidate(
            beta=beta, averages=a,
            predicted_cosine=predicted_cosine(g, c, sigma2, beta, a, slow2),
            time_s=2.0 * (t0_read + a * t1)))
    ok = [x for x in cands if x.averages is not None]
    best = min(ok, key=lambda x: (x.time_s or 0.0, x.averages or 0, x.beta)) if ok else None
    return cands, best


class NoiseResult(StrictModel):
    """Measured noise, the chosen (β, averages) and the verification."""

    sigma_rad: list[float]  # single-read rms per channel (reference 0)
    averaging_efficiency: float  # measured/ideal noise of 16-read means (1 = white noise)
    white_rad2: float = 0.0  # σ_w² (rad², summed over channels): averages down as 1/A
    slow_rad2: float = 0.0  # σ_s² (rad², summed): does not average down
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


async def centred_estimate(sub: OscillatorSubstrate, target: Array, beta: float,
                           averages: int, repeats: int = 1) -> Array:
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


def predicted_cosine(g: Array, c: Array, sigma2: float, beta: float, averages: int,
                     slow2: float = 0.0) -> float:
    """1 − (‖b_⊥‖² + Σσ²/(2Aβ²)) / (2‖g‖²) with b = c β² (see the module docstring)."""
    gn = float(g @ g)
    b = c * beta**2
    b_perp = b - (b @ g) / gn * g
    err = float(b_perp @ b_perp) + (sigma2 / averages + slow2) / (2.0 * beta**2)
    return 1.0 - err / (2.0 * gn)


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
    progress("operating point", 0.0)
    omega0, _ = await operating_point(
        sub, None if cfg.omega is None else np.asarray(cfg.omega), amplitude=cfg.amplitude,
        seed=cfg.seed, averages=min(64, max_avg),
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
    # θ^{+β} − θ^{−β} (clamped states; catches slow/correlated noise, e.g. a wandering
    # common phase under injection) at two A; model var = 2(σ_w²/A + σ_s²), summed over
    # channels
    a1, a2 = max(1, min(16, max_avg)), max(1, min(cfg.ref_averages, max_avg))

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

    v1, v2 = await diff_var(a1), await diff_var(a2)
    slow2 = max(0.0, (a2 * v2 - a1 * v1) / (a2 - a1)) if a2 > a1 else 0.0
    white2 = max(a1 * (v1 - slow2), float((sigma[keep] ** 2).sum()) * 0.25)
    eff = float(np.sqrt(v1 * a1 / max(float((sigma[keep] ** 2).sum()), 1e-300)))
    sigma2 = white2
    b2 = 0.5 * b1
    progress("bias estimate", 0.15)
    ref_avg = min(cfg.ref_averages, max_avg)
    g1 = (await centred_estimate(sub, target, b1, ref_avg, cfg.ref_repeats))[keep]
    g2 = (await centred_estimate(sub, target, b2, ref_avg, cfg.ref_repeats))[keep]
    c = (g1 - g2) / (b1**2 - b2**2)
    g_rich = g2 - c * b2**2
    exact = getattr(sub, "exact_gradient", None)
    if Capability.EXACT_GRADIENT in sub.capabilities and callable(exact):
        g_ref = np.asarray(exact(target))[keep]
        reference = "exact"
    else:
        g_ref = g_rich
        reference = "richardson"
    # -- choose β, A; verify; if the measured cosine misses the target (noise the white
    #    model does not see: drift between the ± states, correlated noise), tighten the
    #    budget by the observed shortfall and try again
    betas = cfg.betas or list(np.geomspace(beta_max / 100.0, beta_max, 12))
    safety = cfg.safety
    rounds: list[VerifyRound] = []
    for attempt in range(cfg.max_rounds):
        cands, best = _choose(betas, beta_max, max_avg, c, g_rich, sigma2, target_cos, safety,
                              t0_read, t1, slow2)
        if best is None:
            # nothing meets the (tightened) budget: the best achievable at the most averages
            fall = [Candidate(beta=b, averages=max_avg,
                              predicted_cosine=predicted_cosine(g_rich, c, sigma2, b, max_avg,
                                                                slow2),
                              time_s=2.0 * (t0_read + max_avg * t1))
                    for b in betas if 0 < b <= beta_max]
            best = max(fall, key=lambda x: x.predicted_cosine or 0.0) if fall else None
            if best is None or (rounds and best.averages == rounds[-1].averages
                                and best.beta == rounds[-1].beta):
                break
            log.warning("noise: cosine %.3g is out of reach by the model; verifying the best "
                        "achievable (β = %.3g, %d averages)", target_cos, best.beta, max_avg)
        if best is None:
            break
        assert best.averages is not None and best.predicted_cosine is not None
        cosines = []
        for k in range(cfg.verify_trials):
            progress(f"verify {k + 1}/{cfg.verify_trials} (round {attempt + 1})",
                     0.3 + 0.7 * (attempt + k / cfg.verify_trials) / cfg.max_rounds)
            g = (await centred_estimate(sub, target, best.beta, best.averages))[keep]
            cosines.append(float(cosine(g, g_ref)))
        measured = float(np.mean(cosines))
        rounds.append(VerifyRound(beta=best.beta, averages=best.averages,
                                  predicted_cosine=best.predicted_cosine,
                                  measured_cosines=cosines, measured_cosine=measured))
        if measured >= target_cos:
            break
        short = (1.0 - measured) / max(1.0 - best.predicted_cosine, 1e-12)
        safety *= max(2.0, 1.5 * short)
    if not rounds:
        raise RuntimeError(
            f"noise: no β ≤ {beta_max} reaches cosine {target_cos} with ≤ {max_avg} averages "
            f"(σ = {np.sqrt(sigma2):.3g} rad); lower the target or raise limits.max_averages")
    last = rounds[-1]
    cosines = last.measured_cosines
    await sub.set_frequencies(omega0)
    progress("noise done", 1.0)
    return NoiseResult(
        rounds=rounds, white_rad2=white2, slow_rad2=slow2,
        sigma_rad=sigma.tolist(), averaging_efficiency=eff, read_time_s=(t0_read, t1),
        bias_coefficient=c.tolist(), gradient_norm=float(np.linalg.norm(g_ref)),
        reference=reference, target_rad=target.tolist(), omega=omega0.tolist(),
        target_cosine=target_cos, candidates=cands, beta=last.beta,
        averages=last.averages, predicted_cosine=last.predicted_cosine,
        measured_cosines=cosines, measured_cosine=last.measured_cosine,
        estimate_time_s=2.0 * (t0_read + last.averages * t1),
        passed=last.measured_cosine >= target_cos,
        duration_s=time.perf_counter() - t0,
    )
