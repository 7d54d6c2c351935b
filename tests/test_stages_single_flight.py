"""Single-flight across workers: identical requests in flight at once in two workers of one
store cost one upstream call (``cachesaver.stages.single_flight``).

In one process on every pipeline engine (two pipelines are two workers), and across real
processes on the engines processes share (diskcache, Redis), including a lease holder killed
with -9."""

from __future__ import annotations

import functools
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import anyio
import pytest
from _support import SharedRunsForwarder, StoreForwarder, gather, wait_until
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


async def _result_into(results: list[Any], i: int, call: Any) -> None:
    """``results[i]`` becomes what ``call()`` returned, or the exception it raised."""
    try:
        results[i] = await call()
    except Exception as exc:  # noqa: BLE001 - compared by the test
        results[i] = exc


async def _both(
    first: Any, second: Any, model: HeldModel, waiter: Any, *, wait: bool, started: int = 0
) -> tuple[Any, Any]:
    """Issue ``first``; once its call is in flight (the model has seen ``started`` + 1 calls),
    ``second``; release the model once ``second`` waits for the first call's lease (``wait``) or
    has made its own call."""
    results: list[Any] = [None, None]
    run = functools.partial(_result_into, results)

    async with anyio.create_task_group() as group:
        group.start_soon(run, 0, first)
        await wait_until(lambda: model.started == started + 1)
        group.start_soon(run, 1, second)
        if wait:
            await wait_until(lambda: waiter.cacher.single_flight.waited == 1)
        else:
            await wait_until(lambda: model.started == started + 2)
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


async def test_a_request_of_the_same_run_and_namespace_after_the_seal_asks_the_model_itself(cache: Any) -> None:
    """A's call is in flight (so its lease is sealed) when B asks the same prompt in the same
    namespace: B cannot join it and needs samples of its own, so it calls the model at once."""
    model = HeldModel()
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as a, OnlineAPI(model, cache, 4, 0.001, run_id="r") as b:
        first, second = await _both(
            lambda: a.request(Request("p", n=2)), lambda: b.request(Request("p", n=2)), model, b, wait=False
        )
    assert b.cacher.single_flight.waited == b.cacher.single_flight.joined == 0
    assert set(first.data).isdisjoint(second.data) and not any(second.cached) and not any(second.duplicated)
    assert model.n_requested == [2, 2]


# -- joining another worker's call in the same namespace --------------------------------------


class _SealGate(SharedRunsForwarder):
    """The shared runs of ``inner`` (a SharedRunStore), except that ``seal_leases`` first waits
    for ``gate`` (a threading.Event): a lease holder's join window lasts until the test opens it."""

    def __init__(self, inner: Any, gate: threading.Event) -> None:
        super().__init__(inner)
        self.gate = gate
        self.sealed: list[Any] = []

    def seal_leases(self, keys: Any, holder: str) -> Any:
        assert self.gate.wait(10), "the test never opened the seal gate"
        out = self.inner.seal_leases(keys, holder)
        self.sealed.append(out)
        return out


