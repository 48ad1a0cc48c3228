"""Training speed: vectorised engine vs the published code path (fsolve per sample).

Baseline (written here, following the seed paper's code path, arXiv 2604.10272): one seed at
a time, per training sample ``scipy.optimize.fsolve`` on the reduced equilibrium equations
(finite-difference Jacobian, started from zero phases) for the free state, then again
(started from the free state) for the nudged state; −Δθ/β gradient, clip, update, projection
— the same update rule as :mod:`phasegrad_hw.engine.ensemble`.

Measured and written as JSON (default ``benchmarks/results/bench_training.json``):

* ``one_seed``: one seed, 200 epochs /a/ vs /i/ (real CSV if present, else synthetic data):
  engine wall time vs baseline wall time (the baseline is run for ``--baseline-epochs``
  epochs and extrapolated linearly to 200; stated in the JSON).
* ``ensemble``: the 100-seed ω-only study in ensemble mode vs 100 baseline runs
  (extrapolated from ``--baseline-seeds`` seeds × ``--baseline-epochs`` epochs).

Run: ``python benchmarks/bench_training.py [--out PATH] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import fsolve

from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.presets import vowel_2_5_2
from phasegrad_hw.engine.ensemble import _load_kernels, train_seeds
from phasegrad_hw.engine.members import TOPOLOGY_STREAM, TrainConfig
from phasegrad_hw.learning.seeding import initial_omega
from phasegrad_hw.learning.tasks import Dataset, Encoding, load_vowels, synthetic_vowels
from phasegrad_hw.studies.vowels import CONVERGENCE, SUCCESS

REPO = Path(__file__).resolve().parents[1]
CSV = REPO.parent / "shared" / "data" / "hillenbrand_vowels.csv"
Array = NDArray[np.float64]


def baseline_run(
    seed: int, data: Dataset, epochs: int, cfg: TrainConfig, enc: Encoding, xtol: float = 1e-12
) -> tuple[Array, float]:
    """One seed trained the published way (fsolve per sample). Returns (ω, test accuracy)."""
    model: DeviceModel = vowel_2_5_2(np.random.default_rng([seed, TOPOLOGY_STREAM]))
    omega = initial_omega(model, np.random.default_rng(seed), "random")
    K = model.coupling_matrix()
    n = model.n
    ref = model.roles.reference
    keep = np.arange(n) != ref
    inp = np.asarray(model.roles.inputs)
    out = model.outputs
    learn = np.zeros(n, dtype=bool)
    learn[model.roles.hidden + model.roles.outputs] = True
    beta = np.zeros(n)
    beta[out] = cfg.rule.beta

    def full(r: Array) -> Array:
        th = np.zeros(n)
        th[keep] = r
        return th

    def residual(r: Array, wc: Array, tgt: Array | None) -> Array:
        th = full(r)
        f = wc + (K * np.sin(th[None, :] - th[:, None])).sum(axis=1)
        if tgt is not None:
            f = f + beta * (tgt - th)
        return f[keep]

    def equilibrium(w: Array, tgt: Array | None, guess: Array) -> Array:
        wc = w - w.mean()
        return full(fsolve(residual, guess[keep], args=(wc, tgt), xtol=xtol))

    for e in range(epochs):
        for i in np.random.default_rng([seed, e]).permutation(len(data.y_train)):
            w = omega.copy()
            w[inp] = enc.input_frequencies(data.x_train[i])
            th = equilibrium(w, None, np.zeros(n))
            tgt = np.zeros(n)
            tgt[out] = enc.clamp_targets(int(data.y_train[i]), th[out])
            thb = equilibrium(w, tgt, th)
            g = -(thb - th) / cfg.rule.beta
            g[ref] = 0.0
            if np.abs(thb - th).max() > cfg.rule.basin_jump_rad:
                continue
            omega = np.where(
                learn,
                np.clip(
                    omega - cfg.rule.lr_omega * np.clip(g, -cfg.rule.clip, cfg.rule.clip), -3.0, 3.0
                ),
                omega,
            )
    right = 0
    for x, y in zip(data.x_test, data.y_test, strict=True):
        w = omega.copy()
        w[inp] = enc.input_frequencies(x)
        th = equilibrium(w, None, np.zeros(n))
        right += int(enc.predict(np.angle(np.exp(1j * th[out])))) == int(y)
    return omega, right / len(data.y_test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_training.json"
    )
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--baseline-seeds", type=int, default=3)
    ap.add_argument("--baseline-epochs", type=int, default=5)
    ap.add_argument(
        "--baseline-xtol",
        type=float,
        default=1e-12,
        help="fsolve xtol (1e-12 matches the engine's accuracy; scipy's default is 1.49e-8)",
    )
    ap.add_argument("--quick", action="store_true", help="20 epochs, 20 seeds (smoke test)")
    a = ap.parse_args()
    if a.quick:
        a.epochs, a.seeds, a.baseline_seeds, a.baseline_epochs = 20, 20, 1, 1
    data = load_vowels(CSV) if CSV.exists() else synthetic_vowels()
    enc = Encoding(readout="argmax_cos")
    cfg = TrainConfig(epochs=a.epochs, test_every=a.epochs)

    # baseline: seeds one at a time, fewer epochs, extrapolated
    base_cpu, base_wall, agree = [], [], []
    for s in range(a.baseline_seeds):
        c, t = time.process_time(), time.perf_counter()
        w_base, _ = baseline_run(s, data, a.baseline_epochs, cfg, enc, a.baseline_xtol)
        base_cpu.append(time.process_time() - c)
        base_wall.append(time.perf_counter() - t)
        short = train_seeds(
            vowel_2_5_2, [s], data, enc, cfg.model_copy(update={"epochs": a.baseline_epochs})
        )
        agree.append(float(np.abs(short.omega[0] - w_base).max()))
    scale = a.epochs / a.baseline_epochs
    # conservative: the fastest measured baseline seed stands for every baseline run
    base_seed_cpu = float(np.min(base_cpu)) * scale
    base_seed_wall = float(np.min(base_wall)) * scale
    base_seed_cpu_median = float(np.median(base_cpu)) * scale

    def timed(seeds: list[int], parallel: bool = False) -> tuple[float, float, Any]:
        c, t = time.process_time(), time.perf_counter()
        r = train_seeds(
            vowel_2_5_2, seeds, data, enc, cfg.model_copy(update={"parallel": parallel})
        )
        return time.process_time() - c, time.perf_counter() - t, r

    for par in (False, True):  # JIT warm-up (compiled kernels are cached on disk)
        train_seeds(
            vowel_2_5_2, [0, 1], data, enc, cfg.model_copy(update={"epochs": 1, "parallel": par})
        )
    one_cpu, one_wall, one = timed([0])
    ens_cpu, ens_wall, ens = timed(list(range(a.seeds)))
    par_cpu, par_wall, par = timed(list(range(a.seeds)), parallel=True)
    identical = bool(np.array_equal(par.omega, ens.omega))
    kernels = _load_kernels() is not None
    result = {
        "task": data.name,
        "epochs": a.epochs,
        "engine": "numba kernels" if kernels else "numpy",
        "timing": "speedups from CPU time (process_time), robust to other load on the machine; "
        "wall-clock speedups alongside",
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_avg_1min": os.getloadavg()[0],
        },
        "baseline": {
            "method": "scipy.optimize.fsolve per sample (free from zero phases, nudged from "
            "free), one seed at a time",
            "fsolve_xtol": a.baseline_xtol,
            "seeds_measured": a.baseline_seeds,
            "epochs_measured": a.baseline_epochs,
            "cpu_seconds_measured": base_cpu,
            "wall_seconds_measured": base_wall,
            "extrapolated": f"linearly from {a.baseline_epochs} to {a.epochs} epochs per seed, "
            f"and from {a.baseline_seeds} seeds to {a.seeds} seeds",
            "cpu_seconds_per_seed": base_seed_cpu,
            "cpu_seconds_per_seed_rule": "fastest measured seed (conservative), extrapolated",
            "cpu_seconds_per_seed_median": base_seed_cpu_median,
            "max_abs_omega_difference_vs_engine": max(agree),
        },
        "one_seed": {
            "engine_cpu_seconds": one_cpu,
            "engine_wall_seconds": one_wall,
            "baseline_cpu_seconds": base_seed_cpu,
            "speedup": base_seed_cpu / one_cpu,
            "speedup_wall": base_seed_wall / one_wall,
            "target": 5.0,
            "test_accuracy": float(one.test_accuracy[0]),
        },
        "ensemble": {
            "seeds": a.seeds,
            "params": "omega",
            "engine_cpu_seconds": ens_cpu,
            "engine_wall_seconds": ens_wall,
            "baseline_cpu_seconds": base_seed_cpu * a.seeds,
            "speedup": base_seed_cpu * a.seeds / ens_cpu,
            "speedup_vs_median_baseline": base_seed_cpu_median * a.seeds / ens_cpu,
            "speedup_wall": base_seed_wall * a.seeds / ens_wall,
            "target": 100.0,
            "success_argmax_cos": int((ens.train_accuracy > SUCCESS).sum()),
            "success_definition": CONVERGENCE,
        },
        "ensemble_parallel": {
            "seeds": a.seeds,
            "note": "members spread over all CPU threads (numba prange); identical parameters "
            "to the serial ensemble; speedup = 100 sequential baseline runs (wall) / engine wall",
            "threads": os.cpu_count(),
            "identical_to_serial": identical,
            "engine_cpu_seconds": par_cpu,
            "engine_wall_seconds": par_wall,
            "speedup_wall": base_seed_wall * a.seeds / par_wall,
            "target": 100.0,
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
