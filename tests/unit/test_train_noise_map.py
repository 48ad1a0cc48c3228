"""``train`` on a held-input chip takes β and averages from the noise map saved next to the
device file by ``calibrate noise`` (one note says so), explicit options win, and without a
map the layered defaults apply — down to the EP rule the controller runs."""

from __future__ import annotations

import math
from pathlib import Path

from phasegrad_hw.calibration.report import NoiseSettings, noise_path
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.presets import layered_chip
from phasegrad_hw.engine.layered import LayeredConfig, layered_couplings
from phasegrad_hw.studies.layered_training import controller_setup
from phasegrad_hw.studies.training import TrainOptions, prepare


def _chip(tmp_path: Path) -> Path:
    sizes = (4, 6, 3)
    model = layered_chip(
        "cmos", sizes, [0.0, 0.5 * math.pi], layered_couplings(sizes, 2, 0).tolist(), seed=0
    )
    dev = tmp_path / "chip.toml"
    model.save(dev)
    return dev


def _rule(dev: Path, **given: object) -> tuple[float, int, str, tuple[str, ...]]:
    setup = prepare(TrainOptions(device=str(dev), task="xor", **given))  # type: ignore[arg-type]
    model = DeviceModel.load(dev)
    cfg, _, _ = controller_setup(setup.options, model, setup.noise is not None)
    return cfg.rule.beta, cfg.rule.averages, cfg.rule.mode, setup.notes


def test_held_chip_training_uses_the_saved_noise_map(tmp_path: Path) -> None:
    dev = _chip(tmp_path)
    base = LayeredConfig()
    # no map: the layered defaults (β 0.02 centred, one read)
    assert _rule(dev)[:3] == (base.beta, 1, base.mode)
    NoiseSettings(device="cmos-4-6-3", created="now", beta=0.0061, averages=3).save(noise_path(dev))
    beta, averages, mode, notes = _rule(dev)
    assert (beta, averages, mode) == (0.0061, 3, "centred")
    (note,) = notes
    assert note.startswith(f"noise map {noise_path(dev)}: beta 0.0061, averages 3")
    # explicit options win, and the note says which were given
    beta, averages, _, notes = _rule(dev, beta=0.01, averages=2)
    assert (beta, averages) == (0.01, 2)
    assert "(beta, averages given on the command line)" in notes[0]
    # --noise none ignores the map
    assert _rule(dev, noise="none")[:2] == (base.beta, 1)


def test_a_map_elsewhere_is_used_only_when_named(tmp_path: Path) -> None:
    dev = _chip(tmp_path)
    other = tmp_path / "other.noise.json"
    NoiseSettings(device="x", created="now", beta=0.003, averages=9).save(other)
    assert _rule(dev)[:2] == (LayeredConfig().beta, 1)
    assert _rule(dev, noise=str(other))[:2] == (0.003, 9)
