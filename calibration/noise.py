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

Mini-batch training on a chip with held inputs (docs/design.md §8) needs a different target:
the coupling gradient a step applies is the *mean* over a mini-batch of B samples, each clamped
toward its own loss-gradient targets with strength β·κ_s (:class:`ClampTargets`, κ_s the
sample's gain), each state read with A averages. With per-sample gradients g_s = μ + ξ_s
(mean μ, spread tr Σ = E‖ξ‖²: signal, not noise) and independent readout noise of
E‖e_s‖² = v(A)/(2β²) per sample, the batch mean ḡ + ē has (many parameters, so norms
concentrate) the expected cosine to the noiseless batch mean ḡ at the reference β_ref

    cos_B ≈ [1 + (‖d̄_B‖² + v(A)/(2β²B)) / (‖μ‖² + tr Σ/B)]^{-1/2},

d̄_B the batch mean of the systematic shift of the estimate between β_ref and β (clamp
quantisation and the O(β²) term; measured between β_ref and β_ref/2, linear in between).
:func:`calibrate_noise` with :class:`TaskSamples` (real task samples, their held phases, the
training's initial couplings and its clamp rule; each sample's free state is read again at
every visit, and clamp targets and gain come from it, as in the controller) measures

* the lock margin: per sample the largest clamp strength σ*_s = β·κ_s on a geometric grid at
  which both ±β states stay locked with no displacement above ``basin_jump_rad`` (the
  controller skips such samples), and bounds β by the ``lock_quantile`` of σ*_s/κ_s over the
  samples divided by ``lock_safety`` — β_ref is this bound;
* v(A) in coupling space: the spread of repeated V(Δ^{+}) − V(Δ^{−}) on every edge at
  A ∈ {1, 16, 128, 1024} (the same fit as above), with the time of one ± pair per A;
* μ, tr Σ and the shift d from per-sample high-average references at β_ref and β_ref/2
  (their own read noise subtracted);

then, for β on a grid from β_ref/2 to β_ref, the least A meeting :data:`BATCH_TARGET_COSINE`
(``safety`` on the error budget); the cheapest per sample (free, +β, −β reads ≈ 1.5 pairs)
wins, and ``verify_trials`` fresh batch means (samples whose free state left its basin, or
whose ± pair is invalid, are left out as the controller leaves them out) are compared with
the reference batch mean.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.calibration.common import (
    Progress,
    no_progress,
    non_reference,
    odd_coupling,
    operating_point,
    read_locked,
    thresholds,
)
from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.substrate import Capability, ClampTargets, OscillatorSubstrate
from phasegrad_hw.errors import ConfigError, LockLostError
from phasegrad_hw.physics import Array, wrap
from phasegrad_hw.physics.gradients import cosine, coupling_gradient_two_phase

log = logging.getLogger(__name__)

#: target cosine of a mini-batch mean gradient against its noiseless value: readout noise may
#: then add at most 1/0.9² − 1 ≈ 23 % to the squared norm of the batch mean — less than what
#: the sampling of the batch itself adds at B = 32 (tr Σ/B against ‖μ‖² is ~1 or more at the
#: start of training), so SGD/Adam see the noise as a batch ≈ 20 % smaller, not a wrong
#: direction; 0.95 would cost about 2.2× the averages for little change in the update
BATCH_TARGET_COSINE = 0.9


class NoiseConfig(StrictModel):
    """Options: ``target_cosine`` (default: the device threshold, 0.99; with task samples
    :data:`BATCH_TARGET_COSINE` of the batch mean); ``reads`` single reads for σ; ``betas``
    candidate β (default 24 geometric steps up to β_max, or 16 up to the lock bound);
    ``beta_ref`` β₁ of the bias estimate (default β_max/2, or the lock bound) with
    ``ref_averages``× ``ref_repeats`` reads per state; ``safety`` margin on the error budget;
    ``target_offset_rad`` clamp targets = free outputs ± this (no task samples);
    ``verify_trials``. With task samples: ``batch_size`` B of the training's mini-batches;
    ``lock_strengths`` the β·κ grid of the lock-margin scan (default 12 geometric steps from
    0.005 to limits.beta_max); ``lock_quantile`` and ``lock_safety`` of the β bound;
    ``noise_samples`` samples on which v(A) is measured."""

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
    batch_size: int = Field(default=32, ge=1, le=100_000)
    lock_strengths: list[float] | None = None
    lock_quantile: float = Field(default=0.1, ge=0.0, le=1.0)
    # 1: the quantile is the margin (90 % of samples stay locked at ±β·κ, the rest are
    # skipped by the controller as they would be); the scan grid already rounds σ* down by up
    # to one geometric step. A further factor 2 put β at 0.006 on the CMOS 64-64-10 chip, 3×
    # below the 0.02 that trains it (one seed of three ended at 92.2 %).
    lock_safety: float = Field(default=1.0, ge=1.0)
    noise_samples: int = Field(default=4, ge=1, le=1000)


@dataclass(frozen=True)
class TaskSamples:
    """Real task samples for the mini-batch calibration (docs/design.md §8): ``held_rad``
    (S, n_held) held input phases (rad), ``labels`` (S,), ``clamp`` the training's clamp
    rule (label, free output phases rad) → :class:`ClampTargets` (targets rad, gain κ: the
    clamp strength is β·κ), the training's initial ``couplings`` (E,) (None: as set) and
    ``omega`` (N,) model units, ``basin_jump_rad`` the controller's skip threshold and the
    ``task`` name (for the report)."""

    held_rad: Array
    labels: NDArray[np.int64]
    clamp: Callable[[int, Array], ClampTargets]
    couplings: Array | None
    omega: Array
    basin_jump_rad: float
    task: str = ""


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
    noise: NoiseModel,
    room_of: Callable[[float], float],
    predict: Callable[[float, int], float],
    time_of: Callable[[int], float],
) -> tuple[list[Candidate], Candidate | None]:
    """Per β ≤ ``beta_max``: the least averages whose v(A) fits ``room_of(β)`` (rad² or the
    parameter-space equivalent); the cheapest candidate by ``time_of(A)`` (ties: fewer
    averages, higher predicted cosine)."""
    cands: list[Candidate] = []
    for beta in betas:
        if not 0 < beta <= beta_max:
            continue
        room = room_of(beta)
        a = noise.least_averages(room) if room > 0 else None
        if a is None or a > max_avg:
            cands.append(Candidate(beta=beta, averages=None, predicted_cosine=None, time_s=None))
            continue
        cands.append(
            Candidate(beta=beta, averages=a, predicted_cosine=predict(beta, a), time_s=time_of(a))
        )
    ok = [x for x in cands if x.averages is not None]
    best = (
        min(ok, key=lambda x: (x.time_s or 0.0, x.averages or 0, -(x.predicted_cosine or 0.0)))
        if ok
        else None
    )
    return cands, best


