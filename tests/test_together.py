"""Tests for cachesaver.models.together: the real together SDK against a fake HTTP server."""

from __future__ import annotations

import anyio
import pytest
import together
from _support import Sleeps
from fake_chat_server import Fault, FakeChatServer

from cachesaver.errors import (
    ConfigurationError,
    ContextLengthError,
    InvalidRequestError,
    PermanentBackendError,
    TransientBackendError,
)
from cachesaver.keys import request_key
from cachesaver.models.openai import OpenAIModel
from cachesaver.models.together import TogetherModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.ratelimit import RateLimiter, RateLimits
from cachesaver.retry import RetryPolicy
from cachesaver.typedefs import Batch, Request

FAST = RetryPolicy(max_attempts=5, initial_delay_s=0.0, jitter=0.0)


@pytest.fixture
async def model(server: FakeChatServer, sleeps: Sleeps):
    backend = TogetherModel("m", api_key="test-key", base_url=server.together_base_url, retry=FAST, sleep=sleeps)
    yield backend
    await backend.aclose()


def usage_totals(response) -> tuple[int, int]:
    return (
        sum(u["prompt_tokens"] for u in response.usage),
        sum(u["completion_tokens"] for u in response.usage),
    )


# -- n handling ------------------------------------------------------------------------------

async def test_n_samples_come_from_one_call_with_exact_usage(model: TogetherModel, server: FakeChatServer) -> None:
    response = await model.request(model.make_request("hello world", n=3))
    assert response.data == ["hello world#0", "hello world#1", "hello world#2"]
    assert server.calls == 1
    assert server.requests[0]["n"] == 3
    assert usage_totals(response) == (2, 9)  # 2 prompt words once, 3 tokens per choice
    assert server.headers[0]["authorization"] == "Bearer test-key"


async def test_n_of_one_is_not_sent(model: TogetherModel, server: FakeChatServer) -> None:
    response = await model.request(model.make_request("hi"))
    assert response.data == ["hi#0"]
    assert "n" not in server.requests[0]


async def test_an_n_above_the_provider_limit_is_split(server: FakeChatServer, sleeps: Sleeps) -> None:
    async with TogetherModel("m", api_key="k", base_url=server.together_base_url, max_n_per_call=2) as model:
        response = await model.request(model.make_request("a b c", n=5))
    assert sorted(int(b.get("n", 1)) for b in server.requests) == [1, 2, 2]
    assert sorted(response.data) == [f"a b c#{k}" for k in range(5)]
    assert usage_totals(response) == (3 * 3, 3 * 5)


async def test_split_calls_that_partly_fail_return_the_samples_obtained(server: FakeChatServer) -> None:
    async with TogetherModel(
        "m", api_key="k", base_url=server.together_base_url, max_n_per_call=2, retry=RetryPolicy.none()
    ) as model:
        server.fail_next(401)
        response = await model.request(model.make_request("q", n=4))
    assert len(response.data) == 2  # a short answer: the cache stage stores it and asks again
    assert server.calls == 2


# -- parameter mapping -----------------------------------------------------------------------

async def test_decoding_fields_map_onto_together_arguments(model: TogetherModel, server: FakeChatServer) -> None:
    await model.request(model.make_request(
        "q", n=2, temperature=0.2, top_p=0.9, top_k=40, min_p=0.05, max_completion_tokens=64, stop="END",
        seed=7, logprobs=True, repetition_penalty=1.1, presence_penalty=0.1, frequency_penalty=0.2,
    ))
    assert server.requests[0] == {
        "model": "m",
        "messages": [{"role": "user", "content": "q"}],
        "n": 2,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "max_tokens": 64,
        "stop": ["END"],
        "seed": 7,
        "logprobs": 1,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
    }


