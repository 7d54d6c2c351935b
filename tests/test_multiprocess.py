"""Two processes sharing one cache directory never lose a sample or corrupt the store (semantic 9).

Each test starts two Python processes that wait at a file barrier, then append to the same keys
at the same time, through DiskcacheStore or through whole pipelines.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from _support import WORKER, gather, run_released_together
from _workers import command, read_lines

from cachesaver.keys import request_key
from cachesaver.models import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.store.diskcache import DiskcacheStore
from cachesaver.typedefs import Request

TESTS_DIR = str(Path(__file__).parent)
TAGS = ("A", "B")


def run_two_workers(mode: str, tmp_path: Path) -> list[Any]:
    cache_dir = tmp_path / "cache"
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    outputs = [tmp_path / f"out-{tag}.json" for tag in TAGS]
    run_released_together(
        [[sys.executable, "-c", WORKER, TESTS_DIR, mode, str(cache_dir), str(sync_dir), tag, str(out)]
         for tag, out in zip(TAGS, outputs)],
        sync_dir,
        TAGS,
    )
    return [json.loads(out.read_text()) for out in outputs]


@pytest.fixture(scope="module")
def two_store_writers(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], Path]:
    """One run of the two "store" workers (500 appends each, at once): what each appended, and
    its cache directory, which the tests read and never write (a test that writes copies it)."""
    tmp_path = tmp_path_factory.mktemp("two-store-writers")
    return run_two_workers("store", tmp_path), tmp_path / "cache"


def test_two_processes_appending_to_the_same_keys_lose_nothing(two_store_writers: tuple[list[Any], Path]) -> None:
    results, cache_dir = two_store_writers
    store = DiskcacheStore(cache_dir)
    try:
        for key in ("key0", "key1", "key2"):
            appended = [(start, samples) for result in results for k, start, samples in result if k == key]
            expected = [s for _, samples in appended for s in samples]
            count = store.count(key)
            assert count == len(expected)  # nothing lost, nothing doubled
            stored = store.read_data(key, range(count))  # dense: every index below count is readable
            assert Counter(stored) == Counter(expected)
            for start, samples in appended:  # each append landed whole where it said it did
                assert stored[start : start + len(samples)] == samples
            starts = sorted(start for start, _ in appended)
            assert len(starts) == len(set(starts))
    finally:
        store.close()


def test_two_pipelines_sharing_a_cache_store_every_sample_they_paid_for(tmp_path: Path) -> None:
    results = run_two_workers("pipeline", tmp_path)
    store = DiskcacheStore(tmp_path / "cache")
    try:
        for prompt in ("p0", "p1", "p2", "p3"):
            generated = [s for result in results for s in result["generated"].get(prompt, [])]
            count = store.count(request_key(Request(prompt)))
            stored = store.read_data(request_key(Request(prompt)), range(count))
            assert len(stored) == len(set(stored))
            assert Counter(stored) == Counter(generated)  # everything generated is stored, once
    finally:
        store.close()
    for result in results:  # each run handed out every sample at most once
        served = [s for _, _, _, data in result["served"] for s in data]
        assert len(served) == len(set(served))
        assert all(len(data) == n for _, n, _, data in result["served"])

    async def replay(result: dict[str, Any]) -> None:
        # Each worker was its own run, so each is replayed by its own new run.
        model = ScriptedModel()
        async with OnlineAPI(model, tmp_path / "cache", batch_size=16, timeout=0.001) as pipeline:
            for prompt, n, request_id, data in result["served"]:
                response = await pipeline.request(Request(prompt, n=n, request_id=request_id))
                assert response.data == data
                assert all(response.cached)
        assert model.calls == 0

    for result in results:
        anyio.run(replay, result)


def test_the_store_stays_readable_after_concurrent_writers(two_store_writers: tuple[list[Any], Path], tmp_path: Path) -> None:
    shutil.copytree(two_store_writers[1], tmp_path / "cache")  # the writers' store, as they left it
    store = DiskcacheStore(tmp_path / "cache")
    try:
        start = store.append("key0", ["after"])
        assert store.read_data("key0", [start]) == ["after"]
        assert store.count("key0") == start + 1
    finally:
        store.close()


# == four workers in one shared run, one killed with -9 midway (issue 12) ======================

FOUR = ("w0", "w1", "w2", "w3")


@pytest.fixture(params=["diskcache", "redis"])
def process_cache(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store processes share: a diskcache directory, or a fresh Redis server (TCP)."""
    if request.param == "diskcache":
        return str(tmp_path / "cache")
    return request.getfixturevalue("redis_url_tcp")


def _four_requests() -> list[list[Any]]:
    """[prompt, n, request_id, namespace]: request i is worker i % 4's, the j-th of its share
    (j = i // 4), for prompt j % 12, in namespace (j // 12 + i) % 2 (two configurations of a
    sweep, which half the workers run in the other order). So at any time every worker asks the
    same prompt, half of them in each namespace: fresh samples within a namespace, single-flight
    across them."""
    return [[f"p{(i // 4) % 12}", 1 + i % 3, f"r{i}", f"ns{(i // 48 + i) % 2}"] for i in range(192)]


