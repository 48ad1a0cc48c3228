"""Sweeps (``phasegrad-hw sweep SPEC.toml``): grid, random and successive-halving searches over
the options of ``train`` and of the ``reproduce`` studies, run as Ray tasks.

A spec (:class:`SweepSpec`, TOML/YAML/JSON) names the study, fixed options (``base``), a grid
(every combination), random distributions (``trials`` draws, seeded) and, for ``asha``, the
rungs: trials train ``min_epochs``, ``min_epochs·η``, … ``max_epochs`` epochs and after each
rung only the best ⌈n/η⌉ (by the test accuracy at that epoch) continue — successive halving
with rungs by epochs, promoted when the rung is complete, so the outcome is reproducible.

Trials run in Ray workers (:func:`run_trial` calls the study's entry point without a store)
and return their result — options, per-epoch history, final parameters, accuracy, and the
worker's ``perf_counter`` start/end stamps — to the driver, the **only** writer of the run
store: one run per trial, tagged with the sweep id in its config (``config["sweep"]``), so a
stopped sweep resumes (:func:`run_sweep` ``sweep_id``) without re-running finished trials. A
trial whose worker dies is retried by Ray (``max_retries``); its run is recorded once, when a
result arrives. A trial on a bench requests the resource
:func:`phasegrad_hw.fleet.cluster.bench_resource` names (one trial per bench at a time).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.learning.loop import LoopObserver

if TYPE_CHECKING:
    from phasegrad_hw.learning.loop import LoopState
    from phasegrad_hw.store import RunStore

__all__ = [
    "FAULT_ENV",
    "AshaOptions",
    "Distribution",
    "SweepInterrupted",
    "SweepSpec",
    "Trial",
    "TrialResult",
    "load_spec",
    "plan_trials",
    "run_sweep",
    "run_trial",
]

log = logging.getLogger(__name__)

Study = Literal["train", "vowels", "noise"]
Search = Literal["grid", "random", "asha"]
# test-only fault injection, read by the driver when it submits a trial:
# "kill-once:<trial index>:<marker file>" — that trial's worker SIGKILLs itself on its first
# attempt (the marker file records that it did)
FAULT_ENV = "PHASEGRAD_HW_SWEEP_FAULT"
PATH_OPTIONS = ("device", "data", "transfer")


def _options_model(study: Study) -> type[BaseModel]:
    from phasegrad_hw.studies import NoiseOptions, TrainOptions, VowelStudyOptions

    models: dict[str, type[BaseModel]] = {
        "train": TrainOptions,
        "vowels": VowelStudyOptions,
        "noise": NoiseOptions,
    }
    return models[study]


class Distribution(StrictModel):
    """One random option: exactly one of ``uniform = [lo, hi]``, ``loguniform = [lo, hi]``
    (lo > 0), ``randint = [lo, hi]`` (both included) or ``choice = [v, …]``."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of uniform, loguniform, randint, choice (got {given or 'none'})"
            )
        for k in ("uniform", "loguniform", "randint"):
            v = getattr(self, k)
            if v is not None and not v[0] <= v[1]:
                raise ValueError(f"{k}: {list(v)} — the low end must not exceed the high end")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform: {list(self.loguniform)} — both ends must be > 0")
        return self

    def draw(self, rng: np.random.Generator) -> Any:
        if self.uniform is not None:
            return float(rng.uniform(*self.uniform))
        if self.loguniform is not None:
            lo, hi = np.log(self.loguniform)
            return float(np.exp(rng.uniform(lo, hi)))
        if self.randint is not None:
            return int(rng.integers(self.randint[0], self.randint[1] + 1))
        assert self.choice is not None
        return self.choice[int(rng.integers(len(self.choice)))]


class AshaOptions(StrictModel):
    """Successive halving: rung budgets ``min_epochs·η^k`` epochs below ``max_epochs``, then
    ``max_epochs``; after each rung the best ⌈n/η⌉ trials continue."""

    eta: int = Field(default=3, ge=2, le=100)
    min_epochs: int = Field(default=1, ge=1, le=100_000)
    max_epochs: int = Field(default=27, ge=1, le=100_000)

    @model_validator(mode="after")
    def _order(self) -> AshaOptions:
        if self.min_epochs > self.max_epochs:
            raise ValueError(
                f"asha.min_epochs: {self.min_epochs} — must not exceed "
                f"asha.max_epochs = {self.max_epochs}"
            )
        return self

    @property
    def rungs(self) -> list[int]:
        out, r = [], self.min_epochs
        while r < self.max_epochs:
            out.append(r)
            r *= self.eta
        return [*out, self.max_epochs]


