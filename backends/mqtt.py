"""A substrate on another machine, reached through an MQTT broker and a ``phasegrad-hw agent``.

``--device mqtt://[USER:PASS@]HOST:PORT/BENCH/DEVICE[?timeout=S&retry=S&prefix=P&tls=1&ca=…]``
(credentials also from ``PHASEGRAD_HW_MQTT_USERNAME`` / ``PHASEGRAD_HW_MQTT_PASSWORD``).

Protocol 2 with ``batch`` (docs/mqtt.md). ``connect`` opens a session with the agent (its reply
gives the session nonce and the agent's boot id). Writes (``set_frequencies``, ``set_biases``,
``set_couplings``, ``clamp``, ``release``, ``set_held_phases``, ``set_drive``) are limit-checked
here by the base class and then *queued*, not sent: the next read (``read_phases``,
``read_frequencies``), ``make_safe``/``close`` or :meth:`MqttSubstrate.flush` sends the queue
and itself as one ``batch`` request, which the agent executes in order. The compound
measurements of the base class go as one batch too: :meth:`MqttSubstrate.measure_ep` (an EP
step with fixed targets: free read, clamp, nudged read(s), release — ended by the agent at an
unlocked free read) and :meth:`MqttSubstrate.read_phases_at` (an evaluation set, as many
samples per round trip as the agent's request size and ``max_batch_ops`` admit: 17 of the
2+5+2 network's with an agent 2.3, 8 with older ones). An error of a queued write (the
agent checks limits again, with its own frequency map) is raised by that read/flush at the
latest, naming the operation; the first failing operation stops the batch. Every request
carries the session nonce and the next integer id (counting up from a random start), is
encoded once as compact JSON and published at QoS 0 on the agent's request topic (no PUBACK
in the path, so nothing waits on Nagle + delayed ACK on a default-configured broker; the
packet is written to the socket within the publish call,
:mod:`phasegrad_hw.wire.mqtt_client`). The reply comes back on this client's own reply
topic (its MQTT client id) and is matched as it is decoded: taken only if it echoes the
request's id and session (``None`` for hello/open); anything else — a late reply, another
session's, a forgery — is dropped and counted. A request is
re-sent with the *same* id every ``retry`` s and after every reconnect (the agent answers a
repeat of its last id from its cache, so nothing is applied twice); without a reply within
``timeout`` s the call raises :class:`DeviceTimeoutError`.

Abilities come from the agent's ``open`` reply: ``couplings``, ``frequency_counter``,
``held_phases``, ``drive`` when its device has them, ``reseed`` when it can be reseeded
(:meth:`MqttSubstrate.reseed` raises like the base class otherwise).

Restarts: a reply with another boot id than the session's means the agent restarted and the
device lost its state (ω, K, clamp, held phases, drive): the call raises
:class:`AgentRestartedError` and so does every later call — the step is aborted before any
update, never completed on a device in another state. A new ``connect`` (``async with``)
opens a new session and first sets again the held phases and the drive last set.
Limits are checked here (from the device model the agent reports) *and* again
by the agent. Round trips far above the agent's own time are logged once with what to change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import secrets
import ssl
import statistics
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, Field, ValidationError

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import (
    Capability,
    EPPhases,
    OscillatorSubstrate,
    PhaseReading,
    Targets,
)
from phasegrad_hw.errors import (
    ConfigError,
    DeviceError,
    DeviceTimeoutError,
    LimitError,
    LockLostError,
    ProtocolError,
)
from phasegrad_hw.physics import Array
from phasegrad_hw.wire.mqtt import (
    BATCH,
    LEGACY_BATCH_OPS,
    MAX_BATCH_OPS,
    NONCE_HEX,
    PROTOCOL_VERSION,
    STOP_IF_UNLOCKED,
    BatchResult,
    BrokerConfig,
    ErrorInfo,
    HelloResult,
    OpenResult,
    PhaseResult,
    Reply,
    Topics,
    VectorResult,
    auth_failure,
    check_segment,
    excerpt,
    max_request_bytes,
    parse_name,
    reason_code,
)

log = logging.getLogger(__name__)

_ERRORS: dict[str, type[Exception]] = {
    "limit": LimitError,
    "invalid": LimitError,
    "lock_lost": LockLostError,
    "timeout": DeviceTimeoutError,
    "protocol": ProtocolError,
    "device": DeviceError,
    "session": DeviceError,
    "internal": DeviceError,
}


STALL_MS = 15.0  # ms of round trip beyond the agent's own time that mean a stalled path
STALL_WINDOW = 32  # requests per judgement
ENVELOPE_BYTES = 512  # a batch's bytes besides its operations (v, op, id, reply_to, session)
MAKE_SAFE: dict[str, Any] = {"op": "make_safe"}


class AgentRestartedError(DeviceError):
    """The agent answered with another boot id than the session's: it restarted and its
    device lost the state this controller set (ω, K, clamp)."""


@dataclass
class _Pending:
    """A request waiting for its reply; ``conn`` = connection it was last sent on, ``session``
    the nonce it carries (a reply must echo it), ``sent`` when it was first sent (s)."""

    fut: asyncio.Future[Reply]
    payload: bytes
    session: str | None
    conn: int = 0
    sent: float = 0.0
    resent: bool = False


class RemoteOptions(StrictModel):
    """Query options of an ``mqtt://`` device URI (s)."""

    timeout: float = Field(default=30.0, gt=0, le=3600)
    retry: float = Field(default=2.0, gt=0, le=600)
    prefix: str = "phasegrad"


