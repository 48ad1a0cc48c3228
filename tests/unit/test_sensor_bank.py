"""The sensor-bank task: a driven device receives each sample as a quasi-static drive
(``Sample.drive`` → ``set_drive``) and EP trains on the forced equilibria (docs/design.md §9)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.device.registry import load_device_model
from phasegrad_hw.errors import ConfigError, LimitError
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.tasks import Encoding, TaskError, load_task
from phasegrad_hw.physics.gradients import cosine
from phasegrad_hw.studies.baselines import logistic_regression
from phasegrad_hw.testing.networks import model_tiny
from tests.conftest import REPO
from tests.mosquitto import child_env

DEVICE = REPO / "examples" / "devices" / "simulated-sensor-bank-4-2.toml"


def test_sensor_bank_task_and_its_drive_encoding() -> None:
    ds = load_task("sensor-bank", seed=0)
    assert ds.n_features == 4 and ds.n_classes == 2 and len(ds.y_test) == 40
    assert logistic_regression(ds).test_accuracy >= 0.95  # the bands are separable
    assert load_task("sensor-bank:3").n_classes == 3
    with pytest.raises(TaskError, match="sensor-bank:x"):
        load_task("sensor-bank:x")
    m = load_device_model(DEVICE)
    enc = Encoding.for_device(m, readout="mean_phase")
    assert enc.inputs == "drive" and enc.drive_scale == m.limits.drive_max
    w, amp = enc.sample_inputs(np.array([[-1.0, 0.0, 1.0, 3.0]]))
    assert w.shape == (1, 0)
    assert amp is not None and np.allclose(amp, [[0.0, 1.0, 2.0, 2.0]])  # clipped to drive_max
    assert Encoding.for_device(model_tiny()).inputs == "frequency"


async def test_ep_on_the_forced_equilibrium_matches_finite_differences() -> None:
    """The controller sets the sample's drive before the free read; its centred EP estimate
    equals central finite differences of the loss measured on the device's own free reads
    (same drive, ω of one oscillator perturbed at a time)."""
    m = load_device_model(DEVICE)
    sub = SimulatedSubstrate(m)  # type: ignore[arg-type]
    omega = np.array([0.0, 0.2, -0.1, 0.15, -0.2, 0.1, -0.05])
    drive = (np.array([1.8, 0.4, 0.1, 1.2]), 0.0)
    target = np.array([-0.2, -0.2])
    beta = 1e-4
    async with sub:
        ctl = EPController(
            [sub],
            EPConfig(rule=EPRule(beta=beta, mode="centred", params="omega")),
            Parameters(omega, m.coupling_values()),
        )
        rep = await ctl.step([Sample(np.zeros(0), target, drive=drive)])
        assert rep.updated and rep.grad_omega is not None

        async def loss(w: np.ndarray) -> float:
            await sub.set_drive(*drive)
            await sub.set_frequencies(w)
            th = (await sub.read_phases()).phases[m.outputs]
            return 0.5 * float(np.sum((th - target) ** 2))

        eps = 1e-5
        fd = np.zeros(m.n)
        for k in np.flatnonzero(ctl.learnable_omega):
            e = np.zeros(m.n)
            e[k] = eps
            fd[k] = (await loss(omega + e) - await loss(omega - e)) / (2 * eps)
    # the drive comes from the clock, which follows the array's collective frequency: a
    # common shift of ω moves the drive along, so the device's loss is blind to the common
    # mode (∂L/∂ω^c, docs/design.md §2) — compare the mean-removed gradients
    mask = ctl.learnable_omega
    g = rep.grad_omega[mask] - rep.grad_omega[mask].mean()
    f = fd[mask] - fd[mask].mean()
    assert float(cosine(g, f)) > 0.9999
    assert np.allclose(g, f, atol=1e-4)


async def test_a_drive_is_limit_checked_before_anything_is_sent() -> None:
    m = load_device_model(DEVICE)
    p = Parameters(np.zeros(m.n), m.coupling_values())
    ctl = EPController([SimulatedSubstrate(m)], EPConfig(), p)  # type: ignore[arg-type]
    with pytest.raises(LimitError, match="drive_amplitude"):
        await ctl.step([Sample(np.zeros(0), np.zeros(2), drive=(np.full(4, 5.0), 0.0))])
    tiny = model_tiny()
    ctl = EPController(
        [SimulatedSubstrate(tiny)], EPConfig(), Parameters(np.zeros(5), tiny.coupling_values())
    )
    with pytest.raises(ConfigError, match="cannot apply a drive"):
        await ctl.step([Sample(np.zeros(2), np.zeros(2), drive=(np.zeros(1), 0.0))])


def test_train_sensor_bank_learns_and_checks_gradients(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r.json"
    p = subprocess.run(
        [sys.executable, "-m", "phasegrad_hw.cli", "train", "--device", str(DEVICE), "--task",
         "sensor-bank", "--epochs", "6", "--no-store", "--check-gradients", "40", "--json",
         str(out)],
        capture_output=True, text=True, env=child_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["final_test_accuracy"] >= 0.9
    assert res["history"][0]["test_accuracy"] < res["final_test_accuracy"] or (
        res["final_test_accuracy"] == 1.0
    )
    assert all(h["gradient_cosine"] > 0.999 for h in res["history"])
