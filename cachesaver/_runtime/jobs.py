"""Work that outlives the call that started it, with an owner and a shutdown path.

An upstream call made for a batch or for merged requests serves several callers, so no single
caller may own it: if that caller is cancelled, the others still need the answer and the
samples must still be stored. :class:`BackgroundTasks` owns such work. Its task group is opened
lazily, inside the running event loop, by a host task it spawns itself (so a pipeline can be
created outside ``async with``, as notebooks do), and is closed by :meth:`BackgroundTasks.aclose`.

:class:`Outcome` is the one-shot slot through which a background job hands its result or error
to whoever waits for it; waiting is cancellable, setting never blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ..errors import BackgroundJobError, PipelineClosedError

__all__ = ["BackgroundTasks", "DETACHED", "Outcome"]

_Future = asyncio.Future

DETACHED: ContextVar[bool] = ContextVar("cachesaver_detached", default=False)
"""True inside a job of a :class:`BackgroundTasks` (and tasks it starts): no caller's
cancellation reaches it, only a forced close. A stage called from such a job may do its work in
that job's task instead of starting one of its own."""

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Outcome(Generic[T]):
    """A result or an exception, delivered once; any number of tasks may wait for it."""

    __slots__ = ("_done", "_value", "_error", "_waiter")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._waiter: Any = None  # None, one waiter, or a list of them

    @property
    def done(self) -> bool:
        return self._done

    def set(self, value: T) -> None:
        if not self._done:
            self._value = value
            self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        self._done = True
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if type(waiter) is _Future:  # the usual case: one waiting asyncio task
            if not waiter.done():
                waiter.set_result(None)
            return
        for one in waiter if type(waiter) is list else (waiter,):
            if isinstance(one, anyio.Event):
                one.set()
            elif not one.done():
                one.set_result(None)

    def result(self) -> T:
        """The value (or raise the error) of a delivered outcome."""
        if self._error is not None:
            raise self._error
        return self._value

    async def get(self) -> T:
        if not self._done:
            await self.wait()
        return self.result()

    def wait(self) -> Awaitable[None]:
        """What to await until the outcome is delivered (then :meth:`result` gives it): the
        wait of :meth:`get`, without a coroutine of its own under asyncio. A cancelled wait
        leaves the outcome as it was."""
        if self._done:
            return DELIVERED
        waiter: Any
        try:
            waiter = _Future(loop=asyncio.get_running_loop())  # what create_future() makes, without its call
        except RuntimeError:  # not asyncio (trio): a portable event
            waiter = anyio.Event()
        current = self._waiter
        if current is None:
            self._waiter = waiter
        elif type(current) is list:
            current.append(waiter)
        else:
            self._waiter = [current, waiter]
        if isinstance(waiter, anyio.Event):
            return waiter.wait()
        return waiter


