"""Per-step cost of the EP controller on the 2+5+2 simulated device (µs per step).

Writes ``benchmarks/results/controller_step.json``: controller overhead alone (a substrate
that answers instantly), full steps on :class:`SimulatedSubstrate` (one-sided and centred),
per-sample cost with 8 parallel chips of a :class:`SimulatedBatch`, and the training loop's
time per epoch on synthetic /a/ vs /i/ (one device, online SGD).

    python benchmarks/bench_controller_step.py [--steps 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from phasegrad_hw.backends.simulated import SimulatedBatch, SimulatedSubstrate
from phasegrad_hw.device.substrate import OscillatorSubstrate, PhaseReading
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.loop import LoopOptions, train_on_substrates
from phasegrad_hw.learning.tasks import Encoding, synthetic_vowels
from phasegrad_hw.testing.networks import model_2_5_2


class InstantSubstrate(OscillatorSubstrate):
    """Answers every read at once with a fixed locked reading (controller overhead only)."""

    operation_timeout_s = None  # computation in this process (as the emulators): no timer

    def __init__(self, model: object) -> None:
        super().__init__(model)  # type: ignore[arg-type]
        self._r = PhaseReading(np.zeros(self.model.n), np.zeros(self.model.n), True)

    async def _apply_frequencies(self, omega: np.ndarray) -> None: ...
    async def _apply_biases(self, values: np.ndarray) -> None: ...
    async def _apply_clamp(self, target: np.ndarray, beta: float, direction: int) -> None: ...
    async def _apply_release(self) -> None: ...

    async def _read(self, averages: int) -> PhaseReading:
        return self._r


async def _time_steps(subs: list[OscillatorSubstrate], mode: str, steps: int) -> float:
    m = subs[0].model
    ctl = EPController(
        subs, EPConfig(rule=EPRule(mode=mode)), Parameters(np.zeros(m.n), m.coupling_values())
    )  # type: ignore[arg-type]
    xs = np.random.default_rng(0).uniform(-1.5, 1.5, (steps * len(subs), 2))
    tgt = np.array([-0.2, 0.2])
    t0 = time.perf_counter()
    for s in range(steps):
        await ctl.step([Sample(xs[s * len(subs) + k], tgt) for k in range(len(subs))])
    return (time.perf_counter() - t0) / steps * 1e6


async def main(steps: int, repeats: int = 5) -> dict[str, float]:
    """Best of ``repeats`` timings (the machine may be shared)."""
    m = model_2_5_2(0)
    out: dict[str, float] = {}

    async def best(make: Callable[[], list[OscillatorSubstrate]], mode: str, n: int) -> float:
        return min([await _time_steps(make(), mode, n) for _ in range(repeats)])

    for mode in ("one_sided", "centred"):
        out[f"overhead_{mode}_us_per_step"] = await best(lambda: [InstantSubstrate(m)], mode, steps)
        out[f"simulated_{mode}_us_per_step"] = await best(
            lambda: [SimulatedSubstrate(m)], mode, steps
        )
    per = await best(lambda: list(SimulatedBatch(m, 8).chips), "one_sided", max(1, steps // 8))
    out["batch8_one_sided_us_per_step"] = per
    out["batch8_one_sided_us_per_sample"] = per / 8
    # the training loop: one epoch of synthetic /a/ vs /i/ (≈218 train, 54 test samples)
    data = synthetic_vowels(("a", "i"))
    for te in ("online", "epoch_end"):
        times = []
        for _ in range(max(1, repeats // 2)):
            t0 = time.perf_counter()
            await train_on_substrates(
                [SimulatedSubstrate(m)],
                data,
                Encoding(),
                EPConfig(),
                LoopOptions(epochs=2, seed=0, train_eval=te),
            )
            times.append((time.perf_counter() - t0) / 2)
        out[f"loop_{te}_ms_per_epoch"] = 1e3 * min(times)
    out["loop_train_samples"] = float(len(data.x_train))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = ap.parse_args()
    res = asyncio.run(main(a.steps, a.repeats))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "controller_step.json"
    path.write_text(
        json.dumps(
            {
                "steps": a.steps,
                "repeats": a.repeats,
                "statistic": "min",
                "device": "simulated 2+5+2",
                **res,
            },
            indent=2,
        )
    )
    for k, v in res.items():
        print(f"{k:40s} {v:9.1f}")
    print(f"wrote {path}")
