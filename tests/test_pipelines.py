"""OnlineAPI / LocalAPI end to end: the issue's semantics 1-11, the seed notebook flow, trio.

A "run" is one pipeline object. Every test uses its own cache and a scripted model that records
what it was asked. The tests of the promises take the ``cache`` fixture (tests/conftest.py) and
run once per engine: ``[diskcache]`` on a directory under tmp_path, ``[memory]`` on one
MemoryStore shared by the test's pipelines. Tests about diskcache itself (its files, a full
disk, a Cache passed in, its internals) take ``tmp_path``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List

import anyio
import diskcache
import pytest
import trio
from _support import (
    Extra,
    stored_count,
    BatchOnlyModel,
    DecodingRequest,
    GateModel,
    JitterModel,
    NamedModel,
    RecordingLedger,
    ShortOnceModel,
    SingleOnlyModel,
    SyncModel,
    gather,
    wait_until,
)

from cachesaver.errors import (
    UnstoredSamplesError,
    BackendError,
    BatchRequestError,
    CacheSaverError,
    ConfigurationError,
    CorruptStoreError,
    IncompleteResponseError,
    InvalidRequestError,
    PipelineClosedError,
    UnserializableParameterError,
)
from cachesaver.store.claims import RunClaims
from cachesaver.keys import request_key
from cachesaver.ledger import Ledger
from cachesaver.models import ScriptedModel
from cachesaver.pipelines import LocalAPI, OnlineAPI
from cachesaver.store.diskcache import DiskcacheStore
from cachesaver.typedefs import Batch, BatchRequestModel, Request, Response, SingleRequestModel


async def run_sequentially(cache: Any, model: Any, requests: list[Request], batch_size: int = 1) -> list[Response]:
    async with OnlineAPI(model, cache, batch_size=batch_size, timeout=0.001) as pipeline:
        return [await pipeline.request(r) for r in requests]


async def run_concurrently(
    cache: Any, model: Any, requests: list[Request], batch_size: int, seed: int = 0, stagger_s: float = 0.0
) -> list[Response]:
    """Issue ``requests`` concurrently (each after a seeded random delay below ``stagger_s``)."""
    rng = random.Random(seed)
    delays = [rng.random() * stagger_s for _ in requests]
    async with OnlineAPI(model, cache, batch_size=batch_size, timeout=0.002) as pipeline:

        async def one(i: int) -> Response:
            if stagger_s:
                await anyio.sleep(delays[i])
            return await pipeline.request(requests[i])

        return await gather(*[lambda i=i: one(i) for i in range(len(requests))])


def all_samples(responses: list[Response]) -> list[Any]:
    return [s for r in responses for s in r.data]


# == 1. i.i.d. inside a namespace ==========================================================


async def test_the_same_request_id_twice_gets_fresh_samples(cache: Any) -> None:
    request = Request("hi", n=2, request_id="sth1")
    first, second = await run_sequentially(cache, ScriptedModel(), [request, request])
    assert first.data == ["hi#0", "hi#1"]
    assert second.data == ["hi#2", "hi#3"]
    assert second.cached == [False, False]


async def test_duplicates_within_one_batch_get_distinct_samples(cache: Any) -> None:
    model = ScriptedModel()
    batch = Batch(requests=[Request("hi", request_id="same"), Request("hi", n=2, request_id="same"), Request("hi")])
    async with OnlineAPI(model, cache, batch_size=8, timeout=0.001) as pipeline:
        responses = await pipeline.batch_request(batch)
    assert sorted(all_samples(responses)) == ["hi#0", "hi#1", "hi#2", "hi#3"]
    assert model.requests_seen == 1 and model.n_requested == [4]


async def test_duplicates_across_concurrent_batches_get_distinct_samples(cache: Any) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, cache, batch_size=2, timeout=0.001) as pipeline:
        results = await gather(
            *[lambda: pipeline.batch_request(Batch(requests=[Request("hi"), Request("other", n=2)])) for _ in range(5)]
        )
    samples = [s for batch in results for s in all_samples(batch)]
    assert len(samples) == len(set(samples)) == 15


@pytest.mark.parametrize("batch_size", [1, 16])
async def test_concurrent_requests_never_share_a_stored_sample(cache: Any, batch_size: int) -> None:
    await run_sequentially(cache, ScriptedModel(), [Request("p0", n=10), Request("p1", n=3)])
    model = JitterModel(ScriptedModel(sample=lambda r, k: f"{r.prompt}-new#{k}"), seed=3, max_s=0.003)
    rng = random.Random(1)
    requests = [
        Request(f"p{rng.randrange(2)}", n=rng.randrange(1, 4), request_id=rng.choice([None, "x", "y", 7]))
        for _ in range(60)
    ]
    responses = await run_concurrently(cache, model, requests, batch_size, seed=2, stagger_s=0.005)
    samples = all_samples(responses)
    assert len(samples) == len(set(samples)) == sum(r.n for r in requests)
    assert [len(r.data) for r in responses] == [r.n for r in requests]
    assert {f"p0#{k}" for k in range(10)} | {f"p1#{k}" for k in range(3)} <= set(samples)


async def test_a_run_hands_out_stored_samples_before_fetching_new_ones(cache: Any) -> None:
    await run_sequentially(cache, ScriptedModel(), [Request("hi", n=3)])
    model = ScriptedModel(sample=lambda r, k: f"new#{k}")
    first, second = await run_sequentially(cache, model, [Request("hi", n=2), Request("hi", n=2)])
    assert first.data == ["hi#0", "hi#1"] and first.cached == [True, True]
    assert second.data == ["hi#2", "new#0"] and second.cached == [True, False]
    assert model.n_requested == [1]


# == 2. exact replay =======================================================================


def replay_workload() -> list[Request]:
    rng = random.Random(11)
    requests = []
    for i in range(48):
        prompt = f"p{rng.randrange(5)}"
        requests.append(DecodingRequest(prompt, n=rng.randrange(1, 4), request_id=f"id{i}", namespace="ns"))
    return requests


@pytest.mark.parametrize(
    ("first_batch_size", "second_batch_size", "seed"),
    [(4, 1, 1), (1, 16, 2), (7, 3, 3)],
)
async def test_replay_is_exact_whatever_order_batch_size_or_finish_order(
    cache: Any, first_batch_size: int, second_batch_size: int, seed: int
) -> None:
    requests = replay_workload()
    first_model = JitterModel(ScriptedModel(), seed=seed, max_s=0.004)
    first = await run_concurrently(cache, first_model, requests, first_batch_size, seed=seed, stagger_s=0.004)
    order = list(range(len(requests)))
    random.Random(seed + 100).shuffle(order)
    replay_model = ScriptedModel()
    second = await run_concurrently(
        cache, JitterModel(replay_model, seed=seed + 7), [requests[i] for i in order], second_batch_size,
        seed=seed + 1, stagger_s=0.004,
    )
    assert replay_model.calls == 0
    for position, i in enumerate(order):
        assert second[position].data == first[i].data, requests[i]
        assert second[position].cached == [True] * requests[i].n
        assert second[position].duplicated == [False] * requests[i].n


async def test_replay_of_a_request_id_used_several_times(cache: Any) -> None:
    requests = [Request("hi", n=2, request_id="a"), Request("hi", request_id="a"), Request("hi", n=3, request_id="a")]
    first = await run_sequentially(cache, ScriptedModel(), requests)
    replay_model = ScriptedModel()
    second = await run_sequentially(cache, replay_model, requests)
    assert [r.data for r in second] == [r.data for r in first]
    assert replay_model.calls == 0


async def test_replay_does_not_depend_on_batch_request_or_request(cache: Any) -> None:
    requests = [Request(f"p{i % 2}", n=1 + i % 2, request_id=i) for i in range(6)]
    first = await run_sequentially(cache, ScriptedModel(), requests)
    replay_model = ScriptedModel()
    async with OnlineAPI(replay_model, cache, batch_size=3) as pipeline:
        second = await pipeline.batch_request(Batch(requests=list(reversed(requests))))
    assert [r.data for r in reversed(second)] == [r.data for r in first]
    assert replay_model.calls == 0


async def test_replay_with_many_ids_and_samples_per_key(cache: Any) -> None:
    requests = [Request("hi", n=1 + i % 3, request_id=f"r{i}") for i in range(60)]
    first = await run_concurrently(cache, ScriptedModel(), requests, batch_size=8)
    assert len(set(all_samples(first))) == sum(r.n for r in requests)
    shuffled = list(range(60))
    random.Random(4).shuffle(shuffled)
    replay_model = ScriptedModel()
    second = await run_concurrently(cache, replay_model, [requests[i] for i in shuffled], batch_size=5)
    assert replay_model.calls == 0
    assert [r.data for r in second] == [first[i].data for i in shuffled]


async def test_replay_of_an_identified_request_is_exact_even_after_an_unidentified_one(cache: Any) -> None:
    identified = Request("hi", request_id="a")
    anonymous = Request("hi")
    first = await run_sequentially(cache, ScriptedModel(), [identified, anonymous])
    replay_model = ScriptedModel()
    second = await run_sequentially(cache, replay_model, [anonymous, identified])
    assert replay_model.calls == 0
    assert second[1].data == first[0].data  # the identified request gets exactly what it got
    assert second[0].data == first[1].data


async def test_a_replay_run_serves_replays_first_then_fetches_what_is_new(cache: Any) -> None:
    await run_sequentially(cache, ScriptedModel(), [Request("hi", n=2, request_id="a")])
    model = ScriptedModel(sample=lambda r, k: f"new#{k}")
    replayed, extended = await run_sequentially(
        cache, model, [Request("hi", n=2, request_id="a"), Request("hi", n=2, request_id="b")]
    )
    assert replayed.data == ["hi#0", "hi#1"]
    assert extended.data == ["new#0", "new#1"]
    assert model.n_requested == [2]


# == 3. reuse across namespaces =============================================================


async def test_another_namespace_in_a_new_run_reuses_stored_samples(cache: Any) -> None:
    requests = [Request(f"p{i}", n=2, request_id=f"id{i}", namespace="a") for i in range(4)]
    first = await run_concurrently(cache, ScriptedModel(), requests, batch_size=2)
    model = ScriptedModel()
    other = [Request(r.prompt, n=r.n, request_id=r.request_id, namespace="b") for r in requests]
    second = await run_concurrently(cache, model, other, batch_size=3)
    assert model.calls == 0
    assert [r.data for r in second] == [r.data for r in first]
    assert all(all(r.cached) for r in second)


async def test_another_namespace_in_the_same_run_reuses_stored_samples(cache: Any) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, cache, batch_size=1) as pipeline:
        in_a = await pipeline.request(Request("hi", n=3, namespace="a"))
        in_b = await pipeline.request(Request("hi", n=3, namespace="b"))
        again_a = await pipeline.request(Request("hi", n=1, namespace="a"))
    assert in_b.data == in_a.data and in_b.cached == [True] * 3
    assert again_a.data == ["hi#3"]
    assert model.calls == 2


async def test_another_namespace_asking_for_more_fetches_only_the_rest(cache: Any) -> None:
    await run_sequentially(cache, ScriptedModel(), [Request("hi", n=2, namespace="a")])
    model = ScriptedModel(sample=lambda r, k: f"new#{k}")
    (response,) = await run_sequentially(cache, model, [Request("hi", n=5, namespace="b")])
    assert response.data == ["hi#0", "hi#1", "new#0", "new#1", "new#2"]
    assert model.n_requested == [3]


async def test_identical_requests_in_different_namespaces_are_not_merged(cache: Any) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, cache, batch_size=4) as pipeline:
        a, b = await gather(
            lambda: pipeline.request(Request("hi", namespace="a")),
            lambda: pipeline.request(Request("hi", namespace="b")),
        )
    assert a.duplicated == [False] and b.duplicated == [False]
    assert model.requests_seen == 2


# == 4. unstable or missing ids replay cheaply ==============================================


async def test_changed_request_ids_replay_with_zero_calls(cache: Any) -> None:
    requests = [Request(f"p{i % 3}", n=2, request_id=f"run1-{i}") for i in range(9)]
    await run_concurrently(cache, ScriptedModel(), requests, batch_size=4)
    model = ScriptedModel()
    changed = [Request(r.prompt, n=r.n, request_id=f"run2-{i}") for i, r in enumerate(requests)]
    second = await run_concurrently(cache, model, changed, batch_size=2)
    assert model.calls == 0
    assert all(all(r.cached) for r in second)
    assert len(set(all_samples(second))) == 18


async def test_none_request_ids_replay_with_zero_calls(cache: Any) -> None:
    requests = [Request(f"p{i % 3}", n=1 + i % 2) for i in range(9)]
    first = await run_concurrently(cache, ScriptedModel(), requests, batch_size=4)
    model = ScriptedModel()
    second = await run_concurrently(cache, model, requests, batch_size=1)
    assert model.calls == 0
    assert sorted(all_samples(second)) == sorted(all_samples(first))


async def test_asking_for_more_than_stored_fetches_only_the_excess(cache: Any) -> None:
    await run_sequentially(cache, ScriptedModel(), [Request("hi", n=2), Request("hi", n=2)])
    model = ScriptedModel(sample=lambda r, k: f"new#{k}")
    await run_sequentially(cache, model, [Request("hi", n=3), Request("hi", n=3)])
    assert model.n_requested == [2]


# == 5. fetch only what is missing ==========================================================


async def test_one_of_three_stored_asks_the_model_for_two(cache: Any) -> None:
    request = Request("hi", n=1, request_id="a")
    await run_sequentially(cache, ScriptedModel(), [request])
    model = ScriptedModel()
    (response,) = await run_sequentially(cache, model, [Request("hi", n=3, request_id="a")])
    assert model.n_requested == [2]
    assert response.cached == [True, False, False]
    assert response.data[0] == "hi#0"
    assert stored_count(cache, request) == 3


async def test_a_short_model_answer_is_stored_and_the_request_fails(cache: Any) -> None:
    model = ScriptedModel(short_by=1)
    async with OnlineAPI(model, cache, batch_size=2, timeout=0.001) as pipeline:
        results = await pipeline.batch_request(
            Batch(requests=[Request("short", n=3), Request("fine", n=1)]), return_exceptions=True
        )
    assert isinstance(results[0], IncompleteResponseError)
    # "fine" asked 1 and got 0 samples: that is incomplete too, never an empty Response
    assert isinstance(results[1], IncompleteResponseError)
    assert stored_count(cache, Request("short")) == 2
    full = ScriptedModel(sample=lambda r, k: f"new#{k}")
    (response,) = await run_sequentially(cache, full, [Request("short", n=3)])
    assert response.data == ["short#0", "short#1", "new#0"]
    assert full.n_requested == [1]


async def test_a_short_model_answer_is_completed_by_refetching(cache: Any) -> None:
    model = ShortOnceModel(short_by=2)
    (response,) = await run_sequentially(cache, model, [Request("hi", n=4)])
    assert response.data == ["hi#0", "hi#1", "hi#2", "hi#3"]
    assert model.inner.n_requested == [2, 2]


async def test_a_response_never_has_a_gap(cache: Any) -> None:
    model = ScriptedModel(short_by=1)
    async with OnlineAPI(model, cache, batch_size=4, timeout=0.001) as pipeline:
        results = await gather(
            *[lambda i=i: pipeline.batch_request(Batch(requests=[Request("hi", n=2)]), return_exceptions=True)
              for i in range(4)]
        )
    for (result,) in results:
        assert isinstance(result, IncompleteResponseError) or len(result.data) == 2


# == 6. duplicates merge; batching ==========================================================


async def test_identical_requests_in_flight_cost_one_upstream_call(cache: Any) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, cache, batch_size=8, timeout=0.001) as pipeline:
        responses = await gather(
            lambda: pipeline.request(Request("hi", n=1, request_id="a")),
            lambda: pipeline.request(Request("hi", n=2, request_id="b")),
            lambda: pipeline.request(Request("hi", n=3, request_id="c")),
        )
    assert model.requests_seen == 1
    assert model.n_requested == [6]
    assert [r.duplicated for r in responses] == [[False], [True, True], [True, True, True]]
    assert all(not any(r.cached) for r in responses)
    assert sorted(all_samples(responses)) == [f"hi#{k}" for k in range(6)]


async def test_identical_requests_waiting_in_one_batch_window_merge(cache: Any) -> None:
    """A request that arrives while an identical one still waits in the batch window is in
    flight together with it: the two cost one upstream request with n summed."""
    model = ScriptedModel()
    pipeline = OnlineAPI(model, cache, batch_size=100, timeout=30)
    got: dict[str, Response] = {}

    async def ask(request: Request) -> None:
        got[str(request.request_id)] = await pipeline.request(request)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(ask, Request("hi", request_id="first"))
            await wait_until(lambda: len(pipeline.batcher._pending) == 1)  # a later pass, same window
            group.start_soon(ask, Request("hi", request_id="second"))
            group.start_soon(ask, Request("other"))
            await wait_until(lambda: len(pipeline.batcher._pending) == 3)
            assert model.calls == 0  # all three still wait in the window
            await pipeline.aclose()  # sends the window's batch now
    assert model.batch_sizes == [2], model.log
    assert sorted(model.n_requested) == [1, 2]
    assert got["first"].data == ["hi#0"] and got["first"].duplicated == [False]
    assert got["second"].data == ["hi#1"] and got["second"].duplicated == [True]


async def test_a_cache_hit_does_not_wait_for_the_batch_window(cache: Any) -> None:
    await run_sequentially(cache, ScriptedModel(), [Request("stored", n=2)])
    model = ScriptedModel()
    pipeline = OnlineAPI(model, cache, batch_size=100, timeout=30)
    async with anyio.create_task_group() as group:
        group.start_soon(pipeline.request, Request("a miss, waiting for its window"))
        await wait_until(lambda: bool(pipeline.batcher._pending))
        with anyio.fail_after(1):  # deadlock guard: the hit must not wait 30 s
            hit = await pipeline.request(Request("stored", n=2))
        assert model.calls == 0
        with anyio.fail_after(2):
            await pipeline.aclose()  # sends the waiting batch at once
    assert hit.cached == [True, True]
    assert model.calls == 1


async def test_a_cache_hit_in_another_namespace_does_not_wait_for_a_fetch_in_its_batch_window(cache: Any) -> None:
    # The key is being fetched for namespace "a" (its third sample, in a 30 s window); a request
    # of namespace "b" whose samples are stored and free there is a hit and must not wait for it.
    await run_sequentially(cache, ScriptedModel(), [Request("stored", n=2)])
    model = ScriptedModel()
    pipeline = OnlineAPI(model, cache, batch_size=100, timeout=30)
    async with anyio.create_task_group() as group:
        group.start_soon(pipeline.request, Request("stored", n=3, namespace="a"))
        await wait_until(lambda: bool(pipeline.batcher._pending))
        with anyio.fail_after(1):  # deadlock guard: the hit must not wait 30 s
            hit = await pipeline.request(Request("stored", n=1, namespace="b"))
        assert model.calls == 0
        with anyio.fail_after(2):
            await pipeline.aclose()
    assert hit.cached == [True] and hit.data == ["stored#0"]
    assert model.calls == 1


async def test_several_batches_are_in_flight_at_once(cache: Any) -> None:
    model = GateModel(open_at=3)  # holds every call until three run together
    with anyio.fail_after(5):
        async with OnlineAPI(model, cache, batch_size=2, timeout=30) as pipeline:
            responses = await pipeline.batch_request(Batch(requests=[Request(f"p{i}") for i in range(6)]))
    assert model.peak_in_flight == 3
    assert [r.data for r in responses] == [[f"p{i}#0"] for i in range(6)]


async def test_several_batches_in_flight_with_a_slow_model(cache: Any) -> None:
    model = ScriptedModel(latency_s=0.05)
    async with OnlineAPI(model, cache, batch_size=2, timeout=0.001) as pipeline:
        await gather(*[lambda i=i: pipeline.request(Request(f"p{i}")) for i in range(8)])
    assert model.peak_in_flight >= 2
    assert max(model.batch_sizes) <= 2


async def test_batches_never_exceed_batch_size(cache: Any) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, cache, batch_size=5, timeout=0.002) as pipeline:
        await gather(*[lambda i=i: pipeline.request(Request(f"p{i}")) for i in range(23)])
    assert max(model.batch_sizes) <= 5
    assert sum(model.batch_sizes) == 23


# == 7. nothing paid for is lost ============================================================


async def test_samples_of_a_cancelled_caller_are_stored(cache: Any) -> None:
    model = GateModel()
    request = Request("hi", n=2, request_id="cancelled")
    with anyio.fail_after(5):
        async with OnlineAPI(model, cache, batch_size=1) as pipeline:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(pipeline.request, request)
                    await model.entered.wait()
                    scope.cancel()
            assert scope.cancelled_caught
            model.release()
    assert model.finished == 1
    replay = ScriptedModel()
    (response,) = await run_sequentially(cache, replay, [request])
    assert replay.calls == 0
    assert response.data == ["hi#0", "hi#1"] and response.cached == [True, True]


async def test_a_failing_sibling_does_not_lose_the_others_samples(cache: Any) -> None:
    model = ScriptedModel(fail={"bad"})
    batch = Batch(requests=[Request("good", n=2, request_id="g"), Request("bad", request_id="b")])
    async with OnlineAPI(model, cache, batch_size=2, timeout=0.001) as pipeline:
        with pytest.raises(BatchRequestError) as info:
            await pipeline.batch_request(batch)
    good, bad = info.value.results
    assert good.data == ["good#0", "good#1"]
    assert isinstance(bad, BackendError)
    assert model.batch_sizes == [2]
    replay = ScriptedModel()
    async with OnlineAPI(replay, cache, batch_size=2, timeout=0.001) as pipeline:
        results = await pipeline.batch_request(batch, return_exceptions=True)
    assert results[0].data == good.data and results[0].cached == [True, True]
    assert results[1].cached == [False]  # never stored: asked again
    assert replay.n_requested == [1]


async def test_failures_are_never_stored(cache: Any) -> None:
    model = ScriptedModel(fail={"bad"})
    async with OnlineAPI(model, cache, batch_size=1) as pipeline:
        for _ in range(3):
            with pytest.raises(BackendError):
                await pipeline.request(Request("bad", n=2))
    assert stored_count(cache, Request("bad")) == 0
    assert model.calls == 3


async def test_closing_with_requests_in_flight_finishes_and_stores_them(cache: Any) -> None:
    model = ScriptedModel(latency_s=0.05)
    requests = [Request(f"p{i}", n=2, request_id=i) for i in range(5)]
    got: dict[int, Response] = {}
    pipeline = OnlineAPI(model, cache, batch_size=2, timeout=0.001)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for i, request in enumerate(requests):

                async def ask(i: int = i, request: Request = request) -> None:
                    got[i] = await pipeline.request(request)

                group.start_soon(ask)
            await wait_until(lambda: model.in_flight > 0)
            await pipeline.aclose()
    assert sorted(got) == list(range(5))
    replay = ScriptedModel()
    second = await run_sequentially(cache, replay, requests)
    assert replay.calls == 0
    assert [r.data for r in second] == [got[i].data for i in range(5)]


class BatchRejectingModel:
    """A backend whose batch call fails as a whole when one request is bad, as HTTP batch APIs do,
    but which also answers requests one at a time."""

    def __init__(self) -> None:
        self.inner = ScriptedModel(fail={"bad"})
        self.batch_calls = 0

    async def request(self, request: Request) -> Response:
        return await self.inner.request(request)

    async def batch_request(self, batch: Batch) -> List[Response]:
        self.batch_calls += 1
        if any(r.prompt == "bad" for r in batch.requests):
            raise BackendError("the whole batch was rejected because of one request")
        return await self.inner.batch_request(batch)


async def test_a_batch_call_that_raises_for_one_bad_request_does_not_fail_the_others(cache: Any) -> None:
    model = BatchRejectingModel()
    batch = Batch(requests=[Request("a"), Request("bad"), Request("c", n=2)])
    async with OnlineAPI(model, cache, batch_size=3, timeout=0.001) as pipeline:
        results = await pipeline.batch_request(batch, return_exceptions=True)
    assert results[0].data == ["a#0"]
    assert isinstance(results[1], BackendError)
    assert results[2].data == ["c#0", "c#1"]
    assert model.batch_calls == 1


class LocalBatchRejectingModel:
    """A local batch model (no ``request``) whose batch call fails as a whole because of one
    request; records each batch it was asked for and the peak number of calls at once."""

    def __init__(self) -> None:
        self.inner = ScriptedModel()
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    async def batch_request(self, batch: Batch) -> List[Response]:
        self.batches.append([r.prompt for r in batch.requests])
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await anyio.sleep(0)
            if any(r.prompt == "bad" for r in batch.requests):
                raise RuntimeError("out of memory on one prompt")
            return await self.inner.batch_request(batch)
        finally:
            self.in_flight -= 1


async def test_a_batch_only_model_whose_batch_raises_fails_only_the_bad_request(cache: Any) -> None:
    model = LocalBatchRejectingModel()
    batch = Batch(requests=[Request("a"), Request("bad"), Request("c", n=2)])
    with anyio.fail_after(5):
        async with LocalAPI(model, cache, batch_size=3, timeout=0.001) as pipeline:
            results = await pipeline.batch_request(batch, return_exceptions=True)
    assert results[0].data == ["a#0"] and results[0].cached == [False]
    assert isinstance(results[1], RuntimeError)
    assert results[2].data == ["c#0", "c#1"]
    # One batch (in the reorderer's order), then each request alone as a batch of one, one at a time.
    first, *alone = model.batches
    assert sorted(first) == ["a", "bad", "c"]
    assert alone == [[prompt] for prompt in first]
    assert model.peak_in_flight == 1
    assert stored_count(cache, Request("bad")) == 0
    assert stored_count(cache, Request("a")) == 1 and stored_count(cache, Request("c")) == 2


class PerEntryFailingModel:
    """A batch model that reports a failed request as an exception instance in its answer list."""

    def __init__(self) -> None:
        self.inner = ScriptedModel()

    async def batch_request(self, batch: Batch) -> List[Any]:
        answers: List[Any] = []
        for request in batch.requests:
            if request.prompt == "bad":
                answers.append(BackendError("this one failed", status=400))
            else:
                answers.append(await self.inner.request(request))
        return answers


@pytest.mark.parametrize("pipeline_class", [OnlineAPI, LocalAPI])
async def test_an_exception_entry_in_a_batch_answer_fails_only_its_request(cache: Any, pipeline_class: Any) -> None:
    async with pipeline_class(PerEntryFailingModel(), cache, batch_size=3, timeout=0.001) as pipeline:
        results = await pipeline.batch_request(
            Batch(requests=[Request("a"), Request("bad"), Request("c")]), return_exceptions=True
        )
    assert results[0].data == ["a#0"] and results[2].data == ["c#0"]
    assert isinstance(results[1], BackendError) and results[1].status == 400
    assert stored_count(cache, Request("bad")) == 0


class MiscountingModel:
    async def batch_request(self, batch: Batch) -> List[Response]:
        return [Response(data=["only one answer"])]


class WrongTypeModel:
    async def request(self, request: Request) -> Any:
        return ["not", "a", "Response"]


async def test_a_model_answering_the_wrong_shape_is_a_backend_error(cache: Any) -> None:
    async with OnlineAPI(MiscountingModel(), cache, batch_size=2, timeout=0.001) as pipeline:
        results = await pipeline.batch_request(Batch(requests=[Request("a"), Request("b")]), return_exceptions=True)
    assert all(isinstance(r, BackendError) for r in results)
    async with OnlineAPI(WrongTypeModel(), cache, batch_size=1) as pipeline:
        with pytest.raises(BackendError):
            await pipeline.request(Request("a"))


# == 8. canonical keys through the pipeline ================================================


async def test_a_conversation_in_another_order_is_not_served_from_the_cache(cache: Any) -> None:
    user = {"role": "user", "content": "Is it raining?"}
    assistant = {"role": "assistant", "content": "Yes."}
    model = ScriptedModel(sample=lambda r, k: f"{len(r.prompt)}:{r.prompt[0]['role']}#{k}")
    async with OnlineAPI(model, cache, batch_size=1) as pipeline:
        first = await pipeline.request(Request([user, assistant]))
        second = await pipeline.request(Request([assistant, user], namespace="other"))
        third = await pipeline.request(Request([user, assistant, user], namespace="other"))
    assert model.calls == 3
    assert second.cached == [False] and third.cached == [False]
    assert len({first.data[0], second.data[0], third.data[0]}) == 3


async def test_requests_that_differ_only_in_form_share_the_cache(cache: Any) -> None:
    await run_sequentially(
        cache, ScriptedModel(), [DecodingRequest([{"role": "user", "content": "hi"}], temperature=1, n=2)]
    )
    model = ScriptedModel()
    (response,) = await run_sequentially(
        cache, model, [DecodingRequest([{"content": "hi", "role": "user"}], temperature=1.0, n=2, namespace="b")]
    )
    assert model.calls == 0 and response.cached == [True, True]


async def test_an_unserialisable_parameter_is_refused_without_a_model_call(cache: Any) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, cache, batch_size=2, timeout=0.001) as pipeline:
        with pytest.raises(UnserializableParameterError):
            await pipeline.request(Extra("hi", extra={"a", "b"}))
        results = await pipeline.batch_request(
            Batch(requests=[Extra("hi", extra=object()), Extra("ok")]), return_exceptions=True
        )
    assert isinstance(results[0], UnserializableParameterError)
    assert results[1].data == ["ok#0"]
    assert model.requests_seen == 1


# == 10. closing ===========================================================================


async def test_a_long_run_keeps_bounded_claims_and_still_replays_exactly(
    cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny in-memory budget stands for a run far longer than the default budget.
    monkeypatch.setattr(RunClaims, "max_in_memory", 8)
    requests = [Request(f"p{i % 40}", n=1 + i % 3, request_id=f"id{i % 70}") for i in range(300)]
    first_model = ScriptedModel()
    async with OnlineAPI(first_model, cache, batch_size=16, timeout=0.001) as pipeline:
        first = [await pipeline.request(r) for r in requests]
        claims = pipeline.cacher._broker.claims
        assert claims.in_memory <= 16 and claims._spill is not None
        spill_directory = claims._spill.directory
    assert not Path(spill_directory).exists()
    assert len(set(all_samples(first))) == len(all_samples(first))  # no sample twice
    replay_model = ScriptedModel()
    second = await run_concurrently(cache, replay_model, requests, batch_size=7)
    assert replay_model.calls == 0
    assert [r.data for r in second] == [r.data for r in first]


async def test_aclose_with_a_batch_waiting_for_its_window_does_not_wait(cache: Any) -> None:
    model = ScriptedModel()
    pipeline = OnlineAPI(model, cache, batch_size=100, timeout=30)
    got: list[Response] = []
    with anyio.fail_after(2):
        async with anyio.create_task_group() as group:

            async def ask() -> None:
                got.append(await pipeline.request(Request("hi")))

            group.start_soon(ask)
            await wait_until(lambda: bool(pipeline.batcher._pending))
            await pipeline.aclose()
    assert got[0].data == ["hi#0"]
    assert stored_count(cache, Request("hi")) == 1


async def test_aclose_with_a_timeout_ends_requests_stuck_in_the_model(cache: Any) -> None:
    model = GateModel()  # never released
    pipeline = OnlineAPI(model, cache, batch_size=1)
    errors: list[BaseException] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:

            async def ask() -> None:
                try:
                    await pipeline.request(Request("stuck"))
                except PipelineClosedError as exc:
                    errors.append(exc)

            group.start_soon(ask)
            await model.entered.wait()
            await pipeline.aclose(timeout_s=0.05)
    assert len(errors) == 1
    assert stored_count(cache, Request("stuck")) == 0


async def leave_async_with_cancelled(pipeline: Any, entered: anyio.Event) -> anyio.CancelScope:
    """``async with pipeline`` left by an outer cancellation while a request is in the model;
    returns the cancelled scope (nothing after the ``async with`` block ran if it re-raised)."""
    after_close: list[bool] = []
    with anyio.CancelScope() as scope:
        async with pipeline:
            async with anyio.create_task_group() as group:
                group.start_soon(pipeline.request, Request("hi", n=2))
                await entered.wait()
                scope.cancel()
        after_close.append(True)
    assert not after_close, "the cancellation was swallowed by aclose()"
    return scope


async def test_a_cancelled_aclose_still_shuts_the_pipeline_down_and_reraises(tmp_path: Path) -> None:
    """``async with`` left by an outer cancellation: the close is cancelled at its first await."""
    model = GateModel()  # never released: the request is in flight when the close is cancelled
    pipeline = OnlineAPI(model, tmp_path, batch_size=1)
    closed: list[bool] = []
    close_store = pipeline.cacher.store.close
    pipeline.cacher.store.close = lambda: (closed.append(True), close_store())  # type: ignore[method-assign]
    with anyio.fail_after(5):
        scope = await leave_async_with_cancelled(pipeline, model.entered)
        assert scope.cancelled_caught  # the cancellation was re-raised
        assert closed == [True]
        assert not pipeline.cacher._broker.running
        for stage in (pipeline, pipeline.cacher, pipeline.deduplicator, pipeline.batcher, pipeline.reorderer):
            assert stage._background.running_jobs == 0
        assert model.in_flight == 0
        await pipeline.aclose()  # already closed: returns
    assert closed == [True]
    with pytest.raises(PipelineClosedError):
        await pipeline.request(Request("hi"))


class StubbornModel:
    """Swallows cancellation until ``released`` is set, as a misbehaving backend might."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.released = anyio.Event()
        self.cancellations_ignored = 0

    async def request(self, request: Request) -> Response:
        self.entered.set()
        while True:
            try:
                await self.released.wait()
                return Response(data=[f"late#{i}" for i in range(request.n)])
            except anyio.get_cancelled_exc_class():
                self.cancellations_ignored += 1


