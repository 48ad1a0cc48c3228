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
#: The optional instrument of a bench whose chip has held inputs or a drive.
INPUT_SOURCE = "input_source"
#: A raw socket resource (VISA syntax ``TCPIP[board]::host::port::SOCKET``).
SOCKET_RESOURCE = re.compile(
    r"TCPIP\d*::(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)::(\d{1,5})::SOCKET", re.IGNORECASE
)


class InstrumentConfig(DeviceFileModel):
    """One instrument: VISA resource, termination characters, timeout, channel map.

    ``channels`` lists the instrument channel (1-based) of each role member: for the SMU and
    the phase meter one per oscillator (index = oscillator), for the injection source one per
    output oscillator (in ``roles.outputs`` order), for the input source one per held input
    (``roles.held`` order) followed by one per driven oscillator (``roles.drive`` order).
    ``timeout_s`` bounds every setting or query (s); measurements get their own timeout
    (:class:`VisaBenchModel`).
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
    ``input_source`` (needed exactly when the chip has held inputs or driven oscillators): a
    second injection source, phase-locked to the reference clock, whose channels inject into
    the held inputs (phase φ per channel, output on; the injection strength is the chip's
    ``held_injection``, docs/design.md §8) and into the driven oscillators (amplitude
    ``drive_v_per_unit`` V per model unit of F_i, the common drive phase Ψ on every drive
    channel, docs/design.md §9); phases in degrees on the wire.
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
    input_source: InstrumentConfig | None = None
    drive_v_per_unit: float = Field(default=1.0, gt=0.0, le=100.0)
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
        n_inputs = len(self.roles.held) + len(self.roles.drive)
        need = {
            "smu": (self.n_oscillators, "one per oscillator"),
            "phase_meter": (self.n_oscillators, "one per oscillator"),
            "injection": (len(self.roles.outputs), "one per output"),
        }
        problems = []
        if n_inputs and self.input_source is None:
            problems.append(
                "input_source: missing — the chip has held inputs or driven oscillators "
                f"(roles.held {self.roles.held}, roles.drive {self.roles.drive})"
            )
        elif self.input_source is not None:
            need[INPUT_SOURCE] = (n_inputs, "one per held input, then one per driven oscillator")
        for name, (length, what) in need.items():
            ch = getattr(self, name).channels
            if len(ch) != length:
                problems.append(f"{name}.channels: {len(ch)} entries — need {length} ({what})")
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
            for name in self.instruments():
                res = getattr(self, name).resource
                if SOCKET_RESOURCE.fullmatch(res) is None:
                    problems.append(
                        f"{name}.resource: {res!r} — link 'socket' needs TCPIP::host::port::SOCKET"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def instruments(self) -> tuple[str, ...]:
        """The configured instruments: :data:`INSTRUMENTS`, then the input source if any."""
        return INSTRUMENTS + ((INPUT_SOURCE,) if self.input_source is not None else ())

    # -- chip behind the bench -------------------------------------------------------
    def chip_model(self) -> DeviceModel | None:
        """The chip's own device model (None without a ``chip`` table)."""
        from phasegrad_hw.device.registry import chip_model

        return chip_model(self.chip, bench="visa")


def bench_for_chip(
    chip: DeviceModel, resources: dict[str, str], **overrides: Any
) -> VisaBenchModel:
    """A bench config for ``chip`` wired one-to-one (channel = oscillator/output index + 1;
    input source channel = held input index + 1, then driven oscillator index + 1 after
    them). A chip with held inputs or driven oscillators needs ``resources["input_source"]``."""
    base = chip.chip_fields("json")
    n, n_out = chip.n, len(chip.roles.outputs)
    n_inputs = len(chip.roles.held) + len(chip.roles.drive)
    data: dict[str, Any] = {
        **base,
        "backend": "visa",
        "name": f"{chip.name}-bench",
        "smu": {"resource": resources["smu"], "channels": list(range(1, n + 1))},
        "phase_meter": {"resource": resources["phase_meter"], "channels": list(range(1, n + 1))},
        "injection": {"resource": resources["injection"], "channels": list(range(1, n_out + 1))},
        "chip": chip.model_dump(mode="json", exclude_none=True),
    }
    if n_inputs:
        data[INPUT_SOURCE] = {
            "resource": resources[INPUT_SOURCE],
            "channels": list(range(1, n_inputs + 1)),
        }
    data.update(overrides)
    return VisaBenchModel.model_validate(data)
