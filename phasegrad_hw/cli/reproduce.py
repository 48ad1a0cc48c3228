"""``phasegrad-hw reproduce vowels``: the published vowel ablation and the designed fix.

Published set-up (arXiv 2604.10272, DESIGN.md §2): 2+5+2 network, K = 2·U(0.5,1.5) (chain
2·U(0.5,1.0)), online SGD lr 1e-3, β = 0.1, margin 0.2, clip 2, 200 epochs, 80/20 split;
targets −m (correct) / +m (other); success = final test accuracy > 60 %. Ablation: ω-only,
K-only, both, K on 7 random edges; random vs spectral init; readouts arg-max-cos (published)
and nearest template — both read from the *same* trained networks.

Designed set-ups (same network and task, own rows): ``mean_phase`` — targets, loss and
decision on the outputs' common phase (class 0: all outputs at −m, class 1: at +m; decision:
nearest template = sign of the mean output phase); ``difference`` — loss on the output
phase difference with decision sign(θ_o1 − θ_o2) (reported as a negative control).

All seeds and configurations sharing a loss are trained as one vectorised ensemble
(:mod:`phasegrad_hw.engine.ensemble`); each member equals its own per-seed run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from phasegrad_hw.cli import Groups

PARAMS = ("omega", "K", "both", "K7")
INITS = ("random", "spectral")
SUCCESS = 0.6


class ReproduceOptions(BaseModel):
    """Validated ``reproduce vowels`` options."""

    model_config = ConfigDict(extra="forbid")
    data: Path | None
    seeds: int = Field(ge=1, le=10_000)
    epochs: int = Field(ge=1, le=10_000)
    task: str
    hidden: int = Field(ge=1, le=64)
    setups: list[Literal["published", "mean_phase", "difference"]]
    params: list[Literal["omega", "K", "both", "K7"]]
    inits: list[Literal["random", "spectral"]]


def output_modes(out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Evidence: how the two outputs move across test inputs (rad).

    Common mode c = (θ_o1 + θ_o2)/2 and differential Δ = θ_o1 − θ_o2 per test sample;
    returns the mean over members of their spread across inputs and of the class separation
    |mean_class1 − mean_class0|, the per-class means, for c and for Δ, and the fraction of
    members whose mean Δ is positive.
    """
    ok = np.all(np.isfinite(out), axis=(1, 2))
    o = out[ok]
    if len(o) == 0:
        return {}
    c = o.mean(axis=-1)
    d = o[..., 0] - o[..., 1]
    res = {}
    for name, v in (("common", c), ("differential", d)):
        res[f"{name}_std_rad"] = float(v.std(axis=1).mean())
        res[f"{name}_class_separation_rad"] = float(
            np.abs(v[:, y == 1].mean(axis=1) - v[:, y == 0].mean(axis=1)).mean()
        )
        res[f"{name}_class0_mean_rad"] = float(v[:, y == 0].mean())
        res[f"{name}_class1_mean_rad"] = float(v[:, y == 1].mean())
    # sign of the learned output offset Δ (θ_o1 − θ_o2): with arg-max cos it decides polarity
    res["fraction_differential_positive"] = float((d.mean(axis=1) > 0).mean())
    return res