class BatchSignal(StrictModel):
    """The signal side of a mini-batch gradient (coupling space, model units): per-sample
    gradients g_s = μ + ξ_s at the reference β ``beta_ref`` with ``mean_norm2`` ‖μ‖² and
    ``spread_trace`` tr Σ = E‖ξ‖²; and the systematic shift of the estimate when β is lowered
    to β_ref/2, d_s = g_s(β_ref/2) − g_s(β_ref), with ``shift_mean2`` ‖d̄‖² and
    ``shift_spread`` E‖d_s − d̄‖² (clamp quantisation and the O(β²) term together), taken as
    linear in β in between (module docstring)."""

    mean_norm2: float = Field(ge=0.0)
    spread_trace: float = Field(ge=0.0)
    beta_ref: float = Field(default=1.0, gt=0.0)
    shift_mean2: float = Field(default=0.0, ge=0.0)
    shift_spread: float = Field(default=0.0, ge=0.0)

    def signal(self, batch: int) -> float:
        """E‖ḡ_B‖² = ‖μ‖² + tr Σ/B: the squared norm of a noiseless batch mean."""
        return self.mean_norm2 + self.spread_trace / batch

    def shift2(self, beta: float, batch: int) -> float:
        """E‖d̄_B‖² of a batch mean at β against the reference β."""
        f = (self.beta_ref - beta) / (0.5 * self.beta_ref)
        return f * f * (self.shift_mean2 + self.shift_spread / batch)

    def cosine(self, noise: NoiseModel, beta: float, averages: int, batch: int) -> float:
        """Expected cosine of a measured batch mean (B samples, A averages per state, centred
        β) to the noiseless one at β_ref: [1 + (‖d̄_B‖² + v(A)/(2β²B))/(‖μ‖² + tr Σ/B)]^{−1/2}."""
        err = self.shift2(beta, batch) + noise.var(averages) / (2.0 * beta**2 * batch)
        sig = self.signal(batch)
        return 0.0 if sig <= 0 else float((1.0 + err / sig) ** -0.5)

    def noise_room(self, beta: float, batch: int, target: float, safety: float) -> float:
        """Largest v(A) with the predicted cosine ≥ ``target`` when the error budget
        (‖μ‖² + tr Σ/B)(1/target² − 1) is divided by ``safety``."""
        budget = self.signal(batch) * (1.0 / target**2 - 1.0) / safety
        return 2.0 * beta**2 * batch * (budget - self.shift2(beta, batch))


