"""phasegrad_hw.studies.autograd: AD through an unrolled JAX Newton solver vs our IFT."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from phasegrad_hw import physics as ph
from phasegrad_hw.physics import gradients as gr
from phasegrad_hw.studies import verify
from tests.conftest import require


@pytest.fixture(autouse=True)
def _needs_jax() -> None:
    require(importlib.util.find_spec("jax") is not None, "jax (optional extra 'autograd')")


@pytest.mark.slow
def test_identity_table_autograd_matches_implicit_gradient() -> None:
    """Every N of the identity table (6…200): ‖g_AD − g_IFT‖/‖g_IFT‖ <= 1e-10, both with the
    iterations started at the converged state and 0.05 rad off it."""
    from phasegrad_hw.studies.autograd import autograd_table

    rows = autograd_table()
    assert [r.N for r in rows] == list(verify.DEFAULT_SIZES)
    for r in rows:
        assert r.rel_error_warm <= 1e-10, r
        assert r.rel_error_perturbed <= 1e-10, r
        assert r.residual <= 1e-12, r


def test_non_odd_coupling_and_injection_loss() -> None:
    """A phase lag, a second harmonic and offsets (J̃ not symmetric) with the injection loss:
    the AD gradient still equals −J̃^{−T} e of the pinned reduced system."""
    from phasegrad_hw.studies.autograd import unrolled_gradient

    H = ph.CouplingFunction(harmonics=(1.0, 0.2), phase_lag=0.2, offset=0.05, cos_offset=0.1)
    w, K = verify.verify_network(12, 3)
    free = ph.solve_equilibrium(w, K, H)
    assert free.ok
    outs = np.array([10, 11])
    tgt = free.theta[outs] + np.array([0.3, -0.2])
    e = gr.loss_grad_theta(free.theta, outs, tgt, kind="injection")
    ift = gr.implicit_gradient(free.theta, K, e, H)
    g, res = unrolled_gradient(w, K, outs, tgt, free.theta, H, kind="injection")
    assert res < 1e-12
    assert np.linalg.norm(g - ift) <= 1e-10 * np.linalg.norm(ift)


def test_too_few_iterations_from_a_perturbed_start_are_detected() -> None:
    """The check has teeth: one Newton step from 0.05 rad off the locked state is not
    converged, and its AD gradient is visibly off the implicit one."""
    from phasegrad_hw.studies.autograd import unrolled_gradient

    w, K = verify.verify_network(10, 0)
    free = ph.solve_equilibrium(w, K)
    outs = np.array([8, 9])
    tgt = free.theta[outs] + 0.2
    ift = gr.implicit_gradient(free.theta, K, gr.loss_grad_theta(free.theta, outs, tgt))
    kick = np.random.default_rng(1).normal(0.0, 0.05, 10)
    g, res = unrolled_gradient(w, K, outs, tgt, free.theta + kick, iterations=1)
    assert res > 1e-6
    assert np.linalg.norm(g - ift) > 1e-4 * np.linalg.norm(ift)