async def test_a_cancelled_aclose_gives_up_on_a_model_that_ignores_cancellation(
    cache: Any, caplog: pytest.LogCaptureFixture
) -> None:
    model = StubbornModel()
    pipeline = OnlineAPI(model, cache, batch_size=1)
    pipeline.cancelled_close_grace_s = 0.05
    with anyio.fail_after(10):  # deadlock guard: without the grace period this never returns
        scope = await leave_async_with_cancelled(pipeline, model.entered)
        assert scope.cancelled_caught
        assert model.cancellations_ignored >= 1
        assert "gave up" in caplog.text
        assert len([r for r in caplog.records if "gave up" in r.getMessage()]) == 1  # one grace period
        model.released.set()
        await pipeline.aclose()  # the next aclose finishes the close
    assert not pipeline.cacher._broker.running
    with pytest.raises(PipelineClosedError):
        await pipeline.request(Request("hi"))


async def test_a_cancelled_aclose_still_stores_samples_the_model_returned(tmp_path: Path) -> None:
    """The model has answered and the samples are being written when the close is cancelled."""
    pipeline = OnlineAPI(ScriptedModel(), tmp_path, batch_size=1)
    writing, proceed = threading.Event(), threading.Event()
    write = pipeline.cacher.store._write_commit

    def slow_write(appends: Any, records: Any) -> Any:
        if appends:  # a slow disk, so the close is cancelled while the write is pending
            writing.set()
            proceed.wait(5)
        return write(appends, records)

    pipeline.cacher.store._write_commit = slow_write  # type: ignore[method-assign]
    pipeline.cacher._broker.inline_io = False  # the slow write must run on the write thread
    request = Request("hi", n=2, request_id="a")
    outcomes: list[Any] = []

    async def ask() -> None:
        try:
            outcomes.append(await pipeline.request(request))
        except PipelineClosedError as exc:
            outcomes.append(exc)

    async def let_the_write_finish_once_closing() -> None:
        await wait_until(lambda: pipeline.cacher._broker._stopping)
        proceed.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(ask)
            await wait_until(writing.is_set)
            group.start_soon(let_the_write_finish_once_closing)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await pipeline.aclose()
            assert scope.cancelled_caught
    assert len(outcomes) == 1
    replay = ScriptedModel()
    (response,) = await run_sequentially(tmp_path, replay, [request])
    assert replay.calls == 0
    assert response.data == ["hi#0", "hi#1"] and response.cached == [True, True]


