"""The store contract: every guarantee of ``cachesaver.store.protocol.SampleStore``, run against
every engine.

Each test takes the ``engine`` fixture, a factory for one store of one engine (see
``tests/_engines.py``): ``engine.open()`` gives an engine object, made by ``open_store`` from
what a user passes as ``cache=``. A new engine joins by adding its factory to
``_engines.ENGINES``; a guarantee an engine cannot offer (being shared by processes) is a
capability of the factory, and its tests run for the engines that have it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
from _engines import ENGINES, EngineFactory, engine, engines_with, make, store  # noqa: F401 - fixtures
from _support import run_released_together

from cachesaver.errors import CacheSaverError, CorruptStoreError, StoreError, StoreLockedError
from cachesaver.store import open_store
from cachesaver.store.protocol import (
    CONSULTED_RECORDS,
    Append,
    InspectableStore,
    KeyEntry,
    KeyView,
    RecordId,
    RecordWrite,
    SampleStore,
    import_token_prefix,
    namespace_digest,
    parse_record_tag,
)

TESTS_DIR = str(Path(__file__).parent)


def samples(*names: str) -> tuple[tuple[Any, Any], ...]:
    """Stored samples named ``names``, each with a usage that says which it is."""
    return tuple((name, {"tokens": len(name)}) for name in names)


def rid(request_id: Any, n: int = 1, use: int = 0, namespace: str = "ns") -> RecordId:
    return RecordId(namespace, request_id, n, use)


def everything(store: SampleStore, key: str) -> list[Any]:
    """Every sample of ``key``, read through the protocol."""
    view = store.view([key])[key]
    assert isinstance(view, KeyView), view
    result = store.read({key: list(range(view.count))})[key]
    assert not isinstance(result, BaseException), result
    return result


def ok(value: Any) -> Any:
    assert not isinstance(value, BaseException), value
    return value


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("this sample cannot be pickled")


class RecordingHook:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def before(self) -> None:
        self.events.append("before")

    def after(self, starts: list[int]) -> None:
        self.events.append(("after", list(starts)))

    def finish(self) -> None:
        self.events.append("finish")


# == the protocol and open_store =============================================================


def test_an_engine_implements_the_protocol_and_open_store_hands_it_over(engine: EngineFactory) -> None:
    store = engine.open()
    assert isinstance(store, SampleStore)
    assert isinstance(store, engine.engine_class)
    assert store.writable is True
    assert isinstance(store.location, str) and store.location


# == atomic, dense appends ====================================================================


def test_appends_get_dense_indices_in_order_that_are_never_reused(store: SampleStore) -> None:
    assert store.commit([Append("a", samples("a0", "a1")), Append("b", samples("b0"))]) == [0, 0]
    # Two appends to one key in one commit: the second follows the first.
    assert store.commit([Append("a", samples("a2")), Append("b", samples("b1", "b2")), Append("a", samples("a3", "a4"))]) == [2, 1, 3]
    assert store.commit([Append("a", samples("a5"))]) == [5]
    # An empty append takes no index; the next append gets the next free one.
    assert store.commit([Append("b", ())]) == [3]
    assert store.commit([Append("b", samples("b3"))]) == [3]
    # Enough samples to cross the first 16 (diskcache keeps those in one entry, later ones apart).
    starts = store.commit([Append("a", samples(*(f"a{i}" for i in range(6, 30))))])
    assert starts == [6]
    views = store.view(["a", "b"])
    assert ok(views["a"]).count == 30 and ok(views["b"]).count == 4
    assert everything(store, "a") == list(samples(*(f"a{i}" for i in range(30))))
    assert everything(store, "b") == list(samples("b0", "b1", "b2", "b3"))


def test_read_returns_samples_in_the_asked_order_for_many_keys(store: SampleStore) -> None:
    store.commit([Append("k", samples(*(f"k{i}" for i in range(20)))), Append("j", samples("j0", "j1"))])
    got = store.read({"k": [19, 0, 17, 3, 0], "j": [1, 0], "empty": []})
    assert ok(got["k"]) == list(samples("k19", "k0", "k17", "k3", "k0"))
    assert ok(got["j"]) == list(samples("j1", "j0"))
    assert ok(got["empty"]) == []


@pytest.mark.parametrize("missing", [2, 16, 100, -1], ids=["past-the-end", "past-the-first-16", "far", "negative"])
def test_a_missing_index_fails_only_its_key(store: SampleStore, missing: int) -> None:
    store.commit([Append("k", samples("k0", "k1")), Append("fine", samples("f0"))])
    got = store.read({"k": [0, missing], "fine": [0], "unknown": [0]})
    assert isinstance(got["k"], CorruptStoreError)
    assert isinstance(got["unknown"], CorruptStoreError)
    assert ok(got["fine"]) == list(samples("f0"))


def test_the_samples_a_view_reads_along_are_the_stored_ones(store: SampleStore) -> None:
    store.commit([Append("k", samples(*(f"k{i}" for i in range(20))))])
    view = ok(store.view(["k"])["k"])
    stored = everything(store, "k")
    for index, sample in view.samples.items():
        assert sample == stored[index]


@pytest.mark.parametrize("second", ["unpicklable-sample", "record-of-a-missing-append"])
def test_a_commit_is_all_or_nothing(store: SampleStore, second: str) -> None:
    store.commit([Append("a", samples("old"))])
    appends = [Append("a", samples("new")), Append("b", samples("b0"))]
    records = [RecordWrite("a", rid("r"), ((0, 1),))]
    if second == "unpicklable-sample":
        appends.append(Append("b", (("data", None), (Unpicklable(), None))))
    else:
        records.append(RecordWrite("b", rid("r"), ((5, 1),)))  # the commit has no 6th append
    hook = RecordingHook()
    with pytest.raises(StoreError):
        store.commit(appends, records, token="t", hook=hook)
    # Nothing of the commit: no sample, no record, no token.
    views = store.view(["a", "b"], [("a", rid("r").tag), ("b", rid("r").tag)])
    assert ok(views["a"]).count == 1 and ok(views["a"]).found == {} and ok(views["a"]).records == {}
    assert ok(views["b"]) == KeyView()
    assert store.applied("t") is False
    assert everything(store, "a") == list(samples("old"))
    # The hook never saw a commit become visible; if it was told the engine would write, it
    # was told the attempt ended.
    assert not any(isinstance(event, tuple) for event in hook.events)
    assert hook.events in ([], ["before", "finish"])
    # The indices the failed commit would have taken are still free, and the token too.
    assert store.commit([Append("a", samples("next"))], token="t") == [1]


# == replay records ===========================================================================


def test_records_resolve_int_indices_and_append_pairs(store: SampleStore) -> None:
    store.commit([Append("k", samples("k0", "k1"))])
    starts = store.commit(
        [Append("k", samples("k2", "k3", "k4")), Append("other", samples("o0")), Append("k", samples("k5", "k6"))],
        [
            RecordWrite("k", rid("ints"), (1, 0)),
            RecordWrite("k", rid("pair", n=2), ((0, 2),)),
            RecordWrite("k", rid("mixed", n=4), (1, (2, 2), 0)),  # the second append to k: indices 5, 6
            RecordWrite("other", rid("pair"), ((1, 1),)),
            RecordWrite("k", rid("empty", n=0), ()),
        ],
    )
    assert starts == [2, 0, 5]
    tags = [rid("ints").tag, rid("pair", n=2).tag, rid("mixed", n=4).tag, rid("empty", n=0).tag]
    view = ok(store.view(["k", "other"], [("k", tag) for tag in tags] + [("other", rid("pair").tag)])["k"])
    assert view.found == {tags[0]: (1, 0), tags[1]: (2, 3), tags[2]: (1, 5, 6, 0), tags[3]: ()}
    other = ok(store.view(["other"], [("other", rid("pair").tag)])["other"])
    assert other.found == {rid("pair").tag: (0,)}


def test_a_later_record_for_the_same_id_replaces_the_earlier(store: SampleStore) -> None:
    store.commit([Append("k", samples("k0", "k1", "k2"))], [RecordWrite("k", rid("a"), (0,)), RecordWrite("k", rid("b"), (1,))])
    store.commit([], [RecordWrite("k", rid("a"), (2, 1))])
    view = ok(store.view(["k"], [("k", rid("a").tag)])["k"])
    assert view.found == {rid("a").tag: (2, 1)}
    # Replaced in place: the record keeps its first-written position.
    assert list(view.records.items()) == [(rid("a").tag, (2, 1)), (rid("b").tag, (1,))]


def test_records_of_another_namespace_use_or_n_are_other_records(store: SampleStore) -> None:
    variants = [rid("r"), rid("r", namespace="other"), rid("r", n=2), rid("r", use=1), rid(7), rid("7")]
    store.commit([Append("k", samples(*(f"k{i}" for i in range(6))))], [RecordWrite("k", r, (i,)) for i, r in enumerate(variants)])
    view = ok(store.view(["k"], [("k", r.tag) for r in variants])["k"])
    assert view.found == {r.tag: (i,) for i, r in enumerate(variants)}


def test_a_view_consults_the_first_records_of_a_key_in_first_written_order(store: SampleStore) -> None:
    assert CONSULTED_RECORDS == 16
    total = CONSULTED_RECORDS + 5
    ids = [rid(f"id{i}", namespace="a" if i % 3 else "b") for i in range(total)]  # two namespaces, interleaved
    store.commit([Append("k", samples(*(f"k{i}" for i in range(total))))])
    for start in range(0, total, 4):  # several commits, several records each
        store.commit([], [RecordWrite("k", r, (i,)) for i, r in enumerate(ids[start : start + 4], start)])
    store.commit([], [RecordWrite("k", ids[2], (0, 1)), RecordWrite("k", ids[total - 1], (0, 2))])  # replacements
    expected = {r.tag: (i,) for i, r in enumerate(ids)}
    expected[ids[2].tag] = (0, 1)
    expected[ids[total - 1].tag] = (0, 2)
    late = [r.tag for r in ids[CONSULTED_RECORDS:]]
    view = ok(store.view(["k"], [("k", tag) for tag in late] + [("k", rid("never").tag)])["k"])
    # Exactly the first 16 ever written, in that order, with their latest indices.
    assert list(view.records) == [r.tag for r in ids[:CONSULTED_RECORDS]]
    assert dict(view.records) == {r.tag: expected[r.tag] for r in ids[:CONSULTED_RECORDS]}
    # Later records are found when asked for, never consulted unasked.
    assert view.found == {tag: expected[tag] for tag in late}
    assert ok(store.view(["k"])["k"]).found == {}


def test_a_view_of_an_unknown_key_is_empty(store: SampleStore) -> None:
    store.commit([Append("known", samples("x"))], [RecordWrite("known", rid("r"), ((0, 1),))])
    view = store.view(["unknown"], [("unknown", rid("r").tag)])
    assert view == {"unknown": KeyView()}
    assert view["unknown"].count == 0 and not view["unknown"].records and not view["unknown"].samples


def test_a_view_asks_for_many_keys_in_one_call(store: SampleStore) -> None:
    store.commit([Append(f"k{i}", samples(*(f"s{j}" for j in range(i)))) for i in range(1, 40)])
    views = store.view([f"k{i}" for i in range(40)])
    assert set(views) == {f"k{i}" for i in range(40)}
    assert [ok(views[f"k{i}"]).count for i in range(40)] == list(range(40))


# == idempotent tokens ========================================================================


def test_a_commit_with_an_applied_token_writes_nothing(store: SampleStore) -> None:
    assert store.applied("t1") is False
    assert store.commit([Append("k", samples("k0"))], [RecordWrite("k", rid("r"), ((0, 1),))], token="t1") == [0]
    assert store.applied("t1") is True and store.applied("t2") is False
    hook = RecordingHook()
    again = store.commit([Append("k", samples("again")), Append("j", samples("j0"))], [RecordWrite("k", rid("r"), (5,))], token="t1", hook=hook)
    assert again is None
    view = ok(store.view(["k", "j"], [("k", rid("r").tag)])["k"])
    assert view.count == 1 and view.found == {rid("r").tag: (0,)}
    assert ok(store.view(["j"])["j"]) == KeyView()
    assert hook.events in ([], ["before", "finish"])  # told of no commit becoming visible
    assert store.commit([Append("k", samples("k1"))], token="t2") == [1]


# == the commit hook ==========================================================================


def test_the_commit_hook_is_called_before_after_and_finish_in_order(store: SampleStore) -> None:
    store.commit([Append("k", samples("k0"))])
    hook = RecordingHook()
    starts = store.commit([Append("k", samples("k1", "k2")), Append("j", samples("j0"))], hook=hook)
    assert starts == [1, 0]
    assert hook.events == ["before", ("after", [1, 0]), "finish"]


def test_lookups_never_wait_for_a_commit_in_its_hook(store: SampleStore) -> None:
    """The allocation layer's ``before`` waits for a lookup round to end: a lookup that waited
    for the commit would deadlock the two store threads."""
    store.commit([Append("k", samples("k0"))], token="old")
    looked: list[Any] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            view = ok(store.view(["k"])["k"])
            looked.append((view.count, ok(store.read({"k": [0]})["k"]), store.applied("old")))
        finally:
            store.release_thread()
            done.set()

    class WaitingHook(RecordingHook):
        def before(self) -> None:
            super().before()
            threading.Thread(target=lookup).start()
            done.wait(timeout=10)  # a deadlock guard; a lookup that is not blocked ends at once

    hook = WaitingHook()
    assert store.commit([Append("k", samples("k1"))], hook=hook) == [1]
    assert done.is_set(), "a lookup waited for the commit in progress"
    assert looked == [(1, list(samples("k0")), True)]  # it saw the store as before the commit
    assert hook.events == ["before", ("after", [1]), "finish"]


@pytest.mark.parametrize("wait_s", [0, 0.01])
def test_a_commit_waits_at_most_wait_s_for_another_commit_in_progress(store: SampleStore, wait_s: float) -> None:
    holding, release = threading.Event(), threading.Event()
    other: list[Any] = []

    class HoldingHook(RecordingHook):
        def before(self) -> None:
            holding.set()
            release.wait(timeout=10)  # a deadlock guard; released by the main thread

    def commit_and_hold() -> None:
        try:
            other.append(store.commit([Append("k", samples("held"))], hook=HoldingHook()))
        finally:
            store.release_thread()

    thread = threading.Thread(target=commit_and_hold)
    thread.start()
    try:
        assert holding.wait(timeout=10)
        with pytest.raises(StoreLockedError):
            store.commit([Append("k", samples("refused")), Append("j", samples("j0"))], token="t", wait_s=wait_s)
    finally:
        release.set()
        thread.join(timeout=10)
    assert other == [[0]]
    assert [name for name, _ in everything(store, "k")] == ["held"]  # nothing of the refused commit
    assert ok(store.view(["j"])["j"]) == KeyView() and store.applied("t") is False
    assert store.commit([Append("k", samples("later"))], wait_s=0) == [1]


def test_finish_is_called_when_a_commit_fails_after_before(store: SampleStore) -> None:
    hook = RecordingHook()
    with pytest.raises(StoreError):
        store.commit([Append("k", samples("k0"))], [RecordWrite("k", rid("r"), ((1, 1),))], hook=hook)
    assert hook.events == ["before", "finish"]
    assert ok(store.view(["k"])["k"]) == KeyView()


# == concurrency ==============================================================================


THREADS = 8
COMMITS = 15


def test_concurrent_threads_appending_to_the_same_keys_lose_nothing(store: SampleStore) -> None:
    barrier = threading.Barrier(THREADS)
    results: dict[int, list[tuple[list[int], list[Append]]]] = {}
    errors: list[BaseException] = []

    def appender(t: int) -> None:
        mine = []
        try:
            barrier.wait(timeout=10)
            for i in range(COMMITS):
                appends = [
                    Append("shared", samples(*(f"{t}-{i}-{j}" for j in range(1 + (t + i) % 3)))),
                    Append(f"own{t % 2}", samples(f"{t}-{i}")),
                    Append("shared", samples(f"{t}-{i}-again")),
                ]
                records = [RecordWrite("shared", rid(f"{t}-{i}", n=2), ((0, 1), (2, 1)))]
                mine.append((store.commit(appends, records), appends))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            store.release_thread()
        results[t] = mine

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    commits = [entry for t in range(THREADS) for entry in results[t]]
    assert len(commits) == THREADS * COMMITS
    stored = {key: everything(store, key) for key in ("shared", "own0", "own1")}
    for key, values in stored.items():
        expected = [s for _, appends in commits for a in appends if a.key == key for s in a.samples]
        assert len(values) == len(expected)  # dense: every index below the count is readable
        assert Counter(name for name, _ in values) == Counter(name for name, _ in expected)  # nothing lost or doubled
    tags = [("shared", rid(f"{t}-{i}", n=2).tag) for t in range(THREADS) for i in range(COMMITS)]
    found = ok(store.view(["shared"], tags)["shared"]).found
    for (starts, appends), (_, tag) in zip(commits, tags):
        for start, append in zip(starts, appends):  # each append landed whole where it was told
            assert stored[append.key][start : start + len(append.samples)] == list(append.samples)
        assert found[tag] == (starts[0], starts[2])


WORKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import _support
from cachesaver.store.protocol import Append
location, sync_dir, tag, out_file = sys.argv[2:6]
{open_code}
_support._wait_for_go(sync_dir, tag)
done = []
for i in range(40):
    appends = [Append("shared", tuple((f"{{tag}}-{{i}}-{{j}}", None) for j in range(1 + i % 3))),
               Append(f"own{{i % 2}}", ((f"{{tag}}-{{i}}", None),)),
               Append("shared", ((f"{{tag}}-{{i}}-again", None),))]
    starts = store.commit(appends)
    done.append([starts, [[a.key, [s[0] for s in a.samples]] for a in appends]])
store.release_thread()
store.close()
with open(out_file, "w") as handle:
    json.dump(done, handle)
"""


