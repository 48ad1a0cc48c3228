"""The one backend registry: backend name → lazily imported model class, opener, nominal map
and URI schemes; and opening a substrate from what a user types after ``--device``.

* a device file (TOML/YAML/JSON) whose ``backend`` names an entry with a model class;
* a URI whose scheme names an entry's ``schemes`` (``serial://PATH``, ``mqtt://…``).

Every reference is a ``"module:attribute"`` string imported on first use, so instrument
libraries are only imported when a device that needs them is opened, and nothing here
imports a backend at module import time (``device/`` sits below ``backends/``,
docs/design.md §3). A model opener is a callable ``(model, seed) -> OscillatorSubstrate``, a
URI opener ``(uri, seed) -> OscillatorSubstrate``; a nominal map ``(model) -> FrequencyMap``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
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
_PKG = "phasegrad_hw.backends"


@dataclass(frozen=True)
class Backend:
    """One backend. ``model``: its device-file model class (None: the device describes
    itself, e.g. a board or a remote agent); ``opener``: ``(model, seed)`` factory of a
    file device; ``uri_opener``: ``(uri, seed)`` factory for the URI ``schemes``;
    ``nominal_map``: ``(model)`` → the chip's design ω ↔ bias curve; ``chip``: an emulated
    chip, allowed as the ``chip`` table behind a bench (visa, daqmx)."""

    model: str | None = None
    opener: str | None = None
    uri_opener: str | None = None
    schemes: tuple[str, ...] = ()
    nominal_map: str | None = None
    chip: bool = False


BACKENDS: dict[str, Backend] = {
    "simulated": Backend(
        model=f"{_PKG}.simulated:SimulatedDeviceModel",
        opener=f"{_PKG}.simulated:SimulatedSubstrate",
        chip=True,
    ),
    "cmos": Backend(
        model=f"{_PKG}.cmos:CMOSChipModel",
        opener=f"{_PKG}.cmos:CMOSSubstrate",
        nominal_map=f"{_PKG}.cmos:nominal_map",
        chip=True,
    ),
    "optical": Backend(
        model=f"{_PKG}.optical:OpticalChipModel",
        opener=f"{_PKG}.optical:OpticalSubstrate",
        nominal_map=f"{_PKG}.optical:nominal_map",
        chip=True,
    ),
    "visa": Backend(model=f"{_PKG}.visa_config:VisaBenchModel", opener=f"{_PKG}.visa:open_bench"),
    "daqmx": Backend(model=f"{_PKG}.daqmx:DaqmxBenchModel", opener=f"{_PKG}.daqmx:open_daqmx"),
    "serial": Backend(uri_opener=f"{_PKG}.serial:open_uri", schemes=("serial",)),
    "mqtt": Backend(uri_opener=f"{_PKG}.mqtt:open_uri", schemes=("mqtt",)),
}


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def file_backends() -> list[str]:
    """Backends a device file can name (those with a model class), sorted."""
    return sorted(name for name, b in BACKENDS.items() if b.model is not None)


def uri_schemes() -> dict[str, str]:
    """URI scheme → backend name."""
    return {s: name for name, b in BACKENDS.items() for s in b.schemes}


def model_class(backend: object, *, source: str = "") -> type[DeviceModel]:
    """The device-model class of ``backend`` (imported now); a :class:`ConfigError` naming
    the field, the value and the allowed backends for any other value."""
    entry = BACKENDS.get(backend) if isinstance(backend, str) else None
    if entry is None or entry.model is None:
        raise ConfigError(f"{source}backend: {backend!r} — allowed: {', '.join(file_backends())}")
    cls: type[DeviceModel] = _resolve(entry.model)
    return cls


def open_model(model: DeviceModel, seed: int | None = None) -> OscillatorSubstrate:
    """A (not yet connected) substrate for a validated device model, by its backend."""
    entry = BACKENDS.get(model.backend)
    if entry is None or entry.opener is None:
        allowed = sorted(n for n, b in BACKENDS.items() if b.opener is not None)
        raise ConfigError(f"backend: {model.backend!r} — allowed: {', '.join(allowed)}")
    sub: OscillatorSubstrate = _resolve(entry.opener)(model, seed)
    return sub


def chip_model(chip: dict[str, Any] | None, *, bench: str) -> DeviceModel | None:
    """The device model of the chip a ``bench`` file describes in its ``chip`` table."""
    if chip is None:
        return None
    backend = chip.get("backend")
    allowed = sorted(name for name, b in BACKENDS.items() if b.chip)
    if backend not in allowed:
        raise ConfigError(f"chip.backend: {backend!r} — allowed: {', '.join(allowed)}")
    return DeviceModel.from_dict(chip, source="chip.")


def chip_nominal_map(chip: DeviceModel | None) -> FrequencyMap:
    """The design ω → bias curve of the chip behind a bench (its backend's ``nominal_map``);
    without a chip description, or for a chip whose bias unit is ``model``, the identity."""
    entry = None if chip is None else BACKENDS.get(chip.backend)
    if chip is None or entry is None or entry.nominal_map is None:
        return IDENTITY
    fmap: FrequencyMap = _resolve(entry.nominal_map)(chip)
    return fmap


def load_device_model(path: str | Path) -> DeviceModel:
    """Load a device file into its backend's model class."""
    p = Path(path)
    return DeviceModel.from_dict(read_config_file(p), source=f"{p.name}: ")


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
        schemes = uri_schemes()
        opener = BACKENDS[schemes[scheme]].uri_opener if scheme in schemes else None
        if opener is None:
            raise ConfigError(
                f"--device: scheme {scheme!r} in {text!r} — allowed: "
                f"{', '.join(sorted(schemes)) or 'none installed'}"
            )
        sub: OscillatorSubstrate = _resolve(opener)(text, seed)
    else:
        p = Path(text)
        if not p.exists():
            raise ConfigError(
                f"--device: {text!r} is neither an existing device file nor a URI (scheme://…)"
            )
        sub = open_model(load_device_model(p), seed)
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
