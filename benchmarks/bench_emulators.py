"""Host time of one EP step on the emulated chips (no sleeping).

One step = set the sample's frequencies, free read, clamp +β read, clamp −β read (centred),
release — each read averaging 16 conversions — on the 2+5+2 CMOS chip (acceptance: median
≤ 2 ms) and, for reference, the optical chip. Writes JSON (default
``benchmarks/results/bench_emulators.json``)::

    python benchmarks/bench_emulators.py [--out PATH] [--steps N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from phasegrad_hw.device.registry import open_substrate

REPO = Path(__file__).resolve().parents[1]
DEVICES = {
    "cmos-2-5-2": REPO / "examples/devices/cmos-2-5-2.toml",
    "optical-2-5-2": REPO / "examples/devices/optical-2-5-2.toml",
}


async def bench_device(path: Path, steps: int, averages: int, seed: int) -> dict[str, Any]:
    sub = open_substrate(path, seed=seed)
    rng = np.random.default_rng(seed)
    model = sub.model
    n = model.n
    inputs = np.asarray(model.roles.inputs)
    target = np.array([-0.2, 0.2])[: len(model.roles.outputs)]
    omega = np.zeros(n)
    omega[~np.isin(np.arange(n), inputs)] = rng.normal(0.0, 0.2, n - len(inputs))
    times = []
    locked = 0
    async with sub:
        for k in range(steps + 10):
            w = omega.copy()
            w[inputs] = rng.uniform(-1.5, 1.5, len(inputs))
            t0 = time.perf_counter()
            await sub.set_frequencies(w)
            free = await sub.read_phases(averages)
            await sub.clamp(target, 0.1)
            plus = await sub.read_phases(averages)
            await sub.clamp(target, 0.1, direction=-1)
            minus = await sub.read_phases(averages)
            await sub.release()
            dt = time.perf_counter() - t0
            if k >= 10:  # warm-up excluded
                times.append(dt)
                locked += int(free.locked and plus.locked and minus.locked)
    t = np.asarray(times) * 1e3
    return {
        "device": path.name,
        "steps": steps,
        "averages": averages,
        "median_ms": float(np.median(t)),
        "p90_ms": float(np.percentile(t, 90)),
        "mean_ms": float(t.mean()),
        "locked_fraction": locked / steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bench_emulators.json")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--averages", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = {
        name: asyncio.run(bench_device(p, args.steps, args.averages, args.seed))
        for name, p in DEVICES.items()
        if p.exists()
    }
    out = {
        "benchmark": "ep_step_host_time",
        "target_median_ms": 2.0,
        "cmos_meets_target": results.get("cmos-2-5-2", {}).get("median_ms", 1e9) <= 2.0,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    for name, r in results.items():
        print(
            f"{name}: median {r['median_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms "
            f"({r['steps']} steps, {r['averages']} averages, locked {r['locked_fraction']:.2f})"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
