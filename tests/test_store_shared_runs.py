"""Shared runs (``run_id=``): pipelines on one store with one run id form one run.

The in-process tests run on every pipeline engine (the ``cache`` fixture: diskcache, memory,
Redis); the crashed-run test kills a real worker process (diskcache and Redis, the engines
processes share)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from _support import StoreForwarder, gather
from test_store_diskcache import read_only_view
from _workers import command, read_lines

from cachesaver.errors import BackendError, ConfigurationError
from cachesaver.models import ScriptedModel
from cachesaver.pipelines import LocalAPI, OnlineAPI
from cachesaver.stages.caching import AsyncCacher
from cachesaver.store.memory import MemoryStore
from cachesaver.store.shared_runs import LINGER_NAME, SharedRun, end_run, run_status
from cachesaver.typedefs import Request

TESTS_DIR = str(Path(__file__).parent)


async def seed(cache: Any, prompt: str, n: int) -> None:
    """Store ``n`` samples of ``prompt`` (a run of its own)."""
    async with OnlineAPI(ScriptedModel(sample=lambda r, k: f"{r.prompt}#{k}"), cache, 8, 0.001) as pipeline:
        await pipeline.request(Request(prompt, n=n))


async def test_pipelines_of_one_run_never_hand_out_a_stored_sample_twice(cache: Any) -> None:
    await seed(cache, "p", 6)
    model = ScriptedModel(sample=lambda r, k: f"new:{r.prompt}#{k}")
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as a, OnlineAPI(model, cache, 4, 0.001, run_id="r") as b, \
            LocalAPI(model, cache, 4, 0.001, run_id="r") as c:
        pipelines = [a, b, c] * 3
        answers = await gather(*[lambda p=p: p.request(Request("p", namespace="ns")) for p in pipelines])
    data = [d for answer in answers for d in answer.data]
    assert len(data) == len(set(data)) == 9  # i.i.d. across the three pipelines
    assert sum(answer.cached[0] for answer in answers) == 6  # every stored sample used once


async def test_without_run_id_each_pipeline_is_its_own_run(cache: Any) -> None:
    await seed(cache, "p", 2)
    async with OnlineAPI(ScriptedModel(), cache, 4, 0.001) as a, OnlineAPI(ScriptedModel(), cache, 4, 0.001) as b:
        first = await a.request(Request("p", n=2))
        second = await b.request(Request("p", n=2))
    assert first.data == second.data == ["p#0", "p#1"] and all(second.cached)


def _requests() -> list[Request]:
    out = [Request(f"p{i % 4}", n=1 + i % 3, request_id=f"id{i}", namespace=f"ns{i % 2}") for i in range(36)]
    out += [Request("p0", n=2, request_id="again", namespace="ns0") for _ in range(3)]  # one id, three uses
    return out


async def _serve(pipelines: list[Any], requests: list[Request], order: list[int], pick: Any) -> dict[int, Any]:
    answers = await gather(*[lambda i=i: pipelines[pick(i)].request(requests[i]) for i in order])
    return dict(zip(order, answers))


async def test_a_shared_run_replays_exactly_whatever_the_split_of_requests(cache: Any) -> None:
    requests = _requests()
    model = ScriptedModel()
    async with OnlineAPI(model, cache, 4, 0.001, run_id="first") as a, OnlineAPI(model, cache, 4, 0.001, run_id="first") as b, \
            OnlineAPI(model, cache, 4, 0.001, run_id="first") as c:
        first = await _serve([a, b, c], requests, list(range(len(requests))), lambda i: i % 3)
    for namespace in ("ns0", "ns1"):  # fresh within each namespace of the run
        served = [d for i, answer in first.items() if requests[i].namespace == namespace for d in answer.data]
        assert len(served) == len(set(served))
    replay_model = ScriptedModel()
    async with OnlineAPI(replay_model, cache, 8, 0.001, run_id="second") as d, \
            OnlineAPI(replay_model, cache, 8, 0.001, run_id="second") as e:
        second = await _serve([d, e], requests, list(reversed(range(len(requests)))), lambda i: (i // 5) % 2)
    assert replay_model.calls == 0
    for i, request in enumerate(requests):
        if request.request_id != "again":
            assert second[i].data == first[i].data and all(second[i].cached)
    again = [i for i, r in enumerate(requests) if r.request_id == "again"]  # interchangeable as a group
    assert Counter(tuple(first[i].data) for i in again) == Counter(tuple(second[i].data) for i in again)


async def test_a_run_lives_while_a_worker_is_open_and_ends_with_the_last(cache: Any) -> None:
    await seed(cache, "p", 3)
    model = ScriptedModel()
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as a:
        assert (await a.request(Request("p"))).data == ["p#0"]
        async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as b:
            assert (await b.request(Request("p"))).data == ["p#1"]
        async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as c:  # a is still in the run
            assert (await c.request(Request("p"))).data == ["p#2"]
        status = run_status(cache, "r")
        assert status is not None and len(status.workers) == 1 and len(status.dead) == 2
    assert run_status(cache, "r") is None
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as d:  # a new run: stored samples again
        assert (await d.request(Request("p"))).data == ["p#0"]


async def test_end_run_ends_a_run_at_once(cache: Any) -> None:
    await seed(cache, "p", 1)
    async with OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id="r") as a:
        await a.request(Request("p"))
        end_run(cache, "r")
        assert run_status(cache, "r") is None
        async with OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id="r") as b:  # a new run
            assert (await b.request(Request("p"))).cached == [True]


# -- lingering runs (SharedRun.linger_s) ---------------------------------------------------------


async def _one(cache: Any, model: ScriptedModel, run: Any, prompt: str = "p") -> Any:
    """One worker of ``run`` that asks ``prompt`` once (namespace ns) and closes."""
    async with OnlineAPI(model, cache, 4, 0.001, run_id=run) as pipeline:
        return await pipeline.request(Request(prompt, namespace="ns"))


async def _until_ended(cache: Any, run_id: str) -> None:
    with anyio.fail_after(10):  # a deadlock guard, not a timing
        while run_status(cache, run_id) is not None:
            await anyio.sleep(0.01)


async def test_workers_one_after_another_are_one_run_when_they_linger(cache: Any) -> None:
    model = ScriptedModel()
    first = await _one(cache, model, "apart")
    second = await _one(cache, model, "apart")  # the run ended with the first: a new one, replaying
    assert (first.data, second.data, second.cached) == (["p#0"], ["p#0"], [True])

    lingering = SharedRun("r", linger_s=3600)
    first = await _one(cache, model, lingering)
    status = run_status(cache, "r")
    assert status is not None and [w.partition(":")[2] for w in status.workers] == [LINGER_NAME]
    second = await _one(cache, model, lingering)  # the same run: a fresh sample
    assert (first.data, second.data, second.cached) == (["p#0"], ["p#1"], [False])
    assert model.calls == 2
    end_run(cache, "r")  # its work is done
    assert run_status(cache, "r") is None
    again = await _one(cache, model, lingering)  # a new run: it replays
    assert (again.data, again.cached) == (["p#0"], [True])
    end_run(cache, "r")


async def test_a_lingering_run_ends_linger_s_after_its_last_worker_closed(cache: Any) -> None:
    brief = SharedRun("r", ttl_s=0.3, linger_s=0.3)
    model = ScriptedModel()
    first = await _one(cache, model, brief)
    await _until_ended(cache, "r")  # nobody joined within linger_s
    later = await _one(cache, model, brief)
    assert (first.data, later.data, later.cached) == (["p#0"], ["p#0"], [True])  # a new run
    await _until_ended(cache, "r")


async def test_a_lingering_run_is_open_until_linger_s_after_the_close_by_the_stores_clock(monkeypatch: Any) -> None:
    from cachesaver.store.shared_local import MemorySharedRuns

    clock = [1000.0]
    monkeypatch.setattr(MemorySharedRuns, "_now", staticmethod(lambda: clock[0]))
    store, model, lingering = MemoryStore(), ScriptedModel(), SharedRun("r", linger_s=3600)
    await _one(store, model, lingering)
    clock[0] += 3599  # within linger_s of the close: the same run
    assert (await _one(store, model, lingering)).data == ["p#1"]
    clock[0] += 3599  # the second close lingers as long again
    assert run_status(store, "r") is not None
    clock[0] += 1.5  # linger_s after the last close, with no worker: the run has ended
    assert run_status(store, "r") is None
    assert (await _one(store, model, lingering)).cached == [True]


async def test_a_worker_that_closes_after_its_run_was_ended_does_not_start_another(cache: Any) -> None:
    lingering = SharedRun("r", linger_s=3600)
    async with OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id=lingering) as a:
        await a.request(Request("p"))
        end_run(cache, "r")
    assert run_status(cache, "r") is None  # its placeholder did not make a run of its own
    again = await _one(cache, ScriptedModel(), lingering)
    assert again.cached == [True]
    end_run(cache, "r")


async def test_a_worker_that_joins_a_lingering_run_alone_pays_no_join_window(cache: Any) -> None:
    await _one(cache, ScriptedModel(), SharedRun("r", linger_s=3600))
    patient = SharedRun("r", join_window_s=60)  # a window would outlast the guard by far
    async with OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id=patient) as b:
        with anyio.fail_after(10):
            got = await b.request(Request("q"))
        broker = b.cacher.single_flight.broker
        assert broker.peers == 0 and not broker.joinable  # the placeholder is no peer
        status = run_status(cache, "r")
        assert status is not None and len(status.workers) == 2  # b and the placeholder
    assert got.data == ["q#0"]
    end_run(cache, "r")


async def test_a_failed_request_of_a_shared_run_frees_its_samples_for_the_run(cache: Any) -> None:
    await seed(cache, "p", 1)
    failing = ScriptedModel(fail={"p"})
    async with OnlineAPI(failing, cache, 4, 0.001, run_id="r") as a, OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id="r") as b:
        with pytest.raises(BackendError):
            await a.request(Request("p", n=2))  # held the stored sample, then failed
        # Its claim is released by a's next lookup round (SharedBroker.abandon): let that round end
        # before b asks, or b may look first and rightly find the sample still held.
        broker = a.cacher._broker
        with anyio.fail_after(10):
            while broker._abandoned or broker._lookup_lane.busy:
                await anyio.sleep(0)
        again = await b.request(Request("p"))
    assert again.data == ["p#0"] and again.cached == [True]


async def test_a_retry_with_the_same_id_in_a_shared_run_replays_what_the_success_got(cache: Any) -> None:
    flaky = ScriptedModel(fail_with=lambda request: BackendError("down") if flaky.calls == 1 else None)
    async with OnlineAPI(flaky, cache, 4, 0.001, run_id="r") as a:
        with pytest.raises(BackendError):
            await a.request(Request("q", n=2, request_id="x"))
        got = await a.request(Request("q", n=2, request_id="x"))
    async with OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id="other") as b:
        replay = await b.request(Request("q", n=2, request_id="x"))
    assert replay.data == got.data and all(replay.cached)


async def test_a_cancelled_request_gives_its_claim_back(cache: Any) -> None:
    await seed(cache, "p", 1)
    gate = anyio.Event()

    class Slow(ScriptedModel):
        async def batch_request(self, batch: Any) -> Any:
            await gate.wait()
            return await super().batch_request(batch)

    async with OnlineAPI(Slow(), cache, 4, 0.001, run_id="r") as a, OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id="r") as b:
        with anyio.move_on_after(0.05):
            await a.request(Request("p", n=2))  # holds the stored sample while it waits
        got = await b.request(Request("p"))
        gate.set()
    assert got.data == ["p#0"]


def test_run_id_needs_a_store_that_can_hold_a_shared_run(tmp_path: Path) -> None:
    class Plain(StoreForwarder):  # a SampleStore without the shared-run capability
        pass

    with pytest.raises(ConfigurationError, match="cannot hold a shared run"):
        AsyncCacher(ScriptedModel(), Plain(MemoryStore()), run_id="r")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="run_id must be a str or a SharedRun"):
        OnlineAPI(ScriptedModel(), tmp_path, 4, run_id=7)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"run_id": ""}, "non-empty str"),
        ({"run_id": "r", "ttl_s": 0}, "ttl_s must be"),
        ({"run_id": "r", "lease_ttl_s": float("nan")}, "lease_ttl_s must be"),
        ({"run_id": "r", "ttl_s": 100, "keep_s": 10}, "keep_s"),
        ({"run_id": "r", "worker": "a b"}, "worker must be"),
        ({"run_id": "r", "join_window_s": -0.1}, r"join_window_s must be a finite number of seconds >= 0"),
        ({"run_id": "r", "join_window_s": float("inf")}, "join_window_s must be"),
        ({"run_id": "r", "join_window_s": "0.1"}, "join_window_s must be"),
        ({"run_id": "r", "linger_s": -1}, r"linger_s must be a finite number of seconds >= 0"),
        ({"run_id": "r", "linger_s": float("nan")}, "linger_s must be"),
        ({"run_id": "r", "linger_s": True}, "linger_s must be"),
        ({"run_id": "r", "linger_s": 60}, r"linger_s \(60\) must be 0 or from ttl_s \(600\) to keep_s"),
        ({"run_id": "r", "ttl_s": 10, "keep_s": 100, "linger_s": 101}, r"linger_s \(101\) must be 0 or from ttl_s"),
    ],
)
def test_shared_run_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SharedRun(**settings)


def test_a_join_window_may_be_zero_unlike_the_other_times() -> None:
    from cachesaver.store.shared_runs import JOIN_WINDOW_S

    assert SharedRun("r", join_window_s=0).join_window_s == 0.0
    assert SharedRun("r").join_window_s == JOIN_WINDOW_S == 0.5
    assert SharedRun("r").linger_s == 0.0
    assert SharedRun("r", ttl_s=10, keep_s=100, linger_s=100).linger_s == 100.0  # ttl_s to keep_s


def test_a_read_only_cache_cannot_hold_a_shared_run(tmp_path: Path) -> None:
    anyio.run(seed, tmp_path / "c", "p", 1)
    with read_only_view(tmp_path / "c", tmp_path / "ro") as directory:
        with pytest.raises(ConfigurationError, match="read-only"):
            OnlineAPI(ScriptedModel(), directory, 4, run_id="r")


# -- a crashed run -------------------------------------------------------------------------------


@pytest.fixture(params=["diskcache", "redis"])
def process_cache(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store several processes can share: a diskcache directory, or a fresh Redis server."""
    if request.param == "diskcache":
        return str(tmp_path / "cache")
    return request.getfixturevalue("redis_url_tcp")


