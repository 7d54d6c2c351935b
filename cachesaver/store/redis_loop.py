"""A Redis connection the event loop drives itself: lookups without a thread hop.

A :class:`LoopConnection` is one connection to a Redis server that only the event loop uses.
Commands are written and replies read without blocking it (anyio's ``wait_writable`` and
``wait_readable``, so under asyncio and trio alike): a lone lookup costs one round trip, and a
round of many keys lets the event loop go on with other work while the server runs its script.

Guarantees:

* It is opened (connected, authenticated, its database selected, all by redis-py) by
  :meth:`LoopConnection.open`, a blocking call made on a store thread, never on the event
  loop. It opens nothing for a connection it cannot drive itself: TLS (``rediss://``), a
  protocol other than RESP2 or RESP3, or no hiredis; the caller then keeps using its store
  threads. Replies are parsed by hiredis as redis-py's own parser does.
* One exchange at a time: :meth:`LoopConnection.exchange` returns None at once, sending
  nothing, while another one runs (from any thread or event loop) or once it is closed.
* A reply is never read out of step: an exchange that cannot complete (the connection dropped,
  the caller was cancelled) closes the connection, and returns None (a cancellation is
  re-raised). Error replies are returned as values (``hiredis.ReplyError``) for the caller to
  judge.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import anyio

__all__ = ["LoopConnection"]

_READ_SIZE = 1 << 16


class LoopConnection:
    """One redis-py connection, driven from the event loop; see the module docstring."""

    __slots__ = ("_connection", "_sock", "_hiredis", "_busy", "closed")

    def __init__(self, connection: Any, sock: Any, hiredis: Any) -> None:
        self._connection = connection
        self._sock = sock
        self._hiredis = hiredis
        self._busy = threading.Lock()
        self.closed = False

    @classmethod
    def open(cls, pool: Any) -> "LoopConnection | None":
        """A new connection of redis-py's connection ``pool`` (not lent to its other users), or
        None when it cannot be driven from the event loop. Blocks: call it on a thread. Raises
        what connecting raises (redis-py's errors)."""
        try:
            import hiredis
        except ImportError:
            return None
        connection = pool.make_connection()
        try:
            connection.connect()
            sock = getattr(connection, "_sock", None)
            protocol = str(getattr(connection, "protocol", 2) or 2)
            if sock is None or isinstance(sock, ssl.SSLSocket) or protocol not in ("2", "3") or not hasattr(sock, "send"):
                connection.disconnect()
                return None
            sock.settimeout(0.0)  # only this object uses it from now on: never blocking
        except BaseException:
            connection.disconnect()
            raise
        return cls(connection, sock, hiredis)

    async def exchange(self, packed: bytes, replies: int) -> list[Any] | None:
        """Send ``packed`` (one or more commands) and read ``replies`` replies, or None when the
        connection is busy, closed, or failed (it is closed then)."""
        if self.closed or not self._busy.acquire(blocking=False):
            return None
        complete = False
        try:
            sock = self._sock
            pending = memoryview(packed)
            while pending:
                try:
                    sent = sock.send(pending)
                except BlockingIOError:
                    await anyio.wait_writable(sock)
                    continue
                pending = pending[sent:]
            reader = self._hiredis.Reader()
            out: list[Any] = []
            while len(out) < replies:
                reply = reader.gets()
                if reply is not False:
                    out.append(reply)
                    continue
                try:
                    data = sock.recv(_READ_SIZE)
                except BlockingIOError:
                    await anyio.wait_readable(sock)
                    continue
                if not data:
                    raise ConnectionResetError("the server closed the connection")
                reader.feed(data)
            complete = True
            return out
        except (OSError, self._hiredis.ProtocolError):
            return None
        finally:
            if not complete:
                self.close()
            self._busy.release()

    def close(self) -> None:
        """Close the connection (idempotent); later exchanges return None."""
        self.closed = True
        try:
            self._connection.disconnect()
        except Exception:  # noqa: BLE001 - a socket of a gone server
            pass
