"""PipelineAgent: deterministic requests per (task, index, turn), exact replay, hit counting."""

import pytest

from cachesaver.errors import ConfigurationError
from cachesaver.keys import request_key
from cachesaver.models.scripted import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.tasks import AgentRequest, CacheCounts, ChatHistoryItem, EchoAgent, PipelineAgent, Turn, request_id_for
from cachesaver.typedefs import Request, Response


def turn(index=0, number=0, *contents):
    history = tuple(ChatHistoryItem("user" if i % 2 == 0 else "agent", c) for i, c in enumerate(contents or ("q",)))
    return Turn("task", index, number, history)


class FixedPipeline:
    """A stand-in pipeline answering every request with the given samples."""

    def __init__(self, *samples, cached=None):
        self.samples = list(samples)
        self.cached = cached
        self.requests = []

    async def request(self, request):
        self.requests.append(request)
        return Response(self.samples, cached=self.cached)


def test_request_ids_are_unambiguous_and_stable():
    assert request_id_for(turn(1, 2)) == '["task", 1, 2]'
    assert request_id_for(turn(1, 2)) != request_id_for(Turn("task", "1", 2, ()))
    assert request_id_for(Turn("a:b", "c", 0, ())) != request_id_for(Turn("a", "b:c", 0, ()))


def test_build_request_maps_roles_and_carries_the_run_settings():
    agent = PipelineAgent(FixedPipeline("x"), namespace="ns", model="m", temperature=0.5, system_prompt="be brief")
    request = agent.build_request(turn(3, 1, "question", "answer", "follow-up"))
    assert isinstance(request, AgentRequest)
    assert request.prompt == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "follow-up"},
    ]
    assert (request.n, request.namespace, request.request_id) == (1, "ns", '["task", 3, 1]')
    assert (request.model, request.temperature, request.max_tokens) == ("m", 0.5, None)


def test_unset_decoding_fields_do_not_change_the_key():
    agent = PipelineAgent(FixedPipeline("x"))
    request = agent.build_request(turn())
    assert request_key(request) == request_key(Request([{"role": "user", "content": "q"}]))
    other = PipelineAgent(FixedPipeline("x"), model="m").build_request(turn())
    assert request_key(other) != request_key(request)


def test_the_pipeline_must_have_a_request_method():
    with pytest.raises(ConfigurationError, match="OnlineAPI"):
        PipelineAgent(object())
    with pytest.raises(ConfigurationError, match="namespace"):
        PipelineAgent(FixedPipeline(), namespace=3)


async def test_act_returns_the_first_sample_and_counts_cache_hits():
    agent = PipelineAgent(FixedPipeline({"content": "from dict"}, cached=[True]))
    output = await agent.act(turn())
    assert output.content == "from dict"
    assert (agent.samples_served, agent.samples_cached) == (1, 1)
    assert isinstance(agent, CacheCounts)
    assert not isinstance(EchoAgent(), CacheCounts)


async def test_a_new_pipeline_replays_the_same_samples_per_turn(tmp_path):
    model = ScriptedModel()
    turns = [turn(i, 0, "same prompt") for i in range(3)]
    async with OnlineAPI(model, tmp_path / "cache", batch_size=2) as pipeline:
        agent = PipelineAgent(pipeline, namespace="run")
        first = [(await agent.act(t)).content for t in turns]
    assert len(set(first)) == 3  # one run: fresh samples for each turn
    assert agent.samples_cached == 0
    calls = model.calls
    async with OnlineAPI(model, tmp_path / "cache", batch_size=2) as pipeline:
        agent = PipelineAgent(pipeline, namespace="run")
        again = [(await agent.act(t)).content for t in reversed(turns)]
    assert again == list(reversed(first))
    assert model.calls == calls
    assert (agent.samples_served, agent.samples_cached) == (3, 3)
