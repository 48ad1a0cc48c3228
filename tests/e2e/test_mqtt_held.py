"""Held inputs and an external drive over MQTT (set_held_phases / set_drive), the restart path
that sets them again, and the reply check (a reply must echo the request's session and id)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.mqtt import AgentRestartedError, MqttSubstrate
from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.device.substrate import Capability, PhaseReading
from phasegrad_hw.errors import DeviceError, LimitError, ProtocolError
from phasegrad_hw.fleet.agent import Agent
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.testing.remote import NAME, vowel_model
from phasegrad_hw.wire.mqtt import BrokerConfig
from tests.e2e.test_mqtt_remote import SpySubstrate
from tests.mosquitto import Mosquitto, broker, local_agent, password  # noqa: F401  (fixture)
from tests.protocol.test_agent_fuzz import HeldSpy, held_model

pytest.importorskip("aiomqtt")


def remote(b: Mosquitto, model: SimulatedDeviceModel, **kw: Any) -> MqttSubstrate:
    cfg, _, _ = BrokerConfig.parse(b.uri("controller"))
    return MqttSubstrate(cfg, NAME, model=model, **kw)


async def test_held_phases_and_drive_reach_the_device(broker: Mosquitto) -> None:  # noqa: F811
    spy = HeldSpy(held_model())
    async with local_agent(broker, spy, NAME) as agent:
        sub = remote(broker, spy.model)
        async with sub:
            assert {Capability.HELD_PHASES, Capability.DRIVE} <= sub.capabilities
            await sub.set_held_phases([4.0])  # wrapped to [−π, π) by the model
            await sub.set_drive([1.5], 0.3)
            assert spy.held_log == [] and spy.drive_log == []  # queued, not sent
            n = agent.stats.received
            await sub.read_phases()
            assert agent.stats.received == n + 1  # one batch with the read
            assert spy.held_log == [spy.model.check_held_phases([4.0]).tolist()]
            assert np.isclose(spy.held_log[0][0], 4.0 - 2 * np.pi)
            assert spy.drive_log == [([1.5], 0.3)]
            # refused here, before anything is sent: wrong length, NaN, past drive_max
            for bad in ([0.1, 0.2], [float("nan")]):
                with pytest.raises(LimitError, match="held_phases"):
                    await sub.set_held_phases(bad)
            with pytest.raises(LimitError, match="drive_amplitude"):
                await sub.set_drive([2 * spy.model.limits.drive_max], 0.0)
            await sub.read_phases()
            assert agent.stats.received == n + 2
            assert len(spy.held_log) == 1 and len(spy.drive_log) == 1
            await sub.make_safe()  # switches the drive off (the agent's make_safe)
            assert spy.drive_log[-1] == ([0.0], 0.0)


async def test_agent_checks_held_and_drive_before_the_device(broker: Mosquitto) -> None:  # noqa: F811
    """Requests that bypass the controller's checks: the agent refuses them with a short
    excerpt and its device sees nothing; a device without the ability refuses the op."""
    spy = HeldSpy(held_model())
    async with local_agent(broker, spy, NAME):
        sub = remote(broker, spy.model)
        async with sub:
            big = [0.5] * 5000
            cases = [
                ({"op": "set_held_phases", "phases": [0.1, 0.2]}, "limit", "held_phases"),
                ({"op": "set_drive", "amplitude": [99.0], "phase": 0.0}, "limit", "drive"),
                ({"op": "set_drive", "amplitude": [-1.0], "phase": 0.0}, "limit", "drive"),
                ({"op": "set_held_phases", "phases": big[:100]}, "limit", "held_phases"),
            ]
            for op, kind, word in cases:
                rep = await sub._exchange("batch", {"ops": [op]}, "test")
                assert not rep.ok and rep.error is not None
                assert rep.error.kind == kind and word in rep.error.message
                assert "0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5" not in rep.error.message
            for op in (
                {"op": "set_held_phases", "phases": ["0.1"]},
                {"op": "set_drive", "amplitude": [True], "phase": 0.0},
                {"op": "set_drive", "amplitude": [1.0], "phase": None},
            ):
                rep = await sub._exchange("batch", {"ops": [op]}, "test")
                assert not rep.ok and rep.error is not None and rep.error.kind == "invalid"
        assert spy.held_log == [] and all(a == [0.0] for a, _ in spy.drive_log)  # make_safe only
    plain = SimulatedSubstrate(vowel_model(0.0))
    async with local_agent(broker, plain, NAME):
        sub = remote(broker, plain.model)
        async with sub:
            assert Capability.HELD_PHASES not in sub.capabilities
            assert Capability.DRIVE not in sub.capabilities
            with pytest.raises(DeviceError, match="no held inputs"):
                await sub.set_held_phases([0.1])
            rep = await sub._exchange(
                "batch", {"ops": [{"op": "set_drive", "amplitude": [], "phase": 0.0}]}, "test"
            )
            assert not rep.ok and rep.error is not None and rep.error.kind == "invalid"
            assert "cannot apply a drive" in rep.error.message
            with pytest.raises(DeviceError, match="cannot be reseeded"):
                MqttSubstrate.reseed(_without_reseed(sub), 1)


def _without_reseed(sub: MqttSubstrate) -> MqttSubstrate:
    sub._remote_reseed = False
    sub.capabilities = sub.capabilities - {Capability.RESEED}
    return sub


async def test_restart_then_reconnect_sets_held_phases_and_drive_again(
    broker: Mosquitto,  # noqa: F811
) -> None:
    first, second = HeldSpy(held_model()), HeldSpy(held_model())
    sub = remote(broker, first.model)
    async with local_agent(broker, first, NAME):
        await sub.connect()
        await sub.set_held_phases([0.7])
        await sub.set_drive([1.0], -0.4)
        await sub.read_phases()
    async with local_agent(broker, second, NAME):  # another agent process: a new boot id
        with pytest.raises(AgentRestartedError, match="held phases, drive"):
            await sub.read_phases()
        assert second.held_log == [] and second.drive_log == []  # nothing from the old state
        await sub.close()
        async with sub:  # a new session: held phases and drive go again, first
            await sub.read_phases()
            assert second.held_log == first.held_log and second.drive_log == [([1.0], -0.4)]
            await sub.set_drive([0.0], 0.0)  # off: not restored later
            await sub.flush()
    assert sub._drive is None and sub._held is not None


async def test_forged_replies_are_not_taken(broker: Mosquitto) -> None:  # noqa: F811
    """A client that may write the controller's reply topic (here with the agent's
    credentials) answers first, with the right id but no or another session, and with the
    right session but another id: neither is taken; the agent's genuine reply is."""
    import aiomqtt

    sub = remote(broker, vowel_model(0.0), timeout_s=10.0, retry_s=5.0)
    spy = SpySubstrate(vowel_model(0.0), read_delay_s=0.5)  # the forger answers first
    async with local_agent(broker, spy, NAME):
        async with sub:
            assert sub.session is not None and sub.boot is not None
            forger = aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                username="agent",
                password=password("agent"),
                identifier="forger",
            )
            async with forger:
                await forger.subscribe(sub.topics.request)
                reading = asyncio.create_task(sub.read_phases())
                msg = await asyncio.wait_for(anext(aiter(forger.messages)), 10)
                req = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                fake = {"phases": [9.0] * 9, "spread": [0.0] * 9, "locked": True}
                fake |= {"timestamp": 0.0, "averages": 1, "settle_s": 0.0}
                base = {"v": 2, "ok": True, "boot": sub.boot, "took_s": 0.0}
                result = {"results": [fake]}
                forged = [
                    {**base, "id": req["id"], "session": None, "result": result},
                    {**base, "id": req["id"], "session": "f" * 32, "result": result},
                    {**base, "id": req["id"] + 1, "session": sub.session, "result": result},
                ]
                for f in forged:
                    await forger.publish(sub.topics.reply(sub.client_id), json.dumps(f))
                r = await asyncio.wait_for(reading, 10)
            assert not np.any(r.phases == 9.0)
            assert sub.foreign_replies >= 2 and sub.late_replies >= 1


