"""Device variants and ground truths for testing the calibration routines (tests and the
calibration acceptance benchmark, the optical crosstalk example): the 2+5+2 example chips of
``examples/devices`` with a chosen coupling asymmetry or phase lag, a layered optical chip
with heater crosstalk, the emulator's true per-edge asymmetry, the error of a fitted
transfer map against the emulator's true bias → frequency curves, and the rings' true
detuning under a frequency map.

The example device files are read from the source checkout this package sits in
(``examples/devices`` next to the package; :func:`example_device`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.backends.optical import OpticalSubstrate
from phasegrad_hw.calibration.transfer import TransferMap
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.presets import layered_chip
from phasegrad_hw.device.registry import load_device_model
from phasegrad_hw.engine.layered import layered_couplings
from phasegrad_hw.physics import Array, centred

VTH_3PCT = 0.03 * 0.45
"""3 % threshold-voltage mismatch of the CMOS chip (rms, V): the transfer-calibration case."""


def example_device(name: str) -> Path:
    """``examples/devices/<name>`` of the source checkout (FileNotFoundError without one)."""
    path = Path(__file__).resolve().parents[2] / "examples" / "devices" / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: example device files come with the source checkout")
    return path


def _dump(name: str) -> dict[str, Any]:
    return load_device_model(example_device(name)).model_dump()


def cmos_model(asym: float = 0.0, seed: int = 0, **over: Any) -> DeviceModel:
    """The 2+5+2 CMOS chip with exactly ``asym`` per-edge asymmetry |k_ij − k_ji|/mean
    injected (random sign per edge, from ``seed``) and no other direction mismatch.
    ``over``: ``section__field=value`` (or ``section=value``) replacements."""
    d = _dump("cmos-2-5-2.toml")
    d["capacitors"]["direction_mismatch"] = 0.0
    rng = np.random.default_rng(seed)
    for e in d["edges"]:
        s = float(rng.choice([-1.0, 1.0]))
        e["k_ji"] = e["k"] * (1 + s * asym / 2) / (1 - s * asym / 2) if asym else None
    for key, val in over.items():
        section, _, field = key.partition("__")
        if field:
            d[section][field] = val
        else:
            d[section] = val
    return DeviceModel.from_dict(d)


def optical_model(psi: float, scale: float = 1.0) -> DeviceModel:
    """The 2+5+2 optical chip with phase lag ψ (rad); couplings scaled by ``scale``."""
    d = _dump("optical-2-5-2.toml")
    d["coupling_function"]["phase_lag_rad"] = psi
    for e in d["edges"]:
        e["k"] *= scale
    return DeviceModel.from_dict(d)


def simulated_model(**over: Any) -> DeviceModel:
    """The 2+5+2 simulated chip with top-level fields replaced by ``over``."""
    d = _dump("simulated-2-5-2.toml")
    d.update(over)
    return DeviceModel.from_dict(d)


def layered_optical(sizes: tuple[int, int, int] = (16, 16, 4)) -> DeviceModel:
    """A layered optical chip (held inputs, 2 bias oscillators; 38 heaters at 16-16-4) with
    the default heaters: neighbour crosstalk 0.1, each entry off by 10 % rms, ambient drift."""
    K = layered_couplings(sizes, 2, 0)
    return layered_chip("optical", sizes, [0.0, 0.5 * np.pi], K.tolist(), seed=4)


async def detuning_rms(chip: OpticalSubstrate, seed: int = 0, points: int = 8) -> float:
    """rms over random settings ω ~ U(−1, 1) (model units) of the chip's true centred ω minus
    the requested one (what the rings see: the common part moves only the frame)."""
    rng = np.random.default_rng(seed)
    sq = []
    for _ in range(points):
        w = rng.uniform(-1.0, 1.0, chip.model.n)
        await chip.set_frequencies(w)
        await chip.read_frequencies()  # thermal transients settle
        sq.append((centred(chip.true_frequencies()) - centred(w)) ** 2)
    return float(np.sqrt(np.mean(sq)))


def true_edge_asymmetry(K: Array, edges: np.ndarray) -> dict[tuple[int, int], float]:
    """Per edge (i, j): the true asymmetry |K_ij − K_ji| / mean of the coupling matrix ``K``."""
    a, b = K[edges[:, 0], edges[:, 1]], K[edges[:, 1], edges[:, 0]]
    vals = np.abs(a - b) / (0.5 * (a + b))
    return {(int(i), int(j)): float(v) for (i, j), v in zip(edges, vals, strict=True)}


async def true_curve_error(chip: CMOSSubstrate | OpticalSubstrate, tmap: TransferMap) -> float:
    """Max over channels of max |fit − true| / true span of ``tmap``'s bias → frequency
    curves on a 97-point grid over each channel's bias range (the other channels safe),
    against the emulator's true frequencies (model units)."""
    worst = 0.0
    for k in range(chip.model.n):
        c = chip.model.limits.bias.channel(k)
        vs = np.linspace(c.min, c.max, 97)
        true = np.empty_like(vs)
        for g, v in enumerate(vs):
            b = chip.model.safe_biases()
            b[k] = v
            await chip.set_biases(b)
            await chip.read_frequencies()  # let thermal transients settle (optical)
            true[g] = chip.true_frequencies()[k]
        fit = tmap.channels[k].forward()(vs)
        worst = max(worst, float(np.abs(fit - true).max() / np.ptp(true)))
    return worst
