"""SIGINT, SIGTERM and SIGHUP during ``phasegrad-hw train`` on every backend family: the process
exits within 2 s with one line saying how to resume, the run is ``interrupted`` at its last
complete epoch, the device reads back safe over its own protocol (board: ``I?``/``B?``; SCPI
bench: the instruments' state queries; MQTT: the agent's substrate), and ``--resume``
finishes with the parameters of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.store import RunStore
from phasegrad_hw.testing.benches import CLI, child_process, emulated_bench, scpi_query
from tests.conftest import REPO, require
from tests.mosquitto import child_env

DEVICES = REPO / "examples" / "devices"
EPOCHS = 3
EXIT_WITHIN_S = 2.0


def noisy_simulated(tmp_path: Path) -> Path:
    """The 2+5+2 vowel network with seeded readout noise (reseeded per epoch by the loop)."""
    from tests.e2e.test_resume import device

    return device(tmp_path)


def copy_device(tmp_path: Path, name: str) -> Path:
    """An example device file copied to tmp (no calibration map can sit next to it)."""
    dst = tmp_path / name
    shutil.copy(DEVICES / name, dst)
    return dst


def train_args(device: str, store: Path, out: Path, *extra: str) -> list[str]:
    return [
        *CLI,
        "train",
        "--device",
        device,
        "--epochs",
        str(EPOCHS),
        "--seed",
        "3",
        "--store",
        str(store),
        "--json",
        str(out),
        *extra,
    ]


def run_ok(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, capture_output=True, text=True, cwd=REPO, timeout=600, env={**child_env(), **env}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def wait_for_checkpoint(proc: subprocess.Popen[str], store: Path, epoch: int = 1) -> float:
    """Wait until the run has checkpointed ``epoch``; returns that epoch's duration (s)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if store.exists():
            try:
                with RunStore(store) as st:
                    runs = st.list_runs()
                    if runs and (runs[0]["epoch"] or 0) >= epoch:
                        return float(st.epochs(runs[0]["id"])[0]["seconds"])
            except Exception:  # the writer holds the lock for a moment
                pass
        time.sleep(0.02)
    out = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
    raise AssertionError(f"no checkpoint of epoch {epoch} (exit {proc.poll()}): {out[-2000:]}")


