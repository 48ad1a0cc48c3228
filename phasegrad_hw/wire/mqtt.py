"""MQTT plumbing shared by telemetry, the device agent and the ``mqtt`` backend.

* :class:`BrokerConfig` — where the broker is and how to log in (``mqtt://[USER:PASS@]HOST:PORT``
  plus query options), credentials also from ``PHASEGRAD_HW_MQTT_USERNAME`` /
  ``PHASEGRAD_HW_MQTT_PASSWORD``, TLS from ``?tls=1&ca=…&cert=…&key=…&insecure=1`` or
  ``PHASEGRAD_HW_MQTT_CA`` / ``_CERT`` / ``_KEY``.
* :class:`Topics` — the topic layout ``{prefix}/{bench}/{device}/…``.
* Request/reply payloads of protocol 2 (Pydantic, strict JSON types, validated on both ends;
  docs/mqtt.md is the specification): device requests carry the ``session`` nonce the agent
  gave the controller at ``open`` and an integer ``id`` that must grow within the session
  (a repeat of the last id is answered from the agent's cache, never re-applied; an older
  id is refused); replies carry the agent's ``boot`` id, so a restarted agent is noticed.
* Input limits applied *before* parsing (:func:`envelope_problem`: size, bracket depth) and
  error texts that quote offending values as short excerpts only.

The MQTT library (aiomqtt, through :mod:`phasegrad_hw.wire.mqtt_client`) is imported only when
a client is made.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from phasegrad_hw.config import StrictModel, format_validation_error
from phasegrad_hw.errors import ConfigError

if TYPE_CHECKING:
    import aiomqtt

    from phasegrad_hw.wire.mqtt_client import Client, Intercept

ENV_USERNAME = "PHASEGRAD_HW_MQTT_USERNAME"
ENV_PASSWORD = "PHASEGRAD_HW_MQTT_PASSWORD"
ENV_CA = "PHASEGRAD_HW_MQTT_CA"
ENV_CERT = "PHASEGRAD_HW_MQTT_CERT"
ENV_KEY = "PHASEGRAD_HW_MQTT_KEY"
DEFAULT_PREFIX = "phasegrad"
SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
PROTOCOL_VERSION = 2
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
        self,
        identifier: str,
        *,
        will: aiomqtt.Will | None = None,
        timeout_s: float = 10.0,
        max_queued: int = 0,
        intercept: Intercept | None = None,
    ) -> Client:
        """A new (not yet connected) client (:class:`phasegrad_hw.wire.mqtt_client.Client`:
        packets written at once, ``intercept`` takes messages as they arrive, ``receive()``);
        MQTT v5, clean start, TCP_NODELAY on its socket. ``max_queued`` > 0 bounds the incoming
        queue (messages beyond it are dropped, so a flood cannot exhaust memory); ``timeout_s``
        bounds connect/publish/disconnect."""
        import socket
        import ssl

        import aiomqtt

        from phasegrad_hw.wire.mqtt_client import Client

        tls_params = None
        if self.tls:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=str(self.ca) if self.ca else None,
                certfile=str(self.cert) if self.cert else None,
                keyfile=str(self.key) if self.key else None,
                cert_reqs=ssl.CERT_NONE if self.insecure else ssl.CERT_REQUIRED,
            )
        return Client(
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
            max_queued_incoming_messages=max_queued,
            # small request/reply messages: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            intercept=intercept,
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
# Protocol 2 (docs/mqtt.md): every device request is bound to a session that the controller
# opens; the agent answers with its boot id so a restarted agent is never mistaken for the
# one that holds the device state. ``batch`` (agents that list it in ``capabilities``) is a
# backward-compatible addition: one request, one id, several operations.
MAX_ID = 2**53 - 1  # ids are JSON integers every client language represents exactly
MAX_VECTOR = 1_000_000
MAX_DEPTH = 4  # {…: [numbers]} is depth 2, a batch {"ops": [{…: [numbers]}]} 4; deeper: dropped
MAX_BATCH_OPS = 64  # operations in one batch (an agent states its limit in ``hello``)
LEGACY_BATCH_OPS = 16  # … the limit of agents before 2.3, which do not state it
BATCH = "batch"  # the capability (in ``hello``) of an agent that executes batches
STOP_IF_UNLOCKED = "stop_if_unlocked"  # … and ends one at an unlocked read when asked
EXCERPT_CHARS = 48  # an offending value is quoted with at most this many characters
MAX_MESSAGE_CHARS = 400  # an error message (reply and log) is at most this long
NONCE_HEX = 32  # session nonces, boot ids and last-will tokens: 128-bit, lower-case hex

RequestId = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]
ClientId = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
Nonce = Annotated[str, Field(strict=True, pattern=rf"^[0-9a-f]{{{NONCE_HEX}}}$")]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Vector = Annotated[list[Number], Field(max_length=MAX_VECTOR)]
_CLIENT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_NONCE_RE = re.compile(rf"^[0-9a-f]{{{NONCE_HEX}}}$")


class _Message(StrictModel):
    """Strict JSON types: a number field takes only JSON numbers (no booleans, no strings)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Request(_Message):
    v: Literal[2]
    id: RequestId
    reply_to: ClientId


