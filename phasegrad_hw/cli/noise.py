"""``phasegrad-hw reproduce noise --device FILE [--json PATH] [--seed S]``: option parsing,
the table and the JSON around :func:`phasegrad_hw.studies.run_noise`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from phasegrad_hw.cli import Groups, fail
from phasegrad_hw.config import format_validation_error
from phasegrad_hw.errors import ConfigError


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


def register(groups: Groups) -> None:
    @groups.reproduce.command("noise")
    def noise_cmd(
        device: str = typer.Option(..., "--device", help="Device file (an emulator)."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the table as JSON."),
        seed: int = typer.Option(0, "--seed", help="Noise seed (reproducible table)."),
        settings: int = typer.Option(6, "--settings", help="Random operating points."),
        repeats: int = typer.Option(8, "--repeats", help="Estimates per point and cell."),
    ) -> None:
        """Gradient cosine (two-phase vs exact) over β × averages × (one-sided, centred)."""
        from phasegrad_hw.cli.signals import Interrupted, run_async
        from phasegrad_hw.errors import SubstrateError
        from phasegrad_hw.studies import NoiseOptions, run_noise

        try:
            opts = NoiseOptions(device=device, seed=seed, settings=settings, repeats=repeats)
            result = run_async(run_noise(opts))
        except ValidationError as exc:
            fail(format_validation_error(exc, "reproduce noise: "))
        except Interrupted as exc:
            fail(f"reproduce noise: {exc} (device left safe); nothing written", exc.exit_code)
        except (ConfigError, SubstrateError) as exc:
            fail(f"reproduce noise: {exc}")
        typer.echo(format_table(result))
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(result, indent=2))
            typer.echo(f"wrote {json_path}")
