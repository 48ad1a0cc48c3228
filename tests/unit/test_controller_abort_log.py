"""The controller's warning when a device error interrupts its work names what was
interrupted — an EP step or an evaluation — and the substrates are left safe either way."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.errors import DeviceTimeoutError
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.testing.doubles import FaultySubstrate, ScriptedSubstrate
from phasegrad_hw.testing.networks import model_2_5_2

LOGGER = "phasegrad_hw.learning.controller"


def _controller() -> tuple[EPController, list[ScriptedSubstrate]]:
    m = model_2_5_2()
    subs: list[ScriptedSubstrate] = [
        FaultySubstrate(SimulatedSubstrate(m), on_read=2),
        ScriptedSubstrate(SimulatedSubstrate(m)),
    ]
    return EPController(subs, EPConfig(), Parameters(np.zeros(m.n), m.coupling_values())), subs


def _aborted(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "aborted" in r.message]


async def test_an_error_during_evaluation_says_evaluation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctl, subs = _controller()
    caplog.set_level(logging.WARNING, LOGGER)
    with pytest.raises(DeviceTimeoutError):  # substrate 0's second read: samples 0, 2 on it
        await ctl.infer_many(np.zeros((4, 2)))
    (msg,) = _aborted(caplog)
    assert msg.startswith("evaluation aborted (DeviceTimeoutError: "), msg
    assert all(s.is_safe for s in subs)


async def test_an_error_during_a_step_says_step(caplog: pytest.LogCaptureFixture) -> None:
    ctl, subs = _controller()
    caplog.set_level(logging.WARNING, LOGGER)
    target = np.array([-0.2, 0.2])
    with pytest.raises(DeviceTimeoutError):  # the nudged read of substrate 0's sample
        await ctl.step([Sample(np.array([0.1, -0.1]), target) for _ in range(2)])
    (msg,) = _aborted(caplog)
    assert msg.startswith("step aborted (DeviceTimeoutError: "), msg
    assert all(s.is_safe for s in subs)
