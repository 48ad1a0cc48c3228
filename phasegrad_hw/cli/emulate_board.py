"""``phasegrad-hw emulate board``: the controller-board firmware on a pty or a TCP port.

Prints one line ``board <pty path>`` or ``board <host>:<port>`` (usable as
``--device serial://<that>``), serves until SIGINT/SIGTERM, then leaves the chip safe.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import Field, ValidationError, model_validator

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.errors import ConfigError

log = logging.getLogger(__name__)


class EmulateBoardOptions(StrictModel):
    """Validated options of ``emulate board``."""

    device: Path
    pty: bool = False
    tcp: int | None = Field(default=None, ge=0, le=65535)
    host: str = "127.0.0.1"
    fault: str = ""
    dac_bits: int = Field(default=16, ge=4, le=24)
    seed: int | None = None
    reset_on_connect: bool = False

    @model_validator(mode="after")
    def _one_transport(self) -> EmulateBoardOptions:
        if self.pty == (self.tcp is not None):
            raise ValueError("choose exactly one of --pty or --tcp PORT")
        return self


def serve_board(opts: EmulateBoardOptions, out: Any = None) -> None:
    """Build the chip + firmware and serve in this thread until a signal arrives."""
    from phasegrad_hw.device.registry import open_substrate
    from phasegrad_hw.firmware_models.board import BoardFirmware
    from phasegrad_hw.firmware_models.server import FaultConfig, LineServer

    stream = out or sys.stdout
    faults = FaultConfig.parse(opts.fault)
    chip = open_substrate(opts.device, seed=opts.seed, transfer=None)  # maps live on the host
    firmware = BoardFirmware(chip, dac_bits=opts.dac_bits)
    server = LineServer(firmware, faults, reset_on_connect=opts.reset_on_connect)

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: stopping the board", signum)
        server.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def ready(address: str) -> None:
        print(f"board {address}", file=stream, flush=True)

    server.run_forever("pty" if opts.pty else "tcp", opts.host, opts.tcp or 0, on_ready=ready)
    log.info("board stopped; chip left safe")


def register(groups: Any) -> None:
    @groups.emulate.command("board")
    def board(
        device: Path = typer.Option(
            ..., "--device", help="Device file of the emulated chip (TOML/YAML/JSON)."
        ),
        pty: bool = typer.Option(False, "--pty", help="Serve on a new pseudo-terminal."),
        tcp: int | None = typer.Option(
            None, "--tcp", help="Serve on this TCP port (0 = any free port)."
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="TCP address to bind."),
        fault: str = typer.Option(
            "", "--fault", help="Faults, e.g. delay=0.2,drop=0.1,corrupt=0.05,disconnect_after=50"
        ),
        dac_bits: int = typer.Option(16, "--dac-bits", help="Bias DAC resolution, bits."),
        seed: int | None = typer.Option(None, "--seed", help="Seed of the chip emulator."),
        reset_on_connect: bool = typer.Option(
            False, "--reset-on-connect", help="Reboot on each TCP connection (DTR-style)."
        ),
    ) -> None:
        """Run the controller-board firmware for an emulated chip on a pty or TCP port."""
        try:
            opts = EmulateBoardOptions(
                device=device,
                pty=pty,
                tcp=tcp,
                host=host,
                fault=fault,
                dac_bits=dac_bits,
                seed=seed,
                reset_on_connect=reset_on_connect,
            )
        except ValidationError as exc:
            typer.echo(format_validation_error(exc, "emulate board: "), err=True)
            raise typer.Exit(2) from None
        try:
            serve_board(opts)
        except ConfigError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