def model_from_agent(data: dict[str, Any]) -> DeviceModel:
    """The agent's device model: its backend's model class when that backend is installed
    here (:mod:`phasegrad_hw.device.registry`), else the base fields."""
    from phasegrad_hw.device.registry import file_backends, model_class

    backend = data.get("backend")
    cls: type[DeviceModel] | None = None
    if backend in file_backends():
        try:
            cls = model_class(backend)
        except ImportError as exc:  # its optional dependencies are missing here
            log.debug("agent's %r model class is not importable here: %s", backend, exc)
    try:
        if cls is not None:
            return cls.model_validate(data)
        base = {k: v for k, v in data.items() if k in DeviceModel.model_fields}
        return DeviceModel.model_validate(base)
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"]
        raise ProtocolError(f"agent sent an invalid device model: {msg}") from None


class MqttSubstrate(OscillatorSubstrate):
    """Remote substrate (see module docstring). ``model`` is fetched from the agent."""

    def __init__(
        self,
        broker: BrokerConfig,
        name: str,
        *,
        model: DeviceModel | None = None,
        prefix: str = "phasegrad",
        timeout_s: float = 30.0,
        retry_s: float = 2.0,
        seed: int | None = None,
        client_id: str | None = None,
    ) -> None:
        bench, device = parse_name(name, "--device")
        self.topics = Topics(bench, device, check_segment("prefix", prefix))
        self.broker = broker
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.seed = seed
        self.client_id = check_segment("client id", client_id or f"pg-{uuid.uuid4().hex[:16]}")
        # ids start at a random point: a reply forged without reading the request topic has
        # to guess the id as well as the session nonce
        self._ids = itertools.count(1 + secrets.randbelow(2**40))
        self._pending: dict[int, _Pending] = {}
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self.connections = 0  # broker connections made (reconnects add one each)
        self._will_token = secrets.token_hex(NONCE_HEX // 2)
        self.session: str | None = None  # the agent's session nonce (after connect)
        self.boot: str | None = None  # the agent's boot id at open
        self._restarted: AgentRestartedError | None = None
        self._overheads_ms: deque[float] = deque(maxlen=STALL_WINDOW)
        self.stall_warned = False
        self.foreign_replies = 0
        self._remote_reseed = False
        self._queue: list[dict[str, Any]] = []  # checked writes waiting for the next batch
        # held phases and drive last set: a new session (after an agent restart) sets them again
        self._held: dict[str, Any] | None = None
        self._drive: dict[str, Any] | None = None
        self._fatal: Exception | None = None
        self.late_replies = 0
        self.last_error: str | None = None  # the last broker connection error, for messages
        self.resends = 0
        self.capabilities = frozenset()
        # operations per batch: the agent's limit (from open), at most this client's
        self.max_batch_ops = LEGACY_BATCH_OPS
        if model is None:
            model = fetch_model(broker, self.topics, timeout_s=min(timeout_s, 10.0))
        super().__init__(model)
        self._max_bytes = max_request_bytes(model.n, len(model.edges))

    # -- connection -------------------------------------------------------------------
    async def connect(self) -> None:
        """Start the connection task, say hello, and (if a seed was given) reseed the device."""
        if self._task is None or self._task.done():
            self._connected = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.client_id}")
        self.session, self.boot, self._restarted = None, None, None  # a new session
        try:
            opened = await self._call("open", {"will": self._will_token}, in_session=False)
            hello: OpenResult = self._result(OpenResult, opened, "open")
            remote = model_from_agent(hello.model)
            if _base_fields(remote) != _base_fields(self.model):
                raise ProtocolError(
                    f"{self.topics.base}: the agent's device model differs from this one"
                )
            if BATCH not in hello.capabilities or STOP_IF_UNLOCKED not in hello.capabilities:
                raise ProtocolError(
                    f"{self.topics.base}: the agent ({hello.agent}) does not execute batch "
                    "requests with stop_if_unlocked; update it to phasegrad-hw-agent/2.2 or later"
                )
        except BaseException:
            await self._disconnect()  # no connection task left behind
            raise
        self.capabilities = frozenset(
            Capability(c) for c in hello.capabilities if c in Capability.__members__.values()
        ) | ({Capability.RESEED} if hello.reseed else set())
        self._remote_reseed = hello.reseed
        self.max_batch_ops = min(hello.max_batch_ops, MAX_BATCH_OPS)
        self.session, self.boot, self._restarted = hello.session, hello.boot, None
        self._queue.clear()
        # a new agent session starts from the device's start state: what this substrate set
        # once and the controller does not set per step (held phases, drive) goes again first
        self._queue += [op for op in (self._held, self._drive) if op is not None]
        if hello.broker_probe_ms is not None and hello.broker_probe_ms > STALL_MS:
            log.warning(
                "%s: the agent measured a %.0f ms broker round trip: the broker waits on "
                "Nagle + delayed ACK; set `set_tcp_nodelay true` in mosquitto.conf",
                self.topics.base,
                hello.broker_probe_ms,
            )
        if self.seed is not None and self._remote_reseed:
            self.reseed(self.seed)

    async def _disconnect(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            while not task.done():  # repeated: Python 3.11's wait_for may swallow a cancel
                task.cancel()
                await asyncio.wait({task}, timeout=0.2)
            if not task.cancelled() and task.exception() is not None:
                log.debug("%s: connection task ended with %r", self.topics.base, task.exception())
        for p in self._pending.values():
            if not p.fut.done():
                p.fut.set_exception(DeviceError(f"{self.topics.base}: connection closed"))
        self._pending.clear()
        if self._queue:
            log.warning(
                "%s: %d queued operation(s) dropped at disconnect",
                self.topics.base,
                len(self._queue),
            )
            self._queue.clear()

    async def _run(self) -> None:
        import aiomqtt

        delay = 0.05
        # the last will: make_safe with the secret token this client's open registered
        will = aiomqtt.Will(
            self.topics.request,
            json.dumps(
                {
                    "v": PROTOCOL_VERSION,
                    "op": "make_safe",
                    "id": 0,
                    "reply_to": self.client_id,
                    "will": self._will_token,
                }
            ).encode(),
            qos=1,
        )
        reply_topic = self.topics.reply(self.client_id)

        def take_reply(topic: str, payload: bytes, retain: bool) -> bool:
            """Replies are matched to their request as they are decoded (no queue, no task)."""
            if topic != reply_topic:
                return False
            try:
                self._on_reply(payload)
            except Exception as exc:  # never into paho's read loop
                log.warning("%s: reply dropped: %s", self.topics.base, excerpt(exc, 200))
            return True

        while True:
            self.connections += 1
            try:
                async with self.broker.client(self.client_id, will=will, intercept=take_reply) as c:
                    granted = await c.subscribe(self.topics.reply(self.client_id), qos=0)
                    if any(reason_code(g) >= 0x80 for g in granted):
                        self._fail(
                            DeviceError(
                                f"{self.broker.uri()}: not authorized to read "
                                f"{self.topics.reply(self.client_id)} (check the broker ACL)"
                            )
                        )
                        return
                    await c.subscribe(self.topics.agent_status, qos=1)
                    self._client = c
                    self._connected.set()
                    delay = 0.05
                    await self._resend(c, only_unsent=True)  # after a reconnect
                    while True:  # (replies are taken by take_reply)
                        msg = await c.receive()
                        if msg.topic.matches(self.topics.agent_status):
                            # the agent (re)connected, e.g. after a broker restart: requests
                            # sent while it was away were lost; send them again (same ids).
                            # (A retained copy only says it was already online.)
                            if not msg.retain and msg.payload == b"online":
                                await self._resend(c, only_unsent=False)
            except aiomqtt.MqttCodeError as exc:
                if auth_failure(exc):
                    self._fail(
                        DeviceError(
                            f"{self.broker.uri()}: the broker refused the login "
                            f"({exc}); check username/password"
                        )
                    )
                    return
                _reraise_cancellation()
                self.last_error = str(exc)
                log.warning(
                    "%s: broker connection lost (%s); retrying in %.2f s",
                    self.topics.base,
                    exc,
                    delay,
                )
            except aiomqtt.MqttError as exc:
                if isinstance(exc.__context__ or exc.__cause__, ssl.SSLError):
                    self._fail(
                        DeviceError(
                            f"{self.broker.uri()}: TLS failed ({exc}); check ?ca= / "
                            "PHASEGRAD_HW_MQTT_CA and the broker's certificate"
                        )
                    )
                    return
                _reraise_cancellation()
                self.last_error = str(exc)
                log.warning(
                    "%s: broker connection lost (%s); retrying in %.2f s",
                    self.topics.base,
                    exc,
                    delay,
                )
            finally:
                self._connected.clear()
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2.0, 2.0)

    async def _resend(self, client: Any, *, only_unsent: bool) -> None:
        for p in list(self._pending.values()):
            if p.fut.done() or (only_unsent and p.conn == self.connections):
                continue
            p.conn = self.connections
            p.resent = True
            self.resends += 1
            await client.publish(self.topics.request, p.payload, qos=0)

    def _fail(self, exc: Exception) -> None:
        """A permanent failure (refused login, ACL): every waiting and later call raises it."""
        log.error("%s", exc)
        self._fatal = exc
        for p in self._pending.values():
            if not p.fut.done():
                p.fut.set_exception(exc)

    def _on_reply(self, raw: bytes) -> None:
        try:
            rep = Reply.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("%s: malformed reply dropped: %s", self.topics.base, exc.errors()[0]["msg"])
            return
        entry = self._pending.get(rep.id)
        if entry is None or entry.fut.done():
            self.late_replies += 1
            log.info(
                "%s: reply %s has no waiting request (late or repeated); dropped",
                self.topics.base,
                rep.id,
            )
            return
        if rep.session != entry.session:
            # not an echo of this request's session (None for hello/open): the answer to
            # someone else's request, or a forged one naming this client
            self.foreign_replies += 1
            log.warning("%s: reply %s of another session dropped", self.topics.base, rep.id)
            return
        entry.fut.set_result(rep)

    def _check_usable(self, *, in_session: bool = True) -> None:
        """Raise at once what would fail any request: not connected, a permanent failure, a
        restarted agent, no session."""
        if self._task is None:
            raise DeviceError(f"{self.topics.base}: not connected (use `async with substrate`)")
        if self._fatal is not None:
            raise self._fatal
        if self._restarted is not None:
            raise self._restarted
        if in_session and self.session is None:
            raise DeviceError(f"{self.topics.base}: no session (use `async with substrate`)")

    async def _call(
        self, op: str, fields: dict[str, Any], *, in_session: bool = True
    ) -> dict[str, Any]:
        """One request of ``op`` (``hello``, ``open``), its result; raises the mapped error."""
        rep = await self._exchange(op, fields, op, in_session=in_session)
        if not rep.ok:
            raise self._error(op, rep.error)
        return rep.result or {}

    def _error(self, op: str, err: ErrorInfo | None) -> Exception:
        kind = err.kind if err else "internal"
        text = err.message if err else "?"
        return _ERRORS.get(kind, DeviceError)(
            f"{self.topics.base}: {op} refused by the agent ({kind}): {text}"
        )

    async def _exchange(
        self, op: str, fields: dict[str, Any], label: str, *, in_session: bool = True
    ) -> Reply:
        """One request/reply round trip (see module docstring): re-sent with the same id until
        answered or ``timeout``; a reply with another boot id raises
        :class:`AgentRestartedError`. ``label`` names the request in messages."""
        self._check_usable(in_session=in_session)
        rid = next(self._ids)
        head: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "op": op,
            "id": rid,
            "reply_to": self.client_id,
        }
        if in_session:
            head["session"] = self.session
        payload = _encode({**head, **fields}).encode()
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        pending = self._pending[rid] = _Pending(fut, payload, self.session if in_session else None)
        deadline = time.monotonic() + self.timeout_s
        task = asyncio.current_task()
        cancels = (task, task.cancelling() if task is not None else 0)
        try:
            while not fut.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceTimeoutError(
                        f"{self.topics.base}: {label} (request {rid}) not answered within "
                        f"{self.timeout_s:g} s"
                        + (
                            ""
                            if self._connected.is_set() or self.last_error is None
                            else f"; broker unreachable: {self.last_error}"
                        )
                    )
                if not self._connected.is_set():
                    waiter: asyncio.Future[Any] = asyncio.ensure_future(self._connected.wait())
                    try:
                        await asyncio.wait(
                            [waiter, fut], timeout=left, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        waiter.cancel()
                    continue
                client = self._client
                if client is not None and pending.conn != self.connections:
                    pending.conn = self.connections
                    if pending.sent:
                        pending.resent = True
                    else:
                        pending.sent = time.perf_counter()
                    try:
                        await client.publish(
                            self.topics.request,
                            payload,
                            qos=0,
                            timeout=max(0.05, min(left, self.retry_s)),
                        )
                        _raise_swallowed_cancel(cancels)
                    except Exception as exc:  # broker went away mid-publish: wait and resend
                        log.debug("%s: publish of %s failed (%s)", self.topics.base, rid, exc)
                        pending.conn = -1
                        await asyncio.sleep(0.02)
                        continue
                left = deadline - time.monotonic()
                # asyncio.wait, not wait_for: on Python 3.11 wait_for swallows a cancellation
                # that arrives together with the reply (the caller's task would run on)
                await asyncio.wait({fut}, timeout=max(0.0, min(left, self.retry_s)))
                if not fut.done():  # no reply yet: send the same id again
                    pending.conn = -1
                    self.resends += 1
            rep = fut.result()
        finally:
            self._pending.pop(rid, None)
        if self.boot is not None and rep.boot != self.boot:
            self._restarted = AgentRestartedError(
                f"{self.topics.base}: the agent restarted during {label} (boot id "
                f"{self.boot[:8]}… → {rep.boot[:8]}…): the device lost the state this "
                "controller set (frequencies, couplings, clamp, held phases, drive); the step is "
                "aborted with no update — reconnect (held phases and drive are set again) and "
                "resume from the last checkpoint"
            )
            log.error("%s", self._restarted)
            self._queue.clear()
            raise self._restarted
        if not pending.resent:
            self._watch_path(label, (time.perf_counter() - pending.sent) * 1e3, rep.took_s * 1e3)
        return rep

    # -- batching: writes wait for the next read ----------------------------------------
    async def _enqueue(self, op: dict[str, Any]) -> None:
        """Queue a write (already limit-checked by the base class) for the next batch; a full
        queue is sent first as a write-only batch."""
        self._check_usable()
        if len(self._queue) >= self.max_batch_ops - 1:  # leave room for the read that follows
            await self.flush()
        self._queue.append(op)

    async def flush(self) -> None:
        """Send the queued writes now (one write-only batch) and wait for the agent to have
        applied them; raises the error of the first that failed."""
        if self._queue:
            await self._send([])

    async def _send(
        self, ops: list[dict[str, Any]], *, stop_if_unlocked: bool = False
    ) -> list[dict[str, Any]]:
        """The queued writes, then ``ops``, in as few batches as the limits allow (in order);
        returns the results of every operation sent (the queued writes' included)."""
        results, _, error = await self._send_all(ops, stop_if_unlocked=stop_if_unlocked)
        if error is not None:
            raise error
        return results

    async def _send_all(
        self, ops: list[dict[str, Any]], *, stop_if_unlocked: bool = False
    ) -> tuple[list[dict[str, Any]], int | None, Exception | None]:
        """Like :meth:`_send`, but returns ``(results, failed, error)``: ``failed`` is the index
        (in queue + ``ops``) of the operation that stopped it, if the agent named one. With
        ``stop_if_unlocked`` a read that finds the network unlocked ends the sequence there
        (fewer results than operations)."""
        self._check_usable()
        todo, self._queue = [*self._queue, *ops], []
        results: list[dict[str, Any]] = []
        for chunk in self._chunks(todo):
            out, failed, error = await self._batch(chunk, stop_if_unlocked)
            if error is not None:
                return [*results, *out], None if failed is None else len(results) + failed, error
            results += out
            if len(out) < len(chunk):  # stopped at an unlocked read
                break
        return results, None, None

    def _chunks(self, ops: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """Split ``ops`` into batches of at most :attr:`max_batch_ops` operations and the
        agent's request size (:func:`~phasegrad_hw.wire.mqtt.max_request_bytes`)."""
        if len(ops) <= 1:
            return [ops] if ops else []
        budget = self._max_bytes - ENVELOPE_BYTES
        if len(ops) <= self.max_batch_ops and sum(map(_size_bound, ops)) <= budget:
            return [ops]  # (an EP step: fits for sure, nothing encoded twice)
        out: list[list[dict[str, Any]]] = [[]]
        used = 0
        for op in ops:
            size = len(_encode(op)) + 1
            if out[-1] and (len(out[-1]) >= self.max_batch_ops or used + size > budget):
                out.append([])
                used = 0
            out[-1].append(op)
            used += size
        return out

    async def _batch(
        self, ops: list[dict[str, Any]], stop_if_unlocked: bool = False
    ) -> tuple[list[dict[str, Any]], int | None, Exception | None]:
        """One ``batch`` request: ``(results, failed index or None, mapped error or None)``."""
        names = [str(o["op"]) for o in ops]
        label = (
            " + ".join(names)
            if len(names) <= 6
            else f"a batch of {len(names)} ({names[0]} + {names[1]} + … + {names[-1]})"
        )
        fields: dict[str, Any] = {"ops": ops}
        if stop_if_unlocked:
            fields["stop_if_unlocked"] = True
        rep = await self._exchange(BATCH, fields, label)
        data: BatchResult | None = (
            None if rep.result is None else self._result(BatchResult, rep.result, "batch")
        )
        if rep.ok:
            n = 0 if data is None else len(data.results)
            stopped = (
                stop_if_unlocked
                and data is not None
                and 0 < n < len(ops)
                and ops[n - 1]["op"] == "read_phases"
                and data.results[-1].get("locked") is False
            )
            if data is None or data.failed is not None or (n != len(ops) and not stopped):
                raise ProtocolError(
                    f"agent reply to batch: {0 if data is None else len(data.results)} "
                    f"results for {len(ops)} operations"
                )
            return data.results, None, None
        failed = data.failed if data is not None else None
        name = str(ops[failed]["op"]) if failed is not None and failed < len(ops) else label
        return [] if data is None else data.results, failed, self._error(name, rep.error)

    def _watch_path(self, op: str, rtt_ms: float, agent_ms: float) -> None:
        """Judge the request/reply path: over ``STALL_WINDOW`` requests, a median round trip
        this far above the agent's own time means the broker path stalls (logged once)."""
        self._overheads_ms.append(rtt_ms - agent_ms)
        if self.stall_warned or len(self._overheads_ms) < STALL_WINDOW:
            return
        median = statistics.median(self._overheads_ms)
        if median > STALL_MS:
            self.stall_warned = True
            log.warning(
                "%s: requests wait %.0f ms in transit (median of %d; the agent itself takes "
                "%.1f ms for %s; a loopback broker needs ~1 ms). The broker or the network "
                "delays small messages: set `set_tcp_nodelay true` in mosquitto.conf, and "
                "check the path to the broker",
                self.topics.base,
                median,
                len(self._overheads_ms),
                agent_ms,
                op,
            )

    @property
    def transit_ms(self) -> float | None:
        """Median time (ms) the recent requests spent outside the agent (network + broker)."""
        return statistics.median(self._overheads_ms) if self._overheads_ms else None

    @staticmethod
    def _result(cls: type[BaseModel], data: dict[str, Any], op: str) -> Any:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ProtocolError(f"agent reply to {op}: {exc.errors()[0]['msg']}") from None

    # -- hooks: writes are queued (the base class has checked them), reads send the batch --
    async def _apply_frequencies(self, omega: Array) -> None:
        await self._enqueue({"op": "set_frequencies", "omega": omega.tolist()})

    async def _apply_biases(self, values: Array) -> None:
        await self._enqueue({"op": "set_biases", "values": values.tolist()})

    async def _apply_couplings(self, values: Array) -> None:
        await self._enqueue({"op": "set_couplings", "values": values.tolist()})

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        await self._enqueue(
            {"op": "clamp", "target": target.tolist(), "beta": beta, "direction": direction}
        )

    async def _apply_release(self) -> None:
        await self._enqueue({"op": "release"})

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        op = {"op": "set_held_phases", "phases": phases_rad.tolist()}
        await self._enqueue(op)
        self._held = op

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        op = {"op": "set_drive", "amplitude": amplitude.tolist(), "phase": float(phase_rad)}
        await self._enqueue(op)
        self._drive = None if not np.any(amplitude) else op  # off: the start state

    # -- compound measurements in one exchange (the base class's, batched) ----------------
    def _reading(self, data: dict[str, Any]) -> PhaseReading:
        r: PhaseResult = self._result(PhaseResult, data, "read_phases")
        n = self.model.n
        if len(r.phases) != n or len(r.spread) != n:
            raise ProtocolError(f"agent reply to read_phases: {len(r.phases)} phases, expected {n}")
        return PhaseReading(
            np.asarray(r.phases),
            np.asarray(r.spread),
            r.locked,
            r.timestamp,
            r.averages,
            r.settle_s,
        )

    def _read_op(self, averages: int) -> dict[str, Any]:
        return {"op": "read_phases", "averages": self._check_averages(averages)}

    async def read_phases_at(self, omegas: ArrayLike, averages: int = 1) -> list[PhaseReading]:
        """As the base class (``set_frequencies`` + ``read_phases`` per row, in order), every
        row limit-checked before anything is sent, sent in as few batches as the limits
        allow: an evaluation set in a few round trips instead of one per sample."""
        read = self._read_op(averages)
        rows = self._check_rows(omegas)
        ops: list[dict[str, Any]] = []
        for w in rows:  # the remote substrate takes ω natively (the agent maps it)
            ops += [{"op": "set_frequencies", "omega": self.model.check_frequencies(w).tolist()}]
            ops.append(read)
        await asyncio.sleep(0)  # a cancellation point, as in read_phases
        queued = len(self._queue)
        out = await self._send(ops)
        return [self._reading(r) for r in out[queued + 1 :: 2]]

    async def measure_ep(
        self,
        omega: ArrayLike | None,
        targets: Targets,
        beta: float,
        averages: int = 1,
        centred: bool = False,
    ) -> EPPhases:
        """As the base class, in one round trip when ``targets`` are fixed phases: one batch
        ``[queued writes, set_frequencies, read_phases, clamp, read_phases, (clamp −1,
        read_phases,) release]`` with ``stop_if_unlocked`` (the agent ends it at an unlocked
        free read). Targets that depend on the free phases need the free reading first: the
        base class's sequence."""
        if callable(targets):
            return await super().measure_ep(omega, targets, beta, averages, centred)
        read = self._read_op(averages)
        if omega is not None:
            await self.set_frequencies(omega)  # limit-checked, queued
        t, b = self.model.check_clamp(targets, beta)
        clamp = {"op": "clamp", "target": t.tolist(), "beta": b}
        ops = [read, {**clamp, "direction": 1}, read]
        if centred:
            ops += [{**clamp, "direction": -1}, read]
        ops.append({"op": "release"})
        await asyncio.sleep(0)
        queued = len(self._queue)
        tail = (await self._send(ops, stop_if_unlocked=True))[queued:]
        free = self._reading(tail[0])
        if not free.locked:
            return EPPhases(free)
        self.clamped = False
        minus = self._reading(tail[4]) if centred else None
        return EPPhases(free, self._reading(tail[2]), minus, t)

    async def _read(self, averages: int) -> PhaseReading:
        out = await self._send([{"op": "read_phases", "averages": averages}])
        return self._reading(out[-1])

    async def _read_frequencies(self) -> Array:
        out = await self._send([{"op": "read_frequencies"}])
        r: VectorResult = self._result(VectorResult, out[-1], "read_frequencies")
        return np.asarray(r.values, dtype=np.float64)

    async def make_safe(self) -> None:
        """Send the queued writes and the agent's ``make_safe`` (release, safe biases) in one
        batch. If a queued write fails first (the batch stops there), ``make_safe`` is sent
        alone, then that error is raised. Skipped if never connected, and after an agent
        restart (that device is in its start state; this controller has no session with it)."""
        if self._task is None or self.session is None:
            self._queue.clear()
            return
        if self._restarted is not None:
            log.warning("%s: make_safe skipped: the agent restarted", self.topics.base)
            self._queue.clear()
            return
        queued = len(self._queue)
        self._drive = None  # the agent's make_safe switches it off
        _, failed, error = await self._send_all([MAKE_SAFE])
        if error is not None and failed is not None and failed < queued:
            # a queued write stopped the batch before make_safe ran: send it alone
            log.warning("%s: %s; making the device safe", self.topics.base, error)
            await self._send([MAKE_SAFE])
            self.clamped = False
        if error is not None:
            raise error
        self.clamped = False

    def reseed(self, seed: int) -> None:
        """Reseed the remote device's noise generator (if it has one), as the training loop
        does at every epoch start. Synchronous by contract: the reseed is queued and goes, in
        order, with the next batch (before connecting: applied at connect)."""
        if self.session is None:
            self.seed = int(seed)
        elif self._remote_reseed:
            self._queue.append({"op": "reseed", "seed": int(seed)})
        else:
            super().reseed(seed)  # raises: the agent's device cannot be reseeded


def _encode(data: dict[str, Any]) -> str:
    """Compact JSON (no spaces); floats as Python's shortest round-trip repr."""
    return json.dumps(data, separators=(",", ":"))


def _size_bound(op: dict[str, Any]) -> int:
    """An upper bound of ``len(_encode(op)) + 1`` (its comma in a batch) without encoding it:
    a JSON number or an op name takes at most 24 characters (``-2.2250738585072014e-308``),
    25 with its comma; a field's key, quotes and colon ``len(key) + 3``."""
    return 2 + sum(
        len(k) + 3 + (25 * len(v) + 2 if isinstance(v, list) else 25) for k, v in op.items()
    )


def _reraise_cancellation() -> None:
    """Inside an ``except``: if the current task is being cancelled, raise CancelledError
    (aiomqtt's ``__aexit__`` can replace a cancellation by an ``MqttError``; the reconnect
    loop must not swallow it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _raise_swallowed_cancel(cancels: tuple[asyncio.Task[Any] | None, int]) -> None:
    """Re-raise a cancellation of ``task`` that an ``asyncio.wait_for`` swallowed (Python 3.11
    returns the result when the awaited operation finishes together with the cancel; aiomqtt's
    publish waits that way), so a cancelled caller stops instead of running on."""
    task, before = cancels
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError


def _base_fields(model: DeviceModel) -> dict[str, Any]:
    """The fields every device model has (topology, roles, limits, coupling, nudge)."""
    return model.model_dump(include=set(DeviceModel.model_fields))


def fetch_model(broker: BrokerConfig, topics: Topics, *, timeout_s: float = 10.0) -> DeviceModel:
    """Ask the agent for its device model (synchronously; runs its own event loop in a thread,
    so it works inside and outside a running loop)."""

    async def ask() -> DeviceModel:
        sub = MqttSubstrate(
            broker,
            f"{topics.bench}/{topics.device}",
            prefix=topics.prefix,
            timeout_s=timeout_s,
            model=_PLACEHOLDER,
        )
        sub._task = asyncio.create_task(sub._run())
        try:
            hello = HelloResult.model_validate(await sub._call("hello", {}, in_session=False))
        except DeviceTimeoutError:
            why = (
                f"the broker is unreachable ({sub.last_error})"
                if sub.last_error and not sub._connected.is_set()
                else f"is `phasegrad-hw agent --name {topics.bench}/{topics.device}` running, "
                "and may this user use its topics?"
            )
            raise DeviceTimeoutError(
                f"{broker.uri()}/{topics.bench}/{topics.device}: no agent answered within "
                f"{timeout_s:g} s ({why})"
            ) from None
        finally:
            await sub._disconnect()
        return model_from_agent(hello.model)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, ask()).result()


_PLACEHOLDER = DeviceModel.model_validate(
    {
        "backend": "placeholder",
        "n_oscillators": 2,
        "edges": [{"i": 0, "j": 1, "k": 1.0}],
        "roles": {"outputs": [1]},
    }
)


def open_uri(uri: str, seed: int | None = None) -> MqttSubstrate:
    """Registry URI opener (``mqtt://``): parse the URI, fetch the model from the agent."""
    broker, path, query = BrokerConfig.parse(uri, field="--device")
    try:
        opts = RemoteOptions.model_validate(query)
    except ValidationError as exc:
        from phasegrad_hw.config import format_validation_error

        raise ConfigError(format_validation_error(exc, "--device ?")) from None
    return MqttSubstrate(
        broker, path, prefix=opts.prefix, timeout_s=opts.timeout, retry_s=opts.retry, seed=seed
    )
