"""``train`` on chip-scale layered devices with held inputs (docs/design.md §8).

A device file with ``input_encoding = "phase"`` describes a layered network (held inputs, bias
oscillators, one hidden layer, outputs; :func:`phasegrad_hw.engine.layered.layered_from_device`).
On the ``simulated`` backend the ideal device is exactly the physics of
:mod:`phasegrad_hw.physics.layered`, so training runs the vectorised, batched engine
(:func:`phasegrad_hw.engine.layered.train_layered`: free and ±β nudged locked states per
mini-batch, EP gradients, Adam) on the device's own network and coupling limits. Every other
device with held inputs (the emulated CMOS and optical chips, a driver or remote device that
declares ``held_phases``) trains through the hardware loop (:func:`controller_setup`: the
asyncio controller, held phases per sample, softmax cross-entropy clamp targets, mini-batches
and Adam with the engine's defaults, the locking projections). Measured on the emulated CMOS
64-64-10 chip (bias map from ``calibrate transfer``; β = 0.02 centred, 1 average, default
noise, mismatch and DACs; 8 epochs): test accuracy 93.9 / 91.1 / 93.3 % for seeds 0 / 1 / 2,
one epoch ≈ 31 s wall, 19 s CPU (benchmarks/bench_chip_controller.py).

The options of ``train`` that belong to the hardware loop keep their meaning where one exists
and are otherwise refused: ``--epochs``, ``--lr`` (coupling learning rate), ``--beta`` and
``--mode`` replace the engine's defaults (40 epochs, 3e-3, 0.02, centred) when they differ from
``train``'s own defaults; ``--params both`` also learns the frequencies; ``--readout`` must stay
at its default (the layered readout is softmax cross-entropy on sin θ_out, decided by argmax);
``--init spectral``, ``--averages`` > 1 (the ideal device reads exact phases), ``--resume`` and
``--telemetry`` are refused. ``--init random`` draws the initial couplings from ``--seed`` as
``device new`` does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.learning.chip import PhaseEncoding
from phasegrad_hw.learning.controller import EPConfig, Parameters
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.tasks import Dataset, TaskError, load_task

if TYPE_CHECKING:
    from phasegrad_hw.calibration.noise import TaskSamples
    from phasegrad_hw.engine.layered import LayeredConfig

log = logging.getLogger(__name__)

ENGINE_NAME = "vectorised layered engine (the ideal simulated device, batched)"


def device_model_of(device: str) -> DeviceModel | None:
    """The model of a device file (None for a URI: such a device describes itself)."""
    p = Path(device)
    if "://" in device or not p.is_file():
        return None
    return DeviceModel.load(p)


def check_task_fits(dataset: Dataset, model: DeviceModel) -> None:
    """Features vs the oscillators they drive, classes vs outputs (held-input devices need
    one output per class); a :class:`TaskError` naming both numbers."""
    feats = model.feature_oscillators or model.roles.drive  # a driven sensor bank: its drive
    role = "roles.held" if model.input_encoding == "phase" else "roles.inputs"
    role = role if model.feature_oscillators else "roles.drive"
    if dataset.n_features != len(feats):
        raise TaskError(
            f"--task {dataset.name}: {dataset.n_features} features, but {model.name} has "
            f"{len(feats)} input oscillators ({role})"
        )
    n_out = len(model.roles.outputs)
    if model.input_encoding == "phase" and dataset.n_classes > n_out:
        raise TaskError(
            f"--task {dataset.name}: {dataset.n_classes} classes, but {model.name} has "
            f"{n_out} outputs (roles.outputs; one per class)"
        )


def is_held_input(model: DeviceModel | None) -> bool:
    return model is not None and model.input_encoding == "phase"


def train_held_inputs(
    options: Any,
    model: DeviceModel,
    *,
    data: Path | None = None,
    store: Path | None = None,
    resume: str | None = None,
    telemetry: str | None = None,
    notify: Callable[[str], None] = log.info,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Train a held-input layered device (module doc); ``options`` a
    :class:`phasegrad_hw.studies.training.TrainOptions`. ``notify`` receives the banner
    (:func:`~phasegrad_hw.studies.training.run_banner` with :func:`engine_banner`), then
    ``notes``, then the summary. Returns the result JSON:
    ``final_test_accuracy`` (at the kept, best-validation epoch), ``best_test_accuracy``,
    ``last_epoch_test_accuracy``, ``best_epoch``, ``epochs``, ``seconds``, ``seconds_per_epoch``,
    ``skipped_samples`` (unlocked training samples, all epochs), ``engine``, ``summary``,
    ``history`` and ``run_id`` when recorded."""
    from phasegrad_hw.engine.layered import (
        LayeredConfig,
        layered_from_device,
        phase_data,
        train_layered,
    )
    from phasegrad_hw.studies.training import DEFAULT_EPOCHS, TrainOptions, prepare, run_banner

    o: TrainOptions = options
    t0 = time.perf_counter()
    # what `train` fills in when the user gives nothing (β, averages, mode from prepare)
    defaults = prepare(TrainOptions(device=o.device, transfer="none", noise="none")).options
    refused = {
        "--readout": o.readout != defaults.readout,
        "--init spectral": o.init == "spectral",
        "--averages": o.averages != 1,
        "--resume": resume is not None,
        "--telemetry": telemetry is not None,
    }
    bad = [k for k, v in refused.items() if v]
    if bad:
        raise ConfigError(
            f"{', '.join(bad)}: not available for a held-input layered device (softmax "
            "readout, couplings drawn from --seed, exact reads, no resume or telemetry)"
        )
    dev = layered_from_device(model)
    base = LayeredConfig(hidden=dev.net.hidden[0], injection_strength=dev.injection, seed=o.seed)
    upd: dict[str, Any] = {}
    if o.epochs != DEFAULT_EPOCHS:
        upd["epochs"] = o.epochs
    if o.lr != defaults.lr:
        upd["lr_k"] = o.lr
    if o.beta != defaults.beta:
        upd["beta"] = o.beta
    if o.mode != defaults.mode:
        upd["mode"] = o.mode
    if o.params == "both":
        upd["lr_omega"] = upd.get("lr_k", base.lr_k)
    cfg = LayeredConfig.model_validate({**base.model_dump(), **upd})
    dataset = load_task(
        o.task, data, seed=o.seed, label_column=o.label_column, val_fraction=cfg.val_fraction
    )
    check_task_fits(dataset, model)
    how = engine_banner(model, cfg)
    for line in (run_banner(o, data=data, store=store, how=how, epochs=cfg.epochs), *notes):
        notify(line)
    splits = phase_data(dataset, model.input_phase_range_rad)
    rs = run_id = None
    if store is not None:
        from phasegrad_hw.store import RunStore

        rs = RunStore(store)
        run_id = rs.create_run(
            {"options": o.model_dump(), "data": str(data) if data else None,
             "engine": "layered", "layered": cfg.model_dump()},
            o.device,
        )  # fmt: skip
    try:
        run = train_layered(cfg, splits, device=dev)
        seconds = time.perf_counter() - t0
        best = max((r.test_accuracy for r in run.history), default=run.test_accuracy)
        n_ep = len(run.history)
        out: dict[str, Any] = {
            "final_test_accuracy": run.test_accuracy,
            "best_test_accuracy": best,
            "last_epoch_test_accuracy": run.history[-1].test_accuracy if run.history else None,
            "best_epoch": run.best_epoch,
            "val_accuracy": run.val_accuracy,
            "epochs": n_ep,
            "seconds": seconds,
            "seconds_per_epoch": sum(r.wall_s for r in run.history) / max(n_ep, 1),
            "skipped_samples": sum(r.unlocked for r in run.history),
            "device": o.device,
            "engine": "layered",
            "summary": (
                f"{model.name}: held-input layered device {dev.net.n_in}+{dev.net.n_bias} bias"
                f" → {dev.net.hidden[0]} → {dev.net.n_out}, trained by the {ENGINE_NAME}; "
                f"test accuracy {100 * run.test_accuracy:.1f} % at the best validation epoch "
                f"{run.best_epoch} of {n_ep}"
            ),
            "history": [
                {
                    "epoch": r.epoch,
                    "train_loss": r.train_loss,
                    "unlocked": r.unlocked,
                    "val_accuracy": r.val_accuracy,
                    "test_accuracy": r.test_accuracy,
                    "wall_s": r.wall_s,
                }
                for r in run.history
            ],  # fmt: skip
        }
        if rs is not None and run_id is not None:
            rs.finish_run(run_id, out)
            out["run_id"] = run_id
        notify(out["summary"])
        return out
    except BaseException:
        if rs is not None and run_id is not None:
            rs.set_status(run_id, "failed")
        raise
    finally:
        if rs is not None:
            rs.close()


