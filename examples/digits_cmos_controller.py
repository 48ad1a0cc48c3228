"""Chip-scale learning through the controller on the emulated CMOS 64-64-10 chip.

Opens ``examples/devices/cmos-64-64-10.toml`` (140 ring oscillators: 64 held inputs, 2 bias
oscillators, 64 hidden, 10 outputs; threshold mismatch, 16-bit bias DAC, capacitor mismatch
and K_ij ≠ K_ji, sin φ + a2 sin 2φ + b0 + b1 cos φ, phase noise, 2 ps TDC), calibrates its
bias → frequency map (the mismatch alone detunes the rings by ≈ 0.3 model units), then trains
the 8×8 digits for one epoch on a subset through the asyncio EP controller (docs/design.md §8):
held input phases per sample, softmax cross-entropy clamp targets, centred β = 0.02,
mini-batches with Adam, the locking projections — and prints the test accuracy before and
after. A short run (320 samples in mini-batches of 8); the full task (mini-batches of 32)
reaches ≈ 70 % after one epoch of 1 437 samples (``phasegrad-hw calibrate transfer``, then
``phasegrad-hw train --task digits`` on a copy of the device file).
"""

import asyncio
import dataclasses
from pathlib import Path

import numpy as np

from phasegrad_hw.calibration.transfer import calibrate_transfer
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.learning import tasks
from phasegrad_hw.learning.loop import LoopOptions, evaluate_parameters, train_on_substrates
from phasegrad_hw.studies.layered_training import controller_setup
from phasegrad_hw.studies.training import TrainOptions, prepare

DEVICE = Path(__file__).resolve().parent / "devices" / "cmos-64-64-10.toml"
N_TRAIN, N_TEST = 320, 120
BATCH = 8  # 40 updates in the short run (the full task uses 32)


async def main() -> None:
    ds = tasks.digits(seed=0)
    ds = dataclasses.replace(
        ds,
        x_train=ds.x_train[:N_TRAIN],
        y_train=ds.y_train[:N_TRAIN],
        x_test=ds.x_test[:N_TEST],
        y_test=ds.y_test[:N_TEST],
    )
    opts = TrainOptions(
        device=str(DEVICE), task="digits", beta=0.02, averages=1, mode="centred", noise="none"
    )
    sub = open_substrate(DEVICE, seed=0, transfer=None)
    cfg, enc, params = controller_setup(prepare(opts).options, sub.model, noise_map=False)
    cfg = cfg.model_copy(update={"batch_size": BATCH})
    async with sub:
        await calibrate_transfer(sub)  # installs the measured bias map (not saved)
        _, before = await evaluate_parameters([sub], ds, enc, params, cfg)
        res = await train_on_substrates(
            [sub], ds, enc, cfg, LoopOptions(epochs=1, params=params, train_eval="online")
        )
    h = res.state.history[-1]
    print(f"device: {sub.model.name}, {sub.model.n} oscillators, clamp: {sub.model.nudge}")
    print(f"EP rule: β {cfg.rule.beta} centred, Adam lr {cfg.rule.lr_k}, batch {cfg.batch_size}")
    print(
        f"test accuracy before: {100 * before:.1f} %  after 1 epoch: {100 * h.test_accuracy:.1f} %"
    )
    print(f"{N_TRAIN} samples, {h.skipped} skipped, {h.seconds:.1f} s")
    assert np.isfinite(h.test_accuracy) and h.test_accuracy > before


if __name__ == "__main__":
    asyncio.run(main())