class SweepSpec(StrictModel):
    """A sweep (the file ``phasegrad-hw sweep`` reads). ``study``: train (options of
    ``train``), vowels or noise (options of ``reproduce vowels|noise``); ``base``: fixed
    options; ``grid``: option → values (all combinations); ``random``: option →
    :class:`Distribution` (``trials`` draws with ``seed``); ``asha`` (train only); ``data``: a
    Hillenbrand-format CSV (train, vowels); ``benches``: device → bench name (exclusive, also
    for an emulated device); ``num_cpus``: CPUs of the local Ray instance (default all);
    ``cpus_per_trial``; ``max_retries``: re-runs of a trial whose worker died."""

    study: Study = "train"
    search: Search = "grid"
    trials: int = Field(default=1, ge=1, le=100_000)
    seed: int = Field(default=0, ge=0)
    data: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    random: dict[str, Distribution] = Field(default_factory=dict)
    asha: AshaOptions | None = None
    benches: dict[str, str] = Field(default_factory=dict)
    num_cpus: int | None = Field(default=None, ge=1, le=4096)
    cpus_per_trial: float = Field(default=1.0, gt=0.0, le=256.0)
    max_retries: int = Field(default=2, ge=0, le=100)

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        allowed = sorted(_options_model(self.study).model_fields)
        for table in ("base", "grid", "random"):
            for key in getattr(self, table):
                if key not in allowed:
                    raise ValueError(
                        f"{table}.{key}: not an option of study {self.study!r} — allowed: "
                        + ", ".join(allowed)
                    )
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: [] — give at least one value")
        both = sorted(set(self.grid) & set(self.random))
        if both:
            raise ValueError(f"random.{both[0]}: also in grid — an option is swept one way")
        if self.search == "grid" and (not self.grid or self.random):
            raise ValueError(
                f"search: 'grid' — needs a [grid] table and no [random] table "
                f"(grid: {sorted(self.grid)}, random: {sorted(self.random)})"
            )
        if self.search == "random" and not self.random:
            raise ValueError("search: 'random' — needs a [random] table (option = distribution)")
        if self.search == "asha":
            if self.study != "train":
                raise ValueError(
                    f"search: 'asha' with study {self.study!r} — allowed for study 'train' "
                    "only (rungs are training epochs)"
                )
            if self.asha is None:
                raise ValueError("search: 'asha' — needs an [asha] table (eta, min_epochs, …)")
            if "epochs" in self.grid or "epochs" in self.random or "epochs" in self.base:
                raise ValueError("base.epochs: set by asha.max_epochs in an asha search")
        elif self.asha is not None:
            raise ValueError(f"asha: given but search is {self.search!r} — allowed only with asha")
        if self.data is not None and self.study == "noise":
            raise ValueError("data: the noise study takes no data — remove it")
        return self

    def fingerprint(self) -> str:
        """SHA-256 of the spec's canonical JSON (a resumed sweep must match it)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_spec(path: Path) -> tuple[SweepSpec, Path]:
    """Read and validate a spec file; returns (spec, the directory relative paths start from).
    Raises :class:`ConfigError` with one line per mistake (field, value, allowed range)."""
    from phasegrad_hw.config import read_config_file

    data = read_config_file(path)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"{path.name}: ")) from None
    return spec, path.resolve().parent


@dataclass(frozen=True)
class Trial:
    """One configuration: ``index`` in the plan, ``key`` (hash of study, options, data),
    validated JSON-ready ``options``, ``data`` CSV, ``bench`` resource (None: emulated)."""

    index: int
    key: str
    options: dict[str, Any]
    data: str | None
    bench: str | None

    def device(self, study: str) -> str:
        """The device the run store files the trial under (``study:<name>`` without one)."""
        return str(self.options.get("device", f"study:{study}"))


def _resolve_path(value: Any, base_dir: Path) -> Any:
    if not isinstance(value, str) or "://" in value or value in ("auto", "none"):
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def plan_trials(spec: SweepSpec, base_dir: Path = Path(".")) -> list[Trial]:
    """Every trial of the spec, validated; a :class:`ConfigError` lists each bad value as
    ``table.option: value — allowed range`` (the table the value came from)."""
    from phasegrad_hw.fleet.cluster import bench_resource

    model = _options_model(spec.study)
    names = list(spec.grid)
    points = [
        dict(zip(names, combo, strict=True)) for combo in itertools.product(*spec.grid.values())
    ]
    rng = np.random.default_rng(spec.seed)
    n_draws = spec.trials if spec.random else 1
    draws = [{k: d.draw(rng) for k, d in spec.random.items()} for _ in range(n_draws)]
    data = _resolve_path(spec.data, base_dir) if spec.data is not None else None
    errors: list[str] = []
    trials: list[Trial] = []
    for point, draw in itertools.product(points, draws):
        raw = {**spec.base, **point, **draw}
        if spec.asha is not None:
            raw["epochs"] = spec.asha.max_epochs
        if spec.study == "vowels" and data is not None:
            raw["data"] = data
        raw = {k: _resolve_path(v, base_dir) if k in PATH_OPTIONS else v for k, v in raw.items()}
        origin = {**dict.fromkeys(spec.base, "base"), **dict.fromkeys(point, "grid")}
        origin |= dict.fromkeys(draw, "random")
        if spec.asha is not None:
            origin["epochs"] = "asha.max_epochs"
        try:
            opts = model.model_validate(raw).model_dump(mode="json")
        except ValidationError as exc:
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else ""
                where = origin.get(key, "base")
                where = where if "." in where else f"{where}.{key}"
                msg = str(err["msg"]).removeprefix("Value error, ")
                errors.append(f"{where}: {err.get('input')!r} — {msg}")
            continue
        dev = opts.get("device")
        if isinstance(dev, str) and "://" not in dev and not Path(dev).is_file():
            errors.append(
                f"{origin.get('device', 'base')}.device: {dev!r} — no such device file "
                "(allowed: an existing device file or a URI scheme://…)"
            )
            continue
        canon = json.dumps([spec.study, opts, data], sort_keys=True, separators=(",", ":"))
        key = hashlib.sha256(canon.encode()).hexdigest()[:16]
        bench = bench_resource(dev, spec.benches) if isinstance(dev, str) else None
        trials.append(Trial(len(trials), key, opts, data if spec.study == "train" else None, bench))
    if errors:
        raise ConfigError("\n".join(dict.fromkeys(errors)))
    if len({t.key for t in trials}) != len(trials):
        raise ConfigError("grid/random: two trials have the same options — remove duplicates")
    return trials


# --------------------------------------------------------------------------- worker side
class _LastState(LoopObserver):
    """Keeps the loop's latest state (history and parameters)."""

    def __init__(self) -> None:
        self.state: LoopState | None = None

    def on_epoch_end(self, state: LoopState) -> None:
        self.state = state


