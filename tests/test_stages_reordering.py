"""RequestReorderer: the model sees each batch in canonical order, answers come back in caller order."""

from __future__ import annotations

import random

from _support import SingleOnlyModel

from cachesaver.errors import BackendError
from cachesaver.keys import request_key
from cachesaver.models import ScriptedModel
from cachesaver.stages.reordering import RequestReorderer
from cachesaver.typedefs import Batch, Request


async def test_the_model_sees_requests_sorted_by_request_id() -> None:
    model = ScriptedModel()
    requests = [Request("c", request_id="3"), Request("a", request_id="1"), Request("b", request_id="2")]
    async with RequestReorderer(model) as reorderer:
        responses = await reorderer.batch_request(Batch(requests=requests))
    assert [r.request_id for r in model.log[0].requests] == ["1", "2", "3"]
    assert [r.data for r in responses] == [["c#0"], ["a#0"], ["b#0"]]


async def test_the_order_the_model_sees_does_not_depend_on_arrival_order() -> None:
    requests = [Request(f"p{i % 4}", request_id=i % 5) for i in range(12)]
    requests += [Request(f"q{i}") for i in range(3)]
    requests += [Request(f"r{i}", request_id=f"s{i}") for i in range(3)]
    seen = []
    for seed in range(4):
        shuffled = list(requests)
        random.Random(seed).shuffle(shuffled)
        model = ScriptedModel()
        async with RequestReorderer(model) as reorderer:
            responses = await reorderer.batch_request(Batch(requests=shuffled))
        order = [(r.request_id, request_key(r)) for r in model.log[0].requests]
        seen.append(order)
        # answers map back to the caller's order
        assert [r.data[0].split("#")[0] for r in responses] == [r.prompt for r in shuffled]
    assert all(order == seen[0] for order in seen)


async def test_requests_without_an_id_come_last_and_id_types_are_grouped() -> None:
    model = ScriptedModel()
    requests = [Request("none"), Request("str", request_id="a"), Request("int", request_id=5)]
    async with RequestReorderer(model) as reorderer:
        await reorderer.batch_request(Batch(requests=requests))
    ids = [r.request_id for r in model.log[0].requests]
    assert ids[-1] is None
    assert set(ids[:2]) == {"a", 5}


async def test_the_model_receives_each_request_exactly_once_unchanged() -> None:
    model = ScriptedModel()
    requests = [Request("x", n=2, request_id="b"), Request("x", n=3, request_id="a"), Request("y", request_id="a")]
    async with RequestReorderer(model) as reorderer:
        responses = await reorderer.batch_request(Batch(requests=requests))
    received = list(model.log[0].requests)
    assert sorted(map(repr, received)) == sorted(map(repr, requests))
    assert all(any(r is s for s in requests) for r in received)
    assert [len(r.data) for r in responses] == [2, 3, 1]


async def test_errors_stay_with_their_request() -> None:
    model = ScriptedModel(fail={"bad"})
    requests = [Request("ok", request_id="z"), Request("bad", request_id="a")]
    async with RequestReorderer(model) as reorderer:
        results = await reorderer.batch_request(Batch(requests=requests), return_exceptions=True)
    assert results[0].data == ["ok#0"]
    assert isinstance(results[1], BackendError)


async def test_a_single_request_model_works() -> None:
    model = SingleOnlyModel()
    async with RequestReorderer(model) as reorderer:
        response = await reorderer.request(Request("hi", n=2))
    assert response.data == ["hi#0", "hi#1"]