def _held_inputs(model: DeviceModel) -> str:
    lo, hi = model.input_phase_range_rad
    return f"held inputs (phase encoding {lo:.3g}…{hi:.3g} rad)"


def _learning(params: str, optimizer: str, lr: float, decay: float) -> str:
    return f"params {params}, {optimizer} lr {lr:g} × {decay:g} per epoch"


def engine_banner(model: DeviceModel, cfg: LayeredConfig) -> str:
    """``train``'s banner set-up for a held-input device on the layered engine: phase
    encoding, softmax cross-entropy nudge on sin θ_out, what learns and how, β."""
    params = "both" if cfg.lr_omega > 0 else "K"
    return (
        f"{_held_inputs(model)}, softmax cross-entropy (scale {cfg.loss_scale:g}) "
        f"{cfg.nudge} nudge, {_learning(params, cfg.optimizer, cfg.lr_k, cfg.lr_decay)}, "
        f"batch {cfg.batch_size}, β {cfg.beta:g} {cfg.mode}, exact reads, {ENGINE_NAME}, "
        "kept at the best validation epoch"
    )


def controller_banner(model: DeviceModel, ep: EPConfig, enc: PhaseEncoding) -> str:
    """``train``'s banner set-up for a held-input device through the hardware loop
    (:func:`controller_setup`): phase encoding, softmax cross-entropy clamp targets with a
    gain κ per sample, what learns and how, β and averages."""
    r = ep.rule
    lr = r.lr_k if r.params != "omega" else r.lr_omega
    return (
        f"{_held_inputs(model)}, softmax cross-entropy (scale {enc.loss_scale:g}) clamp "
        f"targets with gain κ per sample ({enc.nudge} nudge), "
        f"{_learning(r.params, r.optimizer, lr, r.lr_decay)}, batch {ep.batch_size}, "
        f"β {r.beta:g} {r.mode} × {r.averages} avg, hardware loop"
    )


