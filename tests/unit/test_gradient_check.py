"""``train --check-gradients N``: the loop compares the EP estimate with the device's implicit
gradient every N steps (cosine logged, kept per epoch, stored with the run)."""

from __future__ import annotations

import numpy as np
import pytest

from phasegrad_hw.backends.cmos import CMOSSubstrate
from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.device.registry import load_device_model
from phasegrad_hw.device.substrate import Capability
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.loop import LoopOptions, gradient_cosine, train_on_substrates
from phasegrad_hw.learning.tasks import Encoding
from phasegrad_hw.physics.gradients import finite_difference_gradient
from phasegrad_hw.store import RunStore
from phasegrad_hw.testing.doubles import ScriptedSubstrate
from phasegrad_hw.testing.networks import blobs, model_tiny
from tests.conftest import REPO

DATA = blobs(40, 20, seed=0)


async def test_cosine_of_a_step_against_finite_differences() -> None:
    """The check's two sides: EP's step estimate and the device's implicit gradient, both
    against central finite differences of the loss on the ideal simulated device."""
    m = model_tiny()
    sub = SimulatedSubstrate(m)
    async with sub:
        cfg = EPConfig(rule=EPRule(beta=1e-3, mode="centred", params="omega"))
        ctl = EPController(
            [sub], cfg, Parameters(np.array([0.0, 0.1, -0.2, 0.3, -0.1]), m.coupling_values())
        )
        target = np.array([-0.3, 0.3])
        rep = await ctl.step([Sample(np.array([0.0, 0.4]), target)])
        cos = gradient_cosine([sub], rep, ctl.learnable_omega)
        assert cos is not None and cos > 0.9999
        exact = sub.exact_gradient(target)
        w = np.array([0.0, 0.4, -0.2, 0.3, -0.1])
        fd = finite_difference_gradient(
            w - w.mean(), m.coupling_matrix(), m.outputs, target, m.coupling(),
            ref=m.roles.reference, kind=m.nudge, theta0=sub.true_state()[0],
        )  # fmt: skip
        mask = ctl.learnable_omega
        assert np.allclose(exact[mask], fd[mask], atol=1e-6)
        flipped = rep._replace(grad_omega=-rep.grad_omega)
        assert gradient_cosine([sub], flipped, mask) == pytest.approx(-cos)


async def test_loop_keeps_the_epoch_mean_cosine_and_refuses_blind_devices() -> None:
    m = model_tiny()
    cfg = EPConfig(rule=EPRule(beta=0.05, mode="centred"))
    opts = LoopOptions(epochs=2, seed=1, check_gradients=5)
    res = await train_on_substrates([SimulatedSubstrate(m)], DATA, Encoding(), cfg, opts)
    cos = [h.gradient_cosine for h in res.state.history]
    assert all(c is not None and 0.99 < c <= 1.0 + 1e-12 for c in cos), cos
    off = await train_on_substrates(
        [SimulatedSubstrate(m)], DATA, Encoding(), cfg, LoopOptions(epochs=1, seed=1)
    )
    assert off.state.history[0].gradient_cosine is None
    blind = ScriptedSubstrate(SimulatedSubstrate(m))
    blind.capabilities = frozenset(blind.capabilities - {Capability.EXACT_GRADIENT})
    with pytest.raises(ConfigError, match="check-gradients.*implicit gradient"):
        await train_on_substrates([blind], DATA, Encoding(), cfg, opts)
    assert blind.calls == []  # refused before anything was sent


async def test_cmos_chip_cosine_is_below_one_but_close() -> None:
    """A real-ish chip (asymmetric K, non-odd H, readout noise): the check sees the bias."""
    dev = load_device_model(REPO / "examples" / "devices" / "cmos-2-5-2.toml")
    from phasegrad_hw.learning.tasks import synthetic_vowels

    ds = synthetic_vowels(("a", "i"), n_per_class=10, seed=0)
    cfg = EPConfig(rule=EPRule(beta=0.2, mode="centred", averages=16))
    opts = LoopOptions(epochs=1, seed=0, check_gradients=4)
    enc = Encoding(readout="mean_phase", margin=0.2)
    res = await train_on_substrates([CMOSSubstrate(dev, seed=0)], ds, enc, cfg, opts)  # type: ignore[arg-type]
    c = res.state.history[0].gradient_cosine
    assert c is not None and 0.8 < c < 0.99999


def test_store_keeps_the_cosine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from phasegrad_hw.learning.loop import EpochRecord, LoopState

    with RunStore(tmp_path / "runs.sqlite") as rs:
        rid = rs.create_run({"options": {}}, "dev")
        p = Parameters(np.zeros(3), np.zeros(2))
        rs.save_checkpoint(rid, LoopState(1, p, [EpochRecord(1, 0.5, 0.5, 0, 1.0, 0.1, 0.987)]))
        _, st = rs.load_checkpoint(rid)
    assert st.history[0].gradient_cosine == 0.987


def test_cli_check_gradients_json_store_and_refusal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys

    from tests.mosquitto import child_env

    sim = REPO / "examples" / "devices" / "simulated-2-5-2.toml"
    store = tmp_path / "runs.sqlite"
    out = tmp_path / "res.json"
    cmd = [sys.executable, "-m", "phasegrad_hw.cli", "train", "--device", str(sim)]
    proc = subprocess.run(
        [*cmd, "--epochs", "1", "--check-gradients", "20", "--store", str(store),
         "--json", str(out)],
        capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["best_test_accuracy"] == max(h["test_accuracy"] for h in res["history"])
    cos = res["history"][0]["gradient_cosine"]
    assert f" cos {cos:.4f}" in proc.stdout  # shown in the epoch's progress line
    assert 0.9 < cos <= 1.0
    with RunStore(store) as rs:
        _, st = rs.load_checkpoint(res["run_id"])
    assert st.history[0].gradient_cosine == cos
    held = REPO / "examples" / "devices" / "cmos-64-64-10.toml"
    proc = subprocess.run(
        [*cmd[:-1], str(held), "--task", "digits", "--check-gradients", "5", "--no-store"],
        capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--check-gradients" in lines[0], proc.stderr