def _train(
    options: dict[str, Any], data: str | None, start: LoopState | None
) -> tuple[dict[str, Any], LoopState | None]:
    """``train`` without the user's store: a run continued from ``start`` (a successive-halving
    rung) is resumed from a private temporary store the worker deletes afterwards."""
    from phasegrad_hw.store import RunStore
    from phasegrad_hw.studies.training import TrainOptions, prepare, train_device

    o = TrainOptions.model_validate(options)
    keep = _LastState()
    csv = Path(data) if data else None
    with tempfile.TemporaryDirectory(prefix="phasegrad-trial-") as tmp:
        store = resume = None
        if start is not None:
            store = Path(tmp) / "trial.sqlite"
            with RunStore(store) as rs:
                resume = rs.create_run({"options": o.model_dump(), "data": data}, o.device)
                rs.save_checkpoint(resume, start)
        run = train_device(
            prepare(o), data=csv, store=store, resume=resume, observers=[keep], notify=log.debug
        )
        out = asyncio.run(run)
    out.pop("run_id", None)
    return out, keep.state if keep.state is not None else start


def run_trial(
    study: Study,
    options: dict[str, Any],
    data: str | None = None,
    start: LoopState | None = None,
) -> tuple[dict[str, Any], LoopState | None]:
    """Run one trial in this process, recording nothing: (the study's result JSON, the final
    loop state — per-epoch history and parameters — for ``train``, else None)."""
    if study == "train":
        return _train(options, data, start)
    if study == "vowels":
        from phasegrad_hw.studies.vowels import VowelStudyOptions, run_vowel_study

        return run_vowel_study(VowelStudyOptions.model_validate(options)), None
    from phasegrad_hw.studies.noise import NoiseOptions, run_noise

    return asyncio.run(run_noise(NoiseOptions.model_validate(options))), None


