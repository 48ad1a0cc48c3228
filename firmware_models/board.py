"""Firmware of the phasegrad controller board: the digital side of a board next to an
oscillator chip (protocol: docs/protocol.md, framing: :mod:`phasegrad_hw.wire.board`).

The board holds per-channel bias DAC codes (``dac_bits``, default 16, like the AD5676-class
octal DACs used on such boards), the injection amplitude/phase registers of the output
oscillators (the nudge: amplitude = β, phase = target), a TDC phase readout with on-board
averaging (circular mean over ``averages`` conversions, done by the chip emulator), a
frequency counter, on chips with held inputs the programmable phase shifters between the
reference clock and each held input oscillator (``H``: a strong injection whose phase the held
oscillator follows, docs/design.md §8), on chips with sensor oscillators the drive registers
(``D``: an external signal of phase Ψ and per-oscillator amplitude F_i injected into
``roles.drive``, dθ_i/dt gains F_i·sin(Ψ − θ_i), docs/design.md §9), and a
frequency-setpoint path through the chip's calibration table (the ``W`` command: the board
converts ω into bias exactly as the chip emulator does, so a host needs no transfer curve).
Every value is range-checked as firmware would check its registers; a refused command changes
nothing.

The chip itself is an in-process emulator (any :class:`OscillatorSubstrate`, normally
``phasegrad_hw.backends.cmos`` / ``optical`` or ``simulated``); the firmware only calls its
public, limit-checked methods.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import numpy as np

from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.errors import LimitError, SubstrateError
from phasegrad_hw.wire.board import (
    UNSOLICITED,
    UNTRUSTED,
    ErrorCode,
    FrameError,
    Request,
    err_reply,
    fmt_float,
    frame,
    ok_reply,
    parse_float,
    parse_int,
    parse_request,
)

log = logging.getLogger(__name__)

FIRMWARE_VERSION = "1.0"
PROTOCOL_VERSION = 1
DESC_CHUNK = 576  # raw bytes of descriptor JSON per DESC? line (768 base64 characters)


class BoardFirmware:
    """The board's command interpreter, driving ``chip``.

    :meth:`handle_line` takes one received line (without ``\\n``; ``None`` for an overlong
    line) and returns the reply line (with ``\\n``), or ``None`` for a blank line. It never
    raises: every failure becomes a numbered ``ERR`` reply.

    ``serial_number`` (``ID?``'s ``sn=``): by default a fresh random one per board, as every
    real board has its own.
    """

    def __init__(
        self,
        chip: OscillatorSubstrate,
        *,
        dac_bits: int = 16,
        serial_number: str | None = None,
    ) -> None:
        if not 4 <= dac_bits <= 24:
            raise ValueError(f"dac_bits: {dac_bits} is outside 4…24")
        self.chip = chip
        self.model = chip.model
        self.dac_bits = dac_bits
        self.dac_max = (1 << dac_bits) - 1
        # every board has its own serial number (``ID?``): the host checks it on each new link,
        # so a port now leading to another board (re-cabled, or a reused pty) is refused
        self.serial_number = serial_number or f"PGB-{secrets.token_hex(4).upper()}"
        self.boot_id = 0
        self.commands = 0
        self.errors = 0
        self._boot_t = time.monotonic()
        n = self.model.n
        lim = [self.model.limits.bias.channel(i) for i in range(n)]
        self._bias_min = np.array([c.min for c in lim])
        self._bias_lsb = np.array([(c.max - c.min) / self.dac_max for c in lim])
        self.dac_codes = self._codes_for(self.model.safe_biases())
        self.inj_amplitude = 0.0
        self.inj_phase = np.zeros(len(self.model.roles.outputs))
        self.inj_enabled = False
        self.held_phases = np.zeros(len(self.model.roles.held))  # rad, phase-shifter registers
        self.drive_phase = 0.0  # rad
        self.drive_amplitude = np.zeros(len(self.model.roles.drive))  # model units; 0 = off
        self._descriptor = self._build_descriptor()
        self._handlers: dict[str, Callable[[Request], Awaitable[list[str]]]] = {
            "ID?": self._cmd_id,
            "ST?": self._cmd_status,
            "DESC?": self._cmd_desc,
            "PING": self._cmd_ping,
            "W": self._cmd_w,
            "B": self._cmd_b,
            "B?": self._cmd_b_query,
            "K": self._cmd_k,
            "C": self._cmd_c,
            "I?": self._cmd_i_query,
            "REL": self._cmd_rel,
            "R": self._cmd_r,
            "F?": self._cmd_f,
            "SAFE": self._cmd_safe,
            "SEED": self._cmd_seed,
            "H": self._cmd_h,
            "H?": self._cmd_h_query,
            "D": self._cmd_d,
            "D?": self._cmd_d_query,
        }

    # -- board state -----------------------------------------------------------------
    def _codes_for(self, values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((values - self._bias_min) / self._bias_lsb), 0, self.dac_max).astype(
            np.int64
        )

    def code_to_bias(self, codes: np.ndarray) -> np.ndarray:
        """DAC codes → bias in the device unit: v = min + code · (max − min)/(2^bits − 1)."""
        return self._bias_min + codes.astype(np.float64) * self._bias_lsb

    def _build_descriptor(self) -> list[str]:
        desc = {
            "protocol": PROTOCOL_VERSION,
            "firmware": FIRMWARE_VERSION,
            "serial": self.serial_number,
            "dac_bits": self.dac_bits,
            "capabilities": sorted(str(c) for c in self.chip.capabilities),
            "reseed": Capability.RESEED in self.chip.capabilities,
            "model": self.model.model_dump(mode="json"),
        }
        raw = json.dumps(desc, separators=(",", ":"), sort_keys=True).encode()
        return [
            base64.b64encode(raw[i : i + DESC_CHUNK]).decode()
            for i in range(0, len(raw), DESC_CHUNK)
        ]

    def banner(self) -> bytes:
        """The unsolicited line the board sends after every boot."""
        return frame(
            f"{UNSOLICITED} BOOT phasegrad-board fw={FIRMWARE_VERSION} boot={self.boot_id}"
        )

    async def power_on(self) -> None:
        """Connect the chip and put it in the power-on state: safe, held phases 0 rad."""
        await self.chip.connect()
        await self._reset_registers()

    async def _reset_registers(self) -> None:
        """Power-on register values: the safe state and every held-input phase shifter at 0."""
        await self.make_safe()
        if Capability.HELD_PHASES in self.chip.capabilities:
            zero = np.zeros(len(self.model.roles.held))
            await self.chip.set_held_phases(zero)
            self.held_phases = zero

    async def make_safe(self) -> None:
        """Injection and drive off, every bias at its safe value (held phases stay: a held
        input is set per sample, not an unsafe state)."""
        try:
            await self.chip.make_safe()  # switches a declared drive off
        finally:
            self.inj_enabled = False
            self.inj_amplitude = 0.0
            self.drive_amplitude = np.zeros(len(self.model.roles.drive))
            self.drive_phase = 0.0
            self.dac_codes = self._codes_for(self.model.safe_biases())

    async def reboot(self) -> bytes:
        """Power-cycle / DTR reset: registers lost, chip safe, a new boot id; returns the banner."""
        await self._reset_registers()
        self.boot_id += 1
        self._boot_t = time.monotonic()
        log.info("board rebooted (boot id %d)", self.boot_id)
        return self.banner()

    # -- line handling -----------------------------------------------------------------
    async def handle_line(self, line: bytes | None) -> bytes | None:
        """One received line → one reply line (``None`` for a blank line). Never raises."""
        if line is None:
            self.errors += 1
            return err_reply(UNTRUSTED, ErrorCode.LINE_TOO_LONG, "line too long; discarded")
        if not line.strip(b"\r \t"):
            return None
        seq: int | str = UNTRUSTED
        try:
            req = parse_request(line)
            seq = req.seq
            handler = self._handlers.get(req.cmd)
            if handler is None:
                raise FrameError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {req.cmd[:16]!r}")
            values = await handler(req)
            self.commands += 1
            return ok_reply(seq, *values)
        except FrameError as exc:
            self.errors += 1
            return err_reply(seq, exc.code, exc.text)
        except LimitError as exc:
            self.errors += 1
            return err_reply(seq, ErrorCode.OUT_OF_RANGE, str(exc))
        except SubstrateError as exc:
            self.errors += 1
            return err_reply(seq, ErrorCode.CHIP, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # firmware must answer, whatever happened
            self.errors += 1
            log.exception("firmware internal error")
            return err_reply(seq, ErrorCode.INTERNAL, f"{type(exc).__name__}")

    # -- argument helpers --------------------------------------------------------------
    @staticmethod
    def _nargs(req: Request, n: int) -> None:
        if len(req.args) != n:
            raise FrameError(
                ErrorCode.ARG_COUNT, f"{req.cmd} takes {n} arguments, got {len(req.args)}"
            )

    def _floats(self, req: Request, n: int, what: str, offset: int = 0) -> np.ndarray:
        return np.array(
            [parse_float(s, f"{what}[{i}]") for i, s in enumerate(req.args[offset : offset + n])]
        )

    # -- commands ----------------------------------------------------------------------
    async def _cmd_id(self, req: Request) -> list[str]:
        self._nargs(req, 0)
        return [
            "phasegrad-board",
            f"fw={FIRMWARE_VERSION}",
            f"sn={self.serial_number}",
            f"boot={self.boot_id}",
        ]

    async def _cmd_status(self, req: Request) -> list[str]:
        self._nargs(req, 0)
        return [
            f"boot={self.boot_id}",
            f"clamped={int(self.inj_enabled)}",
            f"commands={self.commands}",
            f"errors={self.errors}",
            f"uptime_s={time.monotonic() - self._boot_t:.3f}",
        ]

    async def _cmd_desc(self, req: Request) -> list[str]:
        self._nargs(req, 1)
        k = parse_int(req.args[0], "chunk")
        if not 0 <= k < len(self._descriptor):
            raise FrameError(
                ErrorCode.OUT_OF_RANGE, f"chunk: {k} outside 0…{len(self._descriptor) - 1}"
            )
        return [str(k), str(len(self._descriptor)), self._descriptor[k]]

    async def _cmd_ping(self, req: Request) -> list[str]:
        return ["PONG", *req.args[:8]]

    async def _cmd_w(self, req: Request) -> list[str]:
        n = self.model.n
        self._nargs(req, n)
        omega = self._floats(req, n, "omega")
        await self.chip.set_frequencies(omega)  # limit-checked by the chip's model
        fmap = self.chip.frequency_map  # the calibration table: ω → bias
        if self.model.limits.bias.unit == "model" or fmap is None:
            bias = omega  # biases are the frequencies themselves
        else:
            bias = fmap.bias(omega)
        self.dac_codes = self._codes_for(bias)
        return []

    async def _cmd_b(self, req: Request) -> list[str]:
        n = self.model.n
        self._nargs(req, n)
        codes = np.array(
            [parse_int(s, f"code[{i}]") for i, s in enumerate(req.args)], dtype=np.int64
        )
        bad = np.flatnonzero((codes < 0) | (codes > self.dac_max))
        if bad.size:
            i = int(bad[0])
            raise FrameError(
                ErrorCode.OUT_OF_RANGE, f"code[{i}]: {codes[i]} outside DAC range 0…{self.dac_max}"
            )
        await self.chip.set_biases(self.code_to_bias(codes))
        self.dac_codes = codes
        return []

    async def _cmd_b_query(self, req: Request) -> list[str]:
        self._nargs(req, 0)
        return [str(int(c)) for c in self.dac_codes]

    async def _cmd_k(self, req: Request) -> list[str]:
        e = len(self.model.edges)
        self._nargs(req, e)
        if Capability.COUPLINGS not in self.chip.capabilities:
            raise FrameError(ErrorCode.UNSUPPORTED, "this chip has fixed couplings")
        await self.chip.set_couplings(self._floats(req, e, "coupling"))
        return []

    async def _cmd_c(self, req: Request) -> list[str]:
        n_out = len(self.model.roles.outputs)
        self._nargs(req, 2 + n_out)
        beta = parse_float(req.args[0], "beta")
        direction = parse_int(req.args[1], "direction")
        if direction not in (1, -1):
            raise FrameError(ErrorCode.OUT_OF_RANGE, f"direction: {direction} must be 1 or -1")
        target = self._floats(req, n_out, "target", offset=2)
        await self.chip.clamp(target, beta, direction)
        self.inj_amplitude, self.inj_phase, self.inj_enabled = beta, target, True
        return []

    async def _cmd_i_query(self, req: Request) -> list[str]:
        self._nargs(req, 0)
        return [
            str(int(self.inj_enabled)),
            fmt_float(self.inj_amplitude),
            *map(fmt_float, self.inj_phase),
        ]

    async def _cmd_rel(self, req: Request) -> list[str]:
        self._nargs(req, 0)
        await self.chip.release()
        self.inj_enabled = False
        return []

    async def _cmd_r(self, req: Request) -> list[str]:
        self._nargs(req, 1)
        averages = parse_int(req.args[0], "averages")
        r = await self.chip.read_phases(averages)  # range-checked by the chip model
        return [
            f"boot={self.boot_id}",
            str(int(r.locked)),
            str(r.averages),
            fmt_float(r.settle_s),
            *map(fmt_float, r.phases),
            *map(fmt_float, r.spread),
        ]

    async def _cmd_f(self, req: Request) -> list[str]:
        self._nargs(req, 0)
        if Capability.FREQUENCY_COUNTER not in self.chip.capabilities:
            raise FrameError(ErrorCode.UNSUPPORTED, "no frequency counter on this board")
        return [*map(fmt_float, await self.chip.read_frequencies())]

    async def _cmd_safe(self, req: Request) -> list[str]:
        self._nargs(req, 0)
        await self.make_safe()
        return []

    async def _cmd_seed(self, req: Request) -> list[str]:
        self._nargs(req, 1)
        seed = parse_int(req.args[0], "seed")
        if seed < 0:
            raise FrameError(ErrorCode.OUT_OF_RANGE, f"seed: {seed} must be >= 0")
        if Capability.RESEED not in self.chip.capabilities:
            raise FrameError(ErrorCode.UNSUPPORTED, "this chip has no noise seed")
        self.chip.reseed(seed)
        return []

    def _phases(self, req: Request, n: int, what: str, offset: int = 0) -> np.ndarray:
        """``n`` phase-register values (rad), each in [−π, π] (else OUT_OF_RANGE)."""
        p = self._floats(req, n, what, offset)
        bad = np.flatnonzero(np.abs(p) > np.pi)
        if bad.size:
            i = int(bad[0])
            raise FrameError(
                ErrorCode.OUT_OF_RANGE, f"{what}[{i}]: {float(p[i])!r} outside [-pi, pi]"
            )
        return p

    async def _cmd_h(self, req: Request) -> list[str]:
        if Capability.HELD_PHASES not in self.chip.capabilities:
            raise FrameError(ErrorCode.UNSUPPORTED, "this chip has no held inputs")
        n_held = len(self.model.roles.held)
        self._nargs(req, n_held)
        phases = self._phases(req, n_held, "held_phases")
        await self.chip.set_held_phases(phases)
        # the register reads back what the chip applied (its model wraps to [−π, π))
        self.held_phases = self.model.check_held_phases(phases)
        return []

    async def _cmd_h_query(self, req: Request) -> list[str]:
        self._nargs(req, 0)
        if Capability.HELD_PHASES not in self.chip.capabilities:
            raise FrameError(ErrorCode.UNSUPPORTED, "this chip has no held inputs")
        return [*map(fmt_float, self.held_phases)]

    async def _cmd_d(self, req: Request) -> list[str]:
        if Capability.DRIVE not in self.chip.capabilities:
            raise FrameError(ErrorCode.UNSUPPORTED, "this chip has no drive input")
        n_drive = len(self.model.roles.drive)
        self._nargs(req, 1 + n_drive)
        phase = parse_float(req.args[0], "drive_phase")
        if abs(phase) > np.pi:
            raise FrameError(ErrorCode.OUT_OF_RANGE, f"drive_phase: {phase!r} outside [-pi, pi]")
        amp = self._floats(req, n_drive, "drive_amplitude", offset=1)
        hi = self.model.limits.drive_max
        bad = np.flatnonzero((amp < 0.0) | (amp > hi))
        if bad.size:
            i = int(bad[0])
            raise FrameError(
                ErrorCode.OUT_OF_RANGE,
                f"drive_amplitude[{i}]: {float(amp[i])!r} outside [0, {hi!r}]",
            )
        await self.chip.set_drive(amp, phase)
        self.drive_phase, self.drive_amplitude = phase, amp
        return []

    async def _cmd_d_query(self, req: Request) -> list[str]:
        self._nargs(req, 0)
        if Capability.DRIVE not in self.chip.capabilities:
            raise FrameError(ErrorCode.UNSUPPORTED, "this chip has no drive input")
        return [fmt_float(self.drive_phase), *map(fmt_float, self.drive_amplitude)]
