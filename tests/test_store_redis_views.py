"""The view script's call and the decoding of its reply (cachesaver.store.redis_views): without
a server, replies of the script's short replay form and replies this engine's script never
gives, and the arguments of a call; on a server, a replay of a non-ASCII request id."""

from __future__ import annotations

import pickle
from typing import Any

from cachesaver.errors import CorruptStoreError, StoreError
from cachesaver.store.protocol import EMPTY_VIEW, KeyView
from cachesaver.store.redis_script import VIEW_SHA
from cachesaver.store.redis_views import decode_views, view_arg, view_command


def decode(keys: list[str], reply: Any, asked: dict[str, list[str]]) -> dict[str, KeyView | StoreError]:
    out: dict[str, KeyView | StoreError] = {}
    decode_views(keys, reply, asked, out, lambda key, why: CorruptStoreError(f"{key}: {why}"))
    return out


def blob(data: str) -> bytes:
    return pickle.dumps((data, None), protocol=pickle.HIGHEST_PROTOCOL)


def test_the_short_replay_form_gives_one_mapping_for_records_and_found_tags() -> None:
    out = decode(["a", "b"], [-4, 3, b"2", 1, 2, blob("a2"), -1], {"a": ["t"], "b": ["u"]})
    view = out["a"]
    assert isinstance(view, KeyView)
    assert (view.count, view.records, view.found, view.samples) == (3, {"t": (2,)}, {"t": (2,)}, {2: ("a2", None)})
    assert out["b"] == EMPTY_VIEW


def test_damaged_indices_in_the_short_form_fail_only_their_key() -> None:
    out = decode(["a", "b"], [-4, 1, b"0,x", 0, -4, 1, b"0", 1, 0, blob("b0")], {"a": ["t"], "b": ["t"]})
    assert isinstance(out["a"], CorruptStoreError) and "cannot be decoded" in str(out["a"])
    assert isinstance(out["b"], KeyView) and out["b"].samples == {0: ("b0", None)}


def test_a_short_form_for_a_key_nothing_was_asked_of_or_of_another_shape_fails_every_key_never_raises() -> None:
    for reply, asked in (([-4, 1, b"0", 0, -1], {}), ([-4, 1, b"0", b"z"], {"a": ["t"]}), ([-4, 1], {"a": ["t"]})):
        out = decode(["a", "b"], reply, asked)
        assert all(isinstance(out[key], CorruptStoreError) for key in ("a", "b")), (reply, out)


def test_a_view_call_sends_ascii_tags_as_text_and_any_other_tag_as_its_utf8_bytes() -> None:
    command = view_command(b"p:1:", [], ["a", "b", "c", "d"], {"a": ["t1"], "b": ["tü"], "c": ["x", "y\udc80"]})
    assert command[:3] == ("EVALSHA", VIEW_SHA, 0)
    tail = list(command[3 + 5 + 4:])  # after the head and the four keys
    assert tail == [1, "t1", 1, "tü".encode(), 2, "x", "y\udc80".encode("utf-8", "surrogatepass"), 0]
    assert command[3 + 5] == view_arg("a") and command[3 + 3] == 4  # key args; the key count in the head


def test_a_replay_of_a_non_ascii_request_id_is_found_by_its_view_on_a_server(redis_server) -> None:
    from cachesaver.store.protocol import Append, RecordId, RecordWrite
    from cachesaver.store.redis import RedisStore

    store = RedisStore(redis_server.url)
    rids = [RecordId("ns ü", "réq-日本", 1, 0), RecordId("ns", "plain", 1, 0)]
    store.commit([Append("k", [("s0", None), ("s1", None)])], [RecordWrite("k", rids[0], (1,)), RecordWrite("k", rids[1], (0,))])
    for rid, index in zip(rids, (1, 0)):
        view = store.view(["k"], [("k", rid.tag)])["k"]
        assert isinstance(view, KeyView) and view.found == {rid.tag: (index,)} and index in view.samples
    store.close()