@pytest.mark.parametrize("engine", engines_with("open_code"), indirect=True)
def test_concurrent_processes_appending_to_the_same_keys_lose_nothing(engine: EngineFactory, tmp_path: Path) -> None:
    store = engine.open()
    store.commit([Append("shared", samples("before"))])  # the store exists before the workers open it
    sync_dir = tmp_path / "sync"
    sync_dir.mkdir()
    tags = ("A", "B", "C")
    outputs = [tmp_path / f"out-{tag}.json" for tag in tags]
    code = WORKER.format(open_code=engine.open_code)
    run_released_together(
        [[sys.executable, "-c", code, TESTS_DIR, engine.location, str(sync_dir), tag, str(out)]
         for tag, out in zip(tags, outputs)],
        sync_dir,
        tags,
    )
    commits = [entry for out in outputs for entry in json.loads(out.read_text())]
    stored = {key: [name for name, _ in everything(store, key)] for key in ("shared", "own0", "own1")}
    assert stored["shared"][0] == "before"
    for key, names in stored.items():
        expected = [name for _, appends in commits for k, batch in appends if k == key for name in batch]
        assert Counter(names) == Counter(expected + (["before"] if key == "shared" else []))
    for starts, appends in commits:
        for start, (key, batch) in zip(starts, appends):
            assert stored[key][start : start + len(batch)] == batch