def _maybe_fault(fault: str | None, index: int) -> None:
    if not fault or not fault.startswith("kill-once:"):
        return
    _, which, marker = fault.split(":", 2)
    if int(which) == index and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def _trial_task(
    study: Study,
    index: int,
    options: dict[str, Any],
    data: str | None,
    start: LoopState | None,
    fault: str | None,
) -> dict[str, Any]:
    """The Ray task: :func:`run_trial` plus where and when it ran (``perf_counter`` stamps
    are comparable between processes of one machine)."""
    from phasegrad_hw.fleet.cluster import import_ray

    t0 = time.perf_counter()
    _maybe_fault(fault, index)
    summary, state = run_trial(study, options, data, start)
    ctx = import_ray().get_runtime_context()
    return {
        "summary": summary,
        "state": state,
        "worker": {
            "pid": os.getpid(),
            "node": ctx.get_node_id(),
            "resources": ctx.get_assigned_resources(),
            "start_perf_s": t0,
            "end_perf_s": time.perf_counter(),
        },
    }


# --------------------------------------------------------------------------- driver side
@dataclass
class TrialResult:
    """A finished trial as the driver recorded it: ``summary`` (the study's result JSON),
    ``state`` (train: per-epoch history and final parameters), ``score`` (train: test
    accuracy of the last epoch; vowels: best success fraction; noise: best mean cosine),
    ``run_id`` in the store, ``worker`` (pid, node, resources, perf_counter stamps),
    ``error`` (a failed trial: not recorded, re-run on resume), ``pruned_at`` (asha: the
    epochs after which it stopped), ``resumed`` (recorded by an earlier driver)."""

    trial: Trial
    summary: dict[str, Any]
    state: LoopState | None
    score: float
    run_id: str | None = None
    worker: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    pruned_at: int | None = None
    resumed: bool = False

    def to_json(self) -> dict[str, Any]:
        from phasegrad_hw.store import encode

        hist = [] if self.state is None else [encode(r) for r in self.state.history]
        params = None
        if self.state is not None:
            params = {
                "omega": self.state.params.omega.tolist(),
                "coupling": self.state.params.coupling.tolist(),
            }
        return {
            "index": self.trial.index,
            "key": self.trial.key,
            "options": self.trial.options,
            "bench": self.trial.bench,
            "run_id": self.run_id,
            "score": None if math.isinf(self.score) else self.score,
            "summary": self.summary,
            "history": [{k: v for k, v in h.items() if k != "__type__"} for h in hist],
            "parameters": params,
            "worker": self.worker,
            "error": self.error,
            "pruned_at": self.pruned_at,
            "resumed": self.resumed,
        }


class SweepInterrupted(KeyboardInterrupt):
    """The driver was stopped (Ctrl-C); recorded trials stay, ``sweep_id`` resumes."""

    def __init__(self, sweep_id: str, done: int, total: int) -> None:
        super().__init__(f"sweep {sweep_id} stopped: {done}/{total} trials recorded")
        self.sweep_id, self.done, self.total = sweep_id, done, total


def _score(study: Study, summary: dict[str, Any], state: LoopState | None, epoch: int) -> float:
    v: Any
    if study == "train":
        hist = [] if state is None else [r for r in state.history if r.epoch == epoch]
        v = hist[0].test_accuracy if hist else summary.get("final_test_accuracy")
    elif study == "vowels":
        v = max((r["success"] / r["seeds"] for r in summary.get("rows", [])), default=None)
    else:
        v = max((r["mean_cos"] for r in summary.get("rows", [])), default=None)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


@dataclass
class _Recorded:
    run_id: str
    status: str
    summary: dict[str, Any] | None
    state: LoopState | None


def _recorded(rs: RunStore, sweep_id: str, fingerprint: str) -> dict[str, _Recorded]:
    """Runs of ``sweep_id`` in the store, by trial key."""
    from phasegrad_hw.store import StoreError

    out: dict[str, _Recorded] = {}
    for run in rs.list_runs():
        tag = rs.run_config(run["id"]).get("sweep") or {}
        if tag.get("id") != sweep_id:
            continue
        if tag.get("spec_sha256") != fingerprint:
            raise ConfigError(
                f"--resume: sweep {sweep_id} was started from another spec (sha256 "
                f"{str(tag.get('spec_sha256'))[:12]}…, this one {fingerprint[:12]}…)"
            )
        try:
            _, state = rs.load_checkpoint(run["id"])
        except StoreError:
            state = None
        out[tag["key"]] = _Recorded(run["id"], run["status"], run["summary"], state)
    return out


