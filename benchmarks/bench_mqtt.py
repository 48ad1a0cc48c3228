"""MQTT costs: training throughput with telemetry on vs off, remote EP step latency.

Starts its own mosquitto (phasegrad_hw/testing/mosquitto.py: loopback, password file, ACL)
unless ``--broker`` names one. Writes ``benchmarks/results/bench_mqtt.json``:

* ``throughput``: samples/s of :func:`train_on_substrates` on the in-process 2+5+2 simulated
  device with telemetry off, on (default 0.5 s step rate limit) and on with every step
  published; ratios on/off (median of alternating repeats; the machine may be shared).
* ``remote``: EP step latency (ms) through ``phasegrad-hw agent`` in another process vs the
  same device in-process, and the round trip of one request (read_phases) — measured in the
  same run on a mosquitto with its *default* configuration (no ``set_tcp_nodelay``) and on a
  tuned one (``set_tcp_nodelay true``), each with the agent's own broker probe (QoS 1
  exchange, ms), which shows the Nagle + delayed-ACK stall the QoS 0 request path avoids.
  A remote EP step is one request (the step's writes, free read, clamp, nudged read and
  release in one ``batch``). CPU ms per step of this process (controller) and of each agent.
* ``train_cli``: ``phasegrad-hw train --device mqtt://…`` over the default-configured broker vs
  the same device file in-process, seconds per epoch (synthetic vowel task, 2+5+2), in
  alternating repeats (medians; the machine may be shared), with the CPU seconds per epoch of
  the training process and of the agent.
* ``load_average``: the 1-minute load average before and after.

    python benchmarks/bench_mqtt.py [--epochs 3] [--repeats 5] [--steps 300] [--out DIR]
        [--skip-throughput] [--cli-epochs 2] [--cli-repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
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
from phasegrad_hw.testing.mosquitto import Mosquitto, agent_process
from phasegrad_hw.testing.remote import vowel_model
from phasegrad_hw.wire.mqtt import BrokerConfig

NAME = "bench/chip"


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


async def step_latency(sub: Any, steps: int) -> tuple[list[float], float]:
    """Wall ms of each EP step, and the CPU s this process spent on all of them."""
    m = sub.model
    ctl = EPController([sub], EPConfig(), Parameters(np.zeros(m.n), m.coupling_values()))
    xs = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, 2))
    tgt = np.array([-0.2, 0.2])
    out = []
    c0 = time.process_time()
    for s in range(steps):
        t0 = time.perf_counter()
        await ctl.step([Sample(xs[s], tgt)])
        out.append((time.perf_counter() - t0) * 1e3)
    return out, time.process_time() - c0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc; 10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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


async def remote_latency(
    model: SimulatedDeviceModel,
    brokers: dict[str, BrokerConfig],
    agents: dict[str, int],
    steps: int,
    blocks: int = 10,
) -> dict[str, Any]:
    """EP step and read round trip (ms) through each broker's agent (process ids ``agents``)
    and in-process, interleaved in ``blocks`` rounds so that load phases of a shared machine
    hit all alike; CPU ms per EP step of this process and of the agent."""
    subs = {k: MqttSubstrate(b, NAME, model=model) for k, b in brokers.items()}
    local = SimulatedSubstrate(model)
    per = max(1, steps // blocks)
    ep: dict[str, list[float]] = {k: [] for k in [*subs, "in_process"]}
    cpu: dict[str, float] = {k: 0.0 for k in ep}
    agent_cpu: dict[str, float] = {k: 0.0 for k in subs}
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
                a0 = cpu_s(agents[k])
                wall, c = await step_latency(sub, per)
                agent_cpu[k] += cpu_s(agents[k]) - a0
                ep[k] += wall
                cpu[k] += c
            wall, c = await step_latency(local, per)
            ep["in_process"] += wall
            cpu["in_process"] += c
    finally:
        for sub in subs.values():
            await sub.close()
        await local.close()
    n = per * blocks
    out: dict[str, Any] = {
        "in_process": {"ep_step": summary(ep["in_process"]), "cpu_ms": 1e3 * cpu["in_process"] / n}
    }
    for k, sub in subs.items():
        out[k] = {
            "ep_step": summary(ep[k]),
            "controller_cpu_ms": 1e3 * cpu[k] / n,
            "agent_cpu_ms": 1e3 * agent_cpu[k] / n,
            "read_phases_round_trip": summary(reads[k]),
            "transit_ms": sub.transit_ms,
            "agent_broker_probe_qos1_ms": hellos[k].get("broker_probe_ms"),
            "stall_warned": sub.stall_warned,
        }
    return out


def train_cli(
    device: str, work: Path, name: str, epochs: int, agent: int | None = None
) -> dict[str, Any]:
    """``phasegrad-hw train`` (synthetic vowels a,i) in a fresh process: seconds per epoch,
    CPU seconds per epoch of that process (start-up included) and of the agent ``agent``."""
    out = work / f"{name}.json"
    c0 = children_cpu_s()
    a0 = cpu_s(agent) if agent is not None else 0.0
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
    cpu = children_cpu_s() - c0
    agent_cpu = cpu_s(agent) - a0 if agent is not None else None
    if proc.returncode != 0:
        raise RuntimeError(f"train {name} failed: {proc.stderr[-2000:]}")
    res = json.loads(out.read_text())
    return {
        "seconds": res["seconds"],
        "seconds_per_epoch": res["seconds"] / epochs,
        "process_wall_s": wall,
        "process_cpu_s_per_epoch": cpu / epochs,
        "agent_cpu_s_per_epoch": None if agent_cpu is None else agent_cpu / epochs,
        "final_test_accuracy": res["final_test_accuracy"],
    }


def train_cli_pairs(
    dev: Path, uri: str, agent_uri: str, work: Path, epochs: int, repeats: int
) -> dict[str, Any]:
    """Alternating remote / in-process ``train`` runs; medians and the median paired ratio."""
    runs: dict[str, list[dict[str, Any]]] = {"remote": [], "in_process": []}
    with agent_process(agent_uri, dev, NAME) as agent:
        for k in range(repeats):
            first, second = ("remote", "in_process") if k % 2 == 0 else ("in_process", "remote")
            for which in (first, second):
                if which == "remote":
                    runs[which].append(train_cli(uri, work, f"remote{k}", epochs, agent.p.pid))
                else:
                    runs[which].append(train_cli(str(dev), work, f"local{k}", epochs))
    accuracies = {r["final_test_accuracy"] for rs in runs.values() for r in rs}

    def med(which: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[which])

    return {
        "epochs": epochs,
        "repeats": repeats,
        "remote_seconds_per_epoch": med("remote", "seconds_per_epoch"),
        "in_process_seconds_per_epoch": med("in_process", "seconds_per_epoch"),
        "ratio_per_epoch": statistics.median(
            r["seconds_per_epoch"] / h["seconds_per_epoch"]
            for r, h in zip(runs["remote"], runs["in_process"], strict=True)
        ),
        "remote_process_cpu_s_per_epoch": med("remote", "process_cpu_s_per_epoch"),
        "in_process_process_cpu_s_per_epoch": med("in_process", "process_cpu_s_per_epoch"),
        "agent_cpu_s_per_epoch": med("remote", "agent_cpu_s_per_epoch"),
        "same_final_accuracy": len(accuracies) == 1,
        "runs": runs,
        "note": "ratio: median over repeats of remote / the adjacent in-process run",
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
    ap.add_argument("--cli-epochs", type=int, default=3)
    ap.add_argument("--cli-repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))

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
    model = vowel_model()
    dev = work / "dev.toml"
    model.save(dev)
    first = BrokerConfig.parse(next(iter(brokers.values()))[0])[0]
    result: dict[str, Any] = {
        "device": "simulated 2+5+2, noise 0.01 rad",
        "load_average_1min": {"start": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
    }
    try:
        # -- throughput with/without telemetry (alternating repeats) --------------------
        if not args.skip_throughput:
            result["throughput"] = throughputs(model, first, args.epochs, args.repeats)
        # -- remote EP step latency, per broker configuration (interleaved) --------------
        with contextlib.ExitStack() as stack:
            agents = {
                k: stack.enter_context(agent_process(uri_agent, dev, NAME))
                for k, (_, uri_agent) in brokers.items()
            }
            cfgs = {k: BrokerConfig.parse(uri)[0] for k, (uri, _) in brokers.items()}
            pids = {k: a.p.pid for k, a in agents.items()}
            remote = asyncio.run(remote_latency(model, cfgs, pids, args.steps))
        if "default" in remote and "tuned" in remote:
            d, t = remote["default"]["ep_step"], remote["tuned"]["ep_step"]
            remote["default_vs_tuned_ep_step"] = d["median_ms"] / t["median_ms"]
        result["remote"] = remote
        # -- train CLI over the default broker vs in-process -----------------------------
        label = "default" if "default" in brokers else next(iter(brokers))
        uri_ctl, uri_agent = brokers[label]
        result["train_cli"] = {
            "broker": label,
            **train_cli_pairs(
                dev,
                uri_ctl.rstrip("/") + f"/{NAME}",
                uri_agent,
                work,
                args.cli_epochs,
                args.cli_repeats,
            ),
        }
        result["load_average_1min"]["end"] = os.getloadavg()[0]
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
                f"{label} broker: EP step {v['ep_step']['median_ms']:.2f} ms (CPU "
                f"{v['controller_cpu_ms']:.2f} ms controller + {v['agent_cpu_ms']:.2f} ms agent), "
                f"read round trip {v['read_phases_round_trip']['median_ms']:.2f} ms, agent "
                f"QoS 1 probe {v['agent_broker_probe_qos1_ms']} ms"
            )
    ip = r["in_process"]
    print(f"in-process EP step {ip['ep_step']['median_ms']:.2f} ms (CPU {ip['cpu_ms']:.2f} ms)")
    if "default_vs_tuned_ep_step" in r:
        print(f"default / tuned EP step: {r['default_vs_tuned_ep_step']:.2f}")
    c = result["train_cli"]
    print(
        f"train CLI over the {c['broker']} broker ({c['repeats']} alternating pairs, "
        f"{c['epochs']} epochs): {c['remote_seconds_per_epoch']:.2f} s/epoch vs in-process "
        f"{c['in_process_seconds_per_epoch']:.2f} s/epoch (x{c['ratio_per_epoch']:.2f}); CPU "
        f"s/epoch: remote controller {c['remote_process_cpu_s_per_epoch']:.2f} + agent "
        f"{c['agent_cpu_s_per_epoch']:.2f}, in-process "
        f"{c['in_process_process_cpu_s_per_epoch']:.2f}; load average "
        f"{result['load_average_1min']['start']:.1f} -> {result['load_average_1min']['end']:.1f}"
        f"  -> {path}"
    )


if __name__ == "__main__":
    main()
