"""Bench files: the templates under examples/benches load as device files, and
``phasegrad-hw bench check`` reports an emulated SCPI bench without moving anything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phasegrad_hw.device.registry import load_device_model
from phasegrad_hw.engine.layered import phase_data
from phasegrad_hw.learning.tasks import load_task
from phasegrad_hw.testing.benches import emulated_bench, run_cli, scpi_query
from phasegrad_hw.testing.networks import model_layered_small
from tests.conftest import REPO

BENCHES = REPO / "examples" / "benches"


@pytest.mark.parametrize(
    "name,backend", [("scpi-bench.toml", "visa"), ("ni-daqmx-bench.toml", "daqmx")]
)
def test_templates_load_as_device_files(name: str, backend: str) -> None:
    model = load_device_model(BENCHES / name)
    assert model.backend == backend and model.n == 9
    assert model.chip_model() is not None  # type: ignore[attr-defined]
    text = (BENCHES / name).read_text()
    assert text.startswith("#") and "bench check" in text


def test_scpi_template_shows_the_input_source_commented() -> None:
    """The held-input/drive instrument is documented (with units) but not configured: the
    template's 2+5+2 chip has no held inputs, so the loaded bench has no input source."""
    text = (BENCHES / "scpi-bench.toml").read_text()
    commented = [ln[2:] for ln in text.splitlines() if ln.startswith("# ")]
    assert "[input_source]" in commented
    assert any(ln.startswith("drive_v_per_unit = 1.0") and "(V)" in ln for ln in commented)
    assert any(ln.startswith("timeout_s =") and "(s)" in ln for ln in commented)
    assert any(ln.startswith("channels =") and "held inputs" in ln for ln in commented)
    assert load_device_model(BENCHES / "scpi-bench.toml").input_source is None  # type: ignore[attr-defined]


def test_daqmx_template_shows_held_and_drive_commented() -> None:
    """Like the SCPI template's input source: the DAQ bench's held-input and drive fields are
    documented (with units) but not configured, every such field of the bench model is there
    at its default, and uncommented they pass the bench model's own checks for a chip with
    held inputs and a drive (and are refused, by name, for the template's 2+5+2 chip)."""
    import tomllib

    from phasegrad_hw.backends.daqmx import DaqmxBenchModel, daqmx_bench_for_chip
    from phasegrad_hw.device.model import DeviceModel
    from phasegrad_hw.errors import ConfigError
    from tests.protocol.test_board_held import held_drive_model

    path = BENCHES / "ni-daqmx-bench.toml"
    lines = path.read_text().splitlines()
    start = next(k for k, ln in enumerate(lines) if ln.startswith("# held_channels ="))
    end = next(k for k in range(start, len(lines)) if not lines[k].startswith("# "))
    block = [ln[2:] for ln in lines[start:end]]
    fragment = tomllib.loads("\n".join(block))
    fields = DaqmxBenchModel.model_fields
    bench_only = set(fields) - set(DeviceModel.model_fields)  # the wiring, not the chip
    wanted = {f for f in bench_only if f.startswith(("held_", "drive_", "phase_"))}
    assert set(fragment) == wanted
    for name in wanted - {"held_channels", "drive_channels", "drive_phase_channel"}:
        assert fragment[name] == fields[name].default, name
    units = {ln.split("=")[0].strip(): ln for ln in block}
    assert "(V/rad)" in units["phase_v_per_rad"] and "(V)" in units["drive_v_per_unit"]
    assert "(V)" in units["phase_range_v"] and "(V)" in units["drive_range_v"]
    shipped = load_device_model(path)
    assert shipped.held_channels == [] and shipped.drive_phase_channel is None  # type: ignore[attr-defined]
    # uncommented, for a chip with two held inputs and three driven oscillators
    chip = held_drive_model()
    assert (len(chip.roles.held), len(chip.roles.drive)) == (2, 3)
    data = {**daqmx_bench_for_chip(chip).model_dump(mode="json"), **fragment}
    bench = DaqmxBenchModel.from_dict(data)
    assert {k: getattr(bench, k) for k in fragment} == fragment
    with pytest.raises(ConfigError, match="held_channels: 2 entries — need 0"):
        DaqmxBenchModel.from_dict({**tomllib.loads(path.read_text()), **fragment})


