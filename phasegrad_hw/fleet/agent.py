"""Serve any substrate over MQTT request/response (``phasegrad-hw agent``).

The agent subscribes to ``{prefix}/{bench}/{device}/rpc/req`` and answers each request on
``…/rpc/rep/{reply_to}``. It calls the *public, validated* methods of its own substrate, so a
value outside the device limits is refused here too (an error reply; nothing reaches the
device), and a payload that does not validate gets an ``invalid`` error reply.

Idempotency: replies are cached by (reply_to, id); a repeated request id — a client retrying
after a lost reply or a broker restart — is answered from the cache, never re-applied.

Safety: a client's last will is a ``make_safe`` request whose id starts with ``will-``; when
the broker publishes it (the controller vanished), the agent releases the clamp, sets safe
biases and *fences* that client: its further requests get a ``session`` error until it says
``hello`` again, so a controller never continues silently on a device that was reset.
The agent leaves the device safe when it stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
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
    BrokerConfig,
    Clamp,
    ErrorInfo,
    ErrorKind,
    Hello,
    MakeSafe,
    ReadFrequencies,
    ReadPhases,
    Release,
    Reply,
    Request,
    Reseed,
    SetBiases,
    SetCouplings,
    SetFrequencies,
    Topics,
    parse_request,
)

log = logging.getLogger(__name__)
AGENT_VERSION = "phasegrad-hw-agent/1"
REMOTE_CAPABILITIES = (Capability.COUPLINGS, Capability.FREQUENCY_COUNTER)


@dataclass
class AgentStats:
    """Counters: ``received`` messages, ``executed`` device operations, ``cached`` replies
    served from the idempotency cache, ``rejected`` invalid/out-of-limit/fenced requests."""

    received: int = 0
    executed: int = 0
    cached: int = 0
    rejected: int = 0
    errors: int = 0
    connections: int = 0
    ops: dict[str, int] = field(default_factory=dict)


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


class Agent:
    """Serves ``substrate`` as ``bench/device`` on a broker (see module docstring)."""

    def __init__(
        self,
        substrate: OscillatorSubstrate,
        broker: BrokerConfig,
        name: str,
        *,
        prefix: str = "phasegrad",
        cache_size: int = 4096,
        client_id: str | None = None,
    ) -> None:
        from phasegrad_hw.wire.mqtt import check_segment, parse_name

        bench, device = parse_name(name)
        self.topics = Topics(bench, device, check_segment("--prefix", prefix))
        self.substrate = substrate
        self.broker = broker
        self.cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.cache_size = cache_size
        self.fenced: set[str] = set()
        self.stats = AgentStats()
        self.client_id = client_id or f"agent-{bench}-{device}"
        self.ready = asyncio.Event()
        self.ack_timeout_s = 2.0  # s; no PUBACK within this = connection lost

    # -- request handling (transport-free; unit-testable) -------------------------
    async def handle(self, raw: bytes) -> tuple[str, bytes] | None:
        """Process one request payload; returns (reply_to, reply payload) or None if the
        payload is so broken that nobody can be answered."""
        self.stats.received += 1
        try:
            req = parse_request(raw)
        except ConfigError as exc:
            self.stats.rejected += 1
            rid, reply_to = _salvage_ids(raw)
            log.warning("invalid request%s: %s", f" {rid}" if rid else "", exc)
            if rid is None or reply_to is None:
                return None
            rep = Reply(id=rid, ok=False, error=ErrorInfo(kind="invalid", message=str(exc)))
            return reply_to, rep.model_dump_json().encode()
        key = (req.reply_to, req.id)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            self.stats.cached += 1
            log.debug("request %s answered from cache", req.id)
            return req.reply_to, hit
        reply = await self._execute(req)
        payload = reply.model_dump_json().encode()
        self.cache[key] = payload
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return req.reply_to, payload

    async def _execute(self, req: Request) -> Reply:
        is_will = isinstance(req, MakeSafe) and req.id.startswith("will-")
        if req.reply_to in self.fenced and not isinstance(req, Hello) and not is_will:
            self.stats.rejected += 1
            return Reply(
                id=req.id,
                ok=False,
                error=ErrorInfo(
                    kind="session",
                    message=f"client {req.reply_to}: its connection was lost and the "
                    "device was made safe; reconnect (hello) before driving it again",
                ),
            )
        try:
            result = await self._dispatch(req)
        except (LimitError, ValueError) as exc:
            self.stats.rejected += 1
            kind: ErrorKind = error_kind(exc) if isinstance(exc, LimitError) else "invalid"
            log.warning("request %s (%s) refused: %s", req.id, req.op, exc)
            return Reply(id=req.id, ok=False, error=ErrorInfo(kind=kind, message=str(exc)))
        except Exception as exc:  # device failure: report it and leave the device safe
            self.stats.errors += 1
            log.error("request %s (%s) failed: %s", req.id, req.op, exc)
            try:
                await self.substrate.make_safe()
            except Exception as safe_exc:  # pragma: no cover - logged, reported below
                log.error("make_safe after a failure also failed: %s", safe_exc)
            return Reply(
                id=req.id,
                ok=False,
                error=ErrorInfo(kind=error_kind(exc), message=f"{type(exc).__name__}: {exc}"),
            )
        if is_will:
            self.fenced.add(req.reply_to)
            log.warning("client %s vanished (last will): device made safe", req.reply_to)
        return Reply(id=req.id, ok=True, result=result)

    async def _dispatch(self, req: Request) -> dict[str, Any]:
        s = self.substrate
        self.stats.ops[req.op] = self.stats.ops.get(req.op, 0) + 1
        if isinstance(req, Hello):
            self.fenced.discard(req.reply_to)
            caps = [c.value for c in REMOTE_CAPABILITIES if c in s.capabilities]
            return {
                "model": s.model.model_dump(mode="json"),
                "capabilities": caps,
                "reseed": Capability.RESEED in s.capabilities,
                "agent": AGENT_VERSION,
            }
        self.stats.executed += 1
        if isinstance(req, SetFrequencies):
            await s.set_frequencies(req.omega)
        elif isinstance(req, SetBiases):
            await s.set_biases(req.values)
        elif isinstance(req, SetCouplings):
            await s.set_couplings(req.values)
        elif isinstance(req, Clamp):
            await s.clamp(req.target, req.beta, req.direction)
        elif isinstance(req, Release):
            await s.release()
        elif isinstance(req, MakeSafe):
            await s.make_safe()
        elif isinstance(req, ReadPhases):
            r = await s.read_phases(req.averages)
            return {
                "phases": r.phases.tolist(),
                "spread": r.spread.tolist(),
                "locked": r.locked,
                "timestamp": r.timestamp,
                "averages": r.averages,
                "settle_s": r.settle_s,
            }
        elif isinstance(req, ReadFrequencies):
            return {"values": (await s.read_frequencies()).tolist()}
        elif isinstance(req, Reseed):
            supported = Capability.RESEED in s.capabilities
            if supported:
                s.reseed(req.seed)
            return {"supported": supported}
        return {}

    # -- transport ------------------------------------------------------------------
    async def run(self, *, backoff_s: tuple[float, float] = (0.1, 5.0)) -> None:
        """Serve until cancelled; reconnect with exponential backoff. Leaves the device safe
        (the caller owns ``async with substrate``; this makes it safe on every disconnect too)."""
        import aiomqtt

        delay = backoff_s[0]
        will = aiomqtt.Will(self.topics.agent_status, b"offline", qos=1, retain=True)
        while True:
            try:
                async with self.broker.client(self.client_id, will=will) as client:
                    await client.subscribe(self.topics.request, qos=1)
                    await client.publish(self.topics.agent_status, b"online", qos=1, retain=True)
                    self.stats.connections += 1
                    delay = backoff_s[0]
                    self.ready.set()
                    log.info("agent %s serving on %s", self.topics.base, self.broker.uri())
                    async for msg in client.messages:
                        out = await self.handle(bytes(msg.payload))  # type: ignore[arg-type,unused-ignore]
                        if out is not None:
                            await client.publish(
                                self.topics.reply(out[0]), out[1], qos=1, timeout=self.ack_timeout_s
                            )
            except aiomqtt.MqttError as exc:
                self.ready.clear()
                log.warning(
                    "agent %s: broker connection lost (%s); retrying in %.1f s",
                    self.topics.base,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2.0, backoff_s[1])

    async def stop_status(self) -> None:
        """Publish a clean ``offline`` status (best effort)."""
        import aiomqtt

        try:
            async with self.broker.client(f"{self.client_id}-bye", timeout_s=2.0) as c:
                await c.publish(self.topics.agent_status, b"offline", qos=1, retain=True)
        except (aiomqtt.MqttError, OSError) as exc:  # pragma: no cover - broker gone
            log.info("could not publish offline status: %s", exc)


def _salvage_ids(raw: bytes) -> tuple[str | None, str | None]:
    """The id and reply_to of a payload that failed validation, if they look sane."""
    import re

    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    rid, to = data.get("id"), data.get("reply_to")
    ok_id = isinstance(rid, str) and re.fullmatch(r"[A-Za-z0-9_.:\-]{1,96}", rid)
    ok_to = isinstance(to, str) and re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", to)
    return (rid if ok_id else None), (to if ok_to else None)


async def serve(
    substrate: OscillatorSubstrate,
    broker: BrokerConfig,
    name: str,
    *,
    prefix: str = "phasegrad",
    started: float | None = None,
) -> None:
    """Connect the substrate, serve it until cancelled, then leave it safe."""
    agent = Agent(substrate, broker, name, prefix=prefix)
    async with substrate:
        try:
            await agent.run()
        finally:
            log.info(
                "agent stopping after %.1f s: %s",
                time.time() - (started or time.time()),
                agent.stats,
            )
            await asyncio.shield(agent.stop_status())
