"""DiskcacheStore: append-only, dense, bounded writes per append (semantic 9).

Replay records are tested through the pipelines (tests/test_pipelines.py), where they matter."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import anyio
import diskcache
import pytest
from _support import gather, open_files_under, wait_until, write_lock_held

from cachesaver.stages.caching import AsyncCacher
from cachesaver.errors import CacheMissError, ConfigurationError, CorruptStoreError, StoreError, StoreLockedError
from cachesaver.models.replay_only import ReplayOnlyModel
from cachesaver.store.protocol import Append, RecordId, RecordWrite
from cachesaver.models import ScriptedModel
from cachesaver.pipelines import LocalAPI, OnlineAPI
from cachesaver.store.diskcache import DiskcacheStore
from cachesaver.store.threads import StoreThread
from cachesaver.typedefs import Request


@pytest.fixture
def store(tmp_path: Path):
    store = DiskcacheStore(tmp_path / "cache")
    yield store
    store.close()


def test_append_returns_the_index_of_the_first_appended_sample(store: DiskcacheStore) -> None:
    assert store.append("k", ["a", "b"]) == 0
    assert store.append("k", ["c"]) == 2
    assert store.append("k", ["d", "e", "f"]) == 3
    assert store.count("k") == 6
    assert store.read_data("k", range(6)) == ["a", "b", "c", "d", "e", "f"]


def test_count_of_an_unknown_key_is_zero(store: DiskcacheStore) -> None:
    assert store.count("never written") == 0
    assert store.read_data("never written", []) == []


def test_read_returns_samples_in_the_order_of_the_indices_asked(store: DiskcacheStore) -> None:
    store.append("k", ["a", "b", "c"])
    assert store.read_data("k", [2, 0, 1]) == ["c", "a", "b"]


def test_keys_are_independent(store: DiskcacheStore) -> None:
    store.append("k1", ["a"])
    assert store.append("k2", ["x", "y"]) == 0
    assert store.append("k1", ["b"]) == 1
    assert (store.count("k1"), store.count("k2")) == (2, 2)


def test_samples_keep_any_picklable_value(store: DiskcacheStore) -> None:
    values = [{"text": "hi", "logprobs": [-0.1, -2.5]}, ("tuple", 1), None, 3.25, b"raw"]
    store.append("k", values)
    assert store.read_data("k", range(len(values))) == values


def test_appending_an_empty_list_changes_nothing(store: DiskcacheStore) -> None:
    store.append("k", ["a"])
    assert store.append("k", []) == 1
    assert store.count("k") == 1


def test_reading_past_the_end_is_a_corrupt_store_error(store: DiskcacheStore) -> None:
    store.append("k", ["a"])
    with pytest.raises(CorruptStoreError):
        store.read_data("k", [1])


def test_each_append_writes_a_bounded_number_of_entries(tmp_path: Path) -> None:
    """Appending never rewrites the list: one append of k samples adds at most k entries to the
    diskcache, at the 10th sample as at the 2000th, and the whole list costs about one entry
    per sample (measuring the cost itself is the benchmark's job)."""
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    store = DiskcacheStore(cache)
    growth = []
    for i in range(2000):
        before = len(cache)
        store.append("k", [f"s{i}"])
        growth.append(len(cache) - before)
    assert max(growth[1:]) <= 1
    assert len(cache) <= 2000 + 4
    before = len(cache)
    store.append("k", ["x", "y", "z"])
    assert len(cache) - before <= 3
    assert store.count("k") == 2003
    assert store.read_data("k", [9, 1999, 2002]) == ["s9", "s1999", "z"]
    cache.close()


def test_a_keys_request_and_its_times_cost_no_entry_of_their_own(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    store = DiskcacheStore(cache)
    before = len(cache)
    store.commit([Append("k", (("s0", None),), request='{"r":1}')])
    assert len(cache) - before == 1  # the head, as without a request
    growth = []
    for i in range(1, 40):
        before = len(cache)
        store.commit([Append("k", ((f"s{i}", None),), request='{"r":1}')], [RecordWrite("k", RecordId("ns", i, 1, 0), ((0, 1),))])
        growth.append(len(cache) - before)
    assert growth[0] == 1  # the namespace's name, once
    assert max(growth[1:14]) == 0  # while the head has room, nothing but the head is written
    assert max(growth) <= 2  # then the count once, each sample's row, each record's past 16
    described = store.inspect(["k"])["k"]
    assert not isinstance(described, StoreError)
    assert described.request == '{"r":1}' and len(described.stored_at) == 40
    cache.close()


def _write_like_an_older_release(directory: Path) -> None:
    """Entries exactly as cachesaver wrote them before requests, times and namespace names
    were kept: no request entry, no tags."""
    from cachesaver.store.protocol import RecordId

    cache = diskcache.Cache(str(directory), eviction_policy="none")
    tag = RecordId("paper", "q1", 2, 0).tag
    cache.set("cachesaver/1/head/small", ((("a", {"t": 1}), ("b", {"t": 2})), {tag: (1, 0)}))
    big = tuple((f"s{i}", None) for i in range(16))
    cache.set("cachesaver/1/head/big", (big, {}))
    for i in range(16, 20):
        cache.set(f"cachesaver/1/sample/big/{i}", (f"s{i}", None))
    cache.set("cachesaver/1/count/big", 20)
    cache.close()


def test_a_cache_written_before_requests_were_kept_describes_as_request_unknown(tmp_path: Path) -> None:
    _write_like_an_older_release(tmp_path / "old")
    store = DiskcacheStore(tmp_path / "old")
    described = store.inspect(["small", "big"])
    small, big = described["small"], described["big"]
    assert not isinstance(small, StoreError) and not isinstance(big, StoreError)
    assert small.request is None and big.request is None
    assert small.count == 2 and big.count == 20
    assert all(isinstance(t, float) for t in small.stored_at + big.stored_at)  # the rows' write times
    assert len(small.records) == 1 and store.namespace_names() == {}  # its name was never stored
    assert sorted(store.iter_keys()) == ["big", "small"]
    # Appending to an old key keeps the old samples readable and stamps the new one.
    store.commit([Append("small", (("c", None),), request='{"ignored":1}', stored_at=5.0)])
    small = store.inspect(["small"])["small"]
    assert not isinstance(small, StoreError)
    assert small.request is None and small.stored_at[2] == 5.0 and small.count == 3
    assert store.read({"small": [0, 1, 2]})["small"] == [("a", {"t": 1}), ("b", {"t": 2}), ("c", None)]
    store.close()


async def test_a_cache_written_before_requests_were_kept_still_replays(tmp_path: Path) -> None:
    from cachesaver.keys import request_key

    directory = tmp_path / "old"
    cache = diskcache.Cache(str(directory), eviction_policy="none")
    request = Request("2 + 2?", n=2, request_id="q1", namespace="paper")
    from cachesaver.store.protocol import RecordId

    tag = RecordId("paper", "q1", 2, 0).tag
    cache.set(f"cachesaver/1/head/{request_key(request)}", ((("four", None), ("4", None)), {tag: (1, 0)}))
    cache.close()
    model = ScriptedModel()
    async with OnlineAPI(model, directory, batch_size=2, model_id=None) as pipeline:
        response = await pipeline.request(request)
    assert response.data == ["4", "four"] and response.cached == [True, True] and model.calls == 0


def test_a_missing_sample_is_reported_never_a_silent_gap(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    store = DiskcacheStore(cache)
    store.append("k", [f"s{i}" for i in range(199)])
    before = set(cache.iterkeys())
    store.append("k", ["s199"])
    added = set(cache.iterkeys()) - before  # where sample 199 lives
    assert added
    for key in added:
        del cache[key]  # what an evicting cache would do
    with pytest.raises(CorruptStoreError, match="eviction"):
        store.read_data("k", [0, 199])
    assert store.read_data("k", [0, 198]) == ["s0", "s198"]
    cache.close()


def test_store_shares_a_cache_with_other_data(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    cache["k"] = "the user's own value"
    store = DiskcacheStore(cache)
    assert store.count("k") == 0
    store.append("k", ["a"])
    assert cache["k"] == "the user's own value"
    assert store.read_data("k", [0]) == ["a"]
    cache.close()


def test_close_leaves_a_passed_in_cache_open(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    store = DiskcacheStore(cache)
    store.append("k", ["a"])
    store.close()
    cache["still"] = "usable"
    assert cache["still"] == "usable"
    assert DiskcacheStore(cache).read_data("k", [0]) == ["a"]
    cache.close()


def test_a_directory_path_and_a_cache_object_see_the_same_store(tmp_path: Path) -> None:
    by_path = DiskcacheStore(tmp_path / "c")
    by_path.append("k", ["a", "b"])
    by_path.close()
    by_str = DiskcacheStore(str(tmp_path / "c"))
    assert by_str.read_data("k", [0, 1]) == ["a", "b"]
    by_str.close()
    cache = diskcache.Cache(str(tmp_path / "c"))
    assert DiskcacheStore(cache).count("k") == 2
    cache.close()


def test_a_cache_that_may_evict_samples_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"))  # default policy: least-recently-stored
    with caplog.at_level(logging.WARNING, logger="cachesaver"):
        DiskcacheStore(cache)
    assert any("eviction" in record.getMessage() for record in caplog.records)
    cache.close()


def test_something_that_is_not_a_cache_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        DiskcacheStore(object())
    with pytest.raises(ConfigurationError):
        DiskcacheStore({"a": "dict"})


@pytest.mark.parametrize("url", ["memcached://localhost:11211", "s3://user:secret@bucket/1", "S3+x://bucket"])
def test_a_store_url_no_engine_opens_is_a_configuration_error_never_a_directory(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cachesaver.store import open_store, store_url_scheme

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=re.escape(f"opens {url.split(':')[0].lower()}:// store URLs")) as caught:
        open_store(url)
    assert "secret" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # no directory named after the URL
    assert store_url_scheme(str(tmp_path)) is None and store_url_scheme(tmp_path) is None


def test_samples_survive_reopening(tmp_path: Path) -> None:
    first = DiskcacheStore(tmp_path / "c")
    first.append("k", ["a", "b"])
    first.close()
    second = DiskcacheStore(tmp_path / "c")
    assert second.read_data("k", [0, 1]) == ["a", "b"]
    assert second.append("k", ["c"]) == 2
    second.close()


def test_a_path_where_no_cache_can_live_is_a_configuration_error(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("x")
    with pytest.raises(ConfigurationError, match="cannot open a cache in"):
        DiskcacheStore(a_file)
    with pytest.raises(ConfigurationError, match="cannot open a cache in"):
        DiskcacheStore(a_file / "below-a-file")


# == every connection is closed (Python 3.13 warns about any left open) =======================


def open_databases_under(directory: Path) -> list[str]:
    """SQLite databases below ``directory`` this process holds open, once per connection."""
    return open_files_under(directory, ".db")


async def _run_a_cacher(cache: Any) -> None:
    cacher = AsyncCacher(ScriptedModel(), cache)
    async with cacher:
        for round_ in range(3):  # several rounds, concurrent lookups and writes
            await gather(*[
                partial(cacher.request, Request(f"p{i}", n=2, request_id=f"{round_}-{i}")) for i in range(8)
            ])


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_cacher_on_a_directory_leaves_no_connection_open_after_close(tmp_path: Path, backend: str) -> None:
    anyio.run(_run_a_cacher, tmp_path / "c", backend=backend)
    assert open_databases_under(tmp_path) == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_cacher_on_a_passed_cache_closes_its_own_connection_and_leaves_the_users_open(
    tmp_path: Path, backend: str
) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    anyio.run(_run_a_cacher, cache, backend=backend)
    cache["still"] = "usable"  # the user's own connection, in this thread, stays open
    assert cache["still"] == "usable"
    # Closing that one leaves nothing open, so no other thread kept a connection. (Before, SQLite
    # may hold a closed connection's descriptor while another connection in the process locks
    # the same file.)
    cache.close()
    assert open_databases_under(tmp_path) == []


def test_opening_a_directory_leaves_no_connection_in_the_opening_thread(tmp_path: Path) -> None:
    store = DiskcacheStore(tmp_path / "c")
    assert open_databases_under(tmp_path) == []  # diskcache's set-up connection is closed again
    store.append("k", ["a"])  # sync use: the calling thread's connection, closed by close()
    store.close()
    assert open_databases_under(tmp_path) == []


# == a write lock held by another process has a bound =========================================

def _open(kind: str, directory: Path) -> tuple[Any, Path]:
    """A cache of ``kind`` on ``directory`` and the database a writer must lock first."""
    if kind == "directory":
        return directory, directory / "cache.db"
    if kind == "Cache":  # its own SQLite timeout is 10 minutes: the store's bound must apply
        return diskcache.Cache(str(directory), eviction_policy="none", timeout=600), directory / "cache.db"
    return diskcache.FanoutCache(str(directory), shards=2, eviction_policy="none"), directory / "001" / "cache.db"


@pytest.mark.timeout(30)  # an unbounded wait fails here
@pytest.mark.parametrize("kind", ["directory", "Cache", "FanoutCache"])
def test_a_write_lock_held_by_another_process_raises_store_locked_error_and_reads_go_on(
    tmp_path: Path, kind: str
) -> None:
    cache, database = _open(kind, tmp_path / "c")
    store = DiskcacheStore(cache, store_timeout_s=0.2)
    samples = [f"s{i}" for i in range(DiskcacheStore.HEAD_SAMPLES + 4)]  # in the head and beyond
    store.append("k", samples)
    with write_lock_held(database):
        with pytest.raises(StoreLockedError, match=r"stayed locked for writing for 0\.2 s") as caught:
            with store.transaction():
                raise AssertionError("the lock is held elsewhere; this must not run")
        assert str(tmp_path / "c") in str(caught.value) and "store_timeout_s" in str(caught.value)
        assert isinstance(caught.value, StoreError)
        with pytest.raises(StoreLockedError):
            store.append("k", ["lost?"])
        # Reads never wait for the write lock, before and after a write gave up.
        assert store.heads(["k"])["k"].samples[0] == ("s0", None)
        assert store.count("k") == len(samples)
        assert store.read_stored("k", [0, len(samples) - 1]) == [("s0", None), (samples[-1], None)]
    assert store.append("k", ["next"]) == len(samples)  # nothing was written while locked
    store.close()
    if kind != "directory":
        cache.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_reads_on_the_read_thread_never_wait_for_a_write_waiting_for_the_lock(tmp_path: Path, backend: str) -> None:
    store = DiskcacheStore(tmp_path / "c", store_timeout_s=20)
    store.append("k", ["a", "b"])
    writing = threading.Event()
    written: list[int] = []

    def append() -> int:
        writing.set()
        return store.append("k", ["c"])  # waits for the other process's lock

    reads = StoreThread("reads", finish=store.release_thread)
    writes = StoreThread("writes", finish=store.release_thread)

    async def write() -> None:
        written.append(await writes.run(append))

    async def main(locker: subprocess.Popen) -> list[Any]:
        async with anyio.create_task_group() as group:
            group.start_soon(write)
            await wait_until(writing.is_set)
            heads = await reads.run(store.heads, ["k"])
            found = await reads.run(store.read_stored, "k", [0, 1], heads["k"])
            assert written == []  # served while the write still waits
            locker.kill()  # the lock is released: the write lands
        return found

    with write_lock_held(tmp_path / "c" / "cache.db") as locker:
        assert anyio.run(main, locker, backend=backend) == [("a", None), ("b", None)]
    assert written == [2]
    reads.close()
    writes.close()
    store.close()


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), True, "30"])
def test_a_bad_store_timeout_is_a_configuration_error(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="store_timeout_s"):
        DiskcacheStore(tmp_path / "c", store_timeout_s=bad)


def test_the_pipelines_pass_store_timeout_s_to_their_store(tmp_path: Path) -> None:
    assert DiskcacheStore(tmp_path / "a").store_timeout_s == DiskcacheStore.STORE_TIMEOUT_S <= 60
    for pipeline_class in (OnlineAPI, LocalAPI):
        pipeline = pipeline_class(ScriptedModel(), tmp_path / "b", batch_size=2, store_timeout_s=2.5)
        assert pipeline.cacher.store.store_timeout_s == 2.5
        pipeline.cacher.store.close()


# == a cache directory that cannot be written opens for replay =================================


@contextmanager
def read_only_view(directory: Path, where: Path) -> Iterator[Path]:
    """``directory`` seen through a read-only bind mount at ``where`` (as a read-only mount or
    a downloaded artifact is); needs root, as the test machines and CI run."""
    where.mkdir()
    subprocess.run(["mount", "--bind", str(directory), str(where)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)  # fails if a connection stayed open


async def test_a_read_only_cache_directory_replays_and_refuses_misses_clearly(tmp_path: Path) -> None:
    requests = [Request(f"q{i}", n=2, request_id=i, namespace="paper") for i in range(3)]
    async with OnlineAPI(ScriptedModel(), tmp_path / "c", batch_size=2) as pipeline:
        first = [(await pipeline.request(r)).data for r in requests]
    with read_only_view(tmp_path / "c", tmp_path / "ro") as directory:
        model = ScriptedModel()
        async with OnlineAPI(model, directory, batch_size=2) as pipeline:
            assert pipeline.cacher.store.writable is False
            replayed = [(await pipeline.request(r)).data for r in requests]
            other = await pipeline.request(Request("q0", n=2, namespace="elsewhere"))
            with pytest.raises(StoreError, match="read-only"):
                await pipeline.request(Request("not stored"))
        assert replayed == first and other.data == first[0] and model.calls == 0
        async with OnlineAPI(ReplayOnlyModel(), directory, batch_size=2) as pipeline:
            with pytest.raises(CacheMissError):
                await pipeline.request(Request("not stored"))
        # Replay mode on the read-only cache, in a namespace with no records: served, and no
        # replay record is kept for a write that cannot happen (no UnstoredSamplesError at close).
        async with OnlineAPI(model, directory, batch_size=2, mode="replay") as pipeline:
            elsewhere = [(await pipeline.request(Request(f"q{i}", n=2, request_id=i, namespace="other"))).data for i in range(3)]
            with pytest.raises(CacheMissError, match="nearest stored"):
                await pipeline.request(Request("q0?", request_id="x"))
            assert pipeline.unstored_samples == 0
        assert elsewhere == first and model.calls == 0
        store = DiskcacheStore(directory)
        with pytest.raises(StoreError, match="read-only"):
            store.commit([Append("k", (("x", None),))])
        store.close()


def test_a_read_only_directory_without_a_cache_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with read_only_view(tmp_path / "empty", tmp_path / "ro") as directory:
        with pytest.raises(ConfigurationError, match="holds no cache"):
            DiskcacheStore(directory)


# -- commits write the rows diskcache itself would -----------------------------------------------


def _rows(cache: diskcache.Cache) -> dict[str, Any]:
    return {name: cache.get(name) for name in cache.iterkeys()}


@pytest.mark.parametrize("sample_chars", [10, 40_000], ids=["in-row", "in-file"])
def test_commits_leave_a_cache_that_diskcache_reads_and_checks_clean(tmp_path: Path, sample_chars: int) -> None:
    """Small values are written as rows directly, large ones (kept in files) by Cache.set; a
    head entry that moved into a file and back is replaced, leaving no file behind."""
    store = DiskcacheStore(tmp_path / "ours")
    reference = diskcache.Cache(tmp_path / "reference", eviction_policy="none")
    try:
        for round_ in range(20):  # past the head's 16 samples: count and sample entries too
            sample = ("x" * sample_chars + str(round_), {"tokens": round_})
            store.commit([Append("k", (sample,)), Append(f"k{round_}", (("s", None),))])
        cache = store.cache
        assert cache.check() == []  # diskcache's own count, size and file checks
        assert len(cache) == len(list(cache.iterkeys()))
        assert [data for data, _ in store.read({"k": range(20)})["k"]] == [  # type: ignore[union-attr]
            "x" * sample_chars + str(i) for i in range(20)
        ]
        for name, value in _rows(cache).items():  # what Cache.set would have stored
            reference.set(name, value)
        assert _rows(reference) == _rows(cache)
        assert cache.volume() == reference.volume()
        files = [p for p in (tmp_path / "ours").rglob("*.val")]
        # In files: the 4 samples past the head and the head itself; no old head left behind.
        assert len(files) == (5 if sample_chars > 20_000 else 0)
    finally:
        store.close()
        reference.close()


def test_a_record_kept_in_a_file_replaced_by_a_small_one_leaves_no_file(tmp_path: Path) -> None:
    """A retraction replaces a large record (in a file of its own) by an empty one."""
    store = DiskcacheStore(tmp_path)
    try:
        big = 15_000
        store.commit([Append("k", tuple((f"s{i}", None) for i in range(big)))])
        for i in range(20):  # fill the head's records, so the next ones get entries of their own
            store.commit([], [RecordWrite("k", RecordId("ns", f"id{i}", 1, 0), (i,))])
        rid = RecordId("ns", "large", big, 0)
        store.commit([], [RecordWrite("k", rid, tuple(range(big)))])
        assert len(list(tmp_path.rglob("*.val"))) > 0
        store.commit([], [RecordWrite("k", rid, ())])
        key_view = store.view(["k"], [("k", rid.tag)])["k"]
        assert key_view.found == {rid.tag: ()}  # type: ignore[union-attr]
        assert store.cache.check() == []
        sample_files = {p.name for p in tmp_path.rglob("*.val")}
        assert sample_files == set(_files_of_samples(store.cache))  # the record's file is gone
    finally:
        store.close()


def _files_of_samples(cache: diskcache.Cache) -> list[str]:
    rows = cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL").fetchall()
    return [os.path.basename(name) for (name,) in rows]


def test_the_store_bounds_the_page_cache_of_every_connection_it_uses(tmp_path: Path) -> None:
    store = DiskcacheStore(tmp_path)
    try:
        def settings() -> tuple[int, int]:
            store.view(["k"])
            con = store.cache._con
            return con.execute("PRAGMA cache_size").fetchone()[0], con.execute("PRAGMA mmap_size").fetchone()[0]

        assert settings() == (-2048, 0)
        seen: list[tuple[int, int]] = []
        thread = threading.Thread(target=lambda: (seen.append(settings()), store.release_thread()))
        thread.start()
        thread.join()
        assert seen == [(-2048, 0)]
    finally:
        store.close()


def test_commits_and_cache_transactions_of_other_threads_interleave_safely(tmp_path: Path) -> None:
    """The store's own transactions mark the Cache as diskcache's do, and unmark it before the
    lock goes: a Cache.transact of another thread right after never finds the mark wrong."""
    store = DiskcacheStore(tmp_path)
    cache = store.cache
    failures: list[BaseException] = []

    def theirs() -> None:
        try:
            for i in range(300):
                with cache.transact():
                    cache.set(f"other/{i}", i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            cache.close()

    thread = threading.Thread(target=theirs)
    thread.start()
    try:
        for i in range(300):
            store.commit([Append(f"k{i}", (("s", None),))])
    finally:
        thread.join()
        store.close()
    assert failures == []
    reopened = DiskcacheStore(tmp_path)
    try:
        assert reopened.view(["k299"])["k299"].count == 1  # type: ignore[union-attr]
    finally:
        reopened.close()
