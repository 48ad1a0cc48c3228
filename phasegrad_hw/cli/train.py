"""``phasegrad-hw demo`` and ``phasegrad-hw train``: option parsing and printing around
:func:`phasegrad_hw.studies.run_demo` and :func:`phasegrad_hw.studies.train_device`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError

from phasegrad_hw.cli import Groups


def _validate(cls: type[BaseModel], **kw: Any) -> Any:
    try:
        return cls.model_validate(kw)
    except ValidationError as exc:
        from phasegrad_hw.config import format_validation_error

        typer.echo(format_validation_error(exc, "--"), err=True)
        raise typer.Exit(2) from None


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def register(groups: Groups) -> None:
    app = groups.app

    @app.command()
    def demo(
        json_path: Path | None = typer.Option(None, "--json", help="Write the result JSON here."),
        epochs: int = typer.Option(40, help="Training epochs."),
        seed: int = typer.Option(0, help="Seed of the initial ω, the data and the sample order."),
        engine: str = typer.Option(
            "loop",
            help="loop (async hardware loop on the simulated device) or engine (vectorised "
            "physics; same update rule).",
        ),
        readout: str = typer.Option(
            "mean_phase",
            help="mean_phase (loss and decision on the outputs' common phase), difference, "
            "template, or argmax_cos (published).",
        ),
        params: str = typer.Option("both", help="omega, K or both."),
        lr: float = typer.Option(0.03, help="Learning rate (ω and K)."),
        margin: float = typer.Option(0.3, help="Target phase margin (rad)."),
    ) -> None:
        """Train /a/ vs /i/ on the default simulated 2+5+2 device with synthetic formants."""
        from rich.console import Console

        from phasegrad_hw.cli.progress import RichProgress
        from phasegrad_hw.studies import DemoOptions, run_demo

        o = _validate(
            DemoOptions,
            epochs=epochs,
            seed=seed,
            engine=engine,
            readout=readout,
            lr=lr,
            params=params,
            margin=margin,
        )
        con = Console()
        con.print(
            f"[bold]phasegrad-hw demo[/]: /a/ vs /i/ (synthetic formants), {o.epochs} epochs, "
            f"{o.engine}, params {o.params}, readout {o.readout}"
        )
        with RichProgress(con) as bar:
            res = run_demo(o, observers=[bar], progress=bar)
        _write_json(json_path, res)
        con.print(f"device: {res['device']}")
        con.print(
            f"final test accuracy: [bold]{100 * res['final_test_accuracy']:.1f} %[/] "
            f"({res['skipped_samples']} samples skipped) in {res['seconds']:.1f} s"
        )
        if json_path is not None:
            con.print(f"results written to {json_path}")

    @app.command()
    def train(
        device: str = typer.Option(..., help="Device file (TOML/YAML/JSON) or URI."),
        task: str = typer.Option(
            "vowels:a,i",
            help="vowels:a,i (any of a,e,i,o,u), xor, digits, csv:PATH, mnist:DIR.",
        ),
        label_column: str | None = typer.Option(
            None, help="csv:PATH tasks: the label column (default: the last column)."
        ),
        data: Path | None = typer.Option(None, help="Hillenbrand-format CSV (else synthetic)."),
        params: str = typer.Option("omega", help="omega, K or both."),
        epochs: int = typer.Option(200, help="Total epochs."),
        seed: int = typer.Option(0, help="Seed (initial ω, data split, sample order)."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the result JSON here."),
        store: Path | None = typer.Option(None, help="Run store (SQLite); checkpoint every epoch."),
        resume: str | None = typer.Option(None, help="Resume this run id from --store."),
        readout: str = typer.Option("template", help="template, argmax_cos or difference."),
        init: str = typer.Option("random", help="random or spectral."),
        lr: float = typer.Option(1e-3, help="Learning rate (ω and K)."),
        beta: float = typer.Option(0.1, help="Nudge strength β."),
        mode: str = typer.Option("one_sided", help="one_sided or centred."),
        averages: int = typer.Option(1, help="Reads averaged per state."),
        telemetry: str | None = typer.Option(
            None,
            help="mqtt://[USER:PASS@]HOST:PORT/BENCH/DEVICE[?step_s=S]: publish status, "
            "epoch metrics and step diagnostics over MQTT.",
        ),
        transfer: str = typer.Option(
            "auto",
            help="Bias map: auto (<device>.transfer.json next to the device file if "
            "saved by `calibrate transfer`), none (nominal curve) or a map's path.",
        ),
    ) -> None:
        """Train a device with the hardware loop (EP, hardware in the loop)."""
        from rich.console import Console

        from phasegrad_hw.cli.progress import RichProgress
        from phasegrad_hw.errors import ConfigError, SubstrateError
        from phasegrad_hw.learning.tasks import TaskError
        from phasegrad_hw.studies import TrainOptions, resume_options, train_device

        con = Console()
        cfg: dict[str, Any] = {
            "device": device,
            "task": task,
            "params": params,
            "epochs": epochs,
            "seed": seed,
            "readout": readout,
            "init": init,
            "lr": lr,
            "beta": beta,
            "mode": mode,
            "averages": averages,
            "transfer": transfer,
            "label_column": label_column,
        }
        if resume is not None:
            if store is None:
                typer.echo("--resume: needs --store PATH (the run store holding the run)", err=True)
                raise typer.Exit(2)
            cfg, saved_data = resume_options(store, resume, cfg)
            data = data if data is not None else saved_data
        o = _validate(TrainOptions, **cfg)
        if telemetry is not None:  # a bad URI fails now, not after the device is open
            from phasegrad_hw.fleet.telemetry import open_telemetry

            try:
                open_telemetry(telemetry)
            except ConfigError as exc:
                typer.echo(str(exc), err=True)
                raise typer.Exit(2) from None
        try:
            with RichProgress(con) as bar:
                run = train_device(
                    o,
                    data=data,
                    store=store,
                    resume=resume,
                    telemetry=telemetry,
                    observers=[bar],
                    notify=con.print,
                )
                res = asyncio.run(run)
        except (ConfigError, SubstrateError) as exc:
            typer.echo(f"train: {exc} (device left safe)", err=True)
            raise typer.Exit(2) from None
        except TaskError as exc:  # raised before any device is opened
            typer.echo(f"train: {exc}", err=True)
            raise typer.Exit(2) from None
        _write_json(json_path, res)
        if "summary" in res:
            con.print(res["summary"])
        con.print(
            f"final test accuracy: [bold]{100 * res['final_test_accuracy']:.1f} %[/] after "
            f"{res['epochs']} epochs in {res['seconds']:.1f} s ({res['skipped_samples']} skipped)"
        )
        if "run_id" in res:
            con.print(f"run id: {res['run_id']} (store {store})")
        if json_path is not None:
            con.print(f"results written to {json_path}")
