"""The calibration suite's acceptance numbers in one run (issue: calibration suite).

* symmetry: per-edge asymmetry measured vs injected (0 %, 5 %, 20 %) on CMOS chips — RMS
  error in percentage points, pass/fail of the symmetry check;
* non-odd coupling: optical chips with ψ = 0 and ψ = 0.3 rad — flagged?, estimated lag;
* transfer: each channel's fitted bias → frequency curve vs the emulator's true curve on a
  fine grid (max error relative to the channel's span), CMOS with 3 % threshold mismatch
  and optical (heater crosstalk);
* noise/β: the routine's chosen centred β and averages, its own verification and an
  independent re-check (40 fresh estimates, fresh noise stream, vs the exact gradient).

Run: ``python benchmarks/bench_calibration_acceptance.py [--chips 3] [--out PATH]``
(default ``benchmarks/results/calibration_acceptance.json``). Uses the device variants of
the test suite (``tests/test_calibration_common.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.backends.optical import OpticalSubstrate
from phasegrad_hw.calibration.noise import calibrate_noise, centred_estimate
from phasegrad_hw.calibration.symmetry import calibrate_symmetry
from phasegrad_hw.calibration.transfer import TransferConfig, calibrate_transfer
from phasegrad_hw.physics.gradients import cosine
from phasegrad_hw.testing.calibration import (
    VTH_3PCT,
    cmos_model,
    optical_model,
    true_curve_error,
    true_edge_asymmetry,
)


async def symmetry(asym: float, seed: int) -> dict[str, Any]:
    model = cmos_model(asym)
    async with CMOSSubstrate(model, seed) as chip:
        res = await calibrate_symmetry(chip)
        truth = true_edge_asymmetry(chip.K, model.edge_index)
    err = [e.asymmetry - truth[(e.i, e.j)] for e in res.summary.edges]
    return {
        "injected": asym,
        "chip_seed": seed,
        "passed": res.summary.passed,
        "edge_rms_error_pp": 100 * float(np.sqrt(np.mean(np.square(err)))),
    }


async def lag(psi: float, seed: int) -> dict[str, Any]:
    async with OpticalSubstrate(optical_model(psi), seed) as chip:
        res = await calibrate_symmetry(chip)
    return {
        "psi": psi,
        "chip_seed": seed,
        "non_odd": res.summary.non_odd,
        "passed": res.summary.passed,
        "estimated_lag_rad": res.nonodd.phase_lag_rad,
    }


async def transfer(kind: str, seed: int) -> dict[str, Any]:
    chip: CMOSSubstrate | OpticalSubstrate = (
        CMOSSubstrate(cmos_model(oscillator__vth_mismatch_v=VTH_3PCT), seed)
        if kind == "cmos"
        else OpticalSubstrate(optical_model(0.0), seed)
    )
    async with chip:
        res = await calibrate_transfer(chip, TransferConfig())
        true_err = await true_curve_error(chip, res.map)
    return {
        "kind": kind,
        "chip_seed": seed,
        "held_out_error": res.max_error,
        "true_curve_error": true_err,
        "passed": res.passed,
    }


async def noise(kind: str, seed: int, trials: int = 40) -> dict[str, Any]:
    chip: CMOSSubstrate | OpticalSubstrate = (
        CMOSSubstrate(cmos_model(), seed)
        if kind == "cmos"
        else OpticalSubstrate(optical_model(0.0), seed)
    )
    async with chip:
        res = await calibrate_noise(chip)
        chip.reseed(10_000 + seed)
        await chip.set_frequencies(np.asarray(res.omega))
        target = np.asarray(res.target_rad)
        await chip.read_phases(16)
        exact = chip.exact_gradient(target)[1:]
        cos = [
            float(cosine((await centred_estimate(chip, target, res.beta, res.averages))[1:], exact))
            for _ in range(trials)
        ]
    return {
        "kind": kind,
        "chip_seed": seed,
        "beta": res.beta,
        "averages": res.averages,
        "routine_measured_cosine": res.measured_cosine,
        "passed": res.passed,
        "recheck_mean_cosine": float(np.mean(cos)),
        "recheck_min_cosine": float(min(cos)),
        "drift_rad2": res.noise.drift_rad2,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chips", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "calibration_acceptance.json"
    )
    a = ap.parse_args()
    t0 = time.perf_counter()
    seeds = range(a.chips)
    out: dict[str, Any] = {
        "symmetry": [await symmetry(x, 7 + s) for x in (0.0, 0.05, 0.20) for s in seeds],
        "phase_lag": [await lag(p, 2 + s) for p in (0.0, 0.3) for s in seeds],
        "transfer": [await transfer(k, s) for k in ("cmos", "optical") for s in seeds],
        "noise": [await noise(k, s) for k in ("cmos", "optical") for s in range(2 * a.chips)],
    }
    out["seconds"] = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    for part in ("symmetry", "phase_lag", "transfer", "noise"):
        for row in out[part]:
            print(part, json.dumps(row))


if __name__ == "__main__":
    asyncio.run(main())
