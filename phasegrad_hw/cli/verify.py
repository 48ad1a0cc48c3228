"""``phasegrad-hw verify``: the published identity, finite-β, asymmetry and phase-lag tables."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field, field_validator

from phasegrad_hw.cli import Groups


class VerifyOptions(BaseModel):
    """Validated CLI options: sizes are oscillator counts in [3, 1000]."""

    model_config = ConfigDict(extra="forbid")
    sizes: list[int] = Field(min_length=1)
    json_path: Path | None = None

    @field_validator("sizes")
    @classmethod
    def _sizes_in_range(cls, v: list[int]) -> list[int]:
        for n in v:
            if not 3 <= n <= 1000:
                raise ValueError(f"size {n} is out of range; allowed 3..1000")
        return v


def _parse_sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--sizes: {text!r} must be comma-separated integers") from exc


def register(groups: Groups) -> None:
    @groups.app.command("verify")
    def verify(
        sizes: str = typer.Option(
            "6,10,15,20,30,50,100,200",
            "--sizes",
            help="Comma-separated network sizes for the identity table.",
        ),
        json_path: Path | None = typer.Option(None, "--json", help="Write all tables as JSON."),
        autograd: bool = typer.Option(
            False,
            "--autograd",
            help="Also check the identity with JAX differentiating an unrolled Newton solver "
            "(independent of the implicit and finite-difference code; extra 'autograd').",
        ),
        plot: Path | None = typer.Option(
            None, help="Write the identity, finite-β and asymmetry figures (PNG) into this folder."
        ),
    ) -> None:
        """Reproduce the published gradient checks (identity, finite β, asymmetry, phase lag)."""
        from pydantic import ValidationError
        from rich.console import Console
        from rich.table import Table

        try:
            opts = VerifyOptions(sizes=_parse_sizes(sizes), json_path=json_path)
        except ValidationError as exc:
            raise typer.BadParameter(str(exc.errors()[0]["msg"]), param_hint="--sizes") from exc
        from phasegrad_hw.studies import verify as v

        t0 = time.perf_counter()
        try:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):  # small dense problems: threads only contend
                doc = v.run_all(opts.sizes)
        except ImportError:
            doc = v.run_all(opts.sizes)
        if autograd:
            doc["autograd"] = _autograd_rows(opts.sizes)
        seconds = time.perf_counter() - t0
        con = Console(width=max(120, Console().width))
        specs = [
            (
                "Identity (β=1e-4, FD ε=1e-5)",
                "identity",
                ["N", "learnable", "cos_tp_fd", "cos_tp_ift", "residual"],
            ),
            (
                "Finite β (20 networks, N=15; |scale error|)",
                "finite_beta",
                ["beta", "mode", "mean_cos", "worst_cos", "mean_scale_error", "worst_scale_error"],
            ),
            (
                "Asymmetry (N=15, 10 seeds)",
                "asymmetry",
                ["asymmetry", "mean_cos", "std_cos", "published"],
            ),
            (
                "Phase lag ψ (rad; N=15, 10 seeds)",
                "phase_lag",
                ["phase_lag", "mean_cos", "std_cos"],
            ),
        ]
        if autograd:
            specs.append(
                (
                    "Automatic differentiation (JAX, unrolled Newton) vs implicit gradient",
                    "autograd",
                    ["N", "rel_error_warm", "rel_error_perturbed", "residual", "iterations"],
                )
            )
        for title, key, cols in specs:
            tab = Table(title=title)
            for c in cols:
                tab.add_column(c, justify="right", no_wrap=True)
            for row in doc[key]:
                tab.add_row(*[_fmt(row[c]) for c in cols])
            con.print(tab)
        con.print(f"verify took {seconds:.1f} s")
        if plot is not None:
            from phasegrad_hw.studies.figures import write_figures

            for path in write_figures({"verify": doc}, plot):
                con.print(f"wrote {path}")
        if opts.json_path is not None:
            opts.json_path.write_text(json.dumps(doc, indent=2))


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return f"{x:.15f}" if 0.9 < x <= 1.0 + 1e-12 else f"{x:.3g}"
    return "-" if x is None else str(x)


def _autograd_rows(sizes: list[int]) -> list[dict[str, object]]:
    """The autograd table, or a one-line error (exit 2) when JAX is not installed."""
    from dataclasses import asdict

    from phasegrad_hw.studies.autograd import autograd_table

    try:
        return [asdict(r) for r in autograd_table(sizes)]
    except RuntimeError as exc:  # JAX missing
        typer.echo(f"verify --autograd: {exc}", err=True)
        raise typer.Exit(2) from None
