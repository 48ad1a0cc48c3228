"""``phasegrad-hw calibrate {symmetry,stability,transfer,noise,all}``.

``phasegrad-hw calibrate ROUTINE --device DEVICE --out DIR [--json PATH] [--seed S]``
opens DEVICE (anything ``train`` accepts: a device file or a URI) with
:func:`phasegrad_hw.device.registry.open_substrate`, runs the routine(s) of
:mod:`phasegrad_hw.calibration` with a progress bar, prints the summary (PASS/FAIL against
the device file's ``calibration`` thresholds) and writes ``DIR/report.json``,
``DIR/summary.txt`` and the PNG figures — all-or-nothing. ``--json PATH`` writes the
report JSON there as well; its ``symmetry`` part is ``{"asymmetry", "uncertainty",
"passed", "non_odd", "edges": [{"i", "j", "k_ij", "k_ji", "asymmetry"}]}``.

A transfer map saved next to a device file (``<stem>.transfer.json``) is installed before
the other routines run (``--no-use-transfer`` to skip); ``transfer`` (and ``all``) save the
new map there (``--no-save-transfer`` to skip) and in DIR. Exit code 0 when every check
passed, 1 when a check failed, 2 on bad input or a device error (the device is left safe).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Literal

import typer
from pydantic import Field, ValidationError

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.errors import ConfigError

log = logging.getLogger(__name__)

Routine = Literal["symmetry", "stability", "transfer", "noise", "all"]


class CalibrateOptions(StrictModel):
    """Validated options of ``calibrate``."""

    routine: Routine
    device: str = Field(min_length=1)
    out: Path
    json_path: Path | None = None
    seed: int = 0
    figures: bool = True
    use_transfer: bool = True
    save_transfer: bool = True


async def run(opts: CalibrateOptions, progress: bool = True) -> int:
    """Open, calibrate, write; returns the exit code (0 pass, 1 a check failed)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from phasegrad_hw.calibration.report import run_calibration, save_report
    from phasegrad_hw.device.frequency_map import transfer_path
    from phasegrad_hw.device.registry import open_substrate

    use = opts.use_transfer and opts.routine != "transfer"
    sub = open_substrate(opts.device, seed=opts.seed, transfer="auto" if use else None)
    device_file = Path(opts.device) if "://" not in opts.device else None
    tpath = transfer_path(device_file) if device_file is not None else None
    with Progress(
        TextColumn("{task.description:<40}"),
        BarColumn(),
        TimeElapsedColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task(f"calibrate {opts.routine}", total=1.0)

        def tick(message: str, fraction: float) -> None:
            bar.update(task, description=message[:40], completed=min(max(fraction, 0.0), 1.0))

        async with sub:
            report = await run_calibration(sub, opts.routine, seed=opts.seed, progress=tick)
    save_report(report, opts.out, opts.json_path, figures=opts.figures)
    if report.transfer is not None:
        report.transfer.map.save(opts.out / "transfer.json")
        if opts.save_transfer and tpath is not None:
            report.transfer.map.save(tpath)
    typer.echo(report.summary_text())
    also = f" and {opts.json_path}" if opts.json_path else ""
    typer.echo(f"wrote {opts.out}/report.json{also}")
    return 0 if report.passed else 1


def register(groups: object) -> None:
    calibrate: typer.Typer = groups.calibrate  # type: ignore[attr-defined]

    def _command(routine: Routine) -> None:
        helps = {
            "symmetry": "Response matrix, asymmetry, per-edge K_ij vs K_ji, non-odd H test.",
            "stability": "Lock check, phase margins, λ_min, lock range per edge.",
            "transfer": "Bias → frequency sweep, monotone fit, install and save the map.",
            "noise": "Readout noise; β and averages for the target gradient cosine.",
            "all": "Every routine: transfer, symmetry, stability, noise.",
        }

        @calibrate.command(routine, help=helps[routine])
        def cmd(
            device: str = typer.Option(..., "--device", help="Device file or URI."),
            out: Path = typer.Option(..., "--out", help="Output directory (report, figures)."),
            json_path: Path | None = typer.Option(None, "--json", help="Also write the JSON here."),
            seed: int = typer.Option(0, "--seed", help="Seed (operating point, device noise)."),
            figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw PNG figures."),
            use_transfer: bool = typer.Option(
                True,
                "--use-transfer/--no-use-transfer",
                help="Install <device>.transfer.json first if it exists.",
            ),
            save_transfer: bool = typer.Option(
                True,
                "--save-transfer/--no-save-transfer",
                help="Save a new transfer map next to the device file.",
            ),
            progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
        ) -> None:
            from phasegrad_hw.errors import SubstrateError

            try:
                opts = CalibrateOptions(
                    routine=routine,
                    device=device,
                    out=out,
                    json_path=json_path,
                    seed=seed,
                    figures=figures,
                    use_transfer=use_transfer,
                    save_transfer=save_transfer,
                )
                code = asyncio.run(run(opts, progress))
            except ValidationError as exc:
                typer.echo(format_validation_error(exc, f"calibrate {routine}: "), err=True)
                raise typer.Exit(2) from None
            except (ConfigError, SubstrateError, ValueError, RuntimeError) as exc:
                typer.echo(
                    f"calibrate {routine}: {exc} (device left safe; nothing written)", err=True
                )
                raise typer.Exit(2) from None
            raise typer.Exit(code)

    for r in ("symmetry", "stability", "transfer", "noise", "all"):
        _command(r)
