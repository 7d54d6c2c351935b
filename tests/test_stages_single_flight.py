"""Single-flight across workers: identical requests in flight at once in two workers of one
store cost one upstream call (``cachesaver.stages.single_flight``).

In one process on every pipeline engine (two pipelines are two workers), and across real
processes on the engines processes share (diskcache, Redis), including a lease holder killed
with -9."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from _support import wait_until
from _workers import command, read_lines

from cachesaver.errors import BackendError
from cachesaver.keys import request_key
from cachesaver.models import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.store import open_store
from cachesaver.store.shared_runs import SharedRun
from cachesaver.typedefs import Batch, Request, Response

TESTS_DIR = str(Path(__file__).parent)


class HeldModel(ScriptedModel):
    """A ScriptedModel whose calls wait for ``release``; ``started`` counts calls as they arrive
    (so a test sees a call in flight); ``fail_first`` makes the first one raise once released."""

    def __init__(self, fail_first: bool = False) -> None:
        super().__init__()
        self.release = anyio.Event()
        self.fail_first = fail_first
        self.started = 0

    async def batch_request(self, batch: Batch) -> list[Response]:
        self.started += 1
        first = self.started == 1
        await self.release.wait()
        if first and self.fail_first:
            raise BackendError("the upstream call failed")
        return await super().batch_request(batch)


async def _both(first: Any, second: Any, model: HeldModel, waiter: Any, *, wait: bool) -> tuple[Any, Any]:
    """Issue ``first``; once its call is in flight, ``second``; release the model once ``second``
    waits for the first call's lease (``wait``) or has made its own call."""
    results: list[Any] = [None, None]

    async def run(i: int, call: Any) -> None:
        try:
            results[i] = await call()
        except Exception as exc:  # noqa: BLE001 - compared by the test
            results[i] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(run, 0, first)
        await wait_until(lambda: model.started == 1)
        group.start_soon(run, 1, second)
        if wait:
            await wait_until(lambda: waiter.cacher.single_flight.waited == 1)
        else:
            await wait_until(lambda: model.started == 2)
        model.release.set()
    return results[0], results[1]


@pytest.mark.parametrize("runs", [("r", "r"), ("r1", "r2")], ids=["one-run", "two-runs"])
async def test_an_identical_call_in_flight_serves_a_request_of_another_namespace_or_run(cache: Any, runs: tuple[str, str]) -> None:
    model = HeldModel()
    async with OnlineAPI(model, cache, 4, 0.001, run_id=runs[0]) as a, OnlineAPI(model, cache, 4, 0.001, run_id=runs[1]) as b:
        first, second = await _both(
            lambda: a.request(Request("p", n=2, namespace="ns1")),
            lambda: b.request(Request("p", n=2, namespace="ns2" if runs[0] == runs[1] else "ns1")),
            model, b, wait=True,
        )
    assert model.started == 1
    assert second.data == first.data and second.cached == [True, True] and second.duplicated == [True, True]
    entry = b.ledger.total()
    assert (entry.upstream_calls, entry.samples_duplicated, entry.samples_cached) == (0, 2, 2)
    assert a.ledger.total().upstream_calls == 1


async def test_a_request_of_the_same_run_and_namespace_does_not_wait(cache: Any) -> None:
    model = HeldModel()
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as a, OnlineAPI(model, cache, 4, 0.001, run_id="r") as b:
        first, second = await _both(
            lambda: a.request(Request("p", n=2)), lambda: b.request(Request("p", n=2)), model, b, wait=False
        )
    assert b.cacher.single_flight.waited == 0
    assert set(first.data).isdisjoint(second.data) and not any(second.cached)


async def test_without_run_id_nothing_waits(cache: Any) -> None:
    model = HeldModel()
    async with OnlineAPI(model, cache, 4, 0.001) as a, OnlineAPI(model, cache, 4, 0.001) as b:
        first, second = await _both(
            lambda: a.request(Request("p", namespace="ns1")), lambda: b.request(Request("p", namespace="ns2")),
            model, b, wait=False,
        )
    assert b.cacher.single_flight is None and not second.cached[0]


async def test_when_the_leased_call_fails_a_waiter_makes_its_own(cache: Any) -> None:
    model = HeldModel(fail_first=True)
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as a, OnlineAPI(model, cache, 4, 0.001, run_id="r") as b:
        first, second = await _both(
            lambda: a.request(Request("p", namespace="ns1")), lambda: b.request(Request("p", namespace="ns2")),
            model, b, wait=True,
        )
    assert isinstance(first, BackendError)
    assert second.cached == [False] and second.duplicated == [False] and model.started == 2


async def test_a_waiter_asks_the_model_itself_after_lease_wait_s(cache: Any) -> None:
    model = HeldModel()
    patient = SharedRun("r", lease_wait_s=0.05)
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as a, OnlineAPI(model, cache, 4, 0.001, run_id=patient) as b:
        first, second = await _both(
            lambda: a.request(Request("p", namespace="ns1")), lambda: b.request(Request("p", namespace="ns2")),
            model, b, wait=False,  # released only once b made its own call, after its wait ran out
        )
    assert b.cacher.single_flight.waited == 1 and second.cached == [False]


async def test_a_waiter_that_needs_more_than_the_leased_call_stored_fetches_only_the_rest(cache: Any) -> None:
    model = HeldModel()
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as a, OnlineAPI(model, cache, 4, 0.001, run_id="r") as b:
        first, second = await _both(
            lambda: a.request(Request("p", n=1, namespace="ns1")), lambda: b.request(Request("p", n=3, namespace="ns2")),
            model, b, wait=True,
        )
    assert second.data[0] == first.data[0]
    assert (second.cached, second.duplicated) == ([True, False, False], [True, False, False])
    assert model.n_requested[-1] == 2


