"""Two-phase (equilibrium propagation) gradient on the ideal simulated device.

Reads the free phases, clamps the outputs toward targets with a small β, reads again, and
compares −(θ^β − θ*)/β with the exact implicit gradient.
"""

import asyncio

import numpy as np

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.physics.gradients import cosine, two_phase_gradient

MODEL = DeviceModel.from_dict(
    {
        "backend": "simulated",
        "n_oscillators": 5,
        "edges": [
            {"i": 0, "j": 1, "k": 2.0},
            {"i": 1, "j": 2, "k": 1.5},
            {"i": 2, "j": 3, "k": 2.5},
            {"i": 3, "j": 4, "k": 1.0},
            {"i": 0, "j": 4, "k": 2.0},
            {"i": 1, "j": 3, "k": 1.2},
        ],
        "roles": {"inputs": [1], "hidden": [2], "outputs": [3, 4], "reference": 0},
    }
)


async def main() -> None:
    target = np.array([0.4, -0.3])
    async with SimulatedSubstrate(MODEL) as chip:
        await chip.set_frequencies([0.2, -0.1, 0.3, -0.25, 0.05])
        free = await chip.read_phases()
        await chip.clamp(target, beta=1e-3)
        nudged = await chip.read_phases()
        await chip.release()
        g = two_phase_gradient(free.phases, nudged.phases, beta=1e-3)
        exact = chip.exact_gradient(target)
    print("free phases (rad):", np.round(free.phases, 4))
    print("two-phase gradient:", np.round(g, 5))
    print("implicit gradient: ", np.round(exact, 5))
    c = float(cosine(g, exact))
    print(f"cosine = {c:.8f}")
    assert c > 0.9999


if __name__ == "__main__":
    asyncio.run(main())
