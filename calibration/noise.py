"""Readout noise and the choice of β and averages for a trustworthy two-phase gradient.

Model (DESIGN.md §2, "readout noise is the real enemy"). The centred estimate
ĝ = −wrap(θ^{+β} − θ^{−β})/(2β), each state averaged over A reads, has

* a bias b(β) = c β² + O(β⁴) (the O(β²) error of a centred difference), and
* noise of variance σ_i²/(2Aβ²) on channel i (σ_i the single-read rms of channel i).

For small errors the expected cosine to the true gradient g is
1 − cos ≈ (‖b_⊥‖² + Σ_i σ_i²/(2Aβ²)) / (2‖g‖²), b_⊥ the part of the bias across g.
The calibration measures σ_i (spread of ``reads`` single reads), c and g from two
high-average estimates at β₁ and β₁/2 (Richardson: g ≈ ĝ(β₁/2) − c β₁²/4), then for each
β of a grid the least A whose predicted 1 − cos stays inside (1 − target)/``safety``; the
pair with the least measurement time (2 states × (t₀ + A·t₁), read-time model measured on
the device) is chosen and then *verified*: ``verify_trials`` fresh estimates with the chosen
β and A are compared with the reference gradient (the device's exact gradient when it has
``exact_gradient``, else the Richardson estimate) and the mean cosine is reported.
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
    omega: list[float] | None = None
    amplitude: float | None = Field(default=None, gt=0.0)
    seed: int = 0


class Candidate(StrictModel):
    """One β of the grid: least averages reaching the budget (None: unreachable)."""

    beta: float
    averages: int | None
    predicted_cosine: float | None
    time_s: float | None


class NoiseResult(StrictModel):
    """Measured noise, the chosen (β, averages) and the verification."""

    sigma_rad: list[float]  # single-read rms per channel (reference 0)
    averaging_efficiency: float  # measured/ideal σ/√A of A-read means (1 = white noise)
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


def predicted_cosine(g: Array, c: Array, sigma2: float, beta: float, averages: int) -> float:
    """1 − (‖b_⊥‖² + Σσ²/(2Aβ²)) / (2‖g‖²) with b = c β² (see the module docstring)."""
    gn = float(g @ g)
    b = c * beta**2
    b_perp = b - (b @ g) / gn * g
    err = float(b_perp @ b_perp) + sigma2 / (2.0 * averages * beta**2)
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
    a_small = max(1, min(16, max_avg))
    means = np.stack([(await read_locked(sub, a_small)).phases for _ in range(16)])
    sd = np.sqrt(np.mean(np.abs(wrap(means - np.angle(np.exp(1j * means).mean(0))))[:, keep] ** 2,
                         axis=0))
    ideal = sigma[keep] / math.sqrt(a_small)
    eff = float(np.sqrt(np.mean(sd**2)) / max(np.sqrt(np.mean(ideal**2)), 1e-300))
    sigma2 = float((sigma[keep] ** 2).sum()) * max(eff, 1.0) ** 2
    # -- targets and the β² bias
    free = await read_locked(sub, min(256, max_avg))
    signs = np.where(np.arange(len(model.roles.outputs)) % 2 == 0, 1.0, -1.0)
    target = wrap(free.phases[model.outputs] + cfg.target_offset_rad * signs)
    b1 = cfg.beta_ref or 0.5 * beta_max
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
    # -- choose β, A
    betas = cfg.betas or list(np.geomspace(beta_max / 100.0, beta_max, 12))
    budget = 2.0 * (1.0 - target_cos) / cfg.safety * float(g_rich @ g_rich)
    cands: list[Candidate] = []
    for beta in betas:
        if not 0 < beta <= beta_max:
            continue
        b = c * beta**2
        b_perp = b - (b @ g_rich) / float(g_rich @ g_rich) * g_rich
        room = budget - float(b_perp @ b_perp)
        if room <= 0:
            cands.append(Candidate(beta=beta, averages=None, predicted_cosine=None, time_s=None))
            continue
        a = max(1, math.ceil(sigma2 / (2.0 * beta**2 * room)))
        if a > max_avg:
            cands.append(Candidate(beta=beta, averages=None, predicted_cosine=None, time_s=None))
            continue
        cands.append(Candidate(
            beta=beta, averages=a, predicted_cosine=predicted_cosine(g_rich, c, sigma2, beta, a),
            time_s=2.0 * (t0_read + a * t1)))
    ok = [x for x in cands if x.averages is not None]
    if not ok:
        raise RuntimeError(
            f"noise: no β ≤ {beta_max} reaches cosine {target_cos} with ≤ {max_avg} averages "
            f"(σ = {np.sqrt(sigma2):.3g} rad); lower the target or raise limits.max_averages")
    best = min(ok, key=lambda x: (x.time_s or 0.0, x.averages or 0, x.beta))
    assert best.averages is not None and best.predicted_cosine is not None
    # -- verify
    cosines = []
    for k in range(cfg.verify_trials):
        progress(f"verify {k + 1}/{cfg.verify_trials}", 0.3 + 0.7 * k / cfg.verify_trials)
        g = (await centred_estimate(sub, target, best.beta, best.averages))[keep]
        cosines.append(float(cosine(g, g_ref)))
    await sub.set_frequencies(omega0)
    measured = float(np.mean(cosines))
    progress("noise done", 1.0)
    return NoiseResult(
        sigma_rad=sigma.tolist(), averaging_efficiency=eff, read_time_s=(t0_read, t1),
        bias_coefficient=c.tolist(), gradient_norm=float(np.linalg.norm(g_ref)),
        reference=reference, target_rad=target.tolist(), omega=omega0.tolist(),
        target_cosine=target_cos, candidates=cands, beta=best.beta,
        averages=best.averages, predicted_cosine=best.predicted_cosine,
        measured_cosines=cosines, measured_cosine=measured,
        estimate_time_s=best.time_s or 0.0, passed=measured >= target_cos,
        duration_s=time.perf_counter() - t0,
    )
