"""The mini-batch choice of β and averages (calibration/noise.py): the predicted cosine of a
batch-mean gradient against a Monte-Carlo estimate on a synthetic population (known mean,
per-sample spread, readout noise and β-shift), the chooser's bound on β and its least
averages, and the measured calibration on a small held-input CMOS chip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.calibration.noise import (
    BatchSignal,
    NoiseConfig,
    NoiseModel,
    calibrate_noise,
    choose_batch,
)
from phasegrad_hw.calibration.report import run_calibration
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.presets import layered_chip
from phasegrad_hw.engine.layered import layered_couplings
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.physics.gradients import cosine
from phasegrad_hw.studies.layered_training import noise_samples

P = 400  # parameters (couplings)


def _population(rng: np.random.Generator, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample gradients g_s = μ + ξ_s (anisotropic spread) and β-shifts d_s."""
    mu = rng.normal(0.0, 1.0, P)
    scale = rng.uniform(0.5, 3.0, P)
    g = mu + rng.normal(0.0, 1.0, (n, P)) * scale
    d = 0.3 + 0.4 * rng.normal(0.0, 1.0, (n, P))
    return g, d


def _monte_carlo(
    g: np.ndarray,
    d: np.ndarray,
    noise: NoiseModel,
    beta: float,
    beta_ref: float,
    averages: int,
    batch: int,
    rng: np.random.Generator,
    trials: int = 1500,
) -> float:
    """Mean cosine of measured batch means (shift at β, centred readout noise of variance
    v(A)/(2β²) per sample, spread over P parameters unevenly) to the noiseless batch mean at
    β_ref."""
    f = (beta_ref - beta) / (0.5 * beta_ref)
    per_param = noise.var(averages) / (2.0 * beta**2)
    weights = np.linspace(0.2, 1.8, P)  # readout noise not isotropic either
    weights *= P / weights.sum()
    out = []
    for _ in range(trials):
        idx = rng.integers(0, len(g), batch)
        e = rng.normal(0.0, 1.0, (batch, P)) * np.sqrt(per_param * weights / P)
        truth = g[idx].mean(axis=0)
        meas = (g[idx] + f * d[idx] + e).mean(axis=0)
        out.append(cosine(meas, truth))
    return float(np.mean(out))


@pytest.mark.parametrize(
    "beta,averages,batch",
    [(0.01, 1, 32), (0.01, 4, 8), (0.004, 16, 32), (0.006, 2, 1), (0.008, 1, 64)],
)
def test_predicted_batch_cosine_matches_monte_carlo(beta: float, averages: int, batch: int) -> None:
    rng = np.random.default_rng(7)
    g, d = _population(rng)
    mu, dm = g.mean(axis=0), d.mean(axis=0)
    noise = NoiseModel(white_rad2=0.4, slow_rad2=0.002)
    sig = BatchSignal(
        mean_norm2=float(mu @ mu),
        spread_trace=float(((g - mu) ** 2).sum(axis=1).mean()),
        beta_ref=0.01,
        shift_mean2=float(dm @ dm),
        shift_spread=float(((d - dm) ** 2).sum(axis=1).mean()),
    )
    pred = sig.cosine(noise, beta, averages, batch)
    mc = _monte_carlo(g, d, noise, beta, 0.01, averages, batch, rng)
    assert 0.2 < mc < 0.999  # a regime where the cosine says something
    assert abs(pred - mc) < 0.01, (pred, mc)


def test_batch_averages_readout_noise_down() -> None:
    """The same readout noise costs a batch of 32 far fewer averages than one sample, and the
    per-sample spread counts as signal (more spread: fewer averages needed)."""
    noise = NoiseModel(white_rad2=0.4)
    sig = BatchSignal(mean_norm2=500.0, spread_trace=6000.0, beta_ref=0.006)
    a1 = noise.least_averages(sig.noise_room(0.002, 1, 0.9, 1.0))
    a32 = noise.least_averages(sig.noise_room(0.002, 32, 0.9, 1.0))
    # the gain is 32·(‖μ‖² + tr Σ/32)/(‖μ‖² + tr Σ) ≈ 3.4 here (not 32: spread is signal)
    assert a1 is not None and a32 is not None and 3 * a32 <= a1 <= 4 * a32
    wide = sig.model_copy(update={"spread_trace": 60000.0})
    a_wide = noise.least_averages(wide.noise_room(0.002, 32, 0.9, 1.0))
    assert a_wide is not None and a_wide < a32


