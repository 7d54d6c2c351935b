"""AsyncDeduplicator on its own: identical requests in flight together cost one upstream call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from _support import GateModel, gather

from cachesaver.stages.deduplication import AsyncDeduplicator
from cachesaver.errors import BackendError, IncompleteResponseError, UnserializableParameterError
from cachesaver.models import ScriptedModel
from cachesaver.typedefs import Batch, Request, Response


@dataclass(frozen=True)
class Decoding(Request):
    temperature: float = 1
    extra: Any = None


async def test_identical_concurrent_requests_cost_one_call_with_n_summed() -> None:
    model = ScriptedModel()
    dedup = AsyncDeduplicator(model)
    async with dedup:
        responses = await gather(
            lambda: dedup.request(Request("hi", n=1, request_id="a")),
            lambda: dedup.request(Request("hi", n=2, request_id="b")),
            lambda: dedup.request(Request("hi", n=3, request_id="c")),
        )
    assert model.requests_seen == 1
    assert model.n_requested == [6]
    assert [r.data for r in responses] == [["hi#0"], ["hi#1", "hi#2"], ["hi#3", "hi#4", "hi#5"]]
    assert [r.duplicated for r in responses] == [[False], [True, True], [True, True, True]]


async def test_duplicates_inside_one_batch_merge() -> None:
    model = ScriptedModel()
    async with AsyncDeduplicator(model) as dedup:
        responses = await dedup.batch_request(
            Batch(requests=[Request("hi"), Request("other"), Request("hi", n=2)])
        )
    assert model.requests_seen == 2
    assert sorted(model.n_requested) == [1, 3]
    assert responses[0] == Response(data=["hi#0"], duplicated=[False])
    assert responses[1] == Response(data=["other#0"], duplicated=[False])
    assert responses[2] == Response(data=["hi#1", "hi#2"], duplicated=[True, True])


async def test_requests_that_key_the_same_merge_even_if_written_differently() -> None:
    model = ScriptedModel()
    async with AsyncDeduplicator(model) as dedup:
        await gather(
            lambda: dedup.request(Decoding([{"role": "user", "content": "hi"}], temperature=1)),
            lambda: dedup.request(Decoding([{"content": "hi", "role": "user"}], temperature=1.0)),
        )
    assert model.requests_seen == 1 and model.n_requested == [2]


async def test_different_namespaces_or_keys_are_not_merged() -> None:
    model = ScriptedModel()
    async with AsyncDeduplicator(model) as dedup:
        responses = await gather(
            lambda: dedup.request(Request("hi", namespace="a")),
            lambda: dedup.request(Request("hi", namespace="b")),
            lambda: dedup.request(Decoding("hi", temperature=0.5, namespace="a")),
        )
    assert model.requests_seen == 3
    assert all(r.duplicated == [False] for r in responses)
    assert len({r.data[0] for r in responses}) == 3


async def test_a_failed_call_fails_its_group_only() -> None:
    model = ScriptedModel(fail={"bad"})
    async with AsyncDeduplicator(model) as dedup:
        results = await dedup.batch_request(
            Batch(requests=[Request("bad"), Request("good"), Request("bad", n=2)]), return_exceptions=True
        )
    assert isinstance(results[0], BackendError)
    assert isinstance(results[2], BackendError)
    assert results[1].data == ["good#0"]
    assert model.requests_seen == 2


async def test_an_unserialisable_request_fails_alone() -> None:
    model = ScriptedModel()
    async with AsyncDeduplicator(model) as dedup:
        results = await dedup.batch_request(
            Batch(requests=[Decoding("a", extra={1}), Decoding("b")]), return_exceptions=True
        )
    assert isinstance(results[0], UnserializableParameterError)
    assert results[1].data == ["b#0"]


async def test_a_short_answer_serves_the_early_requests_in_full() -> None:
    model = ScriptedModel(short_by=2)
    async with AsyncDeduplicator(model) as dedup:
        results = await dedup.batch_request(
            Batch(requests=[Request("hi", n=2), Request("hi", n=1), Request("hi", n=2)]), return_exceptions=True
        )
    assert model.n_requested == [5]
    assert results[0].data == ["hi#0", "hi#1"]
    assert results[1].data == ["hi#2"] and results[1].duplicated == [True]
    assert isinstance(results[2], IncompleteResponseError)
    assert results[2].response.data == []  # type: ignore[attr-defined]


async def test_a_partly_served_request_keeps_what_was_left() -> None:
    model = ScriptedModel(short_by=1)
    async with AsyncDeduplicator(model) as dedup:
        results = await dedup.batch_request(
            Batch(requests=[Request("hi", n=1), Request("hi", n=2)]), return_exceptions=True
        )
    assert results[0].data == ["hi#0"]
    assert isinstance(results[1], IncompleteResponseError)
    assert results[1].response.data == ["hi#1"]  # type: ignore[attr-defined]
    assert results[1].response.duplicated == [True]  # type: ignore[attr-defined]


class GenerousModel:
    def __init__(self, extra: int) -> None:
        self.extra = extra
        self.inner = ScriptedModel()

    async def batch_request(self, batch: Batch) -> list[Response]:
        widened = Batch(requests=[Request(r.prompt, n=r.n + self.extra) for r in batch.requests])
        return await self.inner.batch_request(widened)


async def test_extra_samples_go_to_the_first_request() -> None:
    async with AsyncDeduplicator(GenerousModel(extra=2)) as dedup:
        results = await dedup.batch_request(Batch(requests=[Request("hi"), Request("hi")]))
    assert results[0].data == ["hi#0", "hi#1", "hi#2"]
    assert results[1].data == ["hi#3"]
    assert results[1].duplicated == [True]


class FlaggingModel:
    """Answers with its own duplicated flags (as a deduplicator further down would)."""

    async def request(self, request: Request) -> Response:
        data = [f"{request.prompt}#{k}" for k in range(request.n)]
        return Response(data=data, cached=[k == 0 for k in range(request.n)], duplicated=[k == 1 for k in range(request.n)])


async def test_flags_from_below_are_kept() -> None:
    async with AsyncDeduplicator(FlaggingModel()) as dedup:
        first, second = await dedup.batch_request(Batch(requests=[Request("hi", n=2), Request("hi", n=1)]))
    assert first.duplicated == [False, True]
    assert first.cached == [True, False]
    assert second.duplicated == [True]
    assert second.cached == [False]


async def test_a_cancelled_caller_does_not_cancel_its_groups_call() -> None:
    model = GateModel()
    got: list[Response] = []
    with anyio.fail_after(5):
        async with AsyncDeduplicator(model) as dedup:

            async def patient() -> None:
                got.append(await dedup.request(Request("hi", n=1)))

            async with anyio.create_task_group() as group:
                with anyio.CancelScope() as doomed_scope:
                    async with anyio.create_task_group() as doomed:
                        doomed.start_soon(dedup.request, Request("hi", n=2))
                        group.start_soon(patient)
                        await model.entered.wait()
                        doomed_scope.cancel()
                model.release()
    assert model.calls == 1 and model.finished == 1
    assert model.inner.n_requested == [3]
    assert got[0].data in (["hi#0"], ["hi#2"])


async def test_a_single_request_model_receives_the_merged_request() -> None:
    class SingleOnly:
        def __init__(self) -> None:
            self.inner = ScriptedModel()

        async def request(self, request: Request) -> Response:
            return await self.inner.request(request)

    model = SingleOnly()
    async with AsyncDeduplicator(model) as dedup:
        await gather(*[lambda: dedup.request(Request("hi")) for _ in range(4)])
    assert model.inner.n_requested == [4]


@pytest.mark.parametrize("copies", [2, 50])
async def test_every_sample_goes_to_exactly_one_request(copies: int) -> None:
    model = ScriptedModel()
    async with AsyncDeduplicator(model) as dedup:
        responses = await gather(*[lambda i=i: dedup.request(Request("hi", n=1 + i % 3)) for i in range(copies)])
    samples = [s for r in responses for s in r.data]
    assert len(samples) == len(set(samples)) == sum(1 + i % 3 for i in range(copies))
    assert model.calls == 1
    assert sum(r.duplicated.count(False) for r in responses) == 1
