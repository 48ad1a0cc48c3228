"""MQTT costs: training throughput with telemetry on vs off, remote EP step latency.

Starts its own mosquitto (tests/mosquitto.py: loopback, password file, ACL) unless ``--broker``
names one. Writes ``benchmarks/results/bench_mqtt.json``:

* ``throughput``: samples/s of :func:`train_on_substrates` on the in-process 2+5+2 simulated
  device with telemetry off, on (default 0.5 s step rate limit) and on with every step
  published; ratios on/off (median of alternating repeats; the machine may be shared).
* ``remote``: EP step latency (ms) through ``phasegrad-hw agent`` in another process vs the
  same device in-process, and the round trip of one request (read_phases) — measured in the
  same run on a mosquitto with its *default* configuration (no ``set_tcp_nodelay``) and on a
  tuned one (``set_tcp_nodelay true``), each with the agent's own broker probe (QoS 1
  exchange, ms), which shows the Nagle + delayed-ACK stall the QoS 0 request path avoids.
* ``train_cli``: ``phasegrad-hw train --device mqtt://…`` over the default-configured broker vs
  the same device file in-process, seconds per epoch (synthetic vowel task, 2+5+2).

    python benchmarks/bench_mqtt.py [--epochs 3] [--repeats 5] [--steps 300] [--out DIR]
        [--skip-throughput] [--cli-epochs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    "import logging, sys; from phasegrad_hw.cli.agent import AgentOptions, run_agent; "
    "logging.basicConfig(level=logging.INFO, format='%(message)s'); "
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


def start_agent(dev: Path, uri: str) -> subprocess.Popen[str]:
    """``run_agent`` in another process; returns once it serves."""
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(dev), uri, NAME],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != f"agent {NAME} ready":
        proc.kill()
        raise RuntimeError(f"agent did not start: {line!r}")
    return proc


async def remote_latency(
    model: SimulatedDeviceModel, brokers: dict[str, BrokerConfig], steps: int, blocks: int = 10
) -> dict[str, Any]:
    """EP step and read round trip (ms) through each broker's agent and in-process,
    interleaved in ``blocks`` rounds so that load phases of a shared machine hit all alike."""
    subs = {k: MqttSubstrate(b, NAME, model=model) for k, b in brokers.items()}
    local = SimulatedSubstrate(model)
    per = max(1, steps // blocks)
    ep: dict[str, list[float]] = {k: [] for k in [*subs, "in_process"]}
    reads: dict[str, list[float]] = {k: [] for k in subs}
    for sub in subs.values():
        await sub.connect()
    await local.connect()
    try:
        await asyncio.sleep(1.0)  # let the agents finish their broker probes
        hellos = {k: await s._call("hello", {}, in_session=False) for k, s in subs.items()}
        for _ in range(blocks):
            for k, sub in subs.items():
                reads[k] += await read_latency(sub, per)
                ep[k] += await step_latency(sub, per)
            ep["in_process"] += await step_latency(local, per)
    finally:
        for sub in subs.values():
            await sub.close()
        await local.close()
    out: dict[str, Any] = {"in_process": {"ep_step": summary(ep["in_process"])}}
    for k, sub in subs.items():
        out[k] = {
            "ep_step": summary(ep[k]),
            "read_phases_round_trip": summary(reads[k]),
            "transit_ms": sub.transit_ms,
            "agent_broker_probe_qos1_ms": hellos[k].get("broker_probe_ms"),
            "stall_warned": sub.stall_warned,
        }
    return out


def train_cli(device: str, work: Path, name: str, epochs: int) -> dict[str, Any]:
    """``phasegrad-hw train`` (synthetic vowels a,i) in a fresh process: seconds per epoch."""
    out = work / f"{name}.json"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "phasegrad_hw.cli", "train", "--device", device]
        + ["--epochs", str(epochs), "--seed", "0", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"train {name} failed: {proc.stderr[-2000:]}")
    res = json.loads(out.read_text())
    return {
        "seconds": res["seconds"],
        "seconds_per_epoch": res["seconds"] / epochs,
        "process_wall_s": wall,
        "final_test_accuracy": res["final_test_accuracy"],
    }


def throughputs(
    model: SimulatedDeviceModel, broker: BrokerConfig, epochs: int, repeats: int
) -> dict[str, Any]:
    """Training samples/s with telemetry off, on and on for every step (alternating repeats,
    so slow phases of a shared machine hit all modes)."""
    wall: dict[str, list[float]] = {"off": [], "on": [], "every_step": []}
    cpu: dict[str, list[float]] = {"off": [], "on": [], "every_step": []}
    for _ in range(repeats):
        for mode in wall:
            w, c = asyncio.run(throughput(model, broker, epochs, mode))
            wall[mode].append(w)
            cpu[mode].append(c)

    def pair_ratio(d: dict[str, list[float]], mode: str) -> float:
        return statistics.median(a / b for a, b in zip(d[mode], d["off"], strict=True))

    return {
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--broker", default=None, help="mqtt://USER:PASS@HOST:PORT (default: own)")
    ap.add_argument("--skip-throughput", action="store_true", help="Remote figures only.")
    ap.add_argument("--cli-epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    from tests.mosquitto import Mosquitto

    brokers: dict[str, tuple[str, str]] = {}  # name -> (controller URI, agent URI)
    owned: list[Mosquitto] = []
    if args.broker is None:
        for label, nodelay in (("default", False), ("tuned", True)):
            b = Mosquitto(work / f"broker-{label}", nodelay=nodelay)
            b.start()
            owned.append(b)
            brokers[label] = (b.uri("controller"), b.uri("agent"))
    else:
        brokers["given"] = (args.broker, args.broker)
    model = model_2_5_2()
    dev = work / "dev.toml"
    model.save(dev)
    first = BrokerConfig.parse(next(iter(brokers.values()))[0])[0]
    result: dict[str, Any] = {"device": "simulated 2+5+2, noise 0.01 rad"}
    try:
        # -- throughput with/without telemetry (alternating repeats) --------------------
        if not args.skip_throughput:
            result["throughput"] = throughputs(model, first, args.epochs, args.repeats)
        # -- remote EP step latency, per broker configuration (interleaved) --------------
        agents = [start_agent(dev, uri_agent) for _, uri_agent in brokers.values()]
        try:
            cfgs = {k: BrokerConfig.parse(uri)[0] for k, (uri, _) in brokers.items()}
            remote = asyncio.run(remote_latency(model, cfgs, args.steps))
        finally:
            for agent in agents:
                agent.terminate()
                agent.wait(10)
        if "default" in remote and "tuned" in remote:
            d, t = remote["default"]["ep_step"], remote["tuned"]["ep_step"]
            remote["default_vs_tuned_ep_step"] = d["median_ms"] / t["median_ms"]
        result["remote"] = remote
        # -- train CLI over the default broker vs in-process -----------------------------
        label = "default" if "default" in brokers else next(iter(brokers))
        uri_ctl, uri_agent = brokers[label]
        agent = start_agent(dev, uri_agent)
        try:
            over = train_cli(uri_ctl.rstrip("/") + f"/{NAME}", work, "remote", args.cli_epochs)
        finally:
            agent.terminate()
            agent.wait(10)
        here = train_cli(str(dev), work, "local", args.cli_epochs)
        result["train_cli"] = {
            "broker": label,
            "epochs": args.cli_epochs,
            "remote": over,
            "in_process": here,
            "ratio_per_epoch": over["seconds_per_epoch"] / here["seconds_per_epoch"],
        }
    finally:
        for b in owned:
            b.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_mqtt.json"
    path.write_text(json.dumps(result, indent=2))
    if "throughput" in result:
        t = result["throughput"]
        print(
            f"throughput (samples/s): off {t['samples_per_s']['off']:.0f}, on "
            f"{t['samples_per_s']['on']:.0f} ({100 * t['ratio_on_vs_off']:.1f} %), every step "
            f"{t['samples_per_s']['every_step']:.0f} ({100 * t['ratio_every_step_vs_off']:.1f} "
            f"%); per CPU s: on {100 * t['cpu_ratio_on_vs_off']:.1f} %, every step "
            f"{100 * t['cpu_ratio_every_step_vs_off']:.1f} % of off"
        )
    r = result["remote"]
    for label, v in r.items():
        if isinstance(v, dict) and "read_phases_round_trip" in v:
            print(
                f"{label} broker: EP step {v['ep_step']['median_ms']:.2f} ms, read round trip "
                f"{v['read_phases_round_trip']['median_ms']:.2f} ms, agent QoS 1 probe "
                f"{v['agent_broker_probe_qos1_ms']} ms"
            )
    print(f"in-process EP step {r['in_process']['ep_step']['median_ms']:.2f} ms")
    c = result["train_cli"]
    print(
        f"train CLI over the {c['broker']} broker: {c['remote']['seconds_per_epoch']:.2f} s/epoch "
        f"vs in-process {c['in_process']['seconds_per_epoch']:.2f} s/epoch "
        f"(x{c['ratio_per_epoch']:.2f})  -> {path}"
    )


if __name__ == "__main__":
    main()
