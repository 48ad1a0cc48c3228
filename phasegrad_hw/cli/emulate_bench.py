"""``phasegrad-hw emulate bench``: SCPI bench instruments around an emulated chip, over TCP.

The SMU listens on PORT, the phase meter on PORT+1, the injection source on PORT+2 and, for a
chip with held inputs or driven oscillators, the input source (held phases, drive;
docs/design.md §8, §9) on PORT+3 (PORT 0: any free ports). Prints one line per instrument,
``<name> TCPIP::<host>::<port>::SOCKET``, then ``bench <path>``: a bench config
(``backend = "visa"``) usable as ``--device`` for ``train``. Serves until SIGINT/SIGTERM, then
leaves the emulated chip safe.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import typer
from pydantic import Field, ValidationError

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.errors import ConfigError

log = logging.getLogger(__name__)


class EmulateBenchOptions(StrictModel):
    """Validated options of ``emulate bench``."""

    device: Path
    tcp: int = Field(ge=0, le=65532)
    host: str = "127.0.0.1"
    out: Path | None = None
    fault: list[str] = Field(default_factory=list)
    seed: int | None = None


def build_emulator(opts: EmulateBenchOptions) -> Any:
    """The :class:`BenchEmulator` for ``opts.device`` (a chip file or a ``visa`` bench file)."""
    from phasegrad_hw.backends.visa_config import (
        INPUT_SOURCE,
        INSTRUMENTS,
        VisaBenchModel,
        bench_for_chip,
    )
    from phasegrad_hw.device.registry import load_device_model
    from phasegrad_hw.firmware_models.instruments import BenchEmulator, Fault

    model = load_device_model(opts.device)
    if isinstance(model, VisaBenchModel):
        bench = model
    else:  # wired one-to-one; the input source only when the chip has held inputs or a drive
        placeholder = "TCPIP::127.0.0.1::0::SOCKET"
        bench = bench_for_chip(model, dict.fromkeys((*INSTRUMENTS, INPUT_SOURCE), placeholder))
    # PORT, PORT+1, … in the order of bench.instruments() (the emulator's order too)
    ports = tuple(opts.tcp + k if opts.tcp else 0 for k in range(len(bench.instruments())))
    emu = BenchEmulator(bench, host=opts.host, ports=ports, seed=opts.seed)
    for spec in opts.fault:
        emu.inject(Fault.parse(spec))
    return emu


async def serve_bench(opts: EmulateBenchOptions, out: Any = None) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation); the chip is left safe on the way out."""
    stream = out or sys.stdout
    emu = build_emulator(opts)
    await emu.start()
    try:
        path = (
            opts.out or Path(tempfile.gettempdir()) / f"phasegrad-hw-bench-{emu.ports['smu']}.toml"
        )
        emu.bench_config().save(path)
        for name, res in emu.resources().items():
            print(f"{name} {res}", file=stream, flush=True)
        print(f"bench {path}", file=stream, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    finally:
        await emu.stop()
        log.info("bench stopped; chip left safe")


def register(groups: Any) -> None:
    @groups.emulate.command("bench")
    def bench(
        device: Path = typer.Option(
            ..., "--device", help="Device file of the emulated chip, or a visa bench file."
        ),
        tcp: int = typer.Option(
            ...,
            "--tcp",
            help="SMU port; phase meter PORT+1, injection PORT+2, input source (held inputs, "
            "drive) PORT+3 (0 = any free).",
        ),
        host: str = typer.Option("127.0.0.1", "--host", help="TCP address to bind."),
        out: Path | None = typer.Option(
            None, "--out", help="Where to write the bench config (default: a temp file)."
        ),
        fault: list[str] = typer.Option(
            [],
            "--fault",
            help="Fault KIND[:INSTRUMENT][:key=value…], e.g. drop:phase_meter:every=50:count=none "
            "(kinds: delay drop corrupt disconnect scpi_error trip); repeatable.",
        ),
        seed: int | None = typer.Option(None, "--seed", help="Noise seed of the chip emulator."),
    ) -> None:
        """Run an SMU, a phase meter, an injection source (and, for held inputs or a drive,
        an input source) for an emulated chip over TCP."""
        try:
            opts = EmulateBenchOptions(
                device=device, tcp=tcp, host=host, out=out, fault=fault, seed=seed
            )
        except ValidationError as exc:
            typer.echo(format_validation_error(exc, "emulate bench: "), err=True)
            raise typer.Exit(2) from None
        try:
            asyncio.run(serve_bench(opts))
        except (ConfigError, OSError) as exc:
            typer.echo(f"emulate bench: {exc}", err=True)
            raise typer.Exit(2) from None