# == damage, closing, threads, reopening ======================================================


def test_a_damaged_entry_fails_only_its_key(engine: EngineFactory, store: SampleStore) -> None:
    store.commit(
        [Append("damaged", samples("d0", "d1")), Append("fine", samples("f0"))],
        [RecordWrite("damaged", rid("r"), ((0, 1),)), RecordWrite("fine", rid("r"), ((1, 1),))],
    )
    engine.damage(store, "damaged")
    views = store.view(["damaged", "fine"], [("damaged", rid("r").tag), ("fine", rid("r").tag)])
    assert isinstance(views["damaged"], CorruptStoreError)
    assert ok(views["fine"]).found == {rid("r").tag: (0,)}
    got = store.read({"damaged": [0], "fine": [0]})
    assert isinstance(got["damaged"], CorruptStoreError)
    assert ok(got["fine"]) == list(samples("f0"))
    # The store goes on working for other keys.
    assert store.commit([Append("fine", samples("f1")), Append("new", samples("n0"))]) == [1, 0]
    assert everything(store, "fine") == list(samples("f0", "f1"))


def test_a_closed_store_raises_store_error(store: SampleStore) -> None:
    store.commit([Append("k", samples("k0"))], token="t")
    store.close()
    calls = {
        "view": lambda: store.view(["k"]),
        "read": lambda: store.read({"k": [0]}),
        "commit": lambda: store.commit([Append("k", samples("k1"))]),
        "applied": lambda: store.applied("t"),
    }
    for name, call in calls.items():
        with pytest.raises(StoreError, match="closed"):
            call()
    store.release_thread()  # harmless after close


