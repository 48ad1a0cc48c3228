"""Drive an emulated CMOS chip on another "machine" through an MQTT broker.

Starts a private mosquitto on a free loopback port (password file + ACL, as a lab broker
should be), runs ``phasegrad-hw agent`` on the emulated 2+5+2 CMOS chip in its own process,
and drives it as ``mqtt://controller:…@127.0.0.1:PORT/lab/chip`` from here: a few phase
reads, 20 EP steps (one round trip each: free phase, nudge, release in one batch) and an
evaluation set of 16 inputs in a few batched round trips. The agent's counters printed at
its stop show how many requests carried how many device operations (docs/mqtt.md).

    python examples/remote_bench_mqtt.py
"""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.testing.mosquitto import MissingBroker, Mosquitto

DEVICE = Path(__file__).resolve().parent / "devices" / "cmos-2-5-2.toml"
NAME = "lab/chip"


def start_agent(broker: Mosquitto) -> subprocess.Popen[str]:
    """``phasegrad-hw agent`` (user ``agent``) serving the chip; returns once it serves."""
    cmd = [sys.executable, "-m", "phasegrad_hw.cli", "agent", "--device", str(DEVICE)]
    cmd += ["--broker", broker.uri("agent"), "--name", NAME]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    ready, _, _ = select.select([proc.stdout], [], [], 25)
    line = proc.stdout.readline().strip() if ready else ""
    if line != f"agent {NAME} ready":
        proc.kill()
        raise RuntimeError(f"the agent did not start: {line!r} {proc.stderr.read()[-1000:]}")
    return proc


async def drive(uri: str) -> None:
    sub = open_substrate(uri)  # the model comes from the agent
    async with sub:  # a session with the agent; its abilities come with it
        abilities = sorted(c.value for c in sub.capabilities)
        print(f"remote device: {sub.model.name}, {sub.model.n} oscillators, {abilities}")
        for _ in range(3):
            r = await sub.read_phases()
            print(f"  read: locked {r.locked}, output phases {np.round(r.phases[7:], 3)} rad")
        m = sub.model
        ctl = EPController([sub], EPConfig(), Parameters(np.zeros(m.n), m.coupling_values()))
        xs = np.random.default_rng(0).uniform(-1.0, 1.0, (20, 2))
        t0 = time.perf_counter()
        for x in xs:
            rep = await ctl.step([Sample(x, np.array([-0.2, 0.2]))])
        dt = (time.perf_counter() - t0) / len(xs)
        print(f"  20 EP steps: {1e3 * dt:.1f} ms per step, last loss {rep.loss:.4f} rad²")
        t0 = time.perf_counter()
        phases, locked = await ctl.infer_many(xs[:16])
        print(
            f"  16 evaluation reads: {1e3 * (time.perf_counter() - t0):.1f} ms in all, "
            f"{int(locked.sum())} locked"
        )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
        try:
            broker = Mosquitto(Path(tmp) / "broker")
        except MissingBroker as exc:
            print(f"skipped: {exc}")
            return
        broker.start()
        agent = None
        try:
            agent = start_agent(broker)
            asyncio.run(drive(broker.uri("controller", NAME)))
        finally:
            if agent is not None:
                agent.terminate()
                out, _ = agent.communicate(timeout=10)
                for line in out.splitlines():
                    if line.startswith("agent stats "):
                        stats = json.loads(line.removeprefix("agent stats "))
                        print(f"agent: {stats['received']} requests, ops {stats['ops']}")
            broker.stop()


if __name__ == "__main__":
    main()