class _GatedStore(StoreForwarder):
    """A store that is ``inner`` in every respect, but whose shared runs are a :class:`_SealGate`."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.shared = _SealGate(inner.shared_runs(), self.gate)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def shared_runs(self) -> Any:
        return self.shared


@pytest.fixture
def gated(cache: Any) -> Iterator[_GatedStore]:
    store, owned = open_store(cache)
    try:
        yield _GatedStore(store)
    finally:
        if owned:
            store.close()


def _lease(store: Any, prompt: str) -> Any:
    key = request_key(Request(prompt))
    return store.shared_runs().inner.leases([key])[key]


async def _join(gated: _GatedStore, holder_call: Any, joiner_call: Any, joiner: Any) -> tuple[Any, Any]:
    """Run ``holder_call``; once its lease is open, ``joiner_call``; open the seal gate once the
    joiner has joined. Each result, or the exception it raised."""
    results: list[Any] = [None, None]
    run = functools.partial(_result_into, results)

    async with anyio.create_task_group() as group:
        group.start_soon(run, 0, holder_call)
        await wait_until(lambda: (lease := _lease(gated, "p")) is not None and lease.open)
        group.start_soon(run, 1, joiner_call)
        await wait_until(lambda: joiner.cacher.single_flight.joined == 1)
        gated.gate.set()
    return results[0], results[1]


async def test_two_workers_asking_one_prompt_in_one_namespace_pay_one_upstream_request_with_n_summed(gated: _GatedStore) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, gated, 4, 0.001, run_id="r") as a, OnlineAPI(model, gated, 4, 0.001, run_id="r") as b:
        first, second = await _join(
            gated, lambda: a.request(Request("p", n=2, request_id="x")),
            lambda: b.request(Request("p", n=3, request_id="y")), b,
        )
    assert model.n_requested == [5] and model.calls == 1  # one upstream request, n summed
    scope = a.cacher.single_flight.broker.scope(Request("p").namespace)
    assert [dict(joined) for joined in gated.shared.sealed[0].values()] == [{scope: 3}]  # B's n, read at the seal
    assert first.data == ["p#0", "p#1"] and second.data == ["p#2", "p#3", "p#4"]  # fresh samples each
    assert (first.cached, first.duplicated) == ([False, False], [False, False])
    assert (second.cached, second.duplicated) == ([False] * 3, [True] * 3)  # rode on A's call
    spent, saved = a.ledger.total(), b.ledger.total()
    assert (spent.upstream_calls, spent.samples_generated) == (1, 5)
    assert (saved.upstream_calls, saved.samples_duplicated, saved.samples_cached) == (0, 3, 0)
    replayer = ScriptedModel()
    async with OnlineAPI(replayer, gated.inner, 4, 0.001) as again:  # a later run replays both exactly
        replayed = [await again.request(Request("p", n=2, request_id="x")), await again.request(Request("p", n=3, request_id="y"))]
    assert [r.data for r in replayed] == [first.data, second.data] and replayer.calls == 0


async def test_when_the_joined_call_fails_the_joiner_makes_its_own(gated: _GatedStore) -> None:
    model = ScriptedModel(fail_with=lambda request: BackendError("down") if model.calls == 1 else None)
    async with OnlineAPI(model, gated, 4, 0.001, run_id="r") as a, OnlineAPI(model, gated, 4, 0.001, run_id="r") as b:
        first, second = await _join(
            gated, lambda: a.request(Request("p", n=2)), lambda: b.request(Request("p", n=1)), b,
        )
    assert isinstance(first, BackendError)  # asked for 3, failed: nothing stored
    assert model.n_requested == [3, 1] and second.data == ["p#0"]
    assert (second.cached, second.duplicated) == ([False], [False])
    assert b.ledger.total().upstream_calls == 1


async def test_a_cancelled_holder_still_stores_what_the_joiner_needs(gated: _GatedStore) -> None:
    model = HeldModel()
    async with OnlineAPI(model, gated, 4, 0.001, run_id="r") as a, OnlineAPI(model, gated, 4, 0.001, run_id="r") as b:
        async with anyio.create_task_group() as group:
            holder = anyio.CancelScope()

            async def ask_a() -> None:
                with holder:
                    await a.request(Request("p", n=2))

            got: list[Any] = []

            async def ask_b() -> None:
                got.append(await b.request(Request("p", n=2)))

            group.start_soon(ask_a)
            await wait_until(lambda: (lease := _lease(gated, "p")) is not None and lease.open)
            group.start_soon(ask_b)
            await wait_until(lambda: b.cacher.single_flight.joined == 1)
            gated.gate.set()
            await wait_until(lambda: model.started == 1)
            holder.cancel()  # A's caller leaves while the call it holds is in flight
            model.release.set()
    assert holder.cancelled_caught
    assert model.n_requested == [4]  # A's 2 and B's 2, all stored though A's caller left
    key = request_key(Request("p"))
    assert gated.inner.view([key])[key].count == 4
    assert got[0].data == ["p#0", "p#1"]  # A's were given back: the lowest free ones
    assert (got[0].cached, got[0].duplicated) == ([False, False], [True, True])


async def test_a_worker_alone_in_its_run_pays_no_join_window(cache: Any) -> None:
    model = ScriptedModel()
    lone = SharedRun("r", join_window_s=60)  # a window would outlast the test's guard by far
    async with OnlineAPI(model, cache, 4, 0.001, run_id=lone) as a:
        with anyio.fail_after(10):
            first = await a.request(Request("p"))
            second = await a.request(Request("q"))
        broker = a.cacher.single_flight.broker
        assert broker.peers == 0 and not broker.joinable  # later passes take their leases sealed
    assert (first.data, second.data) == (["p#0"], ["q#0"])


async def test_a_holder_stops_waiting_once_every_other_worker_has_come_by(cache: Any) -> None:
    """A keeps its call open up to 60 s, but B joins it and C (another namespace) waits for it:
    no one else could join, so A asks the model then, with B's n."""
    model = ScriptedModel()
    patient, brief = SharedRun("r", join_window_s=60), SharedRun("r", join_window_s=0.01)
    async with OnlineAPI(model, cache, 4, 0.001, run_id=patient) as a, \
            OnlineAPI(model, cache, 4, 0.001, run_id=brief) as b, OnlineAPI(model, cache, 4, 0.001, run_id=brief) as c:
        await gather(lambda: b.request(Request("warm-b")), lambda: c.request(Request("warm-c")))  # both live
        key = request_key(Request("p"))
        store, owned = open_store(cache)
        try:
            with anyio.fail_after(10):  # far less than A's window
                async with anyio.create_task_group() as group:
                    got: dict[str, Any] = {}

                    async def ask(name: str, pipeline: Any, request: Request) -> None:
                        got[name] = await pipeline.request(request)

                    group.start_soon(ask, "a", a, Request("p", n=2))
                    await wait_until(lambda: (lease := store.shared_runs().leases([key])[key]) is not None and lease.open)  # type: ignore[attr-defined]
                    group.start_soon(ask, "b", b, Request("p", n=1))
                    group.start_soon(ask, "c", c, Request("p", n=2, namespace="other"))
        finally:
            if owned:
                store.close()
    assert model.n_requested[-1] == 3 and model.calls == 3  # warm-b, warm-c, then one call for A and B
    assert got["b"].data == ["p#2"] and (got["b"].cached, got["b"].duplicated) == ([False], [True])
    assert got["c"].data == ["p#0", "p#1"] and got["c"].cached == [True, True]


