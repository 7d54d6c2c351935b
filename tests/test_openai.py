"""Tests for cachesaver.models.openai: the real OpenAI SDK against a fake HTTP server."""

from __future__ import annotations

import anyio
import openai
import pytest
from _support import Sleeps
from fake_chat_server import Fault, FakeChatServer

from cachesaver.errors import (
    ConfigurationError,
    ContextLengthError,
    InvalidRequestError,
    PermanentBackendError,
    TransientBackendError,
)
from cachesaver.models.openai import OpenAIModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.ratelimit import RateLimits
from cachesaver.retry import RetryPolicy
from cachesaver.typedefs import Batch

FAST = RetryPolicy(max_attempts=5, initial_delay_s=0.0, jitter=0.0)


@pytest.fixture
async def model(server: FakeChatServer, sleeps: Sleeps):
    backend = OpenAIModel("gpt-test", api_key="test-key", base_url=server.openai_base_url, retry=FAST, sleep=sleeps)
    yield backend
    await backend.aclose()


async def test_n_samples_come_from_one_call_with_exact_usage(model: OpenAIModel, server: FakeChatServer) -> None:
    response = await model.request(model.make_request("hello there world", n=4))
    assert response.data == [f"hello there world#{k}" for k in range(4)]
    assert (server.calls, server.requests[0]["n"]) == (1, 4)
    assert sum(u["prompt_tokens"] for u in response.usage) == 3
    assert sum(u["completion_tokens"] for u in response.usage) == 12
    assert server.headers[0]["authorization"] == "Bearer test-key"


async def test_servers_without_n_support_get_one_call_per_sample(server: FakeChatServer) -> None:
    async with OpenAIModel("local", api_key="none", base_url=server.openai_base_url, max_n_per_call=1) as model:
        response = await model.request(model.make_request("q", n=3))
    assert sorted(response.data) == ["q#0", "q#1", "q#2"]
    assert server.calls == 3
    assert all("n" not in body for body in server.requests)


async def test_decoding_fields_map_onto_openai_arguments(model: OpenAIModel, server: FakeChatServer) -> None:
    await model.request(model.make_request(
        "q", temperature=0.7, top_p=0.95, max_completion_tokens=32, stop="END", seed=1, logprobs=5,
        presence_penalty=0.5, top_k=20, min_p=0.1, repetition_penalty=1.05,
    ))
    assert server.requests[0] == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "q"}],
        "temperature": 0.7,
        "top_p": 0.95,
        "max_completion_tokens": 32,
        "stop": "END",
        "seed": 1,
        "logprobs": True,
        "top_logprobs": 5,
        "presence_penalty": 0.5,
        # Only OpenAI-compatible servers (vLLM, ...) know these: sent in the JSON body.
        "top_k": 20,
        "min_p": 0.1,
        "repetition_penalty": 1.05,
    }


async def test_max_tokens_bool_logprobs_and_passthrough(model: OpenAIModel, server: FakeChatServer) -> None:
    await model.request(model.make_request(
        "q", max_tokens=9, logprobs=True, top_logprobs=2, parameters={"user": "u1", "metadata": {"run": "a"}},
        extra_body={"guided_choice": ["yes", "no"]},
    ))
    body = server.requests[0]
    assert (body["max_tokens"], body["logprobs"], body["top_logprobs"]) == (9, True, 2)
    assert (body["user"], body["metadata"], body["guided_choice"]) == ("u1", {"run": "a"}, ["yes", "no"])
    assert "max_completion_tokens" not in body


async def test_a_parameter_given_twice_is_refused(model: OpenAIModel, server: FakeChatServer) -> None:
    with pytest.raises(InvalidRequestError, match="once"):
        await model.request(model.make_request("q", temperature=0.1, parameters={"temperature": 0.2}))
    with pytest.raises(InvalidRequestError):
        model.make_request("q", parameters={"stream": True})
    assert server.calls == 0


async def test_an_unknown_sdk_argument_is_an_invalid_request(model: OpenAIModel, server: FakeChatServer) -> None:
    with pytest.raises(InvalidRequestError, match="parameters"):
        await model.request(model.make_request("q", parameters={"not_an_argument": 1}))
    assert server.calls == 0


async def test_401_is_raised_at_once(model: OpenAIModel, server: FakeChatServer, sleeps: Sleeps) -> None:
    server.fail_next(401, message="Incorrect API key provided")
    with pytest.raises(PermanentBackendError, match="api_key") as raised:
        await model.request(model.make_request("q", request_id="r-1"))
    error = raised.value
    assert (error.status, error.request_id, error.provider_request_id) == (401, "r-1", "req-fake-1")
    assert "req-fake-1" in str(error)
    assert isinstance(error.__cause__, openai.AuthenticationError)
    assert (server.calls, sleeps.waits) == (1, [])


async def test_context_length_is_its_own_error(model: OpenAIModel, server: FakeChatServer) -> None:
    server.fail_next(400, message="This model's maximum context length is 4096 tokens", code="context_length_exceeded")
    with pytest.raises(ContextLengthError):
        await model.request(model.make_request("q"))
    assert server.calls == 1


async def test_a_burst_of_503s_and_a_429_with_retry_after_are_retried(
    model: OpenAIModel, server: FakeChatServer, sleeps: Sleeps
) -> None:
    server.fail_next(503, times=2)
    server.fail_next(429, headers={"retry-after-ms": "1500"})
    response = await model.request(model.make_request("q", n=2))
    assert response.data == ["q#0", "q#1"]
    assert server.calls == 4
    assert sleeps.waits == [0.0, 0.0, 1.5]


