"""AsyncCacher on its own: fetch only what is missing, store everything paid for, never a gap."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import diskcache
import pytest
from _support import Extra, stored_count, GateModel, NamedModel, ShortOnceModel, gather, wait_until

from cachesaver.stages.batching import AsyncBatcher
from cachesaver.stages.caching import AsyncCacher
from cachesaver.stages.deduplication import AsyncDeduplicator
from cachesaver.errors import (
    BackendError,
    BatchRequestError,
    CacheMissError,
    ConfigurationError,
    IncompleteResponseError,
    PipelineClosedError,
    StoreError,
    UnserializableParameterError,
)
from cachesaver.keys import request_key
from cachesaver.models import ReplayOnlyModel, ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.store.diskcache import DiskcacheStore
from cachesaver.store.memory import MemoryStore
from cachesaver.typedefs import Batch, Request, Response


async def run_once(cache: Any, model: Any, *requests: Request, **options: Any) -> list[Response]:
    async with AsyncCacher(model, cache, **options) as cacher:
        return [await cacher.request(r) for r in requests]


async def test_a_miss_is_fetched_and_then_replayed(tmp_path: Path) -> None:
    request = Request("hi", n=2, request_id="a")
    model = ScriptedModel()
    (first,) = await run_once(tmp_path, model, request)
    assert first == Response(data=["hi#0", "hi#1"], cached=[False, False], duplicated=[False, False])
    replay_model = ScriptedModel()
    (second,) = await run_once(tmp_path, replay_model, request)
    assert second == Response(data=["hi#0", "hi#1"], cached=[True, True], duplicated=[False, False])
    assert replay_model.calls == 0


async def test_only_the_missing_samples_are_fetched(tmp_path: Path) -> None:
    await run_once(tmp_path, ScriptedModel(), Request("hi", n=1))
    model = ScriptedModel(sample=lambda request, k: f"second-run#{k}")
    (response,) = await run_once(tmp_path, model, Request("hi", n=3))
    assert model.n_requested == [2]
    assert response.data == ["hi#0", "second-run#0", "second-run#1"]
    assert response.cached == [True, False, False]
    assert stored_count(tmp_path, Request("hi")) == 3


async def test_a_short_answer_is_stored_and_then_an_incomplete_response_error(tmp_path: Path) -> None:
    model = ScriptedModel(short_by=1)
    request = Request("hi", n=3)
    with pytest.raises(IncompleteResponseError):
        await run_once(tmp_path, model, request)
    # asked 3 and got 2; any refetch asks only for the one missing sample (at most max_refetch=2)
    assert model.n_requested[0] == 3
    assert 2 <= len(model.n_requested) <= 3 and set(model.n_requested[1:]) == {1}
    assert stored_count(tmp_path, request) == 2
    full = ScriptedModel(sample=lambda request, k: f"later#{k}")
    (response,) = await run_once(tmp_path, full, request)
    assert full.n_requested == [1]
    assert response.data == ["hi#0", "hi#1", "later#0"]
    assert response.cached == [True, True, False]


async def test_a_short_answer_is_completed_by_fetching_the_rest(tmp_path: Path) -> None:
    model = ShortOnceModel(short_by=2)
    (response,) = await run_once(tmp_path, model, Request("hi", n=3))
    assert response.data == ["hi#0", "hi#1", "hi#2"]
    assert response.cached == [False, False, False]
    assert model.inner.n_requested == [1, 2]
    assert stored_count(tmp_path, Request("hi")) == 3


async def test_an_empty_answer_is_an_incomplete_response_error_and_stores_nothing(tmp_path: Path) -> None:
    model = ScriptedModel(short_by=5)
    with pytest.raises(IncompleteResponseError):
        await run_once(tmp_path, model, Request("hi", n=2))
    assert stored_count(tmp_path, Request("hi")) == 0


async def test_no_refetch_when_max_refetch_is_zero(tmp_path: Path) -> None:
    model = ScriptedModel(short_by=1)
    with pytest.raises(IncompleteResponseError):
        await run_once(tmp_path, model, Request("hi", n=2), max_refetch=0)
    assert model.n_requested == [2]
    assert stored_count(tmp_path, Request("hi")) == 1


class GenerousModel:
    """Returns ``extra`` samples more than asked."""

    def __init__(self, extra: int) -> None:
        self.extra = extra
        self.inner = ScriptedModel()

    async def request(self, request: Request) -> Response:
        return await self.inner.request(Request(request.prompt, n=request.n + self.extra))


async def test_extra_samples_are_stored_for_later(tmp_path: Path) -> None:
    model = GenerousModel(extra=2)
    async with AsyncCacher(model, tmp_path) as cacher:
        first = await cacher.request(Request("hi", n=1))
        assert first.data == ["hi#0"]
        assert stored_count(tmp_path, Request("hi")) == 3
        second = await cacher.request(Request("hi", n=2))
    assert second.data == ["hi#1", "hi#2"]
    assert second.cached == [True, True]
    assert model.inner.calls == 1


async def test_failures_are_never_stored(tmp_path: Path) -> None:
    model = ScriptedModel(fail={"bad"})
    with pytest.raises(BackendError):
        await run_once(tmp_path, model, Request("bad"))
    assert stored_count(tmp_path, Request("bad")) == 0
    retry = ScriptedModel()
    (response,) = await run_once(tmp_path, retry, Request("bad"))
    assert retry.calls == 1 and response.cached == [False]


async def test_one_failing_request_does_not_fail_its_batch(tmp_path: Path) -> None:
    model = ScriptedModel(fail={"bad"})
    batch = Batch(requests=[Request("good"), Request("bad"), Request("fine", n=2)])
    async with AsyncCacher(model, tmp_path) as cacher:
        results = await cacher.batch_request(batch, return_exceptions=True)
        with pytest.raises(BatchRequestError) as info:
            await cacher.batch_request(Batch(requests=[Request("good"), Request("bad")]))
    assert results[0].data == ["good#0"]
    assert isinstance(results[1], BackendError)
    assert results[2].data == ["fine#0", "fine#1"]
    assert isinstance(info.value.results[0], Response)
    assert isinstance(info.value.results[1], BackendError)
    assert info.value.exceptions == [info.value.results[1]]
    assert stored_count(tmp_path, Request("good")) == 2
    assert stored_count(tmp_path, Request("bad")) == 0


async def test_an_unserialisable_request_fails_alone_without_a_model_call(tmp_path: Path) -> None:
    model = ScriptedModel()
    batch = Batch(requests=[Extra("a", extra={1, 2}), Extra("b")])
    async with AsyncCacher(model, tmp_path) as cacher:
        results = await cacher.batch_request(batch, return_exceptions=True)
        with pytest.raises(UnserializableParameterError):
            await cacher.request(Extra("c", extra=float("nan")))
    assert isinstance(results[0], UnserializableParameterError)
    assert results[1].data == ["b#0"]
    assert model.requests_seen == 1


async def test_usage_is_stored_with_each_sample(tmp_path: Path) -> None:
    request = Request("two words", n=2)
    (fresh,) = await run_once(tmp_path, ScriptedModel(with_usage=True), request)
    expected = [{"prompt_tokens": 2, "completion_tokens": 2}] * 2
    assert fresh.usage == expected
    (replayed,) = await run_once(tmp_path, ScriptedModel(), request)
    assert replayed.cached == [True, True]
    assert replayed.usage == expected


async def test_samples_are_fresh_inside_a_run_under_concurrency(tmp_path: Path) -> None:
    await run_once(tmp_path, ScriptedModel(), Request("hi", n=7))  # some samples stored already
    model = ScriptedModel(sample=lambda request, k: f"new#{k}")
    async with AsyncCacher(model, tmp_path) as cacher:
        responses = await gather(*[lambda: cacher.request(Request("hi", n=3)) for _ in range(10)])
    samples = [s for r in responses for s in r.data]
    assert len(samples) == 30 and len(set(samples)) == 30
    assert {f"hi#{k}" for k in range(7)} <= set(samples)
    assert sum(c for r in responses for c in r.cached) == 7


async def test_a_passed_in_cache_stays_open_after_close(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    await run_once(cache, ScriptedModel(), Request("hi"))
    cache["mine"] = 1
    assert cache["mine"] == 1
    (again,) = await run_once(cache, ScriptedModel(), Request("hi"))
    assert again.cached == [True]
    cache.close()


async def test_a_caller_cancelled_mid_fetch_does_not_lose_the_samples(tmp_path: Path) -> None:
    model = GateModel()
    request = Request("hi", n=2, request_id="a")
    with anyio.fail_after(5):
        async with AsyncCacher(model, tmp_path) as cacher:
            async with anyio.create_task_group() as group:
                group.start_soon(cacher.request, request)
                await model.entered.wait()
                group.cancel_scope.cancel()
            model.release()
    assert model.finished == 1
    replay = ScriptedModel()
    (response,) = await run_once(tmp_path, replay, request)
    assert response.data == ["hi#0", "hi#1"] and response.cached == [True, True]
    assert replay.calls == 0


async def test_request_after_close_is_a_pipeline_closed_error(tmp_path: Path) -> None:
    cacher = AsyncCacher(ScriptedModel(), tmp_path)
    await cacher.request(Request("hi"))
    await cacher.aclose()
    with pytest.raises(PipelineClosedError):
        await cacher.request(Request("hi"))


@pytest.mark.parametrize(
    "arguments",
    [
        {"model": None, "cache": "DIR"},
        {"model": object(), "cache": "DIR"},
        {"model": ScriptedModel(), "cache": None},
        {"model": ScriptedModel(), "cache": object()},
        {"model": ScriptedModel(), "cache": "DIR", "max_refetch": -1},
        {"model": ScriptedModel(), "cache": "DIR", "model_id": ""},
        {"model": NamedModel(cache_identity=42), "cache": "DIR"},
    ],
    ids=["no-model", "not-a-model", "no-cache", "not-a-cache", "negative-refetch", "empty-model-id", "int-identity"],
)
def test_bad_configuration_is_a_configuration_error(tmp_path: Path, arguments: dict[str, Any]) -> None:
    if arguments["cache"] == "DIR":
        arguments = {**arguments, "cache": tmp_path}
    with pytest.raises(ConfigurationError):
        AsyncCacher(**arguments)


# -- the model is part of a sample's identity ------------------------------------------------


@pytest.mark.parametrize("attribute", ["model", "model_name", "cache_identity"])
async def test_switching_the_model_name_on_one_cache_is_a_miss(tmp_path: Path, attribute: str) -> None:
    request = Request("hi", n=2, request_id="a")
    first = NamedModel(**{attribute: "model-a"})
    (a,) = await run_once(tmp_path, first, request)
    other = NamedModel(**{attribute: "model-b"})
    (b,) = await run_once(tmp_path, other, request)
    assert other.calls == 1 and b.data == ["model-b:hi#0", "model-b:hi#1"] and b.cached == [False, False]
    again = NamedModel(**{attribute: "model-a"})
    (replayed,) = await run_once(tmp_path, again, request)
    assert again.calls == 0 and replayed.data == a.data == ["model-a:hi#0", "model-a:hi#1"]


async def test_renaming_the_model_class_alone_is_not_a_miss(tmp_path: Path) -> None:
    class OnlineLLM(NamedModel):
        pass

    class RenamedLLM(NamedModel):
        pass

    request = Request("hi", n=2, request_id="a")
    (first,) = await run_once(tmp_path, OnlineLLM(model="llama"), request)
    renamed = RenamedLLM(model="llama", label="renamed")
    (replayed,) = await run_once(tmp_path, renamed, request)
    assert renamed.calls == 0 and replayed.data == first.data and replayed.cached == [True, True]
    switched = RenamedLLM(model="mistral")  # the model string, not the class, is the identity
    (fresh,) = await run_once(tmp_path, switched, request)
    assert switched.calls == 1 and fresh.cached == [False, False]


async def test_model_id_overrides_what_the_model_says(tmp_path: Path) -> None:
    request = Request("hi", n=1, request_id="a")
    says_a = NamedModel(model="a")
    async with AsyncCacher(says_a, tmp_path, model_id="x") as cacher:
        assert cacher.model_identity == "x"
        written = await cacher.request(request)
    says_x = NamedModel(model="x")
    (replayed,) = await run_once(tmp_path, says_x, request)  # derives "x": the same keys
    assert says_x.calls == 0 and replayed.data == written.data == ["a:hi#0"]
    says_a_again = NamedModel(model="a")
    await run_once(tmp_path, says_a_again, request)
    assert says_a_again.calls == 1


async def test_the_identity_is_derived_through_the_stages_below_the_cacher(tmp_path: Path) -> None:
    from cachesaver.stages.deduplication import AsyncDeduplicator

    request = Request("hi", n=1)
    model = NamedModel(model="a")
    async with AsyncCacher(AsyncDeduplicator(model), tmp_path) as cacher:
        assert cacher.model_identity == "a"
        await cacher.request(request)
    other = NamedModel(model="b")
    async with AsyncCacher(AsyncDeduplicator(other), tmp_path) as cacher:
        await cacher.request(request)
    assert other.calls == 1


@pytest.mark.parametrize(
    "no_identity",
    [
        {"model": NamedModel(model="a"), "model_id": None},
        {"model": NamedModel(model="a", cache_identity=None)},
    ],
    ids=["model_id=None", "cache_identity=None"],
)
async def test_no_identity_keeps_the_keys_of_a_cache_written_before_model_identities(
    tmp_path: Path, no_identity: dict[str, Any]
) -> None:
    # A cache written before this change: samples under the request's own key, as
    # store_key(request, None) still writes them (tests/test_keys.py pins it).
    request = Request("hi", n=2, request_id="a")
    async with AsyncCacher(ScriptedModel(), tmp_path) as old:  # a shipped model: no identity
        written = await old.request(request)
    assert stored_count(tmp_path, request) == 2
    upgraded = NamedModel(model="a")  # derives "a": new keys, so a miss
    await run_once(tmp_path, upgraded, request)
    assert upgraded.calls == 1
    options = dict(no_identity)
    model = options.pop("model")
    async with AsyncCacher(model, tmp_path, **options) as cacher:
        assert cacher.model_identity is None
        replayed = await cacher.request(request)
    assert model.calls == 0 and replayed.data == written.data
# == late answers: what a sync model returned after its call was cancelled ===================


def test_the_cacher_is_the_late_sink_of_every_stage_below_it(tmp_path: Path) -> None:
    batcher = AsyncBatcher(ScriptedModel(), batch_size=2)
    deduplicator = AsyncDeduplicator(batcher)
    inner = AsyncCacher(deduplicator, tmp_path / "inner")
    outer = AsyncCacher(AsyncBatcher(inner, batch_size=2), tmp_path / "outer")
    assert deduplicator._late_answers == batcher._late_answers == inner._store_late
    assert outer.model._late_answers == outer._store_late  # an inner cacher keeps its own chain


async def test_late_answers_are_stored_as_spare_samples_but_errors_never(tmp_path: Path) -> None:
    kept, failed, short = Request("kept", n=2, request_id="a"), Request("failed"), Request("short", n=3)
    partial = IncompleteResponseError("2 of 3")
    partial.response = Response(data=["short#0", "short#1"])  # type: ignore[attr-defined]
    async with AsyncCacher(ScriptedModel(), tmp_path) as cacher:
        await cacher.request(Request("warm-up"))  # the store is running
        cacher._store_late(
            [kept, failed, short], [Response(data=["late#0", "late#1"]), BackendError("boom"), partial]
        )
    replay = ScriptedModel()
    async with AsyncCacher(replay, tmp_path) as cacher:
        assert (await cacher.request(kept)).data == ["late#0", "late#1"]
        assert (await cacher.request(Request("short", n=2))).data == ["short#0", "short#1"]
        assert replay.calls == 0
        await cacher.request(failed)
    assert replay.calls == 1  # the failure was not stored
    assert stored_count(tmp_path, kept) == 2


async def test_late_answers_after_the_cache_closed_fail_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cacher = AsyncCacher(ScriptedModel(), tmp_path)
    await cacher.request(Request("warm-up"))
    await cacher.aclose()
    with pytest.raises(StoreError, match="1 sample"):
        cacher._store_late([Request("late")], [Response(data=["late#0"])])
    assert any(r.levelname == "ERROR" and "could not store 1 sample" in r.getMessage() for r in caplog.records)


# -- a request waits for its key's fetch in flight for another namespace ----------------------------


async def test_a_request_of_another_namespace_waits_for_the_fetch_in_flight_and_reuses_it(tmp_path: Path) -> None:
    model = GateModel()
    async with OnlineAPI(model, tmp_path, batch_size=1) as pipeline:
        async with anyio.create_task_group() as group:
            first: list[Response] = []
            second: list[Response] = []

            async def ask(into: list[Response], namespace: str) -> None:
                into.append(await pipeline.request(Request("q", request_id="a", namespace=namespace)))

            group.start_soon(ask, first, "one")
            await model.entered.wait()  # the first request's fetch is in flight
            group.start_soon(ask, second, "two")
            await wait_until(lambda: len(pipeline.cacher._in_flight) == 1 and model.calls == 1)
            for _ in range(10):  # checkpoints: the second request reaches its lookup (or the model)
                await anyio.sleep(0)
            model.release()
    assert model.calls == 1  # the second reused what the first one fetched
    assert first[0].data == second[0].data and second[0].cached == [True]


async def test_a_request_of_the_same_namespace_does_not_wait_for_the_fetch_in_flight(tmp_path: Path) -> None:
    model = GateModel(open_at=2)  # opens only once two calls are in flight together
    async with OnlineAPI(model, tmp_path, batch_size=1) as pipeline:
        async with anyio.create_task_group() as group:
            group.start_soon(pipeline.request, Request("q", namespace="one"))
            await model.entered.wait()
            with anyio.fail_after(10):
                await pipeline.request(Request("q", namespace="one"))  # fresh samples: its own call
    assert model.calls == 2


async def test_a_request_asking_more_than_the_fetch_in_flight_does_not_wait_for_it(tmp_path: Path) -> None:
    model = GateModel(open_at=2)  # opens only once two calls are in flight together
    async with OnlineAPI(model, tmp_path, batch_size=1) as pipeline:
        async with anyio.create_task_group() as group:
            group.start_soon(pipeline.request, Request("q", n=1, namespace="one"))
            await model.entered.wait()
            with anyio.fail_after(10):
                await pipeline.request(Request("q", n=3, namespace="two"))  # more than 1: its own call
    assert model.calls == 2


# == modes ====================================================================================


async def record(cache: Any, *requests: Request) -> list[Response]:
    return await run_once(cache, ScriptedModel(), *requests)


@pytest.mark.parametrize("how", ["mode", "environment"])
async def test_replay_serves_what_is_stored_and_never_calls_the_model(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = [Request("kept", n=2, request_id="a", namespace="exp"), Request("other", request_id="b", namespace="exp")]
    first = await record(tmp_path, *stored)
    model = ScriptedModel()
    options: dict[str, Any] = {"mode": "replay"} if how == "mode" else {}
    if how == "environment":
        monkeypatch.setenv("CACHESAVER_MODE", "replay")
    async with AsyncCacher(model, tmp_path, **options) as cacher:
        assert cacher.mode == "replay"
        again = await cacher.batch_request(Batch(list(reversed(stored))))
        with pytest.raises(CacheMissError) as missed:
            await cacher.request(Request("never stored", request_id="c", namespace="exp"))
        with pytest.raises(CacheMissError) as short:
            await cacher.request(Request("kept", n=2, request_id="d", namespace="exp"))
        with pytest.raises(CacheMissError) as more:
            await cacher.request(Request("kept", n=3, request_id="e", namespace="other"))
    assert [r.data for r in reversed(again)] == [r.data for r in first]
    assert model.calls == 0
    assert "request_id 'c' in namespace 'exp'" in str(missed.value) and "nothing is stored under" in str(missed.value)
    # "kept" has 2 samples, both handed out in this run already.
    assert "all 2 samples stored under key" in str(short.value) and "already handed out in this run" in str(short.value)
    assert "holds 2 samples and the request asks 3" in str(more.value)
    assert stored_count(tmp_path, Request("never stored")) == 0  # replay stores nothing


async def test_a_replay_miss_names_the_nearest_stored_request_and_what_differs(tmp_path: Path) -> None:
    await record(tmp_path, Extra("Is 91 prime?", extra={"temperature": 0.5}))
    async with AsyncCacher(ScriptedModel(), tmp_path, mode="replay") as cacher:
        with pytest.raises(CacheMissError) as caught:
            await cacher.request(Extra("Is 91 prime?", extra={"temperature": 0.7}, request_id="q"))
    message = str(caught.value)
    assert "nearest stored: " + request_key(Extra("Is 91 prime?", extra={"temperature": 0.5}))[:12] in message
    assert "extra {\"temperature\":0.7} vs {\"temperature\":0.5}" in message


async def test_replay_works_on_a_read_only_store_and_leaves_nothing_behind(tmp_path: Path) -> None:
    store = MemoryStore()
    first = await record(store, Request("q", n=2, request_id="a", namespace="one"))
    store.writable = False  # a read-only cache, as a read-only directory opens
    model = ScriptedModel()
    async with AsyncCacher(model, store, mode="replay") as cacher:
        # Another namespace with a request id: its replay record cannot be written, and is not
        # kept for later either (no UnstoredSamplesError at close, no recovery file).
        served = await cacher.request(Request("q", n=2, request_id="a", namespace="two"))
        with pytest.raises(CacheMissError):
            await cacher.request(Request("never", request_id="z"))
        assert cacher.unstored_samples == 0
    assert served.data == first[0].data and served.cached == [True, True] and model.calls == 0


async def test_refresh_ignores_stored_samples_and_a_later_replay_gets_the_new_ones(tmp_path: Path) -> None:
    request = Request("q", n=2, request_id="a", namespace="ns")
    (old,) = await record(tmp_path, request)
    model = ScriptedModel(sample=lambda r, k: f"new-{k}")
    async with AsyncCacher(model, tmp_path, mode="refresh") as cacher:
        fresh = await cacher.request(request)
    assert fresh.data == ["new-0", "new-1"] and fresh.cached == [False, False] and model.calls == 1
    assert stored_count(tmp_path, request) == 4  # stored after the old ones
    replay = ScriptedModel()
    (replayed,) = await run_once(tmp_path, replay, request, mode="replay")
    assert replayed.data == fresh.data and replay.calls == 0
    assert old.data != fresh.data


async def test_bypass_calls_the_model_and_stores_nothing(tmp_path: Path) -> None:
    request = Request("q", n=2, request_id="a", namespace="ns")
    await record(tmp_path, request)
    model = ScriptedModel()
    async with AsyncCacher(model, tmp_path, mode="bypass") as cacher:
        single = await cacher.request(request)
        batch = await cacher.batch_request(Batch([Request("new", request_id="b"), request]))
    assert single.cached == [False, False] and all(not any(r.cached) for r in batch)
    assert model.batch_sizes == [1, 2]
    assert stored_count(tmp_path, request) == 2 and stored_count(tmp_path, Request("new")) == 0


async def test_bypass_serves_a_read_only_store_from_the_model(tmp_path: Path) -> None:
    store = MemoryStore()
    store.writable = False
    model = ScriptedModel()
    (response,) = await run_once(store, model, Request("q", n=2), mode="bypass")
    assert response.data == ["q#0", "q#1"] and model.calls == 1


async def test_a_replay_only_model_replays_and_refuses_modes_that_need_a_model(tmp_path: Path) -> None:
    assert AsyncCacher(ReplayOnlyModel(), MemoryStore()).mode == "replay"
    assert AsyncCacher(ReplayOnlyModel(), MemoryStore(), mode="record").mode == "replay"
    for mode in ("refresh", "bypass"):
        with pytest.raises(ConfigurationError, match="ReplayOnlyModel only replays"):
            AsyncCacher(ReplayOnlyModel(), MemoryStore(), mode=mode)


async def test_a_replay_only_models_misses_are_explained_too(tmp_path: Path) -> None:
    await record(tmp_path, Request("kept", n=1, request_id="a"))
    replay = ReplayOnlyModel()
    async with AsyncCacher(replay, tmp_path) as cacher:
        with pytest.raises(CacheMissError) as caught:
            await cacher.request(Request("kept", n=3, request_id="b"))
    assert "2 more needed" in str(caught.value)  # the model's own message
    assert "holds 1 sample and the request asks 3" in str(caught.value)  # and why
    assert [r.request_id for r in replay.misses] == ["b"]


# == explain_miss =============================================================================


async def test_explain_miss_says_a_stored_request_would_be_served(tmp_path: Path) -> None:
    await record(tmp_path, Request("kept", n=2, request_id="a"))
    async with AsyncCacher(ScriptedModel(), tmp_path) as cacher:
        why = await cacher.explain_miss(Request("kept", n=2, request_id="a"))
        assert why.hit and why.stored == 2 and "would be served" in str(why)
        await cacher.request(Request("kept", n=1, request_id="a"))  # hands one out
        why = await cacher.explain_miss(Request("kept", n=2, request_id="a"))
    assert not why.hit and (why.stored, why.handed_out, why.free) == (2, 1, 1)
    assert "1 of the 2 samples stored under key" in str(why)


async def test_explain_miss_finds_a_hit_in_another_namespace(tmp_path: Path) -> None:
    await record(tmp_path, Request("kept", n=3, request_id="q1", namespace="run-1"))
    async with AsyncCacher(ScriptedModel(), tmp_path) as cacher:
        why = await cacher.explain_miss(Request("kept", n=4, request_id="q1", namespace="run-2"))
    assert why.elsewhere == (("run-1", 3),)
    assert "it is a hit in another namespace: request_id 'q1' has a replay record in 'run-1' with 3 samples" in str(why)


async def test_explain_miss_names_a_different_model_identity(tmp_path: Path) -> None:
    await run_once(tmp_path, ScriptedModel(), Request("q"), model_id="model-a")
    async with AsyncCacher(ScriptedModel(), tmp_path, model_id="model-b") as cacher:
        why = await cacher.explain_miss(Request("q"))
    assert [n.differences for n in why.nearest] == [("model identity differs: 'model-b' vs 'model-a'",)]


async def test_explain_miss_after_close_is_a_store_error(tmp_path: Path) -> None:
    cacher = AsyncCacher(ScriptedModel(), tmp_path)
    await cacher.aclose()
    with pytest.raises(StoreError):
        await cacher.explain_miss(Request("q"))