async def test_a_worker_that_took_its_leases_sealed_thinking_it_was_alone_opens_them(gated: _GatedStore) -> None:
    """A learnt it was alone; B joins the run; A's next pass takes its leases sealed, hears from
    that same step that B is live, and opens them: B's identical request joins A's call."""
    model = ScriptedModel()
    gated.gate.set()
    brief = SharedRun("r", join_window_s=0.01)  # B's own window, on its warm-up
    async with OnlineAPI(model, gated, 4, 0.001, run_id="r") as a, OnlineAPI(model, gated, 4, 0.001, run_id=brief) as b:
        await a.request(Request("warm-a"))
        assert a.cacher.single_flight.broker.peers == 0
        await b.request(Request("warm-b"))  # B is live now
        gated.gate.clear()
        first, second = await _join(gated, lambda: a.request(Request("p", n=2)), lambda: b.request(Request("p", n=2)), b)
    assert model.n_requested[-1] == 4 and (second.cached, second.duplicated) == ([False, False], [True, True])


async def test_a_worker_whose_call_nobody_joined_stops_waiting_until_someone_comes_too_late(cache: Any) -> None:
    """Distinct requests in two live workers: A's first call waits its window for nothing, so A's
    next passes take their leases sealed (no window); B asking A's prompt while A's call is in
    flight comes too late, and A learns it at its release: its windows are back."""
    model = HeldModel()
    model.release.set()
    brief = SharedRun("r", join_window_s=0.01)
    async with OnlineAPI(model, cache, 4, 0.001, run_id=brief) as a, OnlineAPI(model, cache, 4, 0.001, run_id=brief) as b:
        await b.request(Request("warm", namespace="other"))  # B is a live worker of the run
        broker = a.cacher.single_flight.broker
        await a.request(Request("p"))
        assert broker.peers == 1 and broker.quiet and not broker.joinable
        model.release = anyio.Event()
        started = model.started
        first, second = await _both(
            lambda: a.request(Request("q")), lambda: b.request(Request("q")), model, b, wait=False,
            started=started,
        )
        assert not broker.quiet and broker.joinable
    assert set(first.data).isdisjoint(second.data) and not any(second.duplicated)


async def test_without_a_join_window_a_same_namespace_request_asks_the_model_itself(cache: Any) -> None:
    model = ScriptedModel()
    never = SharedRun("r", join_window_s=0)
    async with OnlineAPI(model, cache, 4, 0.001, run_id=never) as a, OnlineAPI(model, cache, 4, 0.001, run_id=never) as b:
        first, second = await gather(lambda: a.request(Request("p", n=2)), lambda: b.request(Request("p", n=2)))
    assert sorted(model.n_requested) == [2, 2] and set(first.data).isdisjoint(second.data)
    assert b.cacher.single_flight.joined == a.cacher.single_flight.joined == 0


