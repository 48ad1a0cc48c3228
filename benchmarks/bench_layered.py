"""Layered chip-scale numerics (docs/design.md §8): solver throughput, epoch time, accuracy.

* equilibria per second, 64 inputs + 2 bias + 64 hidden + 10 outputs, batched: free states
  (feed-forward start) plus the +β and −β nudged states (warm-started from the free state) of
  the digits training split, at parameters after one training epoch; batch 32 the way the
  engine solves them (one :class:`~phasegrad_hw.physics.layered.LayeredBatch` per mini-batch,
  ±β in one Newton run), batch 32 as three ``solve_layered`` calls, and the whole split in one
  call (target ≥ 10 000 per second on one core at batch 32);
* seconds per digits epoch of :func:`phasegrad_hw.engine.layered.train_layered` (1 437 training
  samples, no validation split, centred, batch 32): CPU time (``time.process_time``) and wall
  time of the training pass (target ≤ 1.5 s CPU on one core);
* seconds per epoch through ``phasegrad-hw train --device
  examples/devices/simulated-64-64-10.toml --task digits`` (the held-input device dispatched to
  the same engine; wall time of the training pass plus the evaluation of the validation and
  test splits, as ``train`` reports it in ``seconds_per_epoch``);
* with ``--train``: full runs with the default configuration, test accuracy per seed (target:
  mean ≥ 95 %, every seed ≥ 94 %); with ``--train-cli`` the same through ``train`` on the
  shipped device file (the acceptance run of issue #12).

* with ``--compare REV``: before/after, paired — the equilibria and epoch measurements of the
  tree at git revision REV (extracted to a temporary directory, imported through PYTHONPATH)
  and of this tree, in alternating subprocesses (``--pairs`` rounds, best of each side), so
  the machine's load hits both sides alike; written under ``"paired"``.

BLAS and numba are restricted to one thread before numpy is imported. Usage::

    python benchmarks/bench_layered.py [--out benchmarks/results/layered.json] [--train]
        [--train-cli] [--seeds 0 1 2 3 4] [--epochs N] [--compare REV [--pairs 3]]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from phasegrad_hw.engine.layered import (  # noqa: E402
    LayeredConfig,
    digits_data,
    train_layered,
)
from phasegrad_hw.physics import layered  # noqa: E402
from phasegrad_hw.physics.multiclass import SoftmaxCE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


Solve = Callable[[Any, Any, Any, Any, SoftmaxCE, float], tuple[Any, Any, Any]]


def three_calls(net: Any, w: Any, K: Any, xs: Any, loss: SoftmaxCE, beta: float) -> Any:
    """Free, +β, −β states as three :func:`solve_layered` calls."""
    free = layered.solve_layered(net, w, K, xs)
    plus = layered.solve_layered(net, w, K, xs, theta0=free.theta, loss=loss, beta=beta)
    minus = layered.solve_layered(
        net, w, K, xs, theta0=free.theta, loss=loss, beta=beta, direction=-1
    )
    return free, plus, minus


def engine_way(net: Any, w: Any, K: Any, xs: Any, loss: SoftmaxCE, beta: float) -> Any:
    """Free, +β, −β states as the engine solves them: one LayeredBatch, ±β in one run."""
    batch = layered.LayeredBatch(net, w, K, xs)
    free = batch.solve()
    plus, minus = batch.nudged_pair(free.theta, loss, beta)
    return free, plus, minus


def equilibria_rate(repeats: int = 3) -> dict[str, Any]:
    """Free + ±β nudged equilibria per CPU second on the digits training split."""
    cfg = LayeredConfig(epochs=1, val_fraction=0.0)
    data = digits_data(cfg.seed, 0.0)
    run = train_layered(cfg, data)
    net, w, K = run.net, run.omega, run.K
    x, y = data.train.phases, data.train.labels
    out: dict[str, Any] = {"samples": int(y.size), "beta": cfg.beta}
    cases: list[tuple[str, int, Solve]] = [
        ("batch_32", 32, engine_way),
        ("batch_32_three_calls", 32, three_calls),
        ("one_call", y.size, three_calls),
    ]
    if not hasattr(layered, "LayeredBatch"):  # a tree from before LayeredBatch (--compare)
        cases[0] = ("batch_32", 32, three_calls)
    for name, batch, solve in cases:
        best_cpu, best_wall = np.inf, np.inf
        ok = 0
        iters = [0, 0]
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            ok = 0
            iters = [0, 0]
            for s in range(0, y.size, batch):
                xs, loss = x[s : s + batch], SoftmaxCE(y[s : s + batch], cfg.loss_scale)
                free, plus, minus = solve(net, w, K, xs, loss, cfg.beta)
                ok += int((free.ok & plus.ok & minus.ok).sum())
                iters[0] += int(free.iterations.sum())
                iters[1] += int(plus.iterations.sum() + minus.iterations.sum())
            best_cpu = min(best_cpu, time.process_time() - c0)
            best_wall = min(best_wall, time.perf_counter() - t0)
        n_eq = 3 * y.size
        out[name] = {
            "solver": solve.__name__,
            "equilibria": n_eq,
            "cpu_s": best_cpu,
            "wall_s": best_wall,
            "per_cpu_second": n_eq / best_cpu,
            "per_wall_second": n_eq / best_wall,
            "locked_fraction": ok / y.size,
            "mean_iterations_free": iters[0] / y.size,
            "mean_iterations_nudged": iters[1] / (2 * y.size),
        }
        print(f"{name}: {n_eq / best_cpu:,.0f} equilibria per CPU s ({n_eq / best_wall:,.0f} wall)")
    return out


def epoch_time(epochs: int = 3) -> dict[str, Any]:
    """CPU and wall seconds of the training pass of a digits epoch (1 437 samples)."""
    cfg = LayeredConfig(epochs=epochs, val_fraction=0.0)
    run = train_layered(cfg)
    cpu = [h.cpu_s for h in run.history]
    wall = [h.wall_s for h in run.history]
    print(f"epoch: median {np.median(cpu):.3f} s CPU, {np.median(wall):.3f} s wall")
    return {
        "train_samples": int(digits_data(0, 0.0).train.labels.size),
        "cpu_s": cpu,
        "wall_s": wall,
        "median_cpu_s": float(np.median(cpu)),
        "median_wall_s": float(np.median(wall)),
    }


DEVICE = Path(__file__).resolve().parents[1] / "examples" / "devices" / "simulated-64-64-10.toml"


def train_cli(seed: int, epochs: int | None) -> dict[str, Any]:
    """One ``train`` run (the function behind the command) on the shipped 64-64-10 device."""
    import asyncio

    from phasegrad_hw.studies import TrainOptions, train_device
    from phasegrad_hw.studies.training import prepare

    kw: dict[str, Any] = {"device": str(DEVICE), "task": "digits", "seed": seed}
    if epochs is not None:
        kw["epochs"] = epochs
    res: dict[str, Any] = asyncio.run(train_device(prepare(TrainOptions(**kw))))
    res.pop("history", None)
    return res


def train_cli_epoch_time(epochs: int = 2) -> dict[str, Any]:
    res = train_cli(0, epochs)
    print(f"train (CLI path): {res['seconds_per_epoch']:.3f} s per epoch (wall)")
    return {
        "epochs": epochs,
        "seconds_per_epoch": res["seconds_per_epoch"],
        "seconds": res["seconds"],
    }


def accuracy_runs_cli(seeds: list[int], epochs: int | None) -> dict[str, Any]:
    """``train --device simulated-64-64-10.toml --task digits --seed S`` with its defaults."""
    per = []
    for seed in seeds:
        row = {"seed": seed, **train_cli(seed, epochs)}
        per.append(row)
        print(f"train seed {seed}: test {row['final_test_accuracy']:.4f} in {row['seconds']:.0f} s")
    acc = np.array([r["final_test_accuracy"] for r in per])
    return {
        "per_seed": per,
        "mean_test_accuracy": float(acc.mean()),
        "min_test_accuracy": float(acc.min()),
        "target_met": bool(acc.mean() >= 0.95 and acc.min() >= 0.94),
    }


def accuracy_runs(seeds: list[int], epochs: int | None) -> dict[str, Any]:
    """Full runs with the default configuration, one per seed."""
    per: list[dict[str, Any]] = []
    for seed in seeds:
        cfg = LayeredConfig(seed=seed, **({} if epochs is None else {"epochs": epochs}))
        t0 = time.perf_counter()
        run = train_layered(cfg)
        row = {
            "seed": seed,
            "test_accuracy": run.test_accuracy,
            "val_accuracy": run.val_accuracy,
            "best_epoch": run.best_epoch,
            "final_test_accuracy": run.history[-1].test_accuracy,
            "unlocked_per_epoch": [h.unlocked for h in run.history],
            "median_epoch_cpu_s": float(np.median([h.cpu_s for h in run.history])),
            "median_epoch_wall_s": float(np.median([h.wall_s for h in run.history])),
            "run_wall_s": time.perf_counter() - t0,
        }
        per.append(row)
        print(f"seed {seed}: test {run.test_accuracy:.4f} (epoch {run.best_epoch})")
    acc = np.array([r["test_accuracy"] for r in per])
    return {
        "config": LayeredConfig(epochs=epochs or LayeredConfig().epochs).model_dump(
            exclude={"seed"}
        ),
        "per_seed": per,
        "mean_test_accuracy": float(acc.mean()),
        "min_test_accuracy": float(acc.min()),
        "target_met": bool(acc.mean() >= 0.95 and acc.min() >= 0.94),
    }


def measure() -> dict[str, Any]:
    """The equilibria and epoch measurements of the tree this process imports."""
    return {
        "equilibria": equilibria_rate(),
        "epoch": epoch_time(),
        "imported_from": str(Path(layered.__file__).resolve().parents[2]),
    }


def paired(rev: str, pairs: int) -> dict[str, Any]:
    """Before (git revision ``rev``) and after (this tree), alternating subprocesses."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev], check=True, capture_output=True
    ).stdout
    sha = subprocess.run(
        ["git", "-C", str(root), "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        for k in range(pairs):
            for side, path in (("before", tmp), ("after", str(root))):
                env = {**os.environ, "PYTHONPATH": path}
                proc = subprocess.run(
                    [sys.executable, __file__, "--measure-only"],
                    env=env, check=True, capture_output=True, text=True,
                )  # fmt: skip
                runs[side].append(json.loads(proc.stdout.splitlines()[-1]))
                print(f"pair {k} {side}: " + _summary(runs[side][-1]))
    out: dict[str, Any] = {"before_rev": sha, "pairs": pairs}
    for side, rs in runs.items():
        best = {
            name: max(r["equilibria"][name]["per_cpu_second"] for r in rs)
            for name in ("batch_32", "batch_32_three_calls", "one_call")
        }
        out[side] = {
            "equilibria_per_cpu_second": best,
            "epoch_cpu_s": min(r["epoch"]["median_cpu_s"] for r in rs),
            "epoch_wall_s": min(r["epoch"]["median_wall_s"] for r in rs),
            "runs": rs,
        }
    b32 = out["after"]["equilibria_per_cpu_second"]["batch_32"]
    out["speedup_batch_32"] = b32 / out["before"]["equilibria_per_cpu_second"]["batch_32"]
    out["speedup_epoch"] = out["before"]["epoch_cpu_s"] / out["after"]["epoch_cpu_s"]
    print(f"batch 32: ×{out['speedup_batch_32']:.2f}, epoch: ×{out['speedup_epoch']:.2f}")
    return out


def _summary(r: dict[str, Any]) -> str:
    eq = r["equilibria"]
    return (
        f"batch 32 {eq['batch_32']['per_cpu_second']:,.0f}/s, three calls "
        f"{eq['batch_32_three_calls']['per_cpu_second']:,.0f}/s, epoch "
        f"{r['epoch']['median_cpu_s']:.3f} s CPU"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "layered.json")
    ap.add_argument("--train", action="store_true", help="full runs, accuracy per seed")
    ap.add_argument("--train-cli", action="store_true", help="full runs through `train`")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=None, help="epochs of the --train runs")
    ap.add_argument("--compare", metavar="REV", help="before/after against git revision REV")
    ap.add_argument("--pairs", type=int, default=3, help="alternating rounds of --compare")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure_only:  # one side of --compare: the result as the last line of stdout
        print(json.dumps(measure()))
        return
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "equilibria": equilibria_rate(),
        "epoch": epoch_time(),
        "train_cli_epoch": train_cli_epoch_time(),
    }
    if args.compare:
        report["paired"] = paired(args.compare, args.pairs)
    if args.train:
        report["training"] = accuracy_runs(args.seeds, args.epochs)
    if args.train_cli:
        report["training_cli"] = accuracy_runs_cli(args.seeds, args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
