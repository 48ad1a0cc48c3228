"""The engine's training accuracy (the published convergence criterion): per epoch, the fraction
of the online samples whose free and nudged states locked that the free state — read just
before the sample's update — classifies correctly. Checked against a per-member reference loop
on the plain physics solver, in the compiled and the numpy paths."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.presets import vowel_2_5_2
from phasegrad_hw.engine.ensemble import Ensemble, train_seeds
from phasegrad_hw.engine.members import Member, TrainConfig, members_from_builder
from phasegrad_hw.engine.results import train_accuracy_from_outputs
from phasegrad_hw.learning.ep import EPNetwork, EPReadings, EPRule, EPState, ep_update
from phasegrad_hw.learning.tasks import Dataset, Encoding, synthetic_vowels
from phasegrad_hw.physics import centred, solve_equilibrium

SMALL = synthetic_vowels(("a", "i"), n_per_class=16, seed=4)
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
CFG = TrainConfig(epochs=3, rule=EPRule(params="both", lr_omega=0.03, lr_k=0.03))
ENC = Encoding(readout="argmax_cos")


def _reference(
    model: DeviceModel,
    member: Member,
    data: Dataset,
    enc: Encoding,
    cfg: TrainConfig,
    fail_nudged: int | None = None,
) -> tuple[list[float], np.ndarray, np.ndarray]:
    """One member trained sample by sample (the published loop): per epoch its training
    accuracy (right / counted) and the last epoch's free outputs per sample (NaN when not
    counted); also its final ω. ``fail_nudged``: the nudged state of that training sample is
    reported unlocked (the sample neither updates nor counts)."""
    r = model.roles
    edges = model.edge_index
    out_ids = np.asarray(r.outputs)
    net = EPNetwork(edges, r.reference, model.coupling(), model.limits)
    w, k = member.omega[None].copy(), member.coupling[None].copy()
    theta = np.zeros(model.n)
    n = len(data.y_train)
    accs: list[float] = []
    last = np.full((n, len(out_ids)), np.nan)
    for e in range(cfg.epochs):
        right = counted = 0
        last[:] = np.nan
        for i in np.random.default_rng([member.seed, e]).permutation(n):
            x, y = data.x_train[i], int(data.y_train[i])
            om = w[0].copy()
            om[r.inputs] = enc.input_frequencies(x)
            K = np.zeros((model.n, model.n))
            K[edges[:, 0], edges[:, 1]] = K[edges[:, 1], edges[:, 0]] = k[0]
            free = solve_equilibrium(centred(om), K, theta0=theta)
            beta = np.zeros(model.n)
            beta[out_ids] = cfg.rule.beta
            tgt = np.zeros(model.n)
            tgt[out_ids] = enc.clamp_targets(y, free.theta[out_ids])
            plus = solve_equilibrium(centred(om), K, theta0=free.theta, beta=beta, target=tgt)
            ok = bool(free.ok and plus.ok) and i != fail_nudged
            if ok:
                right += int(enc.predict(free.theta[out_ids]) == y)
                counted += 1
                last[i] = free.theta[out_ids]
            upd = ep_update(
                cfg.rule,
                EPReadings(free.theta[None, None], plus.theta[None, None], None, np.array([[ok]])),
                EPState(w, k, member.learn_omega[None], member.learn_k[None]),
                net,
            )
            w, k = upd.omega, upd.coupling
            if free.ok:
                theta = free.theta
        accs.append(right / max(counted, 1))
    return accs, last, w[0]


def _compiled(flag: bool) -> bool:
    if flag:
        from tests.conftest import require

        require(HAVE_NUMBA, "numba (the compiled training kernels, extra 'fast')")
    return flag


@pytest.mark.parametrize("compiled", [True, False])
def test_train_accuracy_equals_a_per_member_reference_loop(compiled: bool) -> None:
    seeds = [0, 1, 2, 3]
    res = train_seeds(vowel_2_5_2, seeds, SMALL, ENC, CFG, compiled=_compiled(compiled))
    per_epoch = np.array([h.train_accuracy for h in res.history])  # (epochs, B)
    tmpl = Encoding(readout="template")
    for b, s in enumerate(seeds):
        template, (member,) = members_from_builder(vowel_2_5_2, [s], CFG)
        accs, last, w = _reference(template, member, SMALL, ENC, CFG)
        np.testing.assert_allclose(res.omega[b], w, rtol=0, atol=1e-9)  # same training
        assert per_epoch[:, b].tolist() == pytest.approx(accs, abs=1e-15)
        assert res.train_accuracy[b] == pytest.approx(accs[-1], abs=1e-15)
        # the same free states under another readout
        want = train_accuracy_from_outputs(last, SMALL.y_train, tmpl)
        assert res.train_accuracy_under(tmpl, SMALL.y_train)[b] == pytest.approx(want, abs=1e-15)
        np.testing.assert_allclose(res.train_out[b], last, rtol=0, atol=1e-9)
    # not vacuous: the accuracies move over the epochs and differ between members
    assert np.ptp(per_epoch) > 0.05 and len(set(res.train_accuracy.tolist())) > 1


def test_samples_whose_nudged_state_fails_are_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy path: the nudged solve of training sample 5 reports unlocked; the engine skips
    its update and leaves it out of the training accuracy (numerator and denominator)."""
    bad = 5
    x_bad = SMALL.x_train[bad]
    solve = Ensemble.solve

    def failing(self: Ensemble, W, k, theta0, target=None, direction=1):  # type: ignore[no-untyped-def]
        th, ok = solve(self, W, k, theta0, target, direction)
        if target is not None:
            hit = np.all(W[:, self.inputs] == self.enc.input_frequencies(x_bad), axis=1)
            ok = ok & ~hit
        return th, ok

    monkeypatch.setattr(Ensemble, "solve", failing)
    seeds = [1, 2]
    res = train_seeds(vowel_2_5_2, seeds, SMALL, ENC, CFG, compiled=False)
    for b, s in enumerate(seeds):
        template, (member,) = members_from_builder(vowel_2_5_2, [s], CFG)
        accs, last, w = _reference(template, member, SMALL, ENC, CFG, fail_nudged=bad)
        np.testing.assert_allclose(res.omega[b], w, rtol=0, atol=1e-9)
        assert [h.train_accuracy[b] for h in res.history] == pytest.approx(accs, abs=1e-15)
        assert np.isnan(res.train_out[b, bad]).all()
        assert np.isfinite(np.delete(res.train_out[b], bad, axis=0)).all()
        assert res.skipped_unlocked[b] == CFG.epochs