class _Delivered:
    """An awaitable that is done at once: the wait for an outcome already delivered."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


DELIVERED: Awaitable[None] = _Delivered()
"""Awaiting it returns at once (under any event loop)."""


def _native_loop_token() -> object:
    try:
        return asyncio.get_running_loop()  # cheap, and what anyio would return under asyncio
    except RuntimeError:
        return anyio.lowlevel.current_token().native_token


class BackgroundTasks:
    """A lazily opened task group, owned by one stage, that jobs are spawned into.

    Guarantees:

    * A job runs to completion even if the task that spawned it is cancelled, and spawning
      completes even if the spawning task is cancelled meanwhile (the job is never lost).
    * A job's unexpected exception is logged at ERROR and never tears down its siblings; jobs
      are expected to deliver their own errors through an :class:`Outcome`.
    * :meth:`cancel_jobs` cancels the running jobs but not the *service* jobs (long-lived
      loops spawned with ``service=True``), and returns when they have ended.
    * :meth:`aclose` waits for running jobs (or cancels them after ``timeout_s``) and then
      ends the group; spawning afterwards raises :class:`~cachesaver.errors.PipelineClosedError`.
    * If the event loop the group lived in has ended (a script that calls ``asyncio.run``
      twice with one pipeline), the next spawn opens a fresh group in the current loop.

    Under trio jobs are children of the group, each in its own cancel scope. Under asyncio they
    are plain tasks held in the owner's set (a task group's per-task bookkeeping costs more than
    a small job); the owner joins them when closing and cancels them with itself, so they have
    the same lifetime.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._group: TaskGroup | None = None  # trio only
        self._loop: object = None
        self._ready: anyio.Event | None = None
        self._stop: anyio.Event | None = None
        self._finished: anyio.Event | None = None
        self._host: Any = None  # keeps the asyncio host task referenced
        self._closed = False
        self._native: set[Any] | None = None  # asyncio jobs, owned by the host task
        self._services: set[Any] = set()  # asyncio tasks or trio cancel scopes of service jobs
        self._scopes: set[anyio.CancelScope] = set()  # trio: cancel scopes of ordinary jobs
        self.running_jobs = 0
        self.crashes: list[BaseException] = []
        """Unexpected errors of jobs, in order; :meth:`aclose` raises them."""

    def _open_native(self, loop: asyncio.AbstractEventLoop) -> set[Any]:
        """Start the owner of asyncio jobs in ``loop``, synchronously (nothing to wait for)."""
        if self._closed:
            raise PipelineClosedError(f"{self._name} is closed; create a new pipeline to make requests")
        native: set[Any] = set()
        stop, finished = anyio.Event(), anyio.Event()
        self._loop, self._native, self._stop, self._finished = loop, native, stop, finished
        self._group, self._services, self._scopes = None, set(), set()

        async def host() -> None:
            try:
                await stop.wait()
                while native:
                    await asyncio.wait(set(native))
            finally:
                if native:
                    for task in native:
                        task.cancel()
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait(set(native))
                finished.set()

        self._host = loop.create_task(host(), name=f"cachesaver:{self._name}")
        return native

    async def _open_trio(self) -> TaskGroup:
        loop = _native_loop_token()
        if self._loop is loop:
            if self._group is not None:
                return self._group
            if self._ready is not None:
                await self._ready.wait()
                if self._group is not None:
                    return self._group
        if self._closed:
            raise PipelineClosedError(f"{self._name} is closed; create a new pipeline to make requests")
        import trio

        self._loop, self._native, self._group = loop, None, None
        self._ready = ready = anyio.Event()
        self._stop = stop = anyio.Event()
        self._finished = finished = anyio.Event()
        self._services, self._scopes = set(), set()

        async def host() -> None:
            try:
                async with anyio.create_task_group() as group:
                    self._group = group
                    ready.set()
                    await stop.wait()
            finally:
                if self._loop is loop:
                    self._group = None
                ready.set()
                finished.set()

        trio.lowlevel.spawn_system_task(host, name=f"cachesaver:{self._name}")
        await ready.wait()
        if self._group is None:
            raise PipelineClosedError(f"{self._name} could not start its background tasks")
        return self._group

    async def spawn(self, job: Callable[..., Awaitable[Any]], *args: Any, service: bool = False) -> None:
        """Run ``job(*args)`` in the background, starting the owner if needed.

        Under asyncio this never suspends, so a cancelled caller cannot lose the job; under
        trio the owner's start is shielded from the caller's cancellation.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            native = self._native if self._loop is loop else None
            if native is None:
                native = self._open_native(loop)
            elif self._closed and self._finished is not None and self._finished.is_set():
                raise PipelineClosedError(f"{self._name} is closed; create a new pipeline to make requests")
            self.running_jobs += 1
            task = loop.create_task(self._guard(job, args, service))
            native.add(task)
            task.add_done_callback(native.discard)
            if service:
                self._services.add(task)
                task.add_done_callback(self._services.discard)
            return
        group = self._group
        if group is None or self._loop is not _native_loop_token():
            with anyio.CancelScope(shield=True):
                group = await self._open_trio()
        self.running_jobs += 1
        # anyio types CancelScope.__exit__ as maybe swallowing, but a shield without a deadline
        # never skips the assignment above: group is a TaskGroup here.
        group.start_soon(self._guard, job, args, service)  # type: ignore[union-attr]

    async def _guard(self, job: Callable[..., Awaitable[Any]], args: tuple[Any, ...], service: bool) -> None:
        scope = None
        DETACHED.set(True)  # this task's own context
        try:
            if self._native is None:  # trio: a scope per job, so it can be cancelled alone
                with anyio.CancelScope() as scope:
                    (self._services if service else self._scopes).add(scope)
                    await job(*args)
            else:
                await job(*args)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # noqa: BLE001 - kept, and raised by aclose
            logger.exception("cachesaver background job of %s failed unexpectedly", self._name)
            self.crashes.append(exc)
        finally:
            self.running_jobs -= 1
            if scope is not None:
                self._scopes.discard(scope)
                self._services.discard(scope)

    async def cancel_jobs(self) -> None:
        """Cancel every running job except the service jobs, and wait until they have ended.

        The wait itself can be cancelled (a job may ignore cancellation); the jobs stay
        cancelled and owned, and :meth:`aclose` still joins them."""
        if self._finished is None or self._loop is not _native_loop_token():
            return
        native = self._native
        if native is None:
            for scope in list(self._scopes):
                scope.cancel()
            await anyio.sleep(0)
            while self._scopes:  # a job that ignores cancellation: poll without spinning
                await anyio.sleep(0.001)
            return
        jobs = [task for task in native if task not in self._services]
        for task in jobs:
            task.cancel()
        if jobs:
            # Not shielded: a caller that must not be interrupted shields (and bounds) this.
            await asyncio.wait(jobs)

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Stop accepting jobs, let running ones finish (cancel them after ``timeout_s``), end.

        Raises :class:`~cachesaver.errors.BackgroundJobError` if a job crashed meanwhile (once:
        a later ``aclose`` does not raise it again)."""
        self._closed = True
        stop, finished = self._stop, self._finished
        if stop is None or finished is None or self._loop is not _native_loop_token():
            self._group = None  # never started, or its event loop is gone
            self._raise_crashes()
            return
        stop.set()
        if timeout_s is not None:
            with anyio.move_on_after(timeout_s):
                await finished.wait()
            if not finished.is_set():
                if self._group is not None:
                    self._group.cancel_scope.cancel()
                elif self._host is not None:
                    self._host.cancel()
        await finished.wait()
        self._raise_crashes()

    def _raise_crashes(self) -> None:
        crashes, self.crashes = self.crashes, []
        if crashes:
            raise BackgroundJobError(
                f"{len(crashes)} background job(s) of {self._name} crashed; the requests they "
                f"served got the error. First: {type(crashes[0]).__name__}: {crashes[0]}. This is "
                "a bug in cachesaver or in a stage: please report it",
                crashes,
            ) from crashes[0]
