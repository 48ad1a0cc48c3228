"""The noise study (``phasegrad-hw reproduce noise``): gradient quality against readout noise,
β and averaging (docs/design.md §2: readout noise is the real enemy).

It measures, on a device
that reports its exact gradient (``Capability.EXACT_GRADIENT``, e.g. the CMOS and optical
emulators), the cosine between the two-phase (EP) estimate and the device's exact implicit
gradient for β ∈ {0.01, 0.03, 0.1, 0.3} × averages ∈ {1, 16, 256} × (one-sided, centred).
For each of ``settings`` random operating points (inputs U(−1.5, 1.5), other ω ~ N(0, 0.3²),
targets ``target_offset_rad`` from the free outputs with random signs) it repeats each cell
``repeats`` times from the same free/+β/−β reads (one-sided uses free and +β, centred +β and
−β). The result is ``{"rows": [{"beta", "averages", "mode", "mean_cos", "std_cos", "n"}],
...}``. Reproducible under ``seed`` (the device's noise stream is reseeded).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.errors import ConfigError, DeviceError
from phasegrad_hw.physics.gradients import two_phase_gradient

__all__ = ["DEFAULT_AVERAGES", "DEFAULT_BETAS", "NoiseOptions", "noise_table", "run_noise"]

log = logging.getLogger(__name__)

DEFAULT_BETAS = (0.01, 0.03, 0.1, 0.3)
DEFAULT_AVERAGES = (1, 16, 256)


class NoiseOptions(StrictModel):
    """Validated options of ``reproduce noise``."""

    device: str = Field(min_length=1)
    seed: int = 0
    settings: int = Field(default=6, ge=1, le=1000)
    repeats: int = Field(default=8, ge=1, le=10_000)
    betas: list[float] = Field(default_factory=lambda: list(DEFAULT_BETAS), min_length=1)
    averages: list[int] = Field(default_factory=lambda: list(DEFAULT_AVERAGES), min_length=1)
    target_offset_rad: float = Field(default=0.5, gt=0.0, le=3.0)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0  # a zero estimate (readout codes did not move) carries no direction
    return float(a @ b / (na * nb))


async def noise_table(substrate: OscillatorSubstrate, opts: NoiseOptions) -> dict[str, Any]:
    """Measure the table on a connected substrate with ``exact_gradient``; returns the JSON."""

    if Capability.EXACT_GRADIENT not in substrate.capabilities:
        raise DeviceError(
            f"{type(substrate).__name__}: reports no exact gradient; "
            "the noise table needs an emulator (cmos, optical, simulated)"
        )
    model = substrate.model
    if Capability.RESEED in substrate.capabilities:
        substrate.reseed(opts.seed)
    lo, hi = model.limits.omega.min, model.limits.omega.max
    bmax = model.limits.beta_max
    for b in opts.betas:
        if not 0.0 < b <= bmax:
            raise ConfigError(f"betas: {b} is outside the device limit (0, {bmax}]")
    n = model.n
    inputs = np.asarray(model.roles.inputs, dtype=np.int64)
    outputs = model.outputs
    ref = model.roles.reference
    cells: dict[tuple[float, int, str], list[float]] = {
        (b, a, mode): []
        for b in opts.betas
        for a in opts.averages
        for mode in ("one_sided", "centred")
    }
    for s in range(opts.settings):
        rng = np.random.default_rng([opts.seed, s])
        for _attempt in range(20):
            w = np.clip(rng.normal(0.0, 0.3, n), lo, hi)
            w[inputs] = rng.uniform(max(lo, -1.5), min(hi, 1.5), len(inputs))
            await substrate.set_frequencies(w)
            probe = await substrate.read_phases(16)
            if probe.locked:
                break
        else:
            raise ConfigError("no locked operating point found in 20 draws; check the device")
        theta, _ = substrate.true_state()
        signs = rng.choice([-1.0, 1.0], len(outputs))
        target = np.angle(np.exp(1j * (theta[outputs] + signs * opts.target_offset_rad)))
        exact = np.asarray(substrate.exact_gradient(target), dtype=np.float64)
        exact[ref] = 0.0
        for b in opts.betas:
            for a in opts.averages:
                for _r in range(opts.repeats):
                    free = await substrate.read_phases(a)
                    await substrate.clamp(target, b)
                    plus = await substrate.read_phases(a)
                    await substrate.clamp(target, b, direction=-1)
                    minus = await substrate.read_phases(a)
                    await substrate.release()
                    g1 = two_phase_gradient(free.phases, plus.phases, b, ref=ref)
                    g2 = two_phase_gradient(free.phases, plus.phases, b, minus.phases, ref=ref)
                    cells[(b, a, "one_sided")].append(_cos(g1, exact))
                    cells[(b, a, "centred")].append(_cos(g2, exact))
    rows = [
        {
            "beta": b,
            "averages": a,
            "mode": mode,
            "mean_cos": float(np.mean(v)),
            "std_cos": float(np.std(v)),
            "n": len(v),
        }
        for (b, a, mode), v in cells.items()
    ]
    return {
        "device": model.name,
        "backend": model.backend,
        "seed": opts.seed,
        "settings": opts.settings,
        "repeats": opts.repeats,
        "target_offset_rad": opts.target_offset_rad,
        "rows": rows,
    }


async def run_noise(opts: NoiseOptions) -> dict[str, Any]:
    """Open ``opts.device`` (seeded with ``opts.seed``), measure :func:`noise_table`, close
    (the device is left safe however the coroutine ends, cancellation included)."""
    from phasegrad_hw.device.registry import open_substrate

    sub = open_substrate(opts.device, seed=opts.seed)
    async with sub:
        return await noise_table(sub, opts)
