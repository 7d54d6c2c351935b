"""A Redis connection the event loop drives itself: lookups without a thread hop.

A :class:`LoopConnection` is one connection to a Redis server that only the event loop uses.
Commands are written and replies read without blocking it, under asyncio and trio alike: on
asyncio it waits on the loop's own reader and writer callbacks and timer (a cancel scope and
anyio's waits cost more than the rest of a lone lookup's Python work), elsewhere on anyio's
``wait_readable`` and ``wait_writable``. On asyncio the loop watches the socket for replies
from the first wait to the close (registering and removing a reader at every wait cost a
sequential hit a fifth of its time). A lone lookup costs one round trip, and a round of
many keys lets the event loop go on with other work while the server runs its scripts (and the
caller decode each reply as it comes, while the server runs the next).

Guarantees:

* It is opened (connected, authenticated, its database selected, all by redis-py) by
  :meth:`LoopConnection.open`, a blocking call made on a thread, never on the event
  loop. It is the store's own: made with the client's connection settings, but not taken from
  its pool (whose connection count and limit it leaves alone), and it speaks RESP2 whatever
  the client's protocol, so the server never pushes a message a reply could be mistaken for.
  It opens nothing for a connection it cannot drive itself (TLS, or no hiredis); the caller
  then keeps using its store threads.
* One exchange at a time: :meth:`LoopConnection.exchange` returns None at once, sending
  nothing, while another one runs (from any thread or event loop), once it is closed, or in a
  process forked from the one that opened it.
* A reply is never read out of step: an exchange that cannot complete (the connection dropped,
  the server sent more than was asked for or something that is not a reply, no reply within
  the client's socket timeout, the caller was cancelled, the connection was closed meanwhile)
  closes the connection, and returns None (a cancellation is re-raised). Error replies are
  returned as values (``hiredis.ReplyError``) for the caller to judge. An exception the
  caller's ``on_reply`` raises ends the exchange the same way, then is raised.
* No event loop is woken for nothing, and none is left watching a closed socket (whose number a
  later socket may get): the watch ends when the socket turns readable while no exchange waits
  (the server closed it, say), and before the socket is closed. :meth:`LoopConnection.close`
  called off the thread of the loop watching it leaves the closing to that loop, at its next
  pass (at once if that loop is closed; a loop that never runs again and is never closed
  keeps the socket open).
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import threading
import time
from typing import Any, Callable

import anyio

__all__ = ["LoopConnection"]

_READ_SIZE = 1 << 16
_DEFAULT_TIMEOUT_S = 10.0  # redis-py's clients of this package time out after 10 s too
_MORE = object()  # hiredis: no complete reply yet (a RESP3 false would be False)


class _TimedOut(Exception):
    """Internal: the exchange's deadline passed while it waited for the socket."""


