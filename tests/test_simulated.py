"""SimulatedLLM: exact sample counts, determinism, skewed repetition, KV-cache-aware latency."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

import anyio
import pytest
import trio.testing

from cachesaver.errors import ConfigurationError, InvalidRequestError, TransientBackendError
from cachesaver.kvcache import Cluster, Server
from cachesaver.models.simulated import LatencyModel, SimulatedLLM, chat_id_for, conversation_of
from cachesaver.typedefs import Batch, BatchRequestModel, Request, Response, SingleRequestModel


@dataclass(frozen=True)
class DecodingRequest(Request):
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None


@dataclass(frozen=True)
class LooseRequest:
    """A duck-typed request that skips Request's own validation."""

    prompt: Any
    n: Any = 1
    request_id: Any = None
    namespace: str = "default"


def by_rank(prompt: str, rank: int, rng: random.Random) -> str:
    return f"rank{rank}"


def fixed_length(prompt: str, rank: int, rng: random.Random) -> str:
    return "y" * 10


# one token per character, no per-message overhead: modeled seconds can be computed by hand
EXACT = LatencyModel(
    prefill_s_per_token=1.0,
    reload_s_per_token=0.25,
    decode_s_per_token=0.5,
    overhead_s_per_call=0.0,
    chars_per_token=1.0,
    tokens_per_message=0,
)


def chat(*turns: str) -> list[dict[str, str]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


async def test_returns_exactly_n_string_samples_with_usage() -> None:
    model = SimulatedLLM(seed=3)
    response = await model.request(Request("Explain KV caches.", n=5))
    assert len(response.data) == 5 and all(isinstance(s, str) and s for s in response.data)
    assert response.usage is not None and len(response.usage) == 5
    assert set(response.usage[0]) == {"prompt_tokens", "completion_tokens"}
    assert response.usage[0]["prompt_tokens"] > 0 and all(u["prompt_tokens"] == 0 for u in response.usage[1:])
    stats = model.stats()
    assert stats.prompt_tokens == sum(u["prompt_tokens"] for u in response.usage)
    assert stats.completion_tokens == sum(u["completion_tokens"] for u in response.usage)
    assert (stats.calls, stats.requests, stats.samples) == (1, 1, 5)


def test_implements_both_model_protocols() -> None:
    model = SimulatedLLM()
    assert isinstance(model, SingleRequestModel) and isinstance(model, BatchRequestModel)


async def test_same_seed_same_calls_same_samples() -> None:
    prompts = ["alpha", "beta", "alpha", "gamma"]
    runs = []
    for _ in range(2):
        model = SimulatedLLM(seed=11)
        runs.append([(await model.request(Request(p, n=3))).data for p in prompts])
    assert runs[0] == runs[1]
    other = SimulatedLLM(seed=12)
    assert [(await other.request(Request(p, n=3))).data for p in prompts] != runs[0]


async def test_samples_continue_the_stream_and_ignore_interleaving() -> None:
    whole = await SimulatedLLM(seed=5).request(Request("q", n=6))
    model = SimulatedLLM(seed=5)
    first = await model.request(Request("q", n=2, request_id="a", namespace="x"))
    await model.request(Request("something else", n=4))
    rest = await model.batch_request(Batch([Request("other", n=1), Request("q", n=4)]))
    assert first.data + rest[1].data == whole.data


async def test_repeated_sampling_repeats_with_a_skewed_distribution() -> None:
    model = SimulatedLLM(seed=0, num_candidates=5, zipf_s=1.2, compose=by_rank)
    counts = Counter((await model.request(Request("p", n=400))).data)
    assert set(counts) <= {f"rank{r}" for r in range(5)}
    assert counts["rank0"] > counts["rank1"] > counts["rank4"]
    assert counts["rank0"] > 400 / 5 * 1.5


async def test_zero_skew_is_roughly_uniform_and_one_candidate_is_constant() -> None:
    uniform = Counter((await SimulatedLLM(zipf_s=0, num_candidates=4, compose=by_rank).request(Request("p", n=400))).data)
    assert len(uniform) == 4 and min(uniform.values()) > 60
    single = await SimulatedLLM(num_candidates=1).request(Request("p", n=5))
    assert len(set(single.data)) == 1


async def test_temperature_zero_always_gives_the_most_likely_answer() -> None:
    model = SimulatedLLM(seed=9, compose=by_rank)
    response = await model.request(DecodingRequest("p", n=20, temperature=0))
    assert response.data == ["rank0"] * 20
    hot = Counter((await model.request(DecodingRequest("p", n=200, temperature=5.0))).data)
    assert len(hot) == 6  # a high temperature flattens the distribution


async def test_default_candidates_are_per_prompt_text() -> None:
    model = SimulatedLLM(seed=1, num_candidates=1)
    a = await model.request(Request("first prompt"))
    b = await model.request(Request("second prompt"))
    assert a.data != b.data and a.data[0].startswith("Thought 1: ")


async def test_max_tokens_truncates_samples() -> None:
    model = SimulatedLLM(latency=EXACT, compose=fixed_length)
    response = await model.request(DecodingRequest("p", n=2, max_tokens=4))
    assert response.data == ["yyyy", "yyyy"]
    assert [u["completion_tokens"] for u in response.usage] == [4, 4]


def test_chat_id_rule() -> None:
    opening = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "task"}]
    later = opening + [{"role": "assistant", "content": "step 1"}, {"role": "user", "content": "next"}]
    ids = [chat_id_for(conversation_of(Request(p))) for p in (opening, later)]
    assert ids[0] == ids[1] and ids[0].startswith("chat-") and len(ids[0]) == 21
    assert chat_id_for(conversation_of(Request("task"))) == chat_id_for(conversation_of(Request(chat("task"))))
    other_task = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "other task"}]
    other_system = [{"role": "system", "content": "be long"}, {"role": "user", "content": "task"}]
    assert len({ids[0], *(chat_id_for(conversation_of(Request(p))) for p in (other_task, other_system))}) == 3


