"""The MQTT client's short path (phasegrad_hw.wire.mqtt_client) on a real mosquitto: what it
relies on in aiomqtt/paho stays true — a QoS 0 publish on the loop's thread is in the socket
when ``publish`` returns (no writer left registered, no wait), messages reach ``intercept`` as
they are decoded and the rest ``receive()`` in order, a lost connection ends ``receive()`` —
and the controller's request encoding keeps its size bound."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import sys

import aiomqtt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phasegrad_hw.backends.mqtt import _encode, _size_bound
from phasegrad_hw.wire.mqtt import BrokerConfig
from phasegrad_hw.wire.mqtt_client import Client
from tests.mosquitto import Mosquitto, broker  # noqa: F401  (fixture)


async def test_direct_writes_intercept_and_receive(broker: Mosquitto) -> None:  # noqa: F811
    ctl, _, _ = BrokerConfig.parse(broker.uri("controller"))
    agent, _, _ = BrokerConfig.parse(broker.uri("agent"))
    replies, status = "phasegrad/lab/chip/rpc/rep/ctl", "phasegrad/lab/chip/agent"
    taken: list[tuple[str, bytes, bool]] = []

    def intercept(topic: str, payload: bytes, retain: bool) -> bool:
        if topic == replies:
            taken.append((topic, payload, retain))
            return True
        return False

    async with ctl.client("ctl", intercept=intercept) as a, agent.client("agt") as b:
        assert isinstance(a, Client) and isinstance(b, Client)
        await a.subscribe(replies, qos=0)
        await a.subscribe(status, qos=0)
        writes = b.direct_writes
        for i in range(20):  # the broker delivers in order on one connection
            await b.publish(status if i % 2 else replies, str(i).encode(), qos=0)
            assert not b._client.want_write()  # in the socket: nothing left for a writer
        assert b.direct_writes == writes + 20
        got = [await asyncio.wait_for(a.receive(), 5) for _ in range(10)]
        assert [m.payload for m in got] == [str(i).encode() for i in range(1, 20, 2)]
        assert {m.topic.value for m in got} == {status}
        # every reply went to intercept, in order, as it arrived (before the status behind it)
        assert taken == [(replies, str(i).encode(), False) for i in range(0, 20, 2)]
        waiting = asyncio.create_task(a.receive())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        broker.kill()  # the connection is lost while receive() waits
        with pytest.raises(aiomqtt.MqttError):
            await asyncio.wait_for(waiting, 10)


def test_a_broken_connection_closes_cleanly(
    broker: Mosquitto,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection broken by an exception (here a failing socket write) is closed by the
    exit while its event loop still runs: nothing is left for paho's ``__del__`` to close on a
    closed loop (an "unraisable exception" warning), and the broken connection's exception
    does not end up "never retrieved"."""
    agent, _, _ = BrokerConfig.parse(broker.uri("agent"))
    unraisable = _unraisable(monkeypatch)
    kept: list[Client] = []

    def failing_write() -> None:
        raise OSError("injected socket write failure")

    async def run() -> None:
        async with agent.client("agt") as b:
            assert isinstance(b, Client)
            kept.append(b)
            monkeypatch.setattr(b._client, "loop_write", failing_write)
            with pytest.raises(aiomqtt.MqttError):
                await b.publish("phasegrad/lab/chip/agent", b"1", qos=0, timeout=0.5)
            assert b._disconnected.done()
        assert b._client.socket() is None  # closed by the exit, on this loop

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
        kept.clear()
        gc.collect()
    assert unraisable == []
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def _unraisable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Unraisable exceptions from here on (what earlier tests left for the collector is
    collected first, so only this test's objects are counted)."""
    gc.collect()
    caught: list[str] = []
    monkeypatch.setattr(
        sys, "unraisablehook", lambda u: caught.append(f"{u.exc_type}: {u.exc_value}")
    )
    return caught


@pytest.mark.parametrize("how", ["connect timeout", "cancelled"])
def test_a_connection_that_never_completes_is_closed(
    how: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that accepts the TCP connection but never answers the CONNECT: the client's
    entry fails (its timeout) or is cancelled (an outer timeout, a stopping agent) with the
    socket open. The failed entry closes that socket while the loop runs — the server sees the
    connection end before the loop closes — and leaves no task behind and nothing for paho's
    ``__del__`` to close on a closed loop."""
    unraisable = _unraisable(monkeypatch)
    ended: list[bool] = []

    async def run() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)  # the CONNECT packet; no CONNACK is ever sent
            ended.append(await reader.read(1 << 16) == b"")
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg, _, _ = BrokerConfig.parse(f"mqtt://127.0.0.1:{port}/lab/chip")
        async with server:
            c = cfg.client("ctl", timeout_s=0.3 if how == "connect timeout" else 10.0)
            if how == "connect timeout":
                with pytest.raises(aiomqtt.MqttError, match="timed out"):
                    await c.__aenter__()
            else:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(c.__aenter__(), 0.3)
            assert c._client.socket() is None
            for _ in range(100):
                if ended:
                    break
                await asyncio.sleep(0.01)
        assert ended == [True]

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
        gc.collect()
    assert unraisable == []
    assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]


async def test_entering_a_client_in_use_leaves_its_connection_alone(
    broker: Mosquitto,  # noqa: F811
) -> None:
    """A second entry of a connected client is refused (aiomqtt's reentrancy error) without
    the failed-entry cleanup touching the connection in use: it still publishes and receives."""
    cfg, _, _ = BrokerConfig.parse(broker.uri("agent"))
    topic = "phasegrad/lab/chip/agent"
    async with cfg.client("agt") as c:
        await c.subscribe(topic, qos=0)
        with pytest.raises(aiomqtt.MqttReentrantError):
            await c.__aenter__()
        assert c._client.socket() is not None
        await c.publish(topic, b"still here", qos=0)
        m = await asyncio.wait_for(c.receive(), 5)
        assert m.payload == b"still here"


FLOATS = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(lambda v: {"op": "set_frequencies", "omega": v}, st.lists(FLOATS)),
            st.builds(lambda v: {"op": "set_couplings", "values": v}, st.lists(FLOATS)),
            st.builds(
                lambda t, b, d: {"op": "clamp", "target": t, "beta": b, "direction": d},
                st.lists(FLOATS),
                FLOATS,
                st.sampled_from([-1, 1]),
            ),
            st.builds(lambda a: {"op": "read_phases", "averages": a}, st.integers(1, 2**53 - 1)),
            st.builds(lambda s: {"op": "reseed", "seed": s}, st.integers(0, 2**53 - 1)),
            st.just({"op": "read_frequencies"}),
            st.just({"op": "release"}),
        ),
        min_size=1,
        max_size=16,
    )
)
def test_size_bound_covers_the_encoding(ops: list[dict[str, object]]) -> None:
    """The bound that lets a step batch skip the per-operation sizing is never below what
    the operation takes in the batch (its compact JSON and a comma), and the compact JSON
    round-trips every float exactly."""
    for op in ops:
        text = _encode(op)
        assert _size_bound(op) >= len(text) + 1
        assert json.loads(text) == op
    worst = [-2.2250738585072014e-308, -1.7976931348623157e308, -math.pi * 1e-300]
    assert _size_bound({"op": "set_frequencies", "omega": worst}) >= len(
        _encode({"op": "set_frequencies", "omega": worst})
    )
    assert np.array_equal(json.loads(_encode({"v": worst}))["v"], worst)
