"""``phasegrad-hw runs list | show RUN | export RUN | plot RUN --out PNG | check``: the run
store (default :func:`phasegrad_hw.store.default_store_path`, the one ``train`` writes).

A store that is missing, not a run store, damaged or locked, and a run id that is unknown,
give one line on stderr naming the file and what to do, and exit 2.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from phasegrad_hw.cli import fail

if TYPE_CHECKING:
    from phasegrad_hw.store import RunStore

STORE_HELP = (
    "Run store (SQLite file) [default: $PHASEGRAD_HW_STORE, else "
    "~/.local/share/phasegrad-hw/runs.sqlite]."
)
CLI_LOCK_TIMEOUT_S = 3.0  # how long a command waits for a writer's lock before saying so


@contextmanager
def open_store(path: Path | None) -> Iterator[RunStore]:
    """The store at ``path`` (default: the per-user store) for reading; every store problem
    becomes one line on stderr and exit 2."""
    from phasegrad_hw.store import RunStore, StoreError

    try:
        st = RunStore(path, create=False, timeout_s=CLI_LOCK_TIMEOUT_S)
    except StoreError as exc:
        fail(str(exc))
    try:
        yield st
    except StoreError as exc:
        fail(str(exc))
    finally:
        st.close()


def _fmt(x: object) -> str:
    return f"{100 * x:5.1f} %" if isinstance(x, float) else "    –  "


def draw_curve(history: Sequence[dict[str, Any]], out: Path, title: str) -> None:
    """Training curve PNG: train and test accuracy (%) and the loss (rad², log scale) against
    the epoch. Raises ImportError without matplotlib (the ``plots`` extra)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (ax_a, ax_l) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True, constrained_layout=True)
    for key, label in (("train_accuracy", "train"), ("test_accuracy", "test")):
        ax_a.plot(ep, [100 * float(h.get(key, float("nan"))) for h in history], ".-", label=label)
    ax_a.set_ylabel("accuracy (%)")
    ax_a.set_ylim(0, 102)
    ax_a.legend(loc="lower right")
    ax_a.grid(alpha=0.3)
    loss = [float("nan") if h.get("loss") is None else float(h["loss"]) for h in history]
    ax_l.plot(ep, loss, ".-", color="tab:red")
    if any(v > 0 for v in loss):
        ax_l.set_yscale("log")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("mean training loss (rad²)")
    ax_l.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def register(groups: object) -> None:
    runs: typer.Typer = groups.runs  # type: ignore[attr-defined]

    @runs.command("list")
    def list_cmd(
        store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """All runs, newest first."""
        with open_store(store) as st:
            rows = st.list_runs()
            if as_json:
                typer.echo(json.dumps(rows, indent=2))
                return
            typer.echo(f"store {st.path}")
            typer.echo(
                f"{'run':24} {'created (UTC)':19} {'status':11} {'epoch':>5} {'test':>7}  device"
            )
            for r in rows:
                ep = st.epochs(r["id"])
                test = ep[-1].get("test_accuracy") if ep else None
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created_s"]))
                epoch = "" if r["epoch"] is None else str(r["epoch"])
                typer.echo(
                    f"{r['id']:24} {created:19} {r['status']:11} {epoch:>5} "
                    f"{_fmt(test):>7}  {r['device']}"
                )

    @runs.command("show")
    def show_cmd(
        run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
        store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    ) -> None:
        """A run: device contents hash, maps, options, version, status and per-epoch metrics."""
        with open_store(store) as st:
            info = st.run(run)
        cfg = info["config"]
        typer.echo(f"run {info['id']}  ({info['status']})  device {info['device']}")
        dev = cfg.get("device_file")
        if dev:
            typer.echo(f"device file: {dev['path']} sha256 {dev['sha256']}")
        maps = cfg.get("maps") or {}
        for kind in ("transfer", "noise"):
            m = maps.get(kind)
            text = f"{m['path']} sha256 {m['sha256']}" if m else "none"
            typer.echo(f"{kind} map: {text}")
        if cfg.get("data"):
            sha = (cfg.get("data_file") or {}).get("sha256", "?")
            typer.echo(f"data: {cfg['data']} sha256 {sha}")
        typer.echo(
            f"version {cfg.get('version', '?')}  git {cfg.get('git_revision') or '-'}  "
            f"host {cfg.get('host', '?')}  operator {cfg.get('operator', '?')}"
        )
        if cfg.get("init_from"):
            typer.echo(f"initialised from run {cfg['init_from']}")
        typer.echo("options: " + json.dumps(cfg.get("options", cfg), sort_keys=True))
        for ch in cfg.get("changes", []):
            typer.echo("resumed with changes: " + json.dumps(ch, sort_keys=True))
        summary = info["summary"] or {}
        if summary:
            brief = {k: summary[k] for k in ("final_test_accuracy", "epochs", "seconds")}
            typer.echo("summary: " + json.dumps(brief, sort_keys=True))
        typer.echo(
            f"checkpoints: epochs {info['checkpoint_epochs']}; step records: {info['steps']}"
        )
        typer.echo(
            f"{'epoch':>5} {'train':>7} {'test':>7} {'loss':>10} {'skipped':>7} {'seconds':>8}"
        )
        for e in info["epochs"]:
            sec, loss = e.get("seconds"), e.get("loss")
            typer.echo(
                f"{e['epoch']:>5} {_fmt(e.get('train_accuracy')):>7} "
                f"{_fmt(e.get('test_accuracy')):>7} "
                f"{(f'{loss:.4g}' if isinstance(loss, float) else '–'):>10} "
                f"{e.get('skipped', ''):>7} "
                f"{(f'{sec:.2f}' if isinstance(sec, float) else ''):>8}"
            )

    @runs.command("export")
    def export_cmd(
        run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
        fmt: str = typer.Option(
            "json", "--format", help="json (everything, parameters included) or csv (epochs)."
        ),
        out: Path | None = typer.Option(None, "--out", "-o", help="File (default: stdout)."),
        store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    ) -> None:
        """Export a run: JSON (config, metrics, final parameters, steps) or CSV (epochs)."""
        if fmt not in ("json", "csv"):
            fail(f"--format: {fmt!r} — allowed: json, csv")
        kind: Literal["json", "csv"] = "json" if fmt == "json" else "csv"
        with open_store(store) as st:
            text = st.export(run, kind)
        if out is None:
            typer.echo(text, nl=not text.endswith("\n"))
        else:
            out.write_text(text)

    @runs.command("plot")
    def plot_cmd(
        run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
        out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
        store: Path | None = typer.Option(None, "--store", help=STORE_HELP),
    ) -> None:
        """Training curve of a run (accuracy and loss per epoch) as a PNG."""
        with open_store(store) as st:
            info = st.run(run)
        if not info["epochs"]:
            fail(f"run {info['id']}: no epoch recorded yet, nothing to plot")
        opts = info["config"].get("options", {})
        title = f"run {info['id']}: {opts.get('task', '?')} on {Path(info['device']).name}"
        try:
            draw_curve(info["epochs"], out, title)
        except ImportError:
            fail("runs plot: needs matplotlib (pip install 'phasegrad-hw[plots]')")
        typer.echo(f"wrote {out}")

    @runs.command("check")
    def check_cmd(store: Path | None = typer.Option(None, "--store", help=STORE_HELP)) -> None:
        """SQLite integrity check and every checkpoint's checksum; a damaged store: one line
        naming it and the first problem, exit 2."""
        with open_store(store) as st:
            problems = st.check()
            path = st.path
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            fail(f"{path}: damaged: {problems[0]}{more}; move it away and keep a copy")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        typer.echo(f"{path}: ok (integrity check and checkpoint checksums; sha256 {digest})")
