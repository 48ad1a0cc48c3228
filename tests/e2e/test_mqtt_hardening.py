"""The outside attack run against the agent, repeated with independent raw MQTT clients
(aiomqtt directly, written from docs/mqtt.md — not the project's remote substrate, except as
the victim): 0 crashes, 0 integrity breaches (forged ids, forged make_safe/release, replays
past any window, retained requests), anonymous serving only with the flag, SIGTERM under a
flood 20 of 20, agent restarts mid-training never update silently."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.mqtt import MqttSubstrate
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.fleet.agent import Agent
from phasegrad_hw.testing.remote import NAME, in_process, sigkill_run, vowel_model
from phasegrad_hw.wire.mqtt import BrokerConfig
from tests.conftest import REPO
from tests.e2e.test_mqtt_remote import SpySubstrate
from tests.mosquitto import (  # noqa: F401  (fixture)
    Mosquitto,
    agent_args,
    agent_process,
    broker,
    child_env,
    local_agent,
)

REQ = "phasegrad/lab/chip/rpc/req"


def rep_topic(client: str) -> str:
    return f"phasegrad/lab/chip/rpc/rep/{client}"


class Raw:
    """A raw protocol-2 client (aiomqtt only): its MQTT client id is its reply_to."""

    def __init__(self, c: Any, client: str) -> None:
        self.c, self.client = c, client
        self.session: str | None = None
        self.boot: str | None = None
        self.next_id = 1
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.topics: list[str] = []  # every topic a message came on
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for m in self.c.messages:
            self.topics.append(str(m.topic))
            await self.replies.put(json.loads(bytes(m.payload)))  # type: ignore[arg-type,unused-ignore]

    def request(self, op: str, rid: int | None = None, **fields: Any) -> dict[str, Any]:
        if rid is None:
            rid, self.next_id = self.next_id, self.next_id + 1
        req = {"v": 2, "op": op, "id": rid, "reply_to": self.client, **fields}
        if self.session is not None and "session" not in fields and op not in ("open", "hello"):
            req["session"] = self.session
        return req

    async def send(self, req: dict[str, Any] | bytes, retain: bool = False) -> None:
        raw = req if isinstance(req, bytes) else json.dumps(req).encode()
        await self.c.publish(REQ, raw, qos=0, retain=retain)

    async def reply(self, timeout_s: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            return await self.replies.get()

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        req = self.request(op, **fields)
        await self.send(req)
        while True:
            rep = await self.reply()
            if rep["id"] == req["id"]:
                return rep

    async def open(self, will: str = "c" * 32) -> None:
        rep = await self.call("open", will=will)
        assert rep["ok"], rep
        self.session, self.boot = rep["result"]["session"], rep["boot"]


@asynccontextmanager
async def raw_client(b: Mosquitto, client: str, user: str = "controller") -> AsyncIterator[Raw]:
    cfg, _, _ = BrokerConfig.parse(b.uri(user))
    async with cfg.client(client) as c:
        await c.subscribe(rep_topic(client), qos=0)
        r = Raw(c, client)
        try:
            yield r
        finally:
            r._reader.cancel()


async def test_hostile_payloads_never_crash_the_agent(broker: Mosquitto) -> None:  # noqa: F811
    spy = SpySubstrate(vowel_model(0.0))
    async with local_agent(broker, spy) as agent, raw_client(broker, "ctl") as ctl:
        await ctl.open()
        await ctl.send(b"[" * 1000 + b"]" * 1000)  # the 2 KB nesting attack
        huge = ctl.request("set_frequencies", omega=[0.1] * 600_000)  # ~3 MB
        await ctl.send(huge)
        await ctl.send(b"\xff\xfe\x00garbage")
        bools = await ctl.call("set_frequencies", omega=[True] * 9)
        strings = await ctl.call("set_frequencies", omega=["0.1"] * 9)
        long = await ctl.call("set_frequencies", omega=["x" * 1500] * 2)  # under the size limit
        ok = await ctl.call("read_phases")  # the agent is alive and serves the session
        assert ok["ok"] and len(ok["result"]["phases"]) == 9
        await asyncio.sleep(0.2)
        assert ctl.replies.empty()  # no reply to the unanswerable ones (e.g. the 3 MB request)
        assert agent.stats.dropped >= 3 and agent.stats.errors == 0
    for rep in (bools, strings, long):
        assert not rep["ok"] and rep["error"]["kind"] == "invalid"
        assert len(json.dumps(rep)) < 1000  # an excerpt, never the offending value
    assert "bool" in bools["error"]["message"] or "number" in bools["error"]["message"]
    assert spy.calls == ["read"]  # nothing else reached the device


async def test_same_credentials_cannot_forge_replay_or_steer(broker: Mosquitto) -> None:  # noqa: F811
    import aiomqtt

    spy = SpySubstrate(vowel_model(0.0))
    async with local_agent(broker, spy) as agent:
        cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
        victim = MqttSubstrate(cfg, NAME, model=spy.model, timeout_s=10.0)
        async with victim, raw_client(broker, "mallory") as mal:
            # the attacker cannot read the victim's replies (where its session nonce
            # travels): the broker delivers rpc/rep/X only to the client whose id is X
            await mal.c.subscribe(rep_topic(victim.client_id), qos=0)
            await mal.c.subscribe("phasegrad/lab/chip/rpc/rep/#", qos=0)
            await victim.set_frequencies(np.full(9, 0.05))
            await victim.clamp([0.1, -0.1], 0.5)
            await victim.flush()  # one batch: set_frequencies + clamp
            assert spy.clamped
            nxt = next(victim._ids)  # the id the victim will use next (peeked, then re-queued)
            victim._ids = iter(range(nxt, nxt + 10**9))  # type: ignore[assignment]
            fake = "f" * 32
            forged = [
                # pre-sent release with the victim's next id, a guessed session
                mal.request("release", rid=nxt, session=fake) | {"reply_to": victim.client_id},
                # make_safe with a forged session, and with a forged last-will token
                mal.request("make_safe", rid=nxt, session=fake) | {"reply_to": victim.client_id},
                mal.request("make_safe", rid=0, will=fake) | {"reply_to": victim.client_id},
            ]
            for req in forged:
                await mal.send(req)
            await mal.open()  # a retained request, even in the attacker's own valid session
            await mal.send(mal.request("set_frequencies", omega=[0.3] * 9), retain=True)
            await asyncio.sleep(0.3)
            assert spy.clamped  # no forged make_safe/release reached the device
            w = np.linspace(-0.2, 0.2, 9)
            await victim.set_frequencies(w)
            await victim.flush()  # the victim's real request with that id ...
            assert np.allclose(spy.omega, w)  # ... is applied, not answered from a cache
            # the forged requests' error replies reached the victim's topic and were dropped
            assert victim.late_replies + victim.foreign_replies == 3
            await asyncio.sleep(0.2)
            assert rep_topic(victim.client_id) not in mal.topics
        refused = agent.stats.rejected
        assert refused >= 3 and agent.stats.retained == 1
        assert spy.calls.count("frequencies") == 2  # the victim's two; not the retained one
        # replay, far past any cache size: a captured request of a session, after 4 300 newer
        async with raw_client(broker, "ctl") as ctl:
            await ctl.open()
            first = ctl.request("set_frequencies", omega=[0.25] * 9)
            await ctl.send(first)
            assert (await ctl.reply())["ok"]
            for _ in range(4300):  # pipelined: the agent answers them in order
                await ctl.send(ctl.request("read_phases"))
            for _ in range(4300):
                assert (await ctl.reply(30))["ok"]
            await ctl.send(first)  # the capture, replayed
            stale = await ctl.reply()
            assert stale["error"]["kind"] == "session" and "stale" in stale["error"]["message"]
        assert spy.calls.count("frequencies") == 3  # the replay was never applied
        # a retained request is not executed by a restarted agent, and was cleared
        async with local_agent(broker, spy) as agent2:
            await asyncio.sleep(0.3)
            assert agent2.stats.retained == 0 and agent2.stats.executed == 0
        acfg, _, _ = BrokerConfig.parse(broker.uri("agent"))
        async with acfg.client("look-agent") as look:
            await look.subscribe(REQ, qos=0)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(aiter(look.messages))  # no retained request left
    assert spy.calls.count("frequencies") == 3
    with pytest.raises(aiomqtt.MqttError):  # and no anonymous client gets in at all
        async with BrokerConfig.parse(broker.uri(None))[0].client("anon"):
            pass


async def test_sessions_unit_rules() -> None:
    """Transport-free: a session opened twice with the same id is the same session; a newer
    open replaces it; the last will closes it; an unknown session is refused."""
    spy = SpySubstrate(vowel_model(0.0))
    agent = Agent(spy, BrokerConfig(host="unused"), NAME)

    async def send(req: dict[str, Any]) -> dict[str, Any]:
        out = await agent.handle(json.dumps({"v": 2, "reply_to": "ctl", **req}).encode())
        assert out is not None and out[0] == "ctl"
        return dict(json.loads(out[1]))

    o1 = await send({"op": "open", "id": 5, "will": "1" * 32})
    assert (await send({"op": "open", "id": 5, "will": "1" * 32})) == o1  # a retry
    s1 = o1["result"]["session"]
    assert o1["boot"] == agent.boot and len(s1) == 32
    assert (await send({"op": "read_phases", "id": 1, "session": s1}))["ok"]
    o2 = await send({"op": "open", "id": 6, "will": "2" * 32})
    s2 = o2["result"]["session"]
    old = await send({"op": "read_phases", "id": 2, "session": s1})  # replaced
    assert old["error"]["kind"] == "session" and old["session"] == s1
    assert (await send({"op": "clamp", "id": 1, "session": s2, "target": [0.1, 0.1], "beta": 0.5}))[
        "ok"
    ]
    assert spy.clamped
    wrong_will = await send({"op": "make_safe", "id": 0, "will": "1" * 32})
    assert wrong_will["error"]["kind"] == "session" and spy.clamped
    assert (await send({"op": "make_safe", "id": 0, "will": "2" * 32}))["ok"]
    assert not spy.clamped
    closed = await send({"op": "read_phases", "id": 2, "session": s2})
    assert "last will" in closed["error"]["message"]
    again = await send({"op": "make_safe", "id": 0, "will": "2" * 32})  # a replayed will
    assert again["error"]["kind"] == "session"
    assert spy.calls.count("read") == 1


# --------------------------------------------------------------------------- anonymous
def agent_cmd(b: Mosquitto, device: Path, user: str | None, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "phasegrad_hw.cli",
        *agent_args(b.uri(user), device, NAME, *extra),
    ]


@pytest.fixture
def device_file(tmp_path: Path) -> Path:
    p = tmp_path / "vowel.toml"
    vowel_model().save(p)
    return p


def test_anonymous_broker_is_refused_unless_allowed(tmp_path: Path, device_file: Path) -> None:
    b = Mosquitto(tmp_path / "anon", anonymous=True)
    b.start()
    try:
        for user in (None, "agent"):  # with or without credentials of its own
            p = subprocess.run(
                agent_cmd(b, device_file, user),
                capture_output=True,
                text=True,
                cwd=REPO,
                env=child_env(),
                timeout=60,
            )
            assert p.returncode == 2, (p.stdout, p.stderr[-2000:])
            assert "accepts clients without credentials" in p.stderr
            assert "--allow-anonymous" in p.stderr and "ready" not in p.stdout
        with agent_process(b.uri(None), device_file, NAME, "--allow-anonymous") as proc:
            spy_ok = asyncio.run(_anonymous_drive(b))
        assert spy_ok
        assert "accepts anonymous clients" in proc.stderr_text
    finally:
        b.stop()


async def _anonymous_drive(b: Mosquitto) -> bool:
    async with raw_client(b, "anon-ctl", user=None) as anon:
        await anon.open()
        return bool((await anon.call("read_phases"))["ok"])


# --------------------------------------------------------------------------- signals
@pytest.mark.slow
def test_stop_signals_under_a_flood_leave_the_device_safe(
    broker: Mosquitto,  # noqa: F811
    device_file: Path,
) -> None:
    """SIGTERM during a 5 000-message flood, 20 of 20 (then SIGINT and SIGHUP once each):
    the device is made safe within 2 s of the signal, stats are printed, the process exits."""
    rng = random.Random(7)
    sigs = [signal.SIGTERM] * 20 + [signal.SIGINT, signal.SIGHUP]
    for k, sig in enumerate(sigs):
        with agent_process(broker.uri("agent"), device_file, NAME) as ap:
            flood = subprocess.Popen(
                [sys.executable, "-c", FLOOD, broker.uri("controller"), "5000"],
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env=child_env(),
            )
            assert flood.stdout is not None
            assert flood.stdout.readline().strip() == "flooding"
            time.sleep(rng.random() * 0.3)  # mid-flood
            t0 = time.monotonic()
            ap.p.send_signal(sig)
            try:
                ap.p.wait(10)
            except subprocess.TimeoutExpired:
                pytest.fail(f"run {k}: the agent was still running 10 s after {sig.name}")
            exited_s = time.monotonic() - t0
            flood.kill()
            flood.wait(5)
        stats = [ln for ln in ap.stdout_text.splitlines() if ln.startswith("agent stats ")]
        assert len(stats) == 1, (k, ap.stdout_text[-500:], ap.stderr_text[-1500:])
        st = json.loads(stats[0].removeprefix("agent stats "))
        assert st["made_safe"] is True and st["received"] > 1, (k, st)
        assert st["stop_s"] is not None and st["stop_s"] <= 2.0, (k, st)
        assert ap.p.returncode == 0, (k, ap.stderr_text[-1500:])
        assert exited_s < 8.0, (k, exited_s)


FLOOD = """
import asyncio, json, sys
from phasegrad_hw.wire.mqtt import BrokerConfig
async def main():
    cfg, _, _ = BrokerConfig.parse(sys.argv[1])
    async with cfg.client("flood") as c:
        await c.subscribe("phasegrad/lab/chip/rpc/rep/flood")
        head = {"v": 2, "reply_to": "flood"}
        await c.publish("phasegrad/lab/chip/rpc/req",
                        json.dumps({**head, "op": "open", "id": 1, "will": "e" * 32}))
        m = await anext(aiter(c.messages))
        ses = json.loads(bytes(m.payload))["result"]["session"]
        print("flooding", flush=True)
        for k in range(int(sys.argv[2])):
            if k % 4 == 0:
                raw = [b"[" * 50, b"{}", b"not json"][k % 3]
            elif k % 2:
                raw = json.dumps({**head, "session": ses, "op": "read_phases", "id": k + 2})
            else:
                raw = json.dumps({**head, "session": ses, "op": "clamp", "id": k + 2,
                                  "target": [0.1, 0.1], "beta": 0.5})
            await c.publish("phasegrad/lab/chip/rpc/req", raw)
        await asyncio.sleep(30)
