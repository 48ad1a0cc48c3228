"""Open a substrate from what a user types after ``--device``.

* a device file (TOML/YAML/JSON) whose ``backend`` names an entry of ``FILE_BACKENDS``;
* a URI whose scheme names an entry of ``URI_SCHEMES`` (``serial://PATH``, ``mqtt://…``).

Backends are imported lazily (``"module:attribute"`` strings), so instrument libraries are
only imported when a device that needs them is opened. A backend module's attribute is a
callable ``(model, seed) -> OscillatorSubstrate`` for files and ``(uri, seed) -> …`` for URIs.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from phasegrad_hw.models import ConfigError, DeviceModel, read_config_file
from phasegrad_hw.substrate import OscillatorSubstrate

FILE_BACKENDS: dict[str, str] = {
    "simulated": "phasegrad_hw.backends.simulated:SimulatedSubstrate",
    "cmos": "phasegrad_hw.backends.cmos:CMOSSubstrate",
    "optical": "phasegrad_hw.backends.optical:OpticalSubstrate",
    "visa": "phasegrad_hw.backends.visa:open_bench",
    "daqmx": "phasegrad_hw.backends.daqmx:open_daqmx",
}
URI_SCHEMES: dict[str, str] = {
    "mqtt": "phasegrad_hw.backends.mqtt:open_uri",
    "serial": "phasegrad_hw.backends.serial:open_uri",
}


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_device_model(path: str | Path) -> DeviceModel:
    """Load a device file, importing its backend first so backend-defined models register."""
    p = Path(path)
    data = read_config_file(p)
    backend = data.get("backend")
    if backend not in FILE_BACKENDS:
        raise ConfigError(
            f"{p.name}: backend: {backend!r} — allowed: {', '.join(sorted(FILE_BACKENDS))}"
        )
    _resolve(FILE_BACKENDS[backend])
    return DeviceModel.from_dict(data, source=f"{p.name}: ")


def open_substrate(spec: str | Path, *, seed: int | None = None) -> OscillatorSubstrate:
    """A (not yet connected) substrate for a device file or URI; use ``async with``."""
    text = str(spec)
    scheme, sep, _ = text.partition("://")
    if sep:
        if scheme not in URI_SCHEMES:
            raise ConfigError(
                f"--device: scheme {scheme!r} in {text!r} — allowed: "
                f"{', '.join(sorted(URI_SCHEMES)) or 'none installed'}"
            )
        return _resolve(URI_SCHEMES[scheme])(text, seed)
    p = Path(text)
    if not p.exists():
        raise ConfigError(
            f"--device: {text!r} is neither an existing device file nor a URI (scheme://…)"
        )
    model = load_device_model(p)
    return _resolve(FILE_BACKENDS[model.backend])(model, seed)
