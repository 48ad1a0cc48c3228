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
new map in DIR and next to the device file, ``noise`` (and ``all``) save the chosen β,
averages and mode (``noise.json``, ``<stem>.noise.json``) the same way — ``train`` picks
both up. On a device with held inputs ``noise`` chooses for mini-batch training of a task
(``--task``, default digits; ``--batch-size``, default ``train``'s; ``--samples`` measured,
default 1.25 batches): the batch-mean gradient cosine, β bounded by the measured lock margin
(:mod:`phasegrad_hw.calibration.noise`). Maps are never written next to a device file
inside the package's own ``examples/`` folder (nor with ``--no-save-maps``): they stay in
DIR and the command prints the ``train`` options that use them. Every file written is
printed. Exit code 0 when every check passed, 1 when a check failed, 2 on bad input or a
device error (the device is left safe), 128 + n on signal n (SIGINT, SIGTERM, SIGHUP; the
device is left safe, nothing is written).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import Field, ValidationError

from phasegrad_hw.cli import fail, user_error
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
    task: str | None = None  # noise on a held-input device: the task trained (default digits)
    batch_size: int | None = Field(default=None, ge=1)  # default: train's batch for the device
    samples: int | None = Field(default=None, ge=4)  # task samples (default: 1.25 batches)


async def run(
    opts: CalibrateOptions, progress: bool = True, opened: list[bool] | None = None
) -> int:
    """Open, calibrate, write; returns the exit code (0 pass, 1 a check failed).
    ``opened`` gets ``True`` appended once the device is connected."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from phasegrad_hw.calibration.report import (
        NoiseSettings,
        map_home,
        noise_path,
        run_calibration,
        save_report,
    )
    from phasegrad_hw.device.frequency_map import transfer_path
    from phasegrad_hw.device.registry import open_substrate

    use = opts.use_transfer and opts.routine != "transfer"
    sub = open_substrate(opts.device, seed=opts.seed, transfer="auto" if use else None)
    home = map_home(opts.device) if opts.save_transfer else None
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
            if opened is not None:
                opened.append(True)
            samples, batch = None, opts.batch_size
            if opts.routine in ("noise", "all") and (sub.model.roles.held or opts.task):
                samples, batch = _noise_samples(opts, sub.model)
            report = await run_calibration(
                sub,
                opts.routine,
                seed=opts.seed,
                progress=tick,
                task_samples=samples,
                batch_size=batch,
            )
    written = save_report(report, opts.out, opts.json_path, figures=opts.figures)
    use_with: list[str] = []
    if report.transfer is not None:
        written.append(opts.out / "transfer.json")
        report.transfer.map.save(written[-1])
        if home is not None:
            written.append(transfer_path(home))
            report.transfer.map.save(written[-1])
        else:
            use_with.append(f"--transfer {opts.out / 'transfer.json'}")
    if report.noise is not None:
        ns = NoiseSettings.from_result(report.device, report.created, report.noise)
        written.append(opts.out / "noise.json")
        ns.save(written[-1])
        if home is not None:
            written.append(noise_path(home))
            ns.save(written[-1])
        else:
            use_with.append(f"--noise {opts.out / 'noise.json'}")
    typer.echo(report.summary_text())
    for path in written:
        typer.echo(f"wrote {path}")
    if use_with and "://" not in opts.device:
        why = "inside the package's examples" if opts.save_transfer else "--no-save-maps"
        typer.echo(
            f"maps not saved next to the device file ({why}); train with {' '.join(use_with)}"
        )
    elif use_with:
        typer.echo(f"train with {' '.join(use_with)}")
    return 0 if report.passed else 1


def _noise_samples(opts: CalibrateOptions, model: Any) -> tuple[Any, int]:
    """Task samples for ``noise`` (the held-input chips train mini-batches of a task: β and
    averages are chosen for its batch-mean gradient) and the batch size (``--batch-size``,
    else ``train``'s for the device)."""
    from phasegrad_hw.studies.layered_training import noise_samples

    task = opts.task or "digits"
    if opts.task is None:
        log.info("calibrate noise: task digits (the default; --task to choose)")
    samples, batch = noise_samples(
        opts.device,
        model,
        task,
        seed=opts.seed,
        n=opts.samples or (None if opts.batch_size is None else math.ceil(1.25 * opts.batch_size)),
    )
    return samples, opts.batch_size or batch


def register(groups: object) -> None:
    calibrate: typer.Typer = groups.calibrate  # type: ignore[attr-defined]

    def _command(routine: Routine) -> None:
        helps = {
            "symmetry": "Response matrix, asymmetry, per-edge K_ij vs K_ji, non-odd H test.",
            "stability": "Lock check, phase margins, λ_min, lock range per edge.",
            "transfer": "Bias → frequency sweep, monotone fit, install and save the map.",
            "noise": "Readout noise; β and averages for the target gradient cosine (held-input "
            "chips: of a task's mini-batch mean, β within the lock margin).",
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
                "--save-maps/--no-save-maps",
                help="Save the transfer and noise maps next to the device file (never inside "
                "the package's examples folder).",
            ),
            progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
            task: str | None = typer.Option(
                None,
                "--task",
                help="noise: the task to be trained (its samples and clamp targets) [default: "
                "digits on a device with held inputs].",
            ),
            batch_size: int | None = typer.Option(
                None,
                "--batch-size",
                help="noise: mini-batch size of the training [default: train's for the device].",
            ),
            samples: int | None = typer.Option(
                None, "--samples", help="noise: task samples measured [default: 1.25 batches]."
            ),
        ) -> None:
            from phasegrad_hw.cli.signals import Interrupted, run_async
            from phasegrad_hw.errors import SubstrateError

            opened: list[bool] = []
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
                    task=task,
                    batch_size=batch_size,
                    samples=samples,
                )
                code = run_async(run(opts, progress, opened))
            except ValidationError as exc:
                fail(format_validation_error(exc, f"calibrate {routine}: "))
            except Interrupted as exc:
                safe = " (device left safe)" if opened else ""
                fail(f"calibrate {routine}: {exc}{safe}; nothing written", exc.exit_code)
            except (ConfigError, SubstrateError, ValueError, RuntimeError, OSError) as exc:
                safe = " (device left safe)" if opened else ""
                fail(f"calibrate {routine}: {user_error(exc) or exc}{safe}; nothing written")
            raise typer.Exit(code)

    for r in ("symmetry", "stability", "transfer", "noise", "all"):
        _command(r)
