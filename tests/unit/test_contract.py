"""The substrate contract suite (:func:`phasegrad_hw.testing.contract.check_substrate_contract`)
over all seven backends: the in-process emulators (simulated, cmos, optical), the controller
board driver against the board firmware over a pty and over TCP (serial), the SCPI bench
driver against the emulated instruments over TCP with pyvisa-py (visa), the NI-DAQmx driver
against the nidaqmx stand-in (daqmx), and a remote device through a real mosquitto and an
agent (mqtt)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.device.registry import BACKENDS, open_substrate
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.testing.contract import ContractReport, check_substrate_contract
from phasegrad_hw.testing.networks import model_2_5_2
from tests.conftest import REPO

DEVICES = REPO / "examples" / "devices"
EMULATED = frozenset(Capability)  # the emulators declare every optional ability


def chip(noise: float = 0.0) -> SimulatedSubstrate:
    """The emulated 2+5+2 chip behind the driver backends (seeded readout noise)."""
    return SimulatedSubstrate(model_2_5_2(3, readout_noise_rad=noise), seed=5)


def assert_complete(report: ContractReport, caps: frozenset[Capability]) -> None:
    assert report.passed == [
        "read_phases",
        "clamp",
        "limits",
        "frequency_map",
        "abilities",
        "safe_exit",
        "cancelled",
        "timeout",
    ]
    assert report.capabilities == caps


# --------------------------------------------------------------------------- in-process
async def test_simulated() -> None:
    report = await check_substrate_contract(lambda: chip(0.005))
    assert_complete(report, EMULATED)


@pytest.mark.parametrize("name", ["cmos-2-5-2.toml", "optical-2-5-2.toml"])
async def test_emulated_chips(name: str) -> None:
    report = await check_substrate_contract(lambda: open_substrate(DEVICES / name, seed=2))
    assert_complete(report, EMULATED)
