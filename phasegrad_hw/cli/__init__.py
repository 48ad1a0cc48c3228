"""The ``phasegrad-hw`` command line.

Each command family lives in its own module under ``phasegrad_hw.cli`` and exposes
``register(root: Groups) -> None``; add the module's name to ``COMMAND_MODULES``. Modules
import heavy or optional libraries (instrument drivers, MQTT, plotting) inside the command
functions, so ``phasegrad-hw --help`` works with only the core dependencies installed.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import typer

COMMAND_MODULES: list[str] = [
    "verify",
    "emulate_board",
    "runs",
    "agent",
    "noise",
    "emulate_bench",
    "calibrate",
    "train",
    "reproduce",
    "sweep",
    "device",
]


@dataclass
class Groups:
    """The root app and its sub-command groups."""

    app: typer.Typer
    reproduce: typer.Typer
    emulate: typer.Typer
    calibrate: typer.Typer
    runs: typer.Typer


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="phasegrad-hw",
        help="Train coupled-oscillator hardware by equilibrium propagation, hardware in the loop.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
    )
    groups = Groups(
        app=app,
        reproduce=typer.Typer(help="Reproduce published results.", no_args_is_help=True),
        emulate=typer.Typer(
            help="Run emulated firmware and bench instruments.", no_args_is_help=True
        ),
        calibrate=typer.Typer(help="Calibrate a device.", no_args_is_help=True),
        runs=typer.Typer(help="Inspect the run store.", no_args_is_help=True),
    )

    @app.callback()
    def _root(
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    ) -> None:
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )

    for name in COMMAND_MODULES:
        importlib.import_module(f"phasegrad_hw.cli.{name}").register(groups)
    for sub, name in (
        (groups.reproduce, "reproduce"),
        (groups.emulate, "emulate"),
        (groups.calibrate, "calibrate"),
        (groups.runs, "runs"),
    ):
        if sub.registered_commands:
            app.add_typer(sub, name=name)
    return app


def main() -> None:
    build_app()()