async def test_aliases_passthrough_parameters_and_extra_body(model: TogetherModel, server: FakeChatServer) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]
    await model.request(model.make_request(
        messages, max_tokens=5, logprobs=True, top_logprobs=3,
        parameters={"echo": True, "safety_model": "guard"}, extra_body={"custom_flag": 1},
    ))
    body = server.requests[0]
    assert body["messages"] == messages
    assert (body["max_tokens"], body["logprobs"], body["echo"], body["safety_model"]) == (5, 3, True, "guard")
    assert body["custom_flag"] == 1
    assert "temperature" not in body


async def test_choice_format_keeps_the_whole_choice(model: TogetherModel) -> None:
    response = await model.request(model.make_request("q", n=2, sample_format="choice"))
    assert [c["message"]["content"] for c in response.data] == ["q#0", "q#1"]
    assert response.data[0]["finish_reason"] == "stop"


async def test_requests_must_name_this_backend(model: TogetherModel, server: FakeChatServer) -> None:
    with pytest.raises(InvalidRequestError, match="make_request"):
        await model.request(Request("plain request without a model"))
    elsewhere = model.make_request("q").__class__(
        "q", model="m", backend="together", base_url="https://api.together.ai"
    )
    with pytest.raises(InvalidRequestError):
        await model.request(elsewhere)
    assert server.calls == 0


def test_the_key_names_backend_base_url_and_model_but_no_credentials(server: FakeChatServer) -> None:
    url = server.together_base_url
    one = TogetherModel("m", api_key="key-1", base_url=url)
    two = TogetherModel("m", api_key="key-2", base_url=url + "/", timeout_s=3.0, default_headers={"X-A": "b"})
    other_url = TogetherModel("m", api_key="key-1", base_url="http://127.0.0.1:1")
    other_kind = OpenAIModel("m", api_key="key-1", base_url=url)
    key = request_key(one.make_request("q", temperature=0.5))
    assert request_key(two.make_request("q", temperature=0.5)) == key
    assert request_key(one.make_request("q", temperature=0.5, model="m2")) != key
    assert request_key(other_url.make_request("q", temperature=0.5)) != key
    assert request_key(other_kind.make_request("q", temperature=0.5)) != key
    assert request_key(one.make_request("q", temperature=0.5, n=7, namespace="x", request_id=1)) == key


def test_a_missing_api_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="TOGETHER_API_KEY"):
        TogetherModel("m")


def test_make_request_needs_a_model(server: FakeChatServer) -> None:
    model = TogetherModel(api_key="k", base_url=server.together_base_url)
    with pytest.raises(ConfigurationError, match="model"):
        model.make_request("q")
    assert model.make_request("q", model="x").model == "x"


# -- failures --------------------------------------------------------------------------------

async def test_401_is_raised_at_once_with_status_and_request_id(
    model: TogetherModel, server: FakeChatServer, sleeps: Sleeps
) -> None:
    server.fail_next(401, message="invalid api key")
    with pytest.raises(PermanentBackendError, match="HTTP 401") as raised:
        await model.request(model.make_request("q", request_id="q1"))
    error = raised.value
    assert (error.status, error.request_id, error.provider_request_id) == (401, "q1", "req-fake-1")
    assert isinstance(error.__cause__, together.AuthenticationError)
    assert server.calls == 1
    assert sleeps.waits == []


async def test_404_and_context_length_are_permanent(model: TogetherModel, server: FakeChatServer) -> None:
    server.fail_next(404, message="model not found")
    with pytest.raises(PermanentBackendError, match="model name"):
        await model.request(model.make_request("q"))
    server.fail_next(400, message="Input validation error: the maximum context length is 8192 tokens")
    with pytest.raises(ContextLengthError) as raised:
        await model.request(model.make_request("q"))
    assert raised.value.status == 400
    assert server.calls == 2


