"""MQTT plumbing shared by telemetry, the device agent and the ``mqtt`` backend.

* :class:`BrokerConfig` — where the broker is and how to log in (``mqtt://[USER:PASS@]HOST:PORT``
  plus query options), credentials also from ``PHASEGRAD_HW_MQTT_USERNAME`` /
  ``PHASEGRAD_HW_MQTT_PASSWORD``, TLS from ``?tls=1&ca=…&cert=…&key=…&insecure=1`` or
  ``PHASEGRAD_HW_MQTT_CA`` / ``_CERT`` / ``_KEY``.
* :class:`Topics` — the topic layout ``{prefix}/{bench}/{device}/…``.
* Request/reply payloads (Pydantic, validated on both ends): a request carries an ``id`` that
  the agent uses for idempotency (a repeated id is answered from a cache, never re-applied)
  and the client uses for correlation (a reply whose id has no waiting request is dropped).

The MQTT library (aiomqtt) is imported only when a client is made.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, TypeAdapter, ValidationError

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.errors import ConfigError

if TYPE_CHECKING:
    import aiomqtt

ENV_USERNAME = "PHASEGRAD_HW_MQTT_USERNAME"
ENV_PASSWORD = "PHASEGRAD_HW_MQTT_PASSWORD"
ENV_CA = "PHASEGRAD_HW_MQTT_CA"
ENV_CERT = "PHASEGRAD_HW_MQTT_CERT"
ENV_KEY = "PHASEGRAD_HW_MQTT_KEY"
DEFAULT_PREFIX = "phasegrad"
SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
PROTOCOL_VERSION = 1
REDACTED = "***"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(name: str, text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ConfigError(f"{name}: {text!r} — allowed: 1/0, true/false, yes/no, on/off")


def check_segment(field: str, value: str) -> str:
    """A topic segment (bench, device, prefix part, client id): letters, digits, ``_.-``."""
    if not SEGMENT.match(value):
        raise ConfigError(f"{field}: {value!r} — allowed: 1–64 characters of A–Z a–z 0–9 _ . -")
    return value


def parse_name(name: str, field: str = "--name") -> tuple[str, str]:
    """``BENCH/DEVICE`` → (bench, device)."""
    parts = name.strip("/").split("/")
    if len(parts) != 2:
        raise ConfigError(f"{field}: {name!r} — expected BENCH/DEVICE (two segments)")
    return check_segment(f"{field} (bench)", parts[0]), check_segment(f"{field} (device)", parts[1])


class BrokerConfig(StrictModel):
    """Broker address, credentials and TLS options. ``keepalive_s`` in s."""

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    keepalive_s: int = Field(default=10, ge=1, le=3600)

    @classmethod
    def parse(
        cls,
        uri: str,
        *,
        username: str | None = None,
        password: str | None = None,
        env: Mapping[str, str] | None = None,
        field: str = "--broker",
    ) -> tuple[BrokerConfig, str, dict[str, str]]:
        """Parse ``mqtt://[USER:PASS@]HOST:PORT[/PATH][?opts]``.

        Returns the config, the path (without slashes at the ends) and the query options that
        are not broker options (e.g. ``timeout``). Explicit ``username``/``password`` win over
        the URI, which wins over the environment.
        """
        env = os.environ if env is None else env
        parts = urlsplit(uri)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"{field}: {uri!r} — scheme must be mqtt:// (or mqtts:// for TLS)")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"{field}: {uri!r} — the port must be a number in 1…65535") from None
        if not parts.hostname:
            raise ConfigError(f"{field}: {uri!r} — no host (expected mqtt://HOST:PORT)")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        uri_password = unquote(parts.password) if parts.password else None
        if uri_password == REDACTED:  # a URI read back from the run store: use the env
            uri_password = None
        data: dict[str, Any] = {
            "host": parts.hostname,
            "port": port or (8883 if parts.scheme == "mqtts" else 1883),
            "username": username
            or (unquote(parts.username) if parts.username else None)
            or env.get(ENV_USERNAME)
            or None,
            "password": password or uri_password or env.get(ENV_PASSWORD) or None,
            "tls": parts.scheme == "mqtts",
        }
        for key, var in (("ca", ENV_CA), ("cert", ENV_CERT), ("key", ENV_KEY)):
            value = query.pop(key, None) or env.get(var)
            if value:
                data[key] = value
                data["tls"] = True
        if "tls" in query:
            data["tls"] = _flag(f"{field} ?tls", query.pop("tls"))
        if "insecure" in query:
            data["insecure"] = _flag(f"{field} ?insecure", query.pop("insecure"))
        if "keepalive" in query:
            data["keepalive_s"] = query.pop("keepalive")
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{field}: ")) from None
        return cfg, parts.path.strip("/"), query

    def client(
        self, identifier: str, *, will: aiomqtt.Will | None = None, timeout_s: float = 10.0
    ) -> aiomqtt.Client:
        """A new (not yet connected) aiomqtt client; MQTT v5, clean start."""
        import socket
        import ssl

        import aiomqtt

        tls_params = None
        if self.tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=str(self.ca) if self.ca else None,
                certfile=str(self.cert) if self.cert else None,
                keyfile=str(self.key) if self.key else None,
                cert_reqs=ssl.CERT_NONE if self.insecure else ssl.CERT_REQUIRED,
            )
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=identifier,
            will=will,
            keepalive=self.keepalive_s,
            timeout=timeout_s,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_params=tls_params,
            tls_insecure=self.insecure if self.tls else None,
            # small request/reply messages: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    def uri(self) -> str:
        """The address without credentials (for logs)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Topics:
    """Topic layout of one bench/device."""

    bench: str
    device: str
    prefix: str = DEFAULT_PREFIX

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.bench}/{self.device}"

    # device agent (remote substrate)
    @property
    def request(self) -> str:
        return f"{self.base}/rpc/req"

    def reply(self, client: str) -> str:
        return f"{self.base}/rpc/rep/{client}"

    @property
    def agent_status(self) -> str:
        return f"{self.base}/agent"

    # telemetry
    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def metrics(self) -> str:
        return f"{self.base}/metrics"

    @property
    def steps(self) -> str:
        return f"{self.base}/steps"

    @property
    def calibration(self) -> str:
        return f"{self.base}/calibration"