class Unlocked(SpySubstrate):
    """Reports every reading as unlocked."""

    async def _read(self, averages: int) -> PhaseReading:
        r = await super()._read(averages)
        return dataclasses.replace(r, locked=False)


async def test_a_step_is_one_round_trip_and_never_nudges_an_unlocked_network(
    broker: Mosquitto,  # noqa: F811
) -> None:
    """With fixed targets the controller sends a whole EP step as one batch; the agent ends
    it at an unlocked free read (no clamp reaches the device), and the step skips the
    sample, exactly as in-process."""
    locked, unlocked = SpySubstrate(vowel_model(0.0)), Unlocked(vowel_model(0.0))
    x, tgt = np.array([0.3, -0.2]), np.array([-0.2, 0.2])
    for spy in (locked, unlocked):
        async with local_agent(broker, spy, NAME) as agent:
            sub = remote(broker, spy.model)
            async with sub:
                m = sub.model
                ctl = EPController(
                    [sub], EPConfig(), Parameters(np.zeros(m.n), m.coupling_values())
                )
                n = agent.stats.received
                rep = await ctl.step([Sample(x, tgt)])
                assert agent.stats.received == n + 1  # one round trip for the step
                assert "clamp" in spy.calls or spy is unlocked
                assert ("clamp" not in spy.calls) == (spy is unlocked)
                assert rep.skipped_unlocked == (1 if spy is unlocked else 0)
    # the step's operations in the order of the one-call-at-a-time path (SpySubstrate does not
    # record release); then close: make_safe's safe biases
    step = ["couplings", "frequencies", "read", "clamp", "read"]
    assert locked.calls == [*step, "biases"]
    assert unlocked.calls == [*step[:3], "biases"]


async def test_an_agent_without_stop_if_unlocked_is_refused(broker: Mosquitto) -> None:  # noqa: F811
    class OldAgent(Agent):
        def _hello(self) -> dict[str, Any]:
            out = super()._hello()
            out["capabilities"] = [c for c in out["capabilities"] if c != "stop_if_unlocked"]
            return out

    spy = SimulatedSubstrate(vowel_model(0.0))
    cfg, _, _ = BrokerConfig.parse(broker.uri("agent"))
    agent = OldAgent(spy, cfg, NAME)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        sub = remote(broker, spy.model)
        with pytest.raises(ProtocolError, match="phasegrad-hw-agent/2.2"):
            await sub.connect()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