def new_sweep_id() -> str:
    from phasegrad_hw.store import new_run_id

    return "sweep-" + new_run_id()


class _Driver:
    """Submits trials as Ray tasks and records their results (the store's single writer)."""

    def __init__(
        self,
        spec: SweepSpec,
        trials: Sequence[Trial],
        rs: RunStore,
        sweep_id: str,
        on_result: Callable[[TrialResult], None],
    ) -> None:
        from phasegrad_hw.fleet.cluster import import_ray

        self.ray = import_ray()
        self.spec, self.trials, self.rs, self.sweep_id = spec, list(trials), rs, sweep_id
        self.on_result = on_result
        self.fingerprint = spec.fingerprint()
        self.rec = _recorded(rs, sweep_id, self.fingerprint)
        self.results: dict[int, TrialResult] = {}
        self.task = self.ray.remote(_trial_task)

    def _submit(self, t: Trial, start: LoopState | None, epochs: int | None) -> Any:
        opts = t.options if epochs is None else {**t.options, "epochs": epochs}
        return self.task.options(
            num_cpus=self.spec.cpus_per_trial,
            resources={t.bench: 1.0} if t.bench else None,
            max_retries=self.spec.max_retries,
            retry_exceptions=False,
            name=f"trial-{t.index}",
        ).remote(self.spec.study, t.index, opts, t.data, start, os.environ.get(FAULT_ENV))

    def _gather(
        self, jobs: dict[Any, tuple[Trial, int | None]]
    ) -> Generator[tuple[Trial, int | None, dict[str, Any] | None, str | None], None, None]:
        """Yield (trial, epochs, payload, error) as tasks finish; Ctrl-C cancels the rest."""
        pending = list(jobs)
        try:
            while pending:
                ready, pending = self.ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in ready:
                    t, epochs = jobs[ref]
                    try:
                        yield t, epochs, self.ray.get(ref), None
                    except self.ray.exceptions.RayError as exc:
                        yield t, epochs, None, str(exc).strip().splitlines()[-1][:300]
        except BaseException:
            for ref in pending:
                self.ray.cancel(ref, force=True)
            raise

    def _config(self, t: Trial) -> dict[str, Any]:
        tag = {
            "id": self.sweep_id,
            "trial": t.index,
            "key": t.key,
            "study": self.spec.study,
            "spec_sha256": self.fingerprint,
        }
        return {"options": t.options, "data": t.data, "sweep": tag}

    def _record(
        self,
        t: Trial,
        payload: dict[str, Any],
        epoch: int,
        *,
        finish: bool,
        pruned_at: int | None = None,
    ) -> TrialResult:
        summary, state = payload["summary"], payload["state"]
        score = _score(self.spec.study, summary, state, epoch)
        old = self.rec.get(t.key)
        rid = (
            old.run_id
            if old is not None
            else self.rs.create_run(self._config(t), t.device(self.spec.study))
        )
        if state is not None:
            self.rs.save_checkpoint(rid, state)
        info = {**summary, "sweep_id": self.sweep_id, "trial": t.index, "score": score}
        if pruned_at is not None:
            info["pruned_at_epoch"] = pruned_at
        if finish:
            self.rs.finish_run(rid, info)
        self.rec[t.key] = _Recorded(rid, "finished" if finish else "running", info, state)
        return TrialResult(t, info, state, score, rid, payload["worker"], pruned_at=pruned_at)

    def _failed(self, t: Trial, err: str) -> TrialResult:
        log.warning("trial %d failed: %s", t.index, err)
        return TrialResult(t, {}, None, -math.inf, error=err)

    def _emit(self, r: TrialResult) -> None:
        """Report a trial once it is final (finished, pruned or failed)."""
        if r.trial.index in self.results:
            return
        self.results[r.trial.index] = r
        self.on_result(r)

    def _from_store(self, t: Trial, epoch: int) -> TrialResult:
        r = self.rec[t.key]
        summary = r.summary or {}
        score = _score(self.spec.study, summary, r.state, epoch)
        pruned = summary.get("pruned_at_epoch")
        return TrialResult(t, summary, r.state, score, r.run_id, pruned_at=pruned, resumed=True)

    def run_flat(self) -> None:
        jobs: dict[Any, tuple[Trial, int | None]] = {}
        for t in self.trials:
            if t.key in self.rec and self.rec[t.key].status == "finished":
                self._emit(self._from_store(t, -1))
            else:
                jobs[self._submit(t, None, None)] = (t, None)
        with closing(self._gather(jobs)) as arrivals:
            for t, _, payload, err in arrivals:
                if payload is None:
                    self._emit(self._failed(t, err or ""))
                else:
                    self._emit(self._record(t, payload, -1, finish=True))

    def run_asha(self) -> None:
        assert self.spec.asha is not None
        rungs, eta = self.spec.asha.rungs, self.spec.asha.eta
        active = list(self.trials)
        for k, budget in enumerate(rungs):
            last = k == len(rungs) - 1
            scores: dict[int, float] = {}
            jobs: dict[Any, tuple[Trial, int | None]] = {}
            for t in active:
                r = self.rec.get(t.key)
                done = 0 if r is None or r.state is None else r.state.epoch
                if r is not None and (r.status == "finished" or done >= budget):
                    scores[t.index] = _score("train", r.summary or {}, r.state, budget)
                    if r.status == "finished":
                        self._emit(self._from_store(t, budget))
                    continue
                start = None if r is None else r.state
                jobs[self._submit(t, start, budget)] = (t, budget)
            with closing(self._gather(jobs)) as arrivals:
                for t, _, payload, err in arrivals:
                    if payload is None:
                        self._emit(self._failed(t, err or ""))
                        continue
                    res = self._record(t, payload, budget, finish=last)
                    scores[t.index] = res.score
                    if last:
                        self._emit(res)
            alive = [t for t in active if t.index in scores and t.key in self.rec]
            if last:
                break
            alive.sort(key=lambda t: (-scores[t.index], t.index))
            keep = max(1, math.ceil(len(alive) / eta))
            for t in alive[keep:]:
                r = self.rec[t.key]
                if r.status != "finished":
                    assert r.state is not None
                    payload = {"summary": r.summary or {}, "state": r.state, "worker": {}}
                    res = self._record(t, payload, budget, finish=True, pruned_at=budget)
                    self._emit(res)
            active = alive[:keep]
            log.info("rung %d (%d epochs): %d trials continue", k, budget, len(active))

    def interrupted(self) -> None:
        """Runs of unfinished successive-halving trials are marked ``interrupted``."""
        for r in self.rec.values():
            if r.status != "finished":
                self.rs.set_status(r.run_id, "interrupted")