class _SessionRequest(_Request):
    session: Nonce


class Hello(_Request):
    """Read-only: the device model, abilities and the agent's boot id (no session needed)."""

    op: Literal["hello"]


class Open(_Request):
    """Open a session for ``reply_to``; ``will`` is the secret token of its last will."""

    op: Literal["open"]
    will: Nonce


# Device operations: the fields of each, without the envelope. A request of that ``op`` is the
# envelope (v, id, reply_to, session) plus these fields; a ``batch`` lists them bare.
class SetFrequenciesOp(_Message):
    """Natural frequencies ω (N,), model units."""

    op: Literal["set_frequencies"]
    omega: Vector


class SetBiasesOp(_Message):
    """Raw biases (N,) in the device's physical unit."""

    op: Literal["set_biases"]
    values: Vector


class SetCouplingsOp(_Message):
    """Couplings on the model's edges (E,), model units."""

    op: Literal["set_couplings"]
    values: Vector


class ClampOp(_Message):
    """Nudge the outputs toward ``target`` (rad) with strength ``beta``; ``direction`` −1
    pushes away (the −β state)."""

    op: Literal["clamp"]
    target: Vector
    beta: Number
    direction: Annotated[int, Field(strict=True, ge=-1, le=1)] = 1


class ReleaseOp(_Message):
    op: Literal["release"]


class ReadPhasesOp(_Message):
    op: Literal["read_phases"]
    averages: Annotated[int, Field(strict=True, ge=1, le=MAX_ID)] = 1


class ReadFrequenciesOp(_Message):
    op: Literal["read_frequencies"]


class ReseedOp(_Message):
    op: Literal["reseed"]
    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]


class MakeSafeOp(_Message):
    """Release the clamp, switch a drive off and set safe biases (the device's safe state)."""

    op: Literal["make_safe"]


class SetHeldPhasesOp(_Message):
    """Injection phases (rad) of the held input oscillators, ``roles.held`` in that order
    (devices with ``held_phases``; docs/design.md §2)."""

    op: Literal["set_held_phases"]
    phases: Vector


class SetDriveOp(_Message):
    """External drive: amplitudes F (n_drive,) model units on ``roles.drive``, phase Ψ
    (rad); amplitude 0 switches it off (devices with ``drive``)."""

    op: Literal["set_drive"]
    amplitude: Vector
    phase: Number


Operation = (
    SetFrequenciesOp
    | SetBiasesOp
    | SetCouplingsOp
    | ClampOp
    | ReleaseOp
    | ReadPhasesOp
    | ReadFrequenciesOp
    | ReseedOp
    | MakeSafeOp
    | SetHeldPhasesOp
    | SetDriveOp
)


