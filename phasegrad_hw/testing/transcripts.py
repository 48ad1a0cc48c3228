"""In-memory links for driver tests: scripted transcripts and an in-process board.

* :func:`expected_exchanges` — a link that checks every message a driver sends against a
  scripted transcript ``[(sent, reply), …]`` and answers with the scripted reply; the first
  message that differs fails with a diff (what was sent, what was expected, where they
  part, what matched before). ``framing="scpi"`` gives a transport for
  :class:`~phasegrad_hw.backends.scpi_link.ScpiLink` (messages without terminator);
  ``framing="board"`` a byte stream for :class:`~phasegrad_hw.backends.board_link.BoardLink`
  — there the script holds line bodies without sequence number and CRC (``"W 0.1 0.2"`` →
  ``"OK"``): the stream checks the CRC of what was sent and frames the reply with the
  request's sequence number. A reply ``None`` means no reply (a lost one).
* :class:`FirmwareStream` — a byte stream straight into a
  :class:`~phasegrad_hw.firmware_models.board.BoardFirmware` in this process (no pty or
  TCP), so :class:`~phasegrad_hw.backends.serial.SerialSubstrate` runs over an in-memory
  link.

A mismatch is raised where it happens (an :class:`AssertionError`) and, since a driver may
catch it and retry, raised again when the ``with`` block ends; so is a transcript that was
not used up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, Literal, TypeVar, overload

from phasegrad_hw.backends.scpi_link import IoRunner, ScpiLink
from phasegrad_hw.errors import DeviceTimeoutError
from phasegrad_hw.firmware_models.board import BoardFirmware
from phasegrad_hw.wire.board import FrameError, LineSplitter, frame, parse_request

T = TypeVar("T")
Script = Sequence[tuple[str, str | None]]


class TranscriptMismatch(AssertionError):
    """The driver sent something else than the transcript expected."""


def _diff(index: int, total: int, sent: str, expected: str | None, done: list[str]) -> str:
    lines = [f"transcript exchange {index + 1} of {total}: the driver sent", f"  {sent!r}"]
    if expected is None:
        lines.append("after the transcript ended")
    else:
        at = next(
            (i for i, (a, b) in enumerate(zip(sent, expected, strict=False)) if a != b),
            min(len(sent), len(expected)),
        )
        lines += [
            "expected",
            f"  {expected!r}",
            f"  {' ' * (at + 1)}^ first difference at character {at}",
        ]
    if done:
        lines.append("matched before: " + " | ".join(repr(d[:40]) for d in done[-3:]))
    return "\n".join(lines)


class Transcript:
    """The script and its position; :meth:`check` compares one sent message."""

    def __init__(self, script: Script) -> None:
        self.script = list(script)
        self.position = 0
        self.failure: TranscriptMismatch | None = None
        self._matched: list[str] = []

    def check(self, sent: str) -> str | None:
        """The scripted reply to ``sent``; :class:`TranscriptMismatch` if it was not expected."""
        if self.failure is not None:
            raise self.failure
        i = self.position
        expected = self.script[i][0] if i < len(self.script) else None
        if sent != expected:
            self.failure = TranscriptMismatch(
                _diff(i, len(self.script), sent, expected, self._matched)
            )
            raise self.failure
        self.position += 1
        self._matched.append(sent)
        return self.script[i][1]

    def assert_done(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.position != len(self.script):
            rest = [s for s, _ in self.script[self.position :]]
            raise TranscriptMismatch(
                f"transcript not used up: {len(rest)} exchange(s) never sent, first {rest[0]!r}"
            )


class ScpiTranscript(Transcript):
    """A scripted :class:`~phasegrad_hw.backends.scpi_link.ScpiTransport` (with ``aquery``)."""

    resource = "transcript"

    def __init__(self, script: Script) -> None:
        super().__init__(script)
        self._replies: deque[str] = deque()

    def open(self) -> None:
        self._replies.clear()

    def close(self) -> None:
        self._replies.clear()

    def write(self, message: str) -> None:
        reply = self.check(message)
        if reply is not None:
            self._replies.append(reply)

    def read(self, timeout_s: float) -> str:
        if not self._replies:
            raise DeviceTimeoutError(f"transcript: no reply scripted (timeout {timeout_s:g} s)")
        return self._replies.popleft()

    def clear(self) -> None:
        self._replies.clear()

    def peer_closed(self) -> bool:
        return False

    async def aquery(self, message: str, timeout_s: float) -> str:
        self.write(message)
        return self.read(timeout_s)


class BoardTranscript(Transcript):
    """A scripted board :class:`~phasegrad_hw.backends.board_link.ByteStream`."""

    def __init__(self, script: Script) -> None:
        super().__init__(script)
        self._rx = bytearray()
        self._lines = LineSplitter()

    def open(self) -> None:
        self._rx.clear()
        self._lines.reset()

    def close(self) -> None:
        self._rx.clear()

    def write(self, data: bytes) -> None:
        for line in self._lines.feed(data):
            if line is None:
                raise TranscriptMismatch("transcript: the driver sent an overlong line")
            try:
                req = parse_request(line)
            except FrameError as exc:
                self.failure = TranscriptMismatch(
                    f"transcript: driver sent a bad frame {line!r}: {exc}"
                )
                raise self.failure from None
            reply = self.check(" ".join((req.cmd, *req.args)))
            if reply is not None:
                self._rx += frame(f"{req.seq} {reply}")

    def read(self, timeout_s: float) -> bytes:
        if not self._rx:
            time.sleep(max(0.0, timeout_s))  # nothing scripted: the board stays silent
            return b""
        data = bytes(self._rx)
        self._rx.clear()
        return data

    def reset_input(self) -> None:
        self._rx.clear()


@overload
def expected_exchanges(
    script: Script, *, framing: Literal["scpi"] = "scpi"
) -> contextlib.AbstractContextManager[ScpiTranscript]: ...


@overload
def expected_exchanges(
    script: Script, *, framing: Literal["board"]
) -> contextlib.AbstractContextManager[BoardTranscript]: ...


def expected_exchanges(
    script: Script, *, framing: Literal["scpi", "board"] = "scpi"
) -> contextlib.AbstractContextManager[Transcript]:
    """A scripted link for ``with``: fails on the first unexpected message (with a diff) and,
    at the end of the block, when the transcript was not used up."""
    return _expected(ScpiTranscript(script) if framing == "scpi" else BoardTranscript(script))


@contextlib.contextmanager
def _expected(transcript: Transcript) -> Iterator[Transcript]:
    try:
        yield transcript
    except Exception as exc:
        if transcript.failure is not None and exc is not transcript.failure:
            raise transcript.failure from exc
        raise
    transcript.assert_done()


def scpi_link(transport: ScpiTranscript, name: str = "instrument", retries: int = 0) -> ScpiLink:
    """A connected :class:`ScpiLink` over a transcript (inline I/O, no recovery by default)."""
    io = IoRunner("inline")
    io.start()
    link = ScpiLink(
        name,
        transport,
        io,
        timeout_s=1.0,
        retries=retries,
        resync_timeout_s=1.0,
        reconnect_backoff_s=0.0,
    )
    link.open()
    return link


class FirmwareStream:
    """A byte stream into ``firmware`` in this process: every line written is handled at once
    (on the firmware's own event loop, in a background thread) and its reply queued for
    ``read``. The board is powered on when the stream is made; :meth:`shutdown` (or the
    ``with`` block) leaves the chip safe and stops the thread — after that the link is dead
    (``open``/``write`` raise :class:`OSError`, as for an unplugged board), so a driver that
    still has deferred setpoints fails instead of waiting for a board that is gone."""

    def __init__(self, firmware: BoardFirmware) -> None:
        self.firmware = firmware
        self._rx = bytearray()
        self._lines = LineSplitter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="firmware-stream", daemon=True
        )
        self._thread.start()
        self._stopping = False
        self._call(firmware.power_on())
        self.is_open = False

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the firmware's loop and wait for it. A coroutine the loop will never
        run (shut down before or meanwhile) is closed — never left un-awaited — and the call
        fails with :class:`OSError`, as for an unplugged board."""
        if self._stopping or self._loop.is_closed():
            coro.close()
            raise OSError("in-memory board shut down")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        while True:
            try:
                return fut.result(0.2)
            except concurrent.futures.TimeoutError:
                if not self._thread.is_alive():  # shut down meanwhile: nothing will answer
                    fut.cancel()
                    coro.close()
                    raise OSError("in-memory board shut down") from None

    def open(self) -> None:
        if self._loop.is_closed():
            raise OSError("in-memory board shut down")
        self.is_open = True
        self._rx.clear()
        self._lines.reset()

    def close(self) -> None:
        self.is_open = False
        self._rx.clear()

    def write(self, data: bytes) -> None:
        if not self.is_open:
            raise OSError("in-memory link closed")
        for line in self._lines.feed(data):
            reply = self._call(self.firmware.handle_line(line))
            if reply is not None:
                self._rx += reply

    def read(self, timeout_s: float) -> bytes:
        if not self.is_open:
            raise OSError("in-memory link closed")
        if not self._rx:
            time.sleep(max(0.0, timeout_s))
            return b""
        data = bytes(self._rx)
        self._rx.clear()
        return data

    def reset_input(self) -> None:
        self._rx.clear()

    def shutdown(self) -> None:
        if self._loop.is_closed():
            return
        self.is_open = False
        try:
            self._call(self.firmware.make_safe())
        finally:
            self._stopping = True  # later calls fail at once (their coroutines closed)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> FirmwareStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
