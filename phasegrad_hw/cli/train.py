"""``phasegrad-hw demo``, ``train`` and ``evaluate``: option parsing and printing around
:func:`phasegrad_hw.studies.run_demo`, :func:`~phasegrad_hw.studies.training.train_device` and
:func:`~phasegrad_hw.studies.training.evaluate_run`.

``train`` prints one line saying what it runs once the device model is known (the set-up
of the path taken — a held-input chip's phase encoding, cross-entropy and gain, not the
options of frequency inputs; :func:`~phasegrad_hw.studies.training.run_banner`), keeps
every run in the run store (default :func:`phasegrad_hw.store.default_store_path`;
``--store`` to choose, ``--no-store`` to opt out), shows a live curve on a terminal and one
line per epoch off one (and in ``--log-file``), and stops cleanly on SIGINT, SIGTERM and
SIGHUP (:mod:`phasegrad_hw.cli.signals`): device safe, run ``interrupted``, how to resume
printed.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError

from phasegrad_hw.cli import Groups, fail, one_line, user_error


def _validate(cls: type[BaseModel], **kw: Any) -> Any:
    try:
        return cls.model_validate(kw)
    except ValidationError as exc:
        from phasegrad_hw.config import format_validation_error

        fail(format_validation_error(exc, "--"))


def _write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _choices(name: str) -> str:
    from phasegrad_hw.studies.training import choices

    return ", ".join(choices(name))


def _resume_command(run_id: str, store: Path | None) -> str:
    from phasegrad_hw.store import default_store_path

    cmd = ["phasegrad-hw", "train", "--resume", run_id]
    if store is not None and store != default_store_path():
        cmd += ["--store", str(store)]
    return shlex.join(cmd)


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
        import asyncio

        from rich.console import Console

        from phasegrad_hw.cli.progress import EpochLines, RichProgress
        from phasegrad_hw.cli.signals import Interrupted, interruptible, run_async
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
        try:
            with RichProgress(con, enabled=con.is_terminal) as bar:
                watch = [bar] if con.is_terminal else [EpochLines(sys.stdout)]
                if o.engine == "engine":  # no device: a signal may stop it anywhere
                    with interruptible():
                        res = asyncio.run(run_demo(o, observers=watch, progress=bar))
                else:
                    res = run_async(run_demo(o, observers=watch, progress=bar))
        except Interrupted as exc:
            fail(f"demo: {exc}; nothing kept (device left safe)", exc.exit_code)
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
        *,
        device: str | None = typer.Option(
            None,
            help="Device file (TOML/YAML/JSON; backend simulated, cmos, optical, visa, daqmx) "
            "or URI (serial://PATH, serial://HOST:PORT, mqtt://…); required unless --resume.",
        ),
        task: str | None = typer.Option(
            None,
            help="vowels:a,i (two or more of a,e,i,o,u), xor, digits or digits:0,1,…, "
            "csv:PATH, mnist:DIR, fm[:N] (driven-bank features of FM signals), "
            "sensor-bank[:N] (a drive per sample; a device with roles.drive) "
            "[default: vowels:a,i]",
        ),
        data: Path | None = typer.Option(
            None, help="Hillenbrand-format CSV (vowel,F1,F2) [default: synthetic formants]."
        ),
        params: str | None = typer.Option(
            None,
            help=f"Parameters that learn: {_choices('params')} [default: both, or omega on a "
            "device that cannot set couplings].",
        ),
        epochs: int | None = typer.Option(
            None, help="Total epochs (counting those of a resumed run) [default: 20]."
        ),
        seed: int | None = typer.Option(
            None, help="Seed (initial ω, data split, sample order) [default: 0]."
        ),
        readout: str | None = typer.Option(
            None,
            help=f"Targets, loss and decision rule: {_choices('readout')} [default: mean_phase].",
        ),
        init: str | None = typer.Option(
            None, help=f"Initial ω: {_choices('init')} [default: random]."
        ),
        lr: float | None = typer.Option(
            None, help="Learning rate of ω and K (model units) [default: 0.03]."
        ),
        beta: float | None = typer.Option(
            None, help="Nudge strength β [default: the noise map's, else 0.1]."
        ),
        mode: str | None = typer.Option(
            None,
            help=f"Gradient estimate: {_choices('mode')} [default: the noise map's, else "
            "one_sided].",
        ),
        averages: int | None = typer.Option(
            None, help="Reads averaged per state [default: the noise map's, else 1]."
        ),
        margin: float | None = typer.Option(
            None, help="Target phase magnitude m, rad [default: 0.2]."
        ),
        transfer: str | None = typer.Option(
            None,
            help="Bias map: auto (<device>.transfer.json next to the device file, if saved by "
            "`calibrate transfer`), none (nominal curve) or a map's path [default: auto].",
        ),
        label_column: str | None = typer.Option(
            None, help="csv:PATH tasks: the label column [default: the last column]."
        ),
        noise: str | None = typer.Option(
            None,
            help="β/averages/mode from: auto (<device>.noise.json, if saved by `calibrate "
            "noise`), none, or a noise map's path [default: auto].",
        ),
        store: Path | None = typer.Option(
            None,
            help="Run store (SQLite) [default: $PHASEGRAD_HW_STORE, else "
            "~/.local/share/phasegrad-hw/runs.sqlite]; checkpoint every epoch.",
        ),
        no_store: bool = typer.Option(False, "--no-store", help="Keep nothing of this run."),
        resume: str | None = typer.Option(None, help="Resume this run id (or unique prefix)."),
        allow_changes: bool = typer.Option(
            False,
            "--allow-changes",
            help="With --resume: accept options that differ from the run's (recorded).",
        ),
        init_from: str | None = typer.Option(
            None, "--init-from", help="Start from the final ω and K of this stored run."
        ),
        operator: str | None = typer.Option(
            None, help="Who runs it [default: $PHASEGRAD_HW_OPERATOR, else $USER]."
        ),
        json_path: Path | None = typer.Option(
            None, "--json", help="Write the result (options, history, parameters) here."
        ),
        plot: Path | None = typer.Option(
            None, "--plot", help="Draw the training curve to this PNG (needs matplotlib)."
        ),
        log_file: Path | None = typer.Option(
            None, "--log-file", help="Append one time-stamped line per epoch to this file."
        ),
        telemetry: str | None = typer.Option(
            None,
            help="mqtt://[USER:PASS@]HOST:PORT/BENCH/DEVICE[?step_s=S]: publish status, "
            "epoch metrics and step diagnostics over MQTT.",
        ),
        check_gradients: int | None = typer.Option(
            None,
            "--check-gradients",
            help="Every N steps compare the EP estimate with the device's implicit gradient "
            "(emulators that report it); the cosine is logged, shown per epoch and stored.",
        ),
    ) -> None:
        """Train a device with the hardware loop (EP, hardware in the loop)."""
        from rich.console import Console

        from phasegrad_hw.cli.progress import EpochLines, RichProgress
        from phasegrad_hw.cli.signals import Interrupted, run_async
        from phasegrad_hw.errors import ConfigError
        from phasegrad_hw.store import default_store_path
        from phasegrad_hw.studies.training import (
            TrainOptions,
            TrainSession,
            check_resumed_maps,
            prepare,
            resume_options,
            train_device,
        )

        con = Console()
        if no_store and (resume is not None or store is not None):
            fail("--no-store: cannot be combined with --store or --resume")
        store_path = None if no_store else (store or default_store_path())
        given: dict[str, Any] = {
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
            "margin": margin,
            "transfer": transfer,
            "noise": noise,
            "label_column": label_column,
            "check_gradients": check_gradients,
        }
        explicit = {k: v for k, v in given.items() if v is not None}
        if data is not None and not data.is_file():
            fail(f"--data: {data} does not exist (a Hillenbrand-format CSV: vowel,F1,F2)")
        # stored runs name files absolutely: resume and evaluate work from any directory
        data = data.resolve() if data is not None else None
        for key in ("device", "transfer", "noise"):
            v = explicit.get(key)
            if v is not None and "://" not in v and v not in ("auto", "none") and Path(v).exists():
                explicit[key] = str(Path(v).resolve())
        changes: dict[str, Any] = {}
        saved: dict[str, Any] = {}
        if resume is not None:
            if init_from is not None:
                fail("--init-from: cannot be combined with --resume")
            try:
                cfg, saved_data, changes, saved = resume_options(
                    store_path,
                    resume,
                    {**explicit, "data": data},
                    allow_changes=allow_changes,
                )
            except Exception as exc:
                fail(f"train: {user_error(exc) or exc}")
            data = saved_data
        else:
            if device is None:
                fail("--device: required (a device file or URI), unless --resume RUN")
            cfg = explicit
        o = _validate(TrainOptions, **cfg)
        if telemetry is not None:  # a bad URI fails now, not after the device is open
            from phasegrad_hw.fleet.telemetry import open_telemetry

            try:
                open_telemetry(telemetry)
            except ConfigError as exc:
                fail(str(exc))
        try:
            setup = prepare(o)
            if resume is not None:
                check_resumed_maps(setup, saved, allow_changes)
        except ConfigError as exc:
            fail(f"train: {exc}")
        session = TrainSession()
        log_stream = None
        try:
            if log_file is not None:
                log_stream = log_file.open("a")
            with RichProgress(con, enabled=con.is_terminal) as bar:
                watch: list[Any] = [bar] if con.is_terminal else [EpochLines(sys.stdout)]
                if log_stream is not None:
                    watch.append(EpochLines(log_stream, stamp=True))
                res = run_async(
                    train_device(
                        setup,
                        data=data,
                        store=store_path,
                        resume=resume,
                        init_from=init_from,
                        init_store=store or default_store_path(),
                        changes=changes,
                        operator=operator,
                        telemetry=telemetry,
                        observers=watch,
                        notify=lambda m: con.print(m, highlight=False, soft_wrap=True),
                        session=session,
                    )
                )
        except Interrupted as exc:
            safe = " (device left safe)" if session.device_opened else ""
            if session.run_id is not None:
                fail(
                    f"train: {exc} at epoch {session.epoch}; run {session.run_id} kept as "
                    f"interrupted{safe}; resume: "
                    f"{_resume_command(session.run_id, store_path)}",
                    exc.exit_code,
                )
            fail(f"train: {exc}{safe}; nothing kept (--no-store)", exc.exit_code)
        except Exception as exc:
            msg = user_error(exc)
            if msg is None:
                raise
            safe = " (device left safe)" if session.device_opened else ""
            kept = f"; run {session.run_id} marked failed" if session.run_id else ""
            fail(f"train: {msg}{safe}{kept}")
        finally:
            if log_stream is not None:
                log_stream.close()
        _write_json(json_path, res)
        con.print(
            f"final test accuracy: [bold]{100 * res['final_test_accuracy']:.1f} %[/] after "
            f"{res['epochs']} epochs in {res['seconds']:.1f} s ({res['skipped_samples']} skipped)"
        )
        if "run_id" in res:
            con.print(f"run id: {res['run_id']} (store {store_path})", highlight=False)
        if json_path is not None:
            con.print(f"results written to {json_path}", highlight=False)
        if plot is not None:
            from phasegrad_hw.cli.runs import draw_curve

            try:
                r = setup.options
                draw_curve(res["history"], plot, f"{r.task} on {Path(r.device).name}")
            except ImportError:
                fail("--plot: needs matplotlib (pip install 'phasegrad-hw[plots]')")
            con.print(f"training curve written to {plot}", highlight=False)

    @app.command()
    def evaluate(
        run: str = typer.Option(..., "--run", help="Stored run whose final ω and K to load."),
        device: str = typer.Option(..., "--device", help="Device file or URI to load them on."),
        store: Path | None = typer.Option(
            None, help="Run store [default: $PHASEGRAD_HW_STORE, else the per-user store]."
        ),
        transfer: str = typer.Option(
            "auto", help="Bias map: auto, none or a map's path [default: auto]."
        ),
        data: Path | None = typer.Option(None, help="CSV [default: the run's own]."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the result here."),
    ) -> None:
        """Measure a stored run's parameters on a chip (same task, split and encoding)."""
        from phasegrad_hw.cli.signals import Interrupted, run_async
        from phasegrad_hw.studies.training import EvaluateOptions, TrainSession, evaluate_run

        eo = _validate(EvaluateOptions, run=run, device=device, transfer=transfer)
        if data is not None and not data.is_file():
            fail(f"--data: {data} does not exist")
        session = TrainSession()
        try:
            res = run_async(evaluate_run(eo, store=store, data=data, session=session))
        except Interrupted as exc:
            safe = " (device left safe)" if session.device_opened else ""
            fail(f"evaluate: {exc}{safe}", exc.exit_code)
        except Exception as exc:
            msg = user_error(exc)
            if msg is None:
                raise
            safe = " (device left safe)" if session.device_opened else ""
            fail(f"evaluate: {one_line(msg)}{safe}")
        _write_json(json_path, res)
        stored = res["stored_test_accuracy"]
        typer.echo(
            f"run {res['run']} (epoch {res['epoch']}) on {res['device']} "
            f"(bias map {res['map_source']}): test accuracy {100 * res['test_accuracy']:.1f} %, "
            f"train {100 * res['train_accuracy']:.1f} %"
            + ("" if stored is None else f" (stored: test {100 * stored:.1f} %)")
        )
