"""The demo: /a/ vs /i/ on the default device (``phasegrad-hw demo``).

The default device is examples/devices/simulated-2-5-2.toml, or the same network built in
code (:func:`phasegrad_hw.device.presets.vowel_2_5_2` with ``default_rng(0)``) when the
package is installed without the examples; the data are synthetic formants drawn from the
Hillenbrand per-vowel statistics (docs/design.md §2). The hardware loop (``engine="loop"``)
and the vectorised engine (``engine="engine"``) apply the same update rule.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from phasegrad_hw.backends.simulated import SimulatedDeviceModel
from phasegrad_hw.config import StrictModel
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.learning.loop import LoopObserver
from phasegrad_hw.studies.progress import EnsembleProgress

__all__ = [
    "DEFAULT_DEVICE_NAME",
    "DemoOptions",
    "default_device_model",
    "default_device_path",
    "run_demo",
]

DEFAULT_DEVICE_NAME = "simulated-2-5-2.toml"
DEFAULT_DEVICE_SEED = 0  # the default device file is vowel_2_5_2(default_rng(0))


def default_device_path() -> Path | None:
    """examples/devices/simulated-2-5-2.toml next to the package (source checkout), if any."""
    here = Path(__file__).resolve()
    for base in (here.parents[2], Path.cwd()):
        p = base / "examples" / "devices" / DEFAULT_DEVICE_NAME
        if p.exists():
            return p
    return None


def default_device_model() -> SimulatedDeviceModel:
    """The default device model: the file if present, else the same network built in code."""
    from phasegrad_hw.device.presets import vowel_2_5_2
    from phasegrad_hw.device.registry import load_device_model

    p = default_device_path()
    if p is None:
        model = vowel_2_5_2(np.random.default_rng(DEFAULT_DEVICE_SEED))
    else:
        model = load_device_model(p)
    if not isinstance(model, SimulatedDeviceModel):
        raise ConfigError(f"{p}: backend {model.backend!r}; the demo device must be simulated")
    return model


class DemoOptions(StrictModel):
    """Validated demo options: ``lr`` (ω and K) in model units, ``margin`` the target phase
    offset (rad)."""

    epochs: int = Field(default=40, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0)
    engine: Literal["engine", "loop"] = "loop"
    readout: Literal["mean_phase", "difference", "template", "argmax_cos"] = "mean_phase"
    lr: float = Field(default=0.03, gt=0.0, le=1.0)
    params: Literal["omega", "K", "both"] = "both"
    margin: float = Field(default=0.3, gt=0.0, lt=1.5)


async def run_demo(
    o: DemoOptions,
    *,
    observers: Sequence[LoopObserver] = (),
    progress: EnsembleProgress | None = None,
) -> dict[str, Any]:
    """Train /a/ vs /i/ on the default device; returns the demo JSON dict. ``observers``
    watch the hardware loop (``engine="loop"``), ``progress`` the engine. The engine runs
    synchronously inside this coroutine (no device, nothing to leave safe)."""
    from phasegrad_hw.learning.tasks import Encoding, synthetic_vowels

    t0 = time.perf_counter()
    model = default_device_model()
    data = synthetic_vowels(("a", "i"), seed=o.seed)
    enc = Encoding(readout=o.readout, margin=o.margin)
    device = str(default_device_path() or f"{model.name} (built in code)")
    epochs, seed, lr, params = o.epochs, o.seed, o.lr, o.params
    if o.engine == "engine":
        from phasegrad_hw.engine.ensemble import Ensemble
        from phasegrad_hw.engine.members import TrainConfig, member_for_model
        from phasegrad_hw.learning.ep import EPRule

        cfg = TrainConfig(epochs=epochs, rule=EPRule(lr_omega=lr, lr_k=lr, params=params))
        ens = Ensemble(model, [member_for_model(model, seed, cfg)], data, enc, cfg)
        res = ens.run(None if progress is None else progress.track("training", epochs))
        acc = float(res.test_accuracy[0])
        skipped = int(res.skipped[0])
    else:
        from phasegrad_hw.backends.simulated import SimulatedSubstrate
        from phasegrad_hw.learning.controller import EPConfig
        from phasegrad_hw.learning.ep import EPRule
        from phasegrad_hw.learning.loop import LoopOptions, train_on_substrates

        async with SimulatedSubstrate(model, seed=seed) as sub:
            r = await train_on_substrates(
                [sub],
                data,
                enc,
                EPConfig(rule=EPRule(lr_omega=lr, lr_k=lr, params=params)),
                LoopOptions(epochs=epochs, seed=seed, train_eval="online"),
                observers,
            )
        acc, skipped = r.final_test_accuracy, r.state.skipped_samples
    return {
        "final_test_accuracy": acc,
        "epochs": epochs,
        "seconds": time.perf_counter() - t0,
        "skipped_samples": skipped,
        "device": device,
        "engine": o.engine,
        "readout": o.readout,
        "params": params,
        "margin": o.margin,
        "lr": lr,
        "task": "synthetic vowels a,i",
    }