async def test_a_request_after_close_is_a_pipeline_closed_error(cache: Any) -> None:
    pipeline = OnlineAPI(ScriptedModel(), cache, batch_size=1)
    await pipeline.request(Request("hi"))
    await pipeline.aclose()
    with anyio.fail_after(2):
        with pytest.raises(PipelineClosedError):
            await pipeline.request(Request("hi"))
        with pytest.raises(PipelineClosedError):
            await pipeline.batch_request(Batch(requests=[Request("hi")]))


async def test_a_request_during_close_is_refused(cache: Any) -> None:
    model = ScriptedModel(latency_s=0.05)
    pipeline = OnlineAPI(model, cache, batch_size=1)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(pipeline.request, Request("in flight"))
            await wait_until(lambda: model.in_flight > 0)
            group.start_soon(pipeline.aclose)
            await anyio.sleep(0)
            with pytest.raises(PipelineClosedError):
                await pipeline.request(Request("too late"))


async def test_cleanup_is_an_alias_of_aclose_and_closing_twice_is_fine(cache: Any) -> None:
    pipeline = OnlineAPI(ScriptedModel(), cache, batch_size=1)
    await pipeline.request(Request("hi"))
    with anyio.fail_after(2):
        await pipeline.cleanup()
        await pipeline.aclose()
    with pytest.raises(PipelineClosedError):
        await pipeline.request(Request("hi"))