async def test_later_turns_hit_the_kv_cache_and_independent_prompts_miss() -> None:
    model = SimulatedLLM(seed=2)
    first = await model.request(Request(chat("solve 3 4 6 8"), n=1))
    assert model.stats().kv_misses == 1
    await model.request(Request(chat("solve 3 4 6 8", first.data[0], "next step"), n=1))
    assert (model.stats().kv_vram_hits, model.stats().kv_misses) == (1, 1)
    await model.request(Request(chat("an unrelated question"), n=1))
    stats = model.stats()
    assert (stats.kv_hits, stats.kv_misses, stats.kv_hit_rate) == (1, 2, 1 / 3)
    assert model.cluster.stats().hit_rate == pytest.approx(1 / 3)


async def test_vram_hit_prefills_only_new_tokens_and_reuses_the_cached_context() -> None:
    model = SimulatedLLM(latency=EXACT, compose=fixed_length, cluster=Cluster([("g", Server(2, 2))]))
    await model.request(Request(chat("abcd"), n=1))  # miss: prefill 4, decode 10 -> 4 + 5
    assert model.stats().modeled_seconds == 9.0
    before = model.stats()
    await model.request(Request(chat("abcd", "y" * 10, "ef"), n=2))
    delta = model.stats().since(before)
    assert delta.reused_prompt_tokens == 14  # "abcd" + the cached reply
    assert delta.modeled_seconds == 2 * 1.0 + 20 * 0.5  # prefill "ef", decode 2 x 10
    assert delta.prompt_tokens == 16 and delta.kv_vram_hits == 1


async def test_a_different_reply_reuses_only_the_shared_prefix() -> None:
    model = SimulatedLLM(latency=EXACT, compose=fixed_length, cluster=Cluster([("g", Server(2, 2))]))
    await model.request(Request(chat("abcd"), n=1))
    before = model.stats()
    await model.request(Request(chat("abcd", "zz", "ef"), n=1))  # not the reply the server cached
    delta = model.stats().since(before)
    assert delta.reused_prompt_tokens == 4
    assert delta.modeled_seconds == (2 + 2) * 1.0 + 10 * 0.5


async def test_ram_hit_reloads_the_context_then_prefills_the_new_tokens() -> None:
    model = SimulatedLLM(latency=EXACT, compose=fixed_length, cluster=Cluster([("g", Server(2, 2))]))
    await model.request(Request(chat("abcd")))
    await model.request(Request(chat("other 1")))
    await model.request(Request(chat("other 2")))  # demotes the first chat to RAM
    before = model.stats()
    await model.request(Request(chat("abcd", "y" * 10, "ef")))
    delta = model.stats().since(before)
    assert delta.kv_ram_hits == 1
    assert delta.modeled_seconds == 14 * 0.25 + 2 * 1.0 + 10 * 0.5


async def test_a_dropped_chat_misses_and_prefills_everything() -> None:
    model = SimulatedLLM(latency=EXACT, compose=fixed_length, cluster=Cluster([("g", Server(2, 2))]))
    await model.request(Request(chat("abcd")))
    for i in range(4):
        await model.request(Request(chat(f"other {i}")))
    before = model.stats()
    await model.request(Request(chat("abcd", "y" * 10, "ef")))
    delta = model.stats().since(before)
    assert delta.kv_misses == 1 and delta.reused_prompt_tokens == 0
    assert delta.modeled_seconds == 16 * 1.0 + 10 * 0.5


