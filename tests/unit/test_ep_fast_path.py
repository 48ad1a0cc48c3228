"""ep_update's one-member, one-sample path (a single device's step) gives exactly what its
batched path gives for the same row: validity, jumps, unlocked samples, clipped gradients,
projection, centred and one-sided, ω and K."""

from __future__ import annotations

import numpy as np
import pytest

from phasegrad_hw.device.presets import vowel_2_5_2
from phasegrad_hw.learning.ep import EPNetwork, EPReadings, EPRule, EPState, EPUpdate, ep_update
from phasegrad_hw.physics import SIN, wrap

MODEL = vowel_2_5_2(np.random.default_rng(0))


@pytest.mark.parametrize("mode", ["one_sided", "centred"])
def test_one_sample_path_equals_the_batched_rule(mode: str) -> None:
    rng = np.random.default_rng(5)
    B, n, E = 120, MODEL.n, len(MODEL.edges)
    free = rng.uniform(-np.pi, np.pi, (B, 1, n))
    free[..., 0] = 0.0
    kick = rng.choice([1.0, 30.0], (B, 1, 1), p=[0.8, 0.2])  # some samples jump basins
    plus = wrap(free + rng.normal(0.0, 0.15, (B, 1, n)) * kick)
    minus = wrap(free - rng.normal(0.0, 0.15, (B, 1, n))) if mode == "centred" else None
    locked = rng.random((B, 1)) < 0.9
    state = EPState(
        rng.uniform(-3.0, 3.0, (B, n)),
        rng.uniform(0.01, 8.0, (B, E)),
        rng.random((B, n)) < 0.7,
        rng.random((B, E)) < 0.7,
    )
    rule = EPRule(params="both", mode=mode, lr_omega=0.3, lr_k=0.3)  # type: ignore[arg-type]
    net = EPNetwork(MODEL.edge_index, MODEL.roles.reference, SIN, MODEL.limits)
    batch = ep_update(rule, EPReadings(free, plus, minus, locked), state, net)
    for b in range(B):
        r = slice(b, b + 1)
        one = ep_update(
            rule,
            EPReadings(free[r], plus[r], None if minus is None else minus[r], locked[r]),
            EPState(*(x[r] for x in state)),
            net,
        )
        for name in EPUpdate._fields:
            np.testing.assert_array_equal(getattr(one, name), getattr(batch, name)[r], name)
    # not vacuous: updated, jumped and unlocked members, clipped and projected entries
    assert batch.updated.sum() > 60 and batch.basin_jump.sum() > 5 and (~locked).sum() > 3
    assert np.abs(batch.grad_omega).max() > rule.clip
    moved = batch.updated[:, None] & state.learn_omega
    assert np.any(batch.omega[moved] == MODEL.limits.omega.max)