def test_train_accuracy_from_outputs_counts_only_locked_samples() -> None:
    enc = Encoding(readout="argmax_cos")
    out = np.array([[[0.0, 2.0], [2.0, 0.0], [np.nan, np.nan], [0.0, 2.0]]])  # predicts 0,1,-,0
    y = np.array([0, 1, 0, 1])
    np.testing.assert_allclose(train_accuracy_from_outputs(out, y, enc), [2 / 3])
    none = np.full((1, 4, 2), np.nan)
    np.testing.assert_array_equal(train_accuracy_from_outputs(none, y, enc), [0.0])


def test_train_accuracy_from_outputs_takes_a_locked_mask() -> None:
    """With the mask (the engine's solved samples), a finite row whose nudged state did not lock
    is not counted."""
    enc = Encoding(readout="argmax_cos")
    out = np.array([[[0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])  # predicts 0, 1, 0, 0
    y = np.array([0, 1, 0, 1])
    locked = np.array([[True, True, False, True]])
    np.testing.assert_allclose(train_accuracy_from_outputs(out, y, enc), [3 / 4])
    np.testing.assert_allclose(train_accuracy_from_outputs(out, y, enc, locked), [2 / 3])
    none = np.zeros((1, 4), dtype=bool)
    np.testing.assert_array_equal(train_accuracy_from_outputs(out, y, enc, none), [0.0])