def choose_batch(
    betas: list[float],
    beta_bound: float,
    max_avg: int,
    noise: NoiseModel,
    signal: BatchSignal,
    batch: int,
    target_cos: float,
    safety: float,
    time_of: Callable[[int], float],
) -> tuple[list[Candidate], Candidate | None]:
    """(β, A) for mini-batch training: β ≤ ``beta_bound`` (the lock-margin bound), the least A
    whose predicted batch-mean cosine meets ``target_cos`` within ``safety``, cheapest by
    ``time_of(A)`` (s per sample)."""
    return _choose(
        betas,
        beta_bound,
        max_avg,
        noise,
        lambda b: signal.noise_room(b, batch, target_cos, safety),
        lambda b, a: signal.cosine(noise, b, a, batch),
        time_of,
    )


async def _choose_and_verify(
    choose: Callable[[float], tuple[list[Candidate], Candidate | None]],
    achievable: Callable[[], Candidate | None],
    measure: Callable[[float, int, int, int], Awaitable[list[float]]],
    cfg: NoiseConfig,
    target_cos: float,
) -> tuple[list[Candidate], list[VerifyRound]]:
    """Choose with ``choose(safety)``, measure ``measure(β, A, round, trials)`` cosines; when the
    measurement misses the target (noise the model does not see, e.g. correlated noise),
    tighten the budget by the observed shortfall and try again, up to ``cfg.max_rounds``;
    when nothing meets the budget, verify ``achievable()`` (the least-noise choice) once."""
    safety = cfg.safety
    rounds: list[VerifyRound] = []
    cands: list[Candidate] = []
    for attempt in range(cfg.max_rounds):
        cands, best = choose(safety)
        if best is None:
            best = achievable()
            if best is None or (
                rounds and best.averages == rounds[-1].averages and best.beta == rounds[-1].beta
            ):
                break
            log.warning(
                "noise: cosine %.3g is out of reach by the model; verifying the best "
                "achievable (β = %.3g, %s averages)",
                target_cos,
                best.beta,
                best.averages,
            )
        assert best.averages is not None and best.predicted_cosine is not None
        cosines = await measure(best.beta, best.averages, attempt, cfg.verify_trials)
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
    return cands, rounds