class LoopConnection:
    """One redis-py connection, driven from the event loop; see the module docstring."""

    __slots__ = ("_connection", "_sock", "_hiredis", "_push", "_busy", "_pid", "_timeout_s", "closed",
                 "_watched", "_waiter")

    def __init__(self, connection: Any, sock: Any, hiredis: Any, timeout_s: float) -> None:
        self._connection = connection
        self._sock = sock
        self._hiredis = hiredis
        self._push = getattr(hiredis, "PushNotification", None)  # RESP3 pushes: hiredis 3 and later
        self._busy = threading.Lock()
        self._pid = os.getpid()
        self._timeout_s = timeout_s
        self.closed = False
        self._watched: asyncio.AbstractEventLoop | None = None  # the event loop watching for replies
        self._waiter: asyncio.Future[None] | None = None  # the read waiting for that loop's call

    @classmethod
    def open(cls, pool: Any) -> "LoopConnection | None":
        """A new connection with the settings of redis-py's connection ``pool`` (not counted in
        it), or None when it cannot be driven from the event loop. Blocks: call it on a thread.
        Raises what connecting raises (redis-py's errors)."""
        try:
            import hiredis
        except ImportError:
            return None
        settings = dict(getattr(pool, "connection_kwargs", {}))
        settings["protocol"] = 2
        try:
            from redis.maint_notifications import MaintNotificationsConfig

            settings["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        except ImportError:  # redis-py before 7: it has no such notifications
            pass
        try:
            connection = pool.connection_class(**settings)
        except TypeError:  # a connection class of the user's own that takes other settings
            return None
        try:
            connection.connect()
            sock = getattr(connection, "_sock", None)
            if sock is None or isinstance(sock, ssl.SSLSocket) or not hasattr(sock, "send"):
                connection.disconnect()
                return None
            sock.settimeout(0.0)  # only this object uses it from now on: never blocking
        except BaseException:
            connection.disconnect()
            raise
        timeout = settings.get("socket_timeout")
        timeout_s = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else _DEFAULT_TIMEOUT_S
        return cls(connection, sock, hiredis, timeout_s)

    @property
    def usable(self) -> bool:
        """Not closed, and opened by this process (a forked child never uses its parent's)."""
        return not self.closed and os.getpid() == self._pid

    async def exchange(
        self, packed: bytes, replies: int, on_reply: Callable[[int, Any], None] | None = None
    ) -> list[Any] | None:
        """Send ``packed`` (one or more commands) and read ``replies`` replies, or None when the
        connection is busy, closed, or failed (it is closed then). ``on_reply(number, reply)``,
        when given, is called with each reply in order as soon as it is read, while the server
        may still be working on the later commands (so the caller decodes one while the server
        runs the next); an exception it raises ends the exchange, closes the connection and is
        raised (an OSError, taken for the connection's own, makes the exchange return None)."""
        if self.closed or os.getpid() != self._pid or not self._busy.acquire(blocking=False):
            if os.getpid() != self._pid:
                self.closed = True  # the parent's socket: left to the parent
            return None
        complete = False
        try:
            deadline = time.monotonic() + self._timeout_s if math.isfinite(self._timeout_s) else math.inf
            out = await self._exchange(packed, replies, deadline, on_reply)
            complete = out is not None
            return out
        except (OSError, _TimedOut, self._hiredis.ProtocolError):
            return None  # closed below, like any exchange that did not end
        finally:
            self._busy.release()
            if not complete or self.closed:
                self.close()

    async def _exchange(
        self, packed: bytes, replies: int, deadline: float, on_reply: Callable[[int, Any], None] | None
    ) -> list[Any] | None:
        sock = self._sock
        pending = memoryview(packed)
        while pending:
            if self.closed:
                return None
            try:
                sent = sock.send(pending)
            except BlockingIOError:
                await self._wait(False, deadline)
                continue
            pending = pending[sent:]
        reader = self._hiredis.Reader(notEnoughData=_MORE)
        push = self._push
        out: list[Any] = []
        while len(out) < replies:
            reply = reader.gets()
            if reply is not _MORE:
                if push is not None and isinstance(reply, push):
                    return None  # not a reply: out of step from here on
                if on_reply is not None:
                    on_reply(len(out), reply)
                out.append(reply)
                continue
            if self.closed:
                return None
            try:
                data = sock.recv(_READ_SIZE)
            except BlockingIOError:
                await self._wait(True, deadline)
                continue
            if not data:
                raise ConnectionResetError("the server closed the connection")
            reader.feed(data)
        if reader.gets() is not _MORE:
            return None  # more than was asked for: the next exchange would read it
        return out

    async def _wait(self, readable: bool, deadline: float) -> None:
        """Until the socket is readable (or writable); _TimedOut once ``deadline`` (of
        ``time.monotonic``) has passed. A cancellation is re-raised, the callbacks removed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise _TimedOut()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio)
            loop = None
        fd = self._sock.fileno()
        if loop is not None and readable and self._watch(loop, fd):
            ready: asyncio.Future[None] = loop.create_future()
            self._waiter = ready

            def expire() -> None:
                if not ready.done():
                    ready.set_exception(_TimedOut())

            timer = loop.call_later(left, expire) if math.isfinite(left) else None
            try:
                await ready
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            return
        if loop is not None:
            ready = loop.create_future()

            def wake() -> None:
                if not ready.done():
                    ready.set_result(None)

            def expire() -> None:
                if not ready.done():
                    ready.set_exception(_TimedOut())

            try:
                (loop.add_reader if readable else loop.add_writer)(fd, wake)
            except NotImplementedError:  # a loop without them (Windows' proactor)
                loop = None
            else:
                timer = loop.call_later(left, expire) if math.isfinite(left) else None
                try:
                    await ready
                finally:
                    (loop.remove_reader if readable else loop.remove_writer)(fd)
                    if timer is not None:
                        timer.cancel()
                return
        with anyio.move_on_after(left) as scope:
            await (anyio.wait_readable if readable else anyio.wait_writable)(self._sock)
        if scope.cancelled_caught:
            raise _TimedOut()

    def _watch(self, loop: asyncio.AbstractEventLoop, fd: int) -> bool:
        """Whether ``loop`` watches the socket for replies, registering it the first time (for
        as long as replies keep coming only when awaited, not at every wait); False when it
        cannot (a loop without readers, or another loop that is not closed watches it): the
        wait then registers and removes its own reader."""
        watched = self._watched
        if watched is loop:
            return True
        if watched is not None and not watched.is_closed():
            return False
        try:
            loop.add_reader(fd, self._readable)
        except NotImplementedError:  # a loop without readers (Windows' proactor)
            return False
        self._watched = loop
        return True

    def _readable(self) -> None:
        """The watching loop's callback: wake the waiting read; with none waiting (a reply
        nobody asked for, or the server closing the connection), stop watching, so a socket
        left readable never wakes the loop at every pass."""
        waiter = self._waiter
        if waiter is None:
            self._unwatch()
        elif not waiter.done():
            waiter.set_result(None)

    def _unwatch(self) -> None:
        """Stop the watch (on the watching loop's thread, before the socket is closed, so a
        later socket given the same number is never taken for this one)."""
        loop, self._watched = self._watched, None
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(self._sock.fileno())
            except ValueError:  # the socket is closed already: nothing is left to watch
                pass

    def close(self) -> None:
        """Close the connection (idempotent); later exchanges return None. While an exchange
        runs, it is only marked closed: the exchange closes it when it ends (within the
        client's socket timeout), so no socket is closed under a waiting event loop. An event
        loop that still watches the socket closes it itself: at once when this is called on its
        thread, else at its next pass (at once if it is closed; never, if it never runs
        again and is never closed)."""
        self.closed = True
        if os.getpid() != self._pid:
            return
        watched = self._watched
        if watched is not None and not watched.is_closed():
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not watched:
                try:
                    watched.call_soon_threadsafe(self._close_now)
                    return
                except RuntimeError:  # closed meanwhile: nothing watches the socket any more
                    self._watched = None
        self._close_now()

    def _close_now(self) -> None:
        if not self._busy.acquire(blocking=False):
            return  # an exchange runs: it closes the connection when it ends
        try:
            self._unwatch()
            self._connection.disconnect()
        except Exception:  # noqa: BLE001 - a socket of a gone server
            pass
        finally:
            self._busy.release()