def test_bench_check_reports_without_moving_anything(tmp_path: Path) -> None:
    pytest.importorskip("pyvisa")
    dev = REPO / "examples" / "devices" / "cmos-2-5-2.toml"
    bench_file = tmp_path / "bench.toml"
    with emulated_bench(dev, bench_file) as (_, ports):
        model = load_device_model(dev)
        # put the bench in a non-safe state a check must leave as it is
        levels = [float(0.5 * (b + model.limits.bias.max)) for b in model.safe_biases()]
        set_cmd = ";".join(f":SOUR{c}:VOLT {v!r}" for c, v in enumerate(levels, 1))
        scpi_query(ports["smu"], set_cmd + ";*OPC?")
        queries = [f":SOUR{c}:VOLT?" for c in range(1, 10)] + [":OUTP1?"]
        before = scpi_query(ports["smu"], *queries)
        res = run_cli("bench", "check", str(bench_file), timeout_s=120)
        assert res.returncode == 0, res.stdout + res.stderr
        out = res.stdout
        assert "nothing was changed" in out
        for name in ("smu", "phase_meter", "injection"):
            assert f"{name}: TCPIP::127.0.0.1::{ports[name]}::SOCKET" in out
        assert out.count("  smu ch") == 9 and "protection" in out and out.rstrip().endswith("ok")
        after = scpi_query(ports["smu"], *queries)
        assert after == before
        assert np.allclose([float(v) for v in after[:9]], levels)


def test_bench_check_mistakes(tmp_path: Path) -> None:
    for args, needle in (
        ([str(tmp_path / "nope.toml")], "does not exist"),
        ([str(REPO / "examples" / "devices" / "cmos-2-5-2.toml")], "not a bench"),
    ):
        res = run_cli("bench", "check", *args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr


def test_held_chip_trains_behind_an_emulated_bench(tmp_path: Path) -> None:
    """``emulate bench`` for a CMOS chip with held inputs serves the input source too, and
    ``train --device BENCH`` runs through the SCPI driver: the couplings are the chip's own
    (a SCPI bench cannot set them), the frequencies learn, and the input source holds the
    phases of a sample of the task (output on) when training ends."""
    pytest.importorskip("pyvisa")
    model = model_layered_small("cmos", sizes=(2, 4, 2))
    dev, bench_file, out = tmp_path / "held.toml", tmp_path / "bench.toml", tmp_path / "r.json"
    model.save(dev)
    with emulated_bench(dev, bench_file, "--seed", "1") as (_, ports):
        assert list(ports) == ["smu", "phase_meter", "injection", "input_source"]
        bench = load_device_model(bench_file)
        assert bench.input_source is not None and bench.input_source.channels == [1, 2]  # type: ignore[attr-defined]
        assert scpi_query(ports["input_source"], "*IDN?")[0].split(",")[1] == "EMU-INPUTS"
        args = ["train", "--device", str(bench_file), "--task", "vowels:a,i", "--epochs", "1"]
        res = run_cli(*args, "--no-store", "--json", str(out))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "params: omega (this device cannot set couplings)" in res.stdout
        r = json.loads(out.read_text())
        assert r["epochs"] == 1 and r["ep_config"]["rule"]["params"] == "omega"
        ds = load_task("vowels:a,i", seed=0)
        assert r["skipped_samples"] < len(ds.y_train)  # some steps updated
        omega = np.asarray(r["parameters"]["omega"])
        learn = [*model.roles.hidden, *model.roles.outputs]
        assert np.any(omega[learn] != 0.0) and np.all(omega[model.roles.held] == 0.0)
        assert np.array_equal(r["parameters"]["coupling"], model.coupling_values())
        # the instrument's state: held channels on, phases those of one sample (rad → deg)
        reply = scpi_query(
            ports["input_source"], ":OUTP1?", ":OUTP2?", ":SOUR1:PHAS?", ":SOUR2:PHAS?"
        )
        assert reply[:2] == ["1", "1"], reply
        deg = np.array([float(v) for v in reply[2:]])
        enc = phase_data(ds, model.input_phase_range_rad)
        phases = np.degrees(np.concatenate([enc.train.phases, enc.test.phases]))
        err = np.abs((deg - phases + 180.0) % 360.0 - 180.0).max(axis=1)
        assert err.min() < 1e-9 and np.any(deg != 0.0), (deg, err.min())
        assert scpi_query(ports["input_source"], ":SYST:ERR?") == ['0,"No error"']
        # bench check reads the input source too
        chk = run_cli("bench", "check", str(bench_file), timeout_s=120)
        assert chk.returncode == 0, chk.stdout + chk.stderr
        assert chk.stdout.count("  input_source ch") == 2 and "(held input 1)" in chk.stdout
