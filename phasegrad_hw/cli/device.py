"""``phasegrad-hw device new``: write a chip-scale layered device file (held inputs, bias
oscillators, signed couplings; docs/design.md §8)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from phasegrad_hw.cli import Groups


def _layers(text: str) -> tuple[int, int, int]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        typer.echo(
            f"--layers: {text!r} — allowed: three positive sizes IN,HIDDEN,OUT (e.g. 64,64,10; "
            "the solver handles one hidden layer)",
            err=True,
        )
        raise typer.Exit(2)
    return sizes[0], sizes[1], sizes[2]


def register(groups: Groups) -> None:
    dev = typer.Typer(help="Create device files.", no_args_is_help=True)

    @dev.command("new")
    def new(
        backend: str = typer.Option(..., help="simulated, cmos or optical."),
        layers: str = typer.Option(..., help="IN,HIDDEN,OUT oscillator counts, e.g. 64,64,10."),
        bias: int = typer.Option(2, help="Bias oscillators, held at 0, π/2, π, … rad."),
        out: Path = typer.Option(..., help="Device file to write (.toml, .yaml or .json)."),
        seed: int = typer.Option(0, help="Seed of the initial couplings."),
        name: str | None = typer.Option(None, help="Device name (default BACKEND-IN-H-OUT)."),
    ) -> None:
        """A layered device: IN held inputs and BIAS bias oscillators → HIDDEN → OUT outputs.

        Initial couplings K ~ N(0, 1/fan_in) as in the layered engine; every edge is
        invertible (signed K) on simulated, cmos (complementary ring output) and optical
        (phase shifter) chips. The reference is the first bias oscillator.
        """
        from phasegrad_hw.device.presets import layered_chip
        from phasegrad_hw.engine.layered import layered_couplings
        from phasegrad_hw.errors import ConfigError

        allowed = ("simulated", "cmos", "optical")
        if backend not in allowed:
            typer.echo(f"--backend: {backend!r} — allowed: {', '.join(allowed)}", err=True)
            raise typer.Exit(2)
        if not 1 <= bias <= 8:
            typer.echo(f"--bias: {bias} — allowed: 1…8 (the first is the reference)", err=True)
            raise typer.Exit(2)
        sizes = _layers(layers)
        phases = [0.5 * math.pi * k for k in range(bias)]
        K = layered_couplings(sizes, bias, seed)
        try:
            model = layered_chip(backend, sizes, phases, K.tolist(), name=name, seed=seed)
            model.save(out)
        except (ConfigError, ValueError) as exc:
            typer.echo(f"device new: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(
            f"{out}: {backend} device {sizes[0]}+{bias} bias → {sizes[1]} → {sizes[2]}, "
            f"{model.n} oscillators, {len(model.edges)} signed couplings (seed {seed})"
        )

    groups.app.add_typer(dev, name="device")
