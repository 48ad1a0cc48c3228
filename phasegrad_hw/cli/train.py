"""``phasegrad-hw demo`` and ``phasegrad-hw train``.

``demo`` trains /a/ vs /i/ on the default device (examples/devices/simulated-2-5-2.toml, or
the same network built in code when the package is installed without the examples) with
synthetic formant data drawn from the Hillenbrand statistics (DESIGN.md §2). ``train`` runs
the hardware loop (:func:`phasegrad_hw.learning.loop.train_on_substrates`) on any device
file or URI, recording to the run store and resuming from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from phasegrad_hw.cli import Groups

log = logging.getLogger(__name__)

DEFAULT_DEVICE_NAME = "simulated-2-5-2.toml"
DEFAULT_DEVICE_SEED = 0  # the default device file is vowel_2_5_2(default_rng(0))


def default_device_path() -> Path | None:
    """examples/devices/simulated-2-5-2.toml next to the package (source checkout), if any."""
    here = Path(__file__).resolve()
    for base in (here.parents[2], Path.cwd()):
        p = base / "examples" / "devices" / DEFAULT_DEVICE_NAME
        if p.exists():
            return p
    return None


def default_device_model() -> Any:
    """The default device model: the file if present, else the same network built in code."""
    from phasegrad_hw.device.presets import vowel_2_5_2
    from phasegrad_hw.device.registry import load_device_model

    p = default_device_path()
    if p is not None:
        return load_device_model(p)
    return vowel_2_5_2(np.random.default_rng(DEFAULT_DEVICE_SEED))


class DemoOptions(BaseModel):
    """Validated ``demo`` options."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(ge=1, le=10_000)
    seed: int = Field(ge=0)
    engine: Literal["engine", "loop"]
    readout: Literal["mean_phase", "difference", "template", "argmax_cos"]
    lr: float = Field(gt=0.0, le=1.0)
    params: Literal["omega", "K", "both"]
    margin: float = Field(gt=0.0, lt=1.5)


class TrainOptions(BaseModel):
    """Validated ``train`` options."""

    model_config = ConfigDict(extra="forbid")
    device: str = Field(min_length=1)
    task: str = Field(min_length=1)
    params: Literal["omega", "K", "both"]
    epochs: int = Field(ge=0, le=100_000)
    seed: int = Field(ge=0)
    readout: Literal["template", "argmax_cos", "difference", "mean_phase"]
    init: Literal["random", "spectral"]
    lr: float = Field(gt=0.0, le=1.0)
    beta: float = Field(gt=0.0, le=10.0)
    mode: Literal["one_sided", "centred"]
    averages: int = Field(ge=1)
    transfer: str = Field(default="auto", min_length=1)


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


def run_demo(
    epochs: int = 40,
    seed: int = 0,
    engine: str = "loop",
    readout: str = "mean_phase",
    lr: float = 0.03,
    progress: bool = True,
    params: str = "both",
    margin: float = 0.3,
) -> dict[str, Any]:
    """Train /a/ vs /i/ on the default device; returns the demo JSON dict."""
    from phasegrad_hw.learning.tasks import Encoding, synthetic_vowels

    t0 = time.perf_counter()
    model = default_device_model()
    data = synthetic_vowels(("a", "i"), seed=seed)
    enc = Encoding(readout=readout, margin=margin)  # type: ignore[arg-type]
    device = str(default_device_path() or f"{model.name} (built in code)")
    if engine == "engine":
        from phasegrad_hw.engine.ensemble import Ensemble
        from phasegrad_hw.engine.members import TrainConfig, member_for_model
        from phasegrad_hw.learning.ep import EPRule

        cfg = TrainConfig(epochs=epochs, rule=EPRule(lr_omega=lr, lr_k=lr, params=params))  # type: ignore[arg-type]
        ens = Ensemble(model, [member_for_model(model, seed, cfg)], data, enc, cfg)
        res = _with_progress(ens, epochs, progress)
        acc = float(res.test_accuracy[0])
        skipped = int(res.skipped[0])
    else:
        from phasegrad_hw.backends.simulated import SimulatedSubstrate
        from phasegrad_hw.learning.controller import EPConfig
        from phasegrad_hw.learning.ep import EPRule
        from phasegrad_hw.learning.loop import train_on_substrates

        async def go() -> tuple[float, int]:
            async with SimulatedSubstrate(model, seed=seed) as sub:
                r = await train_on_substrates(
                    [sub],
                    data,
                    enc,
                    EPConfig(rule=EPRule(lr_omega=lr, lr_k=lr, params=params)),  # type: ignore[arg-type]
                    epochs=epochs,
                    seed=seed,
                    progress=progress,
                    train_eval="online",
                )
            return r.final_test_accuracy, r.state.skipped_samples

        acc, skipped = asyncio.run(go())
    return {
        "final_test_accuracy": acc,
        "epochs": epochs,
        "seconds": time.perf_counter() - t0,
        "skipped_samples": skipped,
        "device": device,
        "engine": engine,
        "readout": readout,
        "params": params,
        "margin": margin,
        "lr": lr,
        "task": "synthetic vowels a,i",
    }


