"""Open a substrate from what a user types after ``--device``.

* a device file (TOML/YAML/JSON) whose ``backend`` names an entry of ``FILE_BACKENDS``;
* a URI whose scheme names an entry of ``URI_SCHEMES`` (``serial://PATH``, ``mqtt://…``).

Backends are imported lazily (``"module:attribute"`` strings), so instrument libraries are
only imported when a device that needs them is opened. A backend module's attribute is a
callable ``(model, seed) -> OscillatorSubstrate`` for files and ``(uri, seed) -> …`` for URIs.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

from phasegrad_hw.config import read_config_file
from phasegrad_hw.device.frequency_map import (
    IDENTITY,
    FrequencyMap,
    TransferMap,
    transfer_path,
)
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import OscillatorSubstrate
from phasegrad_hw.errors import ConfigError

log = logging.getLogger(__name__)

FILE_BACKENDS: dict[str, str] = {
    "simulated": "phasegrad_hw.backends.simulated:SimulatedSubstrate",
    "cmos": "phasegrad_hw.backends.cmos:CMOSSubstrate",
    "optical": "phasegrad_hw.backends.optical:OpticalSubstrate",
    "visa": "phasegrad_hw.backends.visa:open_bench",
    "daqmx": "phasegrad_hw.backends.daqmx:open_daqmx",
}
NOMINAL_MAPS: dict[str, str] = {  # backends whose chips have a design ω → bias curve
    "cmos": "phasegrad_hw.backends.cmos:nominal_map",
    "optical": "phasegrad_hw.backends.optical:nominal_map",
}
URI_SCHEMES: dict[str, str] = {
    "mqtt": "phasegrad_hw.backends.mqtt:open_uri",
    "serial": "phasegrad_hw.backends.serial:open_uri",
}


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def chip_model(chip: dict[str, Any] | None, *, bench: str) -> DeviceModel | None:
    """The device model of the chip a ``bench`` file describes in its ``chip`` table."""
    if chip is None:
        return None
    backend = chip.get("backend")
    allowed = sorted(b for b in FILE_BACKENDS if b not in ("visa", "daqmx"))
    if backend not in allowed:
        raise ConfigError(f"chip.backend: {backend!r} — allowed: {', '.join(allowed)}")
    _resolve(FILE_BACKENDS[str(backend)])
    return DeviceModel.from_dict(chip, source="chip.")


def chip_nominal_map(chip: DeviceModel | None) -> FrequencyMap:
    """The design ω → bias curve of the chip behind a bench (its backend's ``nominal_map``);
    without a chip description, or for a chip whose bias unit is ``model``, the identity."""
    if chip is None or chip.backend not in NOMINAL_MAPS:
        return IDENTITY
    fmap: FrequencyMap = _resolve(NOMINAL_MAPS[chip.backend])(chip)
    return fmap


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


def open_substrate(
    spec: str | Path, *, seed: int | None = None, transfer: str | Path | None = "auto"
) -> OscillatorSubstrate:
    """A (not yet connected) substrate for a device file or URI; use ``async with``.

    ``transfer`` — the bias ↔ ω map ``set_frequencies`` uses: ``"auto"`` installs the
    calibrated map saved next to a device file (``<stem>.transfer.json``, written by
    ``phasegrad-hw calibrate transfer``) when there is one; ``None`` keeps the device's
    nominal curve; a path installs that map (device files and URIs alike).
    """
    text = str(spec)
    scheme, sep, _ = text.partition("://")
    if sep:
        if scheme not in URI_SCHEMES:
            raise ConfigError(
                f"--device: scheme {scheme!r} in {text!r} — allowed: "
                f"{', '.join(sorted(URI_SCHEMES)) or 'none installed'}"
            )
        sub: OscillatorSubstrate = _resolve(URI_SCHEMES[scheme])(text, seed)
    else:
        p = Path(text)
        if not p.exists():
            raise ConfigError(
                f"--device: {text!r} is neither an existing device file nor a URI (scheme://…)"
            )
        model = load_device_model(p)
        sub = _resolve(FILE_BACKENDS[model.backend])(model, seed)
    map_path = saved_transfer_path(text, transfer)
    if map_path is not None:
        tmap = TransferMap.load(map_path)
        if tmap.device != sub.model.name:
            raise ConfigError(
                f"--transfer: {map_path} is the map of device {tmap.device!r}, not of "
                f"{sub.model.name!r}; recalibrate or pass --transfer none"
            )
        if len(tmap.channels) != sub.model.n:
            raise ConfigError(
                f"--transfer: {map_path} has {len(tmap.channels)} channels, "
                f"device {sub.model.name!r} has {sub.model.n}"
            )
        sub.frequency_map = tmap
        log.info("%s: calibrated transfer map %s installed", sub.model.name, map_path)
    return sub


def saved_transfer_path(spec: str | Path, transfer: str | Path | None = "auto") -> Path | None:
    """The transfer map :func:`open_substrate` installs for ``spec`` (None: nominal map);
    an explicit path must exist."""
    if transfer is None or str(transfer) == "none":
        return None
    if str(transfer) == "auto":
        if "://" in str(spec):
            return None
        auto = transfer_path(spec)
        return auto if auto.exists() else None
    path = Path(transfer)
    if not path.exists():
        raise ConfigError(
            f"--transfer: {str(transfer)!r} — no such file (allowed: 'auto', "
            "'none' or the path of a saved transfer map)"
        )
    return path
