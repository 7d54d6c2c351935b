"""A store read as entries (cachesaver.artifacts.catalog), on every engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from _engines import ENGINES, EngineFactory, make

from cachesaver.artifacts.catalog import entries, find_key, inspectable, read_samples
from cachesaver.errors import ConfigurationError
from cachesaver.store.protocol import Append, RecordId, RecordWrite, SampleStore


@pytest.fixture(params=list(ENGINES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SampleStore]:
    factory: EngineFactory = make(ENGINES[request.param], tmp_path, request)
    try:
        yield factory.open()
    finally:
        factory.close()


def canonical(prompt: Any) -> str:
    return json.dumps({"key_schema": "cachesaver-key/1", "model_identity": None, "fields": {"prompt": prompt}})


def test_entries_decode_the_request_times_and_records_by_namespace_name(store: SampleStore) -> None:
    store.commit(
        [Append("b-key", (("yes", {"t": 1}), ("no", None)), canonical("Is 7 prime?"), stored_at=100.0),
         Append("a-key", (("x", None),), canonical([{"role": "system", "content": "s"}, {"role": "user", "content": "hi\nthere"}]))],
        [RecordWrite("b-key", RecordId("run-1", "q1", 2, 0), ((0, 2),)), RecordWrite("b-key", RecordId("run-2", 7, 1, 0), ((0, 1),)),
         RecordWrite("b-key", RecordId("run-2", 7, 1, 1), ((0, 1),))],
    )
    store.commit([Append("old", (("z", None),))])  # no request kept
    a, b, old = entries(store)
    assert [e.key for e in (a, b, old)] == ["a-key", "b-key", "old"]  # sorted by key
    assert b.request is not None and b.request["fields"]["prompt"] == "Is 7 prime?"
    assert b.count == 2 and b.stored_at == (100.0, 100.0) and b.newest == b.oldest == 100.0
    assert b.uses() == {"run-1": 1, "run-2": 2}
    assert [(r.namespace, r.request_id, r.n, r.use, r.indices) for r in b.records] == [
        ("run-1", "q1", 2, 0, (0, 1)), ("run-2", 7, 1, 0, (0,)), ("run-2", 7, 1, 1, (0,)),
    ]
    assert b.preview() == "Is 7 prime?"
    assert a.preview() == "[2 messages] user: hi there"
    assert old.request is None and old.preview() == "request unknown"
    assert read_samples(store, "b-key", b.count) == [("yes", {"t": 1}), ("no", None)]


def test_a_key_is_found_by_a_unique_prefix(store: SampleStore) -> None:
    store.commit([Append("abcdef1", (("x", None),)), Append("abcdef2", (("y", None),)), Append("zzzz9", (("z", None),))])
    assert find_key(store, "zzzz") == "zzzz9"
    for prefix, said in (("abcdef", "2 keys start"), ("nope", "no key starting"), ("ab", "at least 4")):
        with pytest.raises(ConfigurationError, match=said):
            find_key(store, prefix)


def test_a_store_that_cannot_be_listed_is_a_configuration_error() -> None:
    class Bare:
        location = "bare:"
        writable = True

        def view(self, keys: Any, tags: Any = ()) -> Any: ...
        def read(self, wanted: Any) -> Any: ...
        def commit(self, *args: Any, **kwargs: Any) -> Any: ...
        def applied(self, token: str) -> bool: ...
        def release_thread(self) -> None: ...
        def close(self) -> None: ...

    with pytest.raises(ConfigurationError, match="cannot be listed.*InspectableStore"):
        inspectable(Bare())  # type: ignore[arg-type]