class SetFrequencies(_SessionRequest, SetFrequenciesOp):
    pass


class SetBiases(_SessionRequest, SetBiasesOp):
    pass


class SetCouplings(_SessionRequest, SetCouplingsOp):
    pass


class Clamp(_SessionRequest, ClampOp):
    pass


class Release(_SessionRequest, ReleaseOp):
    pass


class ReadPhases(_SessionRequest, ReadPhasesOp):
    pass


class ReadFrequencies(_SessionRequest, ReadFrequenciesOp):
    pass


class MakeSafe(_Request, MakeSafeOp):
    """Release and set safe biases: inside a session (``session``), or as the controller's
    last will (``will``: the token its ``open`` registered), which also closes the session."""

    session: Nonce | None = None
    will: Nonce | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> MakeSafe:
        if (self.session is None) == (self.will is None):
            raise ValueError("make_safe needs exactly one of session, will")
        return self


class Reseed(_SessionRequest, ReseedOp):
    pass


class SetHeldPhases(_SessionRequest, SetHeldPhasesOp):
    pass


class SetDrive(_SessionRequest, SetDriveOp):
    pass


class Batch(_SessionRequest):
    """1 … :data:`MAX_BATCH_OPS` device operations, executed in order as one request (one id,
    one reply); the first that fails stops the batch. Result ``{"results": [one per
    operation]}``; on a failure ``{"results": [those before it], "failed": its index}``.
    ``stop_if_unlocked``: a ``read_phases`` that finds the network unlocked ends the batch
    there, successfully (fewer results; no nudge of an unlocked network)."""

    op: Literal["batch"]
    ops: Annotated[
        list[Annotated[Operation, Field(discriminator="op")]],
        Field(min_length=1, max_length=MAX_BATCH_OPS),
    ]
    stop_if_unlocked: bool = False


Request = Annotated[
    Hello
    | Open
    | SetFrequencies
    | SetBiases
    | SetCouplings
    | Clamp
    | Release
    | ReadPhases
    | ReadFrequencies
    | MakeSafe
    | Reseed
    | SetHeldPhases
    | SetDrive
    | Batch,
    Field(discriminator="op"),
]
REQUEST: TypeAdapter[Request] = TypeAdapter(Request)

ErrorKind = Literal[
    "limit", "lock_lost", "timeout", "protocol", "device", "invalid", "session", "internal"
]


class ErrorInfo(_Message):
    kind: ErrorKind
    message: str


class Reply(_Message):
    """``boot``: the agent's boot id; ``session``: the request's session, echoed (``None`` for
    hello/open/invalid requests without one); ``took_s``: time the agent spent on it (s)."""

    v: Literal[2] = 2
    id: RequestId
    ok: bool
    boot: Nonce
    session: Nonce | None = None
    took_s: Annotated[float, Field(ge=0)] = 0.0
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None


# results (validated by the client)
class HelloResult(StrictModel):
    model: dict[str, Any]
    capabilities: list[str]
    reseed: bool
    agent: str
    boot: Nonce
    broker_probe_ms: float | None = None
    max_batch_ops: int = Field(default=LEGACY_BATCH_OPS, ge=1)


class OpenResult(HelloResult):
    session: Nonce


class PhaseResult(StrictModel):
    phases: list[float]
    spread: list[float]
    locked: bool
    timestamp: float
    averages: int = Field(ge=1)
    settle_s: float = Field(ge=0)


class BatchResult(StrictModel):
    """``results``: one result per executed operation; ``failed``: index of the operation
    that stopped the batch (only in an error reply)."""

    results: list[dict[str, Any]]
    failed: int | None = Field(default=None, ge=0)


class VectorResult(StrictModel):
    values: list[float]


class EmptyResult(StrictModel):
    pass


class ReseedResult(StrictModel):
    supported: bool


