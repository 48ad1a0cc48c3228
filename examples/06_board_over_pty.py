"""Drive an emulated CMOS chip through its controller board over a pseudo-terminal.

The board firmware runs in a background thread on a pty (what ``phasegrad-hw emulate board
--device FILE --pty`` does in its own process); the host opens it with pyserial exactly as
it would open ``/dev/ttyACM0``. The host needs no model file: the board sends its chip
descriptor. Thirty EP steps through the board are compared with the same steps on the same
chip (same seed) in-process:

* no link retries (``board.stats["retries"] == 0``, the usual case): every read was measured
  once, so the chip drew the same noise in the same order and the parameters are equal to
  the last bit — checked exactly;
* a retry (an exchange that timed out or came back damaged) makes the board measure the chip
  again, with fresh noise, and every later draw shifts: the two runs are then two noisy runs
  of one chip, and the example checks that both learned and that their parameter changes
  point the same way (cosine > 0.5; measured 0.78–0.91 with retries forced by a 3 ms
  timeout). It says which comparison it made.

    python examples/06_board_over_pty.py
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from phasegrad_hw.backends.serial import SerialSubstrate
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.registry import open_substrate
from phasegrad_hw.device.substrate import OscillatorSubstrate
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.firmware_models.server import LineServer
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule

DEVICE = Path(__file__).resolve().parent / "devices" / "cmos-2-5-2.toml"


def start_parameters(m: DeviceModel) -> Parameters:
    """Both runs start here: ω uniform in ±0.3 (seed 0), the chip's couplings."""
    return Parameters(np.random.default_rng(0).uniform(-0.3, 0.3, m.n), m.coupling_values())


async def train(sub: OscillatorSubstrate, steps: int = 30) -> tuple[Parameters, float]:
    ctl = EPController(
        [sub],
        EPConfig(rule=EPRule(mode="centred", averages=4, params="both", lr_omega=0.05, lr_k=0.05)),
        start_parameters(sub.model),
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
        # a generous per-exchange timeout: on a loaded machine a 1 s timeout can expire, and a
        # retried read draws new chip noise (then the runs are compared as two noisy runs)
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
            link = dict(board.stats)  # retries re-measure (fresh chip noise)
            print(f"link: {link}")
    finally:
        server.stop()
    async with open_substrate(DEVICE, seed=7) as local:
        p_local, rate_local = await train(local)
    print(
        f"EP steps/s: in-process {rate_local:.0f}, board over pty {rate_board:.0f} "
        f"({rate_board / rate_local:.0%})"
    )
    start = start_parameters(chip.model)
    d_board = np.r_[p_board.omega - start.omega, p_board.coupling - start.coupling]
    d_local = np.r_[p_local.omega - start.omega, p_local.coupling - start.coupling]
    diff = np.abs(d_board - d_local).max()
    print(f"max |parameter difference| board vs in-process: {diff:.1e}")
    if link["retries"] == 0:  # every read measured once: the same noise draws, bit for bit
        print("no link retries: board and in-process parameters compared bit for bit")
        assert diff == 0.0, f"board vs in-process differ by {diff:.3g} without retries"
    else:
        cos = float(d_board @ d_local / (np.linalg.norm(d_board) * np.linalg.norm(d_local)))
        print(
            f"{link['retries']} link retries re-measured the chip (fresh noise): compared as two "
            f"noisy runs of one chip, cosine of the parameter changes {cos:.2f}"
        )
        assert cos > 0.5, f"board and in-process runs learned differently (cosine {cos:.2f})"
    for name, p in (("in-process", p_local), ("board", p_board)):
        moved = np.abs(p.coupling - start.coupling).max()
        print(f"largest coupling change after 30 steps ({name}): {moved:.2e}")
        assert moved > 1e-3  # it did learn


if __name__ == "__main__":
    asyncio.run(main())
