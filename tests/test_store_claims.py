"""RunClaims: which stored samples a run has handed out, and which ones a request gets next."""

from __future__ import annotations

import os
import hashlib
import random
import tempfile
from pathlib import Path

import anyio
import pytest
from _support import open_files_under

from cachesaver.stages.caching import AsyncCacher
from cachesaver.store.claims import RunClaims
from cachesaver.models import ScriptedModel
from cachesaver.store.threads import StoreThread
from cachesaver.typedefs import Request


def test_lowest_unclaimed_indices_first() -> None:
    claims = RunClaims()
    assert claims.choose("ns", "k", n=2, stored=5) == [0, 1]
    assert claims.choose("ns", "k", n=2, stored=5) == [2, 3]
    assert claims.choose("ns", "k", n=2, stored=5) == [4]
    assert claims.choose("ns", "k", n=2, stored=5) == []


def test_never_more_than_stored() -> None:
    claims = RunClaims()
    assert claims.choose("ns", "k", n=3, stored=0) == []
    assert claims.choose("ns", "k", n=3, stored=1) == [0]


def test_recorded_indices_come_first_in_recorded_order() -> None:
    claims = RunClaims()
    assert claims.choose("ns", "k", n=2, stored=6, recorded=[4, 2]) == [4, 2]
    assert claims.choose("ns", "k", n=3, stored=6) == [0, 1, 3]


def test_recorded_indices_already_claimed_are_replaced_by_the_lowest_free() -> None:
    claims = RunClaims()
    claims.choose("ns", "k", n=1, stored=6, recorded=[3])
    assert claims.choose("ns", "k", n=2, stored=6, recorded=[3, 5]) == [5, 0]


def test_recorded_indices_beyond_the_stored_count_are_skipped() -> None:
    claims = RunClaims()
    assert claims.choose("ns", "k", n=2, stored=2, recorded=[7, 1]) == [1, 0]


def test_recorded_indices_are_not_taken_twice_by_one_request() -> None:
    claims = RunClaims()
    assert claims.choose("ns", "k", n=3, stored=4, recorded=[2, 2, 2]) == [2, 0, 1]


def test_claims_are_per_namespace_and_key() -> None:
    claims = RunClaims()
    assert claims.choose("a", "k", n=2, stored=3) == [0, 1]
    assert claims.choose("b", "k", n=2, stored=3) == [0, 1]
    assert claims.choose("a", "k2", n=2, stored=3) == [0, 1]
    assert claims.choose("a", "k", n=2, stored=3) == [2]


def test_explicit_claims_are_respected() -> None:
    claims = RunClaims()
    claims.claim("ns", "k", [0, 2])
    assert claims.choose("ns", "k", n=3, stored=5) == [1, 3, 4]


def test_no_index_is_ever_handed_out_twice() -> None:
    rng = random.Random(7)
    claims = RunClaims()
    handed: list[int] = []
    stored = 0
    for _ in range(500):
        stored += rng.randrange(0, 3)
        recorded = [rng.randrange(0, stored + 3) for _ in range(rng.randrange(0, 4))]
        handed += claims.choose("ns", "k", n=rng.randrange(1, 4), stored=stored, recorded=recorded)
    assert len(handed) == len(set(handed))
    assert all(0 <= i < stored for i in handed)


def test_use_counts_per_request_id() -> None:
    claims = RunClaims()
    assert [claims.next_use("ns", "k", "id", 1) for _ in range(3)] == [0, 1, 2]
    assert claims.next_use("ns", "k", "other", 1) == 0
    assert claims.next_use("ns2", "k", "id", 1) == 0
    assert claims.next_use("ns", "k2", "id", 1) == 0


def test_use_counts_tell_an_int_id_from_a_str_id() -> None:
    claims = RunClaims()
    assert claims.next_use("ns", "k", 1, 1) == 0
    assert claims.next_use("ns", "k", "1", 1) == 0
    assert claims.next_use("ns", "k", 1, 1) == 1


def test_claims_in_order_stay_small_however_many() -> None:
    """Semantic 10: a key whose samples are claimed in order costs O(1) memory."""
    claims = RunClaims()
    for start in range(0, 10_000, 4):
        claims.choose("ns", "k", n=4, stored=10_000)
    entry = claims.claims("ns", "k")
    assert entry.floor == 10_000
    assert not entry.above