async def test_async_with_closes_the_pipeline(cache: Any) -> None:
    async with OnlineAPI(ScriptedModel(), cache, batch_size=1) as pipeline:
        assert isinstance(pipeline, OnlineAPI)
        await pipeline.request(Request("hi"))
    with pytest.raises(PipelineClosedError):
        await pipeline.request(Request("hi"))


async def test_closing_an_unused_pipeline_returns(cache: Any) -> None:
    with anyio.fail_after(2):
        await OnlineAPI(ScriptedModel(), cache, batch_size=1).aclose()
        await LocalAPI(ScriptedModel(), cache, batch_size=1).aclose()


def test_a_pipeline_survives_two_event_loops(cache: Any) -> None:
    """A script may call asyncio.run twice with one pipeline (as a notebook re-runs cells)."""
    model = ScriptedModel()
    pipeline = OnlineAPI(model, cache, batch_size=1)

    async def first() -> Response:
        return await pipeline.request(Request("hi", request_id="a"))

    async def second() -> Response:
        with anyio.fail_after(5):
            response = await pipeline.request(Request("hi", request_id="a"))
            await pipeline.aclose()
            return response

    one = anyio.run(first)
    two = anyio.run(second)
    assert one.data == ["hi#0"] and two.data == ["hi#1"]


