"""SQLite run store: runs with their full config, per-epoch metrics, optional per-step
diagnostics, parameter checkpoints and calibration reports.

One file per user by default (:func:`default_store_path`: ``$PHASEGRAD_HW_STORE``, else
``$XDG_DATA_HOME/phasegrad-hw/runs.sqlite``, i.e. ``~/.local/share/phasegrad-hw/runs.sqlite``),
so every command finds the same runs from any working directory; WAL journal,
``synchronous=FULL``. Every write is one transaction: a checkpoint (the whole
:class:`~phasegrad_hw.learning.loop.LoopState`: parameters, epoch, history, skip count) and the
epoch metrics it carries are committed together or not at all, so a crash (even SIGKILL) leaves the
previous checkpoint intact. Each checkpoint also stores a SHA-256 of its text, verified on
load. Step diagnostics are buffered in memory and written in the checkpoint's transaction, so
a run resumed after a crash never holds steps of the epoch it replays twice.

States are stored as JSON; float64 values round-trip exactly (shortest repr), so a resumed
run continues from bit-identical parameters.

A damaged or foreign file (not SQLite, truncated, garbage pages, a directory, locked, a
checkpoint that does not decode or whose checksum does not match) raises :class:`StoreError`
with one line naming the file and what to do; :meth:`RunStore.check` runs SQLite's
``PRAGMA integrity_check`` and verifies every checkpoint checksum.

Stored dataclasses carry a stable type tag (``"__type__": "LoopState"``, table
:data:`TYPE_TAGS`), not a module path, so moving a class does not orphan old runs;
checkpoints written by 0.1.0 (module paths) still load.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import importlib
import io
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

import numpy as np

from phasegrad_hw.config import redact

if TYPE_CHECKING:
    from phasegrad_hw.learning.controller import StepReport
    from phasegrad_hw.learning.loop import LoopState, RunPlan

log = logging.getLogger(__name__)
STORE_ENV = "PHASEGRAD_HW_STORE"
SCHEMA_VERSION = 1
P = ParamSpec("P")
R = TypeVar("R")


def default_store_path() -> Path:
    """The run store every command uses unless told otherwise: ``$PHASEGRAD_HW_STORE``, else
    ``$XDG_DATA_HOME/phasegrad-hw/runs.sqlite`` (``~/.local/share/…`` without XDG)."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "phasegrad-hw" / "runs.sqlite"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created_s REAL NOT NULL, updated_s REAL NOT NULL,
    device TEXT NOT NULL, status TEXT NOT NULL, config TEXT NOT NULL, summary TEXT);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, epoch INTEGER NOT NULL,
    created_s REAL NOT NULL, state TEXT NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch));
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, epoch INTEGER NOT NULL,
    train_accuracy REAL, test_accuracy REAL, skipped INTEGER, seconds REAL, data TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch));
CREATE TABLE IF NOT EXISTS steps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, epoch INTEGER NOT NULL,
    created_s REAL NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS steps_run ON steps (run_id, epoch);
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT REFERENCES runs(id) ON DELETE SET NULL,
    device TEXT NOT NULL, kind TEXT NOT NULL, created_s REAL NOT NULL, report TEXT NOT NULL);
"""


class StoreError(ValueError):
    """A run or checkpoint that does not exist, is ambiguous or is corrupt; a store file that
    is not a run store, is damaged or locked. The message is one line naming the file."""


def _sqlite_problem(path: Path, exc: sqlite3.Error) -> StoreError:
    """One line for a SQLite failure on ``path``: what it means and what to do."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    low = text.lower()
    if "locked" in low or "busy" in low:
        return StoreError(
            f"{path}: the run store is locked by another process (a run still writing?); "
            "wait for it to finish or pass another --store"
        )
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreError(
            f"{path}: not a readable run store ({text}); move it away or pass another --store "
            "(`phasegrad-hw runs check` tells what is damaged)"
        )
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return StoreError(f"{path}: cannot write the run store ({text}); pass another --store")
    return StoreError(f"{path}: run store error ({text}); check the file or pass another --store")