def test_release_thread_may_be_called_from_any_thread_and_the_store_stays_usable(store: SampleStore) -> None:
    store.commit([Append("k", samples("k0"))])
    outcomes: list[Any] = []

    def worker(i: int) -> None:
        try:
            outcomes.append(store.commit([Append("k", samples(f"t{i}"))]))
            outcomes.append(ok(store.view(["k"])["k"]).count)
        finally:
            store.release_thread()

    def idle() -> None:
        store.release_thread()  # a thread that never used the store

    for target, args in ((worker, (1,)), (idle, ()), (worker, (2,))):
        thread = threading.Thread(target=target, args=args)
        thread.start()
        thread.join(timeout=10)
    assert outcomes == [[1], 2, [2], 3]
    store.release_thread()  # the main thread too, then it uses the store again
    assert store.commit([Append("k", samples("k3"))]) == [3]
    assert [name for name, _ in everything(store, "k")] == ["k0", "t1", "t2", "k3"]
    store.release_thread()


def test_a_reopened_store_sees_everything_committed(engine: EngineFactory, store: SampleStore) -> None:
    many = [f"k{i}" for i in range(20)]
    ids = [rid(f"id{i}") for i in range(CONSULTED_RECORDS + 2)]
    store.commit([Append("k", samples(*many)), Append("j", samples("j0"))], [RecordWrite("k", r, (i,)) for i, r in enumerate(ids)], token="t")
    store.commit([Append("j", samples("j1"))], [RecordWrite("j", rid("j"), ((0, 1),))])
    reopened = engine.reopen(store)
    assert isinstance(reopened, SampleStore)
    views = reopened.view(["k", "j"], [("k", ids[-1].tag), ("j", rid("j").tag)])
    assert ok(views["k"]).count == 20 and ok(views["j"]).count == 2
    assert list(ok(views["k"]).records) == [r.tag for r in ids[:CONSULTED_RECORDS]]
    assert ok(views["k"]).found == {ids[-1].tag: (len(ids) - 1,)}
    assert ok(views["j"]).found == {rid("j").tag: (1,)}
    assert everything(reopened, "k") == list(samples(*many))
    assert reopened.applied("t") is True
    assert reopened.commit([Append("k", samples("k20"))], token="t") is None
    assert reopened.commit([Append("k", samples("k20"))]) == [20]


