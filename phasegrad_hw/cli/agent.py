"""``phasegrad-hw agent``: serve a device over MQTT request/response.

``phasegrad-hw agent --device DEVICE --broker mqtt://[USER:PASS@]HOST:PORT --name BENCH/DEVICE``
opens DEVICE (a device file or URI), serves it as ``{prefix}/BENCH/DEVICE`` until SIGINT,
SIGTERM or SIGHUP, then leaves it safe (clamp released, safe biases) within 2 s and prints
``agent stats {…}``. Credentials also come from ``PHASEGRAD_HW_MQTT_USERNAME`` /
``PHASEGRAD_HW_MQTT_PASSWORD``; a broker that admits anonymous clients is refused unless
``--allow-anonymous``. Prints one line ``agent BENCH/DEVICE ready`` once it serves (scripts
and tests wait for it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from pydantic import Field, ValidationError

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.errors import ConfigError, SubstrateError

log = logging.getLogger(__name__)
ENV_USER = "PHASEGRAD_HW_MQTT_USERNAME"
ENV_PASS = "PHASEGRAD_HW_MQTT_PASSWORD"


class AgentOptions(StrictModel):
    """Validated options of ``agent``."""

    device: str = Field(min_length=1)
    broker: str = Field(min_length=1)
    name: str = Field(min_length=3)
    prefix: str = "phasegrad"
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = False
    seed: int | None = None
    allow_anonymous: bool = False


def run_agent(opts: AgentOptions) -> None:
    """Open the device, serve it until SIGINT/SIGTERM/SIGHUP, leave it safe."""
    import asyncio
    import dataclasses
    import json

    from phasegrad_hw.device.registry import open_substrate
    from phasegrad_hw.fleet.agent import Agent, serve_until_signal
    from phasegrad_hw.wire.mqtt import BrokerConfig

    broker, _, _ = BrokerConfig.parse(opts.broker, username=opts.username, password=opts.password)
    tls = {
        k: v
        for k, v in (("ca", opts.tls_ca), ("cert", opts.tls_cert), ("key", opts.tls_key))
        if v is not None
    }
    if tls or opts.tls_insecure:
        broker = broker.model_copy(update={**tls, "tls": True, "insecure": opts.tls_insecure})
    substrate = open_substrate(opts.device, seed=opts.seed)
    agent = Agent(
        substrate, broker, opts.name, prefix=opts.prefix, allow_anonymous=opts.allow_anonymous
    )
    asyncio.run(
        serve_until_signal(
            agent,
            on_ready=lambda: typer.echo(f"agent {opts.name} ready"),
            on_stopped=lambda st: typer.echo("agent stats " + json.dumps(dataclasses.asdict(st))),
        )
    )


def register(groups: object) -> None:
    app: typer.Typer = groups.app  # type: ignore[attr-defined]

    @app.command("agent")
    def agent_cmd(
        device: str = typer.Option(..., "--device", help="Device file or URI to serve."),
        broker: str = typer.Option(
            ..., "--broker", help="mqtt://[USER:PASS@]HOST:PORT[?tls=1&ca=…]"
        ),
        name: str = typer.Option(..., "--name", help="BENCH/DEVICE (topic names)."),
        prefix: str = typer.Option("phasegrad", "--prefix", help="Topic prefix."),
        username: str | None = typer.Option(None, "--username", envvar=ENV_USER),
        password: str | None = typer.Option(None, "--password", envvar=ENV_PASS),
        tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA certificate (enables TLS)."),
        tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Client certificate."),
        tls_key: Path | None = typer.Option(None, "--tls-key", help="Client key."),
        tls_insecure: bool = typer.Option(False, "--tls-insecure", help="No server check."),
        seed: int | None = typer.Option(None, "--seed", help="Seed of an emulated device."),
        allow_anonymous: bool = typer.Option(
            False,
            "--allow-anonymous",
            help="Serve even on a broker that admits clients without credentials (warns).",
        ),
    ) -> None:
        """Serve a device over MQTT request/response until SIGINT/SIGTERM/SIGHUP."""
        try:
            opts = AgentOptions(
                device=device,
                broker=broker,
                name=name,
                prefix=prefix,
                username=username,
                password=password,
                tls_ca=tls_ca,
                tls_cert=tls_cert,
                tls_key=tls_key,
                tls_insecure=tls_insecure,
                seed=seed,
                allow_anonymous=allow_anonymous,
            )
            run_agent(opts)
        except ValidationError as exc:
            typer.echo(format_validation_error(exc, "agent: "), err=True)
            raise typer.Exit(2) from None
        except ConfigError as exc:
            typer.echo(f"agent: {exc}", err=True)
            raise typer.Exit(2) from None
        except SubstrateError as exc:  # the device could not be opened or failed
            typer.echo(f"agent: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(1) from None