def run_vowel_study(
    data: Any,
    task: str,
    hidden: int,
    seeds: list[int],
    epochs: int,
    setups: list[str],
    progress: bool = True,
    log: Any = None,
    params: tuple[str, ...] = PARAMS,
    inits: tuple[str, ...] = INITS,
    checkpoint: Any = None,
    parallel: bool = False,
) -> dict[str, Any]:
    """Train every configuration and return ``{"rows": [...], "evidence": {...}}``."""
    from phasegrad_hw.device.presets import builder
    from phasegrad_hw.engine.ensemble import Ensemble
    from phasegrad_hw.engine.members import TrainConfig, members_from_builder
    from phasegrad_hw.learning.ep import EPRule
    from phasegrad_hw.learning.tasks import Encoding

    build = builder(hidden)
    rows: list[dict[str, Any]] = []
    evidence: dict[str, Any] = {}
    plan: dict[str, tuple[Encoding, list[str], list[tuple[str, str]]]] = {
        "published": (
            Encoding(readout="template"),
            ["argmax_cos", "template"],
            [(p, i) for p in params for i in inits],
        ),
        "mean_phase": (
            Encoding(readout="mean_phase"),
            ["mean_phase"],
            [(p, i) for p in params for i in inits],
        ),
        "difference": (
            Encoding(readout="difference"),
            ["difference"],
            [(p, "random") for p in ("omega", "both") if p in params],
        ),
    }
    for setup in setups:
        enc, readouts, configs = plan[setup]
        template = None
        members: list[Any] = []
        blocks: list[tuple[str, str, int, int]] = []
        for pset, init in configs:
            k7 = pset == "K7"  # the couplings of 7 random edges learn
            cfg = TrainConfig(
                epochs=epochs,
                init=init,  # type: ignore[arg-type]
                rule=EPRule(params="K" if k7 else pset),  # type: ignore[arg-type]
                k_subset=7 if k7 else None,
            )
            template, ms = members_from_builder(build, seeds, cfg)
            blocks.append((pset, init, len(members), len(members) + len(ms)))
            members += ms
        assert template is not None
        cfg = TrainConfig(epochs=epochs, test_every=max(1, epochs // 10), parallel=parallel)
        ens = Ensemble(template, members, data, enc, cfg)
        t0 = time.perf_counter()
        res = _run(ens, epochs, progress, f"{task} {setup} ({len(members)} networks)")
        seconds = time.perf_counter() - t0
        if log is not None:
            log(f"{setup}: {len(members)} networks, {epochs} epochs in {seconds:.0f} s")
        for pset, init, a, b in blocks:
            out = res.test_out[a:b]
            for ro in readouts:
                acc = res.accuracy(Encoding(readout=ro), data.y_test)[a:b]  # type: ignore[arg-type]
                ok = acc > SUCCESS
                rows.append(
                    {
                        "task": task,
                        "params": pset,
                        "init": init,
                        "readout": ro,
                        "loss": setup,
                        "hidden": hidden,
                        "seeds": len(seeds),
                        "epochs": epochs,
                        "success": int(ok.sum()),
                        "success_mean_acc": float(acc[ok].mean()) if ok.any() else None,
                        "success_std_acc": float(acc[ok].std()) if ok.any() else None,
                        "all_mean_acc": float(acc.mean()),
                        "inverted": int((acc < 1.0 - SUCCESS).sum()),
                        "skipped_samples": int(res.skipped[a:b].sum()),
                        "ensemble_seconds": seconds,
                    }
                )
            evidence[f"{setup}/{pset}/{init}"] = output_modes(out, data.y_test)
        if checkpoint is not None:
            checkpoint({"rows": rows, "evidence": evidence})
    return {"rows": rows, "evidence": evidence}


def _run(ens: Any, epochs: int, progress: bool, label: str) -> Any:
    if not progress:
        return ens.run()
    from rich.progress import Progress

    with Progress(transient=False) as bar:
        tid = bar.add_task(label, total=epochs)

        def on_epoch(s: Any) -> None:
            bar.update(tid, advance=1)

        return ens.run(on_epoch)


def _dump(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def register(groups: Groups) -> None:
    @groups.reproduce.command("vowels")
    def vowels(
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
        parallel: bool = typer.Option(
            True, "--parallel/--serial", help="Spread networks over CPU threads (same results)."
        ),
    ) -> None:
        """Reproduce the published vowel ablation (and the designed fix)."""
        from rich.console import Console
        from rich.table import Table

        from phasegrad_hw.learning.tasks import load_vowels, synthetic_vowels

        try:
            o = ReproduceOptions.model_validate(
                {
                    "data": data,
                    "seeds": seeds,
                    "epochs": epochs,
                    "task": task,
                    "hidden": hidden,
                    "setups": _split(setups),
                    "params": _split(params),
                    "inits": _split(inits),
                }
            )
        except ValidationError as exc:
            from phasegrad_hw.config import format_validation_error

            typer.echo(format_validation_error(exc, "--"), err=True)
            raise typer.Exit(2) from None
        classes = [c.strip() for c in o.task.split(",") if c.strip()]
        ds = load_vowels(o.data, classes) if o.data is not None else synthetic_vowels(classes)
        con = Console()
        t0 = time.perf_counter()
        result = run_vowel_study(
            ds,
            ",".join(classes),
            o.hidden,
            list(range(o.seeds)),
            o.epochs,
            list(o.setups),
            True,
            con.print,
            tuple(o.params),
            tuple(o.inits),
            lambda partial: _dump(json_path, partial),
            parallel,
        )
        result["seconds"] = time.perf_counter() - t0
        result["data"] = str(o.data) if o.data is not None else "synthetic"
        _dump(json_path, result)
        tab = Table(
            title=f"vowels {result['rows'][0]['task']} (2+{o.hidden}+2), "
            f"{o.seeds} seeds, {o.epochs} epochs"
        )
        for col in ("loss", "params", "init", "readout", "success", "succ. acc", "all acc", "inv."):
            tab.add_column(col)
        for r in result["rows"]:
            tab.add_row(
                r["loss"],
                r["params"],
                r["init"],
                r["readout"],
                f"{r['success']}/{r['seeds']}",
                _pct(r["success_mean_acc"]),
                f"{100 * r['all_mean_acc']:.1f}",
                str(r["inverted"]),
            )
        con.print(tab)
        if json_path is not None:
            con.print(f"rows written to {json_path}")
