"""Chip-scale learning through the asyncio controller on the emulated CMOS 64-64-10 chip
(docs/design.md §8; issue #12): seconds per digits epoch and equilibria per second.

The shipped ``examples/devices/cmos-64-64-10.toml`` (default noise, mismatch, DAC resolution)
is copied to a temporary directory, its bias map calibrated there (``calibrate transfer``:
the threshold mismatch detunes the rings by ≈ 0.3 model units, more than many hidden
oscillators' lock range) and, unless ``--beta``/``--averages`` are given, β and averages taken
from ``calibrate noise`` (as ``train`` does). Then ``--epochs`` epochs of the digits task
(1 437 training samples, or the first ``--samples``) run through
:func:`phasegrad_hw.learning.loop.train_on_substrates` with the layered defaults
(:func:`phasegrad_hw.studies.layered_training.controller_setup`). Reported per epoch: wall and
CPU seconds of the epoch (training pass with online train accuracy, plus the test split's
free reads), locked states solved (free + ±β per training sample, one per test sample) per
wall second, skipped samples, test accuracy. Target: ≤ 60 s per full epoch. The machine's
load average is recorded (the emulator is CPU-bound; a loaded machine stretches wall time).

Usage::

    python benchmarks/bench_chip_controller.py [--out benchmarks/results/chip_controller.json]
        [--epochs 1] [--samples N] [--seed 0] [--beta B --averages A]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from phasegrad_hw.device.registry import open_substrate  # noqa: E402
from phasegrad_hw.learning import tasks  # noqa: E402
from phasegrad_hw.learning.loop import LoopObserver, LoopOptions, train_on_substrates  # noqa: E402
from phasegrad_hw.studies.layered_training import controller_setup  # noqa: E402
from phasegrad_hw.studies.training import TrainOptions, prepare  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEVICE = ROOT / "examples" / "devices" / "cmos-64-64-10.toml"


class _Clock(LoopObserver):
    """CPU seconds per epoch (process time between epoch ends)."""

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self._t = time.process_time()

    def on_epoch_end(self, state: Any) -> None:
        now = time.process_time()
        self.cpu.append(now - self._t)
        self._t = now


def _calibrate(device: Path, what: str) -> None:
    cmd = [sys.executable, "-m", "phasegrad_hw.cli", "calibrate", what, "--device", str(device),
           "--out", str(device.parent / what), "--no-figures"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)


async def run(args: argparse.Namespace, device: Path) -> dict[str, Any]:
    upd: dict[str, Any] = {}
    if args.beta is not None:
        upd = {"beta": args.beta, "averages": args.averages, "mode": "centred"}
    setup = prepare(TrainOptions(device=str(device), task="digits", seed=args.seed, **upd))
    ds = tasks.digits(seed=args.seed)
    if args.samples:
        ds = dataclasses.replace(ds, x_train=ds.x_train[: args.samples],
                                 y_train=ds.y_train[: args.samples])  # fmt: skip
    sub = open_substrate(device, seed=args.seed)
    cfg, enc, params = controller_setup(setup.options, sub.model, setup.noise is not None)
    clock = _Clock()
    async with sub:
        t0 = time.perf_counter()
        res = await train_on_substrates(
            [sub], ds, enc, cfg,
            LoopOptions(epochs=args.epochs, seed=args.seed, params=params, train_eval="online"),
            [clock],
        )  # fmt: skip
        wall = time.perf_counter() - t0
    n_tr, n_te = len(ds.y_train), len(ds.y_test)
    per_epoch = [
        {
            "epoch": h.epoch,
            "wall_s": h.seconds,
            "cpu_s": cpu,
            "equilibria_per_s": (n_tr * 3 - h.skipped * 2 + n_te) / h.seconds,
            "skipped": h.skipped,
            "train_accuracy": h.train_accuracy,
            "test_accuracy": h.test_accuracy,
            "loss": h.loss,
        }
        for h, cpu in zip(res.state.history, clock.cpu, strict=True)
    ]  # (a sample whose free read does not lock is not nudged: ≥ 1 state, counted as 3 − 2)
    return {
        "device": str(DEVICE.relative_to(ROOT)),
        "train_samples": n_tr,
        "test_samples": n_te,
        "ep_config": cfg.model_dump(),
        "noise_map": setup.noise is not None,
        "epochs": per_epoch,
        "seconds_total": wall,
        "final_test_accuracy": res.final_test_accuracy,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "chip_controller.json")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--samples", type=int, default=0, help="first N training samples (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beta", type=float, default=None, help="skip calibrate noise: this β")
    ap.add_argument("--averages", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        device = Path(tmp) / DEVICE.name
        shutil.copy(DEVICE, device)
        t = time.perf_counter()
        _calibrate(device, "transfer")
        if args.beta is None:
            _calibrate(device, "noise")
        cal_s = time.perf_counter() - t
        out = asyncio.run(run(args, device))
    out["calibration_s"] = cal_s
    out["load_average"] = os.getloadavg()
    out["cpu_count"] = os.cpu_count()
    out["python"] = platform.python_version()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "ep_config"}, indent=2))


if __name__ == "__main__":
    main()
