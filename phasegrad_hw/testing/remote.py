"""Remote training over MQTT for tests and benchmarks: the device, the data and the two ways
to train them, and the agent-SIGKILL experiment (issue #14).

* :data:`NAME` — the device's ``BENCH/DEVICE`` name on the broker;
* :func:`vowel_model` — the 2+5+2 vowel topology (docs/design.md §2) with the published K
  draws and seeded readout noise, as a simulated device;
* :data:`DATA` — synthetic /a/ vs /i/ formants, 12 per class;
* :func:`train` / :func:`in_process` — train a substrate (or the device file in this
  process) with the default EP settings, seed 0;
* :func:`sigkill_run` — train through a ``phasegrad-hw agent`` process that is SIGKILLed and
  restarted at a chosen step, and classify the outcome.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phasegrad_hw.backends.simulated import SimulatedDeviceModel
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.learning.controller import EPConfig, Parameters, StepReport
from phasegrad_hw.learning.loop import LoopObserver, LoopOptions, train_on_substrates
from phasegrad_hw.learning.tasks import Encoding, synthetic_vowels
from phasegrad_hw.testing.mosquitto import Mosquitto, agent_process
from phasegrad_hw.testing.networks import model_2_5_2

__all__ = ["DATA", "NAME", "in_process", "sigkill_run", "train", "vowel_model"]

NAME = "lab/chip"


def vowel_model(noise_rad: float = 0.01) -> SimulatedDeviceModel:
    """The 2+5+2 vowel network of :func:`~phasegrad_hw.testing.networks.model_2_5_2` (seed 0)
    named ``vowel-2-5-2``, with readout noise ``noise_rad`` (rad rms)."""
    return model_2_5_2(0, name="vowel-2-5-2", readout_noise_rad=noise_rad)


DATA = synthetic_vowels(("a", "i"), n_per_class=12, seed=0)


async def train(sub: Any, epochs: int, observers: Sequence[LoopObserver] = ()) -> Parameters:
    """Train ``sub`` on :data:`DATA` for ``epochs`` (default EP settings, seed 0); the final
    parameters."""
    res = await train_on_substrates(
        [sub], DATA, Encoding(), EPConfig(), LoopOptions(epochs=epochs, seed=0), observers
    )
    assert len(res.state.history) == epochs
    return res.state.params


def in_process(device: Path, epochs: int) -> Parameters:
    """:func:`train` on the device file opened in this process (the reference of a remote
    run)."""

    async def go() -> Parameters:
        async with open_substrate(device) as s:
            return await train(s, epochs)

    return asyncio.run(go())


def sigkill_run(
    b: Mosquitto,
    device_file: Path,
    epochs: int,
    reference: Parameters,
    kill_step: int | None,
    delay_s: float,
) -> dict[str, Any]:
    """Train remotely; ``delay_s`` s after step ``kill_step`` SIGKILL the agent and start
    another. Outcome ``identical`` (bit-identical to ``reference``), ``clear error`` (the
    run stopped with :class:`~phasegrad_hw.backends.mqtt.AgentRestartedError` saying no update
    was made), ``DIFFERENT`` (finished with other parameters) or ``unclear error`` (stopped
    with anything else)."""
    from phasegrad_hw.backends.mqtt import AgentRestartedError, MqttSubstrate
    from phasegrad_hw.wire.mqtt import BrokerConfig

    done = threading.Event()
    killed: list[float] = []
    with agent_process(b.uri("agent"), device_file, NAME) as first:
        sub = MqttSubstrate(
            BrokerConfig.parse(b.uri("controller"))[0],
            NAME,
            model=vowel_model(),
            timeout_s=30.0,
            retry_s=0.3,
        )

        def restart() -> None:
            time.sleep(delay_s)
            first.p.send_signal(signal.SIGKILL)
            killed.append(time.monotonic())
            first.p.wait(5)
            with agent_process(b.uri("agent"), device_file, NAME):
                done.wait(60)

        killer = threading.Thread(target=restart, daemon=True)
        steps = [0]

        class Killer(LoopObserver):
            def on_step(self, report: StepReport) -> None:
                steps[0] += 1
                if steps[0] == kill_step:
                    killer.start()

        async def go() -> Parameters:
            async with sub:
                return await train(sub, epochs, [Killer()])

        out: dict[str, Any] = {"kill_step": kill_step, "delay_s": delay_s, "detail": ""}
        try:
            params = asyncio.run(go())
            same = np.array_equal(params.omega, reference.omega) and np.array_equal(
                params.coupling, reference.coupling
            )
            out["outcome"] = "identical" if same else "DIFFERENT"
        except AgentRestartedError as exc:
            clear = "restarted" in str(exc) and "no update" in str(exc)
            out["outcome"] = "clear error" if clear else "unclear error"
            out["detail"] = str(exc)
        except Exception as exc:
            out["outcome"], out["detail"] = "unclear error", f"{type(exc).__name__}: {exc}"
        finally:
            done.set()
            if killer.is_alive():
                killer.join(30)
        out["killed"] = bool(killed)
        out["steps_done"] = steps[0]
        return out
