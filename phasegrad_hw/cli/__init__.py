"""The ``phasegrad-hw`` command line.

Each command family lives in its own module under ``phasegrad_hw.cli`` and exposes
``register(root: Groups) -> None``; add the module's name to ``COMMAND_MODULES``. Modules
import heavy or optional libraries (instrument drivers, MQTT, plotting) inside the command
functions, so ``phasegrad-hw --help`` works with only the core dependencies installed.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import NoReturn

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
    "bench",
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
    bench: typer.Typer | None = None


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code`` (2: bad input)."""
    typer.echo(one_line(message), err=True)
    raise typer.Exit(code)


def one_line(message: object) -> str:
    """A message on one line (the first line, with a count of the others)."""
    lines = [ln for ln in str(message).splitlines() if ln.strip()] or [""]
    more = f" (and {len(lines) - 1} more problems)" if len(lines) > 1 else ""
    return lines[0] + more


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an everyday mistake (bad option, missing file, damaged store,
    busy port, device refusal), or None for a real bug (which keeps its traceback)."""
    from phasegrad_hw.errors import ConfigError, SubstrateError
    from phasegrad_hw.learning.tasks import TaskError
    from phasegrad_hw.store import StoreError

    if isinstance(exc, (ConfigError, SubstrateError, TaskError, StoreError)):
        return one_line(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.ENOENT):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return None


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
        bench=typer.Typer(help="Bench files: check a bench.", no_args_is_help=True),
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
        (groups.bench, "bench"),
    ):
        assert sub is not None
        if sub.registered_commands:
            app.add_typer(sub, name=name)
    return app


def main() -> None:
    """The console script: every everyday mistake ends with one line on stderr and exit 2, a
    signal with a line and exit 128 + its number (:mod:`phasegrad_hw.cli.signals`)."""
    from phasegrad_hw.cli.signals import Interrupted

    app = build_app()
    try:
        app()
    except Interrupted as exc:
        typer.echo(f"phasegrad-hw: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        msg = user_error(exc)
        if msg is None:
            raise
        typer.echo(f"phasegrad-hw: {msg}", err=True)
        sys.exit(2)
