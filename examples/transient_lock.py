"""Lock acquisition after a bias step on the emulated CMOS chip, settle = "transient".

With ``settle = "transient"`` in a chip's device file the chip integrates its own dynamics
after every change (its true couplings, coupling function and phase noise; docs/design.md
§5, §9) instead of jumping to the Newton equilibrium, so the settling time a reading reports
is the lock time of the integration. Here a ring is stepped away from a reference ring it is
coupled to (K = 1 both ways, lock edge |Δω| = 2K): it locks within tens of oscillation cycles
far from the edge, slower toward it, and beyond the edge it beats (no lock; the phase slips at
the Adler rate √(Δω² − 4K²)).
"""

import asyncio

import numpy as np

from phasegrad_hw.backends.cmos import CMOSChipModel, CMOSSubstrate

MODEL = CMOSChipModel.model_validate(
    {
        "backend": "cmos",
        "name": "cmos-ring-pair",
        "n_oscillators": 2,
        "edges": [{"i": 0, "j": 1, "k": 1.0}],
        "roles": {"inputs": [0], "hidden": [], "outputs": [1], "reference": 0},
        "nudge": "injection",
        "settle": "transient",
        "limits": {
            "omega": {"min": -3.0, "max": 3.0},
            "bias": {"min": 0.8, "max": 1.2, "safe": 0.9},
        },
        "oscillator": {"vth_mismatch_v": 0.0},
        "capacitors": {"mismatch": 0.0, "direction_mismatch": 0.0, "lsb_ff": 0.0},
        "bias_dac": {"bits": 24},
        "settling": {"tolerance": 1e-3, "max_cycles": 400.0},
    }
)


async def step(detuning: float, noise_dbc_hz: float) -> tuple[bool, float, float]:
    """(locked, lock time in cycles, spread of the read) after a step 0 → ``detuning``."""
    m = MODEL.model_copy(update={"phase_noise": MODEL.phase_noise.model_copy(
        update={"dbc_hz": noise_dbc_hz})})  # fmt: skip
    async with CMOSSubstrate(m, seed=1) as chip:
        await chip.set_frequencies(np.zeros(2))
        await chip.read_phases()
        await chip.set_frequencies(np.array([0.0, detuning]))
        r = await chip.read_phases(16)
        return r.locked, r.settle_s * m.oscillator.f_center_hz, float(r.spread[1])


async def main() -> None:
    f = MODEL.oscillator.f_center_hz
    print(f"ring pair at {f / 1e9:g} GHz, K = 1 (lock edge at Δω = 2), settle = transient")
    print(" Δω/edge   noise off: lock cycles   -95 dBc/Hz: lock cycles   read spread (rad)")
    for frac in (0.2, 0.5, 0.8, 0.9, 0.97, 1.1):
        quiet = await step(2.0 * frac, -240.0)
        noisy = await step(2.0 * frac, -95.0)
        cell = [f"{c:8.1f}" if ok else "  no lock" for ok, c, _ in (quiet, noisy)]
        print(f"  {frac:5.2f}   {cell[0]:>22}   {cell[1]:>24}   {noisy[2]:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