async def test_a_burst_of_503s_is_retried(model: TogetherModel, server: FakeChatServer, sleeps: Sleeps) -> None:
    server.fail_next(503, times=3)
    response = await model.request(model.make_request("q", n=2))
    assert response.data == ["q#0", "q#1"]
    assert server.calls == 4
    assert model.retries == 3
    assert len(sleeps.waits) == 3


async def test_a_429_waits_as_long_as_retry_after_says(
    model: TogetherModel, server: FakeChatServer, sleeps: Sleeps
) -> None:
    server.fail_next(429, headers={"Retry-After": "2"})
    response = await model.request(model.make_request("q"))
    assert response.data == ["q#0"]
    assert sleeps.waits == [2.0]


async def test_a_dropped_connection_is_retried(model: TogetherModel, server: FakeChatServer) -> None:
    server.drop_next()
    response = await model.request(model.make_request("q"))
    assert response.data == ["q#0"]
    assert server.calls == 2


async def test_a_time_out_is_retried(server: FakeChatServer) -> None:
    async with TogetherModel(
        "m", api_key="k", base_url=server.together_base_url, timeout_s=0.2, retry=FAST, sleep=Sleeps()
    ) as model:
        server.drop_next(delay_s=30)
        response = await model.request(model.make_request("q"))
    assert response.data == ["q#0"]
    assert model.retries == 1


async def test_a_per_request_time_out_is_retried_then_given_up(server: FakeChatServer, sleeps: Sleeps) -> None:
    async with TogetherModel(
        "m", api_key="k", base_url=server.together_base_url, retry=RetryPolicy(max_attempts=2, initial_delay_s=0),
        sleep=sleeps,
    ) as model:
        server.drop_next(delay_s=30, times=2)
        with pytest.raises(TransientBackendError, match="gave up after 2 attempts") as raised:
            await model.request(model.make_request("q", transport_options={"timeout": 0.2}))
        assert (raised.value.status, raised.value.provider_request_id) == (None, None)  # no answer, no id
        assert (await model.request(model.make_request("q"))).data == ["q#0"]  # the client's own time-out
    assert server.calls == 3


async def test_giving_up_raises_a_transient_error(server: FakeChatServer, sleeps: Sleeps) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0.0)
    async with TogetherModel("m", api_key="k", base_url=server.together_base_url, retry=policy, sleep=sleeps) as model:
        server.fail_next(503, times=10)
        with pytest.raises(TransientBackendError, match="gave up after 3 attempts") as raised:
            await model.request(model.make_request("q", request_id=5))
    assert (raised.value.status, raised.value.request_id) == (503, 5)
    assert server.calls == 3


async def test_the_sdk_does_not_retry_on_its_own(server: FakeChatServer) -> None:
    user_client = together.AsyncTogether(api_key="k", base_url=server.together_base_url, max_retries=5)
    try:
        async with TogetherModel("m", client=user_client, retry=RetryPolicy.none()) as model:
            server.fail_next(503)
            with pytest.raises(TransientBackendError):
                await model.request(model.make_request("q"))
        assert server.calls == 1
        assert not user_client.is_closed()  # the user's client is theirs to close
    finally:
        await user_client.close()


def test_client_must_be_an_async_together() -> None:
    with pytest.raises(ConfigurationError, match="AsyncTogether"):
        TogetherModel("m", client=object())


async def test_batch_request_fails_only_the_failing_requests(model: TogetherModel, server: FakeChatServer) -> None:
    server.fail_when(lambda body: Fault(401) if body["messages"][-1]["content"] == "bad" else None)
    results = await model.batch_request(Batch([model.make_request("ok"), model.make_request("bad")]))
    assert results[0].data == ["ok#0"]
    assert isinstance(results[1], PermanentBackendError)


# -- through a pipeline ----------------------------------------------------------------------

