"""Tests for the drop-in clients (cachesaver.dropin.clients, cachesaver.models.together / .openai).

Each test runs against the real together and OpenAI SDKs talking HTTP to a fake server.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import together
from _support import Sleeps
from fake_chat_server import Fault, FakeChatServer

from cachesaver.errors import (
    CacheMissError,
    ConfigurationError,
    InvalidRequestError,
    PermanentBackendError,
    PipelineClosedError,
    TransientBackendError,
    UnserializableParameterError,
)
from cachesaver.ledger import Price
from cachesaver.models import openai as cached_openai
from cachesaver.models import together as cached_together
from cachesaver.retry import RetryPolicy

FAST = RetryPolicy(max_attempts=6, initial_delay_s=0.0, jitter=0.0)
USER = [{"role": "user", "content": "tell me a joke"}]


@dataclass(frozen=True)
class Sdk:
    name: str
    async_client: Any
    sync_client: Any
    completion_type: Any
    chunk_type: Any
    base_url: Any

    def make(self, server: FakeChatServer, cache: Any, **options: Any) -> Any:
        options.setdefault("api_key", "test-key")
        options.setdefault("retry", FAST)
        return self.async_client(base_url=self.base_url(server), cache=cache, **options)

    def make_sync(self, server: FakeChatServer, cache: Any, **options: Any) -> Any:
        options.setdefault("api_key", "test-key")
        return self.sync_client(base_url=self.base_url(server), cache=cache, **options)


SDKS = {
    "together": Sdk(
        "together", cached_together.AsyncTogether, cached_together.Together,
        together.types.chat.ChatCompletion, together.types.chat.ChatCompletionChunk,
        lambda s: s.together_base_url,
    ),
    "openai": Sdk(
        "openai", cached_openai.AsyncOpenAI, cached_openai.OpenAI,
        openai.types.chat.ChatCompletion, openai.types.chat.ChatCompletionChunk,
        lambda s: s.openai_base_url,
    ),
}


@pytest.fixture(params=sorted(SDKS))
def sdk(request: pytest.FixtureRequest) -> Sdk:
    return SDKS[request.param]


def texts(completion: Any) -> list[str]:
    return [c.message.content for c in completion.choices]


async def test_create_returns_the_sdk_completion_with_n_choices(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    async with sdk.make(server, tmp_path) as client:
        completion = await client.chat.completions.create(model="m", messages=USER, n=3, temperature=0.7)
    assert isinstance(completion, sdk.completion_type)
    assert texts(completion) == [f"tell me a joke#{k}" for k in range(3)]
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert [(c.cached, c.duplicated) for c in completion.choices] == [(False, False)] * 3
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 9)
    assert server.requests[0]["n"] == 3 and server.requests[0]["temperature"] == 0.7


async def test_a_new_client_on_the_same_cache_replays(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    async with sdk.make(server, tmp_path) as first:
        original = [
            texts(await first.chat.completions.create(model="m", messages=USER, n=2, request_id=i)) for i in range(3)
        ]
    calls = server.calls
    async with sdk.make(server, tmp_path, api_key="another-key", timeout=5.0) as second:
        replayed = []
        for i in reversed(range(3)):  # any order: replay is per (request, request_id)
            completion = await second.chat.completions.create(model="m", messages=USER, n=2, request_id=i)
            assert [c.cached for c in completion.choices] == [True, True]
            replayed.insert(0, texts(completion))
    assert replayed == original
    assert server.calls == calls  # credentials and time-outs are not part of the key
    assert len({t for pair in original for t in pair}) == 6  # every request got fresh samples


async def test_clients_with_one_run_id_are_one_run(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    async with sdk.make(server, tmp_path, run_id="team") as first, sdk.make(server, tmp_path, run_id="team") as second:
        a = await first.chat.completions.create(model="m", messages=USER, n=2)
        b = await second.chat.completions.create(model="m", messages=USER, n=2)
        assert set(texts(a)).isdisjoint(texts(b))  # fresh samples across the two clients
        assert first.pipeline.cacher.run.run_id == "team"
    async with sdk.make(server, tmp_path) as alone:  # its own run: the stored ones again
        assert texts(await alone.chat.completions.create(model="m", messages=USER, n=2)) == texts(a)


async def test_namespaces_per_client_and_per_call(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    async with sdk.make(server, tmp_path, namespace="run-a") as client:
        first = await client.chat.completions.create(model="m", messages=USER, n=2)
        again = await client.chat.completions.create(model="m", messages=USER, n=2)
        assert set(texts(first)).isdisjoint(texts(again))  # fresh inside a namespace
        assert server.calls == 2
        other = await client.chat.completions.create(model="m", messages=USER, n=2, namespace="run-b")
        assert texts(other) == texts(first)  # another namespace reuses stored samples
        assert [c.cached for c in other.choices] == [True, True]
        assert server.calls == 2
    assert client.ledger.entry("run-b").samples_cached == 2


async def test_the_model_and_parameters_split_the_cache(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    async with sdk.make(server, tmp_path) as client:
        await client.chat.completions.create(model="m", messages=USER)
        await client.chat.completions.create(model="m", messages=USER, namespace="x")
        await client.chat.completions.create(model="m2", messages=USER, namespace="x")
        await client.chat.completions.create(model="m", messages=USER, namespace="y", temperature=0.1)
    assert server.calls == 3
    assert [b["model"] for b in server.requests] == ["m", "m2", "m"]


async def test_previous_answers_may_be_sent_back_as_messages(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    async with sdk.make(server, tmp_path) as client:
        first = await client.chat.completions.create(model="m", messages=USER)
        follow_up = USER + [first.choices[0].message, {"role": "user", "content": "another"}]
        second = await client.chat.completions.create(model="m", messages=follow_up)
    assert texts(second) == ["another#0"]
    assert server.requests[1]["messages"][1]["content"] == "tell me a joke#0"


async def test_other_attributes_reach_the_real_sdk_untouched(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    client = sdk.make(server, tmp_path)
    assert client.api_key == "test-key"
    files = await client.files.list()
    assert list(files.data) == []
    assert server.other_paths[-1].endswith("/files")
    raw = client.chat.completions.with_raw_response
    assert type(raw).__module__.startswith(sdk.name)
    await client.close()  # closing is not a chat call
    assert server.calls == 0
    assert client.is_closed()
    with pytest.raises(PipelineClosedError):
        await client.chat.completions.create(model="m", messages=USER)


async def test_a_per_call_time_out_applies_to_that_call_only(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    server.slow_next(0.3, times=3)  # six times the per-call time-out, well within the client's
    sleeps = Sleeps()
    retry = RetryPolicy(max_attempts=2, initial_delay_s=0.0, jitter=0.0)
    async with sdk.make(server, tmp_path, retry=retry, sleep=sleeps) as client:
        with pytest.raises(TransientBackendError, match="gave up after 2 attempts"):
            await client.chat.completions.create(model="m", messages=USER, n=2, timeout=0.05)
        assert (server.calls, sleeps.waits) == (2, [0.0])  # retried once, per the RetryPolicy
        completion = await client.chat.completions.create(model="m", messages=USER, n=2)
        assert [c.cached for c in completion.choices] == [False, False]
        assert all(text.startswith("tell me a joke#") for text in texts(completion))
    assert server.calls == 3


async def test_per_call_headers_and_query_reach_the_server_but_not_the_key(
    sdk: Sdk, server: FakeChatServer, tmp_path
) -> None:
    async with sdk.make(server, tmp_path) as client:
        first = await client.chat.completions.create(
            model="m", messages=USER, n=2, extra_headers={"X-Trace": "t-1"}, extra_query={"tag": "a"}
        )
        plain = await client.chat.completions.create(model="m", messages=USER, n=2, namespace="b")
        timed = await client.chat.completions.create(model="m", messages=USER, n=2, namespace="c", timeout=0.05)
    assert server.headers[0]["x-trace"] == "t-1"
    assert server.paths[0].endswith("/chat/completions?tag=a")
    assert set(server.requests[0]) == {"model", "messages", "n"}  # nothing leaked into the body
    assert texts(plain) == texts(timed) == texts(first)  # one cache entry for all three
    assert [c.cached for c in plain.choices + timed.choices] == [True] * 4
    assert server.calls == 1
    async with sdk.make(server, tmp_path) as replay:  # and a new run replays it without the options
        again = await replay.chat.completions.create(model="m", messages=USER, n=2)
    assert texts(again) == texts(first) and server.calls == 1


async def test_stream_replays_the_completion_as_chunks(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    async with sdk.make(server, tmp_path) as client:
        stream = await client.chat.completions.create(
            model="m", messages=USER, n=2, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        replay = await client.chat.completions.create(model="m", messages=USER, n=2, namespace="other")
    assert all(isinstance(c, sdk.chunk_type) for c in chunks)
    assert [c.choices[0].delta.content for c in chunks[:2]] == texts(replay)
    assert [c.choices[0].finish_reason for c in chunks[:2]] == ["stop", "stop"]
    assert chunks[2].choices == [] and chunks[2].usage.completion_tokens == 6
    assert "stream" not in server.requests[0]  # the server never streamed: nothing to pickle


async def test_faults_are_retried_and_never_stored(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    server.fail_next(503, times=3)
    server.fail_next(429, headers={"Retry-After": "7"})
    server.fail_when(lambda body: Fault(401) if body["messages"][-1]["content"] == "secret" else None)
    prompts = [f"question {i}" for i in range(5)]
    sleeps = Sleeps()
    async with sdk.make(server, tmp_path, sleep=sleeps) as client:
        answers = await asyncio.gather(*[
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": p}], n=2) for p in prompts
        ])
        with pytest.raises(PermanentBackendError) as raised:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "secret"}], request_id="s-1"
            )
    assert sorted(sleeps.waits) == [0.0, 0.0, 0.0, 7.0]  # FAST backs off 0 s; Retry-After says 7
    error = raised.value
    assert (error.status, error.request_id, error.provider_request_id) == (401, "s-1", f"req-fake-{server.calls}")
    assert [texts(a) for a in answers] == [[f"{p}#0", f"{p}#1"] for p in prompts]
    assert server.completed == 5
    calls = server.calls
    async with sdk.make(server, tmp_path) as client:
        for p, answer in zip(prompts, answers):
            again = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": p}], n=2)
            assert texts(again) == texts(answer)
        assert server.calls == calls
        with pytest.raises(PermanentBackendError):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "secret"}])
    assert server.calls == calls + 1  # the failure was not stored: it was asked again


@pytest.mark.parametrize("kind", ["truncated", "html"])
async def test_a_malformed_200_reply_is_retried_like_a_503(
    sdk: Sdk, server: FakeChatServer, tmp_path, kind: str
) -> None:
    server.malformed_next(kind)
    async with sdk.make(server, tmp_path, sleep=Sleeps()) as client:
        completion = await client.chat.completions.create(model="m", messages=USER)
    assert texts(completion) == ["tell me a joke#0"]
    assert server.calls == 2


@pytest.mark.parametrize("kind", ["truncated", "html"])
async def test_only_malformed_replies_give_up_with_a_transient_error_and_store_nothing(
    sdk: Sdk, server: FakeChatServer, tmp_path, kind: str
) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0.0)
    server.malformed_next(kind, times=3)
    async with sdk.make(server, tmp_path, retry=policy, sleep=Sleeps()) as client:
        with pytest.raises(TransientBackendError, match="gave up after 3 attempts"):
            await client.chat.completions.create(model="m", messages=USER, request_id="r")
    assert server.calls == 3
    async with sdk.make(server, tmp_path) as client:
        again = await client.chat.completions.create(model="m", messages=USER, request_id="r")
    assert texts(again) == ["tell me a joke#0"] and again.choices[0].cached is False
    assert server.calls == 4  # nothing was stored from the malformed replies


def test_a_malformed_reply_reaches_a_blocking_client_as_a_transient_error(
    sdk: Sdk, server: FakeChatServer, tmp_path
) -> None:
    server.malformed_next("html", times=2)
    with sdk.make_sync(server, tmp_path, retry=RetryPolicy(max_attempts=2, initial_delay_s=0.0)) as client:
        with pytest.raises(TransientBackendError, match="not JSON"):
            client.chat.completions.create(model="m", messages=USER)
    assert server.calls == 2


async def test_sdk_max_retries_sets_the_retry_budget(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    server.fail_next(503, times=5)
    sleeps = Sleeps()  # the default policy backs off up to 0.5 s: recorded, not waited
    async with sdk.make(server, tmp_path, max_retries=1, retry=None, sleep=sleeps) as client:
        assert client.backend.retry.max_attempts == 2
        with pytest.raises(Exception, match="gave up after 2 attempts"):
            await client.chat.completions.create(model="m", messages=USER)
    assert server.calls == 2 and len(sleeps.waits) == 1


async def test_exact_ledger_numbers_with_prices(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    prices = {"m": Price(input_usd_per_million=2.0, output_usd_per_million=10.0)}
    async with sdk.make(server, tmp_path, prices=prices, namespace="a") as client:
        await client.chat.completions.create(model="m", messages=USER, n=3)  # 4 prompt + 9 completion
        await client.chat.completions.create(model="m", messages=USER, n=3, namespace="b")  # all cached
        other = [{"role": "user", "content": "another question"}]
        await asyncio.gather(  # identical and concurrent: merged into one call of n=2
            client.chat.completions.create(model="m", messages=other, namespace="c"),
            client.chat.completions.create(model="m", messages=other, namespace="c"),
        )
    ledger = client.ledger
    a, b, c = (ledger.entry(ns) for ns in "abc")
    assert (a.upstream_calls, a.samples_generated, a.prompt_tokens, a.completion_tokens) == (1, 3, 4, 9)
    assert a.cost_usd == (4 * 2.0 + 9 * 10.0) / 1e6
    assert (b.upstream_calls, b.samples_cached, b.tokens_saved) == (0, 3, 13)
    assert b.saved_usd == a.cost_usd
    assert (c.upstream_calls, c.samples_generated, c.samples_duplicated, c.tokens_spent) == (1, 2, 1, 2 + 6)
    total = ledger.total()
    assert (total.upstream_calls, total.samples_served, total.tokens_spent) == (2, 8, 21)
    assert total.cost_usd == (6 * 2.0 + 15 * 10.0) / 1e6
    assert server.calls == 2
    assert "total" in ledger.render()


BAD_CALLS = [
    pytest.param({"messages": None}, InvalidRequestError, "messages=", id="messages=None"),
    pytest.param({"messages": 123}, InvalidRequestError, "messages=", id="messages=123"),
    pytest.param({"messages": "hi"}, InvalidRequestError, "messages=", id="messages-a-string"),
    pytest.param({"messages": USER, "extra_body": "x"}, InvalidRequestError, "extra_body=", id="extra_body=x"),
    pytest.param({"messages": [{"role": "user", "content": "\ud800"}]}, UnserializableParameterError,
                 "lone surrogate", id="surrogate-content"),
]


@pytest.mark.parametrize(("call", "error", "hint"), BAD_CALLS)
async def test_a_bad_create_call_is_an_invalid_request_error(
    sdk: Sdk, server: FakeChatServer, tmp_path, call: dict, error: type, hint: str
) -> None:
    async with sdk.make(server, tmp_path) as client:
        with pytest.raises(error, match=hint):
            await client.chat.completions.create(model="m", **call)
        assert texts(await client.chat.completions.create(model="m", messages=USER)) == ["tell me a joke#0"]
    assert server.calls == 1  # the bad call never reached the server


@pytest.mark.parametrize(("call", "error", "hint"), BAD_CALLS)
def test_a_bad_create_call_on_a_blocking_client_is_an_invalid_request_error(
    sdk: Sdk, server: FakeChatServer, tmp_path, call: dict, error: type, hint: str
) -> None:
    with sdk.make_sync(server, tmp_path) as client:
        with pytest.raises(error, match=hint):
            client.chat.completions.create(model="m", **call)
    assert server.calls == 0


@pytest.mark.parametrize("batch_timeout_s", [float("inf"), 1e300, float("nan")])
def test_an_endless_batch_timeout_is_a_configuration_error(sdk: Sdk, server: FakeChatServer, tmp_path, batch_timeout_s) -> None:
    with pytest.raises(ConfigurationError, match="batch_timeout_s"):
        sdk.make(server, tmp_path, batch_timeout_s=batch_timeout_s)


def test_sync_client_in_a_plain_script(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    with sdk.make_sync(server, tmp_path) as client:
        completion = client.chat.completions.create(model="m", messages=USER, n=2)
        assert isinstance(completion, sdk.completion_type)
        assert texts(completion) == ["tell me a joke#0", "tell me a joke#1"]
        stream = client.chat.completions.create(model="m", messages=USER, n=1, stream=True)
        assert [c.choices[0].delta.content for c in stream] == ["tell me a joke#2"]
        assert client.files.list().data == []  # the real sync SDK client
        assert not type(client.files).__name__.startswith("Async")
        assert not type(client.chat.completions.with_raw_response).__name__.startswith("Async")
        assert client.ledger.total().samples_generated == 3
    assert server.calls == 2
    with pytest.raises(PipelineClosedError):
        client.chat.completions.create(model="m", messages=USER)
    client.close()  # idempotent


async def test_sync_client_inside_a_running_event_loop(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    # Jupyter runs cells inside an event loop; a blocking call from there must still work.
    client = sdk.make_sync(server, tmp_path)
    try:
        completion = client.chat.completions.create(model="m", messages=USER, n=2)
        assert texts(completion) == ["tell me a joke#0", "tell me a joke#1"]
    finally:
        client.close()
    replay = sdk.make_sync(server, tmp_path)
    try:
        assert texts(replay.chat.completions.create(model="m", messages=USER, n=2)) == texts(completion)
    finally:
        replay.close()
    assert server.calls == 1


def test_sync_client_takes_the_sdk_http_client(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    blocking: list[str] = []
    http_client = httpx.Client(event_hooks={"request": [lambda request: blocking.append(request.url.path)]})
    with sdk.make_sync(server, tmp_path, http_client=http_client) as client:
        completion = client.chat.completions.create(model="m", messages=USER, n=2)
        assert texts(completion) == ["tell me a joke#0", "tell me a joke#1"]
        files = client.files.list()  # blocking, through the caller's httpx.Client
        assert not inspect.isawaitable(files) and list(files.data) == []
        if sdk.name == "openai":  # together's models.list needs a project id
            models = client.models.list()
            assert not inspect.isawaitable(models) and [m.id for m in models] == ["fake-model"]
    assert all(path.endswith(("/files", "/models")) for path in blocking) and blocking
    assert http_client.is_closed  # closed with the SDK client, as the SDK does
    assert server.calls == 1


def test_sync_client_chat_calls_use_the_async_http_client(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    seen: list[str] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request.url.path)

    http_client = httpx.Client(headers={"X-Client": "blocking"})
    async_http_client = httpx.AsyncClient(headers={"X-Client": "async"}, event_hooks={"request": [record]})
    with sdk.make_sync(server, tmp_path, http_client=http_client, async_http_client=async_http_client) as client:
        client.chat.completions.create(model="m", messages=USER)
    assert seen and all(path.endswith("/chat/completions") for path in seen)
    assert server.headers[0]["x-client"] == "async"


def test_http_clients_of_the_wrong_kind_are_configuration_errors(sdk: Sdk, server: FakeChatServer, tmp_path) -> None:
    async def check() -> None:
        async with httpx.AsyncClient() as async_http_client:
            with pytest.raises(ConfigurationError, match="async_http_client"):
                sdk.make_sync(server, tmp_path, http_client=async_http_client)
            with pytest.raises(ConfigurationError, match="async_http_client= is only for the blocking"):
                sdk.make(server, tmp_path, async_http_client=async_http_client)
        with httpx.Client() as http_client:
            with pytest.raises(ConfigurationError, match="needs an httpx.AsyncClient"):
                sdk.make_sync(server, tmp_path, async_http_client=http_client)
            with pytest.raises(ConfigurationError, match="refused its arguments"):  # the SDK's TypeError
                sdk.make(server, tmp_path, http_client=http_client)

    asyncio.run(check())


def test_sync_openai_takes_a_blocking_api_key_provider(server: FakeChatServer, tmp_path) -> None:
    with cached_openai.OpenAI(api_key=lambda: "from-provider", base_url=server.openai_base_url, cache=tmp_path) as client:
        client.chat.completions.create(model="m", messages=USER)
    assert server.headers[0]["authorization"] == "Bearer from-provider"


def test_the_cache_directory_defaults_to_the_environment(
    sdk: Sdk, server: FakeChatServer, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHESAVER_CACHE_DIR", str(tmp_path / "from-env"))
    with sdk.sync_client(api_key="k", base_url=sdk.base_url(server)) as client:
        client.chat.completions.create(model="m", messages=USER)
        assert client.pipeline.cache.directory == str(tmp_path / "from-env")


def test_a_missing_api_key_is_a_configuration_error(sdk: Sdk, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in ("TOGETHER_API_KEY", "OPENAI_API_KEY", "OPENAI_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError):
        sdk.async_client(cache=tmp_path)


def test_sync_client_in_a_jupyter_kernel(server: FakeChatServer, tmp_path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cell = f"""
from cachesaver.models.openai import OpenAI
client = OpenAI(api_key="k", base_url={server.openai_base_url!r}, cache={str(tmp_path)!r})
completion = client.chat.completions.create(model="m", messages=[{{"role": "user", "content": "hi"}}], n=2)
client.close()
print([c.message.content for c in completion.choices], [c.cached for c in completion.choices])
"""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(cell)]
    nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3").execute()
    output = "".join(o.get("text", "") for o in notebook.cells[0].outputs)
    assert output.strip() == "['hi#0', 'hi#1'] [False, False]"
    assert server.calls == 1


async def test_a_replay_mode_client_needs_no_key_and_never_reaches_the_server(
    sdk: Sdk, server: FakeChatServer, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sdk.make(server, tmp_path) as first:
        original = texts(await first.chat.completions.create(model="m", messages=USER, n=2, request_id="q"))
    calls = server.calls
    for name in ("TOGETHER_API_KEY", "OPENAI_API_KEY", "OPENAI_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    async with sdk.async_client(base_url=sdk.base_url(server), cache=tmp_path, mode="replay") as client:
        assert client.pipeline.mode == "replay"
        replayed = await client.chat.completions.create(model="m", messages=USER, n=2, request_id="q")
        with pytest.raises(CacheMissError, match="nearest stored: .*message 1 \\(user\\) differs"):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "other"}])
    assert texts(replayed) == original and [c.cached for c in replayed.choices] == [True, True]
    assert server.calls == calls


def test_the_mode_of_a_blocking_client_comes_from_the_environment(
    sdk: Sdk, server: FakeChatServer, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHESAVER_MODE", "bypass")
    with sdk.make_sync(server, tmp_path) as client:
        assert client.pipeline.mode == "bypass"
        client.chat.completions.create(model="m", messages=USER)
        client.chat.completions.create(model="m", messages=USER)
    assert server.calls == 2  # nothing stored, so nothing replayed
    with pytest.raises(ConfigurationError, match="mode must be one of"):
        sdk.make(server, tmp_path, mode="strict")