def test_four_workers_of_one_shared_run_one_killed_midway_hand_out_no_sample_twice_and_replay_exactly(
    process_cache: str, tmp_path: Path
) -> None:
    requests = _four_requests()
    sync = tmp_path / "sync"
    sync.mkdir()
    shares = {tag: [r for i, r in enumerate(requests) if i % 4 == k] for k, tag in enumerate(FOUR)}

    def spec(tag: str, requests: list[list[Any]], name: str, **more: Any) -> dict[str, Any]:
        run = {"run_id": "four", "ttl_s": 2.0, "lease_ttl_s": 0.5, "worker": name}
        return {"cache": process_cache, "sync": str(sync), "tag": tag, "out": str(sync / f"out-{tag}"), "run": run,
                "requests": requests, "chunk": 6, "latency_s": 0.01, **more}

    def start(tag: str, worker_spec: dict[str, Any]) -> subprocess.Popen:
        with open(sync / f"stderr-{tag}", "w") as stderr:
            return subprocess.Popen(command(TESTS_DIR, worker_spec), stderr=stderr)

    # w3 also asks prompts of its own (misses for sure, one per chunk), and once it has answered
    # 12 requests its upstream calls never return: it is killed midway, with requests in flight.
    for j in range(0, len(shares["w3"]), 6):
        shares["w3"].insert(j + j // 6, [f"solo{j}", 1, f"solo{j}", "ns0"])
    # The others stay in the run once done (until "leave"), so the run outlives w3's restart.
    specs = {tag: spec(tag, shares[tag], tag, linger="leave") for tag in FOUR[:3]}
    specs["w3"] = spec("w3", shares["w3"], "w3", hold=str(sync / "never"), hold_after=12)
    workers = {tag: start(tag, worker_spec) for tag, worker_spec in specs.items()}

    def until(what: str, predicate: Any) -> None:
        deadline = time.monotonic() + 15
        while not predicate():
            for tag, worker in workers.items():
                assert worker.poll() in (None, 0) or tag == "w3", (sync / f"stderr-{tag}").read_text()
            assert time.monotonic() < deadline, f"never: {what}"
            time.sleep(0.005)

    try:
        until("all four ready", lambda: all((sync / f"ready-{tag}").exists() for tag in FOUR))
        (sync / "go").touch()
        until("w3's held call is in flight", (sync / "held-w3").exists)
        workers["w3"].send_signal(signal.SIGKILL)
        workers["w3"].wait()
        # A restart of w3 (the same worker name: it replaces the dead one at once) serves what
        # w3 had not delivered.
        done = {r[2] for r in read_lines(sync / "out-w3")}
        rest = [r for r in shares["w3"] if r[2] not in done]
        workers["w3-again"] = start("w3-again", spec("w3-again", rest, "w3"))
        assert workers["w3-again"].wait(timeout=30) == 0, (sync / "stderr-w3-again").read_text()
        until("the others are done", lambda: all(len(read_lines(sync / f"out-{t}")) == 48 for t in FOUR[:3]))
        (sync / "leave").touch()
        for tag in FOUR[:3]:
            assert workers[tag].wait(timeout=30) == 0, (sync / f"stderr-{tag}").read_text()
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
            worker.wait()

    answers = [line for tag in (*FOUR, "w3-again") for line in read_lines(sync / f"out-{tag}")]
    by_id = {line[2]: line for line in answers}
    assert len(answers) == len(by_id) == len(requests) + len(shares["w3"]) - 48  # each answered once
    assert 0 < len(done) < len(shares["w3"])  # w3 died midway
    for namespace in ("ns0", "ns1"):  # no stored sample handed out twice in a namespace of the run
        handed = [s for line in answers if line[3] == namespace for s in line[4]]
        assert len(handed) == len(set(handed))
    assert all(len(line[4]) == line[1] for line in answers)
    calls = sum(len(read_lines(sync / f"calls-{tag}")) for tag in (*FOUR, "w3-again"))
    samples = sum(len(line[4]) for line in answers)
    duplicated = sum(sum(line[6]) for line in answers)

    async def replay() -> int:
        # Another run, the requests split another way (two workers, every other request, reversed).
        model = ScriptedModel(sample=lambda request, k: f"replay:{request.prompt}#{k}")
        async with OnlineAPI(model, process_cache, 8, 0.001, run_id="replay") as a, \
                OnlineAPI(model, process_cache, 8, 0.001, run_id="replay") as b:
            order = list(reversed([r for share in shares.values() for r in share]))
            got = await gather(*[
                lambda i=i, r=r: (a if i % 2 else b).request(Request(r[0], n=r[1], request_id=r[2], namespace=r[3]))
                for i, r in enumerate(order)
            ])
        for r, response in zip(order, got):
            assert response.data == by_id[r[2]][4] and all(response.cached), r
        return model.calls

    assert anyio.run(replay) == 0
    engine = "redis" if process_cache.startswith("redis") else "diskcache"
    print(f"\n4 workers ({engine}), w3 killed after {len(done)} of {len(shares['w3'])}: "
          f"{len(answers)} requests, {samples} samples handed out, {duplicated} of them duplicates "
          f"(single-flight), {calls} upstream calls")
