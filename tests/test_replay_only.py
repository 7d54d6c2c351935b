"""ReplayOnlyModel: a pipeline on it serves only from the cache and names every miss."""

from dataclasses import dataclass

import pytest

from cachesaver.errors import BatchRequestError, CacheMissError
from cachesaver.models.replay_only import ReplayOnlyModel, describe_miss
from cachesaver.models.scripted import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.typedefs import Batch, Request


async def test_request_raises_a_miss_naming_the_request():
    model = ReplayOnlyModel()
    request = Request([{"role": "user", "content": "x" * 200}], n=3, request_id="r-7", namespace="exp")
    with pytest.raises(CacheMissError) as caught:
        await model.request(request)
    message = str(caught.value)
    assert "request_id 'r-7'" in message and "namespace 'exp'" in message and "3 more needed" in message
    assert "x" * 77 + "..." in message and "x" * 81 not in message  # the prompt is shortened
    assert "without replay-only" in message  # says what to do
    assert model.misses == [request]


async def test_batch_fails_each_request_on_its_own():
    model = ReplayOnlyModel()
    requests = [Request("a", request_id=1), Request("b", request_id=2)]
    results = await model.batch_request(Batch(requests))
    assert [type(r) for r in results] == [CacheMissError, CacheMissError]
    assert "request_id 1 " in str(results[0]) and "request_id 2 " in str(results[1])
    assert model.misses == requests


@dataclass(frozen=True)
class TaggedRequest(Request):
    tags: frozenset = frozenset()


def test_describe_miss_survives_an_unkeyable_request():
    message = describe_miss(TaggedRequest("q", request_id="z", tags=frozenset({"a"})))
    assert "key ?" in message and "request_id 'z'" in message


async def test_a_replay_only_pipeline_serves_hits_and_fails_misses_without_upstream_calls(tmp_path):
    cache = tmp_path / "cache"
    model = ScriptedModel()
    stored = [Request("kept", n=2, request_id="a", namespace="exp"), Request("other", request_id="b", namespace="exp")]
    async with OnlineAPI(model, cache, batch_size=2) as pipeline:
        first = await pipeline.batch_request(Batch(stored))
    calls = model.calls

    replay = ReplayOnlyModel()
    async with OnlineAPI(replay, cache, batch_size=2) as pipeline:
        again = await pipeline.batch_request(Batch(stored))
        with pytest.raises(CacheMissError, match="request_id 'c'"):
            await pipeline.request(Request("never stored", request_id="c", namespace="exp"))
    async with OnlineAPI(replay, cache, batch_size=2) as pipeline:  # a new run
        with pytest.raises(BatchRequestError) as caught:
            await pipeline.batch_request(
                Batch([Request("kept", n=3, request_id="d", namespace="exp"), Request("other", request_id="e", namespace="exp")])
            )
    assert [r.data for r in again] == [r.data for r in first]
    assert all(all(r.cached) for r in again)
    partial = caught.value.results
    assert isinstance(partial[0], CacheMissError) and "1 more needed" in str(partial[0])
    assert partial[1].cached == [True]  # another request id reuses what is stored
    assert model.calls == calls
    assert [r.request_id for r in replay.misses] == ["c", "d"]