asyncio.run(main())
"""


# --------------------------------------------------------------------------- restarts
@pytest.mark.slow
def test_agent_killed_and_restarted_mid_training(
    broker: Mosquitto,  # noqa: F811
    device_file: Path,
) -> None:
    """SIGKILL + restart of the agent at random moments: every run either ends bit-identical
    to an uninterrupted one or stops with a clear error (never a silent update).
    benchmarks/bench_mqtt_sigkill.py runs 10 such moments."""
    epochs = 2
    reference = in_process(device_file, epochs)
    rng = random.Random(3)
    kills = [(rng.randrange(1, 40), rng.uniform(0.0, 0.004)) for _ in range(3)]
    runs = [sigkill_run(broker, device_file, epochs, reference, *k) for k in kills]
    runs.append(sigkill_run(broker, device_file, epochs, reference, None, 0.0))
    print("restart outcomes:", [(r["outcome"], r["detail"][:80]) for r in runs])
    assert [r["outcome"] for r in runs] == ["clear error"] * 3 + ["identical"]


def test_config_error_for_anonymous_in_process(tmp_path: Path) -> None:
    """Agent.run raises ConfigError (no serving) on an anonymous broker without the flag."""
    b = Mosquitto(tmp_path / "anon2", anonymous=True)
    b.start()
    try:
        spy = SpySubstrate(vowel_model(0.0))

        async def go() -> None:
            agent = Agent(spy, BrokerConfig.parse(b.uri(None))[0], NAME)
            await asyncio.wait_for(agent.run(), 20)

        with pytest.raises(ConfigError, match="without credentials"):
            asyncio.run(go())
    finally:
        b.stop()


# --------------------------------------------------------------------------- stalled paths
async def test_stalled_broker_is_detected_and_the_request_path_avoids_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a mosquitto without ``set_tcp_nodelay`` the agent's QoS 1 probe waits on Nagle +
    delayed ACK (≥ 40 ms by the kernel's delayed-ACK timer) and says what to change; the
    controller's QoS 0 requests still work and are not judged stalled."""
    b = Mosquitto(tmp_path / "default", nodelay=False)
    b.start()
    try:
        spy = SpySubstrate(vowel_model(0.0))
        with caplog.at_level("INFO"):
            async with local_agent(b, spy) as agent:
                for _ in range(100):
                    if agent.probe_ms is not None:
                        break
                    await asyncio.sleep(0.05)
                cfg, _, _ = BrokerConfig.parse(b.uri("controller"))
                sub = MqttSubstrate(cfg, NAME, model=spy.model)
                async with sub:
                    for _ in range(40):
                        await sub.read_phases()
        assert agent.probe_ms is not None and agent.probe_ms > 15.0
        assert any("set_tcp_nodelay true" in r.getMessage() for r in caplog.records)
        assert len(sub._overheads_ms) == 32 and sub.transit_ms is not None
        assert not sub.stall_warned  # QoS 0 requests: no 40 ms wait per exchange
    finally:
        b.stop()


def test_controller_judges_transit_time_not_agent_time(caplog: pytest.LogCaptureFixture) -> None:
    sub = MqttSubstrate(BrokerConfig(host="unused"), NAME, model=vowel_model(0.0))
    for _ in range(40):  # a slow device (30 ms per read) on a fast path: no warning
        sub._watch_path("read_phases", 31.0, 30.0)
    assert not sub.stall_warned
    with caplog.at_level("WARNING"):
        for _ in range(40):  # 45 ms in transit per request: warned once, with the fix
            sub._watch_path("read_phases", 46.0, 1.0)
    assert sub.stall_warned
    warned = [r for r in caplog.records if "set_tcp_nodelay" in r.getMessage()]
    assert len(warned) == 1 and "ms in transit" in warned[0].getMessage()