# --------------------------------------------------------------------------- payloads
RequestId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,96}$")]
ClientId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
MAX_VECTOR = 1_000_000


class _Request(StrictModel):
    v: Literal[1] = 1
    id: RequestId
    reply_to: ClientId


class Hello(_Request):
    op: Literal["hello"] = "hello"


class SetFrequencies(_Request):
    op: Literal["set_frequencies"] = "set_frequencies"
    omega: list[float] = Field(max_length=MAX_VECTOR)


class SetBiases(_Request):
    op: Literal["set_biases"] = "set_biases"
    values: list[float] = Field(max_length=MAX_VECTOR)


class SetCouplings(_Request):
    op: Literal["set_couplings"] = "set_couplings"
    values: list[float] = Field(max_length=MAX_VECTOR)


class Clamp(_Request):
    op: Literal["clamp"] = "clamp"
    target: list[float] = Field(max_length=MAX_VECTOR)
    beta: float
    direction: Literal[1, -1] = 1


class Release(_Request):
    op: Literal["release"] = "release"


class ReadPhases(_Request):
    op: Literal["read_phases"] = "read_phases"
    averages: int = Field(default=1, ge=1)


class ReadFrequencies(_Request):
    op: Literal["read_frequencies"] = "read_frequencies"


class MakeSafe(_Request):
    op: Literal["make_safe"] = "make_safe"


class Reseed(_Request):
    op: Literal["reseed"] = "reseed"
    seed: int = Field(ge=0)


Request = Annotated[
    Hello
    | SetFrequencies
    | SetBiases
    | SetCouplings
    | Clamp
    | Release
    | ReadPhases
    | ReadFrequencies
    | MakeSafe
    | Reseed,
    Field(discriminator="op"),
]
REQUEST: TypeAdapter[Request] = TypeAdapter(Request)

ErrorKind = Literal[
    "limit", "lock_lost", "timeout", "protocol", "device", "invalid", "session", "internal"
]


class ErrorInfo(StrictModel):
    kind: ErrorKind
    message: str


class Reply(StrictModel):
    v: Literal[1] = 1
    id: RequestId
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None


# results (validated by the client)
class HelloResult(StrictModel):
    model: dict[str, Any]
    capabilities: list[str]
    reseed: bool
    agent: str


class PhaseResult(StrictModel):
    phases: list[float]
    spread: list[float]
    locked: bool
    timestamp: float
    averages: int = Field(ge=1)
    settle_s: float = Field(ge=0)


class VectorResult(StrictModel):
    values: list[float]


class EmptyResult(StrictModel):
    pass


class ReseedResult(StrictModel):
    supported: bool


def parse_request(raw: bytes) -> Request:
    """Validate a request payload; raises :class:`ConfigError` (one line per problem)."""
    try:
        return REQUEST.validate_json(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "request: ")) from None