def _with_progress(ens: Any, epochs: int, progress: bool) -> Any:
    if not progress:
        return ens.run()
    from rich.progress import Progress

    with Progress(transient=False) as bar:
        tid = bar.add_task("training", total=epochs)

        def on_epoch(s: Any) -> None:
            desc = f"epoch {s.epoch}/{epochs} train {100 * float(np.mean(s.train_accuracy)):5.1f} %"
            if s.test_accuracy is not None:
                desc += f" test {100 * float(np.mean(s.test_accuracy)):5.1f} %"
            bar.update(tid, advance=1, description=desc)

        return ens.run(on_epoch)


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
        res = run_demo(o.epochs, o.seed, o.engine, o.readout, o.lr, True, o.params, o.margin)
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
        task: str = typer.Option("vowels:a,i", help="vowels:a,i (any of a,e,i,o,u), xor, digits."),
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

        from phasegrad_hw.errors import ConfigError, SubstrateError

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
        }
        if resume is not None:
            if store is None:
                typer.echo("--resume: needs --store PATH (the run store holding the run)", err=True)
                raise typer.Exit(2)
            from phasegrad_hw.store import RunStore

            with RunStore(store) as rs:
                saved, _ = rs.load_checkpoint(resume)
            old = dict(saved.get("options", saved))
            old["epochs"] = epochs if epochs != 200 else old.get("epochs", epochs)
            cfg = {k: old.get(k, v) for k, v in cfg.items()}
        o = _validate(TrainOptions, **cfg)
        data_path = (
            data
            if data is not None
            else (Path(saved["data"]) if resume and saved.get("data") else None)
        )
        if telemetry is not None:  # a bad URI fails now, not after the device is open
            from phasegrad_hw.fleet.telemetry import open_telemetry

            try:
                open_telemetry(telemetry)
            except ConfigError as exc:
                typer.echo(str(exc), err=True)
                raise typer.Exit(2) from None
        try:
            res = asyncio.run(_train(o, data_path, store, resume, con, telemetry))
        except (ConfigError, SubstrateError) as exc:
            typer.echo(f"train: {exc} (device left safe)", err=True)
            raise typer.Exit(2) from None
        _write_json(json_path, res)
        con.print(
            f"final test accuracy: [bold]{100 * res['final_test_accuracy']:.1f} %[/] after "
            f"{res['epochs']} epochs in {res['seconds']:.1f} s ({res['skipped_samples']} skipped)"
        )
        if "run_id" in res:
            con.print(f"run id: {res['run_id']} (store {store})")
        if json_path is not None:
            con.print(f"results written to {json_path}")


async def _train(
    o: TrainOptions,
    data: Path | None,
    store: Path | None,
    resume: str | None,
    con: Any,
    telemetry: str | None = None,
) -> dict[str, Any]:
    from phasegrad_hw.device.registry import open_substrate
    from phasegrad_hw.learning.controller import EPConfig
    from phasegrad_hw.learning.ep import EPRule
    from phasegrad_hw.learning.loop import LoopState, train_on_substrates
    from phasegrad_hw.learning.tasks import Encoding, load_task

    t0 = time.perf_counter()
    dataset = load_task(o.task, data, seed=o.seed)
    enc = Encoding(readout=o.readout)
    ep = EPConfig(
        rule=EPRule(
            params=o.params, lr_omega=o.lr, lr_k=o.lr, beta=o.beta, mode=o.mode, averages=o.averages
        )
    )
    rs: Any = None
    run_id = resume
    start: LoopState | None = None
    if store is not None:
        from phasegrad_hw.store import RunStore

        rs = RunStore(store)
        if resume is not None:
            _, start = rs.load_checkpoint(resume)
            con.print(f"resuming run {resume} at epoch {start.epoch}")
        else:
            run_id = rs.create_run(
                {"options": o.model_dump(), "data": str(data) if data else None}, o.device
            )
    tm: Any = None
    if telemetry is not None:
        from phasegrad_hw.fleet.telemetry import open_telemetry

        tm = open_telemetry(telemetry)
        await tm.start()  # never blocks training: a bounded queue, sent in the background
    try:
        sub = open_substrate(o.device, seed=o.seed, transfer=o.transfer)
        src = sub.map_source
        con.print(f"bias map: {src if src in ('device', 'nominal') else f'calibrated ({src})'}")
        async with sub:

            async def save(state: LoopState) -> None:
                if rs is not None and run_id is not None:
                    rs.save_checkpoint(run_id, state)
                if tm is not None:
                    tm.on_epoch_end(state)

            res = await train_on_substrates(
                [sub],
                dataset,
                enc,
                ep,
                epochs=o.epochs,
                seed=o.seed,
                init=o.init,
                start=start,
                on_epoch_end=save,
                on_step=tm.on_step if tm is not None else None,
                progress=True,
            )
        out: dict[str, Any] = {
            "final_test_accuracy": res.final_test_accuracy,
            "epochs": res.state.epoch,
            "seconds": time.perf_counter() - t0,
            "skipped_samples": res.state.skipped_samples,
            "device": o.device,
        }
        if rs is not None and run_id is not None:
            rs.finish_run(run_id, out)
            out["run_id"] = run_id
        return out
    finally:
        if tm is not None:
            await tm.stop()
        if rs is not None:
            rs.close()
