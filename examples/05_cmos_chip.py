"""The emulated CMOS chip: a two-phase gradient through realistic hardware.

Opens ``examples/devices/cmos-2-5-2.toml`` (alpha-power bias curve with threshold mismatch,
16-bit bias DAC, capacitive coupling with mismatch and K_ij ≠ K_ji, sin φ + a2 sin 2φ + b0 +
b1 cos φ, −95 dBc/Hz phase noise, 2 ps TDC), reads the free phases, nudges the outputs by
injection with ±β and compares the centred estimate with the chip's exact gradient: single
reads at small β are noise; β = 0.3 with 256 averages recovers the gradient.
"""

import asyncio
from pathlib import Path

import numpy as np

from phasegrad_hw.backends.cmos import CMOSChipModel, CMOSSubstrate
from phasegrad_hw.physics.gradients import cosine, two_phase_gradient

DEVICE = Path(__file__).resolve().parent / "devices" / "cmos-2-5-2.toml"


async def estimate(
    chip: CMOSSubstrate, target: np.ndarray, beta: float, averages: int
) -> np.ndarray:
    await chip.clamp(target, beta)
    plus = await chip.read_phases(averages)
    await chip.clamp(target, beta, direction=-1)
    minus = await chip.read_phases(averages)
    await chip.release()
    return two_phase_gradient(plus.phases, plus.phases, beta, minus.phases)


async def main() -> None:
    chip = CMOSSubstrate(CMOSChipModel.load(DEVICE), seed=0)
    async with chip:
        omega = np.array([0.6, -0.9, 0.2, -0.1, 0.3, -0.2, 0.1, 0.15, -0.25])
        await chip.set_frequencies(omega)
        free = await chip.read_phases(256)
        print("bias (V):         ", np.round(chip.bias, 5))
        print("true ω (model):   ", np.round(chip.true_frequencies(), 3))
        print(
            "free phases (rad):",
            np.round(free.phases, 3),
            "locked:",
            free.locked,
            f"settle {free.settle_s * 1e9:.1f} ns",
        )
        target = free.phases[chip.model.outputs] + np.array([-0.5, 0.5])
        exact = chip.exact_gradient(target)
        results = {}
        for beta, averages in ((0.01, 1), (0.1, 16), (0.3, 256)):
            cs = [
                float(cosine(await estimate(chip, target, beta, averages), exact)) for _ in range(5)
            ]
            results[(beta, averages)] = float(np.mean(cs))
            print(
                f"beta {beta:<5} averages {averages:<4} centred cosine to exact: {np.mean(cs):+.4f}"
            )
    assert results[(0.3, 256)] >= 0.99
    assert results[(0.01, 1)] < results[(0.3, 256)] - 0.2


if __name__ == "__main__":
    asyncio.run(main())
