"""Attack: SIGKILL the agent at 10 random moments of a remote training run (issue #14).

Each run trains the 2+5+2 vowel device over a local mosquitto through ``phasegrad-hw agent``
(:func:`phasegrad_hw.testing.remote.sigkill_run`, which tests/e2e/test_mqtt_hardening.py runs
on 4 moments);
at a random step (and a random 0–5 ms after it, so that the kill also lands inside a
request) the agent is SIGKILLed and another one started on the same device file. A run
must end bit-identical to the uninterrupted in-process run (``identical``) or stop with
the clear :class:`~phasegrad_hw.backends.mqtt.AgentRestartedError` (``clear error``: no
update from the killed step); ``DIFFERENT`` (finished with other parameters) and
``unclear error`` are failures. Writes ``bench_mqtt_sigkill.json`` with each run's moment
and outcome; exits 1 if any run failed.

    python benchmarks/bench_mqtt_sigkill.py [--runs 10] [--epochs 2] [--seed 14] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from phasegrad_hw.testing.mosquitto import Mosquitto
from phasegrad_hw.testing.remote import DATA, in_process, sigkill_run, vowel_model

REPO = Path(__file__).resolve().parents[1]

FAILED = ("DIFFERENT", "unclear error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-sigkill-"))
    device = work / "vowel.toml"
    vowel_model().save(device)
    steps = args.epochs * len(DATA.x_train)  # one sample per step
    rng = random.Random(args.seed)
    moments = [(rng.randrange(1, steps), rng.uniform(0.0, 0.005)) for _ in range(args.runs)]
    broker = Mosquitto(work / "broker")
    broker.start()
    t0 = time.perf_counter()
    try:
        reference = in_process(device, args.epochs)
        runs = []
        for k, (step, delay) in enumerate(moments):
            r = sigkill_run(broker, device, args.epochs, reference, step, delay)
            runs.append(r)
            print(
                f"run {k + 1}/{len(moments)}: kill after step {step} + {1e3 * delay:.1f} ms -> "
                f"{r['outcome']}",
                flush=True,
            )
    finally:
        broker.stop()
    counts = {o: sum(r["outcome"] == o for r in runs) for o in {r["outcome"] for r in runs}}
    result = {
        "device": "simulated 2+5+2 vowel, readout noise 0.01 rad",
        "epochs": args.epochs,
        "steps_per_run": steps,
        "seed": args.seed,
        "runs": runs,
        "counts": counts,
        "failed": sum(r["outcome"] in FAILED for r in runs),
        "seconds": time.perf_counter() - t0,
        "load_average_1min": os.getloadavg()[0],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench_mqtt_sigkill.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"{counts}; failed {result['failed']} of {len(runs)} -> {path}")
    sys.exit(1 if result["failed"] else 0)


if __name__ == "__main__":
    main()
