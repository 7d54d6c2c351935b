"""The sample broker through a pipeline: what counts as a use of a request_id, what a failed or
abandoned attempt gives back, and how samples the store refuses are kept, retried and recovered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import diskcache
import pytest
from _support import GateModel, StoreForwarder, gather, wait_until, write_lock_held

from cachesaver.store import recovery
from cachesaver.store.allocation import _Lookup
from cachesaver.store.claims import RunClaims
from cachesaver.store.memory import MemoryStore
from cachesaver.store.protocol import record_tag
from cachesaver.errors import (
    BackendError,
    BackgroundJobError,
    CorruptStoreError,
    IncompleteResponseError,
    PipelineClosedError,
    StoreError,
    UnstoredSamplesError,
)
from cachesaver.models import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.typedefs import Batch, Request, Response


class FlakyModel:
    """Fails (or answers short) the first ``failures`` calls for each prompt, then answers."""

    def __init__(self, failures: int = 1, short: bool = False) -> None:
        self.inner = ScriptedModel()
        self.failures = failures
        self.short = short
        self.seen: dict[Any, int] = {}
        self.calls = 0

    async def request(self, request: Request) -> Response:
        self.calls += 1
        count = self.seen.get(request.prompt, 0)
        self.seen[request.prompt] = count + 1
        if count < self.failures:
            if not self.short:
                raise BackendError("scripted failure", request_id=request.request_id)
            answer = await self.inner.request(request)
            return Response(data=answer.data[: request.n - 1])  # short by one
        return await self.inner.request(request)


class FullDiskCache(diskcache.Cache):
    """A diskcache whose writes fail while ``full`` is set, as on a full disk."""

    full = False

    def set(self, *args: Any, **kwargs: Any) -> Any:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().set(*args, **kwargs)


async def _replay(cache: Any, requests: list[Request]) -> tuple[list[Any], ScriptedModel]:
    model = ScriptedModel()
    async with OnlineAPI(model, cache, batch_size=4) as pipeline:
        answers = [(await pipeline.request(r)).data for r in requests]
    return answers, model


# -- item 1: only a successful attempt counts as a use --------------------------------------------


@pytest.mark.parametrize("short", [False, True], ids=["error", "short-answer"])
async def test_a_retry_with_the_same_id_after_a_failed_attempt_replays_exactly(tmp_path: Path, short: bool) -> None:
    model = FlakyModel(failures=1, short=short)
    requests = [Request("q", n=2, request_id="a"), Request("q", n=2, request_id="a"), Request("r", request_id="b")]
    delivered = []
    async with OnlineAPI(model, tmp_path, batch_size=1, max_refetch=0) as pipeline:
        for request in requests:
            for _ in range(3):  # a retry loop
                try:
                    delivered.append((await pipeline.request(request)).data)
                    break
                except (BackendError, IncompleteResponseError):
                    continue
    assert len(delivered) == 3
    replayed, replay_model = await _replay(tmp_path, requests)
    assert replayed == delivered
    assert replay_model.calls == 0


async def test_a_timed_out_attempt_does_not_count_and_its_samples_stay_free(tmp_path: Path) -> None:
    gate = GateModel()
    request = Request("q", n=2, request_id="a")
    async with OnlineAPI(gate, tmp_path, batch_size=1) as pipeline:
        with anyio.move_on_after(0.05):  # the caller's time-out, as wait_for gives
            await pipeline.request(request)
        gate.release()
        await wait_until(lambda: pipeline.cacher._broker.write_rounds > 0)
        retried = await pipeline.request(request)
        assert retried.cached == [True, True]  # the samples the timed-out attempt paid for
    replayed, replay_model = await _replay(tmp_path, [request])
    assert replayed == [retried.data] and replay_model.calls == 0


async def test_a_cancelled_hit_gives_its_use_back(tmp_path: Path) -> None:
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=1) as pipeline:
        for _ in range(3):  # three stored samples
            await pipeline.request(Request("q"))
    request = Request("q", request_id="a")
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=1) as pipeline:
        task = asyncio.ensure_future(pipeline.request(request))
        await asyncio.sleep(0)  # the lookup is queued
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        retried = await pipeline.request(request)
        again = await pipeline.request(request)
    replayed, replay_model = await _replay(tmp_path, [request, request])
    assert replayed == [retried.data, again.data] and replay_model.calls == 0


async def test_a_failed_attempt_leaves_its_fetched_samples_free_for_the_retry(tmp_path: Path) -> None:
    """A request that came back short stored what it got; the retry in the same run takes it."""
    model = FlakyModel(failures=0)
    calls = []

    async def short_first(request: Request) -> Response:
        calls.append(request.n)
        data = (await model.inner.request(request)).data
        return Response(data=data[:1]) if len(calls) == 1 else Response(data=data)

    model.request = short_first  # type: ignore[method-assign]
    request = Request("q", n=2, request_id="a")
    async with OnlineAPI(model, tmp_path, batch_size=1, max_refetch=0) as pipeline:
        with pytest.raises(IncompleteResponseError):
            await pipeline.request(request)
        retried = await pipeline.request(request)
    assert retried.cached == [True, False] and calls == [2, 1]


class CancelAfterCommit(MemoryStore):
    """A memory engine that cancels ``task`` once the next commit holding samples has returned:
    the caller is gone after its samples and their record were stored, before it got them."""

    def __init__(self) -> None:
        super().__init__()
        self.task: asyncio.Future[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def commit(self, appends: Any, records: Any = (), **options: Any) -> Any:
        starts = super().commit(appends, records, **options)
        task, loop = self.task, self.loop
        if appends and task is not None and loop is not None:
            self.task = None
            loop.call_soon_threadsafe(task.cancel)
        return starts

    async def cancelled_request(self, pipeline: OnlineAPI, request: Request) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = task = asyncio.ensure_future(pipeline.request(request))
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_caller_gone_after_its_samples_were_committed_leaves_an_empty_record() -> None:
    """Its record went out with its samples; it is replaced by an empty one, so its freed
    sample is not kept from others as if a delivered request held it."""
    store = CancelAfterCommit()
    async with OnlineAPI(ScriptedModel(), store, batch_size=1) as pipeline:
        await pipeline.request(Request("q", request_id="a"))  # q#0, recorded for a
        await store.cancelled_request(pipeline, Request("q", request_id="x"))  # q#1, never delivered
    key = pipeline.cacher._key(Request("q"))
    tag = record_tag("default", "x", 1, 0)
    assert store.view([key], [(key, tag)])[key].found == {tag: ()}  # type: ignore[union-attr]
    replayed, model = await _replay(store, [Request("q", request_id="b")])
    assert replayed == [["q#1"]] and model.calls == 0  # a's sample is the one kept back


async def test_a_retry_after_a_caller_gone_past_the_commit_replays_exactly() -> None:
    """The retry takes the use given back and writes its record after the empty one."""
    store = CancelAfterCommit()
    async with OnlineAPI(ScriptedModel(), store, batch_size=1) as pipeline:
        await pipeline.request(Request("q", request_id="a"))  # q#0
        await store.cancelled_request(pipeline, Request("q", request_id="x"))  # q#1
        retried = await pipeline.request(Request("q", request_id="x"))
    assert retried.data == ["q#1"] and retried.cached == [True]
    # b (no record) comes first and must leave x's recorded sample alone.
    replayed, model = await _replay(store, [Request("q", request_id="b"), Request("q", request_id="x")])
    assert replayed == [["q#0"], ["q#1"]] and model.calls == 0


# -- item 10: short answers ------------------------------------------------------------------------


class Script:
    """Answers the k-th call with ``counts[k]`` samples (0 when the script is over)."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = list(counts)
        self.asked: list[int] = []

    async def request(self, request: Request) -> Response:
        self.asked.append(request.n)
        count = self.counts.pop(0) if self.counts else 0
        return Response(data=[f"{request.prompt}{len(self.asked)}.{i}" for i in range(min(count, request.n))])


