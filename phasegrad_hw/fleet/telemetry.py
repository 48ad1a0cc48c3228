"""MQTT telemetry per bench/device: status, per-epoch metrics, step diagnostics, calibrations.

Topics (``{prefix}/{bench}/{device}/…``): ``status`` (retained ``online`` / ``offline``; the
broker publishes the last will ``offline`` if the process dies), ``metrics`` (one JSON per
epoch), ``steps`` (step diagnostics, at most one per ``step_interval_s``), ``calibration``.
All QoS 1.

Off the control path: ``publish_*`` only put a message in a bounded queue (``put_nowait``;
when full, the oldest message is dropped and counted) and return at once — the training loop
never waits for the broker. A background task drains the queue, reconnecting with exponential
backoff; the message being sent when the connection drops is kept and sent again after the
reconnect (at-least-once, as QoS 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from phasegrad_hw.wire.mqtt import BrokerConfig, Topics, check_segment, parse_name

if TYPE_CHECKING:
    from phasegrad_hw.learning.controller import StepReport
    from phasegrad_hw.learning.loop import LoopState, RunPlan

log = logging.getLogger(__name__)


@dataclass
class TelemetryStats:
    """``queued`` accepted messages, ``sent`` acknowledged by the broker (QoS 1),
    ``dropped`` lost to a full queue, ``rate_limited`` step messages not sent, ``connects``."""

    queued: int = 0
    sent: int = 0
    dropped: int = 0
    rate_limited: int = 0
    connects: int = 0
    disconnects: int = 0


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, named tuples (records such as ``StepReport``), Pydantic models, numpy
    arrays/scalars → JSON values (NaN → null)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple: its fields
        return {k: to_jsonable(v) for k, v in zip(obj._fields, obj, strict=True)}
    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump(mode="json"))
    if isinstance(obj, np.ndarray):  # vectorised: no per-element recursion
        if obj.dtype.kind in "biu":
            return obj.tolist()
        if obj.dtype.kind == "f":
            finite = np.isfinite(obj)
            if finite.all():
                return obj.tolist()
            out = obj.astype(object)
            out[~finite] = None
            return out.tolist()
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


class Telemetry:
    """Publisher for one bench/device (see module docstring).

    ``async with Telemetry(broker, "bench/device") as tm:`` starts the sender and publishes
    ``online``; leaving flushes the queue (up to ``flush_s`` s) and publishes ``offline``.
    It is a :class:`~phasegrad_hw.learning.loop.LoopObserver`: pass it to
    :func:`phasegrad_hw.learning.loop.train_on_substrates` in ``observers``.
    ``step_interval_s`` s between step messages; ``ack_timeout_s`` s to wait for a PUBACK
    before the connection is considered lost; ``backoff_s`` (first, max) reconnect delays;
    ``connect_wait_s`` the longest :meth:`start` waits for the first connection attempt.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        name: str,
        *,
        prefix: str = "phasegrad",
        queue_size: int = 1000,
        step_interval_s: float = 0.5,
        client_id: str | None = None,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        flush_s: float = 2.0,
        ack_timeout_s: float = 2.0,
        connect_wait_s: float = 2.0,
    ) -> None:
        bench, device = parse_name(name)
        self.topics = Topics(bench, device, check_segment("--prefix", prefix))
        self.broker = broker
        self.queue: deque[tuple[str, bytes, bool]] = deque(maxlen=max(1, queue_size))
        self.step_interval_s = step_interval_s
        self.backoff_s = backoff_s
        self.flush_s = flush_s
        self.ack_timeout_s = ack_timeout_s
        self.connect_wait_s = connect_wait_s
        self.client_id = client_id or f"telemetry-{bench}-{device}-{id(self) & 0xFFFFFF:06x}"
        self.stats = TelemetryStats()
        self.connected = asyncio.Event()
        self._attempted = asyncio.Event()  # the first connection attempt has ended
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_step = -math.inf
        self._closing = False

    # -- producer side (never blocks) ---------------------------------------------------
    def _put(self, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        """Queue ``payload`` (already JSON-ready: see :func:`to_jsonable`)."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        if len(self.queue) == self.queue.maxlen:
            self.stats.dropped += 1
        self.queue.append((topic, data, retain))
        self.stats.queued += 1
        self._wake.set()

    def publish_status(self, status: str, **extra: Any) -> None:
        self._put(
            self.topics.status, {"status": status, "time": time.time(), **to_jsonable(extra)}, True
        )

    def publish_metrics(self, metrics: Mapping[str, Any] | Any) -> None:
        """One epoch's metrics (an ``EpochRecord`` or a dict)."""
        self._put(self.topics.metrics, {"time": time.time(), **to_jsonable(metrics)})

    def publish_step(self, diagnostics: Mapping[str, Any] | Any) -> bool:
        """Step diagnostics, rate-limited to one per ``step_interval_s``; True if queued."""
        now = time.monotonic()
        if now - self._last_step < self.step_interval_s:
            self.stats.rate_limited += 1
            return False
        self._last_step = now
        self._put(self.topics.steps, {"time": time.time(), **to_jsonable(diagnostics)})
        return True

    def publish_calibration(self, kind: str, report: Mapping[str, Any] | Any) -> None:
        self._put(
            self.topics.calibration,
            {"time": time.time(), "kind": kind, "report": to_jsonable(report)},
        )

    # LoopObserver of train_on_substrates
    def on_run_start(self, plan: RunPlan) -> None:
        """Nothing to publish: ``online`` was sent by :meth:`start`."""

    def on_epoch_end(self, state: LoopState) -> None:
        """Publishes the newest epoch record of the state."""
        if state.history:
            rec = to_jsonable(state.history[-1])
            rec["skipped_samples"] = state.skipped_samples
            self.publish_metrics(rec)

    def on_step(self, report: StepReport) -> None:
        """``on_step`` hook: publishes a ``StepReport`` (rate-limited)."""
        if time.monotonic() - self._last_step < self.step_interval_s:
            self.stats.rate_limited += 1  # skip the conversion work too
            return
        self.publish_step(report)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the sender and queue ``online``; return once the first connection attempt
        has ended (connected or failed, at most ``connect_wait_s`` s). The caller's work then
        does not share the event loop with the handshake (paho connects in an executor thread,
        which competes for the GIL with a CPU-bound training loop), and a broker that refuses
        is logged before it starts; later reconnects run in the background."""
        if self._task is None:
            self._closing = False
            self._attempted.clear()
            self.publish_status("online")
            self._task = asyncio.create_task(self._run(), name=f"telemetry-{self.client_id}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._attempted.wait(), self.connect_wait_s)

    async def stop(self) -> None:
        """Flush (bounded by ``flush_s``), publish ``offline``, disconnect."""
        if self._task is None:
            return
        self.publish_status("offline")
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.flush_s)
        except TimeoutError:
            log.warning(
                "telemetry: %d message(s) not flushed within %.1f s", len(self.queue), self.flush_s
            )
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None

    async def __aenter__(self) -> Telemetry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _send(self, client: Any, lost: asyncio.Task[None]) -> None:
        """Drain the queue until closing; raises MqttError when the connection drops."""
        while True:
            if lost.done():
                lost.result()
                raise _mqtt_error("connection lost")
            if not self.queue:
                if self._closing:
                    return
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait([wake, lost], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake.cancel()
                continue
            topic, data, retain = self.queue[0]
            # a PUBACK that does not come within ack_timeout_s means the broker is gone
            # (MqttError): reconnect and send this message again
            await client.publish(topic, data, qos=1, retain=retain, timeout=self.ack_timeout_s)
            if self.queue and self.queue[0][1] is data:
                self.queue.popleft()
            self.stats.sent += 1

    async def _run(self) -> None:
        import aiomqtt

        delay = self.backoff_s[0]
        will = aiomqtt.Will(
            self.topics.status, json.dumps({"status": "offline"}).encode(), qos=1, retain=True
        )
        while True:
            try:
                async with self.broker.client(self.client_id, will=will) as client:
                    self.stats.connects += 1
                    self.connected.set()
                    self._attempted.set()
                    delay = self.backoff_s[0]
                    if self.stats.connects > 1:  # status is retained: re-assert after a restart
                        self.publish_status("online", reconnected=True)
                    # the message iterator raises as soon as the connection drops
                    lost = asyncio.create_task(_until_disconnected(client))
                    try:
                        await self._send(client, lost)
                        return
                    finally:
                        lost.cancel()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self._attempted.set()
                self.stats.disconnects += 1
                log.warning(
                    "telemetry %s: broker unavailable (%s); retrying in %.2f s",
                    self.topics.base,
                    exc,
                    delay,
                )
                if self._closing and not self.queue:
                    return
                # closing with messages queued: keep retrying; stop() bounds this by flush_s
                await asyncio.sleep(delay)
                delay = min(delay * 2.0, self.backoff_s[1])


def open_telemetry(uri: str, *, name: str | None = None, **kwargs: Any) -> Telemetry:
    """A :class:`Telemetry` for ``mqtt://[USER:PASS@]HOST:PORT/BENCH/DEVICE[?step_s=S&prefix=P]``
    (credentials also from the environment, TLS options as for every broker URI). ``name``
    overrides the BENCH/DEVICE path. Use as ``async with open_telemetry(uri) as tm:`` and pass
    ``tm`` to the training loop's ``observers``."""
    from phasegrad_hw.errors import ConfigError

    broker, path, query = BrokerConfig.parse(uri, field="--telemetry")
    if "step_s" in query:
        try:
            kwargs.setdefault("step_interval_s", float(query.pop("step_s")))
        except ValueError:
            raise ConfigError("--telemetry ?step_s: must be a number of seconds") from None
    if "prefix" in query:
        kwargs.setdefault("prefix", query.pop("prefix"))
    if query:
        raise ConfigError(
            f"--telemetry: unknown option(s) {sorted(query)} — allowed: step_s, "
            "prefix, tls, ca, cert, key, insecure, keepalive"
        )
    return Telemetry(broker, name or path, **kwargs)


async def _until_disconnected(client: Any) -> None:
    """Returns (or raises MqttError) when ``client``'s connection is gone."""
    async for _ in client.messages:  # no subscriptions: only wakes up on disconnect
        pass


def _mqtt_error(text: str) -> Exception:
    import aiomqtt

    return aiomqtt.MqttError(text)
