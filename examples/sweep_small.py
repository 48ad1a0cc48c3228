"""A small hyper-parameter sweep (:mod:`phasegrad_hw.studies.sweep`): a grid over the learning
rate of ``train`` on the simulated 2+5+2 device, two trials of one epoch each, run as Ray
tasks on a local Ray instance and recorded in a run store in a temporary directory (one run
per trial, tagged with the sweep id). The same spec as a file runs with
``phasegrad-hw sweep SPEC.toml`` (a full sweep: more grid points and epochs in the spec,
trials spread over the Ray cluster at ``RAY_ADDRESS``). Needs Ray (``pip install
'phasegrad-hw[cluster]'``).

Two trials of one epoch are the smallest grid that is still a sweep; the trials themselves
take 1–2 s. The rest of its 6–10 s (measured at load ≈ 1–5 on 2 cores) is Ray starting and
stopping its own processes (GCS, raylet, monitor, log monitor, dashboard and runtime-env
agents, a worker: ≈ 4.5 s of CPU), which a loaded machine stretches most.
"""

import tempfile
from pathlib import Path

from phasegrad_hw.studies.sweep import load_spec, plan_trials, run_sweep

DEVICE = Path(__file__).resolve().parent / "devices" / "simulated-2-5-2.toml"

SPEC = f"""
study = "train"
search = "grid"
[base]
device = "{DEVICE}"
epochs = 1
params = "omega"
[grid]
lr = [0.01, 0.05]
"""


def main() -> None:
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.toml"
        path.write_text(SPEC)
        spec, base_dir = load_spec(path)
        trials = plan_trials(spec, base_dir)
        print(f"{len(trials)} trials: {[t.options['lr'] for t in trials]}")
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            res = run_sweep(spec, trials, Path(tmp) / "runs.sqlite")
        finally:
            ray.shutdown()
        for t in res["trials"]:
            acc = t["summary"]["final_test_accuracy"]
            print(f"trial {t['index']}: lr={t['options']['lr']}  test accuracy {acc:.3f}")
        assert res["failed"] == [] and len(res["trials"]) == len(trials)
        print(f"best trial: {res['best']} (sweep {res['sweep_id']})")


if __name__ == "__main__":
    main()
