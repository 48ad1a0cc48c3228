"""EP through SCPI bench instruments over TCP (pyvisa-py), against emulated instruments.

Starts an emulated SMU, phase meter and injection source around one emulated 2+5+2 chip
(three TCP ports, newline-terminated SCPI), drives them with the pyvisa bench backend, and
checks that an equilibrium-propagation step through the bench gives exactly the gradient the
same chip gives in-process. A dropped reply is injected on the phase meter and recovered.
"""

import asyncio
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.backends.visa import VisaBench
from phasegrad_hw.backends.visa_config import bench_for_chip
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.firmware_models.instruments import BenchEmulator, Fault
from phasegrad_hw.physics.gradients import two_phase_gradient

# the 2+5+2 vowel topology (inputs 0,1; hidden 2..6 chained; outputs 7,8; reference 0)
rng = np.random.default_rng(0)
edges = [(i, h) for i in (0, 1) for h in range(2, 7)]
edges += [(h, o) for h in range(2, 7) for o in (7, 8)]
ks = list(2 * rng.uniform(0.5, 1.5, len(edges))) + list(2 * rng.uniform(0.5, 1.0, 4))
edges += [(h, h + 1) for h in range(2, 6)]
CHIP = DeviceModel.from_dict(
    {
        "backend": "simulated",
        "name": "vowel-chip",
        "n_oscillators": 9,
        "nudge": "injection",
        "edges": [{"i": i, "j": j, "k": float(k)} for (i, j), k in zip(edges, ks, strict=True)],
        "roles": {"inputs": [0, 1], "hidden": [2, 3, 4, 5, 6], "outputs": [7, 8], "reference": 0},
    }
)
OMEGA = np.array([0.3, -0.4, 0.1, -0.2, 0.25, 0.0, -0.1, 0.05, 0.15])
TARGET = np.array([-0.2, 0.2])
BETA = 0.05


async def ep_gradient(sub) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Centred two-phase gradient −(θ^{+β} − θ^{−β})/(2β) on one sample."""
    async with sub:
        await sub.set_frequencies(OMEGA)
        await sub.read_phases()
        await sub.clamp(TARGET, BETA)
        plus = (await sub.read_phases()).phases
        await sub.clamp(TARGET, BETA, direction=-1)
        minus = (await sub.read_phases()).phases
        await sub.release()
    return two_phase_gradient(plus, plus, BETA, minus)


def main() -> None:
    placeholder = dict.fromkeys(("smu", "phase_meter", "injection"), "TCPIP::127.0.0.1::0::SOCKET")
    emulator = BenchEmulator(bench_for_chip(CHIP, placeholder))
    with emulator.running():
        for name, resource in emulator.resources().items():
            print(f"{name:12s} {resource}")
        emulator.inject(Fault(kind="drop", instrument="phase_meter", after=5))  # a READ?
        config = emulator.bench_config(measure_timeout_s=0.3, resync_timeout_s=1.0)
        bench = VisaBench(config)
        g_bench = asyncio.run(ep_gradient(bench))
    g_local = asyncio.run(ep_gradient(SimulatedSubstrate(CHIP)))
    print("gradient through the bench:", np.round(g_bench, 5))
    print("gradient in-process:       ", np.round(g_local, 5))
    print(f"round trips: {bench.round_trips}, recoveries: {bench.retries_used}")
    diff = float(np.abs(g_bench - g_local).max())
    print(f"max difference: {diff:.2e}")
    assert diff <= 1e-9, diff
    assert bench.retries_used == 1  # the dropped reply was recovered
    assert np.abs(g_local).max() > 1e-3


if __name__ == "__main__":
    main()