def _guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn SQLite errors of a :class:`RunStore` method into :class:`StoreError` (one line)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            store = args[0]
            assert isinstance(store, RunStore)
            raise _sqlite_problem(store.path, exc) from None

    return wrapper


# --------------------------------------------------------------------------- encoding
TYPE_KEY = "__type__"
LEGACY_KEY = "__dataclass__"  # module:qualname, written by 0.1.0 and the sub-package move

# the stable type tags of stored dataclasses (tag -> "module:qualname" of today's class):
# a tag never changes; when a class moves, only its entry here does
TYPE_TAGS: dict[str, str] = {
    "LoopState": "phasegrad_hw.learning.loop:LoopState",
    "EpochRecord": "phasegrad_hw.learning.loop:EpochRecord",
    "LoopResult": "phasegrad_hw.learning.loop:LoopResult",
    "Parameters": "phasegrad_hw.learning.records:Parameters",
}
# class paths written before type tags existed -> their tag
LEGACY_PATHS: dict[str, str] = {
    # 0.1.0 (flat package)
    "phasegrad_hw.loop:LoopState": "LoopState",
    "phasegrad_hw.loop:EpochRecord": "EpochRecord",
    "phasegrad_hw.loop:LoopResult": "LoopResult",
    "phasegrad_hw.controller:Parameters": "Parameters",
    # the sub-package layout before tags (unreleased)
    "phasegrad_hw.learning.loop:LoopState": "LoopState",
    "phasegrad_hw.learning.loop:EpochRecord": "EpochRecord",
    "phasegrad_hw.learning.loop:LoopResult": "LoopResult",
    "phasegrad_hw.learning.controller:Parameters": "Parameters",
}


def _class_of(tag: str) -> Any:
    """The class registered under ``tag`` (imported on first use)."""
    path = TYPE_TAGS.get(tag)
    if path is None:
        raise StoreError(f"checkpoint type {tag!r} is unknown (known: {', '.join(TYPE_TAGS)})")
    module, _, name = path.partition(":")
    cls: Any = importlib.import_module(module)
    for part in name.split("."):
        cls = getattr(cls, part)
    return cls


def _tag_of(cls: type[Any]) -> str | None:
    path = f"{cls.__module__}:{cls.__qualname__}"
    for tag, p in TYPE_TAGS.items():
        if p == path:
            return tag
    return None