async def test_one_pass_asking_a_prompt_in_several_namespaces_pays_one_upstream_request(cache: Any) -> None:
    model = ScriptedModel()
    async with OnlineAPI(model, cache, 4, 0.001, run_id="r") as pipeline:
        got = await gather(*[
            lambda ns=ns, n=n: pipeline.request(Request("p", n=n, namespace=ns)) for ns, n in (("a", 1), ("b", 3), ("c", 2))
        ])
    assert model.n_requested == [3]  # the most any namespace needs
    assert [r.data for r in got] == [["p#0"], ["p#0", "p#1", "p#2"], ["p#0", "p#1"]]
    assert (got[0].cached, got[1].cached, got[1].duplicated) == ([False], [True] * 3, [True] * 3)
    assert pipeline.ledger.total().samples_duplicated == 5


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


def _lease_of(cache: str, prompt: str) -> Any:
    store, _ = open_store(cache)
    try:
        return store.shared_runs().leases([request_key(Request(prompt))])[request_key(Request(prompt))]  # type: ignore[attr-defined]
    finally:
        store.close()


def _lease_waiting(cache: str, prompt: str) -> int:
    lease = _lease_of(cache, prompt)
    return 0 if lease is None else lease.waiting


def _start(sync: Path, spec: dict[str, Any]) -> subprocess.Popen:
    with open(sync / f"stderr-{spec['tag']}", "w") as stderr:
        return subprocess.Popen(command(TESTS_DIR, spec), stderr=stderr)


def _wait(predicate: Any, workers: list[subprocess.Popen], sync: Path, what: str) -> None:
    deadline = time.monotonic() + 15
    while not predicate():
        for worker, tag in zip(workers, "ABC"):
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


def test_a_joiner_whose_holder_is_killed_before_its_call_makes_the_call_itself(process_cache: str, tmp_path: Path) -> None:
    """B and C are live workers of the run, so A, asking "p", keeps its lease open for joiners (a
    long window, until both have come by); B asks "p" in the same namespace and joins A's call.
    A is killed with -9 before it seals: its lease expires (lease_ttl_s 0.5) and B asks the
    model itself."""
    sync = tmp_path / "sync"
    sync.mkdir()

    def spec(tag: str, requests: list[list[Any]], window: float, **more: Any) -> dict[str, Any]:
        run = {"run_id": "sweep", "lease_ttl_s": 0.5, "join_window_s": window}
        return {"cache": process_cache, "sync": str(sync), "tag": tag, "out": str(sync / f"out-{tag}"), "run": run,
                "requests": requests, "go": f"go-{tag}", "chunk": 1, **more}

    specs = [spec("A", [["p", 2, None, "same"]], 30),
             spec("B", [["warm-b", 1, None, "other"], ["p", 2, None, "same"]], 0.05, waits={"1": "go-B2"}),
             spec("C", [["warm-c", 1, None, "other"]], 0.05, linger="leave")]
    workers = [_start(sync, s) for s in specs]
    try:
        for tag in "CB":  # B and C are in the run before A asks
            (sync / f"go-{tag}").touch()
            _wait(lambda: read_lines(sync / f"out-{tag}"), workers, sync, f"{tag} is in the run")
        (sync / "go-A").touch()
        _wait(lambda: (lease := _lease_of(process_cache, "p")) is not None and lease.open, workers, sync, "A's lease opens")
        (sync / "go-B2").touch()
        _wait(lambda: getattr(_lease_of(process_cache, "p"), "joined", None) == (2,), workers, sync, "B joins A's call")
        workers[0].send_signal(signal.SIGKILL)
        assert workers[1].wait(timeout=15) == 0, (sync / "stderr-B").read_text()
        (sync / "leave").touch()
        assert workers[2].wait(timeout=15) == 0, (sync / "stderr-C").read_text()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    assert not read_lines(sync / "calls-A") and len(read_lines(sync / "calls-B")) == 2  # warm-b, then p
    answer = read_lines(sync / "out-B")[-1]
    assert answer[4] == ["B:p#0", "B:p#1"] and answer[5] == answer[6] == [False, False]


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
