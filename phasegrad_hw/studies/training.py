"""Device training (``phasegrad-hw train``) and evaluation (``phasegrad-hw evaluate``): open a
device, load the task, record the run, publish telemetry and run the hardware loop
(:func:`phasegrad_hw.learning.loop.train_on_substrates`).

Defaults that learn: the ``mean_phase`` set-up (outputs' common phase pulled to −m / +m, the
loss whose minimum is the nearest-template decision, docs/design.md §2), ω and K learning at
lr 0.03 — measured ≥ 95 % test accuracy on /a/ vs /i/ within :data:`DEFAULT_EPOCHS` epochs on
the simulated, CMOS and optical 2+5+2 devices.

Calibration feeds training (:func:`prepare`): the transfer map (``<stem>.transfer.json``) sets
frequencies, the noise map (``<stem>.noise.json``, :class:`~phasegrad_hw.calibration.report.
NoiseSettings`) supplies β, averages and estimate mode unless they are given explicitly.

Every run is kept (:func:`train_device` with a store): the device file's contents, the maps
used, all options, the package version and git revision, host and operator, per-epoch
metrics (with the loss) and the final parameters. A run is resumed from its last checkpoint
with the options it was started with (:func:`resume_options` refuses conflicting ones unless
changes are allowed, and then records them); the loop's per-epoch reseeding makes the resumed
run end with the parameters of an uninterrupted one (docs/design.md §7).
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.learning.loop import LoopObserver, LoopState

__all__ = [
    "DEFAULT_EPOCHS",
    "EvaluateOptions",
    "MapRecord",
    "TrainOptions",
    "TrainSession",
    "TrainSetup",
    "check_resumed_maps",
    "choices",
    "data_description",
    "evaluate_run",
    "prepare",
    "provenance",
    "resume_options",
    "run_banner",
    "train_device",
]

log = logging.getLogger(__name__)
DEFAULT_EPOCHS = 20
OPERATOR_ENV = "PHASEGRAD_HW_OPERATOR"
# options that define what a run computes (a resumed run must keep them)
RUN_DEFINING = (
    "device",
    "task",
    "params",
    "seed",
    "readout",
    "init",
    "lr",
    "beta",
    "mode",
    "averages",
    "transfer",
    "noise",
    "margin",
)


class TrainOptions(StrictModel):
    """Validated training options (stored with the run; ``resume`` reuses them). ``lr`` is
    the learning rate of ω and K (model units), ``beta`` the nudge strength, ``averages``
    the reads averaged per state, ``margin`` the target phase magnitude (rad). ``params``
    None: ω and K (``both``) on a device that can set couplings, else ω only. ``beta``,
    ``mode`` and ``averages`` left None come from the noise map (``noise``: auto, none or a
    path) or their defaults (0.1, one_sided, 1); ``transfer`` the bias map (auto, none or a
    path). Non-finite numbers are refused."""

    model_config = ConfigDict(**StrictModel.model_config, allow_inf_nan=False)

    device: str = Field(min_length=1)
    task: str = Field(default="vowels:a,i", min_length=1)
    params: Literal["omega", "K", "both"] | None = None
    epochs: int = Field(default=DEFAULT_EPOCHS, ge=0, le=100_000)
    seed: int = Field(default=0, ge=0)
    readout: Literal["mean_phase", "template", "argmax_cos", "difference"] = "mean_phase"
    init: Literal["random", "spectral"] = "random"
    lr: float = Field(default=0.03, gt=0.0, le=1.0)
    beta: float | None = Field(default=None, gt=0.0, le=10.0)
    mode: Literal["one_sided", "centred"] | None = None
    averages: int | None = Field(default=None, ge=1, le=1_000_000)
    margin: float = Field(default=0.2, gt=0.0, lt=1.5)
    transfer: str = Field(default="auto", min_length=1)
    noise: str = Field(default="auto", min_length=1)
    label_column: str | None = None  # csv:PATH tasks: the label column (default: the last)
    # every N steps compare the EP estimate with the device's implicit gradient (0: off)
    check_gradients: int = Field(default=0, ge=0, le=1_000_000)


def choices(name: str) -> list[str]:
    """The allowed values of a Literal option of :class:`TrainOptions` (for ``--help``)."""
    from typing import get_args

    ann = TrainOptions.model_fields[name].annotation
    out: list[str] = []
    for a in get_args(ann) or (ann,):
        out += [str(v) for v in get_args(a)] if get_args(a) else []
    return out


@dataclass(frozen=True)
class MapRecord:
    """A calibration map a run used: its path, SHA-256 and full text."""

    path: str
    sha256: str
    text: str

    @classmethod
    def read(cls, path: Path) -> MapRecord:
        raw = path.read_bytes()
        return cls(str(path), hashlib.sha256(raw).hexdigest(), raw.decode(errors="replace"))


@dataclass(frozen=True)
class TrainSetup:
    """What :func:`prepare` resolved: concrete options (β, mode, averages filled in), the maps
    that will be used (None: nominal curve / no noise map) and one-line notes for the user."""

    options: TrainOptions
    transfer: MapRecord | None
    noise: MapRecord | None
    notes: tuple[str, ...]

    def maps(self) -> dict[str, dict[str, str] | None]:
        def rec(m: MapRecord | None) -> dict[str, str] | None:
            return None if m is None else {"path": m.path, "sha256": m.sha256, "text": m.text}

        return {"transfer": rec(self.transfer), "noise": rec(self.noise)}


def _noise_map_path(o: TrainOptions) -> Path | None:
    from phasegrad_hw.calibration.report import noise_path

    if o.noise == "none":
        return None
    if o.noise == "auto":
        if "://" in o.device:
            return None
        p = noise_path(o.device)
        return p if p.exists() else None
    p = Path(o.noise)
    if not p.exists():
        raise ConfigError(
            f"--noise: {o.noise!r} — no such file (allowed: auto, none or the path of a noise "
            "map written by `calibrate noise`)"
        )
    return p


def prepare(o: TrainOptions) -> TrainSetup:
    """Resolve the maps of ``o`` and fill β, mode and averages (explicit > noise map >
    default); raises :class:`ConfigError` for a missing or invalid map."""
    from phasegrad_hw.calibration.report import NoiseSettings
    from phasegrad_hw.device.registry import saved_transfer_path

    notes: list[str] = []
    tpath = saved_transfer_path(o.device, o.transfer)
    npath = _noise_map_path(o)
    upd: dict[str, Any] = {}
    if npath is not None:
        ns = NoiseSettings.load(npath)
        taken = []
        for key in ("beta", "averages", "mode"):
            if getattr(o, key) is None:
                upd[key] = getattr(ns, key)
                taken.append(f"{key} {getattr(ns, key)}")
        kept = [k for k in ("beta", "averages", "mode") if getattr(o, k) is not None]
        msg = f"noise map {npath}: " + (", ".join(taken) if taken else "nothing taken")
        if kept:
            msg += f" ({', '.join(kept)} given on the command line)"
        notes.append(msg)
    defaults = {"beta": 0.1, "averages": 1, "mode": "one_sided"}
    for key, value in defaults.items():
        if getattr(o, key) is None and key not in upd:
            upd[key] = value
    full = o.model_copy(update=upd)
    TrainOptions.model_validate(full.model_dump())  # the noise map's values obey the limits
    return TrainSetup(
        full,
        None if tpath is None else MapRecord.read(tpath),
        None if npath is None else MapRecord.read(npath),
        tuple(notes),
    )


def data_description(task: str, data: Path | None) -> str:
    """What feeds the task, in words (``train``'s banner): the CSV, synthetic formants,
    FM signals through a driven bank or one quasi-static drive per sample."""
    kind = task.split(":")[0]
    if kind == "fm":
        return "FM signals through a driven sensor bank"
    if kind == "sensor-bank":
        return "quasi-static signals, one drive per sample"
    if data is not None:
        return f"data {data}"
    return "synthetic formants" if kind == "vowels" else "synthetic data"


def run_banner(
    o: TrainOptions, *, data: Path | None, store: Path | None, how: str, epochs: int
) -> str:
    """``train``'s one line saying what really runs, written once the device model is known:
    task and data, device, ``how`` (encoding, loss, rule and learning rates of the path
    taken), ``epochs`` (those that will run), seed and store."""
    where = store if store is not None else "none (--no-store)"
    return (
        f"train {o.task} ({data_description(o.task, data)}) on {o.device}: {how}, "
        f"{epochs} epochs, seed {o.seed}; store {where}"
    )


def _frequency_inputs(o: TrainOptions) -> str:
    """The banner's set-up for a device with frequency inputs (the options as given)."""
    return (
        f"frequency inputs, readout {o.readout}, margin {o.margin:g} rad, params {o.params}, "
        f"lr {o.lr:g}, β {o.beta:g} {o.mode} × {o.averages} avg"
    )


def _notes(setup: TrainSetup, changes: dict[str, Any] | None) -> list[str]:
    """What follows the banner on every path: the setup's notes, then a resumed run's
    ``changes``."""
    out = list(setup.notes)
    if changes:
        out.append(f"resume with changes (recorded): {changes}")
    return out


def _git_revision() -> str | None:
    import phasegrad_hw

    root = Path(phasegrad_hw.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("phasegrad-hw")
    except PackageNotFoundError:
        return "unknown"


def provenance(operator: str | None = None) -> dict[str, Any]:
    """Package version, git revision (source checkouts), host and operator (``operator``, else
    ``$PHASEGRAD_HW_OPERATOR``, else the login name)."""
    who = operator or os.environ.get(OPERATOR_ENV) or os.environ.get("USER")
    if not who:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = "unknown"
    return {
        "version": _version(),
        "git_revision": _git_revision(),
        "host": socket.gethostname(),
        "operator": who,
    }


def _file_record(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    raw = path.read_bytes()
    return {
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "text": raw.decode(errors="replace"),
    }


def _same_file(key: str, a: Any, b: Any) -> bool:
    """Two spellings of one file (``device``, ``transfer``, ``noise``)."""
    if key not in ("device", "transfer", "noise"):
        return False
    words = ("auto", "none")
    if any("://" in str(x) or str(x) in words for x in (a, b)):
        return False
    return Path(str(a)).resolve() == Path(str(b)).resolve()


def resume_options(
    store: Path | None,
    run_id: str,
    explicit: dict[str, Any],
    *,
    allow_changes: bool = False,
) -> tuple[dict[str, Any], Path | None, dict[str, Any], dict[str, Any]]:
    """Options of a stored run, for resuming it: (options, data CSV or None, changes, the
    run's stored config).

    ``explicit`` holds the options typed with ``--resume``. ``epochs`` may always be given
    (how far to train); any other that differs from the stored value is refused with a
    :class:`ConfigError` unless ``allow_changes`` — then it wins and is returned in
    ``changes`` ({name: [stored, new]}) for the run record. The data file must not change
    either."""
    from phasegrad_hw.store import RunStore

    with RunStore(store, create=False) as rs:
        saved, _ = rs.load_checkpoint(run_id)
    old = dict(saved.get("options", saved))
    changes: dict[str, Any] = {}
    for key, value in explicit.items():
        if key == "epochs" or value is None:
            continue
        if key == "data":
            before = saved.get("data")
            if before is not None and Path(str(value)).resolve() != Path(str(before)).resolve():
                changes["data"] = [before, str(value)]
            continue
        if key in old and old[key] != value and not _same_file(key, old[key], value):
            changes[key] = [old[key], value]
    if changes and not allow_changes:
        name, (a, b) = next(iter(changes.items()))
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise ConfigError(
            f"--resume {run_id}: --{name} {b!r} differs from the run's {a!r}{more}; drop it, "
            "or pass --allow-changes to resume with it (the change is recorded)"
        )
    merged = {k: v for k, v in old.items() if k in TrainOptions.model_fields}
    for key, (_, new) in changes.items():
        if key != "data":
            merged[key] = new
    if explicit.get("epochs") is not None:
        merged["epochs"] = explicit["epochs"]
    data = changes["data"][1] if "data" in changes else saved.get("data")
    return merged, Path(data) if data else None, changes, saved


def check_resumed_maps(setup: TrainSetup, saved: dict[str, Any], allow_changes: bool) -> None:
    """A resumed run must use the maps it was started with (compared by SHA-256)."""
    stored = saved.get("maps") or {}
    now = setup.maps()
    for kind in ("transfer", "noise"):
        if kind not in stored:
            continue  # a run recorded before maps were kept
        a, b = stored[kind], now[kind]
        ha, hb = str((a or {}).get("sha256")), str((b or {}).get("sha256"))
        if ha != hb and not allow_changes:
            was = f"{a['path']} (sha256 {ha[:12]})" if a else "none (nominal)"
            isn = f"{b['path']} (sha256 {hb[:12]})" if b else "none"
            raise ConfigError(
                f"--resume: the run used {kind} map {was}, now it would be {isn}; restore "
                f"it, or pass --{kind} PATH|none to choose, or --allow-changes"
            )


@dataclass
class TrainSession:
    """Filled in while :func:`train_device` runs, so a caller can report after an
    interruption or error: the store and run id, whether a device was opened, the last
    complete epoch, and the status (``running``, ``finished``, ``interrupted``, ``failed``)."""

    store: Path | None = None
    run_id: str | None = None
    device_opened: bool = False
    epoch: int = 0
    status: str = "starting"
    notes: list[str] = field(default_factory=list)


class _EpochTracker(LoopObserver):
    def __init__(self, session: TrainSession) -> None:
        self.session = session

    def on_epoch_end(self, state: LoopState) -> None:
        self.session.epoch = int(state.epoch)


def _plain_params(state: LoopState) -> dict[str, list[float]]:
    return {
        "omega": [float(x) for x in state.params.omega],
        "coupling": [float(x) for x in state.params.coupling],
    }


def load_run_parameters(store: Path | None, run_id: str) -> tuple[dict[str, Any], LoopState]:
    """A stored run's config and its latest checkpointed state (final parameters)."""
    from phasegrad_hw.store import RunStore

    with RunStore(store, create=False) as rs:
        return rs.load_checkpoint(run_id)


_NO_HELD_CHECK = (
    "--check-gradients: a held-input (chip-scale) device trains on cross-entropy clamp targets "
    "with a gain per sample, which its implicit gradient does not check; use a device with "
    "frequency inputs"
)


async def train_device(
    setup: TrainSetup,
    *,
    data: Path | None = None,
    store: Path | None = None,
    resume: str | None = None,
    init_from: str | None = None,
    init_store: Path | None = None,
    changes: dict[str, Any] | None = None,
    operator: str | None = None,
    telemetry: str | None = None,
    observers: Sequence[LoopObserver] = (),
    notify: Callable[[str], None] = log.info,
    session: TrainSession | None = None,
) -> dict[str, Any]:
    """Train the device of ``setup`` and return the result JSON (final test accuracy,
    epochs, seconds, skipped samples, device, final parameters, per-epoch history, and
    ``run_id`` when recorded).

    The first messages to ``notify`` are the banner (:func:`run_banner`: what really runs,
    once the device model is known — for a held-input device the phase encoding,
    cross-entropy and gain of the layered set-up, not the options of frequency inputs), the
    setup's notes and the ``changes`` of a resumed run.

    ``store``: record the run and checkpoint every epoch (``resume``: continue that run);
    ``init_from``: start from the final parameters of that run (in ``init_store``, default
    ``store``); ``telemetry``: an ``mqtt://…`` URI to publish status, epoch metrics and step
    diagnostics; ``observers`` watch the loop as well (e.g. a progress display); ``notify``
    receives one-line messages for the person running it (bias map, resume point);
    ``session`` is filled in as the run proceeds. A cancellation (a signal) leaves the
    device safe and marks the run ``interrupted`` at its last complete epoch.
    """
    from phasegrad_hw.device.registry import open_substrate
    from phasegrad_hw.device.substrate import Capability
    from phasegrad_hw.learning.chip import PhaseEncoding
    from phasegrad_hw.learning.controller import EPConfig, Parameters
    from phasegrad_hw.learning.ep import EPRule
    from phasegrad_hw.learning.loop import LoopOptions, train_on_substrates
    from phasegrad_hw.learning.tasks import Encoding, load_task
    from phasegrad_hw.store import RunRecorder, RunStore
    from phasegrad_hw.studies import layered_training as lt

    o = setup.options
    model = lt.device_model_of(o.device)  # task checks before any device is opened
    if o.check_gradients and model is not None and model.roles.held:
        raise ConfigError(_NO_HELD_CHECK)
    if lt.uses_engine(model):
        assert model is not None
        return lt.train_held_inputs(
            o,
            model,
            data=data,
            store=store,
            resume=resume,
            telemetry=telemetry,
            notify=notify,
            notes=_notes(setup, changes),
        )
    beta, averages, mode = o.beta, o.averages, o.mode
    assert beta is not None and averages is not None and mode is not None
    ses = session if session is not None else TrainSession()
    ses.store = store
    t0 = time.perf_counter()
    dataset = load_task(o.task, data, seed=o.seed, label_column=o.label_column)
    if model is not None:
        lt.check_task_fits(dataset, model)
    tpath = setup.transfer.path if setup.transfer is not None else "none"
    sub = open_substrate(o.device, seed=o.seed, transfer=tpath)
    enc: Encoding | PhaseEncoding = Encoding.for_device(
        sub.model, readout=o.readout, margin=o.margin
    )
    start_params: Parameters | None = None
    if init_from is not None:
        _, init_state = load_run_parameters(init_store or store, init_from)
        start_params = init_state.params
        notify(f"initial ω and K from run {init_from} (epoch {init_state.epoch})")
    watchers: list[LoopObserver] = [_EpochTracker(ses)]
    rs = RunStore(store) if store is not None else None
    run_id = resume
    start: LoopState | None = None
    saved: dict[str, Any] = {}
    tm = None
    try:
        if rs is not None and resume is not None:  # a damaged store fails before the device
            saved, start = rs.load_checkpoint(resume)
            ses.epoch = start.epoch
        if telemetry is not None:
            from phasegrad_hw.fleet.telemetry import open_telemetry

            tm = open_telemetry(telemetry)
            await tm.start()  # never blocks training: a bounded queue, sent in the background
            watchers.append(tm)
        async with sub:
            ses.device_opened = True
            if o.check_gradients:  # nothing sent yet; a remote device declares on connect
                from phasegrad_hw.learning.loop import check_exact_gradient

                if sub.model.roles.held:
                    raise ConfigError(_NO_HELD_CHECK)
                check_exact_gradient([sub])
            no_k = None
            if o.params is None:  # a remote device declares its abilities once connected
                can_k = Capability.COUPLINGS in sub.capabilities
                o = o.model_copy(update={"params": "both" if can_k else "omega"})
                if not can_k:
                    no_k = "params: omega (this device cannot set couplings)"
            assert o.params is not None
            ep = EPConfig(
                rule=EPRule(
                    params=o.params,
                    lr_omega=o.lr,
                    lr_k=o.lr,
                    beta=beta,
                    mode=mode,
                    averages=averages,
                )
            )
            if sub.model.roles.held:  # chip scale through the controller (layered_training)
                lt.check_task_fits(dataset, sub.model)
                asked = o.model_copy(update={"params": setup.options.params})
                ep, enc, held_params = lt.controller_setup(
                    asked,
                    sub.model,
                    setup.noise is not None,
                    couplings=Capability.COUPLINGS in sub.capabilities,
                )
                start_params = start_params or held_params
                how = lt.controller_banner(sub.model, ep, enc)
            else:
                how = _frequency_inputs(o)
            banner = run_banner(o, data=data, store=store, how=how, epochs=o.epochs)
            for line in (banner, *_notes(setup, changes)):
                notify(line)
            if no_k is not None:
                notify(no_k)
            if rs is not None:
                if resume is not None and start is not None:
                    if changes:
                        hist = [*saved.get("changes", []), {"at_epoch": start.epoch, **changes}]
                        rs.update_config(resume, {**saved, "changes": hist})
                    rs.set_status(resume, "running")
                    notify(f"resuming run {resume} at epoch {start.epoch}")
                else:
                    device_file = None if "://" in o.device else Path(o.device)
                    config = {
                        "options": o.model_dump(),
                        "data": str(data) if data else None,
                        "data_file": _file_record(data),
                        "device_file": _file_record(device_file),
                        "maps": setup.maps(),
                        "init_from": init_from,
                        **provenance(operator),
                    }
                    run_id = rs.create_run(config, o.device)
                assert run_id is not None
                ses.run_id = run_id
                watchers.append(RunRecorder(rs, run_id))
            src = sub.map_source
            notify(f"bias map: {src if src in ('device', 'nominal') else f'calibrated ({src})'}")
            ses.status = "running"
            held = bool(sub.model.roles.held)  # chip scale: train accuracy from the epoch's reads
            opts = LoopOptions(
                epochs=o.epochs,
                seed=o.seed,
                init=o.init,
                start=start,
                params=start_params,
                check_gradients=o.check_gradients,
                train_eval="online" if held else "epoch_end",
            )
            res = await train_on_substrates([sub], dataset, enc, ep, opts, [*watchers, *observers])
        tested = [h.test_accuracy for h in res.state.history]
        out: dict[str, Any] = {
            "final_test_accuracy": res.final_test_accuracy,
            "best_test_accuracy": max(tested) if tested else res.final_test_accuracy,
            "epochs": res.state.epoch,
            "seconds": time.perf_counter() - t0,
            "skipped_samples": res.state.skipped_samples,
            "device": o.device,
            "options": o.model_dump(),
            "data": str(data) if data else None,
            "maps": {k: (v or {}).get("path") for k, v in setup.maps().items()},
            "history": [
                {
                    "epoch": h.epoch,
                    "train_accuracy": h.train_accuracy,
                    "test_accuracy": h.test_accuracy,
                    "loss": h.loss,
                    "gradient_cosine": h.gradient_cosine,
                    "skipped": h.skipped,
                    "seconds": h.seconds,
                }
                for h in res.state.history
            ],
            "parameters": _plain_params(res.state),
        }
        if held:  # what the layered defaults and the noise map made of the options
            out["ep_config"] = ep.model_dump()
        if rs is not None and run_id is not None:
            rs.finish_run(run_id, out)
            out["run_id"] = run_id
        ses.status = "finished"
        return out
    except asyncio.CancelledError:
        ses.status = "interrupted"
        if rs is not None and ses.run_id is not None:
            rs.set_status(ses.run_id, "interrupted")
        raise
    except BaseException:
        ses.status = "failed"
        if rs is not None and ses.run_id is not None:
            rs.set_status(ses.run_id, "failed")
        raise
    finally:
        if tm is not None:
            await tm.stop()
        if rs is not None:
            rs.close()


class EvaluateOptions(StrictModel):
    """Validated options of ``evaluate``: the stored ``run`` whose final parameters are loaded
    onto ``device`` (bias map ``transfer``: auto, none or a path)."""

    run: str = Field(min_length=1)
    device: str = Field(min_length=1)
    transfer: str = Field(default="auto", min_length=1)
    averages: int | None = Field(default=None, ge=1, le=1_000_000)


async def evaluate_run(
    eo: EvaluateOptions,
    *,
    store: Path | None = None,
    data: Path | None = None,
    session: TrainSession | None = None,
) -> dict[str, Any]:
    """Load a stored run's final ω and K onto ``eo.device`` and measure train and test
    accuracy with the run's task, split, seed and encoding (``data``: the run's CSV unless
    given). Returns the result JSON."""
    from phasegrad_hw.device.registry import open_substrate
    from phasegrad_hw.learning.controller import EPConfig
    from phasegrad_hw.learning.ep import EPRule
    from phasegrad_hw.learning.loop import evaluate_parameters
    from phasegrad_hw.learning.tasks import Encoding, load_task

    ses = session if session is not None else TrainSession()
    saved, state = load_run_parameters(store, eo.run)
    opts = dict(saved.get("options", saved))
    stored_data = saved.get("data")
    csv = data if data is not None else (Path(stored_data) if stored_data else None)
    if csv is not None and not csv.exists():
        raise ConfigError(f"--data: {csv} does not exist (the run was trained on it; pass --data)")
    seed = int(opts.get("seed", 0))
    dataset = load_task(str(opts.get("task", "vowels:a,i")), csv, seed=seed)
    averages = eo.averages or int(opts.get("averages") or 1)
    sub = open_substrate(eo.device, seed=seed, transfer=eo.transfer)
    enc = Encoding.for_device(
        sub.model, readout=opts.get("readout", "template"), margin=float(opts.get("margin", 0.2))
    )
    n_omega, n_k = len(state.params.omega), len(state.params.coupling)
    if sub.model.n != n_omega or len(sub.model.edges) != n_k:
        raise ConfigError(
            f"--device: {eo.device} has {sub.model.n} oscillators and {len(sub.model.edges)} "
            f"edges; run {eo.run} was trained on {n_omega} and {n_k}"
        )
    t0 = time.perf_counter()
    async with sub:
        ses.device_opened = True
        train, test = await evaluate_parameters(
            [sub], dataset, enc, state.params, EPConfig(rule=EPRule(averages=averages))
        )
    stored_final = state.history[-1].test_accuracy if state.history else None
    return {
        "run": eo.run,
        "device": eo.device,
        "task": opts.get("task"),
        "data": str(csv) if csv else None,
        "epoch": state.epoch,
        "train_accuracy": train,
        "test_accuracy": test,
        "stored_test_accuracy": stored_final,
        "map_source": sub.map_source,
        "seconds": time.perf_counter() - t0,
    }
