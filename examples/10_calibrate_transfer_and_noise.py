"""Bias → frequency transfer and noise/β calibration of an emulated CMOS chip with 3 %
threshold mismatch, the map saved next to the device file and used when it is reopened.

1. ``calibrate_transfer`` sweeps every channel's bias against the frequency counter, fits a
   monotone curve and saves it as ``<device>.transfer.json``;
2. ``open_substrate`` (what ``train`` uses) installs that map: requested frequencies are now
   the chip's frequencies (centred error printed for both maps);
3. ``calibrate_noise`` picks the centred β and averages for a gradient cosine of 0.99 and
   verifies the choice against the chip's exact gradient.
"""

import asyncio
import tempfile
from pathlib import Path

import numpy as np

from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.calibration.noise import calibrate_noise
from phasegrad_hw.calibration.transfer import calibrate_transfer
from phasegrad_hw.device.frequency_map import transfer_path
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.registry import load_device_model, open_substrate
from phasegrad_hw.physics import centred

REPO = Path(__file__).resolve().parents[1]


async def map_error(chip: CMOSSubstrate, omega: np.ndarray) -> float:
    """Max |true − requested| frequency (centred, model units) after ``set_frequencies``."""
    await chip.set_frequencies(omega)
    await chip.read_frequencies()
    return float(np.abs(centred(chip.true_frequencies()) - centred(omega)).max())


async def main() -> None:
    d = load_device_model(REPO / "examples" / "devices" / "cmos-2-5-2.toml").model_dump()
    d["oscillator"]["vth_mismatch_v"] = 0.03 * d["oscillator"]["vth_v"]
    device = Path(tempfile.mkdtemp(prefix="phasegrad-transfer-")) / "my-chip.toml"
    DeviceModel.from_dict(d).save(device)

    chip = open_substrate(device, seed=3)
    assert isinstance(chip, CMOSSubstrate)
    async with chip:
        res = await calibrate_transfer(chip)
    res.map.save(transfer_path(device))
    print(
        f"transfer: worst held-out error {100 * (res.max_error or 0):.3f} % of a channel's "
        f"span ({'PASS' if res.passed else 'FAIL'}), saved {transfer_path(device).name}"
    )

    omega = np.random.default_rng(0).uniform(-1.5, 1.5, chip.model.n)
    for choice in ("none", "auto"):
        sub = open_substrate(device, seed=3, transfer=choice)
        assert isinstance(sub, CMOSSubstrate)
        async with sub:
            err = await map_error(sub, omega)
            label = "nominal" if sub.map_source == "nominal" else "calibrated"
            print(f"{label:>10} map: max |ω_true − ω_requested| = {err:.4f} model units")
            if choice == "auto":
                noise = await calibrate_noise(sub)
    print(
        f"noise: β = {noise.beta:.3f}, {noise.averages} averages → measured gradient "
        f"cosine {noise.measured_cosine:.4f} (requested {noise.target_cosine})"
    )


if __name__ == "__main__":
    asyncio.run(main())
