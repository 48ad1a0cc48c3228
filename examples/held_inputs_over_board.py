"""Set the held input phases of an emulated chip through its controller board over a pty.

A small layered chip with held inputs (docs/design.md §8): each held input oscillator is
injection-locked by the reference clock through a programmable phase shifter, so it sits at
the phase the host sets. The board firmware runs in a background thread on a pseudo-terminal
(what ``phasegrad-hw emulate board --device FILE --pty`` does in its own process); the host
learns from the chip descriptor that the chip has held inputs (``held_phases``), sends one
``H`` line per sample (docs/protocol.md) and reads the phases back. The readings equal the
same chip in-process, and the held oscillators read back the phases that were set.

    python examples/held_inputs_over_board.py
"""

from __future__ import annotations

import asyncio

import numpy as np

from phasegrad_hw.backends.serial import SerialSubstrate
from phasegrad_hw.device.registry import open_model, open_substrate
from phasegrad_hw.device.substrate import Capability
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.firmware_models.server import LineServer
from phasegrad_hw.physics import wrap
from phasegrad_hw.testing.networks import model_layered_small


async def main() -> None:
    model = model_layered_small(sizes=(3, 5, 2))
    server = LineServer(BoardFirmware(open_model(model, seed=7)))
    path = server.start_pty()
    print(f"board on {path}")
    features = np.random.default_rng(1).uniform(0.0, 1.0, (4, len(model.roles.held)))
    try:
        board = open_substrate(f"serial://{path}")
        assert isinstance(board, SerialSubstrate)
        m = board.model
        print(
            f"chip: {m.name}, {m.n} oscillators; held inputs {m.roles.held}, bias oscillators "
            f"{m.roles.bias} at {np.round(m.bias_phases_rad, 3).tolist()} rad, "
            f"outputs {m.roles.outputs}"
        )
        assert Capability.HELD_PHASES in board.capabilities
        readings = []
        async with board:
            before = board.stats["exchanges"]
            for x in features:
                phases = m.input_phases(x)  # features in [0, 1] → held phases (rad)
                await board.set_held_phases(phases)
                r = await board.read_phases(4)
                readings.append(r.phases)
                off = np.abs(wrap(r.phases[m.roles.held] - phases)).max()
                print(
                    f"held {np.round(phases, 3).tolist()} rad → outputs "
                    f"{np.round(r.phases[m.roles.outputs], 3).tolist()} rad "
                    f"(held read back within {off:.1e} rad, locked {r.locked})"
                )
                assert off < 1e-6
            per_sample = (board.stats["exchanges"] - before) / len(features)
            print(f"round trips per sample (H line sent with the read): {per_sample:.2f}")
    finally:
        server.stop()
    async with open_model(model, seed=7) as local:  # the same chip in-process
        ref = []
        for x in features:
            await local.set_held_phases(model.input_phases(x))
            ref.append((await local.read_phases(4)).phases)
    diff = float(np.abs(np.array(readings) - np.array(ref)).max())
    print(f"max |phase difference| board vs in-process: {diff:.1e} rad")
    assert diff <= 1e-9, diff
    spread = float(np.ptp(np.array(ref)[:, model.roles.outputs], axis=0).max())
    assert spread > 1e-3, spread  # the outputs follow the held inputs


if __name__ == "__main__":
    asyncio.run(main())
