"""Remote devices over a real mosquitto: exact training parity, broker restart, ACL, payload
validation, timeouts/late replies, idempotency."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.mqtt import MqttSubstrate, open_uri
from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.device.substrate import PhaseReading
from phasegrad_hw.errors import DeviceError, DeviceTimeoutError, LimitError
from phasegrad_hw.fleet.agent import Agent
from phasegrad_hw.fleet.telemetry import Telemetry
from phasegrad_hw.learning.controller import Parameters, StepReport
from phasegrad_hw.learning.loop import LoopObserver
from phasegrad_hw.physics import Array
from phasegrad_hw.testing.remote import NAME, in_process, train, vowel_model
from phasegrad_hw.wire.mqtt import BrokerConfig
from tests.conftest import REPO
from tests.mosquitto import (  # noqa: F401  (fixture)
    Mosquitto,
    agent_process,
    broker,
    child_env,
    local_agent,
)


@pytest.fixture
def device_file(tmp_path: Path) -> Path:
    p = tmp_path / "vowel.toml"
    vowel_model().save(p)
    return p


class SpySubstrate(SimulatedSubstrate):
    """Counts every backend hook call (what actually reaches the device)."""

    def __init__(self, model: SimulatedDeviceModel, read_delay_s: float = 0.0) -> None:
        super().__init__(model)
        self.calls: list[str] = []
        self.read_delay_s = read_delay_s

    async def _apply_frequencies(self, omega: Array) -> None:
        self.calls.append("frequencies")
        await super()._apply_frequencies(omega)

    async def _apply_biases(self, values: Array) -> None:
        self.calls.append("biases")
        await super()._apply_biases(values)

    async def _apply_couplings(self, values: Array) -> None:
        self.calls.append("couplings")
        await super()._apply_couplings(values)

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        self.calls.append("clamp")
        await super()._apply_clamp(target, beta, direction)

    async def _read(self, averages: int) -> PhaseReading:
        self.calls.append("read")
        if self.read_delay_s:
            await asyncio.sleep(self.read_delay_s)
        return await super()._read(averages)


def assert_same(a: Parameters, b: Parameters) -> None:
    assert np.array_equal(a.omega, b.omega), np.max(np.abs(a.omega - b.omega))
    assert np.array_equal(a.coupling, b.coupling)


def test_training_over_mqtt_matches_in_process(broker: Mosquitto, device_file: Path) -> None:  # noqa: F811
    reference = in_process(device_file, 2)
    with agent_process(broker.uri("agent"), device_file, NAME):
        sub = open_substrate(broker.uri("controller", NAME))
        assert isinstance(sub, MqttSubstrate)
        assert sub.model.n == 9 and sub.model.roles.outputs == [7, 8]

        async def go() -> Parameters:
            async with sub:
                return await train(sub, 2)

        remote = asyncio.run(go())
    assert_same(remote, reference)
    from phasegrad_hw.learning.seeding import initial_parameters

    init = initial_parameters(sub.model, np.random.default_rng(0), "random")
    assert np.max(np.abs(remote.omega - init.omega)) > 1e-4  # it did train
    assert sub.late_replies == 0


def test_broker_restart_mid_training(broker: Mosquitto, device_file: Path) -> None:  # noqa: F811
    epochs = 3
    reference = in_process(device_file, epochs)
    seen: list[dict[str, Any]] = []
    outage = threading.Event()

    def bounce() -> None:
        broker.restart(down_s=0.4)
        outage.set()

    async def watch(stop: asyncio.Event) -> None:
        cfg, _, _ = BrokerConfig.parse(broker.uri("watcher"))
        import aiomqtt

        while not stop.is_set():
            try:
                async with cfg.client(f"watch-{time.monotonic_ns()}") as c:
                    await c.subscribe("phasegrad/lab/chip/metrics", qos=1)
                    await c.subscribe("phasegrad/lab/chip/status", qos=1)
                    async for m in c.messages:
                        seen.append({"topic": str(m.topic), **json.loads(bytes(m.payload))})  # type: ignore[arg-type,unused-ignore]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    with agent_process(broker.uri("agent"), device_file, NAME) as ap:
        sub = open_substrate(broker.uri("controller", NAME) + "?retry=0.5")
        assert isinstance(sub, MqttSubstrate)
        steps = 0
        tm = Telemetry(BrokerConfig.parse(broker.uri("controller"))[0], NAME, step_interval_s=0.0)
        walls: list[float] = []

        class Bouncer(LoopObserver):
            def on_step(self, report: StepReport) -> None:
                nonlocal steps
                steps += 1
                if steps == 5:
                    threading.Thread(target=bounce, daemon=True).start()

        async def go() -> Parameters:
            stop = asyncio.Event()
            watcher = asyncio.create_task(watch(stop))
            async with sub, tm:
                t0 = time.perf_counter()
                params = await train(sub, epochs, [tm, Bouncer()])
                wall = time.perf_counter() - t0
            await asyncio.sleep(0.3)
            stop.set()
            watcher.cancel()
            assert wall > 0.4  # the outage paused training
            walls.append(wall)
            return params

        remote = asyncio.run(go())
    assert outage.is_set()
    assert_same(remote, reference)  # no update lost, none applied twice
    stats = ap.stats  # the agent process stopped cleanly and reported
    assert stats is not None
    assert stats["connections"] >= 2 and stats["errors"] == 0
    print(f"broker restart: wall {walls[0]:.2f} s, client resends {sub.resends}, agent {stats}")
    assert sub.connections >= 2  # the controller reconnected
    assert tm.stats.connects >= 2 and tm.stats.dropped == 0 and tm.stats.sent == tm.stats.queued
    metrics = [m for m in seen if m["topic"].endswith("/metrics")]
    assert metrics and metrics[-1]["epoch"] == epochs  # telemetry resumed after the restart
    assert any(m.get("reconnected") for m in seen if m["topic"].endswith("/status"))


async def test_credentials_and_acl_keep_others_out(broker: Mosquitto) -> None:  # noqa: F811
    import aiomqtt

    spy = SpySubstrate(vowel_model(0.0))
    async with local_agent(broker, spy) as agent:
        for uri in (
            broker.uri(None, NAME),
            broker.uri("controller", NAME).replace("controller-pw", "wrong"),
        ):
            with pytest.raises(DeviceError, match="refused the login"):
                await asyncio.to_thread(open_uri, uri + "?timeout=5")
        for user in ("outsider", "watcher"):  # valid logins, but not allowed to drive devices
            with pytest.raises(DeviceTimeoutError, match="no agent answered"):
                await asyncio.to_thread(open_uri, broker.uri(user, NAME) + "?timeout=1")
        out_cfg, _, _ = BrokerConfig.parse(broker.uri("outsider"))
        async with out_cfg.client("snoop") as snoop:
            await snoop.subscribe("#", qos=1)
            await snoop.subscribe("phasegrad/lab/chip/rpc/rep/#", qos=1)
            req = {"op": "set_frequencies", "id": "x-1", "reply_to": "snoop", "omega": [0.1] * 9}
            await snoop.publish("phasegrad/lab/chip/rpc/req", json.dumps(req), qos=1)
            # a legitimate controller drives the device meanwhile: the snoop sees nothing
            sub = await asyncio.to_thread(open_uri, broker.uri("controller", NAME))
            async with sub:
                await sub.set_frequencies(np.linspace(-0.5, 0.5, 9))
                await sub.read_phases()
            got: list[Any] = []
            try:
                async with asyncio.timeout(0.5):
                    async for m in snoop.messages:
                        got.append(m.topic)
            except TimeoutError:
                pass
            assert got == []
        # only the controller's requests arrived (hello at open_uri, open at connect; the
        # write went with the read in one batch; close = a batch of make_safe)
        assert agent.stats.ops == {
            "hello": 1,
            "open": 1,
            "batch": 2,
            "set_frequencies": 1,
            "read_phases": 1,
            "make_safe": 1,
        }
    assert spy.calls.count("frequencies") == 1  # only the controller's
    with pytest.raises(aiomqtt.MqttError):
        async with BrokerConfig.parse(broker.uri(None))[0].client("anon"):
            pass


async def test_malformed_and_out_of_limit_payloads_are_refused(broker: Mosquitto) -> None:  # noqa: F811
    spy = SpySubstrate(vowel_model(0.0))
    omega0 = spy.omega.copy()
    async with local_agent(broker, spy) as agent:
        cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
        async with cfg.client("ctl") as c:  # reads rpc/rep/ctl: its own MQTT client id
            await c.subscribe("phasegrad/lab/chip/rpc/rep/ctl", qos=0)
            head = {"v": 2, "reply_to": "ctl"}
            await c.publish(
                "phasegrad/lab/chip/rpc/req",
                json.dumps({**head, "op": "open", "id": 1, "will": "0" * 32}),
            )
            async with asyncio.timeout(5):
                opened = json.loads(bytes((await anext(aiter(c.messages))).payload))  # type: ignore[arg-type,unused-ignore]
            ses = {**head, "session": opened["result"]["session"]}
            bad: dict[int, bytes | dict[str, Any]] = {
                1: b"not json at all {",
                2: {**ses, "op": "explode", "id": 2},
                3: {**ses, "op": "set_frequencies", "id": 3, "omega": [0.1] * 8},
                4: {**ses, "op": "set_frequencies", "id": 4, "omega": [9.0] * 9},
                5: {**ses, "op": "set_frequencies", "id": 5, "omega": ["x"] * 9},
                6: {**ses, "op": "clamp", "id": 6, "target": [0.1, 0.1], "beta": 5.0},
                7: {**ses, "op": "read_phases", "id": 7, "averages": 0},
                8: {**ses, "op": "set_couplings", "id": 8, "values": [99.0] * 24},
                9: {**ses, "op": "set_biases", "id": 9, "omega": [0.0] * 9},
                10: {**ses, "op": "set_frequencies", "id": 10, "omega": [0.1] * 9, "extra": 1},
                11: {**ses, "op": "read_phases", "id": 11, "reply_to": "../../x", "averages": 1},
            }
            expect = {
                2: "invalid",
                3: "limit",
                4: "limit",
                5: "invalid",
                6: "limit",
                7: "invalid",
                8: "limit",
                9: "invalid",
                10: "invalid",
            }
            replies: dict[int, Any] = {}
            for payload in bad.values():
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                await c.publish("phasegrad/lab/chip/rpc/req", raw)
            try:
                async with asyncio.timeout(3):
                    async for m in c.messages:
                        rep = json.loads(bytes(m.payload))  # type: ignore[arg-type,unused-ignore]
                        replies[rep["id"]] = rep
                        if len(replies) == len(expect):
                            break
            except TimeoutError:
                pass
        assert agent.stats.received == len(bad) + 1  # + the open
        assert agent.stats.rejected == len(bad)
    assert {k: r["error"]["kind"] for k, r in replies.items()} == expect
    assert all(not r["ok"] for r in replies.values())
    assert "omega[0]: 9 is outside the device limit [-3.0, 3.0]" in replies[4]["error"]["message"]
    assert "beta" in replies[6]["error"]["message"]
    assert spy.calls == []  # nothing reached the device
    assert np.array_equal(spy.omega, omega0)


async def test_timeout_and_late_reply_never_taken_for_a_later_request(broker: Mosquitto) -> None:  # noqa: F811
    model = vowel_model(0.0)
    spy = SpySubstrate(model)
    async with local_agent(broker, spy):
        cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
        sub = MqttSubstrate(cfg, NAME, model=model, timeout_s=0.2, retry_s=30.0)
        async with sub:
            w1 = np.linspace(-0.4, 0.4, 9)
            w2 = -w1
            await sub.set_frequencies(w1)
            spy.read_delay_s = 0.5
            with pytest.raises(DeviceTimeoutError, match=r"read_phases \(request .*\) not answ"):
                await sub.read_phases()
            spy.read_delay_s = 0.0
            sub.timeout_s = 5.0
            await sub.set_frequencies(w2)
            r2 = await sub.read_phases()
            assert sub.late_replies == 1  # the first read's reply came, and was dropped
    ref = SimulatedSubstrate(model)
    async with ref:
        await ref.set_frequencies(w1)
        r1_ref = await ref.read_phases()
        await ref.set_frequencies(w2)
        r2_ref = await ref.read_phases()
    assert np.allclose(r2.phases, r2_ref.phases, atol=1e-9)
    assert not np.allclose(r2.phases, r1_ref.phases, atol=1e-3)


async def test_repeated_request_id_is_answered_from_cache() -> None:
    spy = SpySubstrate(vowel_model(0.0))
    agent = Agent(spy, BrokerConfig(host="unused"), NAME)

    async def open_session(client: str) -> dict[str, Any]:
        req = {"v": 2, "op": "open", "id": 1, "reply_to": client, "will": "1" * 32}
        out = await agent.handle(json.dumps(req).encode())
        assert out is not None
        return {"v": 2, "reply_to": client, "session": json.loads(out[1])["result"]["session"]}

    ses = await open_session("ctl")
    req = json.dumps({**ses, "op": "set_frequencies", "id": 2, "omega": [0.2] * 9}).encode()
    read = json.dumps({**ses, "op": "read_phases", "id": 3}).encode()
    first = await agent.handle(req)
    r1 = await agent.handle(read)
    r2 = await agent.handle(read)  # the last id again: a retry, answered from the cache
    assert r1 == r2 and first is not None and r1 is not None
    again = await agent.handle(req)  # an older id: refused, not re-applied
    assert again is not None and json.loads(again[1])["error"]["kind"] == "session"
    assert spy.calls == ["frequencies", "read"]
    assert agent.stats.executed == 2 and agent.stats.cached == 1
    ses2 = await open_session("ctl2")  # same id in another client's session: its own request
    other = await agent.handle(json.dumps({**ses2, "op": "read_phases", "id": 3}).encode())
    assert other is not None and other[0] == "ctl2" and spy.calls.count("read") == 2


async def test_limits_checked_locally_before_sending(
    broker: Mosquitto,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = SpySubstrate(vowel_model(0.0))
    # credentials from the environment (no USER:PASS@ in the URI)
    monkeypatch.setenv("PHASEGRAD_HW_MQTT_USERNAME", "controller")
    monkeypatch.setenv("PHASEGRAD_HW_MQTT_PASSWORD", "controller-pw")
    async with local_agent(broker, spy) as agent:
        sub = await asyncio.to_thread(open_uri, broker.uri(None, NAME))
        async with sub:
            n = agent.stats.received
            with pytest.raises(LimitError, match=r"omega\[3\]: 4 is outside"):
                await sub.set_frequencies([0, 0, 0, 4.0, 0, 0, 0, 0, 0])
            assert agent.stats.received == n
    assert "frequencies" not in spy.calls


async def test_reply_lost_in_a_broker_restart_is_served_from_cache(broker: Mosquitto) -> None:  # noqa: F811
    model = vowel_model(0.0)
    spy = SpySubstrate(model)
    w = np.linspace(-0.3, 0.5, 9)
    async with local_agent(broker, spy) as agent:
        cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
        sub = MqttSubstrate(cfg, NAME, model=model, timeout_s=20.0, retry_s=5.0)
        async with sub:
            await sub.set_frequencies(w)
            spy.read_delay_s = 0.6
            read = asyncio.create_task(sub.read_phases())
            await asyncio.sleep(0.2)  # the agent is executing the read ...
            await asyncio.to_thread(broker.restart, 0.2)  # ... when the broker dies
            r = await read
            spy.read_delay_s = 0.0
        assert agent.stats.connections >= 2
        assert agent.stats.cached >= 1  # the retried id was answered from the cache ...
    assert spy.calls.count("read") == 1  # ... and the read was not repeated on the device
    ref = SimulatedSubstrate(model)
    async with ref:
        await ref.set_frequencies(w)
        assert np.allclose(r.phases, (await ref.read_phases()).phases, atol=1e-12)


CONTROLLER = """
import asyncio, sys
from phasegrad_hw.backends.mqtt import open_uri
async def main():
    sub = open_uri(sys.argv[1])
    async with sub:
        await sub.set_frequencies([0.1] * 9)
        await sub.clamp([0.2, -0.2], 0.5)
        await sub.flush()  # the queued writes reach the device
        print(sub.client_id, sub.session, flush=True)
        await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_dead_controller_leaves_the_device_safe_and_fenced(broker: Mosquitto) -> None:  # noqa: F811
    spy = SpySubstrate(vowel_model(0.0))
    async with local_agent(broker, spy) as agent:
        proc = subprocess.Popen(
            [sys.executable, "-c", CONTROLLER, broker.uri("controller", NAME)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=child_env(),
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
            client, session = line.split()
            assert spy.clamped and np.all(spy.omega == 0.1)
            proc.send_signal(signal.SIGKILL)  # no clean disconnect: the broker sends the will
            await asyncio.to_thread(proc.wait, 10)
            for _ in range(100):
                if not spy.clamped:
                    break
                await asyncio.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert not spy.clamped and np.array_equal(spy.omega, spy.model.safe_biases())
        assert agent.sessions[client].closed  # the vanished client's session is closed
        # ... so a late request of it is refused (sent under its client id and session)
        cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
        async with cfg.client(client) as c:
            await c.subscribe(f"phasegrad/lab/chip/rpc/rep/{client}", qos=1)
            late = {"v": 2, "op": "read_phases", "id": 10**6, "reply_to": client}
            await c.publish(
                "phasegrad/lab/chip/rpc/req", json.dumps({**late, "session": session}), qos=1
            )
            async with asyncio.timeout(5):
                m = await anext(aiter(c.messages))
        rep = json.loads(bytes(m.payload))  # type: ignore[arg-type,unused-ignore]
        assert rep["id"] == 10**6 and rep["error"]["kind"] == "session"
        assert "last will" in rep["error"]["message"]
    assert spy.calls.count("read") == 0


async def test_tls_listener(tmp_path: Path) -> None:
    b = Mosquitto(tmp_path / "tls-broker", tls=True)
    b.start()
    try:
        spy = SpySubstrate(vowel_model(0.0))
        cfg, _, _ = BrokerConfig.parse(b.tls_uri("agent"))
        assert cfg.tls and cfg.ca == b.ca and cfg.port == b.tls_port
        agent = Agent(spy, cfg, NAME)
        task = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 10)
        try:
            sub = await asyncio.to_thread(open_uri, b.tls_uri("controller", NAME))
            async with sub:
                await sub.set_frequencies(np.full(9, 0.05))
                r = await sub.read_phases()
            assert r.locked and spy.calls.count("read") == 1
            # without the test CA the server certificate is not trusted: a clear, fast error
            with pytest.raises(DeviceError, match="TLS failed"):
                await asyncio.to_thread(
                    open_uri, b.tls_uri("controller", NAME, ca=False) + "?timeout=5"
                )
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
    finally:
        b.stop()


CLI = [sys.executable, "-m", "phasegrad_hw.cli"]


@pytest.mark.slow
def test_train_cli_over_mqtt_matches_the_device_file(
    broker: Mosquitto,  # noqa: F811
    device_file: Path,
    tmp_path: Path,
) -> None:
    from phasegrad_hw.store import RunStore

    # a small formant file (CI-sized run): 15 /a/ and 15 /i/ around the Hillenbrand means
    rng = np.random.default_rng(9)
    rows = [
        f"{v},{f1:.1f},{f2:.1f}"
        for v, m1, m2 in (("a", 887.3, 1506.8), ("i", 411.6, 2725.4))
        for f1, f2 in zip(rng.normal(m1, 60, 15), rng.normal(m2, 150, 15), strict=True)
    ]
    csv = tmp_path / "formants.csv"
    csv.write_text("vowel,F1,F2\n" + "\n".join(rows) + "\n")

    def train_cli(dev: str, name: str, *extra: str) -> tuple[Parameters, dict[str, Any]]:
        store, out = tmp_path / f"{name}.sqlite", tmp_path / f"{name}.json"
        proc = subprocess.run(
            [
                *CLI,
                "train",
                "--device",
                dev,
                "--task",
                "vowels:a,i",
                "--data",
                str(csv),
                "--params",
                "both",
                "--epochs",
                "2",
                "--seed",
                "4",
                "--store",
                str(store),
                "--json",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=child_env(),
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        with RunStore(store) as st:
            (run,) = st.list_runs()
            _, state = st.load_checkpoint(run["id"])
            assert "controller-pw" not in run["device"]  # credentials are not stored
        return state.params, json.loads(out.read_text())

    seen: list[tuple[str, dict[str, Any]]] = []
    subscribed, stop = threading.Event(), threading.Event()

    def watch() -> None:  # the telemetry of the training process, as a read-only user sees it
        async def go() -> None:
            cfg, _, _ = BrokerConfig.parse(broker.uri("watcher"))
            async with cfg.client("cli-watcher") as c:
                await c.subscribe("phasegrad/lab/telemetry/+", qos=1)
                subscribed.set()
                while not stop.is_set():
                    try:
                        async with asyncio.timeout(0.2):
                            m = await anext(aiter(c.messages))
                    except TimeoutError:
                        continue
                    seen.append((str(m.topic).rsplit("/", 1)[1], json.loads(bytes(m.payload))))  # type: ignore[arg-type,unused-ignore]

        asyncio.run(go())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert subscribed.wait(10)
    with agent_process(broker.uri("agent"), device_file, NAME):
        remote, remote_json = train_cli(
            broker.uri("controller", NAME),
            "remote",
            "--telemetry",
            broker.uri("controller", "lab/telemetry") + "?step_s=0.05",
        )
    stop.set()
    watcher.join(5)
    local, local_json = train_cli(str(device_file), "local")
    assert_same(remote, local)
    assert remote_json["final_test_accuracy"] == local_json["final_test_accuracy"]
    topics = [t for t, _ in seen]
    assert topics[0] == "status" and seen[0][1]["status"] == "online"
    assert seen[-1] == ("status", {"status": "offline", "time": seen[-1][1]["time"]})  # clean
    metrics = [p for t, p in seen if t == "metrics"]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[-1]["test_accuracy"] == remote_json["final_test_accuracy"]
    assert "steps" in topics


async def test_model_mismatch_is_refused_without_leftovers(broker: Mosquitto) -> None:  # noqa: F811
    from phasegrad_hw.errors import ProtocolError

    spy = SpySubstrate(vowel_model(0.0))
    other = vowel_model(0.0).model_copy(update={"nudge": "injection"})
    async with local_agent(broker, spy):
        cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
        sub = MqttSubstrate(cfg, NAME, model=other, timeout_s=5.0)
        with pytest.raises(ProtocolError, match="device model differs"):
            async with sub:
                pass
        assert sub._task is None and sub._pending == {}
    assert spy.calls == []


def test_unreachable_broker_and_bad_uris_give_clear_errors() -> None:
    from phasegrad_hw.errors import ConfigError
    from tests.mosquitto import free_port

    with pytest.raises(DeviceTimeoutError, match="broker is unreachable"):
        open_uri(f"mqtt://u:p@127.0.0.1:{free_port()}/lab/chip?timeout=0.5")
    with pytest.raises(ConfigError, match="BENCH/DEVICE"):
        open_uri("mqtt://127.0.0.1:1883/only-bench")
    with pytest.raises(ConfigError, match=r"timeout: 'soon'"):
        open_uri("mqtt://127.0.0.1:1883/lab/chip?timeout=soon")
    with pytest.raises(ConfigError, match="bench"):
        open_uri("mqtt://127.0.0.1:1883/la b/chip")
    with pytest.raises(ConfigError, match="scheme"):
        open_substrate("mqtx://127.0.0.1/lab/chip")
