"""Configuration plumbing shared by every layer: the strict Pydantic base model, config
file read/write (TOML, YAML, JSON) and one-line validation messages."""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from phasegrad_hw.errors import ConfigError

CONFIG_SUFFIXES: tuple[str, ...] = (".toml", ".yaml", ".yml", ".json")
REDACTED = "***"
_URI_PASSWORD = re.compile(r"(?P<pre>\b[a-z][a-z0-9+.\-]*://[^/@\s:]*:)[^/@\s]*@")


def redact(text: str) -> str:
    """``mqtt://user:secret@host`` → ``mqtt://user:***@host`` (for logs and the run store;
    :meth:`BrokerConfig.parse` reads ``***`` as "no password here", so the environment
    variable supplies it)."""
    return _URI_PASSWORD.sub(lambda m: f"{m.group('pre')}{REDACTED}@", text)


def format_validation_error(exc: ValidationError, source: str = "") -> str:
    """One line per problem: ``path: value — message``."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = str(err["msg"]).removeprefix("Value error, ")
        val = err.get("input")
        if not err["loc"] and isinstance(val, dict):
            # whole-model checks (topology, consistency) name their own field path and value
            lines.append(f"{source}{msg}")
            continue
        shown = repr(val) if not isinstance(val, dict) or len(repr(val)) < 60 else "{…}"
        lines.append(f"{source}{path}: {shown} — {msg}")
    return "\n".join(lines)


class StrictModel(BaseModel):
    """Unknown fields are errors; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def read_config_file(p: Path) -> dict[str, Any]:
    """Parse a TOML/YAML/JSON file into a dict, with a one-line error on failure."""
    suffix = p.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"{p}: suffix {suffix!r} — allowed: {', '.join(CONFIG_SUFFIXES)}")
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{p}: not valid {suffix[1:].upper()} ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a table/mapping, got {type(data).__name__}")
    return data


def write_config_file(p: Path, data: dict[str, Any]) -> None:
    suffix = p.suffix.lower()
    if suffix == ".toml":
        import tomli_w

        text = tomli_w.dumps(_toml_safe(data))
    elif suffix == ".json":
        text = json.dumps(data, indent=2)
    elif suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise ConfigError(f"{p}: suffix {suffix!r} — allowed: {', '.join(CONFIG_SUFFIXES)}")
    atomic_write_text(p, text)


def _toml_safe(x: Any) -> Any:
    """TOML tables need string keys (per-channel limits are keyed by int)."""
    if isinstance(x, dict):
        return {str(k): _toml_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_toml_safe(v) for v in x]
    return x


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place, so a
    reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
