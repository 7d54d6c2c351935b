"""The one thread on which a sample store does its blocking I/O.

``diskcache`` keeps one SQLite connection per thread, and ``Cache.close()`` closes only the
calling thread's. A store whose calls ran in a pool of worker threads would leave a connection
open in each of them. A :class:`StoreThread` is instead a thread of the store's own on which
its blocking calls run (a store has one for lookups and one for writes, so a write waiting for
a lock never holds up a lookup), so each of its connections is known and closed on its thread.

Guarantees:

* Calls run one at a time, in the order they were submitted, on one daemon thread (started by
  the first call; a forgotten close never keeps the interpreter from exiting).
* ``await thread.run(func, *args)`` works under asyncio and trio and never blocks the event
  loop. It returns ``func``'s value or raises its exception. A caller cancelled before the call
  started does not start it; once it started, the caller waits for it to finish and gets its
  value (the cancellation is delivered at the caller's next checkpoint), so the result of a
  write is never lost, as with ``anyio.to_thread.run_sync`` by default.
* ``call`` runs a function from plain (non-async) code and waits; ``submit`` hands one over
  without waiting. :meth:`StoreThread.current` tells code which store thread runs it.
* ``finish`` (say, closing the thread's connection) is the thread's last call, on the thread:
  :meth:`StoreThread.close` runs the calls already submitted, then ``finish``, and joins the
  thread; a StoreThread dropped without close still ends its thread that way once collected.
  Later calls raise :class:`~cachesaver.errors.StoreError`. Closing twice is harmless.

>>> import anyio, threading
>>> thread = StoreThread(finish=lambda: print("finished on the thread"))
>>> async def main():
...     return await thread.run(threading.current_thread) is threading.current_thread()
>>> anyio.run(main)
False
>>> thread.call(lambda: 6 * 7)
42
>>> thread.close()
finished on the thread
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from ..errors import StoreError

__all__ = ["StoreThread"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Call:
    """One function call and, once it ran, its value or exception."""

    __slots__ = ("func", "args", "notify", "value", "error")

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...], notify: Callable[[], None]) -> None:
        self.func = func
        self.args = args
        self.notify = notify
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.value = self.func(*self.args)
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller
            self.error = exc
        try:
            self.notify()
        except Exception:  # noqa: BLE001 - the caller's event loop is gone; nobody waits
            pass

    def outcome(self) -> Any:
        if self.error is not None:
            error, self.error = self.error, None  # no reference cycle through the traceback
            raise error
        return self.value


_STOP = None
_local = threading.local()


def _serve(calls: queue.SimpleQueue, owner: "weakref.ref[StoreThread]", finish: _Call | None) -> None:
    _local.owner = owner
    try:
        while True:
            call = calls.get()
            if call is _STOP:
                return
            call.run()
    finally:
        if finish is not None:
            finish.run()


def _log_failure(call: _Call) -> None:
    if call.error is not None:
        logger.error("cachesaver: a store call on the store thread failed: %r", call.error)
        call.error = None


class StoreThread:
    """A daemon thread that runs blocking calls one at a time; see the module docstring."""

    def __init__(self, name: str = "cachesaver-store", finish: Callable[[], Any] | None = None) -> None:
        self.name = name
        self._finish = None if finish is None else _Call(finish, (), lambda: None)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether the thread was started (by a first call) and not yet closed."""
        return self._thread is not None and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    def is_current(self) -> bool:
        """Whether the calling code runs on this thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    @staticmethod
    def current() -> "StoreThread | None":
        """The StoreThread running the calling code, or None outside every store thread."""
        owner = getattr(_local, "owner", None)
        return None if owner is None else owner()

    def _put(self, call: _Call) -> None:
        with self._lock:
            if self._closed:
                raise StoreError(
                    "this store is closed and its thread has ended; open a new store (or pipeline) "
                    "on the cache to use it again"
                )
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_serve, args=(self._calls, weakref.ref(self), self._finish), name=self.name, daemon=True
                )
                self._thread.start()
                # A store dropped without close still lets its thread end.
                weakref.finalize(self, self._calls.put, _STOP)
            self._calls.put(call)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on this thread, awaited without blocking the event loop."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        token = anyio.lowlevel.current_token().native_token
        # Non-blocking hand-back to the event loop: asyncio's loop or trio's token.
        schedule = getattr(token, "call_soon_threadsafe", None) or getattr(token, "run_sync_soon")
        done = anyio.Event()
        call = _Call(func, args, lambda: schedule(done.set))
        self._put(call)
        with anyio.CancelScope(shield=True):  # a started call is waited for, not abandoned
            await done.wait()
        return call.outcome()

    def call(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on this thread, waiting for it (runs inline when already on it)."""
        if self.is_current():
            return func(*args)
        done = threading.Event()
        call = _Call(func, args, done.set)
        self._put(call)
        done.wait()
        return call.outcome()

    def submit(self, func: Callable[..., Any], *args: Any) -> None:
        """Queue ``func(*args)`` on this thread without waiting; a failure is logged."""
        holder: list[_Call] = []
        call = _Call(func, args, lambda: _log_failure(holder[0]))
        holder.append(call)
        self._put(call)

    def close(self) -> None:
        """Run what was submitted, then ``finish``, on the thread; then end and join it.

        Raises what ``finish`` raised. A thread that never started skips ``finish`` (no call
        ever ran on it, so it opened nothing). Called on the thread itself, it returns at once
        and the thread ends after the current call. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._calls.put(_STOP)
        if threading.current_thread() is not thread:
            thread.join()
            if self._finish is not None:
                self._finish.outcome()