@pytest.mark.parametrize("counts", [[1, 1, 0], [1, 0, 1], [0, 0, 0], [2, 0, 0]])
async def test_an_empty_answer_is_refetched_like_a_short_one(tmp_path: Path, counts: list[int]) -> None:
    model = Script(counts)
    async with OnlineAPI(model, tmp_path, batch_size=1, max_refetch=2) as pipeline:
        result: Any = None
        try:
            await pipeline.request(Request("q", n=3))
        except IncompleteResponseError as exc:
            result = exc
    assert len(model.asked) == 3  # the first call and two refetches, as max_refetch says
    got = sum(counts)
    if got < 3:
        assert isinstance(result, IncompleteResponseError)
        assert f"got {got} of 3 samples" in str(result)


async def test_the_short_answer_error_counts_the_whole_request(tmp_path: Path) -> None:
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=1) as pipeline:
        await pipeline.request(Request("q"))  # one stored sample
    model = Script([1, 0, 0])
    async with OnlineAPI(model, tmp_path, batch_size=1) as pipeline:
        with pytest.raises(IncompleteResponseError, match=r"got 2 of 3 samples \(1 from the cache, 1 from the model"):
            await pipeline.request(Request("q", n=3, namespace="other"))
    assert model.asked == [2, 1, 1]


# -- item 3: samples the store refuses are kept, retried and recovered ------------------------------


async def test_samples_refused_by_a_full_disk_land_once_it_recovers_and_replay_exactly(tmp_path: Path) -> None:
    cache = FullDiskCache(str(tmp_path / "c"), eviction_policy="none")
    requests = [Request(f"p{i}", n=2, request_id=i) for i in range(6)]
    try:
        async with OnlineAPI(ScriptedModel(), cache, batch_size=2) as pipeline:
            cache.full = True
            first = [(await pipeline.request(r)).data for r in requests[:4]]
            assert pipeline.unstored_samples == 8  # delivered, kept in memory
            cache.full = False
            first += [(await pipeline.request(r)).data for r in requests[4:]]
            await wait_until(lambda: pipeline.unstored_samples == 0)
        replayed, model = await _replay(cache, requests)
        assert replayed == first and model.calls == 0
    finally:
        cache.close()


async def test_closing_with_unstored_samples_raises_and_the_next_pipeline_recovers_them(tmp_path: Path) -> None:
    cache = FullDiskCache(str(tmp_path / "c"), eviction_policy="none")
    requests = [Request("a", n=2, request_id="x"), Request("b", request_id="y")]
    try:
        pipeline = OnlineAPI(ScriptedModel(), cache, batch_size=2)
        cache.full = True
        first = [(await pipeline.request(r)).data for r in requests]
        with pytest.raises(UnstoredSamplesError) as caught:
            await pipeline.aclose()
        error = caught.value
        assert error.unstored == 3 and "3 sample(s)" in str(error)
        assert error.path is not None and os.path.exists(error.path) and error.path in str(error)
        cache.full = False
        replayed, model = await _replay(cache, requests)  # loads the file back first
        assert replayed == first and model.calls == 0
        assert not os.path.exists(error.path)
    finally:
        cache.close()


async def test_a_recovery_file_is_loaded_once_even_if_it_cannot_be_deleted(tmp_path: Path, monkeypatch) -> None:
    cache = FullDiskCache(str(tmp_path / "c"), eviction_policy="none")
    try:
        pipeline = OnlineAPI(ScriptedModel(), cache, batch_size=1)
        cache.full = True
        await pipeline.request(Request("a", request_id="x"))
        with pytest.raises(UnstoredSamplesError) as caught:
            await pipeline.aclose()
        cache.full = False
        monkeypatch.setattr(recovery, "_remove", lambda path: None)  # a read-only folder
        for _ in range(2):
            async with OnlineAPI(ScriptedModel(), cache, batch_size=1) as pipeline:
                await pipeline.request(Request("unrelated"))
        assert os.path.exists(caught.value.path)
        async with OnlineAPI(model := ScriptedModel(), cache, batch_size=1) as pipeline:
            first = await pipeline.request(Request("a", namespace="n2"))
            second = await pipeline.request(Request("a", namespace="n2"))
        assert first.cached == [True] and second.cached == [False]  # stored once, not twice
        assert model.calls == 1
    finally:
        cache.close()


async def test_beyond_the_bound_no_more_model_calls_are_made(tmp_path: Path) -> None:
    cache = FullDiskCache(str(tmp_path / "c"), eviction_policy="none")
    model = ScriptedModel()
    try:
        pipeline = OnlineAPI(model, cache, batch_size=1)
        pipeline.cacher._broker.max_unstored_samples = 3
        cache.full = True
        await pipeline.request(Request("a", n=3))
        calls = model.calls
        with pytest.raises(StoreError, match="3 samples are waiting to be stored"):
            await pipeline.request(Request("b"))
        assert model.calls == calls  # nothing more paid for
    finally:
        with pytest.raises(UnstoredSamplesError):
            await pipeline.aclose()
        cache.full = False
        cache.close()


# -- item 4: a write lock another process holds never holds up a hit --------------------------------


async def test_hits_are_served_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    warm = [Request(f"p{i}", n=2, request_id=i) for i in range(4)]
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=4) as pipeline:
        first = [(await pipeline.request(r)).data for r in warm]
    model = ScriptedModel()
    pipeline = OnlineAPI(model, tmp_path, batch_size=4, store_timeout_s=0.2)
    await pipeline.request(Request("opened", request_id="o"))  # the store is open and in use
    with write_lock_held(tmp_path / "cache.db") as locker:  # then a process stops holding the lock
        with anyio.fail_after(10):
            replayed = [(await pipeline.request(r)).data for r in warm]  # exact replay: hits
            other = [await pipeline.request(Request(r.prompt, n=2, namespace="other")) for r in warm]
            missed = await pipeline.request(Request("new", n=2, request_id="z"))
        assert replayed == first and model.calls == 2  # "opened" and "new" only
        assert all(response.cached == [True, True] for response in other)
        assert missed.data == ["new#0", "new#1"] and pipeline.unstored_samples == 2
        with pytest.raises(UnstoredSamplesError, match="2 sample") as caught:
            with anyio.fail_after(10):  # a bounded wait for the lock, never forever
                await pipeline.aclose()
        locker.kill()
    assert caught.value.path is not None
    again, replay_model = await _replay(tmp_path, [Request("new", n=2, request_id="z")])
    assert again == [missed.data] and replay_model.calls == 0