# == 11. bad input =========================================================================


@pytest.mark.parametrize("pipeline_class", [OnlineAPI, LocalAPI])
@pytest.mark.parametrize("batch_size", [0, -3, 2.5, None, "4", True])
def test_a_bad_batch_size_is_a_configuration_error(cache: Any, pipeline_class: Any, batch_size: Any) -> None:
    with pytest.raises(ConfigurationError):
        pipeline_class(ScriptedModel(), cache, batch_size=batch_size)


@pytest.mark.parametrize("pipeline_class", [OnlineAPI, LocalAPI])
def test_a_bad_timeout_is_a_configuration_error(cache: Any, pipeline_class: Any) -> None:
    with pytest.raises(ConfigurationError):
        pipeline_class(ScriptedModel(), cache, batch_size=2, timeout=-1)


@pytest.mark.parametrize("pipeline_class", [OnlineAPI, LocalAPI])
@pytest.mark.parametrize("timeout", [float("inf"), 1e300])
def test_an_endless_batch_window_is_a_configuration_error(cache: Any, pipeline_class: Any, timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        pipeline_class(ScriptedModel(), cache, batch_size=2, timeout=timeout)


@pytest.mark.parametrize("timeout_s", [float("nan"), float("inf"), -1.0, "1"])
async def test_a_bad_aclose_timeout_is_a_configuration_error(cache: Any, timeout_s: Any) -> None:
    pipeline = OnlineAPI(ScriptedModel(), cache, batch_size=2)
    with pytest.raises(ConfigurationError, match="timeout_s"):
        await pipeline.aclose(timeout_s)
    assert (await pipeline.request(Request("hi"))).data == ["hi#0"]  # still open
    await pipeline.aclose(0.5)


@pytest.mark.parametrize("cache", [None, 42, object()])
def test_a_bad_cache_is_a_configuration_error(cache: Any) -> None:
    with pytest.raises(ConfigurationError):
        OnlineAPI(ScriptedModel(), cache, batch_size=2)


@pytest.mark.parametrize("model", [None, object(), "a model name"])
def test_a_bad_model_is_a_configuration_error(cache: Any, model: Any) -> None:
    with pytest.raises(ConfigurationError):
        OnlineAPI(model, cache, batch_size=2)


@pytest.mark.parametrize("pipeline_class", [OnlineAPI, LocalAPI])
def test_a_model_class_instead_of_an_instance_names_the_fix(cache: Any, pipeline_class: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"{pipeline_class.__name__} got the class ScriptedModel.*ScriptedModel\(\)"):
        pipeline_class(ScriptedModel, cache, batch_size=1)


@dataclass(frozen=True)
class UncheckedRequest(Request):
    """A user subclass whose own ``__post_init__`` forgets ``super().__post_init__()``, so its
    bad fields reach the pipeline instead of failing at construction."""

    temperature: float = 1.0

    def __post_init__(self) -> None:
        pass


BAD_REQUESTS = [
    pytest.param(UncheckedRequest("hi", n=0), id="n=0"),
    pytest.param(UncheckedRequest("hi", n=-2), id="n=-2"),
    pytest.param(UncheckedRequest("hi", n=1.5), id="n=1.5"),
    pytest.param(UncheckedRequest([{"content": "no role"}]), id="message-without-role"),
    pytest.param(UncheckedRequest([{"role": "user"}]), id="message-without-content"),
    pytest.param(UncheckedRequest({"role": "user", "content": "a dict"}), id="prompt-is-a-dict"),
    pytest.param(UncheckedRequest([]), id="no-messages"),
]


@pytest.mark.parametrize("pipeline_class", [OnlineAPI, LocalAPI])
@pytest.mark.parametrize("bad", BAD_REQUESTS)
async def test_bad_input_through_a_pipeline_is_an_invalid_request_error(
    cache: Any, pipeline_class: Any, bad: Request
) -> None:
    model = ScriptedModel()
    with anyio.fail_after(5):
        async with pipeline_class(model, cache, batch_size=2, timeout=0.001) as pipeline:
            with pytest.raises(InvalidRequestError):
                await pipeline.request(bad)
            assert model.calls == 0
            with pytest.raises(BatchRequestError) as raised:  # the bad request fails alone
                await pipeline.batch_request(Batch(requests=[Request("neighbour"), bad]))
            neighbour, error = raised.value.results
            assert neighbour.data == ["neighbour#0"] and isinstance(error, InvalidRequestError)
            good = await pipeline.request(Request("ok", n=2))  # the pipeline is still usable
            (also_good,) = await pipeline.batch_request(Batch(requests=[Request("fine")]))
    assert good.data == ["ok#0", "ok#1"] and also_good.data == ["fine#0"]


@pytest.mark.parametrize("not_a_request", ["hi", {"prompt": "hi"}, None, Batch(requests=[])])
async def test_a_non_request_is_an_invalid_request_error(cache: Any, not_a_request: Any) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, cache, batch_size=2) as pipeline:
        with pytest.raises(InvalidRequestError):
            await pipeline.request(not_a_request)
        assert model.calls == 0
        results = await pipeline.batch_request(Batch(requests=[Request("ok"), not_a_request]), return_exceptions=True)
    assert results[0].data == ["ok#0"] and isinstance(results[1], InvalidRequestError)


def mutated(request: Request, **fields: Any) -> Request:
    """``request`` with ``fields`` changed behind its frozen dataclass's back (no checks)."""
    for name, value in fields.items():
        object.__setattr__(request, name, value)
    return request


def cyclic() -> list:
    loop: list = []
    loop.append(loop)
    return loop


BAD_NEIGHBOURS = [
    pytest.param(lambda: Request("surrogate \ud800"), UnserializableParameterError, id="surrogate-prompt"),
    pytest.param(lambda: DecodingRequest("x", temperature=cyclic()), UnserializableParameterError, id="cyclic"),
    pytest.param(lambda: mutated(Request("zero"), n=0), InvalidRequestError, id="n=0-by-setattr"),
    pytest.param(lambda: mutated(Request("ns"), namespace="bad \udfff"), InvalidRequestError, id="surrogate-namespace"),
    pytest.param(lambda: UncheckedRequest("hi", n=0), InvalidRequestError, id="n=0-by-subclass"),
    pytest.param(lambda: "not a request", InvalidRequestError, id="not-a-request"),
]


@pytest.mark.parametrize("pipeline_class", [OnlineAPI, LocalAPI])
@pytest.mark.parametrize(("make_bad", "error"), BAD_NEIGHBOURS)
async def test_a_bad_request_in_a_batch_is_its_own_error_and_its_neighbours_are_served(
    cache: Any, pipeline_class: Any, make_bad: Any, error: type
) -> None:
    bad = make_bad()
    model = ScriptedModel()
    with anyio.fail_after(5):
        async with pipeline_class(model, cache, batch_size=4, timeout=0.001) as pipeline:
            batch = Batch(requests=[Request("left", request_id="l"), bad, Request("right", n=2, request_id="r")])
            results = await pipeline.batch_request(batch, return_exceptions=True)
            with pytest.raises(BatchRequestError) as raised:
                await pipeline.batch_request(Batch(requests=[bad, Request("again")]))
            with pytest.raises(error):
                await pipeline.request(bad)  # request() still raises directly
    left, failed, right = results
    assert (left.data, right.data) == (["left#0"], ["right#0", "right#1"])
    assert type(failed) is error
    assert isinstance(raised.value.results[0], error) and raised.value.results[1].data == ["again#0"]


async def test_batch_request_needs_a_batch(cache: Any) -> None:
    async with OnlineAPI(ScriptedModel(), cache, batch_size=2) as pipeline:
        with pytest.raises(InvalidRequestError):
            await pipeline.batch_request([Request("hi")])  # type: ignore[arg-type]


async def test_every_error_a_pipeline_raises_is_a_cache_saver_error(cache: Any) -> None:
    async with OnlineAPI(ScriptedModel(fail={"bad"}), cache, batch_size=1) as pipeline:
        for call in (
            lambda: pipeline.request("hi"),  # type: ignore[arg-type]
            lambda: pipeline.request(Extra("hi", extra={1})),
            lambda: pipeline.request(Request("bad")),
            lambda: pipeline.batch_request(Batch(requests=[Request("bad")])),
        ):
            with pytest.raises(CacheSaverError):
                await call()


# == public API ============================================================================


async def test_an_empty_batch_gives_an_empty_list(tmp_path: Path) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, tmp_path, batch_size=2) as pipeline:
        with anyio.fail_after(2):
            assert await pipeline.batch_request(Batch(requests=[])) == []
    assert model.calls == 0


@pytest.mark.parametrize("form", ["Cache", "str", "Path"])
async def test_the_cache_may_be_a_diskcache_or_a_directory(tmp_path: Path, form: str) -> None:
    directory = tmp_path / "cache"
    caches: list[Any] = []

    def make() -> Any:
        if form == "Cache":
            cache = diskcache.Cache(str(directory), eviction_policy="none")
            caches.append(cache)
            return cache
        return str(directory) if form == "str" else directory

    await run_sequentially(make(), ScriptedModel(), [Request("hi", request_id="a")])
    model = ScriptedModel()
    (response,) = await run_sequentially(make(), model, [Request("hi", request_id="a")])
    assert response.cached == [True] and model.calls == 0
    for cache in caches:
        assert cache.directory == str(directory)
        cache.close()


