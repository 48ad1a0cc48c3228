"""``phasegrad-hw reproduce vowels``: option parsing and the table around
:func:`phasegrad_hw.studies.run_vowel_study`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from phasegrad_hw.cli import Groups, fail


def _dump(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _pm(mean: float | None, std: float | None) -> str:
    """Mean ± sample std of accuracies in %."""
    if mean is None or std is None:
        return _pct(mean)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def register(groups: Groups) -> None:
    register_fm(groups)

    @groups.reproduce.command("vowels")
    def vowels(
        *,
        data: Path | None = typer.Option(
            None, help="Hillenbrand-format CSV (vowel,F1,F2); synthetic formants if omitted."
        ),
        seeds: int = typer.Option(100, help="Seeds per configuration."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the rows here."),
        epochs: int = typer.Option(200, help="Epochs (published: 200)."),
        task: str = typer.Option("a,i", help="Two vowels, e.g. a,i or o,u."),
        hidden: int = typer.Option(5, help="Hidden chain length (published 5; try 8)."),
        setups: str = typer.Option(
            "published,mean_phase,difference",
            help="Comma list of published, mean_phase, difference.",
        ),
        params: str = typer.Option("omega,K,both,K7", help="Comma list of parameter sets."),
        inits: str = typer.Option("random,spectral", help="Comma list of initialisations."),
        split: str = typer.Option(
            "per-seed",
            help="per-seed (published: seed s trains and tests on its own 80/20 split) or "
            "fixed (one split for every seed).",
        ),
        draws: str = typer.Option(
            "published",
            help="published (seed s redraws the authors' seed s: their unstratified split, "
            "initial network and K7 edges) or own (the project's streams, stratified split).",
        ),
        parallel: bool = typer.Option(
            True, "--parallel/--serial", help="Spread networks over CPU threads (same results)."
        ),
        executor: str = typer.Option(
            "local",
            help="local (this process) or ray (seeds spread over the Ray cluster at "
            "RAY_ADDRESS, else a local Ray instance; same results; docs/cluster.md).",
        ),
        plot: Path | None = typer.Option(
            None, help="Write the ablation and seeding figures (PNG) into this folder."
        ),
    ) -> None:
        """Reproduce the published vowel ablation (and the designed fix)."""
        from rich.console import Console
        from rich.table import Table

        from phasegrad_hw.cli.progress import RichProgress
        from phasegrad_hw.cli.signals import Interrupted, interruptible
        from phasegrad_hw.studies import VowelStudyOptions, run_vowel_study

        try:
            o = VowelStudyOptions.model_validate(
                {
                    "data": data,
                    "seeds": seeds,
                    "epochs": epochs,
                    "task": task,
                    "hidden": hidden,
                    "setups": _split(setups),
                    "params": _split(params),
                    "inits": _split(inits),
                    "split": split.replace("-", "_"),
                    "draws": draws,
                    "parallel": parallel,
                }
            )
        except ValidationError as exc:
            from phasegrad_hw.config import format_validation_error

            fail(format_validation_error(exc, "--"))
        if o.data is not None and not Path(o.data).is_file():
            fail(f"--data: {o.data} does not exist (a Hillenbrand-format CSV: vowel,F1,F2)")
        if executor not in ("local", "ray"):
            fail(f"--executor: {executor!r} — allowed: local, ray")
        con = Console()
        try:
            with contextlib.ExitStack() as stack:
                ens = None
                if executor == "ray":
                    from phasegrad_hw.errors import ConfigError
                    from phasegrad_hw.fleet.cluster import Cluster
                    from phasegrad_hw.studies.executor import RayEnsembleExecutor

                    try:
                        stack.enter_context(Cluster())
                    except ConfigError as exc:
                        fail(str(exc))
                    ens = RayEnsembleExecutor()
                bar = stack.enter_context(RichProgress(con))
                stack.enter_context(interruptible())
                result = run_vowel_study(
                    o,
                    progress=bar,
                    log=con.print,
                    checkpoint=lambda part: _dump(json_path, part),
                    executor=ens,
                )
        except Interrupted as exc:
            kept = f"; rows finished so far are in {json_path}" if json_path else ""
            fail(f"reproduce vowels: {exc}{kept}", exc.exit_code)
        _dump(json_path, result)
        tab = Table(
            title=f"vowels {result['rows'][0]['task']} (2+{o.hidden}+2), "
            f"{o.seeds} seeds, {o.epochs} epochs, split {o.split.replace('_', '-')}, "
            f"{o.draws} draws; "
            f"converged = {result['convergence']}"
        )
        cols = ("loss", "params", "init", "readout", "converged", "conv. acc", "test>60%")
        for col in (*cols, "its acc", "all acc", "inv."):
            tab.add_column(col)
        for r in result["rows"]:
            tab.add_row(
                r["loss"],
                r["params"],
                r["init"],
                r["readout"],
                f"{r['success']}/{r['seeds']}",
                _pm(r["success_mean_acc"], r["success_std_acc"]),
                f"{r['success_test_defined']}/{r['seeds']}",
                _pm(r["success_test_defined_mean_acc"], r["success_test_defined_std_acc"]),
                f"{100 * r['all_mean_acc']:.1f}",
                str(r["inverted"]),
            )
        con.print(tab)
        _print_statistics(con, result)
        _write_plots(con, plot, {"vowels": result})
        if json_path is not None:
            con.print(f"rows written to {json_path}")


def _print_statistics(con: Any, result: dict[str, Any]) -> None:
    """The significance tests and the logistic-regression baseline of a vowel study."""
    from rich.table import Table

    tab = Table(
        title="significance (published set-up, arg-max-cos readout; converged = "
        "final-epoch training accuracy > 60 %, *_test_defined: final test accuracy > 60 %)"
    )
    for col in ("comparison", "test", "statistic", "p-value", "n"):
        tab.add_column(col)
    for name, tests in result.get("statistics", {}).items():
        for test in [tests] if "p_value" in tests else tests.values():
            tab.add_row(
                name,
                test["test"],
                f"{test['statistic']:.4g}",
                f"{test['p_value']:.3g}",
                "/".join(str(n) for n in test["n"]),
            )
    con.print(tab)
    pt = result.get("published_test")
    if pt is not None:
        ma, mb = pt["mean_test_accuracy"]
        sa, sb = pt["std_test_accuracy"]
        pa, pb = pt["published_mean_test_accuracy"]
        con.print(
            f"published test (ω vs K7, Welch's t on converged seeds' test accuracy): "
            f"p = {pt['p_value']:.3g} (published {pt['published_p_value']:.2g}; ours/published "
            f"{pt['ratio']:.3g}; within 10×: {'yes' if pt['within_10x'] else 'NO'}); "
            f"n = {pt['n'][0]}/{pt['n'][1]} (published {pt['published_n'][0]}/"
            f"{pt['published_n'][1]}); ω {100 * ma:.1f} ± {100 * sa:.1f} %, K7 {100 * mb:.1f} ± "
            f"{100 * sb:.1f} % (published {100 * pa:.1f} / {100 * pb:.1f} %)"
        )
    lr = result.get("logistic_regression")
    if lr is not None:
        con.print(
            f"logistic regression on the seed-0 split: train {100 * lr['train_accuracy']:.1f} %, "
            f"test {100 * lr['test_accuracy']:.1f} %"
        )


def _write_plots(con: Any, directory: Path | None, results: dict[str, Any]) -> None:
    """Figures of ``results`` into ``directory`` (each file named), if asked."""
    if directory is None:
        return
    from phasegrad_hw.studies.figures import write_figures

    for path in write_figures(results, directory):
        con.print(f"wrote {path}")


def register_fm(groups: Groups) -> None:
    @groups.reproduce.command("fm")
    def fm(
        seeds: int = typer.Option(5, help="Seeds (data draw, split and EP initialisation)."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the result here."),
        plot: Path | None = typer.Option(None, help="Write the FM figure (PNG) into this folder."),
    ) -> None:
        """The driven sensor bank on the published FM set-up: EP beside logistic regression
        on the same lock/beat coherence features, and the published numbers."""
        from rich.console import Console

        from phasegrad_hw.studies.fm import run_fm_study

        if not 1 <= seeds <= 1000:
            fail(f"--seeds: {seeds} — allowed 1…1000")
        con = Console()
        result = run_fm_study(seeds)
        ep, lr = result["ep"], result["logistic_regression"]
        con.print(
            f"EP on the driven bank: {100 * ep['mean_test_accuracy']:.1f} % mean test accuracy "
            f"(per seed {', '.join(f'{100 * a:.1f}' for a in ep['per_seed'])}); logistic "
            f"regression on the same features: {100 * lr['mean_test_accuracy']:.1f} %; "
            f"published: {result['published']}"
        )
        _dump(json_path, result)
        _write_plots(con, plot, {"fm": result})