# == errors ===================================================================================


@pytest.mark.parametrize("engine", engines_with("lose_storage"), indirect=True)
def test_lost_storage_is_a_store_error_on_every_call(engine: EngineFactory, store: SampleStore) -> None:
    store.commit([Append("k", samples("k0"))])
    engine.lose_storage(store)
    with pytest.raises(StoreError):
        store.commit([Append("k", samples("k1"))])
    with pytest.raises(StoreError):
        store.applied("t")
    for result in (store.view(["k"])["k"], store.read({"k": [0]})["k"]):
        assert isinstance(result, (KeyView, StoreError, list))  # never a raw sqlite3 or OS error


def test_every_error_is_a_store_error(engine: EngineFactory, store: SampleStore) -> None:
    """The failures a caller can meet, each a StoreError (a CacheSaverError), never a raw
    pickle, sqlite3 or OS error."""
    store.commit([Append("k", samples("k0"))])
    engine.damage(store, "k")
    raised: list[BaseException] = []
    for call in (
        lambda: store.commit([Append("j", ((Unpicklable(), None),))]),
        lambda: store.commit([], [RecordWrite("j", rid("r"), ((0, 1),))]),  # no append 0
        lambda: store.commit([Append("j", samples("j0"))], [RecordWrite("j", rid("r"), ((-1, 1),))]),  # nor append -1
    ):
        with pytest.raises(CacheSaverError) as info:
            call()
        raised.append(info.value)
    returned = [store.view(["k"])["k"], store.read({"k": [0], "j": [0]})["k"], store.read({"j": [0]})["j"]]
    store.close()
    with pytest.raises(CacheSaverError) as info:
        store.view(["k"])
    raised.append(info.value)
    assert all(isinstance(error, StoreError) for error in raised + returned), raised + returned
    assert all(isinstance(error, CorruptStoreError) for error in returned)


