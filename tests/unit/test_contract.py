"""The substrate contract suite (:func:`phasegrad_hw.testing.contract.check_substrate_contract`)
over all seven backends: the in-process emulators (simulated, cmos, optical), the controller
board driver against the board firmware over a pty and over TCP (serial), the SCPI bench
driver against the emulated instruments over TCP with pyvisa-py (visa), the NI-DAQmx driver
against the nidaqmx stand-in (daqmx), and a remote device through a real mosquitto and an
agent (mqtt)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import importlib.util
import os
import re
from collections.abc import Iterator

import numpy as np
import pytest
from numpy.typing import ArrayLike

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.device.registry import open_model, open_substrate
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.testing.contract import ContractReport, check_substrate_contract
from phasegrad_hw.testing.networks import model_2_5_2, model_driven_small, model_layered_small
from tests.conftest import REPO, require
from tests.mosquitto import Mosquitto, broker  # noqa: F401  (fixture)

DEVICES = REPO / "examples" / "devices"
# the emulators declare every optional ability their device has (the 2+5+2 chips have no held
# inputs and no drive)
EMULATED = frozenset(Capability) - {Capability.HELD_PHASES, Capability.DRIVE}


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


@pytest.mark.parametrize("backend", ["simulated", "cmos", "optical"])
async def test_emulators_with_held_inputs(backend: str) -> None:
    """Held inputs, bias oscillators, signed couplings: the emulators declare held_phases
    (and no drive) and pass the whole suite, its held-phase check included."""
    m = model_layered_small(backend)
    report = await check_substrate_contract(lambda: open_model(m, seed=2))
    assert_complete(report, EMULATED | {Capability.HELD_PHASES})


@pytest.mark.parametrize("backend", ["simulated", "cmos", "optical"])
async def test_emulators_with_a_drive(backend: str) -> None:
    m = model_driven_small(backend)
    report = await check_substrate_contract(lambda: open_model(m, seed=2))
    assert_complete(report, EMULATED | {Capability.DRIVE})


# --------------------------------------------------------------------------- drivers
@pytest.fixture(params=["pty", "tcp"])
def board(request: pytest.FixtureRequest) -> Iterator[tuple[SimulatedSubstrate, str]]:
    from phasegrad_hw.firmware_models.board import BoardFirmware
    from phasegrad_hw.firmware_models.server import LineServer

    behind = chip(0.005)
    server = LineServer(BoardFirmware(behind))
    if request.param == "pty":
        require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
        uri = f"serial://{server.start_pty()}"
    else:
        host, port = server.start_tcp()
        uri = f"serial://{host}:{port}"
    try:
        yield behind, uri
    finally:
        server.stop()


async def test_serial_board(board: tuple[SimulatedSubstrate, str]) -> None:
    behind, uri = board
    report = await check_substrate_contract(lambda: open_substrate(uri), observer=behind)
    assert_complete(report, EMULATED - {Capability.EXACT_GRADIENT})


async def test_visa_bench() -> None:
    """Without an observer: the bench is reconnected to read what it left behind (its
    connect resets the instruments, so tests/e2e/test_visa_e2e.py also checks the
    instruments' own state after every exit)."""
    require(importlib.util.find_spec("pyvisa_py") is not None, "pyvisa-py")
    from phasegrad_hw.backends.visa import VisaBench
    from phasegrad_hw.backends.visa_config import bench_for_chip
    from phasegrad_hw.firmware_models.instruments import BenchEmulator

    resources = {k: "TCPIP::127.0.0.1::1::SOCKET" for k in ("smu", "phase_meter", "injection")}
    behind = chip(0.005)
    emu = BenchEmulator(bench_for_chip(behind.model, resources), chip=behind)
    with emu.running():
        report = await check_substrate_contract(lambda: VisaBench(emu.bench_config()))
    assert_complete(report, frozenset({Capability.RESEED}))  # the emulated chip's noise


async def test_daqmx_stand_in() -> None:
    from phasegrad_hw.backends.daqmx import DaqmxBench, daqmx_bench_for_chip
    from phasegrad_hw.testing.daqmx import FakeSystem, fake_nidaqmx

    behind = chip(0.005)
    bench = daqmx_bench_for_chip(behind.model)
    system = FakeSystem(behind, bench.measured_frequency_hz, bench.injection_v_per_beta)
    try:
        report = await check_substrate_contract(
            lambda: DaqmxBench(bench, daqmx=fake_nidaqmx(system)), observer=behind
        )
    finally:
        system.close()
    assert_complete(report, frozenset())


async def test_mqtt_remote(broker: Mosquitto) -> None:  # noqa: F811
    """Through a real mosquitto to an agent serving the emulated chip (same event loop)."""
    from phasegrad_hw.backends.mqtt import MqttSubstrate
    from phasegrad_hw.fleet.agent import Agent
    from phasegrad_hw.wire.mqtt import BrokerConfig

    behind = chip(0.005)
    agent_cfg, _, _ = BrokerConfig.parse(broker.uri("agent"))
    agent = Agent(behind, agent_cfg, "lab/chip")
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.ready.wait(), 10)
    cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))

    try:
        report = await check_substrate_contract(
            lambda: MqttSubstrate(cfg, "lab/chip", model=behind.model, timeout_s=10.0),
            observer=behind,
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert_complete(
        report, frozenset({Capability.COUPLINGS, Capability.FREQUENCY_COUNTER, Capability.RESEED})
    )


# --------------------------------------------------------------------------- broken backends
# The suite must fail on a backend that breaks a rule (each one below breaks exactly one).
class _NoSafeClose(SimulatedSubstrate):
    async def make_safe(self) -> None:  # forgets the biases and the clamp
        return None


class _Clipping(SimulatedSubstrate):
    async def set_biases(self, values: ArrayLike) -> None:  # clips instead of refusing
        lim = self.model.limits.bias
        await self._apply_biases(np.clip(np.asarray(values, dtype=np.float64), lim.min, lim.max))


class _SilentReseed(SimulatedSubstrate):
    capabilities = frozenset({Capability.COUPLINGS, Capability.FREQUENCY_COUNTER})

    def reseed(self, seed: int) -> None:  # not declared, yet does not refuse
        return None


class _SwallowsCancel(SimulatedSubstrate):
    swallowed = False

    async def _read(self, averages: int) -> PhaseReading:
        try:
            await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            if self.swallowed:  # (only once, so the test can end the session)
                raise
            self.swallowed = True  # runs on
        return await super()._read(averages)


class _IgnoresMap(SimulatedSubstrate):
    async def set_frequencies(self, omega: ArrayLike) -> None:  # bypasses frequency_map
        await self._apply_frequencies(self.model.check_frequencies(omega))


@pytest.mark.parametrize(
    "cls, rule",
    [
        (_NoSafeClose, "safe_exit"),
        (_Clipping, "limits: bias"),
        (_SilentReseed, "abilities: expected DeviceError"),
        (_SwallowsCancel, "cancelled: the cancelled session still runs"),
        (_IgnoresMap, "frequency_map"),
    ],
)
async def test_the_suite_catches_a_broken_backend(
    cls: type[SimulatedSubstrate], rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phasegrad_hw.device.frequency_map import IDENTITY
    from phasegrad_hw.testing import contract

    monkeypatch.setattr(contract, "_CANCEL_BOUND_S", 1.0)

    def make() -> SimulatedSubstrate:
        sub = cls(model_2_5_2(3))
        if cls is _IgnoresMap:
            sub.frequency_map = IDENTITY  # biases in model units are the frequencies
        return sub

    with pytest.raises(AssertionError, match=f"substrate contract, {rule}"):
        await check_substrate_contract(make)


# --------------------------------------------------------------------------- no probing
# Abilities are declared (``capabilities``), never probed: no getattr/hasattr on a substrate
# or chip anywhere in the library. A call is flagged when its object is named like a
# substrate, is ``self`` inside a substrate class, or its attribute is a substrate member.
LIBRARY = [REPO / d for d in ("phasegrad_hw", "backends", "calibration", "firmware_models")]
SUBSTRATE_NAME = re.compile(
    r"^_?(sub|subs|substrate|substrates|chip|chips|device|devices|inner|twin|remote|bench)$"
)
SUBSTRATE_MEMBERS = {
    n for n in dir(OscillatorSubstrate) if not n.startswith("__") and n != "model"
} | {c.value for c in Capability}
# getattr/hasattr calls that are not ability probing, with the reason (path, call text)
ALLOWED: dict[tuple[str, str], str] = {}


def _substrate_classes() -> set[str]:
    for root in LIBRARY:
        for path in root.rglob("*.py"):
            if path.name == "__main__.py":  # (runs the CLI)
                continue
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts if rel.parts[0] == "phasegrad_hw" else ("phasegrad_hw", *rel.parts)
            name = ".".join(p for p in parts if p != "__init__")
            importlib.import_module(name)
    found: set[str] = set()
    todo: list[type] = [OscillatorSubstrate]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found


def probes(source: str, substrate_classes: set[str]) -> list[str]:
    """The getattr/hasattr calls in ``source`` that look at a substrate (unparsed)."""
    hits: list[str] = []

    def visit(node: ast.AST, in_substrate: bool) -> None:
        if isinstance(node, ast.ClassDef):
            bases = {b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in node.bases}
            in_substrate = bool(bases & substrate_classes) or node.name in substrate_classes
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2
        ):
            obj, attr = node.args[0], node.args[1]
            last = ast.unparse(obj).rsplit(".", 1)[-1]
            literal = attr.value if isinstance(attr, ast.Constant) else None
            if (
                SUBSTRATE_NAME.match(last)
                or (last == "self" and in_substrate)
                or literal in SUBSTRATE_MEMBERS
            ):
                hits.append(ast.unparse(node))
        for child in ast.iter_child_nodes(node):
            visit(child, in_substrate)

    visit(ast.parse(source), False)
    return hits


def test_no_ability_probing_in_the_library() -> None:
    classes = _substrate_classes()
    assert {"SimulatedSubstrate", "EmulatedChip", "VisaBench", "MqttSubstrate"} <= classes
    found = []
    for root in LIBRARY:
        for path in sorted(root.rglob("*.py")):
            rel = str(path.relative_to(REPO))
            for call in probes(path.read_text(), classes):
                if (rel, call) not in ALLOWED:
                    found.append(f"{rel}: {call}")
    assert found == [], "declare abilities in `capabilities` instead of probing:\n" + "\n".join(
        found
    )


@pytest.mark.parametrize(
    "source",
    [
        'fn = getattr(sub, "reseed", None)',
        'ok = hasattr(self.chip, "true_state")',
        'caps = getattr(s, "capabilities", frozenset())',
        'class B(SimulatedSubstrate):\n    def f(self):\n        return getattr(self, "x", 0)',
    ],
)
def test_the_probe_check_flags_reintroduced_probing(source: str) -> None:
    assert probes(source, {"SimulatedSubstrate"}) != []


def test_the_probe_check_leaves_config_lookups_alone() -> None:
    source = "v = getattr(e, end)\nc = getattr(self.model, name).timeout_s\nhasattr(obj, 'x')"
    assert probes(source, {"SimulatedSubstrate"}) == []


# --------------------------------------------------------------------------- mqtt: held, drive
@pytest.mark.parametrize("kind", ["held", "driven"])
async def test_mqtt_remote_held_and_driven(broker: Mosquitto, kind: str) -> None:  # noqa: F811
    """Through a real mosquitto to an agent serving an emulated device with held inputs (or a
    drive): the remote substrate declares held_phases (or drive) because the agent's device
    has it, and passes the whole suite, the held-phase (drive) check included."""
    from phasegrad_hw.backends.mqtt import MqttSubstrate
    from phasegrad_hw.wire.mqtt import BrokerConfig
    from tests.mosquitto import local_agent

    m = model_layered_small("simulated") if kind == "held" else model_driven_small("simulated")
    behind = open_model(m, seed=2)
    ability = Capability.HELD_PHASES if kind == "held" else Capability.DRIVE
    assert ability in behind.capabilities
    cfg, _, _ = BrokerConfig.parse(broker.uri("controller"))
    async with local_agent(broker, behind, "lab/chip"):
        report = await check_substrate_contract(
            lambda: MqttSubstrate(cfg, "lab/chip", model=behind.model, timeout_s=10.0),
            observer=behind,
        )
    remote = {Capability.COUPLINGS, Capability.FREQUENCY_COUNTER, Capability.RESEED, ability}
    assert_complete(report, frozenset(remote))


# ------------------------------------------------------------- held inputs and drive, wired
# The wired drivers on a chip with held inputs and on one with a drive: each declares the
# ability from what the chip behind it has (board descriptor, bench wiring) and passes the
# whole suite, its held-phase / drive check included.
WIRED_DEVICES = ["held", "driven"]


def wired_chip(kind: str) -> OscillatorSubstrate:
    """The emulated chip behind a driver: the small layered held-input device or the small
    driven device (simulated, seeded readout noise)."""
    from phasegrad_hw.device.registry import open_model
    from phasegrad_hw.testing.networks import model_driven_small, model_layered_small

    base = model_layered_small() if kind == "held" else model_driven_small()
    m = base.model_copy(update={"readout_noise_rad": 0.005})
    return open_model(m, seed=5)


def wired_ability(kind: str) -> Capability:
    return Capability.HELD_PHASES if kind == "held" else Capability.DRIVE


@pytest.mark.parametrize("kind", WIRED_DEVICES)
@pytest.mark.parametrize("transport", ["pty", "tcp"])
async def test_serial_board_with_held_inputs_or_a_drive(kind: str, transport: str) -> None:
    from phasegrad_hw.firmware_models.board import BoardFirmware
    from phasegrad_hw.firmware_models.server import LineServer

    behind = wired_chip(kind)
    assert wired_ability(kind) in behind.capabilities
    server = LineServer(BoardFirmware(behind))
    if transport == "pty":
        require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
        uri = f"serial://{server.start_pty()}"
    else:
        host, port = server.start_tcp()
        uri = f"serial://{host}:{port}"
    try:
        report = await check_substrate_contract(lambda: open_substrate(uri), observer=behind)
    finally:
        server.stop()
    assert_complete(report, behind.capabilities - {Capability.EXACT_GRADIENT})
    assert wired_ability(kind) in report.capabilities


@pytest.mark.parametrize("kind", WIRED_DEVICES)
async def test_visa_bench_with_held_inputs_or_a_drive(kind: str) -> None:
    require(importlib.util.find_spec("pyvisa_py") is not None, "pyvisa-py")
    from phasegrad_hw.backends.visa import VisaBench
    from phasegrad_hw.backends.visa_config import bench_for_chip
    from phasegrad_hw.firmware_models.instruments import BenchEmulator

    names = ("smu", "phase_meter", "injection", "input_source")
    resources = {k: "TCPIP::127.0.0.1::1::SOCKET" for k in names}
    behind = wired_chip(kind)
    emu = BenchEmulator(bench_for_chip(behind.model, resources), chip=behind)
    with emu.running():
        report = await check_substrate_contract(lambda: VisaBench(emu.bench_config()))
    assert_complete(report, frozenset({Capability.RESEED, wired_ability(kind)}))


@pytest.mark.parametrize("kind", WIRED_DEVICES)
async def test_daqmx_stand_in_with_held_inputs_or_a_drive(kind: str) -> None:
    from phasegrad_hw.backends.daqmx import DaqmxBench, daqmx_bench_for_chip
    from phasegrad_hw.testing.daqmx import FakeSystem, fake_nidaqmx

    behind = wired_chip(kind)
    bench = daqmx_bench_for_chip(behind.model)
    system = FakeSystem(
        behind,
        bench.measured_frequency_hz,
        bench.injection_v_per_beta,
        phase_v_per_rad=bench.phase_v_per_rad,
        drive_v_per_unit=bench.drive_v_per_unit,
    )
    try:
        report = await check_substrate_contract(
            lambda: DaqmxBench(bench, daqmx=fake_nidaqmx(system)), observer=behind
        )
    finally:
        system.close()
    assert_complete(report, frozenset({wired_ability(kind)}))


async def test_serial_board_refuses_reseed_when_its_chip_cannot() -> None:
    """Declared, not probed: a board whose chip has no noise seed does not declare
    ``reseed``, and the suite's abilities check sees ``reseed`` refused (it used to pass
    silently)."""
    from phasegrad_hw.backends.serial import SerialOptions, SerialSubstrate
    from phasegrad_hw.firmware_models.board import BoardFirmware
    from phasegrad_hw.testing.doubles import ScriptedSubstrate
    from phasegrad_hw.testing.transcripts import FirmwareStream

    behind = ScriptedSubstrate(chip(0.005))
    behind.capabilities = behind.capabilities - {Capability.RESEED}
    with FirmwareStream(BoardFirmware(behind)) as stream:
        report = await check_substrate_contract(
            lambda: SerialSubstrate(
                "memory://board",
                options=SerialOptions(timeout_s=0.5, reconnect_s=0.0),
                stream=stream,
            ),
            observer=behind.inner,
        )
    assert_complete(report, frozenset({Capability.COUPLINGS, Capability.FREQUENCY_COUNTER}))
