"""Sweep scale-out: the same 16-trial sweep on a local Ray instance with 1 worker CPU and with
2, in one run (``phasegrad-hw sweep``, :func:`phasegrad_hw.studies.sweep.run_sweep`).

The trials: ``train`` on the simulated 2+5+2 device (synthetic /a/ vs /i/), a 4 × 4 grid of
learning rate × seed, ``--epochs`` epochs each. Each Ray instance is started, warmed up (its
workers import the library on a 2-trial sweep of one epoch) and then timed on the sweep only
(driver wall time, including recording every trial in a fresh run store). Both runs must give
bitwise the same final parameters per trial. Written as JSON (default
``benchmarks/results/bench_sweep.json``): seconds per worker count, the speedup (target
≥ 1.7×), the load average before and after (the machine may be shared) and the CPU count.

Run: ``python benchmarks/bench_sweep.py [--out PATH] [--epochs N]`` (needs the ``cluster``
extra: ``pip install 'phasegrad-hw[cluster]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from phasegrad_hw.fleet.cluster import Cluster
from phasegrad_hw.studies.sweep import SweepSpec, plan_trials, run_sweep

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "examples" / "devices" / "simulated-2-5-2.toml"


def _spec(epochs: int, lrs: list[float], seeds: list[int]) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "study": "train",
            "search": "grid",
            "base": {"device": str(DEVICE), "epochs": epochs, "params": "both"},
            "grid": {"lr": lrs, "seed": seeds},
        }
    )


def _timed(cpus: int, epochs: int, tmp: Path) -> dict[str, Any]:
    spec = _spec(epochs, [0.005, 0.01, 0.02, 0.05], [0, 1, 2, 3])
    trials = plan_trials(spec)
    warm = _spec(1, [0.01], [100, 101])
    with Cluster(num_cpus=cpus):
        run_sweep(warm, plan_trials(warm), tmp / f"warm-{cpus}.sqlite")
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        res = run_sweep(spec, trials, tmp / f"runs-{cpus}.sqlite")
        seconds = time.perf_counter() - t0
        load1 = os.getloadavg()
    assert not res["failed"], res["failed"]
    return {
        "workers": cpus,
        "trials": len(trials),
        "epochs_per_trial": epochs,
        "seconds": seconds,
        "trial_seconds_sum": sum(
            t["worker"]["end_perf_s"] - t["worker"]["start_perf_s"] for t in res["trials"]
        ),
        "loadavg_before": list(load0),
        "loadavg_after": list(load1),
        "parameters": [t["parameters"] for t in res["trials"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_sweep.json"
    )
    ap.add_argument("--epochs", type=int, default=4, help="Epochs per trial.")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        one = _timed(1, a.epochs, Path(tmp))
        two = _timed(2, a.epochs, Path(tmp))
    same = one.pop("parameters") == two.pop("parameters")
    result = {
        "benchmark": "sweep 16 trials, 1 vs 2 Ray workers",
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "one_worker": one,
        "two_workers": two,
        "speedup": one["seconds"] / two["seconds"],
        "target_speedup": 1.7,
        "identical_parameters": same,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
