"""Device training (``phasegrad-hw train``): open a device, load the task, record the run,
publish telemetry and run the hardware loop
(:func:`phasegrad_hw.learning.loop.train_on_substrates`).

A run recorded in a store is resumed from its last checkpoint with the options it was
started with (:func:`resume_options`); the loop's per-epoch reseeding makes the resumed run
end with the parameters of an uninterrupted one (docs/design.md §7).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.learning.loop import LoopObserver, LoopState

__all__ = ["DEFAULT_EPOCHS", "TrainOptions", "resume_options", "train_device"]

log = logging.getLogger(__name__)
DEFAULT_EPOCHS = 200


class TrainOptions(StrictModel):
    """Validated training options (stored with the run; ``resume`` reuses them). ``lr`` is
    the learning rate of ω and K (model units), ``beta`` the nudge strength, ``averages``
    the reads averaged per state, ``transfer`` the bias map (auto, none or a map's path)."""

    device: str = Field(min_length=1)
    task: str = Field(default="vowels:a,i", min_length=1)
    params: Literal["omega", "K", "both"] = "omega"
    epochs: int = Field(default=DEFAULT_EPOCHS, ge=0, le=100_000)
    seed: int = Field(default=0, ge=0)
    readout: Literal["template", "argmax_cos", "difference", "mean_phase"] = "template"
    init: Literal["random", "spectral"] = "random"
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    beta: float = Field(default=0.1, gt=0.0, le=10.0)
    mode: Literal["one_sided", "centred"] = "one_sided"
    averages: int = Field(default=1, ge=1)
    transfer: str = Field(default="auto", min_length=1)
    label_column: str | None = None  # csv:PATH tasks: the label column (default: the last)


def resume_options(
    store: Path, run_id: str, given: dict[str, Any]
) -> tuple[dict[str, Any], Path | None]:
    """Options of a stored run, for resuming it: every saved option wins over ``given``
    except ``epochs`` when it is not the default; returns (options, data CSV or None)."""
    from phasegrad_hw.store import RunStore

    with RunStore(store) as rs:
        saved, _ = rs.load_checkpoint(run_id)
    old = dict(saved.get("options", saved))
    epochs = given.get("epochs", DEFAULT_EPOCHS)
    old["epochs"] = epochs if epochs != DEFAULT_EPOCHS else old.get("epochs", epochs)
    data = saved.get("data")
    return {k: old.get(k, v) for k, v in given.items()}, Path(data) if data else None


async def train_device(
    o: TrainOptions,
    *,
    data: Path | None = None,
    store: Path | None = None,
    resume: str | None = None,
    telemetry: str | None = None,
    observers: Sequence[LoopObserver] = (),
    notify: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Train ``o.device`` and return the result JSON (final test accuracy, epochs, seconds,
    skipped samples, device, and ``run_id`` when recorded).

    ``store``: record the run and checkpoint every epoch (``resume``: continue that run);
    ``telemetry``: an ``mqtt://…`` URI to publish status, epoch metrics and step
    diagnostics; ``observers`` watch the loop as well (e.g. a progress display); ``notify``
    receives one-line messages for the person running it (bias map, resume point).
    """
    from phasegrad_hw.device.registry import open_substrate
    from phasegrad_hw.learning.controller import EPConfig
    from phasegrad_hw.learning.ep import EPRule
    from phasegrad_hw.learning.loop import LoopOptions, train_on_substrates
    from phasegrad_hw.learning.tasks import Encoding, load_task
    from phasegrad_hw.store import RunRecorder, RunStore
    from phasegrad_hw.studies import layered_training as lt

    model = lt.device_model_of(o.device)  # task checks before any device is opened
    if lt.is_held_input(model):
        assert model is not None
        return lt.train_held_inputs(
            o, model, data=data, store=store, resume=resume, telemetry=telemetry, notify=notify
        )
    t0 = time.perf_counter()
    dataset = load_task(o.task, data, seed=o.seed, label_column=o.label_column)
    if model is not None:
        lt.check_task_fits(dataset, model)
    enc = Encoding(readout=o.readout)
    ep = EPConfig(
        rule=EPRule(
            params=o.params, lr_omega=o.lr, lr_k=o.lr, beta=o.beta, mode=o.mode, averages=o.averages
        )
    )
    watchers: list[LoopObserver] = []
    rs = RunStore(store) if store is not None else None
    run_id = resume
    start: LoopState | None = None
    tm = None
    try:
        if rs is not None:
            if resume is not None:
                _, start = rs.load_checkpoint(resume)
                notify(f"resuming run {resume} at epoch {start.epoch}")
            else:
                config = {"options": o.model_dump(), "data": str(data) if data else None}
                run_id = rs.create_run(config, o.device)
            assert run_id is not None
            watchers.append(RunRecorder(rs, run_id))
        if telemetry is not None:
            from phasegrad_hw.fleet.telemetry import open_telemetry

            tm = open_telemetry(telemetry)
            await tm.start()  # never blocks training: a bounded queue, sent in the background
            watchers.append(tm)
        sub = open_substrate(o.device, seed=o.seed, transfer=o.transfer)
        src = sub.map_source
        notify(f"bias map: {src if src in ('device', 'nominal') else f'calibrated ({src})'}")
        async with sub:
            opts = LoopOptions(epochs=o.epochs, seed=o.seed, init=o.init, start=start)
            res = await train_on_substrates([sub], dataset, enc, ep, opts, [*watchers, *observers])
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