# == readable entries (InspectableStore) ======================================================


def inspectable(store: SampleStore) -> InspectableStore:
    assert isinstance(store, InspectableStore), f"{type(store).__name__} does not implement InspectableStore"
    return store


def entry(store: SampleStore, key: str) -> KeyEntry:
    return ok(inspectable(store).inspect([key])[key])


def test_an_engine_implements_the_inspection_protocol(store: SampleStore) -> None:
    assert isinstance(store, InspectableStore)


def test_the_request_is_stored_with_the_first_samples_only(store: SampleStore) -> None:
    store.commit([Append("k", samples("k0", "k1"), request='{"first":1}')])
    store.commit([Append("k", samples("k2"), request='{"later":1}'), Append("j", samples("j0"))])
    store.commit([Append("j", samples("j1"), request='{"too late":1}')])
    # An empty first append is not the key's first samples.
    store.commit([Append("e", (), request='{"empty":1}')])
    store.commit([Append("e", samples("e0"), request='{"e":1}')])
    assert entry(store, "k").request == '{"first":1}'
    assert entry(store, "j").request is None  # its first samples came without one: unknown
    assert entry(store, "e").request == '{"e":1}'
    assert entry(store, "unknown") == KeyEntry("unknown", 0)


def test_a_failed_commit_stores_no_request(store: SampleStore) -> None:
    with pytest.raises(StoreError):
        store.commit([Append("k", samples("k0"), request='{"r":1}'), Append("j", ((Unpicklable(), None),))])
    assert entry(store, "k").count == 0 and entry(store, "k").request is None
    store.commit([Append("k", samples("k0"), request='{"r":2}')])
    assert entry(store, "k").request == '{"r":2}'