def run_sweep(
    spec: SweepSpec,
    trials: Sequence[Trial],
    store: Path,
    *,
    sweep_id: str | None = None,
    on_start: Callable[[str, int], None] = lambda sid, n: None,
    on_result: Callable[[TrialResult], None] = lambda r: None,
) -> dict[str, Any]:
    """Run (or, with ``sweep_id``, resume) the sweep on the Ray cluster this process is
    connected to (:class:`phasegrad_hw.fleet.cluster.Cluster`); record every trial's run in
    ``store`` and return ``{"sweep_id", "study", "search", "store", "trials": [...],
    "best": index}``. ``on_start(sweep_id, n_trials)`` is called first, ``on_result`` once
    per finished (or failed, or pruned) trial. Ctrl-C raises :class:`SweepInterrupted`."""
    from phasegrad_hw.store import RunStore

    with RunStore(store) as rs:
        sid = sweep_id or new_sweep_id()
        drv = _Driver(spec, trials, rs, sid, on_result)
        if sweep_id is not None and not drv.rec:
            raise ConfigError(
                f"--resume: sweep {sweep_id!r} has no recorded trial in {store} — start it "
                "again without --resume"
            )
        on_start(sid, len(trials))
        try:
            drv.run_asha() if spec.search == "asha" else drv.run_flat()
        except KeyboardInterrupt:
            drv.interrupted()
            done = sum(r.status == "finished" for r in drv.rec.values())
            raise SweepInterrupted(sid, done, len(trials)) from None
    results = [drv.results[i] for i in sorted(drv.results)]
    ok = [r for r in results if r.error is None]
    best = max(ok, key=lambda r: (r.score, -r.trial.index), default=None)
    return {
        "sweep_id": sid,
        "study": spec.study,
        "search": spec.search,
        "store": str(store),
        "trials": [r.to_json() for r in results],
        "failed": [r.trial.index for r in results if r.error is not None],
        "best": None if best is None else best.trial.index,
    }
