"""Decoding the view script's reply (cachesaver.store.redis_views), without a server: replies
of the script's short replay form and replies this engine's script never gives."""

from __future__ import annotations

import pickle
from typing import Any

from cachesaver.errors import CorruptStoreError, StoreError
from cachesaver.store.protocol import EMPTY_VIEW, KeyView
from cachesaver.store.redis_views import decode_views


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
