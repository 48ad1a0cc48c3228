"""The MQTT client of the device agent, the ``mqtt`` backend and telemetry: an
:class:`aiomqtt.Client` with a short path for small request/reply messages on one event loop.

aiomqtt 2.x drives paho-mqtt from the event loop and, for every publish, schedules the socket
write with ``call_soon_threadsafe`` (a self-pipe wake-up of its own loop, an ``add_writer`` /
``remove_writer`` pair and an ``Event`` awaited through ``wait_for``), and hands every incoming
message to the reader through a queue, a task and an ``asyncio.wait`` per message. For a
request/reply exchange over a loopback broker that machinery costs about as much CPU as the
exchange itself. :class:`Client` removes it without changing what goes over the wire:

* **Direct writes.** A packet queued on the loop's own thread is written at once (what paho
  does itself without an external loop); only a write the socket does not take whole is left to
  the writer callback. A QoS 0 publish thus returns with its packet in the kernel, no wake-up,
  no waiting. Packets queued from another thread (aiomqtt connects in an executor) take
  aiomqtt's path.
* **Intercept.** ``intercept(topic, payload, retain)``, called on the loop as each message is
  decoded, may take a message (return True) instead of queueing it: a controller resolves the
  future of a reply right there.
* **receive()** — the next queued message with one wake-up (a future set by the message
  callback), raising :class:`aiomqtt.MqttError` once the connection is gone.
* **Clean exit.** When the connection broke by an exception (a failed socket read or write),
  aiomqtt's exit returns early and leaves paho's socket open; paho's ``__del__`` then closed it
  later, calling aiomqtt's socket callbacks on a loop that may be closed by then (an
  "unraisable exception" warning), and the broken connection's exception was never retrieved
  ("Future exception was never retrieved"). The exit closes the socket while the loop runs and
  takes that exception (it was reported by :meth:`receive`, or concerns no one any more).
* **Clean failed entry.** An entry that fails after the TCP connection is made — no CONNACK
  within the timeout, a refused CONNECT, or a cancellation (an outer timeout, a stopping agent)
  — left the socket open and its housekeeping task pending, for paho's ``__del__`` to close on
  a closed loop. The failed entry waits for the connecting thread, closes the socket while the
  loop runs and releases the client for another attempt.

Only this module knows aiomqtt's and paho's internals (aiomqtt ``>=2.5,<3``, paho-mqtt 2);
``tests/e2e/test_mqtt_client.py`` pins the behaviour relied on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as paho

_CONNECT_WAIT_S = 30.0
"""Longest wait, in s, for a connect() thread left by a cancelled entry (paho's TCP connect
has its own 5 s timeout)."""

Intercept = Callable[[str, bytes, bool], bool]
"""``(topic, payload, retain) -> taken``: called on the event loop for every incoming message."""


class Client(aiomqtt.Client):
    """:class:`aiomqtt.Client` with direct writes, an ``intercept`` hook and :meth:`receive`
    (see the module docstring). ``direct_writes`` counts packets written at once."""

    def __init__(self, *args: Any, intercept: Intercept | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.intercept = intercept
        self.direct_writes = 0
        self._waiter: asyncio.Future[None] | None = None
        # the connect() of an entry, run in an executor thread: "queued" until it starts,
        # "running", "done"; "abandoned" when the entry failed before it started (it then
        # does nothing)
        self._connect_state = "done"
        self._connect_mutex = threading.Lock()
        self._connect_done = threading.Event()

    def _client_connect(self) -> None:  # runs in an executor thread
        with self._connect_mutex:
            if self._connect_state == "abandoned":
                return
            self._connect_state = "running"
        try:
            super()._client_connect()
        finally:
            with self._connect_mutex:
                self._connect_state = "done"
            self._connect_done.set()

    async def __aenter__(self) -> Self:
        if self._lock.locked():  # in use: aiomqtt refuses, and that connection is left alone
            return await super().__aenter__()
        with self._connect_mutex:
            self._connect_state = "queued"
            self._connect_done.clear()
        try:
            return await super().__aenter__()
        except BaseException:
            with self._connect_mutex:
                running = self._connect_state == "running"
                if self._connect_state == "queued":
                    self._connect_state = "abandoned"
            if running:
                # a cancelled entry left connect() running in its thread: let it finish (its
                # socket callbacks are queued on this loop before it returns), then close
                await asyncio.shield(
                    self._loop.run_in_executor(None, self._connect_done.wait, _CONNECT_WAIT_S)
                )
            if self._client.socket() is not None:
                self._client._sock_close()  # noqa: SLF001  (its callbacks need this loop)
            if self._lock.locked():
                self._lock.release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            gone = self._disconnected
            if gone.done() and not gone.cancelled():
                gone.exception()  # retrieved: reported by receive(), or of no further use
            if self._client.socket() is not None:  # the connection broke by an exception
                self._client._sock_close()  # noqa: SLF001  (its callbacks need this loop)

    # -- outgoing -------------------------------------------------------------------------
    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # an executor thread (connect): aiomqtt's thread-safe path
            on_loop = False
        # paho calls its own callbacks holding this (non-reentrant) lock; a write from inside
        # one could re-enter it through on_publish: leave that rare case to the writer callback
        mutex = client._in_callback_mutex  # noqa: SLF001
        if not on_loop or not mutex.acquire(blocking=False):
            super()._on_socket_register_write(client, userdata, sock)
            return
        mutex.release()
        try:
            client.loop_write()
        except Exception as exc:  # a broken connection: as aiomqtt's writer callback does
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        self.direct_writes += 1
        if client.want_write() and client.socket() is not None:
            # the socket took part of it: the rest when writable (unless the write found the
            # connection gone; paho has then closed the socket)
            super()._on_socket_register_write(client, userdata, sock)

    # -- incoming -------------------------------------------------------------------------
    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self.intercept is not None and self.intercept(
            message.topic, bytes(message.payload), bool(message.retain)
        ):
            return
        super()._on_message(client, userdata, message)
        self._wake()

    def _wake(self, _: object = None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> aiomqtt.Message:
        """The next message not taken by ``intercept``; :class:`aiomqtt.MqttError` when the
        connection is lost (or closed) before one arrives."""
        while True:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
            gone = self._disconnected
            if gone.done():
                raise aiomqtt.MqttError("Disconnected during message iteration") from (
                    None if gone.cancelled() else gone.exception()
                )
            waiter = self._waiter = self._loop.create_future()
            gone.add_done_callback(self._wake)
            try:
                await waiter
            finally:
                gone.remove_done_callback(self._wake)
