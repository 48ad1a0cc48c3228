"""MQTT costs: training throughput with telemetry on vs off, remote EP step latency.

Starts its own mosquitto (tests/mosquitto.py: loopback, password file, ACL) unless ``--broker``
names one. Writes ``benchmarks/results/bench_mqtt.json``:

* ``throughput``: samples/s of :func:`train_on_substrates` on the in-process 2+5+2 simulated
  device with telemetry off, on (default 0.5 s step rate limit) and on with every step
  published; ratios on/off (median of alternating repeats; the machine may be shared).
* ``remote``: EP step latency (ms) through ``phasegrad-hw agent`` in another process vs the
  same device in-process, and the round trip of one request (read_phases).

    python benchmarks/bench_mqtt.py [--epochs 3] [--repeats 5] [--steps 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from phasegrad_hw.backends.mqtt import MqttSubstrate
from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.fleet.telemetry import Telemetry
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.loop import LoopOptions, train_on_substrates
from phasegrad_hw.learning.tasks import Encoding, synthetic_vowels
from phasegrad_hw.wire.mqtt import BrokerConfig

NAME = "bench/chip"
AGENT = (
    "import sys; from phasegrad_hw.cli.agent import AgentOptions, run_agent; "
    "run_agent(AgentOptions(device=sys.argv[1], broker=sys.argv[2], name=sys.argv[3]))"
)


def model_2_5_2() -> SimulatedDeviceModel:
    rng = np.random.default_rng(0)
    edges = [
        {"i": i, "j": h, "k": float(2 * rng.uniform(0.5, 1.5))} for i in (0, 1) for h in range(2, 7)
    ]
    edges += [
        {"i": h, "j": o, "k": float(2 * rng.uniform(0.5, 1.5))} for h in range(2, 7) for o in (7, 8)
    ]
    edges += [{"i": h, "j": h + 1, "k": float(2 * rng.uniform(0.5, 1.0))} for h in range(2, 6)]
    return SimulatedDeviceModel.model_validate(
        {
            "n_oscillators": 9,
            "edges": edges,
            "readout_noise_rad": 0.01,
            "roles": {
                "inputs": [0, 1],
                "hidden": [2, 3, 4, 5, 6],
                "outputs": [7, 8],
                "reference": 0,
            },
        }
    )


async def throughput(
    model: SimulatedDeviceModel, broker: BrokerConfig, epochs: int, mode: str
) -> tuple[float, float]:
    """Training samples per wall second and per CPU second of this process (the CPU figure
    includes the telemetry sender, which runs in the same process, and is insensitive to
    other load on a shared machine). Accuracy evaluations are included."""
    data = synthetic_vowels(("a", "i"), n_per_class=80, seed=0)
    tm: Telemetry | None = None
    if mode != "off":
        tm = Telemetry(
            broker, NAME, step_interval_s=0.0 if mode == "every_step" else 0.5, queue_size=100_000
        )
        await tm.start()
    async with SimulatedSubstrate(model) as sub:
        t0, c0 = time.perf_counter(), time.process_time()
        await train_on_substrates(
            [sub],
            data,
            Encoding(),
            EPConfig(),
            LoopOptions(epochs=epochs, seed=0),
            [tm] if tm is not None else [],
        )
        if tm is not None:  # count the sending of everything published during training
            while tm.queue:
                await asyncio.sleep(0.001)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    if tm is not None:
        await tm.stop()
        assert tm.stats.dropped == 0 and tm.stats.sent == tm.stats.queued
    n = len(data.x_train) * epochs
    return n / dt, n / dc


async def step_latency(sub: Any, steps: int) -> list[float]:
    m = sub.model
    ctl = EPController([sub], EPConfig(), Parameters(np.zeros(m.n), m.coupling_values()))
    xs = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, 2))
    tgt = np.array([-0.2, 0.2])
    out = []
    for s in range(steps):
        t0 = time.perf_counter()
        await ctl.step([Sample(xs[s], tgt)])
        out.append((time.perf_counter() - t0) * 1e3)
    return out


async def read_latency(sub: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await sub.read_phases()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "median_ms": float(np.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "mean_ms": float(a.mean()),
        "n": int(a.size),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--broker", default=None, help="mqtt://USER:PASS@HOST:PORT (default: own)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    own = None
    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    if args.broker is None:
        from tests.mosquitto import Mosquitto

        own = Mosquitto(work / "broker")
        own.start()
        uri_ctl, uri_agent = own.uri("controller"), own.uri("agent")
    else:
        uri_ctl = uri_agent = args.broker
    broker, _, _ = BrokerConfig.parse(uri_ctl)
    model = model_2_5_2()
    dev = work / "dev.toml"
    model.save(dev)
    result: dict[str, Any] = {"broker": broker.uri(), "device": "simulated 2+5+2, noise 0.01 rad"}
    agent = None
    try:
        # -- throughput with/without telemetry (alternating repeats) --------------------
        wall: dict[str, list[float]] = {"off": [], "on": [], "every_step": []}
        cpu: dict[str, list[float]] = {"off": [], "on": [], "every_step": []}
        for _ in range(args.repeats):  # alternating, so slow phases of the machine hit all
            for mode in wall:
                w, c = asyncio.run(throughput(model, broker, args.epochs, mode))
                wall[mode].append(w)
                cpu[mode].append(c)

        def pair_ratio(d: dict[str, list[float]], mode: str) -> float:
            return statistics.median(a / b for a, b in zip(d[mode], d["off"], strict=True))

        result["throughput"] = {
            "samples_per_s": {k: statistics.median(v) for k, v in wall.items()},
            "samples_per_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
            "ratio_on_vs_off": pair_ratio(wall, "on"),
            "ratio_every_step_vs_off": pair_ratio(wall, "every_step"),
            "cpu_ratio_on_vs_off": pair_ratio(cpu, "on"),
            "cpu_ratio_every_step_vs_off": pair_ratio(cpu, "every_step"),
            "all_wall": wall,
            "all_cpu": cpu,
            "note": "ratios: median over repeats of (mode / the adjacent off run)",
        }
        # -- remote EP step latency --------------------------------------------------------
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, str(dev), uri_agent, NAME],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert agent.stdout is not None
        line = agent.stdout.readline().strip()
        if line != f"agent {NAME} ready":
            raise RuntimeError(f"agent did not start: {line!r}")

        async def remote() -> dict[str, Any]:
            sub = MqttSubstrate(broker, NAME, model=model)
            async with sub:
                reads = await read_latency(sub, args.steps)
                steps = await step_latency(sub, args.steps)
            async with SimulatedSubstrate(model) as local:
                steps_local = await step_latency(local, args.steps)
            return {
                "ep_step_remote": summary(steps),
                "ep_step_in_process": summary(steps_local),
                "read_phases_round_trip": summary(reads),
                "mqtt_overhead_per_step_ms": float(np.median(steps) - np.median(steps_local)),
            }

        result["remote"] = asyncio.run(remote())
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        if own is not None:
            own.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_mqtt.json"
    path.write_text(json.dumps(result, indent=2))
    t, r = result["throughput"], result["remote"]
    print(
        f"throughput (samples/s): off {t['samples_per_s']['off']:.0f}, on "
        f"{t['samples_per_s']['on']:.0f} ({100 * t['ratio_on_vs_off']:.1f} %), every step "
        f"{t['samples_per_s']['every_step']:.0f} ({100 * t['ratio_every_step_vs_off']:.1f} %); "
        f"per CPU s: on {100 * t['cpu_ratio_on_vs_off']:.1f} %, every step "
        f"{100 * t['cpu_ratio_every_step_vs_off']:.1f} % of off"
    )
    print(
        f"EP step: remote {r['ep_step_remote']['median_ms']:.2f} ms, in-process "
        f"{r['ep_step_in_process']['median_ms']:.2f} ms; read round trip "
        f"{r['read_phases_round_trip']['median_ms']:.2f} ms  -> {path}"
    )


if __name__ == "__main__":
    main()
