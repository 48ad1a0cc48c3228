"""Device models of the emulated chips: loading, saving, and one-line error messages."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from phasegrad_hw.backends.cmos import CMOSChipModel
from phasegrad_hw.backends.optical import OpticalChipModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.registry import load_device_model, open_substrate
from phasegrad_hw.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEVICES = REPO / "examples" / "devices"
CMOS = DEVICES / "cmos-2-5-2.toml"
OPTICAL = DEVICES / "optical-2-5-2.toml"


def _base(path: Path = CMOS) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _error(tmp_path: Path, data: dict[str, Any], name: str = "chip.toml") -> str:
    p = tmp_path / name
    p.write_text(tomli_w.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_device_model(p)
    return str(info.value)


@pytest.mark.parametrize(
    "path, cls",
    [
        (CMOS, CMOSChipModel),
        (OPTICAL, OpticalChipModel),
        (DEVICES / "cmos-64-64-10.toml", CMOSChipModel),
    ],
)
def test_example_device_files_load_with_their_class(path: Path, cls: type) -> None:
    m = load_device_model(path)
    assert isinstance(m, cls)
    assert m.nudge == "injection"
    sub = open_substrate(path, seed=3)
    assert sub.model == m and type(sub).__name__ in ("CMOSSubstrate", "OpticalSubstrate")


def test_vowel_files_follow_the_contract_topology() -> None:
    for path in (CMOS, OPTICAL):
        m = load_device_model(path)
        assert m.n == 9 and m.roles.inputs == [0, 1] and m.roles.hidden == [2, 3, 4, 5, 6]
        assert m.roles.outputs == [7, 8] and m.roles.reference == 0
        pairs = {(e.i, e.j) for e in m.edges}
        expected = (
            {(i, h) for i in (0, 1) for h in range(2, 7)}
            | {(h, o) for h in range(2, 7) for o in (7, 8)}
            | {(h, h + 1) for h in range(2, 6)}
        )
        assert pairs == expected
        assert (m.limits.omega.min, m.limits.omega.max) == (-3.0, 3.0)
        assert (m.limits.coupling.min, m.limits.coupling.max) == (0.01, 8.0)


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
@pytest.mark.parametrize("path", [CMOS, OPTICAL])
def test_save_and_load_round_trip(tmp_path: Path, suffix: str, path: Path) -> None:
    m = load_device_model(path)
    changed = m.model_copy(update={"seed": 17, "name": "copy"})
    out = tmp_path / f"chip{suffix}"
    changed.save(out)
    back = DeviceModel.load(out)
    assert type(back) is type(m)
    assert back == changed and back != m


# -- one test per class of device-file error, checking the exact one-line message ---------
def test_wrong_type(tmp_path: Path) -> None:
    d = _base()
    d["n_oscillators"] = "nine"
    assert _error(tmp_path, d) == (
        "chip.toml: n_oscillators: 'nine' — Input should be a valid integer, unable to parse "
        "string as an integer"
    )


def test_out_of_range(tmp_path: Path) -> None:
    d = _base()
    d["oscillator"]["alpha"] = 3.0
    assert _error(tmp_path, d) == (
        "chip.toml: oscillator.alpha: 3.0 — Input should be less than or equal to 2"
    )
    d = _base(OPTICAL)
    d["laser"]["linewidth_hz"] = -5.0
    assert _error(tmp_path, d) == (
        "chip.toml: laser.linewidth_hz: -5.0 — Input should be greater than or equal to 0"
    )


def test_unknown_field(tmp_path: Path) -> None:
    d = _base()
    d["tdc"]["lsb_ps"] = 5
    assert _error(tmp_path, d) == "chip.toml: tdc.lsb_ps: 5 — Extra inputs are not permitted"


def test_inconsistent_topology(tmp_path: Path) -> None:
    d = _base()
    d["edges"][3]["j"] = 12
    assert _error(tmp_path, d) == "chip.toml: edges[3].j: 12 is not an oscillator (allowed 0…8)"
    d = _base()
    d["roles"]["hidden"] = [2, 3, 4, 5, 6, 7]
    assert _error(tmp_path, d) == (
        "chip.toml: roles: [7] is in both hidden and outputs; roles must not overlap"
    )
    d = _base()
    d["edges"] = [e for e in d["edges"] if 7 not in (e["i"], e["j"])]
    assert _error(tmp_path, d) == (
        "chip.toml: edges: the coupling graph is not connected; oscillators [7] are cut off "
        "from the reference"
    )
    d = _base()
    d["failures"]["stuck_channel"] = 9
    assert _error(tmp_path, d) == (
        "chip.toml: failures.stuck_channel: 9 is not an oscillator (allowed 0…8)"
    )


def test_unordered_limits(tmp_path: Path) -> None:
    d = _base()
    d["limits"]["omega"] = {"min": 3.0, "max": -3.0}
    assert _error(tmp_path, d) == (
        "chip.toml: limits.omega: {'min': 3.0, 'max': -3.0} — limits must be ordered: "
        "min (3.0) < max (-3.0)"
    )
    d = _base()
    d["bias_dac"]["range_v"] = {"min": 1.2, "max": 0.8}
    assert _error(tmp_path, d) == (
        "chip.toml: bias_dac.range_v: {'min': 1.2, 'max': 0.8} — limits must be ordered: "
        "min (1.2) < max (0.8)"
    )


def test_chip_consistency_checks(tmp_path: Path) -> None:
    d = _base()
    d["limits"]["bias"]["max"] = 1.5
    assert _error(tmp_path, d) == (
        "chip.toml: limits.bias: [0.8, 1.5] V — must lie within bias_dac.range_v [0.8, 1.2] V"
    )
    d = _base()
    d["oscillator"]["vth_v"] = 0.79
    assert _error(tmp_path, d) == (
        "chip.toml: limits.bias.min: 0.8 V — must exceed oscillator.vth_v + 4σ mismatch "
        "(0.802 V) so every ring oscillates"
    )
    d = _base(OPTICAL)
    d["heaters"]["power_ref_mw"] = 5.0
    assert _error(tmp_path, d) == (
        "chip.toml: heaters.power_ref_mw: 5.0 mW (V = 2.236 V) — must be reachable inside "
        "limits.bias (0.0, 1.2) V"
    )


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    d = copy.deepcopy(_base())
    d["tdc"]["lsb_s"] = -1.0
    d["capacitors"]["colour"] = "red"
    msg = _error(tmp_path, d)
    lines = msg.splitlines()
    assert len(lines) == 2
    assert sorted(lines) == [
        "chip.toml: capacitors.colour: 'red' — Extra inputs are not permitted",
        "chip.toml: tdc.lsb_s: -1.0 — Input should be greater than 0",
    ]


def test_unknown_backend_names_the_allowed_ones(tmp_path: Path) -> None:
    d = _base()
    d["backend"] = "cmoss"
    msg = _error(tmp_path, d)
    assert msg.startswith("chip.toml: backend: 'cmoss' — allowed: ")
    assert "cmos" in msg and "optical" in msg


# -- the one backend registry ----------------------------------------------------------
def test_every_registry_entry_resolves() -> None:
    from phasegrad_hw.device import registry

    for name, entry in registry.BACKENDS.items():
        if entry.model is not None:
            cls = registry.model_class(name)
            assert issubclass(cls, DeviceModel) and cls.model_fields["backend"].default == name
        for ref in (entry.opener, entry.uri_opener, entry.nominal_map):
            if ref is not None:
                assert callable(registry._resolve(ref)), ref
        assert (entry.model is None) == (entry.opener is None), name
        assert (entry.uri_opener is None) == (not entry.schemes), name
    assert registry.uri_schemes() == {"serial": "serial", "mqtt": "mqtt"}
    assert registry.file_backends() == ["cmos", "daqmx", "optical", "simulated", "visa"]


def test_device_files_load_without_importing_a_backend_first() -> None:
    """No import side effects: a fresh interpreter loads a CMOS file into its class, and
    importing the registry imports no backend."""
    code = (
        "import sys\n"
        "from phasegrad_hw.device import registry\n"
        "assert not [m for m in sys.modules if m.startswith('phasegrad_hw.backends')]\n"
        f"m = registry.load_device_model({str(CMOS)!r})\n"
        "print(type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "CMOSChipModel"


def test_bench_chip_backend_names_the_allowed_ones() -> None:
    from phasegrad_hw.device.registry import chip_model

    with pytest.raises(ConfigError) as info:
        chip_model({"backend": "visa"}, bench="visa")
    assert str(info.value) == "chip.backend: 'visa' — allowed: cmos, optical, simulated"


def test_remote_models_use_the_registry() -> None:
    from phasegrad_hw.backends.mqtt import model_from_agent

    data = load_device_model(CMOS).model_dump(mode="json")
    assert type(model_from_agent(data)) is CMOSChipModel
    generic = model_from_agent({**data, "backend": "elsewhere"})
    assert type(generic) is DeviceModel and generic.n == 9