def encode(obj: Any) -> Any:
    """JSON-ready form of states: dataclasses listed in :data:`TYPE_TAGS` as their fields plus
    ``"__type__": tag`` (other dataclasses as plain field objects, read back as dicts),
    arrays (dtype, shape), numpy scalars, paths; floats stay floats (exact round trip)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        tag = _tag_of(type(obj))
        return fields if tag is None else {TYPE_KEY: tag, **fields}
    if isinstance(obj, np.ndarray):
        return {
            "__ndarray__": obj.ravel().tolist(),
            "dtype": str(obj.dtype),
            "shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "model_dump"):  # pydantic models (configs)
        return encode(obj.model_dump(mode="json"))
    raise TypeError(f"cannot store a value of type {type(obj).__name__}")


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode`. Tagged objects are rebuilt from :data:`TYPE_TAGS` only;
    the class paths of older checkpoints (``"__dataclass__": "phasegrad_hw.loop:LoopState"``)
    are mapped to their tags by :data:`LEGACY_PATHS` — no module is imported by a path read
    from the file."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    if TYPE_KEY in obj or LEGACY_KEY in obj:
        if TYPE_KEY in obj:
            tag = str(obj[TYPE_KEY])
        else:
            path = str(obj[LEGACY_KEY])
            if path not in LEGACY_PATHS:
                raise StoreError(f"checkpoint class {path!r} is unknown")
            tag = LEGACY_PATHS[path]
        cls = _class_of(tag)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: decode(v) for k, v in obj.items() if k in names})
    return {k: decode(v) for k, v in obj.items()}


def _dumps(obj: Any) -> str:
    return json.dumps(encode(obj), separators=(",", ":"), allow_nan=True)


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-xxxxxx`` (UTC time + 24 random bits)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


# --------------------------------------------------------------------------- store
class RunStore:
    """The run store (see module docstring). Thread-safe; one connection per store object."""

    def __init__(
        self, path: str | Path | None = None, *, create: bool = True, timeout_s: float = 30.0
    ) -> None:
        """Open (``create``: or create) the store at ``path`` (default
        :func:`default_store_path`); ``timeout_s`` how long to wait for another writer's lock."""
        self.path = Path(path) if path is not None else default_store_path()
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a run store; pass --store FILE")
        if not self.path.exists():
            if not create:
                raise StoreError(f"{self.path}: no run store here (no run recorded yet?)")
            if path is None or self.path == default_store_path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            elif not self.path.parent.exists():
                raise StoreError(f"--store: directory {self.path.parent} does not exist")
        elif self.path.stat().st_size > 0:
            with self.path.open("rb") as fh:
                head = fh.read(16)
            if head != b"SQLite format 3\x00":
                raise StoreError(
                    f"{self.path}: not a run store (not an SQLite database); pass another --store"
                )
        self._lock = threading.RLock()
        self._steps: dict[str, list[tuple[int, float, str]]] = {}
        try:
            self._db = sqlite3.connect(
                self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _sqlite_problem(self.path, exc) from None
        try:
            self._open()
        except sqlite3.Error as exc:
            self._db.close()
            raise _sqlite_problem(self.path, exc) from None
        except StoreError:
            self._db.close()
            raise

    def _open(self) -> None:
        db = self._db
        db.row_factory = sqlite3.Row
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise StoreError(
                f"{self.path}: an SQLite database but not a phasegrad-hw run store "
                f"(tables {', '.join(sorted(tables)[:4])}); pass another --store"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
            db.execute(stmt)
        with self._tx() as tx:
            tx.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed on success, rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- contract -------------------------------------------------------------------
    @_guarded
    def create_run(self, config: dict[str, Any], device: str) -> str:
        """Record a new run with its full config; returns its id. Passwords inside URIs
        (``mqtt://user:secret@…``) are stored as ``***`` (resume then takes the password
        from ``PHASEGRAD_HW_MQTT_PASSWORD``)."""
        text = redact(_dumps(config))
        device = redact(str(device))
        rid = new_run_id()
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, 'running', ?, NULL)",
                (rid, now, now, str(device), text),
            )
        log.info("run %s created (%s)", rid, device)
        return rid

    @_guarded
    def save_checkpoint(self, run_id: str, state: LoopState) -> None:
        """Parameters + epoch metrics + buffered step diagnostics, in one transaction."""
        rid = self.resolve(run_id)
        text = _dumps(state)
        digest = hashlib.sha256(text.encode()).hexdigest()
        epoch = int(state.epoch)
        rows = [_epoch_row(rid, rec) for rec in state.history]
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                (rid, epoch, now, text, digest),
            )
            db.executemany("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            steps = self._steps.get(rid, [])
            if steps:
                db.executemany(
                    "INSERT INTO steps (run_id, epoch, created_s, data) VALUES (?, ?, ?, ?)",
                    [(rid, *s) for s in steps],
                )
            db.execute("UPDATE runs SET updated_s = ? WHERE id = ?", (now, rid))
        self._steps.pop(rid, None)

    @_guarded
    def load_checkpoint(self, run_id: str) -> tuple[dict[str, Any], LoopState]:
        """The run's config and its latest checkpointed state."""
        rid = self.resolve(run_id)
        with self._lock:
            run = self._db.execute("SELECT config FROM runs WHERE id = ?", (rid,)).fetchone()
            row = self._db.execute(
                "SELECT epoch, state, sha256 FROM checkpoints WHERE run_id = ? "
                "ORDER BY epoch DESC LIMIT 1",
                (rid,),
            ).fetchone()
        if row is None:
            raise StoreError(
                f"{self.path}: run {rid}: no checkpoint yet (it stopped before its first "
                "epoch ended); start it again instead of resuming"
            )
        state = self._decode_state(rid, row)
        self._steps.pop(rid, None)  # steps buffered after the checkpoint are replayed
        return json.loads(run["config"]), state

    def _decode_state(self, rid: str, row: sqlite3.Row) -> LoopState:
        """A checkpoint row's state, its checksum verified; damage → :class:`StoreError`."""
        if hashlib.sha256(str(row["state"]).encode()).hexdigest() != row["sha256"]:
            raise StoreError(
                f"{self.path}: run {rid}: checkpoint of epoch {row['epoch']} is corrupt "
                "(checksum mismatch); resume is impossible, start the run again"
            )
        try:
            state = decode(json.loads(row["state"]))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
            raise StoreError(
                f"{self.path}: run {rid}: checkpoint of epoch {row['epoch']} does not decode "
                f"({type(exc).__name__}); start the run again"
            ) from None
        return state

    @_guarded
    def check(self) -> list[str]:
        """Problems found: SQLite ``PRAGMA integrity_check`` plus every checkpoint's checksum
        and decoding (an empty list: the store is sound)."""
        with self._lock:
            rows = self._db.execute("PRAGMA integrity_check").fetchall()
            problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
            cks = self._db.execute(
                "SELECT run_id, epoch, state, sha256 FROM checkpoints ORDER BY run_id, epoch"
            ).fetchall()
        for r in cks:
            try:
                self._decode_state(str(r["run_id"]), r)
            except StoreError as exc:
                problems.append(str(exc).removeprefix(f"{self.path}: "))
        return problems

    @_guarded
    def finish_run(
        self,
        run_id: str,
        summary: dict[str, Any],
        status: Literal["finished", "interrupted", "failed"] = "finished",
    ) -> None:
        """Mark the run ``status`` with a summary (final accuracy, seconds, …)."""
        rid = self.resolve(run_id)
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status = ?, summary = ?, updated_s = ? WHERE id = ?",
                (status, _dumps(summary), time.time(), rid),
            )

    # -- more ---------------------------------------------------------------------------
    @_guarded
    def set_status(
        self, run_id: str, status: Literal["running", "failed", "interrupted", "finished"]
    ) -> None:
        rid = self.resolve(run_id)
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status = ?, updated_s = ? WHERE id = ?", (status, time.time(), rid)
            )

    @_guarded
    def run_config(self, run_id: str) -> dict[str, Any]:
        """The config a run was created with."""
        row = self._one("SELECT config FROM runs WHERE id = ?", self.resolve(run_id))
        return json.loads(row["config"])  # type: ignore[no-any-return,unused-ignore]

    @_guarded
    def update_config(self, run_id: str, config: dict[str, Any]) -> None:
        """Replace a run's config (e.g. to record the changes a resume was allowed)."""
        rid = self.resolve(run_id)
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET config = ?, updated_s = ? WHERE id = ?",
                (redact(_dumps(config)), time.time(), rid),
            )

    def record_step(self, run_id: str, epoch: int, data: Mapping[str, Any]) -> None:
        """Buffer one step's diagnostics; written with the next checkpoint."""
        self._steps.setdefault(run_id, []).append((int(epoch), time.time(), _dumps(data)))

    @_guarded
    def save_calibration(
        self, device: str, kind: str, report: Mapping[str, Any] | Any, run_id: str | None = None
    ) -> int:
        """Store a calibration report (dict, dataclass or Pydantic model); returns its id."""
        rid = self.resolve(run_id) if run_id else None
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO calibrations (run_id, device, kind, created_s, report) "
                "VALUES (?, ?, ?, ?, ?)",
                (rid, device, kind, time.time(), _dumps(report)),
            )
            return int(cur.lastrowid or 0)

    @_guarded
    def calibrations(self, device: str | None = None) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM calibrations", ()  # type: tuple[str, tuple[str, ...]]
        if device is not None:
            q, args = q + " WHERE device = ?", (device,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY id", args).fetchall()
        return [{**dict(r), "report": json.loads(r["report"])} for r in rows]

    @_guarded
    def resolve(self, run_id: str) -> str:
        """A full run id from an id or a unique prefix of one."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM runs WHERE id = ? OR id LIKE ? LIMIT 3",
                (run_id, run_id.replace("%", "") + "%"),
            ).fetchall()
        ids = sorted({r["id"] for r in rows})
        if run_id in ids:
            return run_id
        if not ids:
            raise StoreError(
                f"{self.path}: run {run_id!r}: not in this store "
                "(`phasegrad-hw runs list` shows its runs)"
            )
        if len(ids) > 1:
            raise StoreError(
                f"{self.path}: run {run_id!r} is an ambiguous prefix ({', '.join(ids)}, …); "
                "give more of the id"
            )
        return ids[0]

    @_guarded
    def list_runs(self) -> list[dict[str, Any]]:
        """All runs, newest first, with their last checkpointed epoch."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.id, r.created_s, r.updated_s, r.device, r.status, r.summary, "
                "(SELECT MAX(epoch) FROM checkpoints c WHERE c.run_id = r.id) AS epoch "
                "FROM runs r ORDER BY r.created_s DESC, r.id DESC"
            ).fetchall()
        return [
            {**dict(r), "summary": json.loads(r["summary"]) if r["summary"] else None} for r in rows
        ]

    @_guarded
    def run(self, run_id: str) -> dict[str, Any]:
        """One run: metadata, config, summary, epoch metrics, checkpoint epochs, step count."""
        rid = self.resolve(run_id)
        r = self._one("SELECT * FROM runs WHERE id = ?", rid)
        with self._lock:
            ck = [
                int(x[0])
                for x in self._db.execute(
                    "SELECT epoch FROM checkpoints WHERE run_id = ? ORDER BY epoch", (rid,)
                )
            ]
            n_steps = int(
                self._db.execute("SELECT COUNT(*) FROM steps WHERE run_id = ?", (rid,)).fetchone()[
                    0
                ]
            )
        return {
            "id": rid,
            "created_s": r["created_s"],
            "updated_s": r["updated_s"],
            "device": r["device"],
            "status": r["status"],
            "config": json.loads(r["config"]),
            "summary": json.loads(r["summary"]) if r["summary"] else None,
            "epochs": self.epochs(rid),
            "checkpoint_epochs": ck,
            "steps": n_steps,
        }

    @_guarded
    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        """Per-epoch metrics (one dict per epoch record, all its fields)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM epochs WHERE run_id = ? ORDER BY epoch", (self.resolve(run_id),)
            ).fetchall()
        return [json.loads(r["data"]) for r in rows]

    @_guarded
    def steps(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, epoch, created_s, data FROM steps WHERE run_id = ? ORDER BY seq",
                (self.resolve(run_id),),
            ).fetchall()
        return [
            {
                "seq": r["seq"],
                "epoch": r["epoch"],
                "created_s": r["created_s"],
                **json.loads(r["data"]),
            }
            for r in rows
        ]

    @_guarded
    def export(self, run_id: str, fmt: Literal["json", "csv"] = "json") -> str:
        """JSON: everything about the run incl. the latest parameters. CSV: epoch metrics."""
        info = self.run(run_id)
        if fmt == "csv":
            recs = info["epochs"]
            cols: list[str] = []
            for rec in recs:
                cols += [k for k in rec if k not in cols and k not in (TYPE_KEY, LEGACY_KEY)]
            buf = io.StringIO()
            w = csv.DictWriter(
                buf, fieldnames=cols or ["epoch"], extrasaction="ignore", lineterminator="\n"
            )
            w.writeheader()
            w.writerows(recs)
            return buf.getvalue()
        if fmt != "json":
            raise StoreError(f"--format: {fmt!r} — allowed: json, csv")
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM checkpoints WHERE run_id = ? ORDER BY epoch DESC LIMIT 1",
                (info["id"],),
            ).fetchone()
        info["latest_state"] = _plain(json.loads(row["state"])) if row else None
        info["step_diagnostics"] = self.steps(info["id"])
        info["calibrations"] = [c for c in self.calibrations() if c["run_id"] == info["id"]]
        return json.dumps(info, indent=2)

    def _one(self, query: str, *args: Any) -> sqlite3.Row:
        with self._lock:
            row = self._db.execute(query, args).fetchone()
        if row is None:
            raise StoreError(f"not found: {args}")
        return row


def _epoch_row(rid: str, rec: Any) -> tuple[Any, ...]:
    data = (
        {k: v for k, v in encode(rec).items() if k not in (TYPE_KEY, LEGACY_KEY)}
        if dataclasses.is_dataclass(rec)
        else dict(rec)
    )

    def num(key: str) -> Any:
        v = data.get(key)
        return v if isinstance(v, (int, float)) else None

    return (
        rid,
        int(data["epoch"]),
        num("train_accuracy"),
        num("test_accuracy"),
        num("skipped"),
        num("seconds"),
        json.dumps(data),
    )


def _plain(obj: Any) -> Any:
    """Encoded state without tags: arrays as nested lists (for people and other tools)."""
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"]).reshape(obj["shape"]).tolist()
        return {k: _plain(v) for k, v in obj.items() if k not in (TYPE_KEY, LEGACY_KEY)}
    return obj


def step_summary(report: Any) -> dict[str, Any]:
    """Compact diagnostics of a controller ``StepReport``: loss (rad²), valid and skipped
    sample counts, whether parameters were updated, gradient norms (model units)."""
    out: dict[str, Any] = {}
    for key in ("loss", "updated", "skipped_unlocked", "skipped_basin_jump"):
        v = getattr(report, key, None)
        if v is not None:
            out[key] = v.item() if isinstance(v, np.generic) else v
    valid = getattr(report, "valid", None)
    if valid is not None:
        out["n_valid"] = int(np.sum(valid))
    for key in ("grad_omega", "grad_coupling"):
        g = getattr(report, key, None)
        out[f"{key}_norm"] = None if g is None else float(np.linalg.norm(g))
    return out


class RunRecorder:
    """A :class:`~phasegrad_hw.learning.loop.LoopObserver` that records a run in the store.

    ``on_epoch_end`` checkpoints the state (one transaction, with the buffered step records);
    ``on_step`` buffers :func:`step_summary` of every ``step_every``-th step (0 = none).
    """

    def __init__(
        self, store: RunStore, run_id: str, *, start_epoch: int = 0, step_every: int = 0
    ) -> None:
        self.store, self.run_id = store, run_id
        self.epoch = start_epoch
        self.steps = 0
        self.step_every = max(0, int(step_every))

    def on_run_start(self, plan: RunPlan) -> None:
        self.epoch = plan.first_epoch

    def on_step(self, report: StepReport) -> None:
        self.steps += 1
        if self.step_every and self.steps % self.step_every == 0:
            self.store.record_step(
                self.run_id, self.epoch + 1, {"step": self.steps, **step_summary(report)}
            )

    def on_epoch_end(self, state: LoopState) -> None:
        self.store.save_checkpoint(self.run_id, state)
        self.epoch = int(state.epoch)
