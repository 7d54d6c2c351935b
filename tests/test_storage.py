"""SampleStore: append-only, dense, bounded writes per append (semantic 9).

Replay records are tested through the pipelines (tests/test_pipelines.py), where they matter."""

from __future__ import annotations

import logging
from pathlib import Path

import diskcache
import pytest

from cachesaver.errors import ConfigurationError, CorruptStoreError
from cachesaver.storage import SampleStore


@pytest.fixture
def store(tmp_path: Path):
    store = SampleStore(tmp_path / "cache")
    yield store
    store.close()


def test_append_returns_the_index_of_the_first_appended_sample(store: SampleStore) -> None:
    assert store.append("k", ["a", "b"]) == 0
    assert store.append("k", ["c"]) == 2
    assert store.append("k", ["d", "e", "f"]) == 3
    assert store.count("k") == 6
    assert store.read("k", range(6)) == ["a", "b", "c", "d", "e", "f"]


def test_count_of_an_unknown_key_is_zero(store: SampleStore) -> None:
    assert store.count("never written") == 0
    assert store.read("never written", []) == []


def test_read_returns_samples_in_the_order_of_the_indices_asked(store: SampleStore) -> None:
    store.append("k", ["a", "b", "c"])
    assert store.read("k", [2, 0, 1]) == ["c", "a", "b"]


def test_keys_are_independent(store: SampleStore) -> None:
    store.append("k1", ["a"])
    assert store.append("k2", ["x", "y"]) == 0
    assert store.append("k1", ["b"]) == 1
    assert (store.count("k1"), store.count("k2")) == (2, 2)


def test_samples_keep_any_picklable_value(store: SampleStore) -> None:
    values = [{"text": "hi", "logprobs": [-0.1, -2.5]}, ("tuple", 1), None, 3.25, b"raw"]
    store.append("k", values)
    assert store.read("k", range(len(values))) == values


def test_appending_an_empty_list_changes_nothing(store: SampleStore) -> None:
    store.append("k", ["a"])
    assert store.append("k", []) == 1
    assert store.count("k") == 1


def test_reading_past_the_end_is_a_corrupt_store_error(store: SampleStore) -> None:
    store.append("k", ["a"])
    with pytest.raises(CorruptStoreError):
        store.read("k", [1])


def test_each_append_writes_a_bounded_number_of_entries(tmp_path: Path) -> None:
    """Appending never rewrites the list: one append of k samples adds at most k entries to the
    diskcache, at the 10th sample as at the 2000th, and the whole list costs about one entry
    per sample (measuring the cost itself is the benchmark's job)."""
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    store = SampleStore(cache)
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
    assert store.read("k", [9, 1999, 2002]) == ["s9", "s1999", "z"]
    cache.close()


def test_a_missing_sample_is_reported_never_a_silent_gap(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    store = SampleStore(cache)
    store.append("k", [f"s{i}" for i in range(199)])
    before = set(cache.iterkeys())
    store.append("k", ["s199"])
    added = set(cache.iterkeys()) - before  # where sample 199 lives
    assert added
    for key in added:
        del cache[key]  # what an evicting cache would do
    with pytest.raises(CorruptStoreError, match="eviction"):
        store.read("k", [0, 199])
    assert store.read("k", [0, 198]) == ["s0", "s198"]
    cache.close()


def test_store_shares_a_cache_with_other_data(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    cache["k"] = "the user's own value"
    store = SampleStore(cache)
    assert store.count("k") == 0
    store.append("k", ["a"])
    assert cache["k"] == "the user's own value"
    assert store.read("k", [0]) == ["a"]
    cache.close()


def test_close_leaves_a_passed_in_cache_open(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    store = SampleStore(cache)
    store.append("k", ["a"])
    store.close()
    cache["still"] = "usable"
    assert cache["still"] == "usable"
    assert SampleStore(cache).read("k", [0]) == ["a"]
    cache.close()


def test_a_directory_path_and_a_cache_object_see_the_same_store(tmp_path: Path) -> None:
    by_path = SampleStore(tmp_path / "c")
    by_path.append("k", ["a", "b"])
    by_path.close()
    by_str = SampleStore(str(tmp_path / "c"))
    assert by_str.read("k", [0, 1]) == ["a", "b"]
    by_str.close()
    cache = diskcache.Cache(str(tmp_path / "c"))
    assert SampleStore(cache).count("k") == 2
    cache.close()


def test_a_cache_that_may_evict_samples_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"))  # default policy: least-recently-stored
    with caplog.at_level(logging.WARNING, logger="cachesaver"):
        SampleStore(cache)
    assert any("eviction" in record.getMessage() for record in caplog.records)
    cache.close()


def test_something_that_is_not_a_cache_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        SampleStore(object())
    with pytest.raises(ConfigurationError):
        SampleStore({"a": "dict"})


def test_samples_survive_reopening(tmp_path: Path) -> None:
    first = SampleStore(tmp_path / "c")
    first.append("k", ["a", "b"])
    first.close()
    second = SampleStore(tmp_path / "c")
    assert second.read("k", [0, 1]) == ["a", "b"]
    assert second.append("k", ["c"]) == 2
    second.close()


def test_a_path_where_no_cache_can_live_is_a_configuration_error(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("x")
    with pytest.raises(ConfigurationError, match="cannot open a cache in"):
        SampleStore(a_file)
    with pytest.raises(ConfigurationError, match="cannot open a cache in"):
        SampleStore(a_file / "below-a-file")
