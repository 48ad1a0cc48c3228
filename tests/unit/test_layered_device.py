"""Layered held-input devices (docs/design.md §8): roles, signed couplings, non-finite values,
the device ↔ network mapping, ``device new`` and the chip-scale tasks (csv, mnist)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from phasegrad_hw.cli import build_app
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.presets import layered_chip
from phasegrad_hw.engine.layered import layered_couplings, layered_from_device
from phasegrad_hw.errors import ConfigError, LimitError
from phasegrad_hw.learning.tasks import TaskError, load_task
from phasegrad_hw.physics.layered import LayeredNetwork

SIZES = (4, 3, 2)
PHASES = (0.0, math.pi / 2)


def small(backend: str = "simulated", seed: int = 0) -> DeviceModel:
    K = layered_couplings(SIZES, 2, seed)
    return layered_chip(backend, SIZES, PHASES, K.tolist(), seed=seed)


def data_of(model: DeviceModel) -> dict:
    return model.model_dump(mode="json", exclude_none=True)


def error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        DeviceModel.from_dict(data, source="chip.toml: ")
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("backend", ["simulated", "cmos", "optical"])
def test_new_layered_device_maps_back_to_its_network(backend: str) -> None:
    m = small(backend)
    dev = layered_from_device(m)
    net = LayeredNetwork(4, (3,), 2, PHASES)
    assert dev.net == net
    np.testing.assert_array_equal(dev.K, layered_couplings(SIZES, 2, 0))
    assert (dev.K < 0).any() and all(e.invertible for e in m.edges)
    assert m.feature_oscillators == [0, 1, 2, 3] and m.roles.reference == 4
    # [−max, max] on invertible edges
    np.testing.assert_array_equal(dev.k_lo, -m.limits.coupling.max)


def test_mapping_survives_renumbering_and_edge_order() -> None:
    m = small()
    rng = np.random.default_rng(1)
    perm = rng.permutation(m.n)  # device oscillator d becomes perm[d]
    d = data_of(m)
    d["edges"] = [
        {**e, "i": int(perm[e["j"]]), "j": int(perm[e["i"]])}
        for e in (d["edges"][k] for k in rng.permutation(len(d["edges"])))
    ]
    d["roles"] = {k: ([int(perm[v]) for v in r] if isinstance(r, list) else int(perm[r]))
                  for k, r in d["roles"].items()}  # fmt: skip
    shuffled = DeviceModel.from_dict(d)
    np.testing.assert_array_equal(layered_from_device(shuffled).K, layered_from_device(m).K)


def test_layered_mapping_errors_name_the_edge() -> None:
    d = data_of(small())
    d["edges"].append({"i": 0, "j": 1, "k": 0.5})  # input–input: not a layered coupling
    with pytest.raises(ValueError, match=r"edges\[\d+\]: 0–1 does not join"):
        layered_from_device(DeviceModel.from_dict(d))
    d = data_of(small())
    d["edges"] = d["edges"][1:]
    with pytest.raises(ValueError, match="needs the coupling"):
        layered_from_device(DeviceModel.from_dict(d))


def test_signed_couplings_need_invertible_edges_and_stay_within_limits() -> None:
    d = data_of(small())
    d["edges"][0] = {**d["edges"][0], "k": -0.3, "invertible": False}
    assert "edges[0].k: -0.3 is negative" in error(d) and "invertible = true" in error(d)
    d["edges"][0] = {**d["edges"][0], "k": -9.0, "invertible": True}
    assert "edges[0].k: -9.0 is outside limits.coupling" in error(d)
    m = small()
    k = m.coupling_values()
    k[0] = -7.9
    np.testing.assert_array_equal(m.check_couplings(k), k)
    k[0] = -8.5
    with pytest.raises(LimitError, match=r"coupling\[0\] .*invertible edge\): -8.5"):
        m.check_couplings(k)
    # an ordinary edge keeps [min, max]
    plain = DeviceModel.load(Path(__file__).parents[2] / "examples/devices/cmos-2-5-2.toml")
    k2 = plain.coupling_values()
    k2[3] = -0.5
    with pytest.raises(LimitError, match=r"\[0.01, 8\]"):
        plain.check_couplings(k2)


@pytest.mark.parametrize(
    "path, value",
    [
        (("edges", 0, "k"), float("nan")),
        (("limits", "coupling", "max"), float("inf")),
        (("held_injection",), float("inf")),
        (("bias_phases_rad", 1), float("nan")),
        (("tdc", "lsb_s"), float("inf")),
    ],
)
def test_no_device_file_field_accepts_inf_or_nan(path: tuple, value: float) -> None:
    d = data_of(small("cmos"))
    node = d
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    msg = error(d)
    assert "finite" in msg and ".".join(map(str, path)) in msg


def test_role_and_encoding_errors() -> None:
    d = data_of(small())
    assert "roles.held" in error({**d, "input_encoding": "frequency"})
    d2 = {**d, "roles": {**d["roles"], "held": []}}
    assert 'input_encoding = "phase" needs held' in error(d2)
    assert "one phase per roles.bias" in error({**d, "bias_phases_rad": [0.0]})
    assert "roles.reference: 0" in error({**d, "roles": {**d["roles"], "reference": 0}})
    both = {**d, "roles": {**d["roles"], "bias": [3, 5]}, "bias_phases_rad": [0.0, 1.0]}
    assert "in both held and bias" in error(both)


def test_device_new_cli(tmp_path: Path) -> None:
    out = tmp_path / "chip.toml"
    args = ["device", "new", "--backend", "cmos", "--layers", "4,3,2", "--out", str(out)]
    r = CliRunner().invoke(build_app(), [*args, "--seed", "3"])
    assert r.exit_code == 0, r.output
    m = DeviceModel.load(out)
    assert m.backend == "cmos" and m.input_encoding == "phase" and m.n == 11
    np.testing.assert_array_equal(layered_from_device(m).K, layered_couplings(SIZES, 2, 3))
    bad = CliRunner().invoke(build_app(), [*args[:5], "4,3", "--out", str(out)])
    assert bad.exit_code == 2 and "--layers: '4,3'" in bad.output


def test_csv_task(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = ["a,b,kind,c"]
    for i in range(40):
        rows.append(f"{rng.normal():.4f},{10 * rng.normal():.4f},{'xy'[i % 2]},{i}")
    p = tmp_path / "t.csv"
    p.write_text("\n".join(rows) + "\n")
    ds = load_task(f"csv:{p}", label_column="kind", seed=1, val_fraction=0.1)
    assert ds.classes == ("x", "y") and ds.n_features == 3
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 40 and len(ds.y_val) > 0
    # scaling fitted on the training split only
    np.testing.assert_allclose(ds.x_train.min(axis=0), -1.0)
    np.testing.assert_allclose(ds.x_train.max(axis=0), 1.0)
    with pytest.raises(TaskError, match="column 'kind', row 2: 'x' is not a number"):
        load_task(f"csv:{p}")  # the last column 'c' is the label, 'kind' a feature
    with pytest.raises(TaskError, match="--label-column: 'nope'"):
        load_task(f"csv:{p}", label_column="nope")
    one = tmp_path / "one.csv"
    one.write_text("a,y\n1,k\n2,k\n3,k\n")
    with pytest.raises(TaskError, match="label column 'y' has a single class"):
        load_task(f"csv:{one}")


def _idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    raw = head + arr.astype(np.uint8).tobytes()
    (path.with_name(path.name + ".gz")).write_bytes(gzip.compress(raw)) if gz else path.write_bytes(
        raw
    )


def test_mnist_task_from_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    xtr = rng.integers(0, 256, (30, 4, 4))
    ytr = np.arange(30) % 3
    xte = rng.integers(0, 256, (9, 4, 4))
    yte = np.arange(9) % 3
    _idx(tmp_path / "train-images-idx3-ubyte", xtr, gz=True)
    _idx(tmp_path / "train-labels-idx1-ubyte", ytr, gz=False)
    _idx(tmp_path / "t10k-images-idx3-ubyte", xte, gz=False)
    _idx(tmp_path / "t10k-labels-idx1-ubyte", yte, gz=True)
    ds = load_task(f"mnist:{tmp_path}")
    assert ds.n_features == 16 and ds.classes == ("0", "1", "2")
    np.testing.assert_array_equal(ds.y_test, yte)
    lo, hi = xtr.reshape(30, -1).min(axis=0), xtr.reshape(30, -1).max(axis=0)
    np.testing.assert_allclose(ds.x_test, 2 * (xte.reshape(9, -1) - lo) / (hi - lo) - 1)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(TaskError, match=r"t10k-labels-idx1-ubyte\[.gz\] not found"):
        load_task(f"mnist:{tmp_path}")


def test_train_checks_the_task_before_opening_a_device(tmp_path: Path) -> None:
    dev = tmp_path / "chip.toml"
    small().save(dev)
    r = CliRunner().invoke(build_app(), ["train", "--device", str(dev), "--task", "digits"])
    assert r.exit_code == 2
    assert "64 features, but simulated-4-3-2 has 4 input oscillators (roles.held)" in r.output
    small("cmos").save(dev)  # an emulated chip trains through the controller: checked first too
    r = CliRunner().invoke(build_app(), ["train", "--device", str(dev), "--task", "xor"])
    assert r.exit_code == 2
    assert "2 features, but cmos-4-3-2 has 4 input oscillators (roles.held)" in r.output


def test_train_runs_an_emulated_held_chip_through_the_controller(tmp_path: Path) -> None:
    """A held-input CMOS chip trains through the hardware loop with the layered defaults
    (Adam, mini-batch 32, centred β, softmax cross-entropy) and records what it used."""
    dev = tmp_path / "chip.toml"
    small("cmos").save(dev)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (60, 4))
    y = (x[:, 0] > x[:, 1]).astype(int)
    rows = ["a,b,c,d,label"] + [
        ",".join(f"{v:.4f}" for v in r) + f",{c}" for r, c in zip(x, y, strict=True)
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    args = ["train", "--device", str(dev), "--task", f"csv:{tmp_path / 't.csv'}", "--epochs",
            "1", "--no-store", "--json", str(out), "--noise", "none"]  # fmt: skip
    r = CliRunner().invoke(build_app(), args)
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    rule = res["ep_config"]["rule"]
    assert (rule["optimizer"], rule["mode"], rule["beta"], rule["params"]) == (
        "adam",
        "centred",
        0.02,
        "K",
    )
    assert res["ep_config"]["batch_size"] == 32 and res["epochs"] == 1
    assert 0.0 <= res["final_test_accuracy"] <= 1.0
