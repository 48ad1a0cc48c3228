"""Configuration of a SCPI bench around one chip (``backend = "visa"``): the schema both the
host driver (:mod:`phasegrad_hw.backends.visa`) and the bench emulator
(:mod:`phasegrad_hw.firmware_models.instruments`) read. Not a driver: it imports no
instrument library and no transport (docs/design.md §6).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from phasegrad_hw.device.model import DeviceFileModel, DeviceModel

INSTRUMENTS = ("smu", "phase_meter", "injection")
#: A raw socket resource (VISA syntax ``TCPIP[board]::host::port::SOCKET``).
SOCKET_RESOURCE = re.compile(
    r"TCPIP\d*::(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)::(\d{1,5})::SOCKET", re.IGNORECASE
)


class InstrumentConfig(DeviceFileModel):
    """One instrument: VISA resource, termination characters, timeout, channel map.

    ``channels`` lists the instrument channel (1-based) of each role member: for the SMU and
    the phase meter one per oscillator (index = oscillator), for the injection source one per
    output oscillator (in ``roles.outputs`` order). ``timeout_s`` bounds every setting or
    query (s); measurements get their own timeout (:class:`VisaBenchModel`).
    """

    resource: str = Field(min_length=1)
    read_termination: str = Field(default="\n", min_length=1, max_length=2)
    write_termination: str = Field(default="\n", min_length=1, max_length=2)
    timeout_s: float = Field(default=2.0, gt=0.0, le=600.0)
    channels: list[int]


class VisaBenchModel(DeviceModel):
    """A bench of SCPI instruments around one chip (the chip's topology/roles/limits on top).

    Timeouts in s; ``current_protection_a`` the SMU compliance per channel (A);
    ``injection_v_per_beta`` the injection amplitude (V) per unit nudge strength β.
    ``link``: how messages travel — ``"socket"`` a plain TCP socket of the driver's own (raw
    ``TCPIP::host::port::SOCKET`` resources only), ``"pyvisa"`` a pyvisa resource (any VISA
    resource string, through ``visa_library``), ``"auto"`` the socket for raw SOCKET
    resources and pyvisa for everything else. ``io_mode``: see
    :class:`phasegrad_hw.backends.scpi_link.IoRunner`.
    """

    backend: Literal["visa"] = "visa"
    smu: InstrumentConfig
    phase_meter: InstrumentConfig
    injection: InstrumentConfig
    chip: dict[str, Any] | None = None
    visa_library: str = "@py"
    measure_timeout_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    measure_timeout_per_sample_s: float = Field(default=1e-3, ge=0.0, le=10.0)
    resync_timeout_s: float = Field(default=2.0, gt=0.0, le=600.0)
    retries: int = Field(default=3, ge=0, le=20)
    reconnect_backoff_s: float = Field(default=0.05, ge=0.0, le=10.0)
    current_protection_a: float = Field(default=0.01, gt=0.0, le=1.0)
    injection_v_per_beta: float = Field(default=1.0, gt=0.0, le=100.0)
    settle_s: float = Field(default=0.0, ge=0.0, le=60.0)
    io_mode: Literal["async", "thread", "inline"] = "async"
    link: Literal["auto", "socket", "pyvisa"] = "auto"

    @model_validator(mode="after")
    def _channel_maps(self) -> VisaBenchModel:
        need = {
            "smu": self.n_oscillators,
            "phase_meter": self.n_oscillators,
            "injection": len(self.roles.outputs),
        }
        problems = []
        for name, length in need.items():
            ch = getattr(self, name).channels
            if len(ch) != length:
                problems.append(
                    f"{name}.channels: {len(ch)} entries — need {length} "
                    f"({'one per oscillator' if name != 'injection' else 'one per output'})"
                )
            if any(c < 1 for c in ch):
                problems.append(f"{name}.channels: {ch} — channels are numbered from 1")
            if len(set(ch)) != len(ch):
                problems.append(f"{name}.channels: {ch} — a channel is used twice")
        if self.chip is not None:
            n = self.chip.get("n_oscillators")
            if n != self.n_oscillators:
                problems.append(
                    f"chip.n_oscillators: {n!r} — must equal n_oscillators ({self.n_oscillators})"
                )
        if self.link == "socket":
            for name in INSTRUMENTS:
                res = getattr(self, name).resource
                if SOCKET_RESOURCE.fullmatch(res) is None:
                    problems.append(
                        f"{name}.resource: {res!r} — link 'socket' needs TCPIP::host::port::SOCKET"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- chip behind the bench -------------------------------------------------------
    def chip_model(self) -> DeviceModel | None:
        """The chip's own device model (None without a ``chip`` table)."""
        from phasegrad_hw.device.registry import chip_model

        return chip_model(self.chip, bench="visa")


def bench_for_chip(
    chip: DeviceModel, resources: dict[str, str], **overrides: Any
) -> VisaBenchModel:
    """A bench config for ``chip`` wired one-to-one (channel = oscillator/output index + 1)."""
    base = chip.chip_fields("json")
    n, n_out = chip.n, len(chip.roles.outputs)
    data: dict[str, Any] = {
        **base,
        "backend": "visa",
        "name": f"{chip.name}-bench",
        "smu": {"resource": resources["smu"], "channels": list(range(1, n + 1))},
        "phase_meter": {"resource": resources["phase_meter"], "channels": list(range(1, n + 1))},
        "injection": {"resource": resources["injection"], "channels": list(range(1, n_out + 1))},
        "chip": chip.model_dump(mode="json", exclude_none=True),
    }
    data.update(overrides)
    return VisaBenchModel.model_validate(data)