async def test_a_seed_style_cache_with_eviction_is_used_and_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = diskcache.Cache(str(tmp_path / "developping"))
    with caplog.at_level(logging.WARNING, logger="cachesaver"):
        pipeline = OnlineAPI(ScriptedModel(), cache, batch_size=1)
    assert any("eviction" in r.getMessage() for r in caplog.records)
    assert pipeline.cache is cache
    async with pipeline:
        assert (await pipeline.request(Request("hi"))).data == ["hi#0"]
    cache.close()


async def test_an_online_model_with_only_request_is_served(tmp_path: Path) -> None:
    model = SingleOnlyModel()
    async with OnlineAPI(model, tmp_path, batch_size=4, timeout=0.001) as pipeline:
        responses = await pipeline.batch_request(Batch(requests=[Request(f"p{i}") for i in range(4)]))
    assert [r.data for r in responses] == [[f"p{i}#0"] for i in range(4)]
    assert not any(call.batched for call in model.inner.log)


def test_local_api_requires_a_batch_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="batch_request"):
        LocalAPI(SingleOnlyModel(), tmp_path, batch_size=2)


async def test_local_api_sends_whole_batches_to_the_model_after_the_cache(tmp_path: Path) -> None:
    await run_sequentially(tmp_path, ScriptedModel(), [Request("stored", n=2)])
    inner = ScriptedModel()
    async with LocalAPI(BatchOnlyModel(inner), tmp_path, batch_size=3, timeout=0.001) as pipeline:
        responses = await pipeline.batch_request(
            Batch(requests=[Request("stored", n=2)] + [Request(f"p{i}") for i in range(6)])
        )
    assert responses[0].cached == [True, True]
    assert all(call.batched for call in inner.log)
    assert inner.batch_sizes == [3, 3]


async def test_pipelines_are_models_themselves(tmp_path: Path) -> None:
    inner = ScriptedModel()
    async with OnlineAPI(inner, tmp_path / "inner", batch_size=2, timeout=0.001) as below:
        assert isinstance(below, SingleRequestModel) and isinstance(below, BatchRequestModel)
        async with OnlineAPI(below, tmp_path / "outer", batch_size=2, timeout=0.001) as above:
            response = await above.request(Request("hi", n=2))
    assert response.data == ["hi#0", "hi#1"]


async def test_the_ledger_hooks_see_every_upstream_and_served_request(tmp_path: Path) -> None:
    await run_sequentially(tmp_path, ScriptedModel(), [Request("stored")])
    ledger = RecordingLedger()
    model = ScriptedModel(fail={"bad"})
    async with OnlineAPI(model, tmp_path, batch_size=8, timeout=0.001, ledger=ledger) as pipeline:
        assert pipeline.ledger is ledger
        results = await pipeline.batch_request(
            Batch(requests=[Request("stored", n=3), Request("dup"), Request("dup", n=2), Request("bad")]),
            return_exceptions=True,
        )
    upstream = {r.prompt: (r.n, outcome) for r, outcome in ledger.upstream}
    assert len(ledger.upstream) == 3  # "stored" (2 missing), the merged "dup", "bad"
    assert upstream["stored"][0] == 2
    assert upstream["dup"][0] == 3
    assert isinstance(upstream["bad"][1], BackendError)
    assert isinstance(upstream["stored"][1], Response) and len(upstream["stored"][1].data) == 2
    served = [(r.prompt, response) for r, response in ledger.served]
    assert sorted(p for p, _ in served) == ["dup", "dup", "stored"]
    assert all(any(response is result for result in results) for _, response in served)


async def test_the_default_ledger_counts_calls_and_savings(tmp_path: Path) -> None:
    async with OnlineAPI(ScriptedModel(with_usage=True), tmp_path, batch_size=4, timeout=0.001) as pipeline:
        assert isinstance(pipeline.ledger, Ledger)
        await gather(*[lambda: pipeline.request(Request("hi", namespace="ns")) for _ in range(3)])
        await pipeline.request(Request("hi", n=3, namespace="ns2"))
    total = pipeline.ledger.total()
    assert total.upstream_calls == 1
    assert total.samples_generated == 3
    assert total.samples_duplicated == 2
    assert total.samples_cached == 3


# == the seed notebook, with a scripted stand-in for its together client ====================


class FakeTogetherClient:
    """Looks like ``together.AsyncTogether`` to the seed's OnlineLLM: chat.completions.create."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    async def create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        start = sum(call["n"] for call in self.calls[:-1])
        content = kwargs["messages"][0]["content"]
        choices = [
            SimpleNamespace(message=SimpleNamespace(content=f"{content} -> answer {start + k}"))
            for k in range(kwargs["n"])
        ]
        return SimpleNamespace(choices=choices)


def make_seed_model(client: Any) -> Any:
    # The seed notebook's model class, unchanged.
    import asyncio

    class OnlineLLM(SingleRequestModel, BatchRequestModel):
        def __init__(self, client: Any, model: str):
            self.client = client
            self.model = model

        async def request(self, request: Request) -> Response:
            completion = await self.client.chat.completions.create(
                messages=[{"role": "user", "content": request.prompt}],
                model=self.model,
                n=request.n,
                max_tokens=request.max_completion_tokens or None,
                temperature=request.temperature or 1,
                stop=request.stop or None,
                top_p=request.top_p or 1,
                seed=request.seed or None,
                logprobs=request.logprobs or False,
                top_logprobs=request.top_logprobs or None,
            )
            return Response(data=[choice.message.content for choice in completion.choices])

        async def batch_request(self, batch: Batch) -> List[Response]:
            requests = [self.request(request) for request in batch.requests]
            completions = await asyncio.gather(*requests)
            return completions

    return OnlineLLM(client, model="meta-llama/Llama-3.3-70B-Instruct-Turbo-Free")


async def run_seed_notebook(cache_dir: Path, client: FakeTogetherClient) -> dict[str, Any]:
    model = make_seed_model(client)
    out: dict[str, Any] = {}

    request = Request(prompt="What is the meaning of life?", n=1, request_id="sth1", namespace="sth")
    out["direct"] = await model.request(request)

    @dataclass(frozen=True)
    class Request2(Request):
        temperature: float = 1
        max_completion_tokens: int = None  # type: ignore[assignment]

    request = Request2(
        prompt="What is the meaning of life?", n=1, request_id="sth1", namespace="sth",
        max_completion_tokens=30, temperature=0.5,
    )
    out["direct_subclass"] = await model.request(request)

    request1 = Request2(prompt="What is the meaning of life?", n=2, request_id="sth1", namespace="sth", max_completion_tokens=10)
    request2 = Request2(prompt="Cats or dogs?", n=1, request_id="sth2", namespace="sth", max_completion_tokens=10)
    batch = Batch(requests=[request1, request2])
    cache = diskcache.Cache(str(cache_dir / "developping"))
    pipeline = OnlineAPI(model=model, cache=cache, batch_size=2, timeout=1)
    with anyio.fail_after(10):
        out["pipeline_request"] = await pipeline.request(request1)
        out["pipeline_batch"] = await pipeline.batch_request(batch)
        await pipeline.cleanup()
    cache.close()
    return out


async def test_the_seed_notebook_flow(tmp_path: Path) -> None:
    client = FakeTogetherClient()
    out = await run_seed_notebook(tmp_path, client)

    assert out["direct"] == Response(data=["What is the meaning of life? -> answer 0"])
    assert out["direct"].cached is None and out["direct"].duplicated is None
    subclass_call = client.calls[1]
    assert subclass_call["max_tokens"] == 30 and subclass_call["temperature"] == 0.5
    assert subclass_call["top_p"] == 1 and subclass_call["stop"] is None and subclass_call["seed"] is None

    first = out["pipeline_request"]
    assert first.cached == [False, False] and first.duplicated == [False, False]
    again, cats = out["pipeline_batch"]
    # the seed asks sth1 twice in one run: the second time gets fresh samples
    assert set(again.data).isdisjoint(first.data)
    assert again.cached == [False, False]
    assert cats.data == ["Cats or dogs? -> answer 6"] and cats.cached == [False]
    calls_in_first_run = len(client.calls)

    # Re-running the notebook on the same cache replays every answer without calling the API.
    replay = await run_seed_notebook(tmp_path, client)
    assert len(client.calls) == calls_in_first_run + 2  # only the two direct, uncached calls
    assert replay["pipeline_request"].data == first.data
    assert replay["pipeline_request"].cached == [True, True]
    assert [r.data for r in replay["pipeline_batch"]] == [again.data, cats.data]
    assert all(all(r.cached) for r in replay["pipeline_batch"])


# == trio ==================================================================================


def test_the_core_runs_under_trio(cache: Any) -> None:
    async def main() -> tuple[list[Response], list[Response], int, int]:
        model = ScriptedModel()
        with trio.fail_after(10):
            async with OnlineAPI(model, cache, batch_size=4, timeout=0.01) as pipeline:
                first = await gather(
                    lambda: pipeline.request(Request("hi", request_id="a")),
                    lambda: pipeline.request(Request("hi", n=2, request_id="b")),
                    lambda: pipeline.request(Request("other", request_id="c")),
                )
            replay_model = ScriptedModel()
            async with LocalAPI(replay_model, cache, batch_size=1) as pipeline:
                second = await pipeline.batch_request(
                    Batch(requests=[Request("other", request_id="c"), Request("hi", n=2, request_id="b"),
                                    Request("hi", request_id="a")])
                )
        return first, second, model.requests_seen, replay_model.calls

    first, second, upstream, replay_calls = trio.run(main)
    assert upstream == 2  # the two "hi" requests merged
    assert [r.data for r in second] == [first[2].data, first[1].data, first[0].data]
    assert replay_calls == 0


# == sync (blocking) local models ===========================================================


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "pipeline_class, kind",
    [(OnlineAPI, "single"), (OnlineAPI, "batch"), (OnlineAPI, "both"), (LocalAPI, "batch")],
)
def test_a_sync_model_works_in_every_pipeline(cache: Any, backend: str, pipeline_class: Any, kind: str) -> None:
    requests = [Request("a", n=2, request_id="x"), Request("b", request_id="y"), Request("a", request_id="z")]

    async def run(model: SyncModel) -> list[Response]:
        with anyio.fail_after(10):
            async with pipeline_class(model, cache, batch_size=4) as pipeline:
                first = await pipeline.batch_request(Batch(requests=requests[:2]))
                return first + [await pipeline.request(requests[2])]

    model = SyncModel(kind)
    first = anyio.run(run, model, backend=backend)
    assert [r.data for r in first] == [["a#0", "a#1"], ["b#0"], ["a#2"]]
    assert all(t is not threading.main_thread() for t in model.threads)
    assert model.peak_in_flight == 1
    replay_model = SyncModel(kind)
    replay = anyio.run(run, replay_model, backend=backend)
    assert replay_model.calls == 0
    assert [r.data for r in replay] == [r.data for r in first] and all(all(r.cached) for r in replay)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_late_answers_at_close_are_stored(cache: Any, backend: str, caplog: pytest.LogCaptureFixture) -> None:
    """A sync model blocked in its thread past aclose's deadline: its callers get
    PipelineClosedError, and the two requests' samples it then returns are stored."""
    requests = [Request("a", n=2, request_id="x"), Request("b", request_id="y")]
    model = SyncModel("batch", block=True)
    pipeline = LocalAPI(model, cache, batch_size=2)
    errors: list[BaseException] = []

    async def ask(request: Request) -> None:
        try:
            await pipeline.request(request)
        except PipelineClosedError as exc:
            errors.append(exc)

    async def main() -> None:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for request in requests:
                    group.start_soon(ask, request)
                await wait_until(model.entered.is_set)
                group.start_soon(pipeline.aclose, 0.01)
                # the deadline has passed and the call was cancelled, but a thread cannot be
                await wait_until(lambda: "cannot be cancelled" in caplog.text)
                model.released.set()

    anyio.run(main, backend=backend)
    assert model.batch_sizes == [2]  # the two requests were one batch
    assert len(errors) == 2
    assert pipeline.ledger.total().upstream_calls == 2  # paid for, so counted
    replay_model = ScriptedModel()

    async def replay() -> list[Response]:
        async with LocalAPI(replay_model, cache, batch_size=2) as again:
            return await again.batch_request(Batch(requests=requests))

    responses = anyio.run(replay, backend=backend)
    assert replay_model.calls == 0
    assert [r.data for r in responses] == [["a#0", "a#1"], ["b#0"]]
    assert all(all(r.cached) for r in responses)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("within_the_grace", [True, False])