def test_choice_respects_the_lock_bound_and_takes_the_least_averages() -> None:
    noise = NoiseModel(white_rad2=0.4, slow_rad2=1e-4, drift_rad2=1e-7)
    sig = BatchSignal(
        mean_norm2=500.0, spread_trace=6000.0, beta_ref=0.006, shift_mean2=5.0, shift_spread=50
    )
    betas = list(np.geomspace(0.001, 0.05, 20))  # most beyond the bound

    def time_of(a: int) -> float:
        return 0.01 + 1e-4 * a

    cands, best = choose_batch(betas, 0.006, 4096, noise, sig, 32, 0.9, 2.0, time_of)
    assert best is not None and best.averages is not None and best.predicted_cosine is not None
    assert all(c.beta <= 0.006 for c in cands) and best.beta <= 0.006
    assert len(cands) == sum(b <= 0.006 for b in betas)
    assert best.predicted_cosine >= 0.9
    assert best.predicted_cosine == pytest.approx(sig.cosine(noise, best.beta, best.averages, 32))
    # safety 2 on the error budget: 1/cos² − 1 within half of 1/0.9² − 1 …
    assert 1 / best.predicted_cosine**2 - 1 <= 0.5 * (1 / 0.81 - 1) + 1e-12
    # … and one average fewer would not be (or A = 1 already)
    if best.averages > 1:
        worse = sig.cosine(noise, best.beta, best.averages - 1, 32)
        assert 1 / worse**2 - 1 > 0.5 * (1 / 0.81 - 1)
    # the cheapest: no candidate is faster
    assert all(c.time_s is None or c.time_s >= (best.time_s or 0.0) for c in cands)
    # nothing reaches an impossible target under the bound
    _, none = choose_batch(betas, 0.006, 4, noise, sig, 1, 0.9999, 2.0, time_of)
    assert none is None


def _small_chip() -> DeviceModel:
    """A 4+2 bias → 6 → 3 held-input CMOS chip as `device new` makes it."""
    sizes = (4, 6, 3)
    K = layered_couplings(sizes, 2, 0)
    return layered_chip("cmos", sizes, [0.0, 0.5 * math.pi], K.tolist(), seed=0)


async def test_held_chip_needs_task_samples() -> None:
    model = _small_chip()
    async with CMOSSubstrate(model) as chip:
        with pytest.raises(ConfigError, match="task"):
            await calibrate_noise(chip, NoiseConfig())


async def test_held_chip_calibration_for_a_batch(tmp_path: Path) -> None:
    """A small held-input CMOS chip, its bias map calibrated first, then noise on real task
    samples (the runner's order): β within the measured lock bound, the batch mean verified
    at the target, every sample's clamp gain ≥ 1."""
    model = _small_chip()
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]])
    y = rng.integers(0, 3, 90)
    x = centres[y] + 0.25 * rng.normal(size=(90, 4))
    csv = tmp_path / "blobs.csv"
    csv.write_text(
        "a,b,c,d,label\n"
        + "".join(",".join(f"{v:.4f}" for v in r) + f",{c}\n" for r, c in zip(x, y, strict=True))
    )
    dev = tmp_path / "chip.toml"
    model.save(dev)
    samples, batch = noise_samples(str(dev), model, f"csv:{csv}", seed=0, n=10)
    assert batch == 32 and len(samples.labels) == 10
    async with CMOSSubstrate(model) as chip:
        report = await run_calibration(
            chip, ["transfer", "noise"], task_samples=samples, batch_size=8
        )
    res = report.noise
    assert res is not None and res.batch is not None and report.transfer is not None
    lock = res.batch.lock
    assert 0 < res.beta <= lock.beta_bound <= model.limits.beta_max
    assert min(lock.gains) >= 1.0
    assert res.batch.batch_size == 8 and res.target_cosine == 0.9
    assert res.batch.samples + res.batch.skipped_samples == 10
    assert res.passed and res.measured_cosine >= 0.9
    assert res.rounds[-1].measured_cosine == res.measured_cosine