async def test_call_overhead_is_paid_once_per_batch() -> None:
    latency = LatencyModel(overhead_s_per_call=1.0, decode_s_per_token=0, prefill_s_per_token=0)
    single = SimulatedLLM(latency=latency)
    for prompt in ["a", "b", "c"]:
        await single.request(Request(prompt))
    batched = SimulatedLLM(latency=latency)
    await batched.batch_request(Batch([Request(p) for p in ["a", "b", "c"]]))
    assert single.stats().modeled_seconds == 3.0 and batched.stats().modeled_seconds == 1.0
    assert (single.stats().calls, batched.stats().calls, batched.stats().requests) == (3, 1, 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (LooseRequest("hello", n=0), "n must be an int >= 1"),
        (LooseRequest("hello", n=True), "n must be an int >= 1"),
        (LooseRequest(""), "prompt is empty"),
        (LooseRequest("   "), "prompt is empty"),
        (LooseRequest([]), "non-empty list"),
        (LooseRequest(None), "non-empty string"),
        (LooseRequest([{"content": "no role"}]), "string 'role'"),
        (DecodingRequest("hi", temperature=-1.0), "temperature"),
    ],
)
async def test_bad_input_raises_invalid_request_error(bad: Any, message: str) -> None:
    model = SimulatedLLM()
    with pytest.raises(InvalidRequestError, match=message):
        await model.request(bad)
    assert model.stats().failed_requests == 1 and model.cluster.stats().requests == 0


async def test_batch_entries_fail_alone() -> None:
    model = SimulatedLLM()
    results = await model.batch_request(Batch([Request("ok", n=2), LooseRequest(""), Request("fine")]))  # type: ignore[list-item]
    assert isinstance(results[0], Response) and len(results[0].data) == 2
    assert isinstance(results[1], InvalidRequestError)
    assert isinstance(results[2], Response) and len(results[2].data) == 1


async def test_every_server_offline_is_a_transient_backend_error() -> None:
    model = SimulatedLLM()
    for server in model.cluster.servers.values():
        server.shutdown()
    with pytest.raises(TransientBackendError) as caught:
        await model.request(Request("hello", request_id="r1"))
    assert caught.value.status == 503 and caught.value.request_id == "r1"
    results = await model.batch_request(Batch([Request("a"), Request("b")]))
    assert all(isinstance(r, TransientBackendError) for r in results)
    assert model.cluster.stats().failed_requests == 3


async def test_failover_keeps_serving_when_one_server_is_down() -> None:
    model = SimulatedLLM()
    first = await model.request(Request(chat("task"), n=1))
    pinned = model.cluster.server_for(chat_id_for(conversation_of(Request(chat("task")))))
    assert pinned is not None
    model.cluster.servers[pinned].shutdown()
    await model.request(Request(chat("task", first.data[0], "next"), n=1))
    assert model.cluster.stats().failovers == 1 and model.stats().kv_misses == 2


def test_time_scale_sleeps_the_modeled_time_on_a_virtual_clock() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def run() -> tuple[float, float]:
        model = SimulatedLLM(latency=EXACT, compose=fixed_length, time_scale=2.0)
        start = trio.current_time()
        await model.request(Request("abcd"))
        return trio.current_time() - start, model.stats().modeled_seconds

    elapsed, modeled = anyio.run(run, backend="trio", backend_options={"clock": clock})
    assert modeled == 9.0 and elapsed == pytest.approx(18.0)


def test_time_scale_zero_never_sleeps_on_a_virtual_clock() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def run() -> float:
        model = SimulatedLLM(latency=EXACT, compose=fixed_length)
        start = trio.current_time()
        await model.batch_request(Batch([Request("abcd"), Request("efgh")]))
        return trio.current_time() - start

    assert anyio.run(run, backend="trio", backend_options={"clock": clock}) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_candidates": 0}, "num_candidates"),
        ({"zipf_s": -1}, "zipf_s"),
        ({"time_scale": float("nan")}, "time_scale"),
        ({"seed": "x"}, "seed"),
        ({"cluster": object()}, "cluster"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SimulatedLLM(**kwargs)


def test_latency_model_validates() -> None:
    with pytest.raises(ConfigurationError, match="decode_s_per_token must be >= 0"):
        LatencyModel(decode_s_per_token=-1)
    with pytest.raises(ConfigurationError, match="chars_per_token must be > 0"):
        LatencyModel(chars_per_token=0)
    assert LatencyModel().tokens("") == 0 and LatencyModel().tokens("abcde") == 2
