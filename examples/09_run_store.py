"""Run store: checkpoint every epoch, "crash", resume — and end exactly where an uninterrupted
run ends.

Trains /a/ vs /i/ (synthetic formants) on a noisy simulated 2+5+2 device for 4 epochs while
recording to a SQLite run store; a second run is interrupted after epoch 2 and resumed from
its checkpoint. Final parameters must be bit-identical. Prints the stored runs and a CSV
export of the resumed run's epoch metrics.
"""

import asyncio
import tempfile
from pathlib import Path

import numpy as np

from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.learning.controller import EPConfig
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.loop import LoopOptions, LoopState, train_on_substrates
from phasegrad_hw.learning.tasks import Encoding, synthetic_vowels
from phasegrad_hw.store import RunRecorder, RunStore

EPOCHS = 4


def device() -> SimulatedDeviceModel:
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


class Crash(Exception):
    pass


async def train(
    store: RunStore, run_id: str, start: LoopState | None, stop_after: int | None
) -> LoopState:
    data = synthetic_vowels(("a", "i"), n_per_class=30, seed=0)

    class Crashing(RunRecorder):
        """Checkpoints every epoch (one transaction: params + epoch metrics), then "crashes"."""

        def on_epoch_end(self, state: LoopState) -> None:
            super().on_epoch_end(state)
            if stop_after is not None and state.epoch == stop_after:
                raise Crash(f"simulated crash after epoch {state.epoch}")

    async with SimulatedSubstrate(device()) as chip:
        res = await train_on_substrates(
            [chip],
            data,
            Encoding(readout="difference"),
            EPConfig(rule=EPRule(params="both", lr_omega=0.01, lr_k=0.01)),
            LoopOptions(epochs=EPOCHS, seed=1, start=start),
            [Crashing(store, run_id)],
        )
    return res.state


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, RunStore(Path(tmp) / "runs.sqlite") as store:
        config = {"task": "vowels:a,i", "epochs": EPOCHS, "seed": 1, "params": "both"}
        ref_id = store.create_run(config, "simulated 2+5+2")
        ref = await train(store, ref_id, None, None)
        store.finish_run(ref_id, {"final_test_accuracy": ref.history[-1].test_accuracy})

        run_id = store.create_run(config, "simulated 2+5+2")
        try:
            await train(store, run_id, None, stop_after=2)
        except Crash as exc:
            print(f"run {run_id}: {exc}")
        saved_config, state = store.load_checkpoint(run_id)
        assert saved_config == config and state.epoch == 2
        print(f"resuming run {run_id} from epoch {state.epoch}")
        final = await train(store, run_id, state, None)
        store.finish_run(run_id, {"final_test_accuracy": final.history[-1].test_accuracy})

        for r in store.list_runs():
            print(f"{r['id']}  {r['status']:9}  epochs {r['epoch']}  {r['summary']}")
        print(store.export(run_id, "csv"))
        assert np.array_equal(final.params.omega, ref.params.omega)
        assert np.array_equal(final.params.coupling, ref.params.coupling)
        print("resumed run == uninterrupted run (bit-identical ω and K)")


if __name__ == "__main__":
    asyncio.run(main())
