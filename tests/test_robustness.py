"""Regressions found by review: reuse across event loops, cancellation while a stage starts,
damaged or unstorable data, closing under load, replay after a failure, and bad input of every
kind getting a CacheSaverError instead of a raw exception or a hang."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time

import anyio
import diskcache
import pytest
from _support import Extra, GateModel, wait_until
from fake_chat_server import FakeChatServer

from cachesaver.stages.caching import AsyncCacher
from cachesaver.stages.deduplication import AsyncDeduplicator
from cachesaver.errors import CacheSaverError, CorruptStoreError, PipelineClosedError, TransientBackendError
from cachesaver.keys import request_key
from cachesaver.models import ScriptedModel
from cachesaver.models import together as cached_together
from cachesaver.models.openai import AsyncOpenAI, OpenAIModel
from cachesaver.pipelines import LocalAPI, OnlineAPI
from cachesaver.ratelimit import RateLimits
from cachesaver.retry import RetryPolicy
from cachesaver.tasks import load_task, parse_task_options
from cachesaver.typedefs import Batch, Request, Response


def test_a_pipeline_with_a_batch_window_survives_a_second_event_loop(tmp_path):
    pipeline = OnlineAPI(ScriptedModel(), tmp_path, batch_size=8, timeout=0.05)

    async def ask(tag):
        with anyio.fail_after(5):
            return (await pipeline.request(Request("hi " + tag, request_id=tag))).data

    assert asyncio.run(ask("first")) == ["hi first#0"]
    assert asyncio.run(ask("second")) == ["hi second#0"]


@pytest.mark.parametrize("make", ["pipeline", "deduplicator"])
async def test_a_caller_cancelled_while_the_stage_starts_does_not_strand_its_neighbour(tmp_path, make):
    stage = (
        OnlineAPI(ScriptedModel(), tmp_path, batch_size=8, timeout=0.01)
        if make == "pipeline"
        else AsyncDeduplicator(ScriptedModel())
    )
    first = asyncio.create_task(stage.request(Request("p", request_id="a")))
    second = asyncio.create_task(stage.request(Request("q", request_id="b")))
    await asyncio.sleep(0)  # both are inside the stage's first spawn
    first.cancel()
    with anyio.fail_after(5):
        assert (await second).data == ["q#0"]
    await stage.aclose()


async def test_an_unstorable_sample_does_not_cost_the_others_their_storage(tmp_path, caplog):
    def sample(request, k):
        return threading.Lock() if request.prompt == "bad" else f"{request.prompt}#{k}"

    with caplog.at_level(logging.ERROR, logger="cachesaver"):
        async with OnlineAPI(ScriptedModel(sample=sample), tmp_path, batch_size=8) as pipeline:
            good, bad = await pipeline.batch_request(Batch([Request("good", request_id="g"), Request("bad", request_id="b")]))
    assert good.data == ["good#0"] and len(bad.data) == 1  # the caller still gets what it paid for
    assert "could not store" in caplog.text
    replay_model = ScriptedModel()
    async with OnlineAPI(replay_model, tmp_path, batch_size=8) as pipeline:
        again = await pipeline.request(Request("good", request_id="g"))
    assert again.data == ["good#0"] and again.cached == [True] and replay_model.calls == 0


def _damage(cache_dir, request):
    cache = diskcache.Cache(str(cache_dir))
    cache._sql("UPDATE Cache SET value = ? WHERE key = ?", (b"\x80\x04\x95", "cachesaver/1/head/" + request_key(request)))
    cache.close()


async def test_an_undecodable_entry_fails_its_own_key_only_and_stores_keep_working(tmp_path):
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=8) as pipeline:
        await pipeline.batch_request(Batch([Request("damaged"), Request("fine")]))
    _damage(tmp_path, Request("damaged"))
    model = ScriptedModel(latency_s=0.02)
    async with OnlineAPI(model, tmp_path, batch_size=1, timeout=0) as pipeline:
        damaged, fine = await pipeline.batch_request(Batch([Request("damaged"), Request("fine")]), return_exceptions=True)

        async def later_damaged():
            await anyio.sleep(0.01)
            return await pipeline.request(Request("damaged"))

        fresh, _ = await asyncio.gather(pipeline.request(Request("brand new")), later_damaged(), return_exceptions=True)
    assert isinstance(damaged, CorruptStoreError)
    assert fine.data == ["fine#0"] and fine.cached == [True]
    assert fresh.data == ["brand new#0"]
    replay_model = ScriptedModel()
    async with OnlineAPI(replay_model, tmp_path, batch_size=1) as pipeline:
        assert (await pipeline.request(Request("brand new"))).cached == [True]
    assert replay_model.calls == 0


async def test_aclose_with_a_timeout_cancels_the_model_call_at_the_deadline(tmp_path):
    model = GateModel()  # never released
    pipeline = OnlineAPI(model, tmp_path, batch_size=1)
    task = asyncio.create_task(pipeline.request(Request("slow")))
    with anyio.fail_after(5):
        await model.entered.wait()
        start = time.perf_counter()
        await pipeline.aclose(timeout_s=0.2)
        elapsed = time.perf_counter() - start
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(outcome, PipelineClosedError)
    assert elapsed < 2  # one deadline for the whole pipeline, not one per stage
    assert model.finished == 0


async def test_a_second_aclose_waits_for_the_first_and_work_in_flight_finishes(tmp_path):
    model = ScriptedModel(latency_s=0.1, short_by=1)  # short answers force a refetch while closing
    pipeline = OnlineAPI(model, tmp_path, batch_size=1, max_refetch=0)
    task = asyncio.create_task(pipeline.request(Request("x", n=2)))
    await anyio.sleep(0.02)
    with anyio.fail_after(5):
        first = asyncio.create_task(pipeline.aclose())
        await asyncio.sleep(0)
        await pipeline.aclose()
        assert task.done() and first.done()
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    assert not isinstance(outcome, PipelineClosedError)  # it ran to its own end


async def test_replay_in_one_round_is_exact_after_a_request_failed_in_the_first_run(tmp_path):
    class FailFor:
        def __init__(self, failing):
            self.failing, self.calls, self.drawn = failing, 0, 0

        async def request(self, request):
            self.calls += 1
            if request.request_id in self.failing:
                raise TransientBackendError("overloaded", status=503)
            self.drawn += request.n
            return Response([f"draw-{self.drawn - k}" for k in range(request.n)])

    prompt = "Solve 4 4 6 8"
    async with OnlineAPI(FailFor({"sample-1"}), tmp_path, batch_size=1) as pipeline:
        first = [await pipeline.request(Request(prompt, request_id="sample-0"))]
        with pytest.raises(TransientBackendError):
            await pipeline.request(Request(prompt, request_id="sample-1"))
    healthy = FailFor(set())
    async with OnlineAPI(healthy, tmp_path, batch_size=1) as pipeline:
        second = await pipeline.batch_request(
            Batch([Request(prompt, request_id="sample-1"), Request(prompt, request_id="sample-0")])
        )
    assert second[1].data == first[0].data and second[1].cached == [True]  # sample-0 replays exactly
    assert healthy.calls == 1  # only the request that failed before is fetched


async def test_a_close_interrupted_twice_by_native_cancels_is_finished_by_the_next_aclose(tmp_path):
    """A second native ``task.cancel()`` interrupts even the shielded part of a cancelled close;
    the next ``aclose()`` then does what was left: here, wait for the pending write and close."""
    cacher = AsyncCacher(ScriptedModel(), tmp_path)
    # The second cancel ends the close once the shielded wait for the held write gives up, at
    # the end of this grace (2 s by default); nothing below depends on its length.
    cacher.cancelled_close_grace_s = 0.2
    writing, proceed = threading.Event(), threading.Event()
    write, close_store = cacher.store._write_commit, cacher.store.close
    closed = []

    def slow_write(appends, records):
        if appends:
            writing.set()
            proceed.wait(5)
        return write(appends, records)

    cacher.store._write_commit = slow_write
    cacher._broker.inline_io = False  # the slow write must run on the write thread
    cacher.store.close = lambda: (closed.append(True), close_store())
    request = Request("hi", n=2, request_id="a")
    with anyio.fail_after(5):
        asked = asyncio.create_task(cacher.request(request))
        await wait_until(writing.is_set)
        closing = asyncio.create_task(cacher.aclose())
        await wait_until(lambda: cacher._closing is not None)
        closing.cancel()  # into the graceful drain: the shielded shutdown starts
        await wait_until(lambda: cacher._broker._stopping)
        closing.cancel()  # into the shielded shutdown, waiting for the write
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert not closed and cacher._broker.running
        proceed.set()
        await cacher.aclose()
        assert closed == [True] and not cacher._broker.running
        assert cacher._background.running_jobs == 0
        await asyncio.gather(asked, return_exceptions=True)
    async with OnlineAPI(replay := ScriptedModel(), tmp_path, batch_size=1) as pipeline:
        response = await pipeline.request(request)
    assert replay.calls == 0 and response.data == ["hi#0", "hi#1"]


# -- every bad input gets a CacheSaverError, never a raw exception or a hang -----------------

def _cyclic_list() -> list:
    loop: list = []
    loop.append(loop)
    return loop


def _cyclic_dict() -> dict:
    loop: dict = {}
    loop["self"] = loop
    return loop


def _deep(depth: int = 10_000) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _n_zero() -> Request:
    request = Request("zero")
    object.__setattr__(request, "n", 0)  # past the frozen dataclass's checks
    return request


async def _ask(tmp_path, make_request) -> None:
    async with OnlineAPI(ScriptedModel(), tmp_path, batch_size=2, timeout=0.001) as pipeline:
        await pipeline.request(make_request())


async def _create(tmp_path, server: FakeChatServer, **call) -> None:
    async with AsyncOpenAI(api_key="k", base_url=server.openai_base_url, cache=tmp_path) as client:
        await client.chat.completions.create(model="m", **call)


async def _create_together(tmp_path, server: FakeChatServer, **call) -> None:
    async with cached_together.AsyncTogether(api_key="k", base_url=server.together_base_url, cache=tmp_path) as client:
        await client.chat.completions.create(model="m", **call)


async def _built(make) -> None:
    make()


async def _close_with(tmp_path, timeout_s: float) -> None:
    pipeline = OnlineAPI(ScriptedModel(), tmp_path, batch_size=2)
    try:
        await pipeline.aclose(timeout_s)
    finally:
        await pipeline.aclose()


BAD_INPUTS = {
    "surrogate-prompt": lambda t, s: _ask(t, lambda: Request("\ud800")),
    "surrogate-message": lambda t, s: _ask(t, lambda: Request([{"role": "user", "content": "a\udc00"}])),
    "surrogate-parameter": lambda t, s: _ask(t, lambda: Extra("hi", extra={"k": "\udfff"})),
    "surrogate-parameter-key": lambda t, s: _ask(t, lambda: Extra("hi", extra={"\udfff": 1})),
    "surrogate-namespace": lambda t, s: _ask(t, lambda: Request("hi", namespace="\ud800")),
    "surrogate-request-id": lambda t, s: _ask(t, lambda: Request("hi", request_id="\ud800")),
    "cyclic-list": lambda t, s: _ask(t, lambda: Extra("hi", extra=_cyclic_list())),
    "cyclic-dict": lambda t, s: _ask(t, lambda: Extra("hi", extra=_cyclic_dict())),
    "10000-deep": lambda t, s: _ask(t, lambda: Extra("hi", extra=_deep())),
    "n=0-by-setattr": lambda t, s: _ask(t, _n_zero),
    "batch-of-an-int": lambda t, s: _built(lambda: Batch(requests=123)),
    "online-api-given-a-class": lambda t, s: _built(lambda: OnlineAPI(ScriptedModel, t, batch_size=1)),
    "local-api-given-a-class": lambda t, s: _built(lambda: LocalAPI(ScriptedModel, t, batch_size=1)),
    "cacher-given-a-class": lambda t, s: _built(lambda: AsyncCacher(ScriptedModel, t)),
    "create-messages-none": lambda t, s: _create(t, s, messages=None),
    "create-messages-int": lambda t, s: _create_together(t, s, messages=123),
    "create-extra-body-str": lambda t, s: _create(t, s, messages=[{"role": "user", "content": "hi"}], extra_body="x"),
    "create-negative-timeout": lambda t, s: _create(t, s, messages=[{"role": "user", "content": "hi"}], timeout=-1),
    "timeout-inf": lambda t, s: _built(lambda: OnlineAPI(ScriptedModel(), t, batch_size=2, timeout=float("inf"))),
    "timeout-1e300": lambda t, s: _built(lambda: LocalAPI(ScriptedModel(), t, batch_size=2, timeout=1e300)),
    "retry-delay-nan": lambda t, s: _built(lambda: RetryPolicy(max_delay_s=float("nan"))),
    "rate-inf": lambda t, s: _built(lambda: RateLimits(requests_per_minute=float("inf"))),
    "backend-timeout-inf": lambda t, s: _built(
        lambda: OpenAIModel("m", api_key="k", base_url=s.openai_base_url, timeout_s=float("inf"))
    ),
    "aclose-timeout-nan": lambda t, s: _close_with(t, float("nan")),
    "task-option-without-value": lambda t, s: _built(lambda: parse_task_options(["novalue"])),
    "task-option-refused": lambda t, s: _built(lambda: load_task("cachesaver.tasks:Task", bogus=1)),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
async def test_every_bad_input_gets_a_cachesaver_error_without_hanging(tmp_path, server, name):
    with anyio.fail_after(5):  # a hang fails here instead of at the suite's time-out
        with pytest.raises(CacheSaverError) as raised:
            await BAD_INPUTS[name](tmp_path, server)
    assert str(raised.value)  # a message that says what happened
