"""The shared-run capability (``SharedRunStore``): every guarantee, run against every engine of
``_engines.ENGINES`` (memory, diskcache as a directory and as a passed Cache, Redis, Redis
Cluster), so the engines make the same choices."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from _engines import ENGINES, EngineFactory, engine, make, store  # noqa: F401 - fixtures

from cachesaver.errors import CorruptStoreError
from cachesaver.store.protocol import (
    Append,
    ClaimAsk,
    ClaimNew,
    ClaimRelease,
    ClaimSettle,
    ClaimTopUp,
    Grant,
    KeyClaimOps,
    KeyView,
    RecordId,
    RecordWrite,
    RunRef,
    SampleStore,
    SharedRunStore,
    use_ident,
)
from cachesaver.store.shared_runs import LINGER_NAME, linger


@pytest.fixture
def shared(store: SampleStore) -> SharedRunStore:
    backend = store.shared_runs()  # type: ignore[attr-defined]
    assert isinstance(backend, SharedRunStore)
    return backend


KEEP = 3600.0
RUN = RunRef("run", "gen1", "w1:")


def stored(store: SampleStore, key: str, count: int, records: list[RecordWrite] = ()) -> None:  # type: ignore[assignment]
    store.commit([Append(key, tuple((f"{key}-{i}", None) for i in range(count)))], records)


def ask(ticket: str, n: int, request_id: Any = None, namespace: str = "ns") -> ClaimAsk:
    return ClaimAsk(ticket, namespace, use_ident(namespace, request_id, n) if request_id is not None else None, n)


def claim(shared: SharedRunStore, key: str, run: RunRef = RUN, **ops: Any) -> list[Grant]:
    out = shared.claim(run, {key: KeyClaimOps(**{k: tuple(v) for k, v in ops.items()})}, KEEP)[key]
    assert not isinstance(out, BaseException), out
    return out


def picks(grants: list[Grant]) -> list[tuple[int, ...]]:
    return [g.indices for g in grants]


def record(key: str, request_id: Any, n: int, use: int, indices: tuple[int, ...], namespace: str = "ns") -> RecordWrite:
    return RecordWrite(key, RecordId(namespace, request_id, n, use), indices)


def view(store: SampleStore, key: str, tag: str) -> KeyView:
    out = store.view([key], [(key, tag)])[key]
    assert isinstance(out, KeyView), out
    return out


# -- the run record ---------------------------------------------------------------------------


def test_the_first_join_starts_a_run_and_later_ones_join_it(shared: SharedRunStore) -> None:
    first = shared.join("r", "a1:", 30, "g-first")
    second = shared.join("r", "b2:", 30, "g-second")
    assert first.generation == second.generation == "g-first"
    assert set(second.workers) == {"a1:", "b2:"} and second.dead == () and not second.lost
    assert shared.status("other") is None


def test_the_last_worker_leaving_ends_the_run(shared: SharedRunStore) -> None:
    shared.join("r", "a1:", 30, "g1")
    shared.join("r", "b2:", 30, "g1")
    shared.leave("r", "a1:")
    status = shared.status("r")
    assert status is not None and status.workers == ("b2:",) and status.dead == ("a1:",)
    shared.leave("r", "b2:")
    assert shared.status("r") is None
    assert shared.join("r", "c3:", 30, "g2").generation == "g2"  # a new run


def test_a_worker_that_stops_renewing_is_declared_dead_and_cannot_come_back(shared: SharedRunStore) -> None:
    shared.join("r", "quiet:", 0.05, "g1")
    shared.join("r", "busy:", 30, "g1")
    deadline = time.monotonic() + 5
    while "quiet:" not in shared.status("r").dead:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "never declared dead"
        time.sleep(0.01)
    status = shared.join("r", "busy:", 30, "g-other")
    assert status.generation == "g1" and status.dead == ("quiet:",) and status.workers == ("busy:",)
    assert shared.join("r", "quiet:", 30, "g1").lost


def test_a_run_nobody_renews_expires_after_its_ttl(shared: SharedRunStore) -> None:
    shared.join("r", "a1:", 0.05, "g1")
    deadline = time.monotonic() + 5
    while shared.status("r") is not None:
        assert time.monotonic() < deadline, "the run never expired"
        time.sleep(0.01)
    assert shared.join("r", "a2:", 30, "g2").generation == "g2"


def test_a_worker_joining_with_a_live_workers_name_replaces_it(shared: SharedRunStore) -> None:
    shared.join("r", "old:shard-1", 30, "g1")
    shared.join("r", "x:shard-2", 30, "g1")
    status = shared.join("r", "new:shard-1", 30, "g1")
    assert set(status.workers) == {"x:shard-2", "new:shard-1"} and status.dead == ("old:shard-1",)


def test_end_drops_the_run_whoever_is_in_it(shared: SharedRunStore) -> None:
    shared.join("r", "a1:", 30, "g1")
    shared.end("r")
    assert shared.status("r") is None


# -- lingering (cachesaver.store.shared_runs.linger, what a worker with linger_s does at close) --


def _names(workers: tuple[str, ...]) -> list[str]:
    return [worker.partition(":")[2] for worker in workers]


def test_a_lingering_placeholder_keeps_the_run_for_a_worker_that_joins_later(shared: SharedRunStore) -> None:
    shared.join("r", "a1:", 30, "g1")
    linger(shared, "r", "g1", 30)
    shared.leave("r", "a1:")  # the last real worker: the run stays
    status = shared.status("r")
    assert status is not None and _names(status.workers) == [LINGER_NAME] and status.dead == ("a1:",)
    assert shared.join("r", "b2:", 30, "g2").generation == "g1"  # the same run
    linger(shared, "r", "g1", 30)  # replaces the first placeholder
    shared.leave("r", "b2:")
    status = shared.status("r")
    assert status is not None and _names(status.workers) == [LINGER_NAME]
    assert _names(status.dead) == ["", LINGER_NAME, ""]  # a1, the first placeholder, b2


def test_a_lingering_run_ends_when_its_placeholder_expires(shared: SharedRunStore) -> None:
    shared.join("r", "a1:", 0.05, "g1")
    linger(shared, "r", "g1", 0.05)
    shared.leave("r", "a1:")
    deadline = time.monotonic() + 5
    while shared.status("r") is not None:
        assert time.monotonic() < deadline, "the lingering run never ended"
        time.sleep(0.01)
    assert shared.join("r", "b2:", 30, "g2").generation == "g2"  # a new run


def test_a_placeholder_does_not_bring_an_ended_run_back(shared: SharedRunStore) -> None:
    shared.join("r", "a1:", 30, "g1")
    shared.end("r")
    linger(shared, "r", "g1", 30)  # its worker closes after the run was ended
    assert shared.status("r") is None
    shared.join("r", "b2:", 30, "g2")
    linger(shared, "r", "g1", 30)  # a placeholder of the ended g1 leaves g2 alone
    status = shared.status("r")
    assert status is not None and status.generation == "g2" and status.workers == ("b2:",)


# -- claims -----------------------------------------------------------------------------------


def test_an_ask_takes_its_free_recorded_samples_first(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 5, [record("k", "q", 2, 0, (3, 1))])
    (grant,) = claim(shared, "k", asks=[ask("t1", 2, "q")])
    assert (grant.use, grant.indices, grant.wrote_record) == (0, (3, 1), False)
    assert [grant.samples[i][0] for i in grant.indices] == ["k-3", "k-1"]


def test_an_ask_without_a_record_avoids_samples_other_ids_recorded(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 4, [record("k", "other", 1, 0, (0,)), record("k", "else", 1, 0, (1,), namespace="ns2")])
    grants = claim(shared, "k", asks=[ask("t1", 2), ask("t2", 1, "q"), ask("t3", 2)])
    # t1: not 0 (recorded for "other" in ns) -> 1, 2; t2 (no record, wrote one) -> 3; t3: only 0 is left
    assert picks(grants) == [(1, 2), (3,), (0,)]
    assert grants[1].wrote_record and view(store, "k", f"{use_ident('ns', 'q', 1)}/0").found
    assert (grants[0].use, grants[1].use) == (None, 0)


def test_asks_with_free_records_go_first_within_a_claim(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 2, [record("k", "q", 1, 0, (0,))])
    grants = claim(shared, "k", asks=[ask("anon", 1), ask("t-q", 1, "q")])
    assert picks(grants) == [(1,), (0,)]


def test_uses_count_per_id_across_claims_and_store_objects(engine: EngineFactory, store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 6)
    other = engine.open().shared_runs()  # type: ignore[attr-defined]
    first = claim(shared, "k", asks=[ask("t1", 1, "q")])
    second = claim(other, "k", run=RunRef("run", "gen1", "w2:"), asks=[ask("t2", 1, "q"), ask("t3", 1, "q")])
    assert [g.use for g in first + second] == [0, 1, 2]
    assert len({i for g in first + second for i in g.indices}) == 3  # no sample twice in the run


def test_a_sample_is_claimed_once_per_namespace_of_a_run(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 2)
    first = claim(shared, "k", asks=[ask("t1", 2)])
    second = claim(shared, "k", asks=[ask("t2", 2)])
    other_ns = claim(shared, "k", asks=[ask("t3", 2, namespace="ns2")])
    other_run = claim(shared, "k", run=RunRef("run", "gen2", "w1:"), asks=[ask("t4", 2)])
    assert picks(first + second + other_ns + other_run) == [(0, 1), (), (0, 1), (0, 1)]


def test_a_release_frees_the_samples_gives_the_use_back_and_clears_its_record(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 3)
    (grant,) = claim(shared, "k", asks=[ask("t1", 2, "q")])
    assert grant.wrote_record and grant.indices == (0, 1)
    claim(shared, "k", releases=[ClaimRelease("t1", clear_record=True)], asks=[])
    tag = f"{use_ident('ns', 'q', 2)}/0"
    assert view(store, "k", tag).found[tag] == ()
    (again,) = claim(shared, "k", asks=[ask("t2", 2, "q")])
    assert (again.use, again.indices) == (0, (0, 1))  # the use and the samples, as given back


def test_a_settled_claim_keeps_its_samples_and_its_use(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 3)
    claim(shared, "k", asks=[ask("t1", 1, "q")])
    claim(shared, "k", settles=[ClaimSettle("t1")])
    claim(shared, "k", releases=[ClaimRelease("t1")])  # no longer pending: left alone
    (grant,) = claim(shared, "k", asks=[ask("t2", 1, "q")])
    assert (grant.use, grant.indices) == (1, (1,))


def test_an_ask_retried_with_its_ticket_gets_what_it_got(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 3)
    (first,) = claim(shared, "k", asks=[ask("t1", 2, "q")])
    (again,) = claim(shared, "k", asks=[ask("t1", 2, "q")])
    assert (again.use, again.indices) == (first.use, first.indices)
    (next_one,) = claim(shared, "k", asks=[ask("t2", 2, "q")])
    assert (next_one.use, next_one.indices) == (1, (2,))


def test_a_dead_workers_pending_claims_give_their_use_back_and_keep_their_samples(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 3)
    claim(shared, "k", run=RunRef("run", "gen1", "dead:"), asks=[ask("t1", 1, "q")])
    later = RunRef("run", "gen1", "w2:", dead=("dead:",))
    (grant,) = claim(shared, "k", run=later, asks=[ask("t2", 1, "q")])
    assert (grant.use, grant.indices) == (0, (1,))  # use 0 again, sample 0 still claimed


def test_a_commit_claims_its_new_samples_for_a_pending_ticket(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 1)
    (grant,) = claim(shared, "k", asks=[ask("t1", 3, "q")])
    assert grant.indices == (0,)
    starts = shared.commit(
        RUN, [Append("k", (("new-a", None), ("new-b", None), ("spare", None)))],
        [record("k", "q", 3, 0, (0, (0, 2)))], [ClaimNew("t1", 0, 2)], KEEP,
    )
    assert starts == [1]
    (other,) = claim(shared, "k", asks=[ask("t2", 3)])
    assert other.indices == (3,)  # the new ones went to t1, the spare is free
    claim(shared, "k", releases=[ClaimRelease("t1")])
    (after,) = claim(shared, "k", asks=[ask("t3", 3)])
    assert after.indices == (0, 1, 2)


def test_a_commit_claims_nothing_for_a_ticket_no_longer_pending(store: SampleStore, shared: SharedRunStore) -> None:
    claim(shared, "k", asks=[ask("t1", 1)])
    claim(shared, "k", releases=[ClaimRelease("t1")])
    shared.commit(RUN, [Append("k", (("late", None),))], [], [ClaimNew("t1", 0, 1)], KEEP)
    (grant,) = claim(shared, "k", asks=[ask("t2", 1)])
    assert grant.indices == (0,)


def test_a_top_up_claims_more_completes_the_record_and_can_be_retried(store: SampleStore, shared: SharedRunStore) -> None:
    claim(shared, "k", asks=[ask("t1", 3, "q")])  # nothing stored yet
    stored(store, "k", 4)
    (first,) = claim(shared, "k", top_ups=[ClaimTopUp("t1", 0, 2)])
    (again,) = claim(shared, "k", top_ups=[ClaimTopUp("t1", 0, 2)])  # a retry: the same two
    assert first.indices == again.indices == (0, 1) and not first.wrote_record
    (last,) = claim(shared, "k", top_ups=[ClaimTopUp("t1", 2, 5)])
    assert last.indices == (2,) and last.wrote_record
    tag = f"{use_ident('ns', 'q', 3)}/0"
    assert view(store, "k", tag).found[tag] == (0, 1, 2)
    (gone,) = claim(shared, "k", top_ups=[ClaimTopUp("unknown", 0, 1)])
    assert gone.indices == ()


def test_a_damaged_key_fails_only_its_own_claims(engine: EngineFactory, store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "bad", 1)
    stored(store, "good", 1)
    engine.damage(store, "bad")
    out = shared.claim(RUN, {"bad": KeyClaimOps(asks=(ask("t1", 1),)), "good": KeyClaimOps(asks=(ask("t2", 1),))}, KEEP)
    assert isinstance(out["bad"], CorruptStoreError)
    assert picks(out["good"]) == [(0,)]  # type: ignore[arg-type]


# -- leases -----------------------------------------------------------------------------------


def test_a_lease_is_held_by_one_holder_who_renews_and_releases_it(shared: SharedRunStore) -> None:
    assert shared.acquire_leases({"k": {"s1": 1, "s2": 1}, "j": {"s1": 1}}, "h1", 30).leases == {"k": None, "j": None}
    taken = shared.acquire_leases({"k": {"s3": 1}}, "h2", 30).leases["k"]
    assert taken is not None and (taken.holder, taken.scopes, taken.waiting) == ("h1", ("s1", "s2"), 1)
    assert 0 < taken.expires_in_s <= 30 and not taken.open
    assert shared.renew_leases(["k", "j"], "h1", 30) == []
    assert shared.renew_leases(["k"], "h2", 30) == ["k"]
    shared.release_leases(["k"], "h2")  # not its lease: left alone
    assert shared.leases(["k"])["k"].holder == "h1"  # type: ignore[union-attr]
    shared.release_leases(["k", "j"], "h1")
    assert shared.leases(["k", "j"]) == {"k": None, "j": None}
    assert shared.acquire_leases({"k": {"s3": 1}}, "h2", 30).leases == {"k": None}


def test_a_lease_not_renewed_expires(shared: SharedRunStore) -> None:
    shared.acquire_leases({"k": {"s": 1}}, "h1", 0.05, joinable=True)
    deadline = time.monotonic() + 5
    while shared.leases(["k"])["k"] is not None:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.01)
    assert shared.renew_leases(["k"], "h1", 30) == ["k"]
    assert shared.seal_leases(["k"], "h1") == {"k": None}  # nothing to seal: the joins are gone with it
    assert shared.acquire_leases({"k": {"s": 1}}, "h2", 30).leases == {"k": None}


def test_an_open_lease_takes_joins_in_its_scopes_until_it_is_sealed(shared: SharedRunStore) -> None:
    assert shared.acquire_leases({"k": {"s1": 1, "s2": 2}}, "h1", 30, joinable=True).leases == {"k": None}
    first = shared.acquire_leases({"k": {"s1": 3, "s3": 5}}, "h2", 30).leases["k"]  # s3: not its call's scope
    assert first is not None and first.open and (first.scopes, first.joined, first.waiting) == (("s1", "s2"), (3, 0), 1)
    assert first.visitors == 1
    shared.acquire_leases({"k": {"s2": 1}}, "h3", 30)
    shared.acquire_leases({"k": {"s4": 1}}, "h5", 30)  # no scope of its call: it waits, it does not join
    now = shared.leases(["k"])["k"]
    assert now is not None and now.open and now.joined == (3, 1) and now.holder == "h1"
    assert (now.visitors, now.waiting, now.late) == (3, 3, 0)  # h5 waits: a visitor, not a joiner
    assert shared.seal_leases(["k"], "h2") == {"k": None}  # not its lease: left open
    assert shared.seal_leases(["k"], "h1") == {"k": {"s1": 3, "s2": 1}}
    late = shared.acquire_leases({"k": {"s1": 2}}, "h4", 30).leases["k"]
    assert late is not None and not late.open and late.joined == (3, 1) and late.waiting == 4  # sealed: no join
    assert (late.visitors, late.late) == (4, 1)
    assert shared.seal_leases(["k"], "h1") == {"k": {"s1": 3, "s2": 1}}  # sealing twice is harmless


def test_a_lease_taken_sealed_takes_no_joins_and_counts_those_it_turns_away(shared: SharedRunStore) -> None:
    shared.acquire_leases({"k": {"s1": 1}}, "h1", 30)
    other = shared.acquire_leases({"k": {"s1": 2}}, "h2", 30).leases["k"]
    assert other is not None and not other.open and other.joined == (0,) and other.late == 1
    shared.acquire_leases({"k": {"s2": 1}}, "h3", 30)  # another scope: it waits, it is not late
    assert shared.seal_leases(["k"], "h1") == {"k": {"s1": 0}}
    shared.acquire_leases({"k": {"s1": 1, "s2": 1}}, "h4", 30)
    lease = shared.leases(["k"])["k"]
    assert lease is not None and (lease.waiting, lease.late) == (3, 2)
    assert shared.release_leases(["k"], "h2") == 0  # not its lease
    assert shared.release_leases(["k"], "h1") == 2  # what the holder learns: two came too late
    assert shared.leases(["k"]) == {"k": None}


def test_a_worker_joining_a_lease_twice_counts_as_one_visitor(shared: SharedRunStore) -> None:
    shared.acquire_leases({"k": {"s": 1}}, "h1", 30, joinable=True, run=RunRef("r", "g", "w1:"))
    worker = RunRef("r", "g", "w2:")
    shared.acquire_leases({"k": {"s": 1}}, "w2-pass-1", 30, run=worker)
    shared.acquire_leases({"k": {"s": 2}}, "w2-pass-2", 30, run=worker)
    lease = shared.leases(["k"])["k"]
    assert lease is not None and (lease.joined, lease.visitors) == ((3,), 1)
    shared.acquire_leases({"k": {"s": 1}}, "w1-pass-2", 30, run=RunRef("r", "g", "w1:"))  # the holder's worker
    lease = shared.leases(["k"])["k"]
    assert lease is not None and (lease.joined, lease.visitors) == ((4,), 1)  # joined, but not a visitor


def test_a_released_lease_leaves_a_trace_of_who_came_by_for_the_next_lease(shared: SharedRunStore) -> None:
    w1, w2, w3 = (RunRef("r", "g", f"w{i}:") for i in (1, 2, 3))
    shared.acquire_leases({"k": {"s": 1}, "j": {"s": 1}}, "h1", 30, joinable=True, run=w1)
    shared.acquire_leases({"k": {"s": 1}}, "h2", 30, run=w2)
    shared.release_leases(["k"], "h1", trace_s=30)
    shared.release_leases(["j"], "h1")  # no trace
    shared.acquire_leases({"k": {"s": 1}, "j": {"s": 1}}, "h3", 30, run=w3)
    taken = shared.leases(["k", "j"])
    assert taken["k"].visitors == 2 and taken["j"].visitors == 0  # type: ignore[union-attr]
    shared.release_leases(["k"], "h3", trace_s=30)  # trace: w3, w1, w2
    shared.acquire_leases({"k": {"s": 1}}, "h4", 30, run=w2)
    assert shared.leases(["k"])["k"].visitors == 2  # type: ignore[union-attr]  # w3 and w1, not itself
    shared.release_leases(["k"], "h4", trace_s=0.05)
    deadline = time.monotonic() + 5
    while True:
        time.sleep(0.06)
        shared.acquire_leases({"k": {"s": 1}}, "h5", 30, run=w1)
        lease = shared.leases(["k"])["k"]
        if lease is not None and lease.visitors == 0:
            break  # the trace was over
        assert time.monotonic() < deadline, "the trace never ended"
        shared.release_leases(["k"], "h5")


def test_taking_ones_own_lease_again_keeps_its_joins(shared: SharedRunStore) -> None:
    shared.acquire_leases({"k": {"s1": 1}}, "h1", 30, joinable=True)
    shared.acquire_leases({"k": {"s1": 2}}, "h2", 30)
    assert shared.acquire_leases({"k": {"s1": 1}}, "h1", 30, joinable=True).leases == {"k": None}  # a retried step
    again = shared.leases(["k"])["k"]
    assert again is not None and again.open and again.joined == (2,) and again.holder == "h1"


def test_a_lease_taken_sealed_is_opened_by_its_holder_taking_it_again_joinable(shared: SharedRunStore) -> None:
    shared.acquire_leases({"k": {"s1": 1}}, "h1", 30)
    shared.acquire_leases({"k": {"s1": 2}}, "h2", 30)  # late: sealed
    shared.acquire_leases({"k": {"s1": 1}}, "h1", 30, joinable=True)
    shared.acquire_leases({"k": {"s1": 3}}, "h3", 30)  # joins now
    assert shared.seal_leases(["k"], "h1") == {"k": {"s1": 3}}


def test_the_lease_step_counts_the_other_live_workers_of_the_run(shared: SharedRunStore) -> None:
    status = shared.join("r", "a1:", 30, "g1")
    me = RunRef("r", status.generation, "a1:")
    assert shared.acquire_leases({"k": {"s": 1}}, "h1", 30, run=me).peers == 0  # alone
    shared.join("r", "b2:", 30, "g1")
    shared.join("r", "c3:", 30, "g1")
    assert shared.acquire_leases({"j": {"s": 1}}, "h1", 30, run=me).peers == 2
    shared.leave("r", "c3:")
    assert shared.acquire_leases({"j": {"s": 1}}, "h1", 30, run=me).peers == 1
    assert shared.acquire_leases({"j": {"s": 1}}, "h1", 30).peers is None  # no run asked about
    assert shared.acquire_leases({"i": {"s": 1}}, "h1", 30, run=RunRef("gone", "g0", "a1:")).peers == 0


def test_claimed_counts_what_the_run_holds_below_an_index(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 5)
    claim(shared, "k", asks=[ask("t1", 2), ask("t2", 1, namespace="ns2")])
    claim(shared, "k", releases=[ClaimRelease("t1")], asks=[ask("t3", 1), ask("t4", 1)])  # 0, 1 again
    claim(shared, "k", releases=[ClaimRelease("t3")])  # 0 free again: claimed {1}
    assert shared.claimed(RUN, "ns", "k", 5) == 1
    assert shared.claimed(RUN, "ns2", "k", 5) == 1 and shared.claimed(RUN, "ns2", "k", 0) == 0
    assert shared.claimed(RunRef("run", "other", "w1:"), "ns", "k", 5) == 0


def test_a_record_a_claim_writes_names_its_namespace(store: SampleStore, shared: SharedRunStore) -> None:
    stored(store, "k", 2)
    claim(shared, "k", asks=[ask("t1", 1, "q", namespace="a fresh namespace")])
    names = store.namespace_names()  # type: ignore[attr-defined]
    assert "a fresh namespace" in names.values()