async def test_faults_lose_nothing_and_cache_nothing_from_failures(tmp_path, server: FakeChatServer) -> None:
    prompts = [f"prompt {i}" for i in range(6)]
    server.fail_next(503, times=4)
    server.fail_when(lambda body: Fault(401) if body["messages"][-1]["content"] == "bad" else None)
    async with TogetherModel("m", api_key="k", base_url=server.together_base_url, retry=FAST, sleep=Sleeps()) as model:
        async with OnlineAPI(model, str(tmp_path), batch_size=4) as pipeline:
            batch = Batch([model.make_request(p, n=2, request_id=p) for p in prompts] + [model.make_request("bad")])
            results = await pipeline.batch_request(batch, return_exceptions=True)
    assert [r.data for r in results[:6]] == [[f"{p}#0", f"{p}#1"] for p in prompts]
    assert isinstance(results[6], PermanentBackendError)
    assert server.completed == 6
    calls_before = server.calls

    server._predicates.clear()
    async with TogetherModel("m", api_key="k", base_url=server.together_base_url) as model:
        async with OnlineAPI(model, str(tmp_path), batch_size=4) as pipeline:
            replay = await pipeline.batch_request(Batch([model.make_request(p, n=2, request_id=p) for p in prompts]))
            assert [r.data for r in replay] == [r.data for r in results[:6]]
            assert all(all(r.cached) for r in replay)
            assert server.calls == calls_before  # every success was stored
            retried = await pipeline.request(model.make_request("bad"))
    assert retried.data == ["bad#0"]  # the failure was not stored
    assert server.calls == calls_before + 1


async def test_only_the_missing_samples_are_asked_for(tmp_path, server: FakeChatServer) -> None:
    async with TogetherModel("m", api_key="k", base_url=server.together_base_url) as model:
        async with OnlineAPI(model, str(tmp_path), batch_size=4) as pipeline:
            await pipeline.request(model.make_request("q", n=1))
        async with OnlineAPI(model, str(tmp_path), batch_size=4) as pipeline:
            response = await pipeline.request(model.make_request("q", n=3))
    assert response.data == ["q#0", "q#1", "q#2"]
    assert response.cached == [True, False, False]
    assert [body.get("n", 1) for body in server.requests] == [1, 2]


async def test_the_in_flight_limit_is_honoured(tmp_path, server: FakeChatServer) -> None:
    server.hold_until(3, total=12)  # each call waits until three are in flight: the peak shows
    server.latency_s = 0.02
    async with TogetherModel(
        "m", api_key="k", base_url=server.together_base_url, limits=RateLimits(max_in_flight=3)
    ) as model:
        async with OnlineAPI(model, str(tmp_path), batch_size=12) as pipeline:
            batch = Batch([model.make_request(f"p{i}") for i in range(12)])
            results = await pipeline.batch_request(batch)
            server.release()
    assert [r.data for r in results] == [[f"p{i}#0"] for i in range(12)]
    assert server.peak_in_flight == 3
    assert model.limiter.peak_in_flight == 3


async def test_requests_per_minute_pace_the_calls(server: FakeChatServer) -> None:
    clock = Sleeps()
    now = [0.0]

    async def advance(seconds: float) -> None:
        now[0] += seconds
        await clock(seconds)

    limiter = RateLimiter(RateLimits(requests_per_minute=2), clock=lambda: now[0], sleep=advance)
    async with TogetherModel("m", api_key="k", base_url=server.together_base_url, limits=limiter) as model:
        for i in range(3):
            await model.request(model.make_request(f"q{i}"))
    assert clock.waits == [30.0]  # the third call waited for the bucket to refill
    assert server.calls == 3


@pytest.mark.parametrize("kind", ["truncated", "html"])
async def test_a_malformed_200_reply_is_retried_like_a_503(model: TogetherModel, server: FakeChatServer, kind: str) -> None:
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
    async with TogetherModel("m", api_key="k", base_url=server.together_base_url, retry=policy, sleep=sleeps) as model:
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
        TogetherModel("m", api_key="k", base_url=server.together_base_url, timeout_s=timeout_s)
