"""``phasegrad-hw train`` says what really runs, once the device model is known: a held-input
layered device (phase encoding, softmax cross-entropy; on the ideal simulated backend the
layered engine, on an emulated chip the hardware loop with clamp targets and a gain κ per
sample) is not announced with the frequency-input options (readout, margin), and a plain
device is."""

from __future__ import annotations

from pathlib import Path

import pytest

from phasegrad_hw.testing.benches import run_cli
from phasegrad_hw.testing.networks import model_layered_small
from tests.conftest import REPO

SIM = REPO / "examples" / "devices" / "simulated-2-5-2.toml"
FREQUENCY_ONLY = ("readout mean_phase", "margin", "frequency inputs")


def banner(*args: str) -> str:
    """The first line ``train`` prints (``--no-store``), checked to appear once."""
    res = run_cli("train", *args, "--no-store")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines and lines[0].startswith("train "), res.stdout
    assert sum(ln.startswith("train ") for ln in lines) == 1, res.stdout
    return lines[0]


def test_plain_device_banner_names_the_frequency_options() -> None:
    first = banner("--device", str(SIM), "--epochs", "0", "--margin", "0.3")
    assert first.startswith(f"train vowels:a,i (synthetic formants) on {SIM}: frequency inputs")
    assert "readout mean_phase, margin 0.3 rad, params both, lr 0.03" in first
    assert "β 0.1 one_sided × 1 avg, 0 epochs, seed 0; store none (--no-store)" in first
    assert "held inputs" not in first and "cross-entropy" not in first


@pytest.mark.parametrize(
    ("backend", "path"),
    [
        ("simulated", "softmax cross-entropy (scale 6) loss nudge"),
        ("cmos", "softmax cross-entropy (scale 6) clamp targets with gain κ per sample"),
    ],
)
def test_held_input_banner_names_what_the_chip_trains_with(
    backend: str, path: str, tmp_path: Path
) -> None:
    dev = tmp_path / f"{backend}.toml"
    model_layered_small(backend, sizes=(2, 4, 2)).save(dev)
    first = banner("--device", str(dev), "--task", "vowels:a,i", "--epochs", "0", "--seed", "2")
    assert first.startswith(f"train vowels:a,i (synthetic formants) on {dev}: held inputs")
    assert "(phase encoding 0…1.57 rad)" in first and path in first
    assert "params K, adam lr 0.003 × 0.93 per epoch, batch 32, β 0.02 centred" in first
    assert "0 epochs, seed 2; store none (--no-store)" in first
    for option in FREQUENCY_ONLY:
        assert option not in first, (option, first)
    if backend == "simulated":
        assert "vectorised layered engine" in first and "gain κ" not in first
    else:
        assert "hardware loop" in first and "× 1 avg" in first
