"""Heater thermal crosstalk on an emulated optical chip: calibrate it, and what is left.

A 16-16-4 layered optical chip (held inputs, 2 bias rings; 38 heaters) has heaters whose
heat reaches the neighbouring rings (ΔT = r_th·X·P, crosstalk 0.1 ± 10 % per entry) and an
ambient temperature that drifts while it is calibrated. ``calibrate_transfer`` steps one
heater at a time with the rest state read before and after every step (drift cancels), reads
every ring, and fits the matrix X̂ on the own frequency shifts (∝ heater power) — the
practice of Milanizadeh et al., J. Lightw. Technol. 37(4), 2019. The map's ``bias(ω)`` then
solves the coupled system. Printed: the rms detuning of the rings (true − requested ω,
centred) through the nominal design curve and through the calibrated map, and how close X̂
is to the chip's true crosstalk. The device file and its map live in a temporary directory.
"""

import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np

from phasegrad_hw.backends.optical import OpticalSubstrate
from phasegrad_hw.calibration.transfer import calibrate_transfer
from phasegrad_hw.device.frequency_map import transfer_path
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.testing.calibration import detuning_rms, layered_optical

SIZES = (16, 16, 4)


async def main() -> None:
    model = layered_optical(SIZES)
    device = Path(tempfile.mkdtemp(prefix="phasegrad-optical-")) / "optical-16-16-4.toml"
    model.save(device)

    chip = open_substrate(device, seed=1)
    assert isinstance(chip, OpticalSubstrate)
    async with chip:
        nominal = await detuning_rms(chip)
        t0 = time.perf_counter()
        res = await calibrate_transfer(chip)
        took = time.perf_counter() - t0
        calibrated = await detuning_rms(chip)
    res.map.save(transfer_path(device))  # what `phasegrad-hw calibrate transfer` does

    X = np.asarray(res.map.crosstalk_matrix)
    true = chip.crosstalk / np.diag(chip.crosstalk)[None, :]
    print(f"{model.n} heaters calibrated in {took:.1f} s ({res.map.source}); map saved to")
    print(f"  {transfer_path(device)}")
    print(f"crosstalk X̂: neighbours {np.diag(X, 1).min():.3f}…{np.diag(X, 1).max():.3f},")
    print(f"  max |X̂ − X_true| = {np.abs(X - true).max():.1e}")
    print(
        f"ring detuning rms (model units): nominal curve {nominal:.3f}, calibrated {calibrated:.4f}"
    )

    reopened = open_substrate(device, seed=1)  # `train` does this: the saved map is installed
    print(f"reopened: bias map {reopened.map_source}")


if __name__ == "__main__":
    asyncio.run(main())
