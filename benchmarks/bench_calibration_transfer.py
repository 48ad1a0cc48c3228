"""Does transfer calibration pay off? Training on a CMOS chip with 3 % threshold mismatch,
with the nominal bias curve vs with the calibrated map (phasegrad_hw.calibration.transfer).

With V_th mismatch the nominal curve maps every requested ω to a different real frequency
(an offset and a gain error per oscillator), so inputs are encoded wrongly and hidden/output
frequencies are off; the calibrated map removes that. For each chip seed (mismatch draw):
the map's accuracy (max |ω^c_real − ω^c_requested| over random settings, nominal vs
calibrated) and the test accuracy after ``--epochs`` epochs of /a/ vs /i/ EP training
(:func:`phasegrad_hw.loop.train_on_substrates`, real CSV if present) with each map; and
*deployment*: ω learned on a reference chip (through its calibrated map) run on the other
chips through their nominal vs calibrated maps. In-place training absorbs the map's
offsets into the learned ω, so the calibrated map matters most when parameters move
between chips (or from a model to a chip).

Run: ``python benchmarks/bench_calibration_transfer.py [--epochs N] [--seeds S] [--out PATH]``
(default output ``benchmarks/results/bench_calibration_transfer.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.calibration.transfer import calibrate_transfer

from phasegrad_hw.controller import EPConfig
from phasegrad_hw.devices import load_device_model
from phasegrad_hw.loop import train_on_substrates
from phasegrad_hw.models import DeviceModel
from phasegrad_hw.physics import centred
from phasegrad_hw.tasks import Encoding, load_vowels, synthetic_vowels

REPO = Path(__file__).resolve().parents[1]
CSV = REPO.parent / "shared" / "data" / "hillenbrand_vowels.csv"


def chip_model(seed: int, mismatch: float = 0.03) -> DeviceModel:
    d = load_device_model(REPO / "examples" / "devices" / "cmos-2-5-2.toml").model_dump()
    d["oscillator"]["vth_mismatch_v"] = mismatch * d["oscillator"]["vth_v"]
    d["seed"] = seed
    return DeviceModel.from_dict(d)


async def map_error(chip: CMOSSubstrate, rng: np.random.Generator, n: int = 20) -> float:
    worst = 0.0
    for _ in range(n):
        w = rng.uniform(-2.0, 2.0, chip.model.n)
        await chip.set_frequencies(w)
        await chip.read_frequencies()
        worst = max(worst, float(np.abs(centred(chip.true_frequencies()) - centred(w)).max()))
    return worst


async def one(seed: int, calibrated: bool, epochs: int) -> dict[str, Any]:
    data = load_vowels(CSV) if CSV.exists() else synthetic_vowels()
    cfg = EPConfig(beta=0.2, mode="centred", averages=4, lr_omega=0.03)
    enc = Encoding(readout="mean_phase", margin=0.3)  # the train CLI defaults
    async with CMOSSubstrate(chip_model(seed), seed) as chip:
        if calibrated:
            await calibrate_transfer(chip)
        err = await map_error(chip, np.random.default_rng(seed))
        t0 = time.perf_counter()
        res = await train_on_substrates([chip], data, enc, cfg, epochs=epochs, seed=seed,
                                        init="spectral")
    return {"chip_seed": seed, "map": "calibrated" if calibrated else "nominal",
            "max_centred_omega_error": err, "final_test_accuracy": res.final_test_accuracy,
            "train_accuracy": res.state.history[-1].train_accuracy if res.state.history else None,
            "skipped": res.state.skipped_samples, "seconds": time.perf_counter() - t0}


async def deploy(params: Any, seed: int, calibrated: bool, data: Any, enc: Encoding,
                 cfg: EPConfig) -> float:
    """Test accuracy of parameters trained on another chip, deployed to chip ``seed``."""
    from phasegrad_hw.controller import EPController

    async with CMOSSubstrate(chip_model(seed), seed) as chip:
        if calibrated:
            await calibrate_transfer(chip)
        ctl = EPController([chip], cfg, params.copy())
        phases, _ = await ctl.infer_many(enc.input_frequencies(data.x_test))
        pred = enc.predict(phases[:, chip.model.outputs])
    return float(np.mean(pred == data.y_test))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results"
                    / "bench_calibration_transfer.json")
    a = ap.parse_args()
    rows = []
    for s in range(a.seeds):
        for cal in (False, True):
            r = await one(s, cal, a.epochs)
            rows.append(r)
            print(json.dumps(r))
    summary = {m: float(np.mean([r["final_test_accuracy"] for r in rows if r["map"] == m]))
               for m in ("nominal", "calibrated")}
    # deployment: train on a reference chip through its calibrated map (ω in true model
    # units), then run the learned ω on other chips through their nominal/calibrated maps
    data = load_vowels(CSV) if CSV.exists() else synthetic_vowels()
    cfg = EPConfig(beta=0.2, mode="centred", averages=4, lr_omega=0.03)
    enc = Encoding(readout="mean_phase", margin=0.3)
    async with CMOSSubstrate(chip_model(100), 100) as ref_chip:
        await calibrate_transfer(ref_chip)
        trained = await train_on_substrates([ref_chip], data, enc, cfg, epochs=a.epochs,
                                            seed=100, init="spectral")
    dep = []
    for s in range(a.seeds):
        for cal in (False, True):
            acc = await deploy(trained.state.params, s, cal, data, enc, cfg)
            dep.append({"chip_seed": s, "map": "calibrated" if cal else "nominal",
                        "test_accuracy": acc})
            print(json.dumps(dep[-1]))
    deploy_summary = {m: float(np.mean([r["test_accuracy"] for r in dep if r["map"] == m]))
                      for m in ("nominal", "calibrated")}
    out = {"epochs": a.epochs, "vth_mismatch": 0.03, "data": "csv" if CSV.exists() else
           "synthetic", "rows": rows, "mean_test_accuracy": summary,
           "reference_chip_accuracy": trained.final_test_accuracy, "deploy": dep,
           "deploy_mean_test_accuracy": deploy_summary}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print("mean test accuracy (trained on each chip):", summary)
    print("deployed from a reference chip:", deploy_summary)


if __name__ == "__main__":
    asyncio.run(main())
