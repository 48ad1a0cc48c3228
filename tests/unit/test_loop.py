"""Hardware training loop: learning on a tiny task, exact resume, sample order, skips,
observers (sync and async) and the command line's progress observer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.backends.simulated import SimulatedBatch, SimulatedSubstrate
from phasegrad_hw.device.substrate import OscillatorSubstrate
from phasegrad_hw.errors import ConfigError, LockLostError
from phasegrad_hw.learning.controller import EPConfig, Parameters, StepReport
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.loop import (
    LoopObserver,
    LoopOptions,
    LoopState,
    RunPlan,
    seed_for,
    train_on_substrates,
)
from phasegrad_hw.learning.tasks import Encoding
from phasegrad_hw.testing.doubles import ScriptedSubstrate
from phasegrad_hw.testing.networks import blobs, model_tiny

DATA = blobs(40, 20, seed=0)


class Hooks(LoopObserver):
    """An observer from two callables (either may be omitted)."""

    def __init__(
        self,
        on_step: Callable[[StepReport], Any] | None = None,
        on_epoch_end: Callable[[LoopState], Awaitable[None] | None] | None = None,
    ) -> None:
        self.plans: list[RunPlan] = []
        self._step, self._epoch = on_step, on_epoch_end

    def on_run_start(self, plan: RunPlan) -> None:
        self.plans.append(plan)

    def on_step(self, report: StepReport) -> None:
        if self._step is not None:
            self._step(report)

    def on_epoch_end(self, state: LoopState) -> Awaitable[None] | None:
        return None if self._epoch is None else self._epoch(state)


def _p0(model, w_out: float = -0.6) -> Parameters:  # type: ignore[no-untyped-def]
    """Outputs biased toward the wrong threshold: the untrained device is poor."""
    return Parameters(np.array([0.0, 0.0, 0.0, w_out, -w_out]), model.coupling_values())


async def test_short_run_learns() -> None:
    m = model_tiny(readout_noise_rad=0.01)
    cfg = EPConfig(rule=EPRule(beta=0.1, lr_omega=0.05))
    enc = Encoding()
    before = await train_on_substrates(
        [SimulatedSubstrate(m)], DATA, enc, cfg, LoopOptions(epochs=0, seed=3, params=_p0(m))
    )
    losses: list[float] = []
    res = await train_on_substrates(
        [SimulatedSubstrate(m)],
        DATA,
        enc,
        cfg,
        LoopOptions(epochs=4, seed=3, params=_p0(m)),
        [Hooks(on_step=lambda r: losses.append(r.loss))],
    )
    assert before.state.history == [] and before.final_test_accuracy <= 0.7
    assert res.final_test_accuracy >= 0.95 and res.state.history[-1].train_accuracy >= 0.95
    assert res.final_test_accuracy >= before.final_test_accuracy + 0.25
    per_epoch = np.array(losses).reshape(4, -1).mean(axis=1)
    assert per_epoch[-1] < 0.7 * per_epoch[0]
    assert [h.epoch for h in res.state.history] == [1, 2, 3, 4] and res.state.epoch == 4
    assert res.state.skipped_samples == 0 and res.seconds > 0


@pytest.mark.parametrize("devices", ["single", "batch2"])
async def test_resume_from_mid_run_state_is_exact(devices: str) -> None:
    m = model_tiny(readout_noise_rad=0.02)  # noisy: exactness needs the per-epoch reseed
    cfg = EPConfig(rule=EPRule(beta=0.2, mode="centred", lr_omega=0.05, lr_k=0.02, params="both"))
    enc = Encoding()

    def subs() -> list[OscillatorSubstrate]:
        return [SimulatedSubstrate(m)] if devices == "single" else list(SimulatedBatch(m, 2).chips)

    saved: dict[int, LoopState] = {}

    async def keep(state: LoopState) -> None:  # async hook
        saved[state.epoch] = state

    full = await train_on_substrates(
        subs(), DATA, enc, cfg, LoopOptions(epochs=4, seed=7, params=_p0(m)), [Hooks(None, keep)]
    )
    assert sorted(saved) == [1, 2, 3, 4]
    resumed = await train_on_substrates(
        subs(), DATA, enc, cfg, LoopOptions(epochs=4, seed=7, start=saved[2])
    )
    a, b = full.state.params, resumed.state.params
    assert np.allclose(a.omega, b.omega, rtol=0, atol=1e-12)
    assert np.allclose(a.coupling, b.coupling, rtol=0, atol=1e-12)
    assert [(h.train_accuracy, h.test_accuracy, h.skipped) for h in full.state.history] == [
        (h.train_accuracy, h.test_accuracy, h.skipped) for h in resumed.state.history
    ]
    print(
        "max |Δω|, |ΔK| after resume:",
        np.abs(a.omega - b.omega).max(),
        np.abs(a.coupling - b.coupling).max(),
    )
    saved[4].params.omega[:] = 99.0  # the hook got a copy, not the run's own state
    assert full.state.params.omega.max() < 99.0
    # a different seed gives a different run (the noise and order really matter)
    other = await train_on_substrates(
        subs(), DATA, enc, cfg, LoopOptions(epochs=4, seed=8, params=_p0(m))
    )
    assert not np.allclose(other.state.params.omega, a.omega, rtol=0, atol=1e-6)


async def test_sample_order_and_reseed_follow_the_seed() -> None:
    m = model_tiny()
    sub = ScriptedSubstrate(SimulatedSubstrate(m))
    enc = Encoding()
    seed = 11
    await train_on_substrates(
        [sub],
        DATA,
        enc,
        EPConfig(rule=EPRule(lr_omega=0.01)),
        LoopOptions(epochs=2, seed=seed, params=_p0(m), train_eval="online"),
    )
    freq = np.array([c[1][:2] for c in sub.calls if c[0] == "frequencies"])
    n_tr, n_te = len(DATA.x_train), len(DATA.x_test)
    w_train = enc.input_frequencies(DATA.x_train)
    for e in range(2):
        block = freq[e * (n_tr + n_te) : e * (n_tr + n_te) + n_tr]
        order = np.random.default_rng([seed, e]).permutation(n_tr)
        assert np.array_equal(block, w_train[order])
    assert [c[1] for c in sub.calls if c[0] == "reseed"] == [seed_for(seed, e, 0) for e in range(2)]


@pytest.mark.parametrize(
    ("readout", "chips", "batch"),
    [
        ("template", 1, None),
        ("argmax_cos", 1, None),
        ("mean_phase", 1, None),
        ("difference", 1, None),
        ("template", 2, 3),
    ],
)
async def test_online_accuracy_and_targets_follow_each_samples_own_reads(
    readout: str, chips: int, batch: int | None
) -> None:
    """The loop makes its samples once per run and classifies an epoch's free reads together
    at its end; both equal the per-sample definitions: the online train accuracy is the share
    of samples whose own free read (in the epoch's order) predicts its class, and each locked
    sample is nudged toward ``clamp_targets`` of its class at its own free output phases."""
    m = model_tiny(readout_noise_rad=0.02)
    enc = Encoding(readout=readout)  # type: ignore[arg-type]
    seed, n, out = 4, len(DATA.x_train), m.outputs
    reports: list[StepReport] = []
    subs = [SimulatedSubstrate(m)] if chips == 1 else list(SimulatedBatch(m, chips).chips)
    res = await train_on_substrates(
        subs,
        DATA,
        enc,
        EPConfig(rule=EPRule(lr_omega=0.05), batch_size=batch),
        LoopOptions(epochs=2, seed=seed, params=_p0(m), train_eval="online"),
        [Hooks(on_step=reports.append)],
    )
    steps = -(-n // (batch or chips))
    assert len(reports) == 2 * steps
    accuracies = []
    for e in range(2):
        y = DATA.y_train[np.random.default_rng([seed, e]).permutation(n)]
        reps = reports[e * steps : (e + 1) * steps]
        free = [r.free_phases[j, out] for r in reps for j in range(len(r.free_phases))]
        locked = [bool(f) for r in reps for f in r.free_locked]
        targets = [t for r in reps for t in r.targets]  # type: ignore[union-attr]
        correct = sum(int(enc.predict(f)) == int(c) for f, c in zip(free, y, strict=True))
        assert res.state.history[e].train_accuracy == correct / n
        accuracies.append(correct / n)
        for f, c, ok, t in zip(free, y, locked, targets, strict=True):
            ref = f if readout == "difference" else np.zeros(len(out))
            assert np.array_equal(t, enc.clamp_targets(int(c), ref)) if ok else np.isnan(t).all()
    assert any(0.0 < a < 1.0 for a in accuracies)  # a mix of right and wrong reads


async def test_skipped_samples_are_counted_per_epoch() -> None:
    m = model_tiny()
    opts = LoopOptions(epochs=2, seed=0, train_eval="online", params=_p0(m))
    base = await train_on_substrates([SimulatedSubstrate(m)], DATA, Encoding(), EPConfig(), opts)
    # epoch 1: read 1 (free of sample 1) and reads 5, 9 (nudged reads of samples 3, 5) unlocked
    sub = ScriptedSubstrate(SimulatedSubstrate(m), unlocked_reads={1, 5, 9})
    res = await train_on_substrates([sub], DATA, Encoding(), EPConfig(), opts)
    b = [h.skipped for h in base.state.history]  # the extreme inputs of DATA do not all lock
    assert [h.skipped for h in res.state.history] == [b[0] + 3, b[1]]
    assert res.state.skipped_samples == sum(b) + 3


async def test_an_epoch_with_no_locked_sample_stops_with_the_reason() -> None:
    """Every read unlocked: the loop stops after the first epoch with a LockLostError that
    says why and what to check, instead of running all epochs at chance."""
    m = model_tiny()
    opts = LoopOptions(epochs=3, seed=0, train_eval="online", params=_p0(m))
    sub = ScriptedSubstrate(SimulatedSubstrate(m), unlocked_reads=set(range(100_000)))
    seen: list[int] = []
    hooks = Hooks(on_epoch_end=lambda s: seen.append(s.epoch))
    with pytest.raises(
        LockLostError, match=r"epoch 1: none of the 40 .*run `phasegrad-hw calibrate transfer"
    ):
        await train_on_substrates([sub], DATA, Encoding(), EPConfig(), opts, [hooks])
    assert seen == []  # no epoch was recorded as trained


async def test_progress_observer_sync_hook_and_validation() -> None:
    from rich.console import Console

    from phasegrad_hw.cli.progress import RichProgress

    m = model_tiny()
    seen: list[tuple[int, int]] = []
    hooks = Hooks(on_epoch_end=lambda s: seen.append((s.epoch, len(s.history))))
    console = Console(record=True, width=100, force_terminal=False)
    with RichProgress(console) as bar:
        res = await train_on_substrates(
            [SimulatedSubstrate(m)],
            DATA,
            Encoding(),
            EPConfig(rule=EPRule(lr_omega=0.05)),
            LoopOptions(epochs=2, seed=1, params=_p0(m)),
            [hooks, bar],
        )
        (task,) = bar.progress.tasks
        assert task.total == task.completed == 2 * len(DATA.x_train)
    assert seen == [(1, 1), (2, 2)]
    assert hooks.plans == [RunPlan(0, 2, len(DATA.x_train), 1)]
    assert f"epoch 2/2 test {100 * res.final_test_accuracy:5.1f} %" in console.export_text()
    assert res.final_test_accuracy == res.state.history[-1].test_accuracy
    with pytest.raises(ConfigError, match="start.epoch: 2 already exceeds epochs=1"):
        await train_on_substrates(
            [SimulatedSubstrate(m)],
            DATA,
            Encoding(),
            EPConfig(),
            LoopOptions(epochs=1, seed=1, start=res.state),
        )


async def test_default_initial_parameters_come_from_seeding() -> None:
    seeding = pytest.importorskip("phasegrad_hw.learning.seeding")
    m = model_tiny()
    states: list[LoopState] = []
    await train_on_substrates(
        [SimulatedSubstrate(m)],
        DATA,
        Encoding(),
        EPConfig(rule=EPRule(lr_omega=0.0)),
        LoopOptions(epochs=1, seed=5),
        [Hooks(on_epoch_end=states.append)],
    )
    exp = seeding.initial_parameters(m, np.random.default_rng(5), "random")
    assert np.array_equal(states[0].params.omega, exp.omega)
    assert np.array_equal(states[0].params.coupling, m.coupling_values())


async def test_observers_run_in_order_each_with_its_own_copy() -> None:
    m = model_tiny()
    events: list[str] = []

    class Mutator(LoopObserver):
        def on_epoch_end(self, state: LoopState) -> None:
            events.append(f"mutate{state.epoch}")
            state.params.omega[:] = 42.0
            state.history.clear()

    class Keeper(LoopObserver):
        def __init__(self) -> None:
            self.states: list[LoopState] = []

        def on_run_start(self, plan: RunPlan) -> None:
            events.append(f"start{plan.first_epoch}-{plan.epochs}")

        async def on_epoch_end(self, state: LoopState) -> None:
            events.append(f"keep{state.epoch}")
            self.states.append(state)

    keeper = Keeper()
    res = await train_on_substrates(
        [SimulatedSubstrate(m)],
        DATA,
        Encoding(),
        EPConfig(rule=EPRule(lr_omega=0.05)),
        LoopOptions(epochs=2, seed=2, params=_p0(m)),
        [Mutator(), keeper],
    )
    assert events == ["start0-2", "mutate1", "keep1", "mutate2", "keep2"]
    assert [len(s.history) for s in keeper.states] == [1, 2]
    assert np.array_equal(keeper.states[-1].params.omega, res.state.params.omega)
    assert not np.any(res.state.params.omega == 42.0)


def test_loop_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="epochs: -1 must be >= 0"):
        LoopOptions(epochs=-1)