def test_each_sample_keeps_when_it_was_stored(store: SampleStore) -> None:
    before = time.time()
    store.commit([Append("k", samples("k0", "k1"))])
    after = time.time()
    store.commit([Append("k", samples(*(f"k{i}" for i in range(2, 20))), stored_at=1000.5)])
    store.commit([Append("k", samples("k20"), stored_at=2000.25)])
    described = entry(store, "k")
    assert described.count == 21 and len(described.stored_at) == 21
    assert all(before - 1 <= t <= after + 1 for t in described.stored_at[:2])  # type: ignore[operator]
    assert described.stored_at[2:20] == (1000.5,) * 18  # across the first 16 and past them
    assert described.stored_at[20] == 2000.25
    assert everything(store, "k")[20] == samples("k20")[0]  # usage is kept beside it, as before
    # Writing records (which rewrites what holds the first samples, on some engines) keeps them.
    store.commit([], [RecordWrite("k", rid(f"r{i}"), (i,)) for i in range(CONSULTED_RECORDS + 1)])
    store.commit([Append("j", samples("j0"))], [RecordWrite("k", rid("again"), (0,))])
    assert entry(store, "k").stored_at == described.stored_at


def test_describe_lists_every_record_of_a_key(store: SampleStore) -> None:
    ids = [rid(f"id{i}", namespace="a" if i % 2 else "b") for i in range(CONSULTED_RECORDS + 4)]
    store.commit([Append("k", samples(*(f"k{i}" for i in range(len(ids)))))], [RecordWrite("k", r, (i,)) for i, r in enumerate(ids)])
    records = entry(store, "k").records
    assert records == {r.tag: (i,) for i, r in enumerate(ids)}


def test_iter_keys_lists_every_key_once(store: SampleStore) -> None:
    assert list(inspectable(store).iter_keys()) == []
    store.commit([Append(f"k{i}", samples("x")) for i in range(5)])
    store.commit([Append("k0", samples("y"))], [RecordWrite("k1", rid("r"), (0,))])
    assert sorted(inspectable(store).iter_keys()) == [f"k{i}" for i in range(5)]


def test_namespace_names_are_kept_by_the_commits_that_write_their_records(store: SampleStore) -> None:
    store.commit([Append("k", samples("k0"))])
    assert inspectable(store).namespace_names() == {}
    store.commit([Append("k", samples("k1"))], [RecordWrite("k", rid("r", namespace="run/1 ünï"), ((0, 1),))])
    store.commit([], [RecordWrite("k", rid("s", namespace="other"), (0,))], token="t")
    store.commit([], [RecordWrite("k", rid("s", namespace="never"), (0,))], token="t")  # applied: nothing
    assert inspectable(store).namespace_names() == {
        namespace_digest("run/1 ünï"): "run/1 ünï",
        namespace_digest("other"): "other",
    }
    for tag in entry(store, "k").records:
        parsed = parse_record_tag(tag)
        assert parsed is not None and parsed[0] in inspectable(store).namespace_names()


def test_forgetting_a_namespace_forgets_only_its_records_and_keeps_the_rest_consulted(store: SampleStore) -> None:
    ids = [rid(f"id{i}", namespace="gone" if i < CONSULTED_RECORDS else "kept") for i in range(CONSULTED_RECORDS + 3)]
    ids.append(rid("last", namespace="gone"))
    store.commit([Append("k", samples(*(f"k{i}" for i in range(len(ids)))))], [RecordWrite("k", r, (i,)) for i, r in enumerate(ids)])
    store.commit([Append("j", samples("j0"))], [RecordWrite("j", rid("x", namespace="gone"), (0,))])
    assert inspectable(store).forget("k", ["gone"]) == CONSULTED_RECORDS + 1
    kept = {r.tag: (i,) for i, r in enumerate(ids) if r.namespace == "kept"}
    assert entry(store, "k").records == kept
    view = ok(store.view(["k"], [("k", tag) for tag in kept] + [("k", ids[0].tag)])["k"])
    assert view.found == kept  # found again, now that the first records are gone
    assert set(view.records) == set(kept)
    assert view.count == len(ids)  # samples stay
    assert entry(store, "j").records == {rid("x", namespace="gone").tag: (0,)}  # other keys untouched
    assert inspectable(store).forget("k", ["gone"]) == 0
    assert inspectable(store).forget("unknown", ["gone"]) == 0


