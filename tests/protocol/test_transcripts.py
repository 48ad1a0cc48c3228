"""The in-memory links of phasegrad_hw.testing.transcripts: the transcript harness fails
clearly (first mismatch with a diff, unused exchanges, bad frames), and SerialSubstrate over
an in-memory link to BoardFirmware behaves like the chip in-process."""

from __future__ import annotations

import numpy as np
import pytest

from phasegrad_hw.backends.board_link import BoardLink
from phasegrad_hw.backends.scpi_instruments import Instrument, smu_commands
from phasegrad_hw.backends.serial import SerialOptions, SerialSubstrate
from phasegrad_hw.backends.simulated import SimulatedSubstrate
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.testing.transcripts import (
    FirmwareStream,
    TranscriptMismatch,
    expected_exchanges,
    scpi_link,
)
from phasegrad_hw.wire.board import Request, frame
from tests.protocol.test_board_protocol import board_model

OK = '+0,"No error"'


async def test_mismatch_fails_with_a_diff_even_when_the_driver_retries() -> None:
    with pytest.raises(TranscriptMismatch) as info:
        with expected_exchanges([(":SOUR1:VOLT 0.5;:SYST:ERR?", OK)]) as t:
            link = scpi_link(t, "smu", retries=2)  # recovery would swallow a plain error
            smu = Instrument(smu_commands(9), link)
            await smu.write(smu.set_voltage(ch=1, volts=0.25))
    text = str(info.value)
    assert "exchange 1 of 1" in text
    assert "':SOUR1:VOLT 0.25;:SYST:ERR?'" in text and "':SOUR1:VOLT 0.5;:SYST:ERR?'" in text
    assert "first difference at character 14" in text


async def test_unused_and_extra_exchanges_fail() -> None:
    with pytest.raises(TranscriptMismatch, match="not used up: 1 exchange.*'\\*RST"):
        with expected_exchanges([("*CLS;:SYST:ERR?", OK), ("*RST;:SYST:ERR?", OK)]) as t:
            smu = Instrument(smu_commands(1), scpi_link(t))
            await smu.write(smu.clear_status())
    with pytest.raises(TranscriptMismatch, match="after the transcript ended"):
        with expected_exchanges([]) as t:
            smu = Instrument(smu_commands(1), scpi_link(t))
            await smu.write(smu.reset())


def test_board_transcript_frames_and_checks_crc() -> None:
    with expected_exchanges([("PING a", "OK PONG a"), ("R 1", None)], framing="board") as t:
        t.write(Request(7, "PING", ("a",)).encode())
        assert t.read(0.0) == frame("7 OK PONG a")
        t.write(Request(8, "R", ("1",)).encode())
        assert t.read(0.0) == b""  # None: the reply is lost
    with pytest.raises(TranscriptMismatch, match="bad frame"):
        with expected_exchanges([("PING", "OK PONG")], framing="board") as t:
            t.write(b"1 PING*0000\n")


def test_board_link_retries_a_lost_reply_through_the_transcript() -> None:
    """The PING barrier and the resend are part of what the transcript checks."""
    script = [("F?", None), ("PING", "OK PONG"), ("F?", "OK 1.0 2.0")]
    with expected_exchanges(script, framing="board") as t:
        link = BoardLink(t, name="t", timeout_s=0.01, retries=1, first_seq=0)
        link.open()
        (rep,) = link.transact(["F?"])
    assert rep.fields == ("1.0", "2.0") and link.stats["retries"] == 1


async def test_serial_substrate_over_an_in_memory_link_matches_in_process() -> None:
    model = board_model(noise=0.01)
    with FirmwareStream(BoardFirmware(SimulatedSubstrate(model, seed=5))) as stream:
        sub = SerialSubstrate("memory://board", options=SerialOptions(timeout_s=0.5), stream=stream)
        twin = SimulatedSubstrate(model, seed=5)
        rng = np.random.default_rng(2)
        async with sub, twin:
            for _ in range(3):
                w = rng.uniform(-0.5, 0.5, model.n)
                for s in (sub, twin):
                    await s.set_frequencies(w)
                    await s.clamp([0.1, -0.1], 0.2)
                got, ref = await sub.read_phases(4), await twin.read_phases(4)
                np.testing.assert_array_equal(got.phases, ref.phases)
                np.testing.assert_array_equal(got.spread, ref.spread)
                for s in (sub, twin):
                    await s.release()
            assert sub.stats["retries"] == 0 and sub.stats["exchanges"] >= 4
        chip = stream.firmware.chip
        assert not stream.firmware.inj_enabled
        assert np.array_equal(
            stream.firmware.dac_codes, stream.firmware._codes_for(chip.model.safe_biases())
        )


def test_firmware_stream_closes_what_a_stopped_loop_will_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write in the shutdown window (loop stopped, not yet closed — a driver thread still
    writing) fails with OSError and leaves no ``handle_line`` coroutine un-awaited."""
    import gc
    import sys
    import warnings

    from phasegrad_hw.testing.networks import model_2_5_2
    from phasegrad_hw.testing.transcripts import FirmwareStream

    unraisable: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: unraisable.append(str(u.exc_value)))
    stream = FirmwareStream(BoardFirmware(SimulatedSubstrate(model_2_5_2())))
    stream.open()
    stream.write(frame("1 PING"))
    assert stream.read(0.0).startswith(b"1 OK PONG")
    stream._loop.call_soon_threadsafe(stream._loop.stop)  # the window inside shutdown()
    stream._thread.join(10)
    refused = []
    with warnings.catch_warnings(record=True) as caught:  # (closing the loop drops its queue)
        warnings.simplefilter("always")
        for line in ("2 PING", "3 PING"):  # in the window, then after close
            try:
                stream.write(frame(line))
            except OSError as exc:
                refused.append(str(exc))
            stream._loop.close()
        gc.collect()
    assert refused == ["in-memory board shut down"] * 2
    unawaited = [*unraisable, *(str(w.message) for w in caught)]
    assert not [u for u in unawaited if "never awaited" in u], unawaited
