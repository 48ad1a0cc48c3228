"""Everyday mistakes give one line on stderr and exit 2, never a traceback (the console script
``python -m phasegrad_hw.cli`` as a user runs it): bad options and files, unknown tasks, a busy
port, and damaged or wrong run stores for every ``runs`` command, ``train --resume`` and
``evaluate``; non-finite numbers in options and in the noise map file are refused by name."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from phasegrad_hw.store import RunStore
from phasegrad_hw.testing.benches import run_cli
from tests.conftest import REPO

SIM = REPO / "examples" / "devices" / "simulated-2-5-2.toml"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd or REPO)


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def device_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dev")
    shutil.copy(SIM, d / SIM.name)
    return d / SIM.name


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--data", "/nonexistent/vowels.csv"], ["--data", "does not exist"]),
        (["--task", "vowels:a,x"], ["'x'"]),
        (["--task", "speech"], ["--task", "speech"]),
        (["--readout", "softmax"], ["readout", "softmax"]),
        (["--lr", "inf"], ["lr", "inf"]),
        (["--beta", "nan"], ["beta", "nan"]),
        (["--transfer", "/nonexistent/map.json"], ["--transfer"]),
        (["--noise", "/nonexistent/noise.json"], ["--noise"]),
    ],
)
def test_train_mistakes(device_copy: Path, args: list[str], needles: list[str]) -> None:
    proc = cli("train", "--device", str(device_copy), "--epochs", "1", "--no-store", *args)
    line = assert_one_line(proc, *needles)
    assert "device left safe" not in line  # no device was opened


def test_train_without_device_and_missing_device_file(tmp_path: Path) -> None:
    assert_one_line(cli("train", "--no-store"), "--device")
    assert_one_line(
        cli("train", "--no-store", "--device", str(tmp_path / "nope.toml")), "nope.toml"
    )


def test_noise_map_with_non_finite_value_is_refused_by_name(
    device_copy: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "noise.json"
    bad.write_text(
        json.dumps({"device": "x", "created": "now", "beta": float("inf"), "averages": 4})
    )
    assert_one_line(
        cli("train", "--device", str(device_copy), "--no-store", "--noise", str(bad)),
        "beta",
        "inf",
        str(bad),
    )


def test_emulate_board_on_a_busy_port(device_copy: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = cli("emulate", "board", "--device", str(device_copy), "--tcp", str(port))
    assert_one_line(proc, str(port))


# --------------------------------------------------------------------------- stores
@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory, device_copy: Path) -> tuple[Path, str]:
    d = tmp_path_factory.mktemp("store")
    store = d / "runs.sqlite"
    proc = cli("train", "--device", str(device_copy), "--epochs", "2", "--store", str(store))
    assert proc.returncode == 0, proc.stderr
    with RunStore(store) as st:
        (run,) = st.list_runs()
    return store, str(run["id"])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 100)


def _csv(path: Path) -> None:
    path.write_text("vowel,F1,F2\na,800,1500\n")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _garbage_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    for off in range(page, len(data), page):
        data[off : off + page] = bytes((i * 37 + 11) % 256 for i in range(page))
    path.write_bytes(bytes(data))


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _half_checkpoint(path: Path) -> None:
    import hashlib

    with sqlite3.connect(path) as db:
        (state,) = db.execute("SELECT state FROM checkpoints ORDER BY epoch DESC").fetchone()
        half = state[: len(state) // 2]
        db.execute(
            "UPDATE checkpoints SET state = ?, sha256 = ? WHERE epoch = "
            "(SELECT MAX(epoch) FROM checkpoints)",
            (half, hashlib.sha256(half.encode()).hexdigest()),
        )


def _checksum(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("UPDATE checkpoints SET state = replace(state, '1', '2')")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "not-a-database": _garbage,
    "csv": _csv,
    "truncated": _truncated,
    "garbage-pages": _garbage_pages,
    "directory": _directory,
    "half-checkpoint": _half_checkpoint,
    "checksum-mismatch": _checksum,
}
# damage that only shows where checkpoints are read
CHECKPOINT_ONLY = {"half-checkpoint", "checksum-mismatch"}


def _commands(store: Path, run_id: str, device: Path) -> dict[str, list[str]]:
    s = ["--store", str(store)]
    return {
        "runs list": ["runs", "list", *s],
        "runs show": ["runs", "show", run_id, *s],
        "runs export": ["runs", "export", run_id, *s],
        "runs check": ["runs", "check", *s],
        "train --resume": ["train", "--resume", run_id, *s],
        "evaluate": ["evaluate", "--run", run_id, "--device", str(device), *s],
    }


@pytest.mark.slow
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_stores(
    good_store: tuple[Path, str], device_copy: Path, tmp_path: Path, damage: str
) -> None:
    store = tmp_path / "damaged.sqlite"
    shutil.copy(good_store[0], store)
    DAMAGE[damage](store)
    for name, args in _commands(store, good_store[1], device_copy).items():
        if damage in CHECKPOINT_ONLY and name in ("runs list", "runs show", "runs export"):
            continue
        proc = cli(*args)
        line = assert_one_line(proc, str(store))
        assert "device left safe" not in line, (name, line)


def test_unknown_run_and_missing_store(good_store: tuple[Path, str], tmp_path: Path) -> None:
    store, _ = good_store
    for args in (
        ["runs", "show", "nope", "--store", str(store)],
        ["train", "--resume", "nope", "--store", str(store)],
        ["runs", "plot", "nope", "--out", str(tmp_path / "x.png"), "--store", str(store)],
    ):
        assert_one_line(cli(*args), "'nope'", str(store))
    missing = tmp_path / "missing.sqlite"
    assert_one_line(cli("runs", "list", "--store", str(missing)), str(missing))
    assert not missing.exists()  # reading never creates a store


def test_locked_store(good_store: tuple[Path, str], tmp_path: Path) -> None:
    store = tmp_path / "locked.sqlite"
    shutil.copy(good_store[0], store)
    holder = sqlite3.connect(store, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN EXCLUSIVE")
        assert_one_line(cli("runs", "list", "--store", str(store)), str(store), "locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_foreign_sqlite_database_is_not_touched(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE things (x)")
    before = other.read_bytes()
    assert_one_line(cli("runs", "list", "--store", str(other)), str(other), "not a phasegrad")
    assert other.read_bytes() == before


def test_resume_refuses_conflicting_options(
    good_store: tuple[Path, str], device_copy: Path, tmp_path: Path
) -> None:
    store = tmp_path / "runs.sqlite"
    shutil.copy(good_store[0], store)
    run_id = good_store[1]
    line = assert_one_line(
        cli("train", "--resume", run_id, "--store", str(store), "--lr", "0.5", "--epochs", "3"),
        "--lr",
        "--allow-changes",
    )
    assert "0.5" in line
    # a different bias map now than the one the run used: refused as well
    tmap = device_copy.with_name(device_copy.stem + ".transfer.json")
    assert not tmap.exists()
    other = tmp_path / "other-map.json"
    other.write_text("{}")
    assert_one_line(
        cli("train", "--resume", run_id, "--store", str(store), "--transfer", str(other)),
        "--transfer",
    )
    # allowed explicitly: recorded with the run
    ok = cli(
        "train",
        "--resume",
        run_id,
        "--store",
        str(store),
        "--lr",
        "0.05",
        "--epochs",
        "3",
        "--allow-changes",
    )
    assert ok.returncode == 0, ok.stderr
    with RunStore(store) as st:
        changes = st.run(run_id)["config"]["changes"]
    assert changes == [{"at_epoch": 2, "lr": [0.03, 0.05]}]