def interrupt(
    args: list[str], store: Path, sig: signal.Signals, *, twice: bool = False
) -> tuple[str, str]:
    """Start ``args``, signal it mid-epoch 2, check the exit; returns (run id, stderr)."""
    with child_process(args, stdout=subprocess.DEVNULL) as child:
        proc = child.p
        epoch_s = wait_for_checkpoint(proc, store)
        time.sleep(min(0.3 * epoch_s, 1.0))
        assert proc.poll() is None, "the run ended before it could be interrupted"
        t0 = time.monotonic()
        proc.send_signal(sig)
        if twice:
            time.sleep(0.05)
            proc.send_signal(sig)
        code = proc.wait(timeout=30)
        took = time.monotonic() - t0
        err = proc.stderr.read() if proc.stderr else ""
    assert took <= EXIT_WITHIN_S, f"exit took {took:.2f} s after {sig.name}"
    assert code == 128 + sig.value, (code, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"interrupted by {sig.name}" in lines[0] and "(device left safe)" in lines[0]
    with RunStore(store) as st:
        (info,) = st.list_runs()
        assert info["status"] == "interrupted"
        assert 1 <= info["epoch"] < EPOCHS
        assert f"--resume {info['id']}" in lines[0] and str(store) in lines[0]
        return str(info["id"]), err


def resume_and_compare(
    store: Path, run_id: str, out: Path, ref: Path, atol: float, **env: str
) -> None:
    args = [*CLI, "train", "--resume", run_id, "--store", str(store), "--json", str(out)]
    res = run_ok(args, **env)
    assert "resuming" in res.stdout
    a, b = json.loads(out.read_text()), json.loads(ref.read_text())
    assert a["epochs"] == b["epochs"] == EPOCHS
    for key in ("omega", "coupling"):
        x, y = np.asarray(a["parameters"][key]), np.asarray(b["parameters"][key])
        if atol == 0:
            assert np.array_equal(x, y), key
        else:
            assert np.abs(x - y).max() <= atol, key
    assert [h["test_accuracy"] for h in a["history"]] == [h["test_accuracy"] for h in b["history"]]
    with RunStore(store) as st:
        assert st.run(run_id)["status"] == "finished"


# --------------------------------------------------------------------------- in-process
IN_PROCESS = [
    ("simulated", signal.SIGINT),
    ("simulated", signal.SIGTERM),
    ("simulated", signal.SIGHUP),
    ("cmos-2-5-2.toml", signal.SIGTERM),
    ("optical-2-5-2.toml", signal.SIGINT),
]


@pytest.mark.slow
@pytest.mark.parametrize("which,sig", IN_PROCESS, ids=[f"{d}-{s.name}" for d, s in IN_PROCESS])
def test_in_process_emulators(tmp_path: Path, which: str, sig: signal.Signals) -> None:
    dev = noisy_simulated(tmp_path) if which == "simulated" else copy_device(tmp_path, which)
    ref = tmp_path / "ref.json"
    run_ok(train_args(str(dev), tmp_path / "ref.sqlite", ref))
    store = tmp_path / "runs.sqlite"
    run_id, _ = interrupt(train_args(str(dev), store, tmp_path / "x.json"), store, sig)
    resume_and_compare(store, run_id, tmp_path / "resumed.json", ref, atol=0.0)


def test_second_ctrl_c_aborts_at_once(tmp_path: Path) -> None:
    dev = noisy_simulated(tmp_path)
    store = tmp_path / "runs.sqlite"
    interrupt(train_args(str(dev), store, tmp_path / "x.json"), store, signal.SIGINT, twice=True)


# --------------------------------------------------------------------------- serial board
def _board_query(path: str, command: str) -> list[str]:
    """One framed request to the board on ``path`` (pty), its reply values."""
    import serial  # type: ignore[import-untyped,unused-ignore]

    from phasegrad_hw.wire.board import frame, parse_reply

    with serial.Serial(path, 115200, timeout=5) as port:
        port.reset_input_buffer()
        port.write(frame(f"4242 {command}"))
        for _ in range(20):
            line = port.readline()
            if not line:
                break
            if line.startswith(b"4242 "):
                rep = parse_reply(line.rstrip(b"\n"))
                assert rep.ok, rep.error
                return list(rep.fields)
    raise AssertionError(f"no reply to {command}")


@pytest.fixture
def board(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """``phasegrad-hw emulate board --pty`` for the CMOS chip; yields (pty path, model)."""
    require(hasattr(os, "openpty"), "pseudo-terminals (POSIX)")
    pytest.importorskip("serial")
    from phasegrad_hw.device.registry import load_device_model

    dev = copy_device(tmp_path, "cmos-2-5-2.toml")
    args = [*CLI, "emulate", "board", "--device", str(dev), "--pty", "--seed", "2"]
    with child_process(args) as child:
        proc = child.p
        assert proc.stdout is not None
        kind, _, path = proc.stdout.readline().strip().partition(" ")
        assert kind == "board", proc.stderr.read() if proc.stderr else ""
        yield path, load_device_model(dev)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_serial_board(tmp_path: Path, board: tuple[str, Any], sig: signal.Signals) -> None:
    path, model = board
    uri = f"serial://{path}"
    ref = tmp_path / "ref.json"
    run_ok(train_args(uri, tmp_path / "ref.sqlite", ref))
    store = tmp_path / "runs.sqlite"
    run_id, _ = interrupt(train_args(uri, store, tmp_path / "x.json"), store, sig)
    # the board, asked over its own protocol: injection off, biases at their safe codes
    inj = _board_query(path, "I?")
    assert inj[0] == "0", inj
    codes = [int(c) for c in _board_query(path, "B?")]
    lo = np.array([model.limits.bias.channel(i).min for i in range(model.n)])
    hi = np.array([model.limits.bias.channel(i).max for i in range(model.n)])
    safe = model.safe_biases()
    expect = np.rint((safe - lo) / ((hi - lo) / (2**16 - 1))).astype(int)
    assert codes == expect.tolist(), (codes, expect.tolist())
    resume_and_compare(store, run_id, tmp_path / "resumed.json", ref, atol=1e-9)


# --------------------------------------------------------------------------- SCPI bench
@pytest.mark.slow
def test_scpi_bench(tmp_path: Path) -> None:
    pytest.importorskip("pyvisa")
    from phasegrad_hw.device.registry import load_device_model

    dev = copy_device(tmp_path, "cmos-2-5-2.toml")
    bench_file = tmp_path / "bench.toml"
    with emulated_bench(dev, bench_file, "--seed", "2") as (_, ports):
        model = load_device_model(dev)
        ref = tmp_path / "ref.json"
        run_ok(train_args(str(bench_file), tmp_path / "ref.sqlite", ref))
        store = tmp_path / "runs.sqlite"
        run_id, _ = interrupt(
            train_args(str(bench_file), store, tmp_path / "x.json"), store, signal.SIGINT
        )
        n = model.n
        levels = scpi_query(ports["smu"], *[f":SOUR{c}:VOLT?" for c in range(1, n + 1)])
        assert np.allclose([float(v) for v in levels], model.safe_biases(), atol=1e-12)
        outs = scpi_query(ports["injection"], *[f":OUTP{c}?" for c in range(1, 3)])
        assert all(o in ("0", "OFF") for o in outs), outs
        resume_and_compare(store, run_id, tmp_path / "resumed.json", ref, atol=1e-9)


# --------------------------------------------------------------------------- MQTT
@pytest.mark.slow
def test_mqtt_agent(tmp_path: Path) -> None:
    pytest.importorskip("aiomqtt")
    from phasegrad_hw.testing.remote import NAME, vowel_model
    from tests.mosquitto import Mosquitto, agent_process

    require(shutil.which("mosquitto") is not None, "mosquitto broker")
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    dev_file = tmp_path / "vowel.toml"
    vowel_model().save(dev_file)
    try:
        with agent_process(broker.uri("agent"), dev_file, NAME, "--seed", "3", probe=True) as agent:
            uri = broker.uri("controller", NAME)
            ref = tmp_path / "ref.json"
            run_ok(train_args(str(dev_file), tmp_path / "ref.sqlite", ref))
            store = tmp_path / "runs.sqlite"
            run_id, _ = interrupt(
                train_args(uri, store, tmp_path / "x.json"), store, signal.SIGTERM
            )
            # the agent's substrate: clamp released, every bias at its safe value
            state = agent.device_state()
            assert not state["clamped"] and state["biases"] == state["safe_biases"], state
            # the store keeps no password: the resumed run takes it from the environment
            resume_and_compare(
                store,
                run_id,
                tmp_path / "resumed.json",
                ref,
                atol=1e-9,
                PHASEGRAD_HW_MQTT_PASSWORD="controller-pw",
            )
    finally:
        broker.stop()