# -- inline I/O for a lone caller makes the same choices as the lanes --------------------------------


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "lanes"])
async def test_a_lone_caller_gets_the_same_samples_with_or_without_inline_io(tmp_path: Path, inline: bool) -> None:
    requests = [Request(f"p{i % 3}", n=1 + i % 2, request_id=i % 4, namespace=f"ns{i % 2}") for i in range(24)]
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=1) as pipeline:
        pipeline.cacher._broker.inline_io = inline
        first = [(await pipeline.request(r)).data for r in requests]
        assert pipeline.cacher._broker._used_inline is inline
    seen: dict[tuple[str, str], list[Any]] = {}
    for request, data in zip(requests, first):
        seen.setdefault((request.namespace, request.prompt), []).extend(data)
    assert all(len(samples) == len(set(samples)) for samples in seen.values())  # fresh in a namespace
    replayed, model = await _replay(tmp_path, requests)
    assert replayed == first and model.calls == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_burst_from_many_tasks_is_served_in_rounds_while_a_lone_task_stays_inline(
    tmp_path: Path, backend: str
) -> None:
    """After one task's lookup ran inline, other tasks' lookups in the same pass of the event
    loop wait for one round on the lane's thread; a task awaiting one request at a time goes
    inline, and so does a task that comes after the burst."""
    prompts = [f"p{i}" for i in range(40)]

    async def main() -> dict[str, Any]:
        async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=8) as pipeline:
            for i, prompt in enumerate(prompts):
                await pipeline.request(Request(prompt, request_id=i))
        async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=8) as pipeline:
            broker = pipeline.cacher._broker
            await pipeline.request(Request("p0", request_id=0))  # starts the lanes
            await wait_until(lambda: broker._lookup_lane.idle)
            seen: dict[str, Any] = {}
            inline, rounds = broker.inline_lookups, broker.rounds
            seen["lone"] = [await pipeline.request(Request(p, request_id=i)) for i, p in enumerate(prompts[1:10], 1)]
            seen["lone inline"], seen["lone rounds"] = broker.inline_lookups - inline, broker.rounds - rounds
            inline, rounds = broker.inline_lookups, broker.rounds
            burst: list[Response] = [Response([])] * len(prompts)

            async def one(i: int) -> None:
                burst[i] = await pipeline.request(Request(prompts[i], request_id=i, namespace="burst"))

            async with anyio.create_task_group() as group:
                for i in range(len(prompts)):
                    group.start_soon(one, i)
            seen["burst"] = burst
            seen["burst inline"], seen["burst rounds"] = broker.inline_lookups - inline, broker.rounds - rounds
            inline = broker.inline_lookups

            async def after() -> None:
                seen["after"] = await pipeline.request(Request("p5", request_id=5, namespace="after"))

            async with anyio.create_task_group() as group:  # another task, in a later pass
                group.start_soon(after)
            seen["after inline"] = broker.inline_lookups - inline
            return seen

    seen = anyio.run(main, backend=backend)
    assert seen["lone inline"] == seen["lone rounds"] == 9  # each on the event loop, one round each
    assert all(r.cached == [True] for r in seen["lone"])
    assert seen["burst inline"] <= 1 and 1 <= seen["burst rounds"] <= 3  # not one round per request
    assert all(r.cached == [True] for r in seen["burst"])  # another namespace reuses the stored samples
    assert [r.data for r in seen["burst"]] == [[f"{p}#0"] for p in prompts]
    assert seen["after inline"] == 1 and seen["after"].data == ["p5#0"]


# -- a crashed background job fails what it served and is raised at close ----------------------------


async def test_a_crashed_write_lane_fails_its_requests_keeps_their_samples_and_is_raised_at_close(
    tmp_path: Path,
) -> None:
    pipeline = OnlineAPI(ScriptedModel(), tmp_path, batch_size=1)
    broker = pipeline.cacher._broker
    broker.inline_io = False  # through the write lane
    await pipeline.request(Request("warm"))
    real = broker._write_once

    async def crash_once(final: bool = False) -> bool:
        broker._write_once = real  # type: ignore[method-assign]
        raise RuntimeError("a bug in the write lane")

    broker._write_once = crash_once  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="a bug in the write lane"):
        await pipeline.request(Request("q", n=2, request_id="a"))
    with pytest.raises(BackgroundJobError, match="a bug in the write lane") as caught:
        await pipeline.aclose()
    assert isinstance(caught.value.errors[0], RuntimeError)
    assert caught.value.__context__ is None  # the samples it kept were stored by close's last round
    again, model = await _replay(tmp_path, [Request("q", n=2, namespace="other")])
    assert again == [["q#0", "q#1"]] and model.calls == 0


async def test_misses_are_delivered_soon_while_a_lock_is_held_and_land_once_it_is_released(tmp_path: Path) -> None:
    """Callers of a round that meets a held lock wait FIRST_WAIT_S, not store_timeout_s per
    sample; the kept samples are counted meanwhile and land when the lock goes."""
    pipeline = OnlineAPI(ScriptedModel(), tmp_path, batch_size=8)  # store_timeout_s: 30 s
    pipeline.cacher._broker.inline_io = False
    await pipeline.request(Request("opened"))
    requests = [Request(f"m{i}", n=2, request_id=i) for i in range(6)]
    with write_lock_held(tmp_path / "cache.db") as locker:
        with anyio.fail_after(20):  # one bounded wait (about 1 s), never 6 x 30 s
            first = await pipeline.batch_request(Batch(requests=requests))
        assert pipeline.unstored_samples == 12
        locker.kill()
        locker.communicate()
        with anyio.fail_after(20):
            await wait_until(lambda: pipeline.unstored_samples == 0, limit_s=20)
    await pipeline.aclose()
    replayed, model = await _replay(tmp_path, requests)
    assert replayed == [r.data for r in first] and model.calls == 0


