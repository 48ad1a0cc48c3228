"""Serve any substrate over MQTT request/response (``phasegrad-hw agent``), protocol 2.

The agent subscribes to ``{prefix}/{bench}/{device}/rpc/req`` and answers on
``…/rpc/rep/{reply_to}`` (docs/mqtt.md is the specification). It calls the *public, validated*
methods of its own substrate, so a value outside the device limits is refused here too.

* **Input limits.** A payload longer than :attr:`Agent.max_payload_bytes` or nested deeper
  than :data:`~phasegrad_hw.wire.mqtt.MAX_DEPTH` is dropped before it is parsed; the schema
  is strict (numbers only where numbers belong); error replies and log lines quote offending
  values as short excerpts; any exception in handling is caught (never a crash).
* **Sessions.** ``open`` gives the controller (``reply_to``, its MQTT client id) a random
  session nonce; every device request must carry it and an id above the session's
  high-water mark. The last id is answered again from the cache (a retry after a lost
  reply); older ids, ids of another session, unknown sessions are refused (``session``
  error). Nothing is forgotten that would let a replay through: a session evicted from the
  table is refused as unknown, never reopened by a replay.
* **Batches.** A ``batch`` request lists up to ``MAX_BATCH_OPS`` device operations (the limit
  ``hello`` states as ``max_batch_ops``); they run
  in order with nothing in between (requests are handled one at a time), the first failure
  stops the batch and the reply names it (its index and op). The batch is one request for the
  session rules (one id, one cached reply): a retried batch is never re-applied. With
  ``stop_if_unlocked`` an unlocked ``read_phases`` ends it there (an EP step in one batch
  never nudges an unlocked network).
* **Held inputs, drive.** ``set_held_phases`` / ``set_drive`` reach the device's public,
  validated methods (lengths from its model, drive amplitudes within ``limits.drive_max``,
  checked before the device is touched); a device without the ability refuses them.
* **Boot id.** A random id per agent start, in every reply: a controller notices a restart
  (its device state is gone) instead of continuing silently.
* **Last will.** ``open`` registers a secret will token; the controller's MQTT last will is a
  ``make_safe`` carrying it. When the broker publishes it (the controller vanished) the agent
  makes the device safe and closes that session; a ``make_safe`` with any other token is
  refused.
* **Retained requests** are never executed (``retain`` seen as published) and are cleared
  from the request topic.
* **Anonymous brokers.** Before serving, the agent checks whether the broker accepts a
  client without credentials; then it refuses to serve unless ``allow_anonymous``, and warns
  on every start when it is given.
* **Stalled path probe.** At every connection the agent times a few QoS 1 exchanges between two
  short-lived clients of its own; far above the loopback figure it logs that the broker waits
  on Nagle + delayed ACK (``set_tcp_nodelay true``). Requests and replies travel at QoS 0, which
  avoids the stall; the figure is also reported to controllers (``broker_probe_ms``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.errors import (
    ConfigError,
    DeviceError,
    DeviceTimeoutError,
    LimitError,
    LockLostError,
    ProtocolError,
)
from phasegrad_hw.wire.mqtt import (
    BATCH,
    MAX_BATCH_OPS,
    NONCE_HEX,
    STOP_IF_UNLOCKED,
    Batch,
    BrokerConfig,
    ClampOp,
    ErrorInfo,
    ErrorKind,
    Hello,
    MakeSafe,
    MakeSafeOp,
    Open,
    Operation,
    ReadFrequenciesOp,
    ReadPhasesOp,
    ReleaseOp,
    Reply,
    Request,
    ReseedOp,
    SetBiasesOp,
    SetCouplingsOp,
    SetDriveOp,
    SetFrequenciesOp,
    SetHeldPhasesOp,
    Topics,
    auth_failure,
    check_segment,
    clip_message,
    envelope_problem,
    excerpt,
    max_request_bytes,
    parse_name,
    salvage_ids,
    validate_request,
)

log = logging.getLogger(__name__)
AGENT_VERSION = "phasegrad-hw-agent/2.3"  # protocol 2 + batch (+ stop_if_unlocked, held, drive,
# max_batch_ops in hello)
REMOTE_CAPABILITIES = (
    Capability.COUPLINGS,
    Capability.FREQUENCY_COUNTER,
    Capability.HELD_PHASES,
    Capability.DRIVE,
)
STALL_MS = 15.0  # ms; a loopback broker round trip is ~1 ms, Nagle + delayed ACK add ~40 ms
PROBES = 5
ANONYMOUS_HELP = (
    "set `allow_anonymous false` and a `password_file` in mosquitto.conf, "
    "or start the agent with --allow-anonymous to serve anyway"
)


@dataclass
class AgentStats:
    """Counters: ``received`` messages, ``executed`` device operations (each operation of a
    batch counts; ``ops`` counts per op, ``batch`` included), ``cached`` replies
    served again for a repeated last id, ``rejected`` invalid/out-of-limit/session-refused
    requests, ``dropped`` payloads nobody could be answered for (oversize, too deep, no
    id/reply_to), ``retained`` retained requests ignored, ``errors`` device failures;
    ``made_safe`` whether the device was confirmed safe at stop, ``stop_s`` seconds from the
    stop signal to that."""

    received: int = 0
    executed: int = 0
    cached: int = 0
    rejected: int = 0
    dropped: int = 0
    retained: int = 0
    errors: int = 0
    connections: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    made_safe: bool | None = None
    stop_s: float | None = None


@dataclass
class Session:
    """One controller's session: ``hwm`` is the highest id executed in it (-1: none yet);
    ``last`` the digest of that request and ``reply`` its reply (for a retry)."""

    client: str
    nonce: str
    will: str
    open_id: int
    open_reply: bytes = b""
    hwm: int = -1
    last: bytes = b""
    reply: bytes = b""
    closed: str | None = None  # why the session was closed (its requests are refused)


def error_kind(exc: BaseException) -> ErrorKind:
    """Map a substrate exception to the wire error kind."""
    if isinstance(exc, LimitError):
        return "limit"
    if isinstance(exc, LockLostError):
        return "lock_lost"
    if isinstance(exc, DeviceTimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, DeviceError):
        return "device"
    return "internal"


class _Throttle:
    """At most ``burst`` log lines per ``window_s`` s for one kind of event; the rest counted
    and reported with the next line that gets through (a flood cannot flood the log)."""

    def __init__(self, burst: int = 10, window_s: float = 10.0) -> None:
        self.burst, self.window_s = burst, window_s
        self.start, self.count, self.suppressed = 0.0, 0, 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self.start > self.window_s:
            self.start, self.count = now, 0
        self.count += 1
        if self.count > self.burst:
            self.suppressed += 1
            return
        if self.suppressed:
            msg += f" ({self.suppressed} similar messages suppressed)"
            self.suppressed = 0
        log.log(level, msg, *args)


class Agent:
    """Serves ``substrate`` as ``bench/device`` on a broker (see module docstring).

    ``max_payload_bytes`` defaults to :func:`~phasegrad_hw.wire.mqtt.max_request_bytes`
    (a batch with one ω and one coupling vector, with a wide margin); ``max_sessions`` bounds the
    session table (the least recently used session is evicted and then refused as unknown).
    """

    def __init__(
        self,
        substrate: OscillatorSubstrate,
        broker: BrokerConfig,
        name: str,
        *,
        prefix: str = "phasegrad",
        client_id: str | None = None,
        allow_anonymous: bool = False,
        max_payload_bytes: int | None = None,
        max_sessions: int = 256,
    ) -> None:
        bench, device = parse_name(name)
        self.topics = Topics(bench, device, check_segment("--prefix", prefix))
        self.substrate = substrate
        self.broker = broker
        self.boot = secrets.token_hex(NONCE_HEX // 2)
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.max_sessions = max_sessions
        m = substrate.model
        self.max_payload_bytes = max_payload_bytes or max_request_bytes(m.n, len(m.edges))
        self.allow_anonymous = allow_anonymous
        self.stats = AgentStats()
        self.client_id = check_segment("client id", client_id or f"agent-{bench}-{device}")
        self.ready = asyncio.Event()
        self.ack_timeout_s = 2.0  # s; no PUBACK within this = connection lost
        self.probe_ms: float | None = None  # median broker round trip of the last probe
        self._anonymous_checked = False
        self._stopping = False
        self._throttle = _Throttle()

    # -- request handling (transport-free; unit-testable) -------------------------
    async def handle(self, raw: bytes) -> tuple[str, bytes] | None:
        """Process one request payload; returns (reply_to, reply payload), or None when
        nobody can be answered (oversize, too deep, no valid id and reply_to). Never raises
        (except cancellation)."""
        self.stats.received += 1
        t0 = time.perf_counter()
        try:
            return await self._handle(raw, t0)
        except Exception as exc:  # a bug must not kill the agent: make safe, log, drop
            self.stats.errors += 1
            log.exception("internal error on a request: %s", excerpt(exc, 200))
            await self._make_safe_quietly()
            return None

    async def _handle(self, raw: bytes, t0: float) -> tuple[str, bytes] | None:
        problem = envelope_problem(raw, self.max_payload_bytes)
        if problem is not None:
            self.stats.dropped += 1
            self._throttle(logging.WARNING, "request dropped unparsed: %s", problem)
            return None
        try:
            req = validate_request(raw)  # (the envelope was checked just above)
        except ConfigError as exc:
            self.stats.rejected += 1
            rid, reply_to, session = salvage_ids(raw)
            self._throttle(logging.WARNING, "invalid request %s: %s", rid, str(exc))
            if rid is None or reply_to is None:
                self.stats.dropped += 1
                return None
            err = ErrorInfo(kind="invalid", message=str(exc))
            return reply_to, self._reply(rid, session, t0, error=err)
        if isinstance(req, Hello):
            self._count(req.op)
            return req.reply_to, self._reply(req.id, None, t0, result=self._hello())
        if isinstance(req, Open):
            self._count(req.op)
            return req.reply_to, self._open(req, t0)
        if isinstance(req, MakeSafe) and req.will is not None:
            return req.reply_to, await self._last_will(req, req.will, t0)
        out = await self._in_session(req, raw, t0)
        return None if out is None else (req.reply_to, out)

    def _reply(
        self,
        rid: int,
        session: str | None,
        t0: float,
        *,
        result: dict[str, Any] | None = None,
        error: ErrorInfo | None = None,
    ) -> bytes:
        if error is not None:
            error = ErrorInfo(kind=error.kind, message=clip_message(error.message))
        rep = Reply(
            id=rid,
            ok=error is None,
            boot=self.boot,
            session=session,
            took_s=time.perf_counter() - t0,
            result=result,
            error=error,
        )
        return rep.model_dump_json().encode()

    def _refuse(self, req: Request, kind: ErrorKind, message: str, t0: float) -> bytes:
        self.stats.rejected += 1
        self._throttle(logging.WARNING, "request %s (%s) refused: %s", req.id, req.op, message)
        session = getattr(req, "session", None)
        return self._reply(req.id, session, t0, error=ErrorInfo(kind=kind, message=message))

    def _count(self, op: str) -> None:
        self.stats.ops[op] = self.stats.ops.get(op, 0) + 1

    def _hello(self) -> dict[str, Any]:
        s = self.substrate
        return {
            "model": s.model.model_dump(mode="json"),
            "capabilities": [
                *(c.value for c in REMOTE_CAPABILITIES if c in s.capabilities),
                BATCH,
                STOP_IF_UNLOCKED,
            ],
            "reseed": Capability.RESEED in s.capabilities,
            "agent": AGENT_VERSION,
            "boot": self.boot,
            "broker_probe_ms": self.probe_ms,
            "max_batch_ops": MAX_BATCH_OPS,
        }

    def _open(self, req: Open, t0: float) -> bytes:
        old = self.sessions.get(req.reply_to)
        if old is not None and old.open_id == req.id and hmac.compare_digest(old.will, req.will):
            self.stats.cached += 1  # a retried open: the same session, not a new one
            return old.open_reply
        nonce = secrets.token_hex(NONCE_HEX // 2)
        ses = Session(req.reply_to, nonce, req.will, req.id)
        ses.open_reply = self._reply(req.id, None, t0, result={**self._hello(), "session": nonce})
        self.sessions.pop(req.reply_to, None)  # a newer open replaces the client's session
        self.sessions[req.reply_to] = ses
        while len(self.sessions) > self.max_sessions:
            gone, _ = self.sessions.popitem(last=False)
            log.info("session of %s evicted (table full); its requests are now refused", gone)
        log.info("session opened for %s", req.reply_to)
        return ses.open_reply

    async def _last_will(self, req: MakeSafe, will: str, t0: float) -> bytes:
        ses = self.sessions.get(req.reply_to)
        if ses is None or ses.closed or not hmac.compare_digest(ses.will, will):
            return self._refuse(
                req, "session", "make_safe with a last-will token of no open session", t0
            )
        self._count("will")
        ses.closed = (
            "its connection was lost (last will) and the device was made safe; "
            "open a new session before driving it again"
        )
        log.warning("client %s vanished (last will): making the device safe", req.reply_to)
        try:
            await self.substrate.make_safe()
        except Exception as exc:
            self.stats.errors += 1
            log.error("make_safe for the last will of %s failed: %s", req.reply_to, exc)
            err = ErrorInfo(kind=error_kind(exc), message=f"{type(exc).__name__}: {exc}")
            return self._reply(req.id, None, t0, error=err)
        return self._reply(req.id, None, t0, result={})

    async def _in_session(self, req: Request, raw: bytes, t0: float) -> bytes | None:
        session: str = getattr(req, "session", None) or ""
        ses = self.sessions.get(req.reply_to)
        if ses is None or not hmac.compare_digest(ses.nonce, session):
            return self._refuse(
                req,
                "session",
                f"unknown session for {req.reply_to} (agent boot {self.boot}: it restarted, "
                "or a newer open replaced the session); open a session",
                t0,
            )
        if ses.closed:
            return self._refuse(req, "session", f"session closed: {ses.closed}", t0)
        self.sessions.move_to_end(req.reply_to)
        digest = hashlib.sha256(raw).digest()  # a retry re-sends the same bytes
        if req.id == ses.hwm:
            if hmac.compare_digest(digest, ses.last):
                self.stats.cached += 1
                return ses.reply or None  # empty: still executing; its reply will come
            return self._refuse(
                req, "session", f"id {req.id} was already used for another request", t0
            )
        if req.id < ses.hwm:
            return self._refuse(
                req, "session", f"stale id {req.id}: this session is at id {ses.hwm}", t0
            )
        ses.hwm, ses.last, ses.reply = req.id, digest, b""  # taken before it runs
        ses.reply = await self._execute(req, session, t0)
        return ses.reply

    async def _execute(self, req: Request, session: str, t0: float) -> bytes:
        assert not isinstance(req, (Hello, Open)), "answered before any session check"
        if isinstance(req, Batch):
            return await self._execute_batch(req, session, t0)
        try:
            result = await self._dispatch(req)
        except Exception as exc:
            err = await self._failure(exc, req.id, req.op)
            return self._reply(req.id, session, t0, error=err)
        return self._reply(req.id, session, t0, result=result)

    async def _execute_batch(self, req: Batch, session: str, t0: float) -> bytes:
        """The operations in order, nothing else in between; the first failure stops the batch
        and is reported with its index (the results of the operations before it included)."""
        self._count(req.op)
        results: list[dict[str, Any]] = []
        for i, op in enumerate(req.ops):
            try:
                results.append(await self._dispatch(op))
                if req.stop_if_unlocked and isinstance(op, ReadPhasesOp):
                    if not results[-1]["locked"]:
                        break  # no nudge of an unlocked network: the batch ends here
            except Exception as exc:
                err = await self._failure(exc, req.id, f"batch operation {i} ({op.op})")
                where = f"operation {i} ({op.op}) of {len(req.ops)}: "
                err = ErrorInfo(kind=err.kind, message=where + err.message)
                return self._reply(
                    req.id, session, t0, result={"results": results, "failed": i}, error=err
                )
        return self._reply(req.id, session, t0, result={"results": results})

    async def _failure(self, exc: Exception, rid: int, what: str) -> ErrorInfo:
        """Count and log a failed operation; a device failure (not a refused value) leaves the
        device safe. Returns the error to report."""
        if isinstance(exc, (LimitError, ValueError)):
            self.stats.rejected += 1
            kind: ErrorKind = error_kind(exc) if isinstance(exc, LimitError) else "invalid"
            self._throttle(
                logging.WARNING, "request %s (%s) refused: %s", rid, what, clip_message(str(exc))
            )
            return ErrorInfo(kind=kind, message=str(exc))
        self.stats.errors += 1
        log.error("request %s (%s) failed: %s", rid, what, clip_message(str(exc)))
        await self._make_safe_quietly()
        return ErrorInfo(kind=error_kind(exc), message=f"{type(exc).__name__}: {exc}")

    async def _make_safe_quietly(self) -> None:
        try:
            await self.substrate.make_safe()
        except Exception as exc:  # logged; the reply reports the original failure
            log.error("make_safe after a failure also failed: %s", clip_message(str(exc)))

    async def _dispatch(self, req: Operation) -> dict[str, Any]:
        """One device operation (a request of that op, or an entry of a batch) on the
        substrate's public, validated methods."""
        s = self.substrate
        self._count(req.op)
        self.stats.executed += 1
        if isinstance(req, SetFrequenciesOp):
            await s.set_frequencies(req.omega)
        elif isinstance(req, SetBiasesOp):
            await s.set_biases(req.values)
        elif isinstance(req, SetCouplingsOp):
            await s.set_couplings(req.values)
        elif isinstance(req, ClampOp):
            await s.clamp(req.target, req.beta, req.direction)
        elif isinstance(req, ReleaseOp):
            await s.release()
        elif isinstance(req, MakeSafeOp):
            await s.make_safe()
        elif isinstance(req, SetHeldPhasesOp):
            if Capability.HELD_PHASES not in s.capabilities:
                raise ValueError("this device has no held inputs (held_phases)")
            await s.set_held_phases(req.phases)
        elif isinstance(req, SetDriveOp):
            if Capability.DRIVE not in s.capabilities:
                raise ValueError("this device cannot apply a drive (drive)")
            await s.set_drive(req.amplitude, req.phase)
        elif isinstance(req, ReadPhasesOp):
            r = await s.read_phases(req.averages)
            return {
                "phases": r.phases.tolist(),
                "spread": r.spread.tolist(),
                "locked": r.locked,
                "timestamp": r.timestamp,
                "averages": r.averages,
                "settle_s": r.settle_s,
            }
        elif isinstance(req, ReadFrequenciesOp):
            return {"values": (await s.read_frequencies()).tolist()}
        elif isinstance(req, ReseedOp):
            supported = Capability.RESEED in s.capabilities
            if supported:
                s.reseed(req.seed)
            return {"supported": supported}
        return {}

    # -- transport ------------------------------------------------------------------
    async def check_anonymous(self) -> None:
        """Refuse (:class:`ConfigError`) a broker that lets a client in without credentials,
        unless ``allow_anonymous`` — then warn. Raises ``aiomqtt.MqttError`` when the broker
        cannot be reached (the caller retries)."""
        import aiomqtt

        anon = self.broker.model_copy(
            update={"username": None, "password": None, "cert": None, "key": None}
        )
        try:
            async with anon.client(f"{self.client_id}-anon-probe", timeout_s=5.0):
                pass
        except aiomqtt.MqttCodeError as exc:
            if auth_failure(exc):
                self._anonymous_checked = True
                return
            raise
        self._anonymous_checked = True
        where = self.broker.uri()
        if not self.allow_anonymous:
            raise ConfigError(
                f"the broker {where} accepts clients without credentials: anyone who reaches "
                f"it could drive this device. Refusing to serve; {ANONYMOUS_HELP}"
            )
        log.warning(
            "serving on %s, a broker that accepts anonymous clients (--allow-anonymous): "
            "anyone who reaches it can drive this device",
            where,
        )

    def stop(self) -> None:
        """Make :meth:`run` return at its next message or reconnect (a cancellation alone can
        be lost: Python 3.11's ``wait_for``, used by aiomqtt, may swallow one that coincides
        with a completed publish — frequent under a flood)."""
        self._stopping = True

    async def run(self, *, backoff_s: tuple[float, float] = (0.1, 5.0)) -> None:
        """Serve until cancelled or :meth:`stop`; reconnect with exponential backoff. Raises
        :class:`ConfigError` for an anonymous broker (see :meth:`check_anonymous`)."""
        import aiomqtt
        from paho.mqtt.subscribeoptions import SubscribeOptions

        delay = backoff_s[0]
        will = aiomqtt.Will(self.topics.agent_status, b"offline", qos=1, retain=True)
        while not self._stopping:
            try:
                if not self._anonymous_checked:
                    await self.check_anonymous()
                async with self.broker.client(
                    self.client_id, will=will, timeout_s=2.0, max_queued=20_000
                ) as client:
                    # QoS 0 (no PUBACK in the request/reply path); retain as published, so a
                    # retained request is recognised as one and never executed
                    opts = SubscribeOptions(qos=0, retainAsPublished=True)
                    await client.subscribe(self.topics.request, options=opts)
                    await client.publish(self.topics.agent_status, b"online", qos=1, retain=True)
                    self.stats.connections += 1
                    delay = backoff_s[0]
                    prober = asyncio.create_task(self._probe())
                    self.ready.set()
                    log.info(
                        "agent %s (boot %s) serving on %s",
                        self.topics.base,
                        self.boot,
                        self.broker.uri(),
                    )
                    try:
                        await self._serve(client)
                    finally:
                        prober.cancel()
            except aiomqtt.MqttError as exc:
                self.ready.clear()
                _reraise_cancellation()  # aiomqtt turns a cancelled disconnect into MqttError
                if self._stopping:
                    return
                log.warning(
                    "agent %s: broker connection lost (%s); retrying in %.1f s",
                    self.topics.base,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2.0, backoff_s[1])

    async def _serve(self, client: Any) -> None:
        cleared: set[str] = set()
        while True:
            msg = await client.receive()
            if self._stopping:
                return
            payload = bytes(msg.payload)  # type: ignore[arg-type,unused-ignore]
            if msg.retain:  # retained: a stale copy, never a live request
                if payload:
                    self.stats.retained += 1
                    self._throttle(logging.WARNING, "retained request ignored and cleared")
                    if str(msg.topic) not in cleared:
                        cleared.add(str(msg.topic))
                        await client.publish(str(msg.topic), b"", qos=1, retain=True)
                continue
            out = await self.handle(payload)
            if out is not None:
                await client.publish(self.topics.reply(out[0]), out[1], qos=0)

    async def _probe(self) -> None:
        """Time ``PROBES`` QoS 1 request/reply exchanges between two short-lived clients of
        this agent (each reads its own reply topic): the message pattern that waits on Nagle +
        delayed ACK (~40 ms) in a broker without ``set_tcp_nodelay``; ~1 ms otherwise."""
        ping_id, pong_id = f"{self.client_id}-probe-a", f"{self.client_id}-probe-b"
        ping_t, pong_t = self.topics.reply(ping_id), self.topics.reply(pong_id)
        times: list[float] = []
        try:
            async with (
                self.broker.client(ping_id, timeout_s=2.0) as a,
                self.broker.client(pong_id, timeout_s=2.0) as b,
            ):
                await a.subscribe(ping_t, qos=1)
                await b.subscribe(pong_t, qos=1)

                async def echo() -> None:
                    async for _ in b.messages:
                        await b.publish(ping_t, b"pong", qos=1)

                echoer = asyncio.create_task(echo())
                try:
                    replies = aiter(a.messages)
                    for _ in range(PROBES):
                        t0 = time.perf_counter()
                        await a.publish(pong_t, b"ping", qos=1)
                        await asyncio.wait_for(anext(replies), 2.0)
                        times.append((time.perf_counter() - t0) * 1e3)
                finally:
                    echoer.cancel()
        except Exception as exc:  # e.g. no read access to its reply topics: no figure
            log.info("broker round-trip probe incomplete (%s: %s)", type(exc).__name__, exc)
        if not times:
            return
        self.probe_ms = statistics.median(times)
        if self.probe_ms > STALL_MS:
            log.warning(
                "broker round trip %.1f ms for QoS 1 messages (a loopback broker answers in "
                "~1 ms): the broker waits on Nagle + delayed ACK. Set `set_tcp_nodelay true` in "
                "mosquitto.conf; device requests and replies use QoS 0 and avoid the stall",
                self.probe_ms,
            )
        else:
            log.info("broker round trip %.2f ms", self.probe_ms)

    async def make_safe(self, timeout_s: float = 1.0) -> bool:
        """Make the device safe within ``timeout_s`` s; True on success (errors logged)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.substrate.make_safe()
            return True
        except Exception as exc:
            log.error("make_safe failed: %s: %s", type(exc).__name__, clip_message(str(exc)))
            return False

    async def stop_status(self, timeout_s: float = 2.0) -> None:
        """Publish a clean ``offline`` status (best effort, at most ``timeout_s`` s)."""
        import aiomqtt

        try:
            async with asyncio.timeout(timeout_s):
                async with self.broker.client(f"{self.client_id}-bye", timeout_s=timeout_s) as c:
                    await c.publish(self.topics.agent_status, b"offline", qos=1, retain=True)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:  # broker gone or slow
            log.info("could not publish offline status: %s", exc)


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


async def serve_until_signal(
    agent: Agent,
    *,
    on_ready: Callable[[], None] | None = None,
    on_stopped: Callable[[AgentStats], None] | None = None,
    drain_s: float = 0.3,
    safe_s: float = 1.0,
) -> AgentStats:
    """Connect the agent's substrate and serve it until SIGINT, SIGTERM or SIGHUP (or a
    fatal error, re-raised). On a signal — at any moment, a flood included — the serving task
    is cancelled (waited for at most ``drain_s`` s), the device is made safe within ``safe_s``
    s, ``on_stopped`` gets the stats, then a clean ``offline`` status is published (≤ 1 s).
    ``on_ready`` runs once the agent serves."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    sigs = [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]
    signalled: list[float] = []

    def on_signal(sig: int) -> None:
        if not stop.is_set():
            signalled.append(time.monotonic())
            log.info("agent stopping (%s)", signal.Signals(sig).name)
        stop.set()

    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig)
    started = time.monotonic()
    try:
        async with agent.substrate:
            runner = asyncio.create_task(agent.run(), name="agent-run")
            stopper = asyncio.create_task(stop.wait(), name="agent-stop")

            async def announce() -> None:
                await agent.ready.wait()
                if on_ready is not None:
                    on_ready()

            announcer = asyncio.create_task(announce(), name="agent-ready")
            try:
                await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                agent.stop()
                for t in (runner, stopper, announcer):
                    t.cancel()
                await asyncio.wait({runner}, timeout=drain_s)
                safe = await agent.make_safe(safe_s)
                agent.stats.made_safe = safe
                if signalled:
                    agent.stats.stop_s = time.monotonic() - signalled[0]
                log.info(
                    "agent served %.1f s; device %s: %s",
                    time.monotonic() - started,
                    "safe" if safe else "NOT confirmed safe",
                    agent.stats,
                )
                if on_stopped is not None:
                    on_stopped(agent.stats)
                await agent.stop_status(1.0)
                for _ in range(50):  # a cancellation may have been lost: repeat it
                    if runner.done():
                        break
                    runner.cancel()
                    await asyncio.wait({runner}, timeout=0.1)
            if runner.done() and not runner.cancelled() and runner.exception() is not None:
                raise runner.exception()  # type: ignore[misc]
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
    return agent.stats


def _reraise_cancellation() -> None:
    """Inside an ``except``: if the current task is being cancelled, raise CancelledError.
    (aiomqtt's ``__aexit__`` can replace the cancellation by an ``MqttError`` — e.g. its
    disconnect timing out under a flood —, which a reconnect loop would otherwise swallow,
    serving on after a stop signal.)"""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