def test_a_crashed_runs_claims_expire_after_its_ttl(process_cache: str, tmp_path: Path) -> None:
    anyio.run(seed, process_cache, "p", 2)
    short = {"run_id": "crash", "ttl_s": 0.4, "lease_ttl_s": 0.4}
    sync = tmp_path / "sync"
    sync.mkdir()
    spec = {"cache": process_cache, "sync": str(sync), "tag": "A", "out": str(sync / "out-A"), "run": short,
            "requests": [["p", 1, None, "ns"]], "linger": "never"}
    with open(sync / "stderr-A", "w") as stderr:
        worker = subprocess.Popen(command(TESTS_DIR, spec), stderr=stderr)
    try:
        (sync / "go").touch()
        deadline = time.monotonic() + 15
        while not read_lines(sync / "out-A"):
            assert worker.poll() is None, (sync / "stderr-A").read_text()
            assert time.monotonic() < deadline, "the worker never answered"
            time.sleep(0.005)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    crashed = read_lines(sync / "out-A")[0][4]
    assert crashed == ["p#0"]

    async def ask(run: SharedRun) -> list[str]:
        async with OnlineAPI(ScriptedModel(), process_cache, 4, 0.001, run_id=run) as pipeline:
            return (await pipeline.request(Request("p", namespace="ns"))).data

    # Within the ttl the crashed worker is still in the run: its sample stays claimed.
    assert anyio.run(ask, SharedRun(**short)) == ["p#1"]
    deadline = time.monotonic() + 10
    while run_status(process_cache, "crash") is not None:  # nobody renews it any more
        assert time.monotonic() < deadline, "the crashed run never expired"
        time.sleep(0.02)
    assert anyio.run(ask, SharedRun(**short)) == ["p#0"]  # a new run: the claims are gone


async def test_explain_miss_in_a_shared_run_counts_what_other_workers_hold(cache: Any) -> None:
    await seed(cache, "p", 1)
    async with OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id="r") as a, OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id="r") as b:
        await a.request(Request("p", request_id=1))
        why = str(await b.explain_miss(Request("p")))
    assert "already handed out in this run" in why