async def test_a_dropped_connection_is_retried(model: OpenAIModel, server: FakeChatServer) -> None:
    server.drop_next(times=2)
    response = await model.request(model.make_request("q"))
    assert response.data == ["q#0"]
    assert model.retries == 2


async def test_giving_up_raises_a_transient_error(server: FakeChatServer) -> None:
    async with OpenAIModel(
        "m", api_key="k", base_url=server.openai_base_url, retry=RetryPolicy(max_attempts=2, initial_delay_s=0)
    ) as model:
        server.fail_next(500, times=5)
        with pytest.raises(TransientBackendError, match="gave up after 2 attempts"):
            await model.request(model.make_request("q"))
    assert server.calls == 2


def test_a_missing_api_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIModel("m")


def test_base_url_is_normalised_into_the_request(server: FakeChatServer) -> None:
    model = OpenAIModel("m", api_key="k", base_url=server.openai_base_url + "/")
    request = model.make_request("q")
    assert (request.backend, request.base_url, request.model) == ("openai", server.openai_base_url, "m")


async def test_through_a_pipeline_failures_are_not_stored_and_successes_replay(
    tmp_path, server: FakeChatServer
) -> None:
    server.fail_when(lambda body: Fault(403) if body["messages"][-1]["content"] == "forbidden" else None)
    server.fail_next(502, times=3)
    async with OpenAIModel("m", api_key="k", base_url=server.openai_base_url, retry=FAST, sleep=Sleeps()) as model:
        async with OnlineAPI(model, str(tmp_path), batch_size=8) as pipeline:
            requests = [model.make_request(f"p{i}", n=3, request_id=i) for i in range(5)]
            results = await pipeline.batch_request(Batch(requests + [model.make_request("forbidden")]), True)
        assert [r.data for r in results[:5]] == [[f"p{i}#{k}" for k in range(3)] for i in range(5)]
        assert isinstance(results[5], PermanentBackendError) and results[5].status == 403
        calls = server.calls
        async with OnlineAPI(model, str(tmp_path), batch_size=8) as pipeline:
            replay = await pipeline.batch_request(Batch(requests))
            assert [r.data for r in replay] == [r.data for r in results[:5]]
            assert server.calls == calls
            with pytest.raises(PermanentBackendError):
                await pipeline.request(model.make_request("forbidden"))
        assert server.calls == calls + 1


async def test_the_in_flight_limit_is_honoured(tmp_path) -> None:
    with FakeChatServer(latency_s=0.02) as server:
        server.hold_until(2, total=10)
        async with OpenAIModel(
            "m", api_key="k", base_url=server.openai_base_url, limits=RateLimits(max_in_flight=2)
        ) as model:
            async with OnlineAPI(model, str(tmp_path), batch_size=10) as pipeline:
                results = await pipeline.batch_request(Batch([model.make_request(f"p{i}") for i in range(10)]))
    assert [r.data for r in results] == [[f"p{i}#0"] for i in range(10)]
    assert [r.cached for r in results] == [[False]] * 10
    assert server.completed == server.calls == 10
    assert server.peak_in_flight == 2
    assert model.limiter.peak_in_flight == 2


async def test_per_request_transport_options_reach_the_sdk_call(model: OpenAIModel, server: FakeChatServer) -> None:
    request = model.make_request(
        "q", transport_options={"extra_headers": {"X-Trace": "t-1"}, "extra_query": {"tag": "a"}}
    )
    assert (await model.request(request)).data == ["q#0"]
    assert server.headers[0]["x-trace"] == "t-1"
    assert server.paths[0].endswith("/chat/completions?tag=a")
    assert set(server.requests[0]) == {"model", "messages"}  # nothing leaked into the body


@pytest.mark.parametrize("kind", ["truncated", "html"])
async def test_a_malformed_200_reply_is_retried_like_a_503(model: OpenAIModel, server: FakeChatServer, kind: str) -> None:
    server.malformed_next(kind)
    response = await model.request(model.make_request("q"))
    assert response.data == ["q#0"]
    assert server.calls == 2
    assert model.retries == 1


@pytest.mark.parametrize("kind", ["truncated", "html"])
async def test_only_malformed_replies_give_up_with_a_transient_error(
    tmp_path, server: FakeChatServer, sleeps: Sleeps, kind: str
) -> None:
    policy = RetryPolicy(max_attempts=2, initial_delay_s=0.0)
    server.malformed_next(kind, times=2)
    async with OpenAIModel("gpt-test", api_key="k", base_url=server.openai_base_url, retry=policy, sleep=sleeps) as model:
        async with OnlineAPI(model, str(tmp_path), batch_size=1) as pipeline:
            with pytest.raises(TransientBackendError, match="gave up after 2 attempts") as raised:
                await pipeline.request(model.make_request("q", request_id=7))
            assert (raised.value.status, raised.value.request_id) == (200, 7)
            again = await pipeline.request(model.make_request("q", request_id=7))
    assert again.data == ["q#0"] and again.cached == [False]  # nothing was stored from the failures
    assert server.calls == 3


@pytest.mark.parametrize("timeout_s", [float("nan"), float("inf"), 0, -1])
def test_a_bad_timeout_s_is_a_configuration_error(server: FakeChatServer, timeout_s: float) -> None:
    with pytest.raises(ConfigurationError, match="timeout_s must be a finite number of seconds > 0"):
        OpenAIModel("m", api_key="k", base_url=server.openai_base_url, timeout_s=timeout_s)
