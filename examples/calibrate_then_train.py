"""Calibrate, then train: a held-input CMOS chip gets its bias map and its β/averages from
calibration, and training picks both up from next to the device file.

The same three steps on the command line (the shipped 64-64-10 chip: copy the device file
somewhere writable first — maps are never saved inside the package's examples)::

    phasegrad-hw calibrate transfer --device chip.toml --out cal/transfer
    phasegrad-hw calibrate noise    --device chip.toml --out cal/noise --task digits
    phasegrad-hw train              --device chip.toml --task digits

1. ``calibrate transfer``: the bias → frequency map (``chip.transfer.json``); without it the
   threshold mismatch detunes the rings and the 64-64-10 chip does not lock;
2. ``calibrate noise --task``: task samples clamped as training clamps them (softmax
   cross-entropy targets, gain κ), the lock margin bounds β·κ, and (β, averages) are the
   cheapest whose *mini-batch mean* gradient has cosine ≥ 0.9 to its noiseless value
   (``chip.noise.json``);
3. ``train``: uses both maps (one line names the noise map), no --beta/--averages needed.

Here a small 4+2 bias → 6 → 3 chip on a 3-class CSV task, calibrated for batches of 8
(``train`` runs 32: the choice is conservative) keeps it short.
"""

import asyncio
import math
import tempfile
from pathlib import Path

import numpy as np

from phasegrad_hw.calibration.noise import NoiseConfig, calibrate_noise
from phasegrad_hw.calibration.report import NoiseSettings, noise_path
from phasegrad_hw.calibration.transfer import calibrate_transfer
from phasegrad_hw.device.frequency_map import transfer_path
from phasegrad_hw.device.presets import layered_chip
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.engine.layered import layered_couplings
from phasegrad_hw.studies.layered_training import noise_samples
from phasegrad_hw.studies.training import TrainOptions, prepare, train_device


def blobs_csv(path: Path) -> None:
    """Three Gaussian blobs in four features, a label column last."""
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]])
    y = rng.integers(0, 3, 150)
    x = centres[y] + 0.25 * rng.normal(size=(150, 4))
    rows = [",".join(f"{v:.4f}" for v in r) + f",{c}\n" for r, c in zip(x, y, strict=True)]
    path.write_text("a,b,c,d,label\n" + "".join(rows))


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="phasegrad-calibrate-train-"))
    csv, device = tmp / "blobs.csv", tmp / "chip.toml"
    blobs_csv(csv)
    sizes = (4, 6, 3)
    model = layered_chip(
        "cmos", sizes, [0.0, 0.5 * math.pi], layered_couplings(sizes, 2, 0).tolist(), seed=0
    )
    model.save(device)
    task = f"csv:{csv}"
    # 1 + 2: transfer, then noise on the task's samples (what `calibrate` runs and saves;
    # fewer samples and repeats than the command's defaults, to stay quick)
    samples, batch = noise_samples(str(device), model, task, seed=0, n=12)
    quick = NoiseConfig(batch_size=8, ref_repeats=2, noise_means=5, verify_trials=3)
    async with open_substrate(str(device), transfer=None) as sub:
        tr = await calibrate_transfer(sub)
        nz = await calibrate_noise(sub, quick, samples=samples)
    tr.map.save(transfer_path(device))
    NoiseSettings.from_result(model.name, "example", nz).save(noise_path(device))
    assert nz.batch is not None
    print(
        f"transfer: max held-out error {100 * (tr.max_error or 0.0):.3f} % of span; noise: "
        f"lock margin β·κ ≤ {nz.batch.lock.strength_bound:.3g} → β ≤ "
        f"{nz.batch.lock.beta_bound:.3g}; chose β = {nz.beta:.3g}, {nz.averages} averages → "
        f"batch-mean cosine {nz.measured_cosine:.3f} (predicted {nz.predicted_cosine:.3f})"
    )
    # 3: train picks both maps up
    setup = prepare(TrainOptions(device=str(device), task=task, epochs=2, seed=0))
    for note in setup.notes:
        print(note)
    res = await train_device(setup, notify=print)
    print(
        f"trained with β = {setup.options.beta:.3g}, {setup.options.averages} averages: "
        f"test accuracy {100 * res['final_test_accuracy']:.1f} % after {res['epochs']} epochs"
    )


if __name__ == "__main__":
    asyncio.run(main())
