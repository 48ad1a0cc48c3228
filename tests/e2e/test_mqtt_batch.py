"""Batches (docs/mqtt.md, protocol 2 + ``batch``): the remote substrate queues limit-checked
writes and sends them with the next read as one request; the agent executes a batch in order,
stops at the first failure and names it; errors of queued writes reach the caller by the next
read at the latest; make_safe flushes; a restarted agent mid-batch is never silently used."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.mqtt import AgentRestartedError, MqttSubstrate
from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.errors import LimitError
from phasegrad_hw.fleet.agent import Agent
from phasegrad_hw.physics import Array
from phasegrad_hw.testing.remote import NAME, vowel_model
from phasegrad_hw.wire.mqtt import (
    LEGACY_BATCH_OPS,
    MAX_BATCH_OPS,
    BrokerConfig,
    max_request_bytes,
)
from tests.e2e.test_mqtt_remote import SpySubstrate
from tests.mosquitto import Mosquitto, broker, local_agent  # noqa: F401  (fixture)

REFUSED_OMEGA = 0.77  # the agent's device refuses this ω (its own limit check)


class Bench(SpySubstrate):
    """Records every hook with its values; refuses ω[0] == REFUSED_OMEGA with a LimitError
    (an agent-side refusal the controller's model cannot foresee, e.g. a calibrated map)."""

    def __init__(self, model: SimulatedDeviceModel, read_delay_s: float = 0.0) -> None:
        super().__init__(model, read_delay_s)
        self.biases: list[list[float]] = []
        self.omegas: list[list[float]] = []

    async def _apply_frequencies(self, omega: Array) -> None:
        if omega[0] == REFUSED_OMEGA:
            raise LimitError(f"omega[0]: {REFUSED_OMEGA} is refused by this device's map")
        self.omegas.append(omega.tolist())
        await super()._apply_frequencies(omega)

    async def _apply_biases(self, values: Array) -> None:
        self.biases.append(values.tolist())
        await super()._apply_biases(values)

    async def _apply_release(self) -> None:
        self.calls.append("release")
        await super()._apply_release()


def refused() -> Array:
    w = np.zeros(9)
    w[0] = REFUSED_OMEGA
    return w


# --------------------------------------------------------------------------- agent, unit
class Session:
    """A session with an agent, transport-free (``Agent.handle``)."""

    def __init__(self, agent: Agent, client: str = "ctl") -> None:
        self.agent, self.client, self.next_id = agent, client, 1
        self.session = ""

    async def send(self, req: dict[str, Any]) -> dict[str, Any]:
        out = await self.agent.handle(json.dumps(req).encode())
        assert out is not None and out[0] == self.client
        return dict(json.loads(out[1]))

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        rid, self.next_id = self.next_id, self.next_id + 1
        head = {"v": 2, "op": op, "id": rid, "reply_to": self.client, "session": self.session}
        return head | fields

    async def open(self) -> Session:
        rep = await self.send({"v": 2, "op": "open", "id": 0, "reply_to": self.client} | WILL)
        assert "batch" in rep["result"]["capabilities"]
        self.session = rep["result"]["session"]
        return self

    async def batch(self, *ops: dict[str, Any]) -> dict[str, Any]:
        return await self.send(self.request("batch", ops=list(ops)))


WILL = {"will": "3" * 32}
W = np.linspace(-0.4, 0.4, 9)


async def test_batch_runs_in_order_and_equals_the_same_calls_in_process() -> None:
    bench = Bench(vowel_model(0.01))
    ses = await Session(Agent(bench, BrokerConfig(host="unused"), NAME)).open()
    rep = await ses.batch(
        {"op": "reseed", "seed": 5},
        {"op": "set_frequencies", "omega": W.tolist()},
        {"op": "read_phases", "averages": 2},
        {"op": "clamp", "target": [-0.2, 0.2], "beta": 0.5, "direction": -1},
        {"op": "read_phases"},
        {"op": "release"},
    )
    assert rep["ok"] and rep["error"] is None
    results = rep["result"]["results"]
    assert results[0] == {"supported": True} and results[1] == results[3] == results[5] == {}
    assert bench.calls == ["frequencies", "read", "clamp", "read", "release"]
    ref = SimulatedSubstrate(vowel_model(0.01))  # the same calls, in the same order, locally
    async with ref:
        ref.reseed(5)
        await ref.set_frequencies(W)
        free = await ref.read_phases(2)
        await ref.clamp([-0.2, 0.2], 0.5, -1)
        nudged = await ref.read_phases()
    assert results[2]["phases"] == free.phases.tolist() and results[2]["averages"] == 2
    assert results[4]["phases"] == nudged.phases.tolist()
    assert not bench.clamped and len(results) == 6


async def test_first_failure_stops_the_batch_and_is_named() -> None:
    bench = Bench(vowel_model(0.0))
    agent = Agent(bench, BrokerConfig(host="unused"), NAME)
    ses = await Session(agent).open()
    rep = await ses.batch(
        {"op": "set_frequencies", "omega": W.tolist()},
        {"op": "clamp", "target": [0.1, 0.1], "beta": 0.5},
        {"op": "set_frequencies", "omega": refused().tolist()},
        {"op": "read_phases"},
    )
    assert not rep["ok"] and rep["error"]["kind"] == "limit"
    assert rep["result"] == {"results": [{}, {}], "failed": 2}
    assert rep["error"]["message"].startswith("operation 2 (set_frequencies) of 4: omega[0]")
    assert bench.calls == ["frequencies", "clamp"]  # nothing after the failure ran
    assert np.allclose(bench.omega, W)
    # the agent's own limits: an out-of-limit value stops the batch likewise
    rep = await ses.batch({"op": "release"}, {"op": "clamp", "target": [0.1, 0.1], "beta": 5.0})
    assert rep["error"]["kind"] == "limit" and rep["result"]["failed"] == 1
    assert "beta" in rep["error"]["message"] and bench.calls[-1] == "release"
    # a batch that does not validate as a whole runs nothing at all
    n = len(bench.calls)
    for ops in (
        [{"op": "release"}, {"op": "set_frequencies", "omega": [True] * 9}],
        [{"op": "release"}, {"op": "hello"}],
        [{"op": "release"}, {"op": "read_phases", "session": ses.session}],
        [{"op": "release"}] * (MAX_BATCH_OPS + 1),
        [],
    ):
        rep = await ses.batch(*ops)
        assert rep["error"]["kind"] == "invalid" and rep["result"] is None, rep
    assert len(bench.calls) == n


async def test_a_batch_is_one_request_for_the_session_rules() -> None:
    bench = Bench(vowel_model(0.0))
    agent = Agent(bench, BrokerConfig(host="unused"), NAME)
    ses = await Session(agent).open()
    req = ses.request(
        "batch", ops=[{"op": "set_frequencies", "omega": W.tolist()}, {"op": "read_phases"}]
    )
    first = await ses.send(req)
    again = await ses.send(req)  # a retry (same id, same request): from the cache
    assert first == again and bench.calls == ["frequencies", "read"]
    other = await ses.send(req | {"ops": [{"op": "release"}]})  # same id, other content
    assert other["error"]["kind"] == "session" and bench.calls == ["frequencies", "read"]
    await ses.batch({"op": "release"})
    stale = await ses.send(req)  # an older id: refused, not re-applied
    assert stale["error"]["kind"] == "session" and "stale" in stale["error"]["message"]
    forged = await ses.send(req | {"id": 99, "session": "e" * 32})
    assert forged["error"]["kind"] == "session"
    assert bench.calls == ["frequencies", "read", "release"]
    assert agent.stats.ops["batch"] == 2 and agent.stats.cached == 1


async def test_request_size_limit_admits_a_full_step_batch() -> None:
    model = vowel_model(0.0)
    bench = Bench(model)
    agent = Agent(bench, BrokerConfig(host="unused"), NAME)
    assert agent.max_payload_bytes == max_request_bytes(9, 24)
    ses = await Session(agent).open()
    big = -1.2345678901234567e-300  # the longest JSON numbers
    ops = [
        {"op": "release"},
        {"op": "set_couplings", "values": [abs(big) + 0.5] * 24},
        {"op": "set_frequencies", "omega": [big] * 9},
        {"op": "clamp", "target": [big] * 2, "beta": 0.5},
        {"op": "read_phases"},
    ]
    raw = json.dumps(ses.request("batch", ops=ops))
    assert len(raw) <= agent.max_payload_bytes
    assert (await ses.send(json.loads(raw)))["ok"]
    long_k = {"op": "set_couplings", "values": [1.2345678901234567] * 24}
    too_big = ses.request("batch", ops=[long_k] * 16)
    assert len(json.dumps(too_big)) > agent.max_payload_bytes
    assert await agent.handle(json.dumps(too_big).encode()) is None  # dropped unparsed


@pytest.mark.parametrize("limit", [LEGACY_BATCH_OPS, MAX_BATCH_OPS])
def test_controller_splits_long_queues_within_the_limits(limit: int) -> None:
    sub = MqttSubstrate(BrokerConfig(host="unused"), NAME, model=vowel_model(0.0))
    sub.max_batch_ops = limit  # (what the agent's open stated)
    ops: list[dict[str, Any]] = [
        {"op": "set_couplings", "values": [1.2345678901234567] * 24, "k": k} for k in range(40)
    ] + [{"op": "release"}] * 100
    chunks = sub._chunks(ops)
    assert [op for c in chunks for op in c] == ops  # in order, nothing lost
    for c in chunks:
        head = {"v": 2, "op": "batch", "id": 2**53 - 1, "reply_to": "x" * 64, "session": "a" * 32}
        assert len(c) <= limit
        assert len(json.dumps(head | {"ops": c})) <= max_request_bytes(9, 24)
    assert len(chunks) >= 5 and sub._chunks([]) == [] and sub._chunks(ops[:1]) == [ops[:1]]
    assert max(map(len, chunks)) == limit  # the releases: as many per batch as allowed


# --------------------------------------------------------------------------- over a broker
def remote(b: Mosquitto, model: SimulatedDeviceModel, **kw: Any) -> MqttSubstrate:
    cfg, _, _ = BrokerConfig.parse(b.uri("controller"))
    return MqttSubstrate(cfg, NAME, model=model, **kw)


async def test_writes_wait_for_the_read_one_round_trip(broker: Mosquitto) -> None:  # noqa: F811
    bench = Bench(vowel_model(0.0))
    async with local_agent(broker, bench) as agent:
        sub = remote(broker, bench.model)
        async with sub:
            n = agent.stats.received
            await sub.set_couplings(np.full(24, 1.5))
            await sub.set_frequencies(W)
            await sub.clamp([0.1, -0.1], 0.4)
            assert agent.stats.received == n and bench.calls == []  # queued, not sent
            r = await sub.read_phases()
            assert agent.stats.received == n + 1  # one request for all of it
            assert bench.calls == ["couplings", "frequencies", "clamp", "read"]
            await sub.release()
            await sub.flush()  # an explicit flush: a write-only batch
            assert agent.stats.received == n + 2 and not bench.clamped
            await sub.flush()  # nothing queued: nothing sent
            assert agent.stats.received == n + 2
    ref = SimulatedSubstrate(bench.model)
    async with ref:
        await ref.set_couplings(np.full(24, 1.5))
        await ref.set_frequencies(W)
        await ref.clamp([0.1, -0.1], 0.4)
        assert np.array_equal(r.phases, (await ref.read_phases()).phases)


class LegacyAgent(Agent):
    """An agent 2.2: batches of at most 16 operations, a ``hello`` that does not say so."""

    def _hello(self) -> dict[str, Any]:
        return {k: v for k, v in super()._hello().items() if k != "max_batch_ops"}


@pytest.mark.parametrize("legacy", [True, False])
async def test_long_queues_and_evaluation_sets_within_the_agents_batch_limit(
    broker: Mosquitto,  # noqa: F811
    legacy: bool,
) -> None:
    """A long queue goes in several batches, in order, each within the agent's stated limit
    (16 operations for an agent that states none); an evaluation set too, with readings equal
    to the same reads in-process."""
    bench = Bench(vowel_model(0.0))
    cfg, _, _ = BrokerConfig.parse(broker.uri("agent"))
    agent = (LegacyAgent if legacy else Agent)(bench, cfg, NAME)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        sub = remote(broker, bench.model)
        async with sub:
            assert sub.max_batch_ops == (LEGACY_BATCH_OPS if legacy else MAX_BATCH_OPS)
            n = agent.stats.received
            for k in range(40):
                await sub.set_biases(np.full(9, 0.01 * k))
            await sub.read_phases()
            assert bench.biases[-40:] == [[0.01 * k] * 9 for k in range(40)]
            # 15 + 15 + (10 + the read) — or all 41 in one batch
            assert agent.stats.received == n + (3 if legacy else 1)
            rows = np.stack([W * (1 - k / 40) for k in range(40)])
            n = agent.stats.received
            remote_reads = await sub.read_phases_at(rows)
            # 2 operations per sample: 8 samples a batch — or as many as the request size
            # admits (here 20 + 20)
            assert agent.stats.received == n + (5 if legacy else 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ref = SimulatedSubstrate(bench.model)
    async with ref:
        local = [await ref.read_phases_at(rows[k : k + 1]) for k in range(40)]
    assert [r.phases.tolist() for r in remote_reads] == [r[0].phases.tolist() for r in local]


async def test_out_of_limit_values_are_refused_before_queuing(broker: Mosquitto) -> None:  # noqa: F811
    bench = Bench(vowel_model(0.0))
    async with local_agent(broker, bench) as agent:
        sub = remote(broker, bench.model)
        async with sub:
            n = agent.stats.received
            bad: list[tuple[Awaitable[Any], str]] = [
                (sub.set_frequencies([0.1] * 8 + [3.5]), r"omega\[8\]: 3.5 is outside"),
                (sub.set_biases([0.0] * 10), "bias"),
                (sub.set_couplings([1.0] * 23 + [9.0]), r"coupling\[23\] .*: 9 is outside"),
                (sub.clamp([0.1, 0.1], 1.5), "beta"),
                (sub.clamp([0.1, 0.1], 0.5, 2), "direction"),
                (sub.read_phases(0), "averages"),
            ]
            for call, match in bad:
                with pytest.raises(LimitError, match=match):
                    await call
            assert sub._queue == [] and agent.stats.received == n  # nothing queued or sent
            await sub.read_phases()
    assert bench.calls == ["read", "release", "biases"]  # the read, then close's make_safe


async def test_agent_side_refusal_of_a_queued_write_is_raised_by_the_next_read(
    broker: Mosquitto,  # noqa: F811
) -> None:
    bench = Bench(vowel_model(0.0))
    async with local_agent(broker, bench):
        sub = remote(broker, bench.model)
        async with sub:
            await sub.set_frequencies(refused())  # passes the controller's check: queued
            with pytest.raises(LimitError, match=r"set_frequencies refused .*operation 0"):
                await sub.read_phases()
            assert bench.calls == []  # the read after it did not run
            await sub.set_frequencies(W)  # the session goes on
            r = await sub.read_phases()
            assert r.phases.shape == (9,) and bench.calls == ["frequencies", "read"]


async def test_make_safe_flushes_and_is_safe_even_after_a_refused_write(
    broker: Mosquitto,  # noqa: F811
) -> None:
    bench = Bench(vowel_model(0.0))
    safe = bench.model.safe_biases().tolist()
    async with local_agent(broker, bench) as agent:
        sub = remote(broker, bench.model)
        async with sub:
            await sub.set_frequencies(W)
            await sub.clamp([0.1, -0.1], 0.4)
            n = agent.stats.received
            await sub.make_safe()  # one batch: the queued writes, then make_safe
            assert agent.stats.received == n + 1
            assert bench.calls == ["frequencies", "clamp", "release", "biases"]
            assert not bench.clamped and bench.biases[-1] == safe
            await sub.clamp([0.1, -0.1], 0.4)
            await sub.set_frequencies(refused())
            with pytest.raises(LimitError, match="set_frequencies refused"):
                await sub.make_safe()  # the refused write stopped the batch ...
            assert not bench.clamped and bench.biases[-1] == safe  # ... make_safe still ran
            assert bench.calls[-3:] == ["clamp", "release", "biases"]
        # close() of a substrate with writes queued sends them before making safe
        sub = remote(broker, bench.model)
        async with sub:
            await sub.set_frequencies(-W)
            await sub.clamp([0.1, -0.1], 0.4)
        assert bench.omegas[-1] == (-W).tolist() and not bench.clamped
        assert bench.calls[-4:] == ["frequencies", "clamp", "release", "biases"]


async def test_agent_restarted_mid_batch_fails_clearly(broker: Mosquitto) -> None:  # noqa: F811
    bench = Bench(vowel_model(0.0), read_delay_s=0.8)
    after = Bench(vowel_model(0.0))
    cfg, _, _ = BrokerConfig.parse(broker.uri("agent"))
    first = Agent(bench, cfg, NAME)
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(first.ready.wait(), 10)
    sub = remote(broker, bench.model, retry_s=0.3, timeout_s=20.0)
    try:
        async with sub:
            await sub.set_frequencies(W)
            await sub.clamp([0.1, -0.1], 0.4)
            read = asyncio.create_task(sub.read_phases())
            while "read" not in bench.calls:  # the agent is inside the batch ...
                await asyncio.sleep(0.01)
            task.cancel()  # ... when it dies (its reply is never sent)
            await asyncio.gather(task, return_exceptions=True)
            async with local_agent(broker, after):  # and another one starts
                with pytest.raises(AgentRestartedError, match="restarted during .*read_phases"):
                    await read
                with pytest.raises(AgentRestartedError):  # every later call fails too
                    await sub.set_frequencies(W)
    finally:
        task.cancel()
    assert after.calls == [] and after.biases == []  # nothing reached the new agent's device