class LockBound(StrictModel):
    """The lock-margin bound on β (model units): ``strengths`` the β·κ grid scanned,
    per sample its largest stable strength σ*_s (0: none) and gain κ_s, the bound
    ``beta_bound`` = quantile_q(σ*_s/κ_s)/``safety`` (≤ limits.beta_max) and
    ``strength_bound`` = quantile_q(σ*_s)."""

    strengths: list[float]
    sample_max_strength: list[float]
    gains: list[float]
    quantile: float
    safety: float
    strength_bound: float
    beta_bound: float


class BatchReport(StrictModel):
    """What the mini-batch calibration measured: the task and batch size, the samples used
    and skipped (free state not locked), the signal model, the lock bound and the
    predicted/measured batch-mean cosine of the choice."""

    task: str
    batch_size: int
    samples: int
    skipped_samples: int
    signal: BatchSignal
    lock: LockBound
    reference_noise2: float  # E‖g_ref,s − g_s‖² of one per-sample reference (subtracted)


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
    estimate_time_s: float  # one estimate at the chosen A (task samples: free + ± reads) (s)
    passed: bool
    duration_s: float
    rounds: list[VerifyRound] = []
    batch: BatchReport | None = None  # mini-batch calibration (task samples); cosines of the mean


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


def _chosen(
    last: VerifyRound, target_cos: float, time_of: Callable[[int], float]
) -> dict[str, Any]:
    """The :class:`NoiseResult` fields of the setting the last verify round settled on."""
    return {
        "beta": last.beta,
        "averages": last.averages,
        "predicted_cosine": last.predicted_cosine,
        "measured_cosines": last.measured_cosines,
        "measured_cosine": last.measured_cosine,
        "estimate_time_s": time_of(last.averages),
        "passed": last.measured_cosine >= target_cos,
    }


def _best_at_most_averages(
    betas: Sequence[float],
    beta_max: float,
    averages: int,
    cosine_of: Callable[[float, int], float],
    time_of: Callable[[int], float],
) -> Candidate | None:
    """The fallback when no β meets the target: the β ≤ ``beta_max`` with the best predicted
    cosine at ``averages`` (the most worth taking), or None without a candidate β."""
    fall = [
        Candidate(
            beta=b,
            averages=averages,
            predicted_cosine=cosine_of(b, averages),
            time_s=time_of(averages),
        )
        for b in betas
        if 0 < b <= beta_max
    ]
    return max(fall, key=lambda x: x.predicted_cosine or 0.0) if fall else None


async def calibrate_noise(
    sub: OscillatorSubstrate,
    cfg: NoiseConfig | None = None,
    progress: Progress = no_progress,
    samples: TaskSamples | None = None,
) -> NoiseResult:
    """Measure noise, choose (β, averages), verify (see the module docstring). With
    ``samples`` (required on a device with held inputs) the choice is for mini-batch
    training on those samples: the batch-mean cosine, β bounded by the measured lock margin."""
    cfg = cfg or NoiseConfig()
    if samples is not None:
        return await _calibrate_batch(sub, cfg, samples, progress)
    if sub.model.roles.held:
        raise ConfigError(
            "noise: a device with held inputs is calibrated for a task (its samples and clamp "
            "targets; `calibrate noise --task …`)"
        )
    t0 = time.perf_counter()
    model = sub.model
    keep = non_reference(model)
    target_cos = cfg.target_cosine or thresholds(model).target_cosine
    max_avg = model.limits.max_averages
    beta_max = model.limits.beta_max
    progress("operating point", 0.0)
    omega = None if cfg.omega is None else np.asarray(cfg.omega)
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
    # θ^{+β} − θ^{−β} (clamped, β = β₁/2) at four A, fitted by v(A) (module docstring)

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
        return _diff_variance(np.stack(ds))

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
    # -- choose β, A (small-error cosine of one estimate); verify; tighten on a shortfall
    betas = cfg.betas or list(np.geomspace(beta_max / 100.0, beta_max, 24))
    gn = float(g_rich @ g_rich)

    def time_of(a: int) -> float:
        return 2.0 * (t0_read + a * t1)

    def choose(safety: float) -> tuple[list[Candidate], Candidate | None]:
        budget = 2.0 * (1.0 - target_cos) / safety * gn
        return _choose(
            betas,
            beta_max,
            max_avg,
            noise,
            lambda b: 2.0 * b**2 * (budget - _bias_across(g_rich, c, b)),
            lambda b, a: predicted_cosine(g_rich, c, noise, b, a),
            time_of,
        )

    def achievable() -> Candidate | None:
        return _best_at_most_averages(
            betas,
            beta_max,
            noise.best_averages(max_avg),
            lambda b, a: predicted_cosine(g_rich, c, noise, b, a),
            time_of,
        )

    async def measure(beta: float, a: int, attempt: int, trials: int) -> list[float]:
        cosines = []
        for k in range(trials):
            progress(
                f"verify {k + 1}/{trials} (round {attempt + 1})",
                0.3 + 0.7 * (attempt + k / trials) / cfg.max_rounds,
            )
            g = (await centred_estimate(sub, target, beta, a))[keep]
            cosines.append(float(cosine(g, g_ref)))
        return cosines

    cands, rounds = await _choose_and_verify(choose, achievable, measure, cfg, target_cos)
    if not rounds:
        raise RuntimeError(
            f"noise: no β ≤ {beta_max} reaches cosine {target_cos} with ≤ {max_avg} averages "
            f"(σ_w = {np.sqrt(noise.white_rad2):.3g} rad); lower the target or raise "
            "limits.max_averages"
        )
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
        **_chosen(rounds[-1], target_cos, time_of),
        duration_s=time.perf_counter() - t0,
    )