class RefusesSamplesOf(MemoryStore):
    """A memory engine that refuses every commit appending to ``key`` while ``refusing``."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.refusing = True

    def commit(self, appends: Any, records: Any = (), **options: Any) -> Any:
        if self.refusing and any(a.key == self.key for a in appends):
            raise StoreError("scripted: no room for these samples")
        return super().commit(appends, records, **options)


def test_a_record_held_back_with_its_samples_keeps_its_replacement_behind_it() -> None:
    """The record of an abandoned request waits for its samples; the empty record replacing it
    must not be written first, or the stale one would win once the samples land."""
    from cachesaver._runtime.jobs import BackgroundTasks
    from cachesaver.store.allocation import Found, SampleBroker, Write, _Record

    store = RefusesSamplesOf("k")
    broker = SampleBroker(store, BackgroundTasks("test"))
    found = Found("k", 0, [], [], 0, "ns", "x", 1)
    write = Write("k", [("s", None)], found, 1)
    stale = _Record("ns", "k", "x", 1, 0, (), [(write, 1)])  # went out with its samples
    empty = _Record("ns", "k", "x", 1, 0, ())  # its caller left: the replacement
    left, left_records, error = broker._write_round([write], [stale, empty])
    assert error is not None and left == [write] and left_records == [stale, empty]
    store.refusing = False
    assert broker._write_round(left, left_records)[2] is None
    tag = record_tag("ns", "x", 1, 0)
    assert store.view(["k"], [("k", tag)])["k"].found == {tag: ()}  # type: ignore[union-attr]


# -- lookup rounds on the event loop, for an engine with view_async ----------------------------


class _LoopViews(StoreForwarder):
    """A MemoryStore with ``view_async`` (which lets the loop run other tasks before it answers),
    recording where each view ran; ``refuse`` makes ``view_async`` return None."""

    inline_io = False

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.loop_views = 0
        self.thread_views: list[str] = []
        self.refuse = False
        self.on_view: Any = None  # called by a view on a thread, before it returns
        self.block: Any = None  # an anyio.Event view_async waits for
        self.waiting = False
        self.loop_keys: list[list[str]] = []  # the keys of each view_async, in order
        self.loop_tasks: list[int] = []  # the task each view_async ran in
        self.along = 0  # view_async carries each key's first samples, up to this many (as Redis's does)
        self.corrupt: set[str] = set()  # keys whose view_async is a CorruptStoreError
        self.before_loop_view: Any = None  # called with the keys as each view_async starts

    async def view_async(self, keys: Any, tags: Any = ()) -> Any:
        if self.refuse:
            return None
        if self.before_loop_view is not None:
            self.before_loop_view(keys)
        self.loop_keys.append(list(keys))
        self.loop_tasks.append(anyio.get_current_task().id)
        if self.block is not None:
            self.waiting = True
            await self.block.wait()
        await anyio.lowlevel.checkpoint()
        self.loop_views += 1
        views = dict(self.inner.view(keys, tags))
        for key in self.corrupt.intersection(views):
            views[key] = CorruptStoreError(f"the entry of {key} is not cachesaver's")
        for key, view in views.items():
            if self.along and not isinstance(view, BaseException) and view.count:
                first = range(min(view.count, self.along))
                samples = self.inner.read({key: list(first)})[key]
                views[key] = dataclasses.replace(view, samples=dict(zip(first, samples)))
        return views

    def view(self, keys: Any, tags: Any = ()) -> Any:
        self.thread_views.append(threading.current_thread().name)
        if self.on_view is not None:
            self.on_view()
        return self.inner.view(keys, tags)


def _fill(store: Any, prompts: list[str], n: int = 1) -> None:
    async def main() -> None:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await gather(*(functools.partial(pipeline.request, Request(p, n=n)) for p in prompts))

    anyio.run(main)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_with_view_async_rounds_run_on_the_event_loop_and_the_guarantees_hold(backend: str) -> None:
    """No sample is handed out twice in a namespace, a replay by request_id is exact, and
    cancelled requests give their samples back, with every view read from the event loop."""
    store = _LoopViews(MemoryStore())
    prompts = [f"q{i % 50}" for i in range(1500)]  # 50 prompts, 30 copies each
    _fill(store, [f"q{i}" for i in range(50)], n=40)

    async def run(cancel_first: bool) -> tuple[list[Any], int]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            out: list[Any] = [None] * len(prompts)

            async def one(i: int) -> None:
                out[i] = await pipeline.request(Request(prompts[i], request_id=i, namespace="ns"))

            if cancel_first:  # leave while rounds run: their uses and samples come back ...
                async with anyio.create_task_group() as group:
                    for i in range(len(prompts)):
                        group.start_soon(one, i)
                    await anyio.lowlevel.checkpoint()
                    group.cancel_scope.cancel()
            async with anyio.create_task_group() as group:  # ... for the same requests again
                for i in range(len(prompts)):
                    group.start_soon(one, i)
            return out, pipeline.cacher._broker.rounds

    first, rounds = anyio.run(run, True, backend=backend)
    again, _ = anyio.run(run, False, backend=backend)
    assert rounds >= 6 and store.loop_views >= rounds and store.thread_views == []
    by_prompt: dict[str, list[str]] = {}
    for prompt, response in zip(prompts, first):
        by_prompt.setdefault(prompt, []).extend(response.data)
    assert all(len(set(samples)) == len(samples) == 30 for samples in by_prompt.values())  # none twice
    assert all(r.cached == [True] for r in first)  # 30 of the 40 stored samples each: no model call
    assert [r.data for r in again] == [r.data for r in first]  # the replay by request_id is exact


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_view_the_engine_cannot_give_from_the_loop_is_read_on_the_read_thread(backend: str) -> None:
    store = _LoopViews(MemoryStore())
    _fill(store, [f"r{i}" for i in range(40)])
    store.refuse = True

    async def main() -> list[Response]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            first = [await pipeline.request(Request(f"r{i}", request_id=i, namespace="x")) for i in range(3)]
            return first + await gather(*(functools.partial(pipeline.request, Request(f"r{i}")) for i in range(40)))

    responses = anyio.run(main, backend=backend)
    assert [r.data for r in responses] == [[f"r{i}#0"] for i in range(3)] + [[f"r{i}#0"] for i in range(40)]
    assert store.thread_views and set(store.thread_views) == {"cachesaver-store-reads"}


def _hold_claims_lock(broker: Any, release: threading.Event) -> threading.Thread:
    """A thread holding ``broker``'s claims lock, as a commit does, until ``release`` is set;
    returned once it holds it."""
    held = threading.Event()

    def hold() -> None:
        with broker._mutex:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    return holder


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_loop_round_never_waits_for_the_claims_lock_on_the_event_loop(backend: str) -> None:
    """While a commit holds the claims lock, a lookup's steps wait for it on the read thread:
    the event loop goes on running other tasks, and the lookup is served once it is free."""
    store = _LoopViews(MemoryStore())
    _fill(store, ["p"])
    release = threading.Event()

    async def main() -> tuple[int, bool, Response]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("p", namespace="warm"))
            holder = _hold_claims_lock(pipeline.cacher._broker, release)
            out: dict[str, Any] = {}
            ticks = 0

            async def ask() -> None:
                out["response"] = await pipeline.request(Request("p", namespace="x"))

            async with anyio.create_task_group() as group:
                group.start_soon(ask)
                while ticks < 20:  # the loop keeps running while the lookup waits for the lock
                    await anyio.sleep(0.001)
                    ticks += 1
                waited = "response" not in out
                release.set()
            holder.join()
            return ticks, waited, out["response"]

    ticks, waited, response = anyio.run(main, backend=backend)
    assert ticks == 20 and waited and response.data == ["p#0"] and response.cached == [True]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_loop_round_cancelled_while_its_view_runs_gives_back_the_use_it_took(backend: str) -> None:
    """The lane is cancelled while a round waits for its view: the round gives its use back
    (shielded) instead of keeping it for a request that never gets an answer."""
    store = _LoopViews(MemoryStore())
    _fill(store, ["p"])

    async def main() -> tuple[bool, int, bool]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("p", namespace="warm"))
            broker = pipeline.cacher._broker
            key = pipeline.cacher._key(Request("p"))
            op = _Lookup(Request("p", request_id="a", namespace="x"), key)
            store.block = anyio.Event()  # the view never answers
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(broker._loop_round, [op], [])
                    await wait_until(lambda: store.waiting)
                    scope.cancel()
            store.block = None
            use = broker.claims.next_use("x", key, "a", 1)  # the given-back use is the next one
            return scope.cancelled_caught, use, broker.claims.reused

    cancelled, use, reused = anyio.run(main, backend=backend)
    assert cancelled and use == 0 and reused  # use 0 came back; nothing held for the lookup


def test_once_claims_are_on_disk_a_loop_rounds_steps_run_on_the_read_thread() -> None:
    store = _LoopViews(MemoryStore())
    prompts = [f"s{i}" for i in range(60)]
    _fill(store, prompts)
    where: list[str] = []

    async def main() -> list[Response]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            broker = pipeline.cacher._broker
            broker.claims = RunClaims(max_in_memory=8)
            await gather(*(functools.partial(pipeline.request, Request(p, request_id=p)) for p in prompts))
            await pipeline.request(Request("s0", namespace="after"))  # its round trims: claims go to disk
            assert broker.claims.spilled
            real = broker._plan_locked

            def recording(*args: Any) -> Any:
                where.append(threading.current_thread().name)
                return real(*args)

            broker._plan_locked = recording
            return [await pipeline.request(Request(p, request_id=p, namespace="later")) for p in prompts[:3]]

    responses = anyio.run(main)
    assert len(where) >= 3 and set(where) == {"cachesaver-store-reads"}  # never the event loop's thread
    assert [r.data for r in responses] == [[f"s{i}#0"] for i in range(3)]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_views_of_queued_rounds_are_asked_for_before_the_round_before_them_is_answered(backend: str) -> None:
    """A burst served in several rounds: once a round's view is back, the views of the next
    ones (up to ``rounds_ahead``) are asked for before it chooses, so the server works while
    the loop goes on; the rounds are still answered in order, no stored sample is handed out
    twice in a namespace, and a replay by request_id is exact."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    prompts = [f"e{i % 6}" for i in range(36)]  # 6 prompts, 6 copies each
    _fill(store, [f"e{i}" for i in range(6)], n=6)

    async def run(ahead: int) -> tuple[list[Response], int, int]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("e0", namespace="warm"))
            broker = pipeline.cacher._broker
            broker._max_round, broker.rounds_ahead = 4, ahead
            base, unanswered = broker.rounds, []  # per view: earlier views whose round is unanswered

            def before(keys: Any) -> None:
                unanswered.append(len(unanswered) - (broker.rounds - base))

            store.before_loop_view = before
            asked_ahead = broker.ahead_views
            responses = await gather(*(
                functools.partial(pipeline.request, Request(p, request_id=i, namespace="x")) for i, p in enumerate(prompts)
            ))
            store.before_loop_view = None
            return responses, max(unanswered), broker.ahead_views - asked_ahead

    first, unanswered, ahead_views = anyio.run(run, 2, backend=backend)
    again, _, _ = anyio.run(run, 2, backend=backend)
    plain, unanswered_plain, ahead_plain = anyio.run(run, 0, backend=backend)
    assert ahead_views >= 4 and unanswered >= 1  # views started while an earlier round was unanswered
    assert ahead_plain == 0 and unanswered_plain == 0  # rounds_ahead = 0: each view after the last round
    by_prompt: dict[str, list[str]] = {}
    for prompt, response in zip(prompts, first):
        by_prompt.setdefault(prompt, []).extend(response.data)
    assert all(sorted(samples) == [f"{p}#{j}" for j in range(6)] for p, samples in by_prompt.items())
    assert all(r.cached == [True] for r in first)
    assert [r.data for r in again] == [r.data for r in first] == [r.data for r in plain]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_view_asked_for_ahead_that_fails_fails_its_round_only_and_gives_its_uses_back(backend: str) -> None:
    store = _LoopViews(MemoryStore())
    store.along = 8
    prompts = [f"f{i}" for i in range(16)]
    _fill(store, prompts)

    async def main() -> tuple[list[Any], list[str], list[int], bool]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("f0", namespace="warm"))
            broker, cacher = pipeline.cacher._broker, pipeline.cacher
            broker._max_round = 4
            failed: list[str] = []

            def before(keys: Any) -> None:
                if broker._viewing_ahead and not failed:  # the first view asked for ahead
                    failed.extend(keys)
                    raise StoreError("the server went away mid-view")

            store.before_loop_view = before
            out: list[Any] = [None] * len(prompts)

            async def ask(i: int) -> None:
                try:
                    out[i] = await pipeline.request(Request(prompts[i], request_id=i, namespace="x"))
                except StoreError as exc:
                    out[i] = exc

            async with anyio.create_task_group() as group:
                for i in range(len(prompts)):
                    group.start_soon(ask, i)
            store.before_loop_view = None
            keys = [cacher._key(Request(p)) for p in prompts]
            uses = [broker.claims.next_use("x", keys[i], i, 1) for i in range(len(prompts)) if keys[i] in failed]
            return out, [p for p, k in zip(prompts, keys) if k in failed], uses, broker.claims.reused

    out, failed, uses, reused = anyio.run(main, backend=backend)
    assert len(failed) == 4  # one round of four
    for prompt, result in zip([f"f{i}" for i in range(16)], out):
        if prompt in failed:
            assert isinstance(result, StoreError) and "went away" in str(result)
        else:
            assert result.data == [f"{prompt}#0"] and result.cached == [True]
    assert uses == [0, 0, 0, 0] and reused  # each failed request's use came back


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_lookups_queued_after_an_abandon_are_not_planned_before_the_abandoned_round_answers(backend: str) -> None:
    """A caller cancelled while its lane round waits for its view: the lookups queued behind
    it are not planned ahead of that round's answer, so the sample and use the answer hands
    the cancelled request come back before anyone else chooses, as without rounds ahead."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["a"], n=2)

    async def main() -> tuple[list[list[bool]], list[int], int, Any]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("a", namespace="warm"))
            broker, key = pipeline.cacher._broker, pipeline.cacher._key(Request("a"))
            broker._loop_viewing = False  # the lane runs the next round, not its caller
            store.block = anyio.Event()
            async with anyio.create_task_group() as group:
                scope = anyio.CancelScope()
                done = anyio.Event()

                async def cancelled() -> None:
                    with scope:
                        await pipeline.request(Request("a", request_id="q", namespace="x"))
                    done.set()

                group.start_soon(cancelled)
                await wait_until(lambda: store.waiting)
                scope.cancel()
                await done.wait()
                other: list[Response] = []

                async def queued() -> None:
                    other.append(await pipeline.request(Request("a", namespace="z")))

                group.start_soon(queued)
                await wait_until(lambda: broker._lookups)
                ahead = broker.ahead_views
                store.block.set()
            store.block = None
            both = await gather(*(functools.partial(pipeline.request, Request("a", namespace="x")) for _ in range(2)))
            uses = [broker.claims.next_use("x", key, "q", 1) for _ in range(2)]
            return [r.cached for r in both], uses, broker.ahead_views - ahead, other[0].cached

    cached, uses, ahead_views, other = anyio.run(main, backend=backend)
    assert other == [True]
    assert ahead_views == 0  # the queued lookup waited for the answer of the abandoned round
    assert cached == [[True], [True]]  # both stored samples are free again in this namespace
    assert uses == [0, 1]  # the cancelled request's use came back once


async def _rounds_of_one_lookup_two_ahead(pipeline: Any, prompt: str) -> tuple[Any, str]:
    """Set ``pipeline``'s broker (once its lanes run) to rounds of one lookup, two planned ahead,
    all run by the lane; returns the broker and the key of ``prompt``."""
    await pipeline.request(Request(prompt, namespace="warm"))
    broker = pipeline.cacher._broker
    broker._loop_viewing = False  # the lane runs the rounds, not their callers
    broker._max_round, broker.rounds_ahead = 1, 2
    return broker, pipeline.cacher._key(Request(prompt))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_abandon_in_a_round_planned_ahead_holds_back_later_rounds_until_that_round_answers(backend: str) -> None:
    """Rounds of one lookup, two planned ahead: a caller whose round is the second planned
    ahead leaves while the first one's view runs. No later round is planned before the left
    caller's round is answered, so the sample and use that answer handed it are free again in
    its namespace, and no request pays for a sample the store holds."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["a"], n=6)

    async def main() -> tuple[list[list[bool]], list[list[bool]], list[int], list[str]]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            broker, key = await _rounds_of_one_lookup_two_ahead(pipeline, "a")
            first, second = anyio.Event(), anyio.Event()
            store.block, views = first, len(store.loop_keys)
            served: list[Response] = []
            async with anyio.create_task_group() as group:
                scope = anyio.CancelScope()
                left = anyio.Event()

                async def ask() -> None:
                    served.append(await pipeline.request(Request("a", namespace="x")))

                async def leaves() -> None:
                    with scope:
                        await pipeline.request(Request("a", request_id="q", namespace="x"))
                    left.set()

                try:
                    group.start_soon(ask)  # the lane's round
                    await wait_until(lambda: len(store.loop_keys) == views + 1)
                    group.start_soon(ask)  # the first round planned ahead
                    await wait_until(lambda: len(broker._lookups) == 1)
                    group.start_soon(leaves)  # the second round planned ahead
                    await wait_until(lambda: len(broker._lookups) == 2)
                    for _ in range(2):  # queued behind them
                        group.start_soon(ask)
                    await wait_until(lambda: len(broker._lookups) == 4)
                    store.block = second
                    first.set()  # the lane's view is back: two rounds planned, the first one's view sent
                    await wait_until(lambda: len(store.loop_keys) == views + 2 and len(served) == 1)
                    # the lane's round is answered; the first round planned ahead waits for its view
                    assert len(broker._ahead) == 1 and broker._ahead[0].lookups[0].request.request_id == "q"
                    scope.cancel()
                    await left.wait()
                    store.block = None
                finally:  # the blocked view goes on (and a failed step fails the test, not hangs)
                    first.set()
                    second.set()
            both = await gather(*(functools.partial(pipeline.request, Request("a", namespace="x")) for _ in range(2)))
            uses = [broker.claims.next_use("x", key, "q", 1) for _ in range(2)]
            data = [d for r in served + both for d in r.data]
            return [r.cached for r in served], [r.cached for r in both], uses, data

    served, both, uses, data = anyio.run(main, backend=backend)
    assert served == [[True]] * 4
    assert both == [[True], [True]]  # the sample handed to the left caller is free again
    assert sorted(data) == [f"a#{j}" for j in range(6)]  # no stored sample twice in the namespace
    assert uses == [0, 1]  # the left caller's use came back once


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_lane_ended_while_rounds_are_planned_ahead_fails_their_callers_and_gives_back_their_uses(backend: str) -> None:
    """The lookup lane is cancelled (a forced close, a dying event loop) while a view asked for
    ahead has not answered: the callers of every round planned ahead get PipelineClosedError
    instead of waiting forever, and the uses those rounds took come back."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["a"], n=6)

    async def main() -> tuple[list[Any], list[int], bool]:
        pipeline = OnlineAPI(ScriptedModel(), store, batch_size=64)
        broker, key = await _rounds_of_one_lookup_two_ahead(pipeline, "a")
        first, never = anyio.Event(), anyio.Event()
        store.block, views = first, len(store.loop_keys)
        out: dict[str, Any] = {}

        async def ask(request_id: str) -> None:
            try:
                out[request_id] = await pipeline.request(Request("a", request_id=request_id, namespace="x"))
            except PipelineClosedError as exc:
                out[request_id] = exc

        with anyio.fail_after(10):  # a caller left waiting fails the test instead of hanging it
            async with anyio.create_task_group() as group:
                try:
                    group.start_soon(ask, "r0")  # the lane's round
                    await wait_until(lambda: len(store.loop_keys) == views + 1)
                    for i, request_id in enumerate(["r1", "r2"]):  # the rounds planned ahead
                        group.start_soon(ask, request_id)
                        await wait_until(lambda: len(broker._lookups) == i + 1)
                    store.block = never  # the first view asked for ahead never answers
                    first.set()
                    await wait_until(lambda: len(store.loop_keys) == views + 2 and "r0" in out)
                    assert [ahead.lookups[0].request.request_id for ahead in broker._ahead] == ["r2"]
                    for service in list(broker._background._services):  # the broker's lanes
                        service.cancel()
                    await broker._lookup_lane.stopped.wait()
                finally:
                    first.set()
        store.block = None
        await pipeline.aclose()
        uses = [broker.claims.next_use("x", key, request_id, 1) for request_id in ("r1", "r2")]
        return [out[r] for r in ("r0", "r1", "r2")], uses, broker.claims.reused

    (served, *closed), uses, reused = anyio.run(main, backend=backend)
    assert served.data and served.cached == [True]
    assert all(isinstance(result, PipelineClosedError) for result in closed)
    assert uses == [0, 0] and reused  # each left request's first use came back


# -- a lone lookup's round, run by the task that awaits it ---------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_lone_lookup_is_served_by_a_round_its_own_task_runs(backend: str) -> None:
    """One caller at a time (as an agent calls): each lookup's view runs in the caller's own
    task, with the choices of any round (a replay by request_id is exact)."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, [f"a{i}" for i in range(5)], n=2)

    async def main() -> tuple[list[Response], list[Response], list[int], int]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("a0", namespace="warm"))  # the lane starts
            broker = pipeline.cacher._broker
            driven, callers = broker.driven_lookups, []
            store.loop_tasks.clear()
            first = []
            for i in range(5):
                callers.append(anyio.get_current_task().id)
                first.append(await pipeline.request(Request(f"a{i}", request_id=i, namespace="x")))
            count = broker.driven_lookups - driven
            tasks = list(store.loop_tasks)
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            again = [await pipeline.request(Request(f"a{i}", request_id=i, namespace="x")) for i in range(5)]
        return first, again, [t for t in tasks if t not in callers], count

    first, again, elsewhere, driven = anyio.run(main, backend=backend)
    assert driven == 5 and elsewhere == []  # every view ran in the caller's task
    assert all(r.cached == [True] for r in first) and [r.data for r in again] == [r.data for r in first]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_lone_lookup_whose_view_fails_gets_the_error_and_gives_its_use_back(backend: str) -> None:
    """The caller's own round sees its key's view fail: that request gets the store's error,
    and the use it took is given back, so the next attempt of the same request id replays as
    the first would have (use 0), while other keys are served as usual."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["c0", "c1"])

    async def main() -> tuple[int, bool, int, Response]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("c1", namespace="warm"))  # the lane starts
            broker = pipeline.cacher._broker
            key = pipeline.cacher._key(Request("c0"))
            store.corrupt.add(key)
            driven = broker.driven_lookups
            with pytest.raises(CorruptStoreError):  # its own error
                await pipeline.request(Request("c0", request_id="a", namespace="x"))
            count = broker.driven_lookups - driven
            use = broker.claims.next_use("x", key, "a", 1)
            reused = broker.claims.reused
            other = await pipeline.request(Request("c1", request_id="b", namespace="x"))
        return use, reused, count, other

    use, reused, driven, other = anyio.run(main, backend=backend)
    assert driven == 1  # its own round
    assert use == 0 and reused  # the use came back
    assert other.data == ["c1#0"] and other.cached == [True]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_lone_replay_gets_its_recorded_samples_not_the_lowest_free_ones(backend: str) -> None:
    """The caller's own round asks for the request's record: a replay of request "a", whose
    record is sample 1 (request "b" took sample 0 first), gets sample 1 again, alone, in a new
    run, and writes no new record."""
    store = _LoopViews(MemoryStore())
    store.along = 8

    async def main() -> tuple[list[Response], Response, int, int]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            first = [await pipeline.request(Request("p", request_id=rid, namespace="x")) for rid in ("b", "a")]
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("other", namespace="warm"))  # the lane starts
            broker = pipeline.cacher._broker
            driven, records = broker.driven_lookups, len(broker._records)
            again = await pipeline.request(Request("p", request_id="a", namespace="x"))
            return first, again, broker.driven_lookups - driven, len(broker._records) - records

    first, again, driven, new_records = anyio.run(main, backend=backend)
    assert [r.data for r in first] == [["p#0"], ["p#1"]]
    assert driven == 1 and again.data == ["p#1"] and again.cached == [True] and new_records == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_lone_round_that_crashes_fails_its_request_only_and_gives_back_what_it_took(backend: str) -> None:
    """A bug in the caller's own round, after it claimed the request's samples, fails that
    request alone: its use and its samples are given back, so the same request asked again
    replays as the first attempt would have, and the pipeline goes on serving."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["q"])

    async def main() -> tuple[Response, int, int, Response]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("other", namespace="warm"))  # the lane starts
            broker = pipeline.cacher._broker
            key = pipeline.cacher._key(Request("q"))
            real = broker._found_one

            def crashing(*args: Any) -> Any:
                raise RuntimeError("a bug in the round")

            broker._found_one = crashing
            driven = broker.driven_lookups
            with pytest.raises(RuntimeError, match="a bug in the round"):  # that request gets the crash
                await pipeline.request(Request("q", request_id="a", namespace="x"))
            count = broker.driven_lookups - driven
            broker._found_one = real
            again = await pipeline.request(Request("q", request_id="a", namespace="x"))
            uses = broker.claims.next_use("x", key, "a", 1)  # uses of "a" taken so far: 1 if 0 came back
            other = await pipeline.request(Request("q", namespace="y"))
        return again, count, uses, other

    again, driven, uses, other = anyio.run(main, backend=backend)
    assert driven == 1
    assert again.data == ["q#0"] and again.cached == [True]  # sample 0 was given back
    assert uses == 1  # and use 0: the second attempt took it again
    assert other.data == ["q#0"] and other.cached == [True]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_lone_lookups_served_by_their_callers_never_wake_the_idle_lane(backend: str) -> None:
    """A lone caller's hit costs no wake-up of another task: the lane sleeps through it."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, [f"a{i}" for i in range(4)], n=1)

    async def main() -> tuple[bool, bool, int]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("a0", namespace="warm"))  # the lane starts
            broker = pipeline.cacher._broker
            lane = broker._lookup_lane
            await wait_until(lambda: lane.wake is not None and not broker._lookups)
            asleep, driven = lane.wake, broker.driven_lookups
            for i in range(4):
                await pipeline.request(Request(f"a{i}", request_id=i, namespace="x"))
            return lane.wake is asleep, asleep.is_set(), broker.driven_lookups - driven

    same, woken, driven = anyio.run(main, backend=backend)
    assert driven == 4 and same and not woken


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_lookups_queued_during_a_callers_round_wait_for_it_then_share_one_round(backend: str) -> None:
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["b0", "b1", "b2", "b3"])

    async def main() -> tuple[list[Response], list[list[str]], list[str], int]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("b0", namespace="warm"))
            broker, cacher = pipeline.cacher._broker, pipeline.cacher
            store.loop_keys.clear()
            store.block = anyio.Event()
            out: list[Any] = [None] * 4

            async def ask(i: int) -> None:
                out[i] = await pipeline.request(Request(f"b{i}", namespace="x"))

            async with anyio.create_task_group() as group:
                group.start_soon(ask, 0)
                await wait_until(lambda: store.waiting)  # b0's caller runs its round
                for i in (1, 2, 3):
                    group.start_soon(ask, i)
                await wait_until(lambda: len(broker._lookups) == 3)
                views_while_blocked = len(store.loop_keys)
                store.block.set()
            keys = [cacher._key(Request(f"b{i}")) for i in range(4)]
            return out, store.loop_keys, keys, views_while_blocked

    out, views, keys, while_blocked = anyio.run(main, backend=backend)
    assert while_blocked == 1  # no round of the lane ran beside the caller's
    assert len(views) == 2 and views[0] == [keys[0]]  # then the three queued lookups in one round
    assert sorted(views[1]) == sorted(keys[1:])  # (in the order their tasks ran: trio's is its own)
    assert [r.data for r in out] == [[f"b{i}#0"] for i in range(4)]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_lookup_its_caller_has_not_awaited_yet_is_served_by_the_lane_when_other_work_comes(backend: str) -> None:
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["c0", "c1"])

    async def main() -> tuple[bool, Any, Any, list[list[str]], list[str]]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("c0", namespace="warm"))
            broker, cacher = pipeline.cacher._broker, pipeline.cacher
            keys = [cacher._key(Request(f"c{i}")) for i in range(2)]
            store.loop_keys.clear()
            first = broker.lookup(Request("c0", namespace="x"), keys[0])  # its caller's to run ...
            second = broker.lookup(Request("c1", namespace="x"), keys[1])  # ... but the lane has work
            with anyio.fail_after(10):  # the lane must not wait for a round nobody runs
                found_second = await second.get()
            done_first = first.done  # served by that round, before its caller ever awaited it
            found_first = await first.get()
            return done_first, found_first, found_second, store.loop_keys, keys

    done_first, found_first, found_second, views, keys = anyio.run(main, backend=backend)
    assert done_first and views == [keys]  # one round of the lane for both
    assert found_first.samples == [("c0#0", None)] and found_second.samples == [("c1#0", None)]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_lookup_abandoned_before_its_caller_ran_its_round_holds_nothing_up(backend: str) -> None:
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["d0", "d1"])

    async def main() -> tuple[Response, Any, int]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("d0", namespace="warm"))
            broker = pipeline.cacher._broker
            op = broker.lookup(Request("d0", request_id="q", namespace="x"), pipeline.cacher._key(Request("d0")))
            rounds = broker.rounds
            broker.abandon(op)  # its caller left (cancelled) before awaiting it
            outcome = broker._driven, broker.rounds - rounds, op.done, store.loop_keys[-1:]
            with pytest.raises(PipelineClosedError):
                op.result()
            response = await pipeline.request(Request("d1", namespace="x"))
            return response, outcome, broker.claims.next_use("x", pipeline.cacher._key(Request("d0")), "q", 1)

    response, (driven, rounds, done, _), use = anyio.run(main, backend=backend)
    assert driven is None and rounds == 0 and done  # answered at once, by no round
    assert response.data == ["d1#0"] and use == 0  # nothing was taken for it


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_caller_cancelled_during_its_own_round_gives_its_use_back_and_the_lane_goes_on(backend: str) -> None:
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["e0", "e1"])

    async def main() -> tuple[bool, list[Any], Response]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("e0", namespace="warm"))
            broker, key = pipeline.cacher._broker, pipeline.cacher._key(Request("e0"))
            store.block = anyio.Event()  # the caller's view never answers
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(pipeline.request, Request("e0", request_id="q", namespace="x"))
                    await wait_until(lambda: store.waiting)
                    scope.cancel()
            store.block = None
            response = await pipeline.request(Request("e1", namespace="x"))  # a round of the lane ...
            use = [broker.claims.next_use("x", key, "q", 1), broker.claims.reused]  # ... gave it back
            return scope.cancelled_caught, use, response

    cancelled, use, response = anyio.run(main, backend=backend)
    assert cancelled and use == [0, False]  # use 0 is free again, as if never asked: nothing held
    assert response.data == ["e1#0"]


def test_closing_serves_a_lookup_whose_caller_has_not_run_its_round() -> None:
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["f0"])

    async def main() -> tuple[bool, Any]:
        pipeline = OnlineAPI(ScriptedModel(), store, batch_size=64)
        await pipeline.request(Request("f0", namespace="warm"))
        op = pipeline.cacher._broker.lookup(Request("f0", namespace="x"), pipeline.cacher._key(Request("f0")))
        with anyio.fail_after(10):
            await pipeline.aclose()  # no hang: the lane serves it before it stops
        return op.done, await op.get()

    done, found = anyio.run(main)
    assert done and found.samples == [("f0#0", None)]


@pytest.mark.parametrize("when", ["during its view", "with the claims lock held after its view"])
def test_a_natively_cancelled_caller_leaves_no_claim_held_and_no_use_given_back_twice(when: str) -> None:
    """asyncio's own Task.cancel() (as asyncio.wait_for and asyncio.timeout send) reaches a
    caller that runs its own lookup round: whatever the round took comes back exactly once."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, ["g"], n=2)
    release = threading.Event()

    async def main() -> tuple[bool, list[list[bool]], list[int]]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("g", namespace="warm"))
            broker, key = pipeline.cacher._broker, pipeline.cacher._key(Request("g"))
            store.block = asyncio.Event()
            task = asyncio.ensure_future(pipeline.request(Request("g", request_id="q", namespace="x")))
            await wait_until(lambda: store.waiting)
            holder = None
            if when != "during its view":
                holder = _hold_claims_lock(broker, release)
                viewed = store.loop_views
                store.block.set()  # the view answers while a commit holds the lock
                await wait_until(lambda: store.loop_views > viewed)
            task.cancel()
            release.set()
            store.block.set()
            try:
                await task
                cancelled = False
            except asyncio.CancelledError:
                cancelled = True
            if holder is not None:
                holder.join()
            store.block = None
            both = await asyncio.gather(*(pipeline.request(Request("g", namespace="x")) for _ in range(2)))
            uses = [broker.claims.next_use("x", key, "q", 1) for _ in range(2)]
            return cancelled, [r.cached for r in both], uses

    cancelled, cached, uses = asyncio.run(main())
    assert cancelled
    assert cached == [[True], [True]]  # both stored samples are free again in this namespace
    assert uses == [0, 1]  # use 0 came back once: given back twice, both would be 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_batch_that_finds_the_lane_idle_is_one_round(backend: str) -> None:
    """A call that looks up many requests at once (the cacher's ``settle``) is served by one
    round, not one for its first request and one for the rest."""
    store = _LoopViews(MemoryStore())
    store.along = 8
    _fill(store, [f"h{i}" for i in range(4)])

    async def main() -> tuple[list[Any], list[list[str]], list[str]]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            await pipeline.request(Request("h0", namespace="warm"))
            store.loop_keys.clear()
            results = await pipeline.cacher.settle([Request(f"h{i}", namespace="x") for i in range(4)])
            return results, store.loop_keys, [pipeline.cacher._key(Request(f"h{i}")) for i in range(4)]

    results, views, keys = anyio.run(main, backend=backend)
    assert views == [keys] and [r.data for r in results] == [[f"h{i}#0"] for i in range(4)]