# -- across processes ---------------------------------------------------------------------------


@pytest.fixture(params=["diskcache", "redis"])
def process_cache(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "diskcache":
        return str(tmp_path / "cache")
    return request.getfixturevalue("redis_url_tcp")


def _lease_waiting(cache: str, prompt: str) -> int:
    store, _ = open_store(cache)
    try:
        lease = store.shared_runs().leases([request_key(Request(prompt))])[request_key(Request(prompt))]  # type: ignore[attr-defined]
        return 0 if lease is None else lease.waiting
    finally:
        store.close()


def _start(sync: Path, spec: dict[str, Any]) -> subprocess.Popen:
    with open(sync / f"stderr-{spec['tag']}", "w") as stderr:
        return subprocess.Popen(command(TESTS_DIR, spec), stderr=stderr)


def _wait(predicate: Any, workers: list[subprocess.Popen], sync: Path, what: str) -> None:
    deadline = time.monotonic() + 15
    while not predicate():
        for worker, tag in zip(workers, "AB"):
            assert worker.poll() in (None, 0, -signal.SIGKILL), (sync / f"stderr-{tag}").read_text()
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.005)


def _specs(cache: str, sync: Path, hold: str) -> list[dict[str, Any]]:
    run = {"run_id": "sweep", "lease_ttl_s": 0.5}
    return [
        {"cache": cache, "sync": str(sync), "tag": tag, "out": str(sync / f"out-{tag}"), "run": run,
         "requests": [["p", 2, None, f"config-{tag}"]], "go": f"go-{tag}", "hold": str(sync / hold) if tag == "A" else None}
        for tag in "AB"
    ]


@pytest.mark.parametrize("ending", ["released", "killed"])
def test_two_processes_asking_one_prompt_at_once_pay_one_call(process_cache: str, tmp_path: Path, ending: str) -> None:
    """A's call is in flight (held) when B asks the same prompt in another namespace of the run:
    B waits for A's lease. Released, A stores its samples and B takes them as duplicates; killed
    with -9, A's lease expires (lease_ttl_s 0.5) and B makes the call itself."""
    sync = tmp_path / "sync"
    sync.mkdir()
    specs = _specs(process_cache, sync, "release")
    workers = [_start(sync, spec) for spec in specs]
    try:
        (sync / "go-A").touch()
        _wait(lambda: read_lines(sync / "calls-A"), workers, sync, "A calls its model")
        (sync / "go-B").touch()
        _wait(lambda: _lease_waiting(process_cache, "p") >= 1, workers, sync, "B waits for A's lease")
        if ending == "released":
            (sync / "release").touch()
        else:
            workers[0].send_signal(signal.SIGKILL)
        for worker in workers[1:] if ending == "killed" else workers:
            assert worker.wait(timeout=15) == 0, (sync / "stderr-B").read_text()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    calls = {tag: len(read_lines(sync / f"calls-{tag}")) for tag in "AB"}
    (answer_b,) = read_lines(sync / "out-B")
    if ending == "released":
        (answer_a,) = read_lines(sync / "out-A")
        assert calls == {"A": 1, "B": 0}  # one upstream call for both processes
        assert answer_b[4] == answer_a[4] and answer_b[5] == answer_b[6] == [True, True]
        (ledger,) = read_lines(sync / "ledger-B")
        assert ledger == {"calls": 0, "duplicated": 2, "cached": 2}  # the saving, in B's ledger
    else:
        assert calls == {"A": 1, "B": 1} and not read_lines(sync / "out-A")  # B took the work over
        assert answer_b[4] == ["B:p#0", "B:p#1"] and answer_b[5] == [False, False]


async def test_a_lease_step_the_store_fails_is_skipped_not_fatal() -> None:
    from cachesaver.errors import StoreUnavailableError
    from cachesaver.store.memory import MemoryStore
    from cachesaver.store.shared_local import MemorySharedRuns

    class Refusing(MemorySharedRuns):
        def acquire_leases(self, *args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailableError("the lease server is down")

    class Store(MemoryStore):
        def shared_runs(self) -> Any:
            return Refusing(self)

    model = ScriptedModel()
    async with OnlineAPI(model, Store(), 4, 0.001, run_id="r") as pipeline:
        got = await pipeline.request(Request("p", n=2))
    assert got.data == ["p#0", "p#1"] and model.calls == 1


def test_shared_runs_work_under_trio(tmp_path: Path) -> None:
    import trio

    async def main() -> tuple[list[str], list[str]]:
        model = ScriptedModel()
        async with OnlineAPI(model, tmp_path, 4, 0.001, run_id="r") as a, OnlineAPI(model, tmp_path, 4, 0.001, run_id="r") as b:
            first, second = await a.request(Request("p")), await b.request(Request("p"))
        return first.data, second.data

    assert trio.run(main) == (["p#0"], ["p#1"])


async def test_a_replay_mode_worker_never_waits_for_a_lease(cache: Any) -> None:
    from cachesaver.errors import CacheMissError

    model = HeldModel()
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as a, \
            OnlineAPI(ScriptedModel(), cache, 4, 0.001, run_id="r", mode="replay") as b:
        async with anyio.create_task_group() as group:
            group.start_soon(a.request, Request("p", namespace="ns1"))
            await wait_until(lambda: model.started == 1)
            with pytest.raises(CacheMissError):  # at once: the leased call is still held
                await b.request(Request("p", namespace="ns2"))
            assert b.cacher.single_flight.waited == 0
            model.release.set()