def _diff_variance(d: Array) -> float:
    """v = half the unbiased spread (summed over columns) of repeated differences d (R, n)."""
    dev = d - d.mean(0)
    return float((dev**2).sum(axis=1).mean() * len(d) / (len(d) - 1) / 2.0)


# --------------------------------------------------------------------------- mini-batch
class _Sample:
    """One task sample on the device: label, held phases, its last free phases and the clamp
    targets and gain computed from them."""

    def __init__(self, label: int, held: Array) -> None:
        self.label = label
        self.held = held
        self.free = np.zeros(0)
        self.targets = np.zeros(0)
        self.gain = 1.0

    async def visit(
        self, sub: OscillatorSubstrate, task: TaskSamples, averages: int, keep_basin: bool
    ) -> bool:
        """Set the held phases and read the free state (the device settles from wherever the
        last sample left it, so a layered chip may land in another locked state): new clamp
        targets from it, as the controller computes them. ``keep_basin``: False when the
        state is not the one of the last visit (displacement above ``basin_jump_rad``) —
        then nothing is updated. Returns whether the free state locked (and kept its basin)."""
        await sub.set_held_phases(self.held)
        free = await sub.read_phases(averages)
        if not free.locked:
            return False
        if keep_basin and np.abs(wrap(free.phases - self.free)).max() > task.basin_jump_rad:
            return False
        out = sub.model.outputs
        ct = task.clamp(self.label, free.phases[out])
        self.free, self.targets, self.gain = free.phases, np.asarray(ct.targets), float(ct.gain)
        return True


async def _pair(
    sub: OscillatorSubstrate, smp: _Sample, strength: float, averages: int, jump_rad: float
) -> tuple[Array, Array, bool]:
    """θ^{+}, θ^{−} clamped toward the sample's targets with ``strength`` (= β·κ), A reads
    each; released afterwards. The flag, as the controller decides validity: both reads
    locked and no displacement from the free state above ``jump_rad``."""
    try:
        await sub.clamp(smp.targets, strength, 1)
        plus = await sub.read_phases(averages)
        await sub.clamp(smp.targets, strength, -1)
        minus = await sub.read_phases(averages)
    finally:
        await sub.release()
    disp = max(
        float(np.abs(wrap(plus.phases - smp.free)).max()),
        float(np.abs(wrap(minus.phases - smp.free)).max()),
    )
    return plus.phases, minus.phases, plus.locked and minus.locked and disp <= jump_rad


