"""How a stage calls the model it wraps (cachesaver/stages/base.py): sync models, late answers."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from _support import SyncModel, wait_until

from cachesaver.stages.batching import AsyncBatcher
from cachesaver.stages.caching import AsyncCacher
from cachesaver.stages.deduplication import AsyncDeduplicator
from cachesaver.errors import ConfigurationError
from cachesaver.ledger import Ledger
from cachesaver.stages.ledger_tap import LedgerTap
from cachesaver.stages.reordering import RequestReorderer
from cachesaver.stages.base import call_model
from cachesaver.typedefs import Batch, Request, Response

BACKENDS = ["asyncio", "trio"]


def answer(request: Request) -> Response:
    return Response(data=[f"{request.prompt}#{k}" for k in range(request.n)])


# == sync models run in a worker thread ======================================================


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["batch", "single", "both"])
def test_a_sync_model_is_called_in_a_worker_thread(backend: str, kind: str) -> None:
    model = SyncModel(kind)
    requests = [Request("a", n=2), Request("b")]

    async def main() -> list[Any]:
        return await call_model(model, requests)

    results = anyio.run(main, backend=backend)
    assert [r.data for r in results] == [["a#0", "a#1"], ["b#0"]]
    assert model.threads and all(t is not threading.main_thread() for t in model.threads)
    assert model.batch_sizes == ([1, 1] if kind == "single" else [2])  # one call per batch


@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_of_one_sync_model_never_overlap(backend: str) -> None:
    # Each call waits a little for another to join it: concurrent calls would overlap.
    model = SyncModel("single", overlap_window_s=0.05)
    requests = [Request(f"q{i}") for i in range(4)]

    async def main() -> list[Any]:
        return await call_model(model, requests)  # concurrent request() calls

    results = anyio.run(main, backend=backend)
    assert [r.data for r in results] == [[f"q{i}#0"] for i in range(4)]
    assert model.peak_in_flight == 1


class Kinds:
    """Every shape of method a model may have; records the thread each call ran in."""

    def __init__(self) -> None:
        self.ran_in: dict[str, threading.Thread] = {}

    def _record(self, name: str, request: Request) -> Response:
        self.ran_in[name] = threading.current_thread()
        return answer(request)

    async def _async(self, name: str, request: Request) -> Response:
        return self._record(name, request)

    def _sync(self, name: str, request: Request) -> Response:
        return self._record(name, request)

    def returning_a_coroutine(self, request: Request) -> Any:
        return self._async("returning_a_coroutine", request)  # a sync wrapper of an async call


class AsyncCall:
    def __init__(self, kinds: Kinds, name: str) -> None:
        self.kinds, self.name = kinds, name

    async def __call__(self, request: Request) -> Response:
        return self.kinds._record(self.name, request)


class SyncCall(AsyncCall):
    def __call__(self, request: Request) -> Response:  # type: ignore[override]
        return self.kinds._record(self.name, request)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_kind_of_method_runs_where_it_should(backend: str) -> None:
    kinds = Kinds()
    on_the_loop = {
        "partial of an async method": lambda name: functools.partial(kinds._async, name),
        "async callable object": lambda name: AsyncCall(kinds, name),
        "sync method returning a coroutine": lambda name: kinds.returning_a_coroutine,
    }
    in_a_thread = {
        "partial of a sync method": lambda name: functools.partial(kinds._sync, name),
        "sync callable object": lambda name: SyncCall(kinds, name),
    }
    loop_threads: dict[str, threading.Thread] = {}

    async def main() -> None:
        for name, make in {**on_the_loop, **in_a_thread}.items():
            model = type("Model", (), {})()
            model.request = make(name)
            (result,) = await call_model(model, [Request(name)])
            assert result.data == [f"{name}#0"], name
            loop_threads[name] = threading.current_thread()

    anyio.run(main, backend=backend)
    ran = {"returning_a_coroutine" if "coroutine" in name else name: name for name in on_the_loop}
    for recorded, name in ran.items():
        assert kinds.ran_in[recorded] is loop_threads[name], f"{name} left the event loop"
    for name in in_a_thread:
        assert kinds.ran_in[name] is not loop_threads[name], f"{name} blocked the event loop"


def test_a_model_without_request_or_batch_request_is_still_refused() -> None:
    with pytest.raises(ConfigurationError, match="sync to run in a worker thread"):
        AsyncBatcher(object(), batch_size=2)


@pytest.mark.parametrize(
    "make",
    [
        lambda model, cache: AsyncCacher(model, cache),
        lambda model, cache: AsyncBatcher(model, batch_size=2),
        lambda model, cache: AsyncDeduplicator(model),
        lambda model, cache: AsyncDeduplicator(model, across_calls=False),
        lambda model, cache: RequestReorderer(model),
        lambda model, cache: LedgerTap(model, Ledger()),
    ],
    ids=["cacher", "batcher", "deduplicator", "window-deduplicator", "reorderer", "ledger-tap"],
)
async def test_every_stage_serves_a_sync_model(tmp_path: Path, make: Any) -> None:
    model = SyncModel("batch")
    async with make(model, tmp_path) as stage:
        results = await stage.batch_request(Batch(requests=[Request("b", request_id="y"), Request("a", n=2)]))
    assert [r.data for r in results] == [["b#0"], ["a#0", "a#1"]]
    assert all(t is not threading.main_thread() for t in model.threads)


# == a sync call outlives its cancellation: its answer goes to the late sink ================


async def cancel_while_in_the_thread(model: SyncModel, call: Any, caplog: pytest.LogCaptureFixture) -> list[bool]:
    """Run ``call()`` in a cancel scope, cancel it while ``model`` blocks in its thread, release
    the model once the call said it waits for the thread; [cancellation re-raised, call returned]."""
    outcome: list[bool] = []

    async def cancelled_call(task_status: Any) -> None:
        returned = False
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            await call()
            returned = True
        outcome[:] = [scope.cancelled_caught, returned]

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            scope = await group.start(cancelled_call)
            await wait_until(model.entered.is_set)
            scope.cancel()
            await wait_until(lambda: "cannot be cancelled" in caplog.text)
            model.released.set()
    return outcome


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_sync_call_hands_its_answers_to_the_late_sink(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = SyncModel("batch", block=True)
    requests = [Request("a", n=2), Request("b")]
    late: list[tuple[list[Request], list[Any]]] = []

    def sink(asked: Any, answers: list[Any]) -> None:
        late.append((list(asked), answers))

    async def main() -> list[bool]:
        return await cancel_while_in_the_thread(model, lambda: call_model(model, requests, late=sink), caplog)

    assert anyio.run(main, backend=backend) == [True, False]  # cancellation re-raised, no result
    assert len(late) == 1
    got_requests, answers = late[0]
    assert got_requests == requests
    assert [a.data for a in answers] == [["a#0", "a#1"], ["b#0"]]


async def test_a_native_task_cancel_still_waits_for_the_thread_and_hands_the_answers_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncio's task.cancel() (how a pipeline's background jobs end), which a shield cannot hold."""
    model = SyncModel("single", block=True)
    late: list[Any] = []
    task = asyncio.ensure_future(call_model(model, [Request("a")], late=lambda r, a: late.append(a)))
    with anyio.fail_after(5):
        await wait_until(model.entered.is_set)
        task.cancel()
        await wait_until(lambda: "cannot be cancelled" in caplog.text)
        task.cancel()  # again: it keeps waiting for the thread
        await anyio.sleep(0)
        assert not task.done()
        model.released.set()
        await asyncio.wait([task])
    assert task.cancelled()
    assert [[r.data for r in answers] for answers in late] == [[["a#0"]]]


async def test_a_late_answer_with_no_sink_is_discarded_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = SyncModel("batch", block=True)
    outcome = await cancel_while_in_the_thread(model, lambda: call_model(model, [Request("a")]), caplog)
    assert outcome == [True, False]
    assert any(
        r.levelno == logging.WARNING and "no cache is above this stage" in r.getMessage() for r in caplog.records
    )
