"""``phasegrad-hw bench check FILE``: connect to the instruments a bench file names, read their
identities, limits and status, and report — without moving anything (queries only: no
``*RST``, no setting, no output switched; the device stays as it was).

* ``visa`` benches (SCPI): ``*IDN?`` of the SMU, phase meter, injection source (and input
  source, on a bench whose chip has held inputs or a drive); per SMU channel the voltage
  level, the current protection and its trip flag and the output state, each level checked
  against the bench file's bias limits; the injection and input source outputs' state; the
  phase meter's questionable-status register; each instrument's error queue (``SYST:ERR?``,
  which reading empties).
* ``daqmx`` benches: the NI-DAQmx driver version and, for every channel the file names, that
  its device is present (product type and serial number).

One line per finding; exit 0 when everything answered and is within limits, 1 when a
finding needs attention (a tripped channel, a level outside the limits, a queued error, a
missing device), 2 when the file is not a bench file or an instrument does not answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from phasegrad_hw.cli import fail

__all__ = ["check_daqmx", "check_visa", "register"]


def _query(res: Any, message: str) -> str:
    return str(res.query(message)).strip()


def check_visa(model: Any) -> tuple[list[str], list[str]]:
    """(report lines, problems) of a ``visa`` bench; queries only."""
    import pyvisa

    lines: list[str] = []
    problems: list[str] = []
    rm = pyvisa.ResourceManager(model.visa_library)
    safe = model.safe_biases()
    chans = [model.limits.bias.channel(i) for i in range(model.n)]
    bias_lo, bias_hi = [c.min for c in chans], [c.max for c in chans]
    try:
        for name in model.instruments():
            cfg = getattr(model, name)
            try:
                res = rm.open_resource(
                    cfg.resource,
                    read_termination=cfg.read_termination,
                    write_termination=cfg.write_termination,
                )
                res.timeout = max(1, int(cfg.timeout_s * 1000))
                idn = _query(res, "*IDN?")
            except Exception as exc:  # refused, timed out: the instrument does not answer
                raise ConnectionError(
                    f"{name} at {cfg.resource} does not answer ({type(exc).__name__}: {exc})"
                ) from None
            lines.append(f"{name}: {cfg.resource} — {idn}")
            try:
                if name == "smu":
                    for k, ch in enumerate(cfg.channels):
                        v = float(_query(res, f":SOUR{ch}:VOLT?"))
                        prot = float(_query(res, f":SENS{ch}:CURR:PROT?"))
                        trip = _query(res, f":SENS{ch}:CURR:PROT:TRIP?") not in ("0", "OFF")
                        on = _query(res, f":OUTP{ch}?") in ("1", "ON")
                        state = "TRIPPED" if trip else ("on" if on else "off")
                        lines.append(
                            f"  smu ch{ch} (oscillator {k}): {v:.6g} V (limits "
                            f"{bias_lo[k]:.6g}…{bias_hi[k]:.6g} V, safe {safe[k]:.6g} V), "
                            f"protection {prot:.3g} A, output {state}"
                        )
                        if trip:
                            problems.append(f"smu ch{ch}: compliance tripped")
                        if not bias_lo[k] <= v <= bias_hi[k]:
                            problems.append(f"smu ch{ch}: {v:.6g} V outside the bias limits")
                elif name == "injection":
                    for k, ch in enumerate(cfg.channels):
                        on = _query(res, f":OUTP{ch}?") in ("1", "ON")
                        amp = float(_query(res, f":SOUR{ch}:VOLT?"))
                        lines.append(
                            f"  injection ch{ch} (output {k}): {amp:.4g} V, "
                            f"output {'on' if on else 'off'}"
                        )
                elif name == "input_source":  # held inputs first, then driven oscillators
                    n_held = len(model.roles.held)
                    for k, ch in enumerate(cfg.channels):
                        on = _query(res, f":OUTP{ch}?") in ("1", "ON")
                        amp = float(_query(res, f":SOUR{ch}:VOLT?"))
                        deg = float(_query(res, f":SOUR{ch}:PHAS?"))
                        what = f"held input {k}" if k < n_held else f"drive {k - n_held}"
                        lines.append(
                            f"  input_source ch{ch} ({what}): {amp:.4g} V, phase {deg:.6g}°, "
                            f"output {'on' if on else 'off'}"
                        )
                else:
                    ques = int(float(_query(res, ":STAT:QUES:COND?")))
                    lines.append(f"  phase meter questionable status {ques}")
                err = _query(res, ":SYST:ERR?")
                if not err.lstrip("+").startswith("0"):
                    problems.append(f"{name}: error queued: {err}")
            finally:
                res.close()
    finally:
        rm.close()
    return lines, problems


def check_daqmx(model: Any) -> tuple[list[str], list[str]]:
    """(report lines, problems) of a ``daqmx`` bench; reads the system, writes nothing."""
    try:
        import nidaqmx.system
    except ImportError:
        raise ConnectionError(
            "nidaqmx is not installed (pip install 'phasegrad-hw[daq]')"
        ) from None
    try:
        system = nidaqmx.system.System.local()
        version = system.driver_version
        devices = {d.name: d for d in system.devices}
    except Exception as exc:  # the NI-DAQmx runtime (C library) is missing
        raise ConnectionError(f"NI-DAQmx runtime not available ({exc})") from None
    lines = [f"NI-DAQmx {version.major_version}.{version.minor_version}.{version.update_version}"]
    problems: list[str] = []
    names = [*model.bias_channels, *model.injection_i_channels, *model.injection_q_channels]
    names += [c.counter for c in model.counters.values()]
    for dev_name in sorted({n.split("/")[0] for n in names}):
        d = devices.get(dev_name)
        if d is None:
            problems.append(f"{dev_name}: not present (devices: {', '.join(devices) or 'none'})")
        else:
            lines.append(f"{dev_name}: {d.product_type} serial {d.serial_num}")
    return lines, problems


def register(groups: Any) -> None:
    bench = groups.bench
    if bench is None:
        return

    @bench.command("check")
    def check(
        file: Path = typer.Argument(..., help="Bench file (backend visa or daqmx)."),
    ) -> None:
        """Connect, read identities, limits and status, and report (moves nothing)."""
        from phasegrad_hw.device.registry import load_device_model
        from phasegrad_hw.errors import ConfigError

        if not file.is_file():
            fail(f"bench check: {file} does not exist")
        try:
            model = load_device_model(file)
        except ConfigError as exc:
            fail(f"bench check: {exc}")
        if model.backend not in ("visa", "daqmx"):
            fail(f"bench check: {file} is a {model.backend!r} device, not a bench (visa, daqmx)")
        try:
            lines, problems = check_visa(model) if model.backend == "visa" else check_daqmx(model)
        except (ConnectionError, ImportError) as exc:
            fail(f"bench check: {file}: {exc}")
        typer.echo(f"bench {model.name} ({model.backend}, {file}): nothing was changed")
        for line in lines:
            typer.echo(line)
        for p in problems:
            typer.echo(f"ATTENTION {p}")
        typer.echo("ok" if not problems else f"{len(problems)} finding(s) need attention")
        raise typer.Exit(1 if problems else 0)
