"""Train the shipped 64-64-10 simulated device on digits with the layered engine.

Opens ``examples/devices/simulated-64-64-10.toml`` (64 held inputs, 2 bias oscillators held at
0 and π/2, 64 hidden oscillators, 10 outputs, signed couplings within the device's limits),
reads it as a layered network and trains its couplings by equilibrium propagation for two
epochs on a subset of the digits training split: per mini-batch of 32 the free locked states and
the ±β nudged ones (one Newton run for both, warm-started from the free states), the centred
EP gradient, an Adam step clipped to the coupling limits (docs/design.md §8). Prints the test
accuracy on the whole fixed test split (chance: 10 %).
"""

from pathlib import Path

import numpy as np

from phasegrad_hw.device.registry import load_device_model
from phasegrad_hw.engine.layered import (
    DigitsData,
    LayeredConfig,
    Split,
    layered_from_device,
    phase_data,
    train_layered,
)
from phasegrad_hw.learning import tasks

DEVICE = Path(__file__).resolve().parent / "devices" / "simulated-64-64-10.toml"
SUBSET = 1000  # training samples used (of 1 437)


def main() -> None:
    model = load_device_model(DEVICE)
    device = layered_from_device(model)
    data = phase_data(tasks.digits(seed=0), model.input_phase_range_rad)
    keep = np.random.default_rng(0).permutation(data.train.labels.size)[:SUBSET]
    train = Split(data.train.phases[keep], data.train.labels[keep])
    subset = DigitsData(train, data.val, data.test)
    cfg = LayeredConfig(
        hidden=device.net.hidden[0], injection_strength=device.injection, epochs=2, val_fraction=0.0
    )
    run = train_layered(cfg, subset, device=device)
    print(f"device: {model.name}, {device.net.n} oscillators, {device.net.n_edges} couplings")
    for rec in run.history:
        print(
            f"epoch {rec.epoch}: loss {rec.train_loss:.3f}, unlocked {rec.unlocked}, "
            f"test accuracy {rec.test_accuracy:.3f}, {rec.cpu_s:.2f} s CPU"
        )
    print(f"test accuracy {run.test_accuracy:.3f} on {data.test.labels.size} digits")
    assert run.test_accuracy > 0.5, "two epochs should be far above chance (0.1)"


if __name__ == "__main__":
    main()