def test_out_of_order_claims_compact_once_the_gap_fills() -> None:
    claims = RunClaims()
    claims.claim("ns", "k", [5, 3, 4, 1])
    entry = claims.claims("ns", "k")
    assert entry.is_claimed(3) and not entry.is_claimed(0)
    claims.claim("ns", "k", [0, 2])
    entry = claims.claims("ns", "k")
    assert entry.floor == 6
    assert not entry.above


def test_memory_stays_bounded_and_choices_are_unchanged_when_entries_move_to_disk() -> None:
    """Semantic 10: a long run with ever-new keys and ids keeps a fixed number of entries in
    memory, and makes exactly the choices of a run that keeps everything in memory."""
    rng = random.Random(3)
    small, large = RunClaims(max_in_memory=20), RunClaims(max_in_memory=10**9)
    try:
        for step in range(2_000):
            key = f"k{rng.randrange(300)}"
            request_id = f"id{rng.randrange(400)}"
            n = rng.randrange(1, 4)
            stored = rng.randrange(0, 12)
            for claims in (small, large):
                use = claims.next_use("ns", key, request_id, n)
                chosen = claims.choose("ns", key, n, stored, recorded=[use % 5, 2])
                if claims is small:
                    expected = (use, chosen)
                else:
                    assert (use, chosen) == expected, step
            small.trim()
            large.trim()
            assert small.in_memory <= 40
        assert large.in_memory > 400  # the unbounded twin did need the room
        assert small._spill is not None
        directory = small._spill.directory
    finally:
        small.close()
        large.close()
    assert not os.path.exists(directory)  # closing deletes the on-disk part


def test_moved_entries_are_found_whichever_equal_strings_name_them() -> None:
    # The same id as one object shared with the namespace, later as an equal, separate string.
    claims = RunClaims(max_in_memory=2)
    namespace = "task"
    try:
        assert claims.next_use(namespace, "k", namespace, 1) == 0
        for i in range(10):
            claims.next_use("other", f"k{i}", "x", 1)
        claims.trim()
        assert claims.in_memory <= 4
        same_text = "".join(["ta", "sk"])
        assert same_text is not namespace
        assert claims.next_use("task", "k", same_text, 1) == 1
    finally:
        claims.close()


def test_a_disk_that_refuses_the_move_loses_nothing_and_is_not_retried_every_round(
    tmp_path, monkeypatch
) -> None:
    import sqlite3
    import tempfile

    attempts = []

    def refusing_database(*args, **kwargs):
        attempts.append(args)
        raise OSError("No space left on device")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sqlite3, "connect", refusing_database)
    claims = RunClaims(max_in_memory=4)
    for i in range(6):
        claims.next_use("ns", f"k{i}", "id", 1)
    try:
        claims.trim()
    except OSError:
        pass
    else:
        raise AssertionError("trim should report the refused write")
    assert list(tmp_path.iterdir()) == []  # the directory made for the store is removed again
    assert [claims.next_use("ns", f"k{i}", "id", 1) for i in range(6)] == [1] * 6  # nothing lost
    claims.trim()  # memory has not grown by half: no new attempt
    assert len(attempts) == 1
    for i in range(6, 12):
        claims.next_use("ns", f"k{i}", "id", 1)
    try:
        claims.trim()
    except OSError:
        pass
    assert len(attempts) == 2


def test_a_close_from_another_thread_closes_the_spill_on_each_store_thread_that_used_it(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    reads, writes = StoreThread(), StoreThread()
    claims = RunClaims(max_in_memory=4)

    def long_run() -> None:  # as the broker's lookup rounds do
        for i in range(10):
            claims.next_use("ns", f"k{i}", "id", 1)
        claims.trim()

    reads.call(long_run)
    writes.call(claims.claim, "ns", "k0", [0])  # as a write commit does: reads a moved entry
    directory = claims._spill.directory
    assert open_files_under(tmp_path)  # the spill's connections, on the two store threads
    claims.close()  # from this thread, as the broker's aclose does
    reads.close()
    writes.close()
    assert open_files_under(tmp_path) == [] and not os.path.exists(directory)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_long_run_through_a_cacher_leaves_no_spill_connection_open(tmp_path, monkeypatch, backend) -> None:
    spills = tmp_path / "tmp"
    spills.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spills))
    monkeypatch.setattr(RunClaims, "max_in_memory", 4)

    async def main() -> None:
        async with AsyncCacher(ScriptedModel(), tmp_path / "cache") as cacher:
            for i in range(12):
                await cacher.request(Request(f"p{i}", request_id=f"id{i}"))
            assert cacher._broker.claims._spill is not None  # the run did spill to disk

    anyio.run(main, backend=backend)
    assert open_files_under(spills) == [] and list(spills.iterdir()) == []