async def _calibrate_batch(
    sub: OscillatorSubstrate, cfg: NoiseConfig, task: TaskSamples, progress: Progress
) -> NoiseResult:
    """The mini-batch calibration (module docstring): lock scan, references, v(A), choice,
    verification of batch means. Coupling gradients throughout (what the chip trains)."""
    t_start = time.perf_counter()
    model = sub.model
    lim = model.limits
    max_avg = lim.max_averages
    batch = cfg.batch_size
    target_cos = cfg.target_cosine or BATCH_TARGET_COSINE
    edges = model.edge_index
    H = odd_coupling(model)
    beta_cap = lim.beta_max
    progress("task samples: free states", 0.0)
    if task.couplings is not None:
        await sub.set_couplings(task.couplings)
    await sub.set_frequencies(task.omega)
    smp: list[_Sample] = []
    skipped = 0
    sigma = np.zeros(model.n)
    for s, (held, y) in enumerate(zip(task.held_rad, task.labels, strict=True)):
        sm = _Sample(int(y), np.asarray(held, dtype=np.float64))
        if not await sm.visit(sub, task, min(64, max_avg), False):
            skipped += 1
            continue
        if not smp:
            sigma = (await read_locked(sub, min(cfg.reads, max_avg))).spread.copy()
        smp.append(sm)
        progress("task samples: free states", 0.05 * (s + 1) / len(task.labels))
    if len(smp) < 4:
        raise LockLostError(
            f"noise: {skipped} of {len(task.labels)} task samples do not lock at the "
            "training's initial couplings — calibrate the bias map first (`calibrate transfer`)"
        )
    if skipped:
        log.warning(
            "noise: %d of %d task samples not locked (skipped)", skipped, skipped + len(smp)
        )
    # -- lock margin: the largest β·κ at which ± clamps keep every sample locked, no jump
    strengths = cfg.lock_strengths or list(np.geomspace(0.005, beta_cap, 12))
    strengths = sorted(x for x in strengths if 0 < x <= beta_cap)
    best_strength = np.zeros(len(smp))
    for k, sm in enumerate(smp):
        progress(f"lock margin, sample {k + 1}/{len(smp)}", 0.05 + 0.15 * k / len(smp))
        if not await sm.visit(sub, task, min(16, max_avg), False):
            continue  # (σ*_s = 0: this sample did not lock this time)
        for x in strengths:
            _, _, ok = await _pair(sub, sm, x, min(16, max_avg), task.basin_jump_rad)
            if not ok:
                break
            best_strength[k] = x
    gains = np.array([sm.gain for sm in smp])
    q = cfg.lock_quantile
    strength_bound = float(np.quantile(best_strength, q))
    beta_bound = min(float(np.quantile(best_strength / gains, q)) / cfg.lock_safety, beta_cap)
    lock = LockBound(
        strengths=strengths,
        sample_max_strength=best_strength.tolist(),
        gains=gains.tolist(),
        quantile=q,
        safety=cfg.lock_safety,
        strength_bound=strength_bound,
        beta_bound=beta_bound,
    )
    if beta_bound <= 0:
        raise LockLostError(
            f"noise: the {q:.0%} quantile of the task samples loses lock at the weakest clamp "
            f"(β·κ = {strengths[0]:.3g}); calibrate the bias map (`calibrate transfer`) or "
            "check the couplings"
        )
    log.info(
        "noise: lock margin β·κ ≤ %.3g (%.0f %% quantile), gains %.2g–%.2g → β ≤ %.3g",
        strength_bound,
        100 * q,
        gains.min(),
        gains.max(),
        beta_bound,
    )

    def grad(plus: Array, minus: Array, beta: float) -> Array:
        """Centred EP coupling gradient [V(Δ⁺) − V(Δ⁻)]/(2β) on every edge."""
        return coupling_gradient_two_phase(plus, plus, edges, beta, minus, H)

    # -- v(A) in coupling space, and the time of one ± pair per A
    jump = task.basin_jump_rad
    b1 = min(cfg.beta_ref or beta_bound, beta_bound)
    b2 = 0.5 * b1
    n_avg = sorted({max(1, min(a, max_avg)) for a in (1, 16, 128, 1024)})
    v_avg: list[float] = []
    t_pair: list[float] = []
    noise_set = smp[: cfg.noise_samples]
    for a in n_avg:
        progress(f"noise spread, {a} averages", 0.2 + 0.1 * len(v_avg) / len(n_avg))
        vs, n_pairs, tic = [], 0, time.perf_counter()
        for sm in noise_set:
            if not await sm.visit(sub, task, min(16, max_avg), False):
                continue
            ds = []
            for _ in range(cfg.noise_means):
                plus, minus, ok = await _pair(sub, sm, b2 * sm.gain, a, jump)
                n_pairs += 1
                if ok:  # D = V(Δ⁺) − V(Δ⁻) = 2β·ĝ
                    ds.append(2.0 * b2 * grad(plus, minus, b2))
            if len(ds) >= 3:
                vs.append(_diff_variance(np.stack(ds)))
        t_pair.append((time.perf_counter() - tic) / max(n_pairs, 1))
        if not vs:
            raise LockLostError(f"noise: the ± clamps at β = {b2:.3g} do not stay locked")
        v_avg.append(float(np.mean(vs)))
    noise = NoiseModel.fit(n_avg, v_avg, floor_white=0.0)
    eff = float(np.sqrt(v_avg[1] * n_avg[1] / max(v_avg[0], 1e-300))) if len(n_avg) > 1 else 1.0
    slope, icpt = np.polyfit(np.asarray(n_avg, float), np.asarray(t_pair), 1)
    t1, t0_pair = max(float(slope), 0.0), max(float(icpt), 0.0)

    def time_of(a: int) -> float:  # free + ± reads per sample ≈ 1.5 ± pairs
        return 1.5 * (t0_pair + a * t1)

    # -- per-sample references at β₁ (the bound) and the shift to β₁/2: μ, tr Σ, d
    ref_avg = min(cfg.ref_averages, max_avg)
    g_ref: list[Array] = []
    shifts: list[Array] = []
    usable: list[_Sample] = []
    for k, sm in enumerate(smp):
        progress(f"references, sample {k + 1}/{len(smp)}", 0.3 + 0.3 * k / len(smp))
        await sm.visit(sub, task, min(64, max_avg), False)  # its state and targets from now on
        est = []
        for b in (b1, b2):
            acc, n_ok = np.zeros(len(edges)), 0
            for _ in range(2 * cfg.ref_repeats):  # (an invalid pair is read again)
                plus, minus, ok = await _pair(sub, sm, b * sm.gain, ref_avg, jump)
                if ok:
                    acc += grad(plus, minus, b)
                    n_ok += 1
                if n_ok == cfg.ref_repeats:
                    break
            if n_ok == 0:
                break
            est.append(acc / n_ok)
        if len(est) < 2:  # no valid pair (lock lost or a jump at every try): not used
            skipped += 1
            continue
        usable.append(sm)
        g_ref.append(est[0])
        shifts.append(est[1] - est[0])
    smp = usable
    if len(smp) < 4:
        raise LockLostError(
            f"noise: only {len(smp)} task samples give valid ± pairs at β = {b1:.3g}; "
            "calibrate the bias map (`calibrate transfer`) or lower --lock-safety"
        )
    G = np.stack(g_ref)
    D = np.stack(shifts)
    n_s = len(smp)
    v_ref = noise.var(ref_avg) / cfg.ref_repeats
    ref_noise2 = v_ref / (2 * b1**2)  # read noise of one reference (subtracted below)
    shift_noise2 = ref_noise2 + v_ref / (2 * b2**2)
    mu = G.mean(axis=0)
    d_mean = D.mean(axis=0)

    def spread_of(x: Array, m: Array) -> float:
        return float(((x - m) ** 2).sum(axis=1).mean() * n_s / (n_s - 1))

    signal = BatchSignal(
        mean_norm2=max(float(mu @ mu) - ref_noise2 / n_s, 0.0),
        spread_trace=max(spread_of(G, mu) - ref_noise2, 0.0),
        beta_ref=b1,
        shift_mean2=max(float(d_mean @ d_mean) - shift_noise2 / n_s, 0.0),
        shift_spread=max(spread_of(D, d_mean) - shift_noise2, 0.0),
    )
    c_mean = d_mean / (b2**2 - b1**2)  # (reported as c of b = cβ², were d all O(β²))
    # -- choose, verify on batch means of the samples
    betas = cfg.betas or list(np.geomspace(b2, b1, 8))
    rng = np.random.default_rng(cfg.seed)
    b_verify = min(batch, n_s)

    def choose(safety: float) -> tuple[list[Candidate], Candidate | None]:
        return choose_batch(
            betas, b1, max_avg, noise, signal, b_verify, target_cos, safety, time_of
        )

    def achievable() -> Candidate | None:
        return _best_at_most_averages(
            betas,
            b1,
            noise.best_averages(max_avg),
            lambda b, a: signal.cosine(noise, b, a, b_verify),
            time_of,
        )

    async def measure(beta: float, a: int, attempt: int, trials: int) -> list[float]:
        cosines = []
        for k in range(trials):
            progress(
                f"verify {k + 1}/{trials} (round {attempt + 1})",
                0.6 + 0.4 * (attempt + k / trials) / cfg.max_rounds,
            )
            pick = rng.choice(n_s, size=b_verify, replace=False)
            est, ref = [], []
            for i in pick:
                sm = smp[int(i)]
                if not await sm.visit(sub, task, a, True):
                    continue  # another locked state than the reference's: not comparable
                plus, minus, ok = await _pair(sub, sm, beta * sm.gain, a, jump)
                if ok:  # the controller skips an unlocked sample, as here
                    est.append(grad(plus, minus, beta))
                    ref.append(G[int(i)])
            if est:
                cosines.append(float(cosine(np.mean(est, axis=0), np.mean(ref, axis=0))))
        return cosines or [0.0]

    if b_verify < batch:
        log.warning(
            "noise: %d task samples locked, fewer than the batch of %d: chosen and verified "
            "for batches of %d (conservative)",
            n_s,
            batch,
            n_s,
        )
    cands, rounds = await _choose_and_verify(choose, achievable, measure, cfg, target_cos)
    if not rounds:
        raise RuntimeError(
            f"noise: no β ≤ {beta_bound:.3g} (lock bound) reaches batch-mean cosine "
            f"{target_cos} with ≤ {max_avg} averages; lower the target or raise "
            "limits.max_averages"
        )
    await sub.set_frequencies(task.omega)
    progress("noise done", 1.0)
    return NoiseResult(
        rounds=rounds,
        noise=noise,
        noise_averages=n_avg,
        noise_variances=v_avg,
        sigma_rad=sigma.tolist(),
        averaging_efficiency=eff,
        read_time_s=(t0_pair, t1),
        bias_coefficient=c_mean.tolist(),
        gradient_norm=float(np.sqrt(signal.signal(b_verify))),
        reference="richardson",
        target_rad=smp[0].targets.tolist(),
        omega=np.asarray(task.omega, dtype=np.float64).tolist(),
        target_cosine=target_cos,
        candidates=cands,
        **_chosen(rounds[-1], target_cos, time_of),
        duration_s=time.perf_counter() - t_start,
        batch=BatchReport(
            task=task.task,
            batch_size=b_verify,
            samples=n_s,
            skipped_samples=skipped,
            signal=signal,
            lock=lock,
            reference_noise2=ref_noise2,
        ),
    )
