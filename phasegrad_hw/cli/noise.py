"""``phasegrad-hw reproduce noise``: gradient quality against readout noise, β and averaging.

``phasegrad-hw reproduce noise --device FILE --json PATH [--seed S]`` measures, on a device
that reports its exact gradient (``Capability.EXACT_GRADIENT``, e.g. the CMOS and optical
emulators), the cosine between the two-phase (EP) estimate and the device's exact implicit
gradient for β ∈ {0.01, 0.03, 0.1, 0.3} × averages ∈ {1, 16, 256} × (one-sided, centred).
For each of ``settings`` random operating points (inputs U(−1.5, 1.5), other ω ~ N(0, 0.3²),
targets ``target_offset_rad`` from the free outputs with random signs) it repeats each cell
``repeats`` times from the same free/+β/−β reads (one-sided uses free and +β, centred +β and
−β). Prints the table and writes ``{"rows": [{"beta", "averages", "mode", "mean_cos",
"std_cos"}], ...}``. Reproducible under ``--seed`` (the device's noise stream is reseeded).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import typer
from pydantic import Field, ValidationError

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BETAS = (0.01, 0.03, 0.1, 0.3)
DEFAULT_AVERAGES = (1, 16, 256)


class NoiseOptions(StrictModel):
    """Validated options of ``reproduce noise``."""

    device: str = Field(min_length=1)
    json_path: Path | None = None
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


async def noise_table(substrate: Any, opts: NoiseOptions) -> dict[str, Any]:
    """Measure the table on a connected substrate with ``exact_gradient``; returns the JSON."""
    from phasegrad_hw.device.substrate import Capability
    from phasegrad_hw.errors import DeviceError
    from phasegrad_hw.physics.gradients import two_phase_gradient

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


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table: one line per (β, averages), one-sided and centred side by side."""
    by = {(r["beta"], r["averages"], r["mode"]): r for r in result["rows"]}
    keys = sorted({(r["beta"], r["averages"]) for r in result["rows"]})
    lines = [
        f"gradient cosine vs exact — {result['device']} ({result['backend']}), "
        f"seed {result['seed']}",
        f"{'beta':>6} {'avg':>5} {'one-sided':>18} {'centred':>18}",
    ]
    for b, a in keys:
        o, c = by[(b, a, "one_sided")], by[(b, a, "centred")]
        lines.append(
            f"{b:>6g} {a:>5d} {o['mean_cos']:>9.4f} ± {o['std_cos']:<6.4f} "
            f"{c['mean_cos']:>9.4f} ± {c['std_cos']:<6.4f}"
        )
    return "\n".join(lines)


def run_noise(opts: NoiseOptions) -> dict[str, Any]:
    import asyncio

    from phasegrad_hw.device.registry import open_substrate

    async def main() -> dict[str, Any]:
        sub = open_substrate(opts.device, seed=opts.seed)
        async with sub:
            return await noise_table(sub, opts)

    result = asyncio.run(main())
    if opts.json_path is not None:
        opts.json_path.parent.mkdir(parents=True, exist_ok=True)
        opts.json_path.write_text(json.dumps(result, indent=2))
    return result


def register(groups: object) -> None:
    reproduce: typer.Typer = groups.reproduce  # type: ignore[attr-defined]

    @reproduce.command("noise")
    def noise_cmd(
        device: str = typer.Option(..., "--device", help="Device file (an emulator)."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the table as JSON."),
        seed: int = typer.Option(0, "--seed", help="Noise seed (reproducible table)."),
        settings: int = typer.Option(6, "--settings", help="Random operating points."),
        repeats: int = typer.Option(8, "--repeats", help="Estimates per point and cell."),
    ) -> None:
        """Gradient cosine (two-phase vs exact) over β × averages × (one-sided, centred)."""
        from phasegrad_hw.errors import SubstrateError

        try:
            opts = NoiseOptions(
                device=device, json_path=json_path, seed=seed, settings=settings, repeats=repeats
            )
            result = run_noise(opts)
        except ValidationError as exc:
            typer.echo(format_validation_error(exc, "reproduce noise: "), err=True)
            raise typer.Exit(2) from None
        except (ConfigError, SubstrateError) as exc:
            typer.echo(f"reproduce noise: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(format_table(result))
        if json_path is not None:
            typer.echo(f"wrote {json_path}")