def test_take_claims_every_index_or_none() -> None:
    claims = RunClaims()
    claims.claim("ns", "k", [2])
    assert not claims.take("ns", "k", [1, 2], stored=5)  # 2 is taken: nothing is claimed
    assert not claims.claims("ns", "k").is_claimed(1)
    assert not claims.take("ns", "k", [3, 3], stored=5)  # not distinct
    assert not claims.take("ns", "k", [4, 5], stored=5)  # 5 is not stored
    assert claims.take("ns", "k", [1, 0], stored=5)
    assert claims.claims("ns", "k").floor == 3


def test_a_distinct_request_costs_two_compact_entries() -> None:
    """Keys claimed in order are held as their count, identities as ints: no per-request key
    string, id string or tuple stays alive."""
    claims = RunClaims()
    key_of = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1_000)]
    for i, key in enumerate(key_of):
        claims.next_use("ns", key, f"id-{i}", 1)
        claims.choose("ns", key, n=1, stored=1)
    assert claims.in_memory == 2_000
    assert all(type(ident) is int for ident in [*claims._keys, *claims._uses])
    assert all(type(value) is int for value in claims._keys.values())
    claims.claim("ns", key_of[0], [5])  # out of order: an object until the gap fills
    assert not isinstance(claims._keys[RunClaims._key_ident("ns", key_of[0])], int)
    claims.claim("ns", key_of[0], [1, 2, 3, 4])
    assert claims._keys[RunClaims._key_ident("ns", key_of[0])] == 6


def test_int_ids_whose_hashes_collide_keep_their_own_use_counts() -> None:
    # hash(-1) == hash(-2) and hash(0) == hash(2**61 - 1) in CPython: the compact identities
    # must still tell these ids apart, or a replay in another order finds the wrong records.
    claims = RunClaims()
    key = hashlib.sha256(b"prompt").hexdigest()
    for first, second in ((-1, -2), (0, 2**61 - 1)):
        assert claims.next_use("ns", key, first, 1) == 0
        assert claims.next_use("ns", key, second, 1) == 0
        assert claims.next_use("ns", key, second, 1) == 1


def test_keys_of_64_characters_that_are_not_hex_digests_keep_their_own_claims() -> None:
    claims = RunClaims()
    first, second = "a" * 32 + "z" * 32, "a" * 32 + "y" * 32
    assert claims.choose("ns", first, n=1, stored=5) == [0]
    assert claims.choose("ns", second, n=1, stored=5) == [0]
    assert claims.next_use("ns", first, "q", 1) == 0
    assert claims.next_use("ns", second, "q", 1) == 0
    upper = "A" * 64  # hex digits, but not a digest this package makes: never confused with "a" * 64
    assert claims.choose("ns", upper, n=1, stored=5) == [0]
    assert claims.choose("ns", "a" * 64, n=1, stored=5) == [0]


def test_undo_use_takes_back_the_last_use_as_if_it_had_never_been_asked() -> None:
    claims = RunClaims()
    assert claims.next_use("ns", "k" * 64, "r", 1) == 0 and not claims.reused
    claims.undo_use("ns", "k" * 64, "r", 1, 0, reused=False)
    assert claims.next_use("ns", "k" * 64, "r", 1) == 0 and not claims.reused  # the same use, not "reused"
    assert claims.next_use("ns", "k" * 64, "r", 1) == 1
    claims.release_use("ns", "k" * 64, "r", 1, 0)  # a failed attempt gives use 0 back ...
    assert claims.next_use("ns", "k" * 64, "r", 1) == 0 and claims.reused
    claims.undo_use("ns", "k" * 64, "r", 1, 0, reused=True)  # ... undoing that take leaves it given back
    assert claims.next_use("ns", "k" * 64, "r", 1) == 0 and claims.reused
    assert claims.next_use("ns", "k" * 64, "r", 1) == 2
    claims.undo_use("ns", "k" * 64, "r", 1, 1, reused=False)  # not the last one taken: given back instead
    assert claims.next_use("ns", "k" * 64, "r", 1) == 1 and claims.reused
    assert claims.next_use("ns", "k" * 64, "r", 1) == 3