def test_a_cancelled_aclose_stores_what_a_sync_model_returns(
    cache: Any, backend: str, within_the_grace: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Released within cancelled_close_grace_s the close completes; released after it gave
    up, the samples are stored anyway and the next aclose() completes the close."""
    request = Request("a", n=2, request_id="x")
    model = SyncModel("batch", block=True)
    pipeline = LocalAPI(model, cache, batch_size=1)
    if not within_the_grace:
        pipeline.cancelled_close_grace_s = 0.01
    release_once = "cannot be cancelled" if within_the_grace else "gave up"

    async def main() -> bool:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:

                async def leave_cancelled(task_status: Any) -> None:
                    with anyio.CancelScope() as scope:
                        task_status.started(scope)
                        async with pipeline:
                            await pipeline.request(request)
                    caught.append(scope.cancelled_caught)

                caught: list[bool] = []
                scope = await group.start(leave_cancelled)
                await wait_until(model.entered.is_set)
                scope.cancel()  # the request and then aclose() are cancelled
                await wait_until(lambda: release_once in caplog.text)
                model.released.set()
            if not within_the_grace:
                await pipeline.aclose()  # waits for the late answer, stores it, then closes
        return caught == [True]

    assert anyio.run(main, backend=backend)  # the cancellation was re-raised
    assert not pipeline.cacher._broker.running
    assert ("gave up" in caplog.text) is not within_the_grace
    replay_model = ScriptedModel()

    async def replay() -> Response:
        async with LocalAPI(replay_model, cache, batch_size=1) as again:
            return await again.request(request)

    response = anyio.run(replay, backend=backend)
    assert replay_model.calls == 0 and response.data == ["a#0", "a#1"] and response.cached == [True, True]


# == a larger mixed workload: every promise at once ==========================================


async def test_a_mixed_workload_keeps_every_promise(cache: Any) -> None:
    rng = random.Random(99)
    requests = [
        DecodingRequest(
            f"q{rng.randrange(8)}",
            n=rng.randrange(1, 4),
            request_id=rng.choice([None, f"id{rng.randrange(30)}"]),
            namespace=rng.choice(["a", "b"]),
            temperature=rng.choice([0.5, 1]),
        )
        for _ in range(150)
    ]
    model = JitterModel(ScriptedModel(), seed=5, max_s=0.002)
    responses = await run_concurrently(cache, model, requests, batch_size=6, seed=6, stagger_s=0.003)
    by_namespace: dict[str, list[Any]] = defaultdict(list)
    for request, response in zip(requests, responses):
        assert len(response.data) == request.n
        by_namespace[request.namespace] += [(request_key(request), s) for s in response.data]
    for namespace, samples in by_namespace.items():
        counts = Counter(samples)
        assert max(counts.values()) == 1, f"a sample was handed out twice in namespace {namespace}"


# == more edges ============================================================================


async def test_a_request_cancelled_while_waiting_for_its_window_is_still_stored(cache: Any) -> None:
    model = ScriptedModel()
    request = Request("hi", request_id="impatient")
    pipeline = OnlineAPI(model, cache, batch_size=100, timeout=30)
    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(pipeline.request, request)
                await wait_until(lambda: bool(pipeline.batcher._pending))  # in the batch window
                scope.cancel()
        await pipeline.aclose()
    # the request was already queued for the batch: it is sent, and what it paid for is kept
    assert model.calls == 1
    replay = ScriptedModel()
    (response,) = await run_sequentially(cache, replay, [request])
    assert replay.calls == 0 and response.data == ["hi#0"] and response.cached == [True]


async def test_an_int_and_a_str_request_id_are_different_requests(cache: Any) -> None:
    requests = [Request("hi", request_id=1), Request("hi", request_id="1")]
    first = await run_sequentially(cache, ScriptedModel(), requests)
    assert first[0].data != first[1].data
    replay = ScriptedModel()
    second = await run_sequentially(cache, replay, list(reversed(requests)))
    assert [r.data for r in reversed(second)] == [r.data for r in first]
    assert replay.calls == 0


async def test_usage_follows_each_sample_through_merging_and_replay(cache: Any) -> None:
    model = ScriptedModel(with_usage=True)
    async with OnlineAPI(model, cache, batch_size=4, timeout=0.001) as pipeline:
        merged = await gather(
            lambda: pipeline.request(Request("two words", n=2, request_id="a")),
            lambda: pipeline.request(Request("two words", n=1, request_id="b")),
        )
    assert model.calls == 1
    usage = {"prompt_tokens": 2, "completion_tokens": 2}
    assert merged[0].usage == [usage, usage] and merged[1].usage == [usage]
    (replayed,) = await run_sequentially(cache, ScriptedModel(), [Request("two words", n=2, request_id="a")])
    assert replayed.cached == [True, True] and replayed.usage == [usage, usage]


class CountingList(list):  # type: ignore[type-arg]
    """A parameter value that counts how often the key encoder walks it."""

    walks = 0

    def __iter__(self) -> Any:
        CountingList.walks += 1
        return super().__iter__()


async def test_a_request_is_hashed_once_on_its_way_through_the_pipeline(tmp_path: Path) -> None:
    CountingList.walks = 0
    request = Extra("hi", n=2, request_id="a", extra=CountingList(["x", "y"]))
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=1) as pipeline:
        await pipeline.request(request)
        # Once for the key, once more for the readable request stored with the key's first
        # samples (a key's request is built once in its life).
        assert CountingList.walks == 2
        await pipeline.request(request)  # a miss on a key that has samples: nothing more
        assert CountingList.walks == 2
    CountingList.walks = 0
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=1) as pipeline:
        await pipeline.request(Extra("hi", n=2, request_id="a", extra=CountingList(["x", "y"])))  # a hit
    assert CountingList.walks == 1


async def test_replay_with_identified_and_anonymous_requests_mixed_in_any_order(cache: Any) -> None:
    rng = random.Random(21)
    requests = [
        Request(f"p{rng.randrange(3)}", n=rng.randrange(1, 3), request_id=rng.choice([None, f"id{i}"]))
        for i in range(40)
    ]
    first = await run_concurrently(cache, JitterModel(ScriptedModel(), seed=1), requests, 4, seed=1, stagger_s=0.003)
    order = list(range(len(requests)))
    rng.shuffle(order)
    replay_model = ScriptedModel()
    second = await run_concurrently(
        cache, replay_model, [requests[i] for i in order], 3, seed=2, stagger_s=0.003
    )
    assert replay_model.calls == 0
    anonymous_first: dict[str, Counter[Any]] = defaultdict(Counter)
    anonymous_second: dict[str, Counter[Any]] = defaultdict(Counter)
    for position, i in enumerate(order):
        request = requests[i]
        if request.request_id is None:
            anonymous_first[request.prompt].update(first[i].data)
            anonymous_second[request.prompt].update(second[position].data)
        else:
            assert second[position].data == first[i].data, request
    assert anonymous_second == anonymous_first


@pytest.mark.parametrize("concurrent", [False, True])
async def test_an_anonymous_request_does_not_take_an_identified_requests_samples(
    cache: Any, concurrent: bool
) -> None:
    identified, anonymous = Request("hi", n=2, request_id="a"), Request("hi", n=2)
    first = await run_sequentially(cache, ScriptedModel(), [identified, anonymous])
    replay_model = ScriptedModel()
    if concurrent:
        second = await run_concurrently(cache, replay_model, [anonymous, identified], batch_size=2)
    else:
        second = await run_sequentially(cache, replay_model, [anonymous, identified])
    assert replay_model.calls == 0
    assert second[1].data == first[0].data
    assert second[0].data == first[1].data


async def test_the_ledger_hooks_see_single_requests_too(tmp_path: Path) -> None:
    ledger = RecordingLedger()
    model = ScriptedModel(fail={"bad"})
    async with OnlineAPI(model, tmp_path, batch_size=1, ledger=ledger) as pipeline:
        fresh = await pipeline.request(Request("hi", n=2))
        with pytest.raises(BackendError):
            await pipeline.request(Request("bad"))
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=1, ledger=ledger) as pipeline:
        replayed = await pipeline.request(Request("hi", n=2))
    assert [(r.prompt, r.n) for r, _ in ledger.upstream] == [("hi", 2), ("bad", 1)]
    assert isinstance(ledger.upstream[1][1], BackendError)
    assert [response for _, response in ledger.served] == [fresh, replayed]
    assert ledger.served[1][1].cached == [True, True]


async def test_the_same_request_id_used_concurrently_replays_as_a_whole(cache: Any) -> None:
    requests = [Request("hi", request_id="x"), Request("hi", n=2, request_id="x"), Request("hi", request_id="x")]
    first = await run_concurrently(cache, ScriptedModel(), requests, batch_size=4)
    assert len(set(all_samples(first))) == 4
    replay_model = ScriptedModel()
    second = await run_concurrently(cache, replay_model, list(reversed(requests)), batch_size=1)
    assert replay_model.calls == 0
    assert sorted(all_samples(second)) == sorted(all_samples(first))
    # Per request: the n=2 request gets its own two samples back whatever the arrival order
    # (requests sharing an id and n are interchangeable, so only their union is fixed).
    assert second[1].data == first[1].data
    assert sorted(second[0].data + second[2].data) == sorted(first[0].data + first[2].data)


@pytest.mark.parametrize("order", [[1, 0], [0, 1]])
async def test_one_id_with_different_n_replays_per_request_in_any_order(cache: Any, order: list[int]) -> None:
    requests = [Request("hi", n=1, request_id="x"), Request("hi", n=3, request_id="x")]
    async with OnlineAPI(ScriptedModel(), cache, batch_size=4) as pipeline:
        first = await pipeline.batch_request(Batch(requests=requests))
    replay_model = ScriptedModel()
    async with OnlineAPI(replay_model, cache, batch_size=4) as pipeline:
        second = await pipeline.batch_request(Batch(requests=[requests[i] for i in order]))
    assert replay_model.calls == 0
    by_n = {len(r.data): r.data for r in second}
    assert (by_n[1], by_n[3]) == (first[0].data, first[1].data)


class FullDiskCache(diskcache.Cache):
    """A diskcache whose writes fail once ``full`` is set, as on a full disk."""

    full = False

    def set(self, *args: Any, **kwargs: Any) -> Any:
        if self.full:
            import sqlite3

            raise sqlite3.OperationalError("database or disk is full")
        return super().set(*args, **kwargs)


async def test_samples_are_delivered_even_when_the_disk_refuses_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FullDiskCache(str(tmp_path / "c"), eviction_policy="none")
    cache.full = True
    model = ScriptedModel()
    with caplog.at_level(logging.ERROR, logger="cachesaver"), pytest.raises(UnstoredSamplesError):
        async with OnlineAPI(model, cache, batch_size=1) as pipeline:
            response = await pipeline.request(Request("hi", n=2))
    assert response.data == ["hi#0", "hi#1"]
    assert any("disk is full" in r.getMessage() or "disk is full" in (r.exc_text or "") for r in caplog.records)
    cache.full = False
    cache.close()


async def test_a_damaged_entry_fails_its_request_only(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    await run_sequentially(cache, ScriptedModel(), [Request("fine")])
    before = set(cache.iterkeys())
    await run_sequentially(cache, ScriptedModel(), [Request("damaged")])
    for key in set(cache.iterkeys()) - before:
        cache[key] = "something cachesaver did not write"
    async with OnlineAPI(ScriptedModel(), cache, batch_size=2, timeout=0.001) as pipeline:
        results = await pipeline.batch_request(
            Batch(requests=[Request("fine"), Request("damaged")]), return_exceptions=True
        )
    assert results[0].data == ["fine#0"] and results[0].cached == [True]
    assert isinstance(results[1], CorruptStoreError)
    cache.close()


# -- the model is part of a sample's identity ------------------------------------------------


class _Completions:
    """The part of a together client the seed notebook's OnlineLLM calls; answers name the model."""

    def __init__(self) -> None:
        self.calls = 0

    async def create(self, *, model: str, messages: list[dict[str, str]], n: int, **_: Any) -> Any:
        self.calls += 1
        await anyio.sleep(0)
        text = messages[-1]["content"]
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=f"{model}:{text}#{k}")) for k in range(n)])


