"""MQTT telemetry against a real mosquitto: topics and payloads, rate limit, bounded queue
off the control path, last will, reconnect after a broker restart."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.errors import ConfigError
from phasegrad_hw.fleet.telemetry import Telemetry, open_telemetry
from phasegrad_hw.learning.controller import Parameters
from phasegrad_hw.learning.loop import EpochRecord, LoopState
from phasegrad_hw.wire.mqtt import BrokerConfig
from tests.conftest import REPO
from tests.mosquitto import Mosquitto, broker, child_env, free_port  # noqa: F401  (fixture)

NAME = "lab/chip"
BASE = "phasegrad/lab/chip"


async def collect(
    b: Mosquitto, seconds: float, n: int | None = None, ready: asyncio.Event | None = None
) -> list[tuple[str, Any, bool]]:
    """(topic, payload, retained) seen by the read-only ``watcher`` user."""
    cfg, _, _ = BrokerConfig.parse(b.uri("watcher"))
    out: list[tuple[str, Any, bool]] = []
    async with cfg.client(f"watcher-{id(out)}") as c:
        await c.subscribe(f"{BASE}/+", qos=1)
        if ready is not None:
            ready.set()
        try:
            async with asyncio.timeout(seconds):
                async for m in c.messages:
                    raw = bytes(m.payload)  # type: ignore[arg-type,unused-ignore]
                    out.append((str(m.topic).rsplit("/", 1)[1], json.loads(raw), m.retain))
                    if n is not None and len(out) >= n:
                        break
        except TimeoutError:
            pass
    return out


def state(epoch: int) -> LoopState:
    hist = [EpochRecord(k, 0.5 + 0.1 * k, 0.4 + 0.1 * k, k, 0.01) for k in range(1, epoch + 1)]
    return LoopState(epoch, Parameters(np.zeros(9), np.ones(24)), hist, 3)


async def test_topics_payloads_and_rate_limit(broker: Mosquitto) -> None:  # noqa: F811
    ready = asyncio.Event()
    watcher = asyncio.create_task(collect(broker, 5.0, n=6, ready=ready))
    await ready.wait()
    cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
    async with Telemetry(cfg, NAME, step_interval_s=60.0) as tm:
        tm.on_epoch_end(state(1))
        queued = [tm.publish_step({"loss": float(k), "grad": np.arange(3.0)}) for k in range(20)]
        tm.on_epoch_end(state(2))
        tm.publish_calibration("symmetry", {"asymmetry": np.array([0.01, np.nan])})
    got = await watcher
    assert queued == [True] + [False] * 19 and tm.stats.rate_limited == 19
    assert [t for t, _, _ in got] == [
        "status",
        "metrics",
        "steps",
        "metrics",
        "calibration",
        "status",
    ]
    assert got[0][1]["status"] == "online" and got[-1][1]["status"] == "offline"
    m1, m2 = got[1][1], got[3][1]
    assert (m1["epoch"], m2["epoch"]) == (1, 2)
    assert m2["test_accuracy"] == 0.4 + 0.1 * 2 and m2["skipped_samples"] == 3
    assert got[2][1]["loss"] == 0.0 and got[2][1]["grad"] == [0.0, 1.0, 2.0]
    assert got[4][1]["kind"] == "symmetry" and got[4][1]["report"]["asymmetry"] == [0.01, None]
    assert tm.stats.sent == tm.stats.queued == 6 and tm.stats.dropped == 0
    # the status is retained: a late subscriber learns the device is offline
    late = await collect(broker, 1.0, n=1)
    assert late == [("status", {"status": "offline", "time": got[-1][1]["time"]}, True)]


async def test_queue_is_bounded_and_off_the_control_path(tmp_path: Path) -> None:
    # nothing listens on this port: the sender keeps retrying, publishers never wait
    cfg = BrokerConfig(host="127.0.0.1", port=free_port())
    tm = Telemetry(cfg, NAME, queue_size=10, flush_s=0.3)
    await tm.start()
    for k in range(100):
        tm.publish_metrics({"epoch": k})
    assert len(tm.queue) == 10 and tm.stats.dropped == 91  # 100 metrics + "online"
    assert [json.loads(d)["epoch"] for _, d, _ in tm.queue] == list(range(90, 100))
    await asyncio.sleep(0.3)
    assert tm.stats.sent == 0 and tm.stats.disconnects >= 1  # it tried, with backoff
    await tm.stop()  # bounded by flush_s even though the broker never came
    assert tm._task is None


async def test_start_returns_after_the_first_connection_attempt(broker: Mosquitto) -> None:  # noqa: F811
    """start() returns connected when the broker is up (the handshake is not left to compete
    with the caller's first steps), and at once, not after connect_wait_s, when it refuses."""
    cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
    tm = Telemetry(cfg, NAME, connect_wait_s=10.0)
    await tm.start()
    assert tm.connected.is_set() and tm.stats.connects == 1
    await tm.stop()
    refused = Telemetry(BrokerConfig(host="127.0.0.1", port=free_port()), NAME, flush_s=0.1)
    t0 = asyncio.get_running_loop().time()
    await refused.start()
    assert asyncio.get_running_loop().time() - t0 < 2.0  # connect_wait_s is 2 s
    assert not refused.connected.is_set() and refused.stats.disconnects == 1
    await refused.stop()


WILL_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from phasegrad_hw.wire.mqtt import BrokerConfig
    from phasegrad_hw.fleet.telemetry import Telemetry
    async def main():
        cfg, _, _ = BrokerConfig.parse(sys.argv[1])
        tm = Telemetry(cfg, "lab/chip")
        await tm.start()
        await tm.connected.wait()
        while tm.queue:
            await asyncio.sleep(0.01)
        print("up", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
""")


async def test_last_will_marks_a_dead_process_offline(broker: Mosquitto) -> None:  # noqa: F811
    proc = subprocess.Popen(
        [sys.executable, "-c", WILL_SCRIPT, broker.uri("controller")],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line.strip() == b"up"
        before = await collect(broker, 1.0, n=1)
        assert before[0][0] == "status" and before[0][1]["status"] == "online"
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        after: list[Any] = []
        for _ in range(50):  # the broker publishes the will when it notices the dead socket
            after = await collect(broker, 0.5, n=1)
            if after and after[0][1]["status"] == "offline":
                break
        assert after == [("status", {"status": "offline"}, True)]  # the will (no time field)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_telemetry_resumes_after_a_broker_restart(broker: Mosquitto) -> None:  # noqa: F811
    cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
    async with Telemetry(cfg, NAME, backoff_s=(0.05, 0.5)) as tm:
        await asyncio.wait_for(tm.connected.wait(), 10)
        tm.publish_metrics({"epoch": 1})
        while tm.queue:
            await asyncio.sleep(0.01)
        broker.kill()
        tm.publish_metrics({"epoch": 2})  # queued while the broker is down
        await asyncio.sleep(0.3)
        assert tm.stats.disconnects >= 1 and not tm.connected.is_set()
        ready = asyncio.Event()
        await asyncio.to_thread(broker.start)
        watcher = asyncio.create_task(collect(broker, 10.0, n=2, ready=ready))
        await ready.wait()
        got = await watcher
    assert ("metrics", 2) in [(t, p.get("epoch")) for t, p, _ in got]
    assert any(t == "status" and p.get("reconnected") for t, p, _ in got)
    assert tm.stats.connects >= 2 and tm.stats.dropped == 0 and tm.stats.sent == tm.stats.queued


async def test_stop_keeps_retrying_within_flush_s(broker: Mosquitto) -> None:  # noqa: F811
    """The broker drops just as the run ends: stop() still delivers the queue once the broker
    is back within flush_s, instead of abandoning it on the first failed reconnect."""
    cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
    tm = Telemetry(cfg, NAME, backoff_s=(0.05, 0.2), flush_s=8.0)
    await tm.start()
    await asyncio.wait_for(tm.connected.wait(), 10)
    broker.kill()
    for epoch in range(3):
        tm.publish_metrics({"epoch": epoch})  # queued while the broker is down
    stopping = asyncio.create_task(tm.stop())
    await asyncio.sleep(0.4)
    assert not stopping.done() and tm.queue  # still trying, nothing thrown away
    await asyncio.to_thread(broker.start)
    await asyncio.wait_for(stopping, 10)
    assert tm.stats.connects >= 2 and tm.stats.dropped == 0 and tm.stats.sent == tm.stats.queued


def test_open_telemetry_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHASEGRAD_HW_MQTT_USERNAME", "env-user")
    monkeypatch.setenv("PHASEGRAD_HW_MQTT_PASSWORD", "env-pw")
    tm = open_telemetry("mqtt://broker.lab:1884/bench2/dev7?step_s=0.25")
    assert (tm.broker.host, tm.broker.port) == ("broker.lab", 1884)
    assert (tm.broker.username, tm.broker.password) == ("env-user", "env-pw")
    assert tm.topics.metrics == "phasegrad/bench2/dev7/metrics" and tm.step_interval_s == 0.25
    tm2 = open_telemetry("mqtt://me:s%40cret@h/b/d?prefix=lab2")
    assert (tm2.broker.username, tm2.broker.password) == ("me", "s@cret")  # URI beats env
    assert tm2.topics.status == "lab2/b/d/status"
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['bogus'\]"):
        open_telemetry("mqtt://h/b/d?bogus=1")
    with pytest.raises(ConfigError, match="BENCH/DEVICE"):
        open_telemetry("mqtt://h:1883/onlyone")
    with pytest.raises(ConfigError, match="step_s"):
        open_telemetry("mqtt://h/b/d?step_s=fast")
    with pytest.raises(ConfigError, match="port"):
        open_telemetry("mqtt://h:99999/b/d")
