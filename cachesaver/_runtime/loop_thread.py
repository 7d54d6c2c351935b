"""An event loop on its own daemon thread, for blocking calls into async code from any thread.

The synchronous drop-in clients run their pipeline here, so a blocking call works the same in a
plain script and in a thread that already runs an event loop (Jupyter): the caller's thread
waits, the private loop does the work.

Guarantees: ``call`` runs a function (sync or async) on the loop and returns its value or
raises its exception; ``stop`` lets calls in progress finish, then ends the loop and joins the
thread (idempotent). The thread is a daemon, so a forgotten ``stop`` never keeps the
interpreter from exiting.

>>> import anyio
>>> loop = LoopThread()
>>> async def double(x):
...     await anyio.sleep(0)
...     return 2 * x
>>> loop.call(double, 21)
42
>>> loop.stop()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ..errors import PipelineClosedError

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An anyio event loop (asyncio backend) served on a daemon thread."""

    def __init__(self, name: str = "cachesaver-loop") -> None:
        self._ready = threading.Event()
        self._portal: BlockingPortal | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        async def serve() -> None:
            async with BlockingPortal() as portal:
                self._portal = portal
                self._ready.set()
                await portal.sleep_until_stopped()

        try:
            anyio.run(serve)
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor's caller
            self._error = exc
        finally:
            self._portal = None
            self._ready.set()

    @property
    def running(self) -> bool:
        return self._portal is not None

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on the loop (awaiting it if it is a coroutine function)."""
        portal = self._portal
        if portal is None:
            raise PipelineClosedError("this client is closed; create a new one to make more requests")
        if threading.current_thread() is self._thread:
            raise RuntimeError("LoopThread.call cannot be used from the loop's own thread; await instead")
        return portal.call(func, *args)

    def stop(self) -> None:
        """Finish calls in progress, end the loop and join its thread (idempotent)."""
        with self._lock:
            portal = self._portal
            if portal is not None and threading.current_thread() is not self._thread:
                portal.call(portal.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join()
