"""Miss explanations (cachesaver.artifacts.explain): what differs, the nearest requests, the
message of each case."""

from __future__ import annotations

from typing import Any

import pytest

from cachesaver.artifacts.explain import MissExplanation, Nearby, differences, explain, load_catalog
from cachesaver.store.memory import MemoryStore
from cachesaver.store.protocol import Append, RecordId, RecordWrite


def doc(prompt: Any, identity: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"key_schema": "cachesaver-key/1", "model_identity": identity, "fields": {"prompt": prompt, **fields}}


def system(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@pytest.mark.parametrize(
    "mine, theirs, said",
    [
        (doc("x", temperature=0.7), doc("x", temperature=0.5), ["temperature 0.7 vs 0.5"]),
        (doc("x", top_p=0.9), doc("x"), ["top_p 0.9 vs absent"]),
        (doc("x", stop=["a"]), doc("x", stop=["b"]), ['stop ["a"] vs ["b"]']),
        (doc("x", "a"), doc("x", "b"), ["model identity differs: 'a' vs 'b'"]),
        (doc("x", None), doc("x", "b"), ["model identity differs: none vs 'b'"]),
        (doc([system("be brief"), user("hi")]), doc([user("hi")]), ["a system message was added"]),
        (doc([user("hi")]), doc([system("s"), user("hi")]), ["the system message was removed"]),
        (doc([system("a"), user("hi")]), doc([system("b"), user("hi")]), ["the system message differs: 'a' vs 'b'"]),
        (doc([user("hi"), user("more")]), doc([user("hi")]), ["1 message added at the end"]),
        (doc([user("hi")]), doc([user("hi"), user("a"), user("b")]), ["2 messages fewer at the end"]),
        (doc([user("hi"), user("x")]), doc([user("hi"), user("y")]), ["message 2 (user) differs: 'x' vs 'y'"]),
        (doc("Is 7 prime?"), doc("Is 9 prime?"), ["prompt differs from character 4: 'Is 7 prime?' vs 'Is 9 prime?'"]),
        (doc("hi"), doc([user("hi")]), ["the prompt is text vs a message list"]),
        (doc("same", temperature=1), doc("same", temperature=1), []),
    ],
)
def test_differences_are_short_phrases_mine_first(mine: Any, theirs: Any, said: list[str]) -> None:
    assert differences(mine, theirs) == said


def put(store: MemoryStore, d: dict[str, Any], count: int = 1, records: tuple[RecordWrite, ...] = ()) -> str:
    import json

    from cachesaver.keys import key_of_canonical_request

    key = key_of_canonical_request(d)
    store.commit([Append(key, tuple((f"s{i}", None) for i in range(count)), json.dumps(d))], list(records))
    return key


def test_the_nearest_stored_requests_come_first_with_the_same_prompt_preferred() -> None:
    store = MemoryStore()
    close = put(store, doc("Is 91 prime?", temperature=0.5), count=3)
    put(store, doc("Is 91 prime?", temperature=0.5, top_p=0.1, seed=3))
    put(store, doc("Something else entirely"))
    why = explain(store, doc("Is 91 prime?", temperature=0.7), namespace="ns", request_id="q", n=1)
    assert why.stored == 0 and not why.hit
    assert why.nearest[0] == Nearby(close, 3, ("temperature 0.7 vs 0.5",))
    assert len(why.nearest) == 2  # only requests with the same prompt, when there are some
    assert f"nearest stored: {close[:12]} (3 samples): temperature 0.7 vs 0.5" in str(why)


def test_without_a_same_prompt_the_most_similar_prompt_is_nearest() -> None:
    store = MemoryStore()
    put(store, doc("Completely unrelated text about cats"))
    similar = put(store, doc("Is 91 a prime number?"))
    why = explain(store, doc("Is 97 a prime number?"), namespace="ns", request_id=None, n=1)
    assert why.nearest[0].key == similar


def test_keys_with_an_unknown_request_are_counted_not_compared() -> None:
    store = MemoryStore()
    store.commit([Append("old-key", (("s", None),))])  # stored before requests were kept
    why = explain(store, doc("q"), namespace="ns", request_id=None, n=1)
    assert why.nearest == () and why.unknown_requests == 1
    assert "the cache holds no other request to compare it with (0 known, 1 with request unknown)" in str(why)


def test_a_catalog_stops_at_its_limit() -> None:
    store = MemoryStore()
    for i in range(5):
        put(store, doc(f"q{i}"))
    catalog = load_catalog(store, limit=3)
    assert len(catalog.items) == 3 and catalog.skipped == 2


def test_a_record_of_the_same_id_in_another_namespace_is_a_hit_there() -> None:
    store = MemoryStore()
    record = RecordWrite("", RecordId("run-1", "q1", 2, 0), (0, 1))
    d = doc("q")
    from cachesaver.keys import key_of_canonical_request

    key = key_of_canonical_request(d)
    put(store, d, count=2, records=(RecordWrite(key, record.record, record.parts),))
    why = explain(store, d, namespace="run-2", request_id="q1", n=3)
    assert why.elsewhere == (("run-1", 2),)
    other_id = explain(store, d, namespace="run-2", request_id=1, n=3)
    assert other_id.elsewhere == ()  # the int 1 is not the string '1', nor 'q1'
    same_namespace = explain(store, d, namespace="run-1", request_id="q1", n=3)
    assert same_namespace.elsewhere == ()


@pytest.mark.parametrize(
    "stored, handed_out, n, said",
    [
        (3, 0, 2, "it would be served from the cache: key abcdefabcdef holds 3 sample(s), 3 not handed out yet"),
        (1, 0, 2, "key abcdefabcdef holds 1 sample and the request asks 2"),
        (2, 2, 2, "all 2 samples stored under key abcdefabcdef are already handed out in this run (namespace 'ns')"),
        (3, 2, 2, "2 of the 3 samples stored under key abcdefabcdef are already handed out in this run (namespace 'ns'): 1 left, 2 asked"),
        (0, 0, 1, "nothing is stored under this request's key abcdefabcdef; the cache holds no other request"),
    ],
)
def test_each_case_has_its_sentence(stored: int, handed_out: int, n: int, said: str) -> None:
    why = MissExplanation("abcdef" * 10, "ns", "q", n, stored, handed_out)
    assert said in str(why)
    assert why.to_dict()["explanation"] == str(why) and why.to_dict()["hit"] == (stored - handed_out >= n)
