"""The common shape of every pipeline stage, and how a stage calls the model it wraps.

A stage is a model (``request`` / ``batch_request``) wrapping an inner model, so stages compose
freely. Guarantees shared by every stage:

* Errors are per request: inside ``batch_request`` one failing request never fails the others.
  ``batch_request`` returns every Response, or raises
  :class:`~cachesaver.errors.BatchRequestError` whose ``results`` hold each Response or
  exception in batch order; with ``return_exceptions=True`` it returns that list instead.
* A model never silently answers with fewer samples than asked: a short answer becomes an
  :class:`~cachesaver.errors.IncompleteResponseError` carrying the partial Response.
* Bad input (not a Request, or a Request whose fields fail
  :class:`~cachesaver.typedefs.Request`'s checks, say because a subclass's ``__post_init__``
  skipped them) raises :class:`~cachesaver.errors.InvalidRequestError` before any work starts.
  In ``batch_request`` that error is the bad request's own entry: its neighbours are served.
* A stage is built around a model object; a class given instead raises
  :class:`~cachesaver.errors.ConfigurationError`.
* After ``aclose()`` a request raises :class:`~cachesaver.errors.PipelineClosedError`.
  ``aclose()`` first lets requests in flight finish (after ``timeout_s`` it cancels them, and
  their callers get PipelineClosedError), then closes the inner stages. A cancelled ``aclose()``
  still finishes that shutdown (shielded, as if its deadline had passed), then re-raises.
* Cancellation of a caller is always re-raised to that caller.
* A model's ``request`` / ``batch_request`` may be sync: it runs in a worker thread, one call
  of a given model at a time (see :func:`call_model`). Such a call cannot be cancelled; what it
  returns after its caller was cancelled (a close's deadline) reaches the cache above through
  the stage's late-answer sink, so its samples are stored.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, List, Union

import anyio
import anyio.to_thread

from .._runtime.checks import check_seconds
from .._runtime.jobs import BackgroundTasks, Outcome, _native_loop_token
from ..errors import (
    BackendError,
    BatchRequestError,
    ConfigurationError,
    IncompleteResponseError,
    InvalidRequestError,
    PipelineClosedError,
)
from ..typedefs import Batch, Model, Request, Response, _validate_request

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

__all__ = ["Settled", "Stage", "call_model"]

logger = logging.getLogger(__name__)
# The outermost stage whose aclose() is running in this context (see Stage.aclose).
_CLOSE_OWNER: ContextVar[Any] = ContextVar("cachesaver_close_owner", default=None)

Settled = Union[Response, BaseException]


def _check_model(model: Any, owner: str) -> None:
    if isinstance(model, type):
        raise ConfigurationError(
            f"{owner} got the class {model.__name__} where it needs a model object; "
            f"pass an instance: {model.__name__}()"
        )
    if model is None or not (
        callable(getattr(model, "request", None)) or callable(getattr(model, "batch_request", None))
    ):
        raise ConfigurationError(
            f"{owner} needs a model with a request() or batch_request() method (async, or sync "
            f"to run in a worker thread), "
            f"got {type(model).__name__}"
        )


def _check_answer(request: Request, answer: Any) -> Settled:
    if isinstance(answer, BaseException):
        return answer
    if not isinstance(answer, Response):
        return BackendError(
            f"the model answered a request with {type(answer).__name__}, not a Response",
            request_id=request.request_id,
        )
    if len(answer.data) < request.n:
        error = IncompleteResponseError(
            f"the model returned {len(answer.data)} of {request.n} samples",
            request_id=request.request_id,
        )
        error.response = answer  # type: ignore[attr-defined]
        return error
    return answer


def _check_batch(requests: Sequence[Request], answers: Any) -> list[Settled]:
    """One checked answer per request from what a ``batch_request`` returned."""
    if not isinstance(answers, (list, tuple)) or len(answers) != len(requests):
        size = len(answers) if isinstance(answers, (list, tuple)) else type(answers).__name__
        error = BackendError(
            f"the model's batch_request returned {size} answers for {len(requests)} requests; "
            "it must return one Response (or exception) per request, in order"
        )
        return [error for _ in requests]
    return [_check_answer(r, a) for r, a in zip(requests, answers)]


# -- sync models: detected once per function, run in a worker thread --------------------------

LateAnswers = Callable[[Sequence[Request], List[Settled]], None]
"""A sink for answers that arrived after the call awaiting them was cancelled:
``late(requests, answers)``, called on the event loop with one checked answer per request."""

# The underlying function of a bound method -> is it async. Bounded: cleared when it grows
# past _MAX_KNOWN (a program that makes model classes on the fly), then relearnt.
_ASYNC_METHODS: dict[Any, bool] = {}
_MAX_KNOWN = 4096
# (id(model), event loop) -> [lock, users]: calls of one sync model never overlap in a loop.
_SYNC_LOCKS: dict[tuple[int, object], list[Any]] = {}


def _detect_async(method: Any) -> bool:
    while isinstance(method, functools.partial):
        method = method.func
    if inspect.iscoroutinefunction(method):
        return True
    if inspect.isfunction(method) or inspect.ismethod(method) or inspect.isbuiltin(method):
        return False
    return inspect.iscoroutinefunction(getattr(type(method), "__call__", None))  # async __call__


def _is_async(method: Any) -> bool:
    """Whether calling ``method`` gives a coroutine; cached per function for bound methods, so
    the async path costs one dictionary lookup."""
    function = getattr(method, "__func__", None)
    if function is None:
        return _detect_async(method)  # a function, a partial, a callable object: rare, not cached
    try:
        return _ASYNC_METHODS[function]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable posing as a method
        return _detect_async(method)
    if len(_ASYNC_METHODS) >= _MAX_KNOWN:
        _ASYNC_METHODS.clear()
    known = _ASYNC_METHODS[function] = _detect_async(method)
    return known


class _ThreadCall:
    """One call of a sync model method in a worker thread; its answer outlives its awaiter.

    ``run`` either never calls the method (the awaiter gave up before the thread started) or
    calls it and sets ``done``; ``abandon`` tells which, under a lock, so nobody waits for a call
    that will never happen.
    """

    __slots__ = ("method", "arg", "done", "value", "error", "_lock", "_started", "_abandoned")

    def __init__(self, method: Any, arg: Any) -> None:
        self.method, self.arg = method, arg
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._started = self._abandoned = False

    def run(self) -> None:  # in the worker thread
        with self._lock:
            if self._abandoned:
                return
            self._started = True
        try:
            self.value = self.method(self.arg)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the event loop
            self.error = exc
        finally:
            self.done.set()

    def abandon(self) -> bool:
        """Give up on a call that has not started; False if it is running or has run."""
        with self._lock:
            if not self._started:
                self._abandoned = True
            return self._abandoned


async def _outlive_cancellation(call: _ThreadCall) -> None:
    """Wait, shielded, until ``call`` has finished in its thread (a thread cannot be cancelled)."""
    while not call.done.is_set():
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(call.done.wait, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            continue  # a native asyncio task.cancel(), which a shield cannot hold off: keep waiting


async def _in_thread(
    model: Any, method: Any, arg: Any, requests: Sequence[Request], late: LateAnswers | None
) -> Any:
    """``method(arg)`` in a worker thread, one call of ``model`` at a time per event loop.

    If the awaiting task is cancelled while the call runs, this waits for the call to end
    (shielded), hands what it returned to ``late`` (see :func:`_hand_late`), then re-raises
    the cancellation. A call still waiting for its turn is simply dropped: nothing ran.
    """
    ident = (id(model), _native_loop_token())
    entry = _SYNC_LOCKS.get(ident)
    if entry is None:
        entry = _SYNC_LOCKS[ident] = [anyio.Lock(), 0]
    entry[1] += 1
    try:
        async with entry[0]:
            call = _ThreadCall(method, arg)
            try:
                await anyio.to_thread.run_sync(call.run, abandon_on_cancel=True)
            except anyio.get_cancelled_exc_class():
                if call.abandon():
                    raise
                if not call.done.is_set():
                    logger.warning(
                        "cachesaver: a call of %s in a worker thread cannot be cancelled; waiting "
                        "for it to end so that its samples are stored",
                        getattr(method, "__qualname__", type(model).__name__),
                    )
                    await _outlive_cancellation(call)
                _hand_late(call, requests, late)
                raise
    finally:
        entry[1] -= 1
        if entry[1] == 0 and _SYNC_LOCKS.get(ident) is entry:
            del _SYNC_LOCKS[ident]
    if call.error is not None:
        raise call.error
    return call.value


def _hand_late(call: _ThreadCall, requests: Sequence[Request], late: LateAnswers | None) -> None:
    """Give what a cancelled call returned to ``late``; a call that raised hands on nothing."""
    value = call.value
    if call.error is not None:
        return
    if inspect.isawaitable(value):  # a sync wrapper's coroutine, never to be awaited now
        close = getattr(value, "close", None)
        if callable(close):
            close()
        return
    batched = isinstance(call.arg, Batch)
    answers = _check_batch(requests, value) if batched else [_check_answer(requests[0], value)]
    try:
        (late or _discard_late)(requests, answers)
    except Exception:  # noqa: BLE001 - the cancellation is re-raised whatever happens here
        logger.exception("cachesaver could not keep model answers that arrived after their call was cancelled")


def _discard_late(requests: Sequence[Request], answers: List[Settled]) -> None:
    """The sink of a stage with no cache above it: nothing can keep the answers, say so."""
    logger.warning(
        "cachesaver: the model answered %d request(s) after their call was cancelled and no "
        "cache is above this stage to store the samples; they were discarded", len(requests),
    )


async def _call_sync(
    model: Any, method: Any, arg: Any, requests: Sequence[Request], late: LateAnswers | None
) -> Any:
    """A sync ``method(arg)`` run in a worker thread (see :func:`_in_thread`); an awaitable it
    returns (a sync wrapper of an async call) is awaited on the event loop."""
    answer = await _in_thread(model, method, arg, requests, late)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer


async def _ask_one(model: Any, request: Request, late: LateAnswers | None) -> Settled:
    """One ``request`` call; its checked answer or the exception it raised."""
    method = model.request
    try:
        if _is_async(method):
            return _check_answer(request, await method(request))
        return _check_answer(request, await _call_sync(model, method, request, (request,), late))
    except Exception as exc:  # noqa: BLE001 - delivered to the request's caller
        return exc


async def _gather_each(model: Any, requests: Sequence[Request], late: LateAnswers | None) -> list[Settled]:
    results: list[Settled] = [None] * len(requests)  # type: ignore[list-item]

    async def one(i: int, request: Request) -> None:
        results[i] = await _ask_one(model, request, late)

    async with anyio.create_task_group() as group:
        for i, request in enumerate(requests):
            group.start_soon(one, i, request)
    return results


def call_model(
    model: Model,
    requests: Sequence[Request],
    *,
    prefer_batch: bool = True,
    late: LateAnswers | None = None,
) -> Awaitable[list[Settled]]:
    """Ask ``model`` for ``requests``; awaits to one Response or exception per request, in order.

    A cachesaver stage is asked natively. A plain model is asked with one ``batch_request``
    when it has one (and ``prefer_batch`` or there are several requests), else with concurrent
    ``request`` calls. If a whole ``batch_request`` of several requests raises, each request is
    retried alone, so only the failing ones fail: concurrently via ``request`` when the model
    has it, else one after another as a ``batch_request`` of one (at most one extra call per
    request, never several at once, as a local model that ran out of memory needs). The
    outputs of the failed batch call never reached us, so there is nothing of it to keep.

    A plain model's method may be sync (a local model's ``generate``): it then runs in a
    worker thread, one call per batch (or per request), and calls of one sync model never
    overlap within an event loop (a second batch waits its turn on the loop, not in a thread).
    A thread cannot be cancelled: if the call is cancelled while the model runs, this waits
    for the model to finish, hands its answers to ``late`` (``late(requests, answers)``, on
    the event loop, one checked answer per request: a Response, or the exception the model
    returned in its place; a call that raised hands on nothing), then re-raises the
    cancellation. Without ``late`` such answers are discarded with a warning.
    """
    if isinstance(model, Stage):
        return model.settle(requests)
    return _call_plain_model(model, requests, prefer_batch, late)


async def _call_plain_model(
    model: Any, requests: Sequence[Request], prefer_batch: bool, late: LateAnswers | None
) -> list[Settled]:
    has_batch = callable(getattr(model, "batch_request", None))
    has_single = callable(getattr(model, "request", None))
    if has_single and (not has_batch or (len(requests) == 1 and not prefer_batch)):
        if len(requests) == 1:
            request = requests[0]
            method = model.request
            try:
                if _is_async(method):  # inline: the common single call costs no extra frame
                    return [_check_answer(request, await method(request))]
                return [_check_answer(request, await _call_sync(model, method, request, requests, late))]
            except Exception as exc:  # noqa: BLE001
                return [exc]
        return await _gather_each(model, requests, late)
    try:
        return await _ask_batch(model, requests, late)
    except Exception as exc:  # noqa: BLE001
        if len(requests) == 1:
            return [exc]
        if has_single:
            return await _gather_each(model, requests, late)
        return [await _ask_alone(model, request, late) for request in requests]


async def _ask_batch(model: Any, requests: Sequence[Request], late: LateAnswers | None = None) -> list[Settled]:
    """One ``batch_request`` call; raises what it raised, checks the shape of its answer."""
    batch = Batch(requests=list(requests))
    method = model.batch_request
    if _is_async(method):
        return _check_batch(requests, await method(batch))
    return _check_batch(requests, await _call_sync(model, method, batch, requests, late))


async def _ask_alone(model: Any, request: Request, late: LateAnswers | None = None) -> Settled:
    """``request`` as a ``batch_request`` of one; its answer or the exception it raised."""
    try:
        (answer,) = await _ask_batch(model, [request], late)
    except Exception as exc:  # noqa: BLE001 - that request's own failure
        return exc
    return answer


class Stage:
    """Base class of the pipeline stages; subclasses implement :meth:`settle`."""

    cancelled_close_grace_s: float = 2.0
    """How long a cancelled :meth:`aclose` may still wait for work in flight to stop."""

    def __init__(self, model: Model) -> None:
        _check_model(model, type(self).__name__)
        self.model: Model = model
        self._late_answers: LateAnswers | None = None
        """Where answers a sync model returns after their call was cancelled go: set by the
        :class:`~cachesaver.stages.caching.AsyncCacher` above this stage (see :func:`call_model`)."""
        self._closed = False
        self._background = BackgroundTasks(type(self).__name__)
        self._active = 0
        self._idle: anyio.Event | None = None
        self._closing: anyio.Event | None = None
        self._shut_down = False

    # -- the model contract -----------------------------------------------------------------

    async def request(self, request: Request) -> Response:
        """Samples for one request; raises its error if it failed."""
        request = self._admit(request)
        self._enter()
        try:
            (result,) = await self.settle([request])
        finally:
            self._exit()
        if isinstance(result, BaseException):
            raise result
        return result

    async def batch_request(self, batch: Batch, return_exceptions: bool = False) -> List[Any]:
        """One Response per request of ``batch``, in order; see the module docstring for errors."""
        requests = getattr(batch, "requests", None)
        if not isinstance(requests, (list, tuple)):
            raise InvalidRequestError(
                f"batch_request takes a Batch of a list of Requests, got {type(batch).__name__}"
                + (f" holding {type(requests).__name__}" if requests is not None else "")
            )
        results: list[Any] = [None] * len(requests)
        admitted: list[Request] = []
        positions: list[int] = []
        for i, request in enumerate(requests):
            try:
                admitted.append(self._admit(request))
            except InvalidRequestError as exc:  # that request's own error; a closed stage raises
                results[i] = exc
            else:
                positions.append(i)
        if admitted:
            self._enter()
            try:
                settled = await self.settle(admitted)
            finally:
                self._exit()
            for i, result in zip(positions, settled):
                results[i] = result
        if return_exceptions:
            return results
        if any(isinstance(r, BaseException) for r in results):
            raise BatchRequestError(results)
        return results

    def settle(self, requests: Sequence[Request]) -> Awaitable[list[Settled]]:
        """Awaits to one Response or exception per request, in order; never raises for one request.

        This is how stages call each other. Unlike :meth:`request` and :meth:`batch_request`
        it does not check that the stage is open: a closing stage still serves the stage above
        it until that one has drained.
        """
        return self._settle(requests)

    async def _settle(self, requests: Sequence[Request]) -> list[Settled]:
        raise NotImplementedError

    def _admit(self, request: Any) -> Request:
        if self._closed:
            raise PipelineClosedError(
                f"{type(self).__name__} is closed; create a new pipeline to make more requests"
            )
        if not isinstance(request, Request):
            raise InvalidRequestError(
                f"expected a cachesaver.typedefs.Request, got {type(request).__name__}"
            )
        # Again here: a subclass's own __post_init__ may have skipped Request's checks, or a
        # field may have been changed since with object.__setattr__.
        _validate_request(request)
        return request

    # -- tracking work in flight ------------------------------------------------------------

    def _enter(self) -> None:
        self._active += 1

    def _exit(self) -> None:
        self._active -= 1
        if self._active == 0 and self._idle is not None:
            self._idle.set()

    async def _spawn(self, job: Any, *args: Any) -> None:
        await self._background.spawn(job, *args)

    # -- closing -----------------------------------------------------------------------------

    def begin_close(self) -> None:
        """Hint that closing has begun: stop waiting for more work (batch windows flush now)."""
        inner = getattr(self.model, "begin_close", None)
        if callable(inner):
            inner()

    async def aclose(self, timeout_s: float | None = None) -> None:
        """Refuse new requests, finish those in flight, then close the inner stages.

        ``timeout_s`` is None (no deadline) or a finite number of seconds >= 0, else
        :class:`~cachesaver.errors.ConfigurationError`. With ``timeout_s``, work still in flight at the deadline is cancelled from the
        innermost stage outwards (so samples a model already returned still reach the cache),
        and its callers get :class:`~cachesaver.errors.PipelineClosedError`; a sync model's call
        in a worker thread cannot be cancelled, so the close waits for it and the cache above
        stores what it returns (see :func:`call_model`). A second ``aclose``
        waits for the first. A user's own model is never closed by a stage.

        If ``aclose`` itself is cancelled (``async with`` left by an outer timeout), it closes
        as if its deadline had passed, shielded from that cancellation, and then re-raises it:
        work in flight is cancelled, samples the model already returned are stored, background
        tasks end and a cache the pipeline opened is closed. That shielded part waits at most
        :attr:`cancelled_close_grace_s` (for a model that ignores cancellation, say one blocked
        in a worker thread), then logs a warning and re-raises. If a close ends unfinished that
        way (or through a native ``asyncio`` ``task.cancel()``, which a shield cannot hold
        off), the next ``aclose`` does the rest.
        """
        check_seconds("aclose(timeout_s=...)", timeout_s, optional=True)
        while self._closing is not None and not self._closing.is_set():
            await self._closing.wait()  # another aclose is running: wait for it
        if self._shut_down:
            return
        self._closing = closing = anyio.Event()
        # The outermost stage being closed owns a cancelled close: inner stages closed on its
        # behalf just re-raise, and it redoes their shutdown within one grace period.
        owner = None if _CLOSE_OWNER.get() is not None else _CLOSE_OWNER.set(self)
        try:
            self._closed = True
            self.begin_close()
            deadline = None if timeout_s is None else anyio.current_time() + timeout_s
            try:
                await self._close_by(deadline)
            except anyio.get_cancelled_exc_class():
                if owner is None:
                    raise
                grace = anyio.current_time() + self.cancelled_close_grace_s
                with anyio.CancelScope(shield=True, deadline=grace) as scope:
                    await self._close_by(anyio.current_time())
                if scope.cancelled_caught:
                    logger.warning(
                        "cachesaver: a cancelled aclose() gave up after %.1f s waiting for work "
                        "that ignores cancellation; call aclose() again to finish closing",
                        self.cancelled_close_grace_s,
                    )
                raise
        finally:
            if owner is not None:
                _CLOSE_OWNER.reset(owner)
            closing.set()

    async def _close_by(self, deadline: float | None) -> None:
        """Drain until ``deadline``, cancel what is left, shut down, close the inner stages."""
        if not await self._drain(deadline):
            await self._cancel_in_flight()
        failure: Exception | None = None
        try:
            await self._shutdown()
        except Exception as exc:  # noqa: BLE001 - closing goes on; raised once everything is closed
            failure = exc
        if isinstance(self.model, Stage):  # it may still hold work its callers did not track
            remaining = None if deadline is None else max(0.0, deadline - anyio.current_time())
            try:
                await self.model.aclose(remaining)
            except Exception as exc:  # noqa: BLE001
                if failure is None:
                    failure = exc
        self._shut_down = True
        if failure is not None:
            raise failure

    async def _cancel_in_flight(self) -> None:
        chain: list[Stage] = []
        stage: Any = self.model
        while isinstance(stage, Stage):
            chain.append(stage)
            stage = stage.model
        cancelled = False
        for inner in reversed(chain):  # innermost first: answers flow outwards as errors
            if inner._background.running_jobs:
                cancelled = True
                await inner._background.cancel_jobs()
        # Give what the cancelled inner jobs answered a moment to reach this stage; with none
        # cancelled, the work left runs in this stage's own jobs (stages below it may run in
        # the job that called them).
        if not cancelled or not await self._drain(anyio.current_time() + 0.05):
            await self._background.cancel_jobs()  # own jobs waiting on a user model
            await self._drain(None)

    async def _shutdown(self) -> None:
        """Stop this stage's background work once nothing is in flight."""
        await self._background.aclose()

    async def _drain(self, deadline: float | None) -> bool:
        """Wait until nothing is in flight (True) or the deadline passes (False)."""
        if self._active == 0:
            return True
        self._idle = anyio.Event()
        with anyio.move_on_after(None if deadline is None else max(0.0, deadline - anyio.current_time())):
            await self._idle.wait()
        return self._active == 0

    async def cleanup(self) -> None:
        """Alias of :meth:`aclose` (the name the seed notebooks use)."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