class OnlineLLM(SingleRequestModel, BatchRequestModel):
    """The seed notebook's model, as written there: ``OnlineLLM(client, model=...)``."""

    def __init__(self, client: Any, model: str) -> None:
        self.client = client
        self.model = model

    async def request(self, request: Request) -> Response:
        completion = await self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": request.prompt}], n=request.n,
            temperature=request.temperature,
        )
        return Response(data=[choice.message.content for choice in completion.choices])

    async def batch_request(self, batch: Batch) -> List[Response]:
        return [await self.request(r) for r in batch.requests]


class RenamedLLM(OnlineLLM):
    """The same model under another class name."""


async def test_the_seed_notebooks_model_name_is_part_of_the_cache_key(tmp_path: Path) -> None:
    completions = _Completions()
    client = SimpleNamespace(chat=SimpleNamespace(completions=completions))
    requests = [DecodingRequest("Cats or dogs?", n=2, request_id="q1", namespace="sth"),
                DecodingRequest("Tea or coffee?", n=1, request_id="q2", namespace="sth")]

    async def run(model: Any) -> list[Response]:
        async with OnlineAPI(model=model, cache=tmp_path, batch_size=2, timeout=1) as pipeline:
            assert pipeline.model_identity == model.model
            return await pipeline.batch_request(Batch(requests=requests))

    llama = await run(OnlineLLM(client, model="llama-70b"))
    assert completions.calls == 2 and llama[0].data == ["llama-70b:Cats or dogs?#0", "llama-70b:Cats or dogs?#1"]
    renamed = await run(RenamedLLM(client, model="llama-70b"))
    assert completions.calls == 2 and renamed == [
        Response(data=r.data, cached=[True] * len(r.data), duplicated=[False] * len(r.data)) for r in llama
    ]
    mistral = await run(OnlineLLM(client, model="mistral-7b"))
    assert completions.calls == 4 and mistral[1].data == ["mistral-7b:Tea or coffee?#0"]
    assert not any(any(r.cached) for r in mistral)


@pytest.mark.parametrize("pipeline_class", [OnlineAPI, LocalAPI])
async def test_two_pipelines_with_different_model_ids_on_one_cache_share_no_samples(
    tmp_path: Path, pipeline_class: type
) -> None:
    request = Request("hi", n=2, request_id="a", namespace="run")
    x_model, y_model = NamedModel(label="x"), NamedModel(label="y")  # say nothing: model_id decides
    async with pipeline_class(x_model, tmp_path, batch_size=1, model_id="x") as x, \
            pipeline_class(y_model, tmp_path, batch_size=1, model_id="y") as y:
        assert (x.model_identity, y.model_identity) == ("x", "y")
        from_x = await x.request(request)
        from_y = await y.request(Request("hi", n=2, request_id="b", namespace="other"))
    assert (x_model.calls, y_model.calls) == (1, 1)
    assert from_x.data == ["x:hi#0", "x:hi#1"] and from_y.data == ["y:hi#0", "y:hi#1"]
    replay_y = NamedModel(label="never")
    async with pipeline_class(replay_y, tmp_path, batch_size=1, model_id="y") as y:
        again = await y.request(Request("hi", n=2, request_id="b", namespace="other"))
    assert replay_y.calls == 0 and again.data == from_y.data


async def test_pipelines_over_shipped_models_keep_their_keys(tmp_path: Path) -> None:
    from cachesaver.models.simulated import SimulatedLLM

    request = Request("Name a prime.", n=3, request_id="p")
    for name, model in [("scripted", ScriptedModel()), ("simulated", SimulatedLLM(seed=1))]:
        async with OnlineAPI(model, tmp_path / name, batch_size=1) as pipeline:
            assert pipeline.model_identity is None
            await pipeline.request(request)
        assert stored_count(tmp_path / name, request) == 3  # under request_key, as before


async def test_a_replay_only_pipeline_replays_a_user_models_cache_with_its_model_id(tmp_path: Path) -> None:
    from cachesaver.errors import CacheMissError
    from cachesaver.models import ReplayOnlyModel

    request = Request("hi", n=2, request_id="a")
    async with OnlineAPI(NamedModel(model="llama"), tmp_path, batch_size=1) as pipeline:
        written = await pipeline.request(request)
    async with OnlineAPI(ReplayOnlyModel(), tmp_path, batch_size=1) as replay:  # no identity: other keys
        with pytest.raises(CacheMissError):
            await replay.request(request)
    async with OnlineAPI(ReplayOnlyModel(), tmp_path, batch_size=1, model_id="llama") as replay:
        assert (await replay.request(request)).data == written.data
