"""Two processes sharing one cache directory never lose a sample or corrupt the store (semantic 9).

Each test starts two Python processes that wait at a file barrier, then append to the same keys
at the same time, through DiskcacheStore or through whole pipelines.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from _support import WORKER, run_released_together

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


def test_two_processes_appending_to_the_same_keys_lose_nothing(tmp_path: Path) -> None:
    results = run_two_workers("store", tmp_path)
    store = DiskcacheStore(tmp_path / "cache")
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


@pytest.mark.parametrize("mode", ["store"])
def test_the_store_stays_readable_after_concurrent_writers(tmp_path: Path, mode: str) -> None:
    run_two_workers(mode, tmp_path)
    store = DiskcacheStore(tmp_path / "cache")
    try:
        start = store.append("key0", ["after"])
        assert store.read_data("key0", [start]) == ["after"]
        assert store.count("key0") == start + 1
    finally:
        store.close()
