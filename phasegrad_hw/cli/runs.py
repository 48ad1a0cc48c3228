"""``phasegrad-hw runs list | show RUN | export RUN --format json|csv``: the run store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import typer

STORE_HELP = "Run store (SQLite file)."


def _open(path: Path) -> object:
    from phasegrad_hw.store import RunStore, StoreError

    if not path.exists():
        typer.echo(f"--store: {path} does not exist", err=True)
        raise typer.Exit(2)
    try:
        return RunStore(path)
    except StoreError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _fmt(x: object) -> str:
    return f"{100 * x:5.1f} %" if isinstance(x, float) else "    –  "


def register(groups: object) -> None:
    runs: typer.Typer = groups.runs  # type: ignore[attr-defined]

    @runs.command("list")
    def list_cmd(
        store: Path = typer.Option(Path("phasegrad-hw-runs.sqlite"), "--store", help=STORE_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """All runs, newest first."""
        from phasegrad_hw.store import RunStore

        st = _open(store)
        assert isinstance(st, RunStore)
        with st:
            rows = st.list_runs()
            if as_json:
                typer.echo(json.dumps(rows, indent=2))
                return
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
        store: Path = typer.Option(Path("phasegrad-hw-runs.sqlite"), "--store", help=STORE_HELP),
    ) -> None:
        """A run's config, status and per-epoch metrics."""
        from phasegrad_hw.store import RunStore, StoreError

        st = _open(store)
        assert isinstance(st, RunStore)
        with st:
            try:
                info = st.run(run)
            except StoreError as exc:
                typer.echo(str(exc), err=True)
                raise typer.Exit(2) from None
        typer.echo(f"run {info['id']}  ({info['status']})  device {info['device']}")
        typer.echo("config: " + json.dumps(info["config"], sort_keys=True))
        if info["summary"]:
            typer.echo("summary: " + json.dumps(info["summary"], sort_keys=True))
        typer.echo(
            f"checkpoints: epochs {info['checkpoint_epochs']}; step records: {info['steps']}"
        )
        typer.echo(f"{'epoch':>5} {'train':>7} {'test':>7} {'skipped':>7} {'seconds':>8}")
        for e in info["epochs"]:
            sec = e.get("seconds")
            typer.echo(
                f"{e['epoch']:>5} {_fmt(e.get('train_accuracy')):>7} "
                f"{_fmt(e.get('test_accuracy')):>7} {e.get('skipped', ''):>7} "
                f"{(f'{sec:.2f}' if isinstance(sec, float) else ''):>8}"
            )

    @runs.command("export")
    def export_cmd(
        run: str = typer.Argument(..., help="Run id (or a unique prefix)."),
        fmt: str = typer.Option("json", "--format", help="json (everything) or csv (epochs)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="File (default: stdout)."),
        store: Path = typer.Option(Path("phasegrad-hw-runs.sqlite"), "--store", help=STORE_HELP),
    ) -> None:
        """Export a run: JSON (config, metrics, latest parameters, steps) or CSV (epochs)."""
        from phasegrad_hw.store import RunStore, StoreError

        if fmt not in ("json", "csv"):
            typer.echo(f"--format: {fmt!r} — allowed: json, csv", err=True)
            raise typer.Exit(2)
        kind: Literal["json", "csv"] = "json" if fmt == "json" else "csv"
        st = _open(store)
        assert isinstance(st, RunStore)
        with st:
            try:
                text = st.export(run, kind)
            except StoreError as exc:
                typer.echo(str(exc), err=True)
                raise typer.Exit(2) from None
        if out is None:
            typer.echo(text, nl=not text.endswith("\n"))
        else:
            out.write_text(text)
