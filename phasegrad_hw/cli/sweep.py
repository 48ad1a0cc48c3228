"""``phasegrad-hw sweep SPEC.toml``: option parsing and the live trial table around
:func:`phasegrad_hw.studies.sweep.run_sweep` (Ray tasks; docs/cluster.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from phasegrad_hw.cli import Groups

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from phasegrad_hw.studies.sweep import TrialResult


def _options(r: TrialResult, swept: list[str]) -> str:
    return " ".join(f"{k}={r.trial.options.get(k)}" for k in swept)


def _status(r: TrialResult) -> str:
    if r.error is not None:
        return f"failed: {r.error}"
    if r.pruned_at is not None:
        return f"stopped at {r.pruned_at} epochs"
    return "recorded earlier" if r.resumed else "done"


def _score(r: TrialResult) -> str:
    return "-" if math.isinf(r.score) else f"{r.score:.4f}"


class _Live:
    """The trial table: redrawn live on a terminal, else one printed line per trial."""

    def __init__(self, con: Console, swept: list[str]) -> None:
        self.con, self.swept = con, swept
        self.rows: list[TrialResult] = []
        self.total = 0
        self.live: Any = None

    def table(self) -> Table:
        from rich.table import Table

        tab = Table(title=f"sweep: {len(self.rows)}/{self.total} trials")
        for col in ("trial", "options", "score", "run", "status"):
            tab.add_column(col)
        for r in sorted(self.rows, key=lambda r: r.trial.index):
            tab.add_row(
                str(r.trial.index), _options(r, self.swept), _score(r), r.run_id or "-", _status(r)
            )
        return tab

    def start(self, sweep_id: str, total: int) -> None:
        self.total = total
        self.con.print(f"sweep {sweep_id}: {total} trials")
        if self.con.is_terminal:
            from rich.live import Live

            self.live = Live(self.table(), console=self.con, refresh_per_second=4)
            self.live.start()

    def add(self, r: TrialResult) -> None:
        self.rows.append(r)
        if self.live is not None:
            self.live.update(self.table())
        else:
            self.con.print(
                f"trial {r.trial.index} [{_options(r, self.swept)}] score {_score(r)} "
                f"run {r.run_id or '-'} {_status(r)}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def register(groups: Groups) -> None:
    @groups.app.command()
    def sweep(
        spec_path: Path = typer.Argument(..., metavar="SPEC", help="Sweep spec (TOML/YAML/JSON)."),
        store: Path = typer.Option(
            Path("phasegrad-hw-runs.sqlite"), help="Run store (SQLite): one run per trial."
        ),
        resume: str | None = typer.Option(
            None, help="Resume this sweep id (finished trials are not run again)."
        ),
        address: str | None = typer.Option(
            None, help="Ray cluster address (HOST:6379 or ray://HOST:10001); default: local."
        ),
        num_cpus: int | None = typer.Option(
            None, help="CPUs of the local Ray instance (default: the spec's, else all)."
        ),
        json_path: Path | None = typer.Option(None, "--json", help="Write the results here."),
    ) -> None:
        """Run a grid, random or successive-halving sweep of train or a study on Ray."""
        from rich.console import Console

        from phasegrad_hw.errors import ConfigError
        from phasegrad_hw.fleet.cluster import Cluster
        from phasegrad_hw.store import StoreError
        from phasegrad_hw.studies.sweep import SweepInterrupted, load_spec, plan_trials, run_sweep

        con = Console()
        live: _Live | None = None
        try:
            spec, base_dir = load_spec(spec_path)
            trials = plan_trials(spec, base_dir)
            if num_cpus is not None and num_cpus < 1:
                raise ConfigError(f"--num-cpus: {num_cpus} — must be >= 1")
            benches = {t.bench for t in trials if t.bench}
            swept = [*spec.grid, *spec.random]
            live = _Live(con, swept)
            with Cluster(address, num_cpus=num_cpus or spec.num_cpus, benches=benches):
                result = run_sweep(
                    spec, trials, store, sweep_id=resume, on_start=live.start, on_result=live.add
                )
        except (ConfigError, StoreError) as exc:
            if live is not None:
                live.stop()
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        except SweepInterrupted as exc:
            if live is not None:
                live.stop()
            typer.echo(
                f"{exc}; resume with: phasegrad-hw sweep {spec_path} --store {store} "
                f"--resume {exc.sweep_id}",
                err=True,
            )
            raise typer.Exit(130) from None
        live.stop()
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(result, indent=2))
            con.print(f"results written to {json_path}")
        best = result["best"]
        if best is not None:
            r = next(t for t in result["trials"] if t["index"] == best)
            con.print(f"best: trial {best} (score {r['score']}, run {r['run_id']})")
        con.print(f"sweep id: {result['sweep_id']} (store {store})")
        if result["failed"]:
            typer.echo(f"failed trials: {result['failed']} (re-run with --resume)", err=True)
            raise typer.Exit(1)