class _CountingRecords(_LoopViews):
    """A _LoopViews that counts the replay records committed."""

    records = 0

    def commit(self, appends: Any, records: Any = (), *args: Any, **kwargs: Any) -> Any:
        self.records += len(records)
        return self.inner.commit(appends, records, *args, **kwargs)


@pytest.mark.parametrize("case", ["the loop cannot view", "samples are to be read", "a commit holds the lock"])
def test_a_lone_replay_the_lane_serves_instead_of_its_caller_writes_no_record_again(case: str) -> None:
    """However a lone lookup ends up served by the lane, an exact replay by request_id leaves
    the records as they were: the use its caller's round took (if any) is taken back as if it
    had never been asked, not given back as a failed attempt's."""
    store = _CountingRecords(MemoryStore())
    store.along = 0 if case == "samples are to be read" else 8
    prompts = [f"k{i}" for i in range(4)]

    async def run(first: bool) -> list[Response]:
        async with OnlineAPI(ScriptedModel(), store, batch_size=64) as pipeline:
            out = [await pipeline.request(Request(prompts[0], namespace="warm"))]
            broker = pipeline.cacher._broker
            if not first and case == "the loop cannot view":
                store.refuse = True
            for i, prompt in enumerate(prompts):
                if not first and case == "a commit holds the lock":
                    store.block, store.waiting = asyncio.Event(), False
                    ask = asyncio.ensure_future(pipeline.request(Request(prompt, request_id=i, namespace="x")))
                    await wait_until(lambda: store.waiting)  # the caller's round has its use, and views
                    assert broker._mutex.acquire(timeout=10)  # as a commit would, meanwhile
                    viewed = store.loop_views
                    store.block.set()
                    store.block = None
                    await wait_until(lambda: store.loop_views > viewed and broker._driven is None)
                    broker._mutex.release()  # the lane serves it now
                    out.append(await ask)
                else:
                    out.append(await pipeline.request(Request(prompt, request_id=i, namespace="x")))
            store.refuse = False
            return out[1:]

    first = asyncio.run(run(True))
    written = store.records
    again = asyncio.run(run(False))
    assert [r.data for r in again] == [r.data for r in first] and all(r.cached == [True] for r in again)
    assert written == 4 and store.records == written  # the replay wrote no record again
