"""Drive an emulated CMOS chip through its controller board over a pseudo-terminal.

The board firmware runs in a background thread on a pty (what ``phasegrad-hw emulate board
--device FILE --pty`` does in its own process); the host opens it with pyserial exactly as
it would open ``/dev/ttyACM0``. The host needs no model file: the board sends its chip
descriptor. A few EP steps through the board give the same parameters as the same chip
in-process, to the last bit.

    python examples/06_board_over_pty.py
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from phasegrad_hw.backends.serial import SerialSubstrate
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.device.substrate import OscillatorSubstrate
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.firmware_models.server import LineServer
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule

DEVICE = Path(__file__).resolve().parent / "devices" / "cmos-2-5-2.toml"


async def train(sub: OscillatorSubstrate, steps: int = 30) -> tuple[Parameters, float]:
    m = sub.model
    start = Parameters(np.random.default_rng(0).uniform(-0.3, 0.3, m.n), m.coupling_values())
    ctl = EPController(
        [sub],
        EPConfig(rule=EPRule(mode="centred", averages=4, params="both", lr_omega=0.05, lr_k=0.05)),
        start,
    )
    xs = np.random.default_rng(1).uniform(-1.0, 1.0, (steps, 2))
    t0 = time.perf_counter()
    for x in xs:
        await ctl.step([Sample(x, np.array([-0.2, 0.2]))])
    return ctl.params, steps / (time.perf_counter() - t0)


async def main() -> None:
    chip = open_substrate(DEVICE, seed=7)
    server = LineServer(BoardFirmware(chip))
    path = server.start_pty()
    print(f"board on {path}")
    try:
        # a generous per-exchange timeout: on a loaded machine a 1 s timeout can expire and a
        # retried read then draws new chip noise, so the runs would no longer match bit for bit
        board = open_substrate(f"serial://{path}?timeout_s=10")
        assert isinstance(board, SerialSubstrate)
        print(
            f"chip descriptor: {board.model.name}, {board.model.n} oscillators, "
            f"outputs {board.model.roles.outputs}, bias {board.model.limits.bias.min}–"
            f"{board.model.limits.bias.max} {board.model.limits.bias.unit}"
        )
        async with board:
            p_board, rate_board = await train(board)
            print(f"round trips per EP step: {board.stats['exchanges'] / 30:.2f}")
            link = board.stats  # retries re-measure (fresh chip noise): they break bit equality
            print(f"link: {link}")
    finally:
        server.stop()
    async with open_substrate(DEVICE, seed=7) as local:
        p_local, rate_local = await train(local)
    diff = max(
        np.abs(p_board.omega - p_local.omega).max(),
        np.abs(p_board.coupling - p_local.coupling).max(),
    )
    print(
        f"EP steps/s: in-process {rate_local:.0f}, board over pty {rate_board:.0f} "
        f"({rate_board / rate_local:.0%})"
    )
    print(f"max |parameter difference| board vs in-process: {diff:.1e}")
    assert diff <= 1e-9, f"board vs in-process differ by {diff:.3g}; link {link}"
    moved = np.abs(p_local.coupling - chip.model.coupling_values()).max()
    print(f"largest coupling change after 30 steps: {moved:.2e}")
    assert moved > 1e-3  # it did learn


if __name__ == "__main__":
    asyncio.run(main())