def test_forgetting_a_key_forgets_everything_of_it_and_its_import_tokens(store: SampleStore) -> None:
    many = samples(*(f"k{i}" for i in range(20)))
    store.commit([Append("k", many, request='{"r":1}')], [RecordWrite("k", rid(f"r{i}"), (i,)) for i in range(CONSULTED_RECORDS + 2)],
                 token=import_token_prefix("k") + "a")
    store.commit([Append("j", samples("j0"))], token=import_token_prefix("j") + "a")
    store.commit([Append("k2", samples("x"))], token="other")
    assert inspectable(store).forget("k") == 20
    assert sorted(inspectable(store).iter_keys()) == ["j", "k2"]
    assert entry(store, "k") == KeyEntry("k", 0)
    assert ok(store.view(["k"], [("k", rid("r0").tag)])["k"]).count == 0
    assert store.applied(import_token_prefix("k") + "a") is False
    assert store.applied(import_token_prefix("j") + "a") is True and store.applied("other") is True
    # The key starts afresh.
    assert store.commit([Append("k", samples("n0"), request='{"new":1}')], token=import_token_prefix("k") + "a") == [0]
    assert entry(store, "k").request == '{"new":1}' and everything(store, "k") == list(samples("n0"))
    assert inspectable(store).forget("unknown") == 0


def test_the_inspection_of_a_damaged_key_fails_only_that_key(engine: EngineFactory, store: SampleStore) -> None:
    store.commit([Append("damaged", samples("d0"), request="{}"), Append("fine", samples("f0"), request="{}")])
    engine.damage(store, "damaged")
    described = inspectable(store).inspect(["damaged", "fine"])
    assert isinstance(described["damaged"], CorruptStoreError)
    assert ok(described["fine"]).count == 1


def test_a_reopened_store_describes_what_was_committed(engine: EngineFactory, store: SampleStore) -> None:
    store.commit([Append("k", samples(*(f"k{i}" for i in range(18))), request='{"r":1}', stored_at=7.5)],
                 [RecordWrite("k", rid("r", namespace="ns"), ((0, 2),))])
    before = entry(store, "k")
    reopened = engine.reopen(store)
    assert entry(reopened, "k") == before
    assert before.stored_at == (7.5,) * 18
    assert inspectable(reopened).namespace_names() == {namespace_digest("ns"): "ns"}
    assert list(inspectable(reopened).iter_keys()) == ["k"]


def test_size_bytes_grows_with_what_is_stored(store: SampleStore) -> None:
    empty = inspectable(store).size_bytes()
    store.commit([Append("k", tuple((("x" * 100_000), None) for _ in range(3)))])
    assert inspectable(store).size_bytes() > empty + 200_000


def test_the_inspection_of_a_closed_store_raises_store_error(store: SampleStore) -> None:
    store.commit([Append("k", samples("k0"))])
    store.close()
    for call in (
        lambda: list(inspectable(store).iter_keys()),
        lambda: inspectable(store).inspect(["k"]),
        lambda: inspectable(store).namespace_names(),
        lambda: inspectable(store).forget("k"),
        lambda: inspectable(store).size_bytes(),
    ):
        with pytest.raises(StoreError, match="closed"):
            call()


def test_forget_waits_at_most_wait_s_for_a_commit_in_progress(store: SampleStore) -> None:
    store.commit([Append("k", samples("k0"))], [RecordWrite("k", rid("r"), (0,))])
    entered, release = threading.Event(), threading.Event()

    class Holding(RecordingHook):
        def before(self) -> None:
            entered.set()
            release.wait(10)

    def commit_holding() -> None:
        try:
            store.commit([Append("k", samples("k1"))], hook=Holding())
        finally:
            store.release_thread()  # the thread's last call (the protocol's rule)

    thread = threading.Thread(target=commit_holding)
    thread.start()
    try:
        assert entered.wait(10)
        with pytest.raises(StoreLockedError):
            inspectable(store).forget("k", ["ns"], wait_s=0.05)
    finally:
        release.set()
        thread.join(10)
    assert entry(store, "k").records == {rid("r").tag: (0,)}  # nothing was forgotten
    assert inspectable(store).forget("k", ["ns"], wait_s=1) == 1