def uses_engine(model: DeviceModel | None) -> bool:
    """A held-input device on the ideal simulated backend: trained by the layered engine."""
    return is_held_input(model) and model is not None and model.backend == "simulated"


def controller_setup(
    options: Any, model: DeviceModel, noise_map: bool, *, couplings: bool = True
) -> tuple[EPConfig, PhaseEncoding, Parameters]:
    """The hardware loop's settings for a held-input layered device (docs/design.md §8): the
    layered engine's defaults (:class:`~phasegrad_hw.engine.layered.LayeredConfig`: centred
    β = 0.02, Adam lr 3e-3 × 0.93 per epoch, mini-batch 32, softmax scale 6, couplings learn
    and ω stays 0, K ~ N(0, 1/fan_in) from ``--seed`` clipped to the device's limits), with
    β, averages and mode from the noise map (``noise_map``) or the command line, and
    ``--lr`` / ``--params both`` as in :func:`train_held_inputs`. ``options`` a resolved
    :class:`~phasegrad_hw.studies.training.TrainOptions` (``prepare``). ``couplings``: whether
    the device can set its couplings; a device that cannot (a SCPI bench: the chip's coupling
    capacitors are fixed) learns the frequencies of its hidden and output oscillators
    instead (``params = "omega"`` at the same learning rate), from ω = 0 and the couplings
    the device file states."""
    from phasegrad_hw.engine.layered import LayeredConfig, init_params, layered_from_device
    from phasegrad_hw.studies.training import TrainOptions, prepare

    o: TrainOptions = options
    if o.init == "spectral" or o.readout != "mean_phase":
        raise ConfigError(
            "--init spectral, --readout: not available for a held-input layered device "
            "(softmax readout, couplings drawn from --seed)"
        )
    generic = prepare(TrainOptions(device=o.device, transfer="none", noise="none")).options
    base = LayeredConfig()
    dev = layered_from_device(model)

    def pick(key: str, layered: Any) -> Any:
        given = getattr(o, key)
        return given if noise_map or given != getattr(generic, key) else layered

    lr = base.lr_k if o.lr == generic.lr else o.lr
    params: Literal["omega", "K", "both"] = "both" if o.params == "both" else "K"
    if not couplings:
        log.warning("%s cannot set couplings: learning ω only, on the chip's own K", model.name)
        params = "omega"
    rule = EPRule(
        params=params,
        beta=pick("beta", base.beta),
        mode=pick("mode", base.mode),
        averages=pick("averages", 1),
        lr_k=lr if params != "omega" else 0.0,
        lr_omega=lr if params != "K" else 0.0,
        clip=100.0,  # (the engine does not clip; a bound against a corrupted read)
        basin_jump_rad=base.basin_jump_rad,
        optimizer=base.optimizer,
        lr_decay=base.lr_decay,
    )
    cfg = EPConfig(
        rule=rule,
        batch_size=base.batch_size,
        omega_lock_frac=base.omega_lock_frac,
        held_load_frac=base.held_load_frac,
    )
    if couplings:
        _, k_net = init_params(dev.net, base.init_scale, o.seed)
        K = np.empty(len(model.edges))
        K[dev.edge_of] = np.clip(k_net, dev.k_lo, dev.k_hi)
    else:
        K = model.coupling_values()
    enc = PhaseEncoding.for_device(model, base.loss_scale)
    return cfg, enc, Parameters(np.zeros(model.n), K)


