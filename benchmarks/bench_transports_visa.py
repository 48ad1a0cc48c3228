"""EP steps per second: in-process chip emulator vs the same chip behind the emulated SCPI
bench over TCP (pyvisa-py, three instruments, one shared chip).

The bench emulator runs in a separate process (``emulate bench``), like LAN instruments; with
``--emulator thread`` it shares this process instead. Each timing is the best of
``--repeats`` runs of ``--steps`` controller steps (the machine may be shared). Writes
``benchmarks/results/transports_visa.json``.

    python benchmarks/bench_transports_visa.py [--steps 200] [--mode one_sided|centred]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from phasegrad_hw.backends.visa import VisaBench
from phasegrad_hw.backends.visa_config import VisaBenchModel, bench_for_chip
from phasegrad_hw.device.registry import load_device_model, open_substrate
from phasegrad_hw.device.substrate import OscillatorSubstrate
from phasegrad_hw.firmware_models.instruments import BenchEmulator
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.testing.benches import emulated_bench

CMOS_FILE = REPO / "examples" / "devices" / "cmos-2-5-2.toml"


def chip_file(tmp: Path) -> Path:
    if CMOS_FILE.exists():
        return CMOS_FILE
    from phasegrad_hw.device.presets import layered

    path = tmp / "simulated-2-5-2.toml"
    layered(2, 5, 2, np.random.default_rng(0)).save(path)
    return path


async def _run_steps(sub: OscillatorSubstrate, mode: str, steps: int) -> float:
    m = sub.model
    ctl = EPController(
        [sub],
        EPConfig(rule=EPRule(mode=mode)),  # type: ignore[arg-type]
        Parameters(np.zeros(m.n), m.coupling_values()),
    )
    xs = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, 2))
    tgt = np.array([-0.2, 0.2])
    t0 = time.perf_counter()
    for s in range(steps):
        await ctl.step([Sample(xs[s], tgt)])
    return (time.perf_counter() - t0) / steps


async def time_both(
    local: OscillatorSubstrate, bench: OscillatorSubstrate, mode: str, steps: int, repeats: int
) -> tuple[float, float]:
    """Best seconds per EP step of each, runs interleaved (a shared machine's load changes)."""
    best_local = best_bench = float("inf")
    async with local, bench:
        for _ in range(repeats):
            best_local = min(best_local, await _run_steps(local, mode, steps))
            best_bench = min(best_bench, await _run_steps(bench, mode, steps))
    return best_local, best_bench


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mode", choices=["one_sided", "centred"], default="one_sided")
    ap.add_argument("--emulator", choices=["process", "thread"], default="process")
    ap.add_argument(
        "--io-mode",
        choices=["async", "thread", "inline"],
        default="async",
        help="driver I/O: wait on the event loop (default), in a worker thread, or blocking",
    )
    ap.add_argument(
        "--link",
        choices=["auto", "socket", "pyvisa"],
        default="auto",
        help="driver link: its own socket for SOCKET resources (auto), or pyvisa-py",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = chip_file(tmp)
        chip = load_device_model(path)
        local = open_substrate(path, seed=0)
        if args.emulator == "thread":
            res = dict.fromkeys(("smu", "phase_meter", "injection"), "TCPIP::127.0.0.1::1::SOCKET")
            emu = BenchEmulator(bench_for_chip(chip, res), seed=0)
            with emu.running():
                bench = VisaBench(emu.bench_config(io_mode=args.io_mode, link=args.link))
                in_process, tcp = asyncio.run(
                    time_both(local, bench, args.mode, args.steps, args.repeats)
                )
        else:
            out = tmp / "bench.toml"
            with emulated_bench(path, out, "--seed", "0"):
                model = load_device_model(out)
                assert isinstance(model, VisaBenchModel)
                bench = VisaBench(
                    model.model_copy(update={"io_mode": args.io_mode, "link": args.link})
                )
                in_process, tcp = asyncio.run(
                    time_both(local, bench, args.mode, args.steps, args.repeats)
                )
    rt = bench.round_trips / max(1, args.steps * args.repeats)
    result = {
        "benchmark": "transports_visa",
        "chip": chip.name,
        "backend_behind_bench": chip.backend,
        "mode": args.mode,
        "steps": args.steps,
        "repeats": args.repeats,
        "emulator": args.emulator,
        "io_mode": args.io_mode,
        "link": args.link,
        "in_process_steps_per_s": 1.0 / in_process,
        "tcp_bench_steps_per_s": 1.0 / tcp,
        "tcp_fraction_of_in_process": in_process / tcp,
        "round_trips_per_step": rt,
        "retries_used": bench.retries_used,
        "target_fraction": 0.25,
        "load_average_1min": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transports_visa.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