def max_request_bytes(n: int, e: int) -> int:
    """Largest request payload (bytes) an agent of a device with ``n`` oscillators and ``e``
    edges accepts: room for one ω vector and one coupling vector in one batch (a JSON number
    takes at most 32 bytes) plus 4096 for everything else. A controller splits a longer
    batch into several, in order."""
    return 4096 + 32 * (n + e)


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (an offending value is never echoed whole)."""
    if isinstance(value, (list, dict)) and len(value) > limit:  # no giant repr() first
        kind = "list" if isinstance(value, list) else "object"
        return f"<{kind} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """An error message cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_validation_error(exc: ValidationError, source: str = "request: ", most: int = 3) -> str:
    """The first ``most`` problems, ``path: excerpt — message``, each value quoted briefly."""
    errs = exc.errors()
    parts = []
    for err in errs[:most]:
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{path}: {excerpt(err.get('input'))} — {msg}")
    more = f" (+{len(errs) - most} more)" if len(errs) > most else ""
    return clip_message(source + "; ".join(parts) + more)


_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(_BRACKETS)))
_SHORT_BRACKETS = 4096  # bracket strings up to this long are scanned in Python, longer in numpy


def envelope_problem(raw: bytes, max_bytes: int, max_depth: int = MAX_DEPTH) -> str | None:
    """Why ``raw`` must be dropped unparsed — too long, or brackets nested deeper than
    ``max_depth`` (counted over every byte, strings included: no valid request has brackets in
    a string) — or ``None``. Linear in the size; no recursion, no parse."""
    if len(raw) > max_bytes:
        return f"payload of {len(raw)} bytes exceeds the limit of {max_bytes} bytes"
    brackets = raw.translate(None, _NOT_BRACKETS)  # only [ ] { } are left, in order
    if len(brackets) <= _SHORT_BRACKETS:  # a request has a few dozen: no array set-up
        depth = level = 0
        for b in brackets:
            if b == 0x5B or b == 0x7B:
                level += 1
                depth = max(depth, level)
            else:
                level -= 1
    else:
        a = np.frombuffer(brackets, dtype=np.uint8)
        step = ((a == 0x5B) | (a == 0x7B)).astype(np.int32) * 2 - 1
        depth = int(np.cumsum(step).max(initial=0))
    if depth > max_depth:
        return f"brackets nested {depth} deep (at most {max_depth})"
    return None


def validate_request(raw: bytes) -> Request:
    """The strict schema on a payload that passed :func:`envelope_problem`; raises
    :class:`ConfigError` with a short message (values quoted as excerpts only)."""
    try:
        return REQUEST.validate_json(raw)
    except ValidationError as exc:
        raise ConfigError(short_validation_error(exc)) from None


def salvage_ids(raw: bytes) -> tuple[int | None, str | None, str | None]:
    """``(id, reply_to, session)`` of a payload that failed validation, each only if it is
    well-formed (call after :func:`envelope_problem` passed: the parse is depth-bounded)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    rid, to, ses = data.get("id"), data.get("reply_to"), data.get("session")
    ok_id = type(rid) is int and 0 <= rid <= MAX_ID
    ok_to = isinstance(to, str) and _CLIENT_RE.fullmatch(to) is not None
    ok_ses = isinstance(ses, str) and _NONCE_RE.fullmatch(ses) is not None
    return (rid if ok_id else None), (to if ok_to else None), (ses if ok_ses else None)


def auth_failure(exc: Exception) -> bool:
    """CONNACK codes of a refused login: v3 4/5 (bad credentials / not authorised), v5
    0x86/0x87."""
    rc = getattr(exc, "rc", None)
    return rc is not None and reason_code(rc) in (4, 5, 0x86, 0x87)


def reason_code(rc: Any) -> int:
    """An MQTT return/reason code as an int (paho gives ints or ReasonCode objects)."""
    return int(rc.value) if hasattr(rc, "value") else int(rc)