def noise_samples(
    device: str,
    model: DeviceModel,
    task: str,
    *,
    seed: int = 0,
    n: int | None = None,
    data: Path | None = None,
    label_column: str | None = None,
) -> tuple[TaskSamples, int]:
    """What ``calibrate noise`` needs to choose β and averages for the training
    :func:`controller_setup` will run on a held-input device: ``n`` training samples of
    ``task`` (drawn with ``seed``; default: 1.25 mini-batches) as held phases with their labels,
    the training's clamp rule (softmax cross-entropy targets and gain), initial couplings
    (from ``seed``) and ω; and the training's mini-batch size."""
    from phasegrad_hw.calibration.noise import TaskSamples
    from phasegrad_hw.studies.training import TrainOptions, prepare

    dataset = load_task(task, data, seed=seed, label_column=label_column)
    check_task_fits(dataset, model)
    opts = prepare(TrainOptions(device=device, seed=seed, transfer="none", noise="none")).options
    cfg, enc, params = controller_setup(opts, model, False)
    batch = cfg.batch_size or 1  # (None: one sample per step)
    # default: a batch and a quarter (a sample that does not lock is skipped, the verified
    # batch stays full)
    count = min(n or math.ceil(1.25 * batch), len(dataset.y_train))
    idx = np.random.default_rng(seed).choice(len(dataset.y_train), size=count, replace=False)
    x = np.asarray(dataset.x_train, dtype=np.float64)[idx]
    samples = TaskSamples(
        held_rad=enc.held_phases(x),
        labels=np.asarray(dataset.y_train, dtype=np.int64)[idx],
        clamp=enc.clamp,
        couplings=params.coupling,
        omega=params.omega,
        basin_jump_rad=cfg.rule.basin_jump_rad,
        task=dataset.name,
    )
    return samples, batch
