"""The two-tier KV-cache server: hits, misses, LRU demotion and drops, promotion swaps, shutdown."""

from __future__ import annotations

import pytest

from cachesaver.errors import ConfigurationError, InvalidRequestError
from cachesaver.kvcache import ChatData, ChatResponse, Server


def feed(server: Server, chats: list[str], start: int = 1) -> list[ChatResponse]:
    return [server.handle_request(c, t, f"msg {c}") for t, c in enumerate(chats, start=start)]


def test_worked_example() -> None:
    server = Server(2, 2)
    feed(server, ["c1", "c2", "c3", "c4", "c1"])
    assert list(server.vram_chats) == ["c4", "c1"]
    assert list(server.ram_chats) == ["c2", "c3"]
    assert (server.num_cache_hits, server.num_cache_misses) == (1, 4)
    assert server.vram_chats["c1"] == ChatData("c1", 5)
    assert server.total_chats == 4


@pytest.mark.parametrize("vram, ram", [(1, 2), (2, 1), (0, 5), (5, -1)])
def test_capacity_below_two_is_refused(vram: int, ram: int) -> None:
    with pytest.raises(ValueError, match="^system requires at least 2 to function$"):
        Server(vram, ram)


def test_capacity_must_be_an_int() -> None:
    with pytest.raises(ConfigurationError, match="max_ram_chats must be an int"):
        Server(2, 2.5)  # type: ignore[arg-type]


def test_fresh_server_attributes() -> None:
    server = Server(3, 4)
    assert (server.max_vram_chats, server.max_ram_chats) == (3, 4)
    assert server.vram_chats == {} and server.ram_chats == {}
    assert (server.num_cache_hits, server.num_cache_misses, server.is_online) == (0, 0, True)
    assert server.total_chats == 0


def test_miss_inserts_into_vram_and_hit_updates_timestamp_in_place() -> None:
    server = Server(3, 2)
    feed(server, ["a", "b"])
    response = server.handle_request("a", 7, "again")
    assert response.success and response.llm_reply
    assert server.vram_chats == {"a": ChatData("a", 7), "b": ChatData("b", 2)}
    assert list(server.vram_chats) == ["a", "b"]  # a VRAM hit does not re-enter the tier
    assert (server.num_cache_hits, server.num_cache_misses) == (1, 2)
    assert server.ram_chats == {}


def test_vram_full_demotes_least_recently_used_not_first_inserted() -> None:
    server = Server(2, 3)
    feed(server, ["a", "b"])
    server.handle_request("a", 3, "a is fresh now")
    server.handle_request("c", 4, "new")
    assert list(server.vram_chats) == ["a", "c"]
    assert server.ram_chats == {"b": ChatData("b", 2)}
    assert server.num_demotions == 1 and server.num_drops == 0


def test_ram_full_drops_its_least_recently_used_chat() -> None:
    server = Server(2, 2)
    feed(server, ["a", "b", "c", "d", "e"])
    assert list(server.vram_chats) == ["d", "e"]
    assert list(server.ram_chats) == ["b", "c"]
    assert not server.has_chat("a")
    assert (server.num_demotions, server.num_drops) == (3, 1)
    assert server.total_chats == 4


def test_ram_hit_promotes_and_swaps_without_dropping() -> None:
    server = Server(2, 2)
    feed(server, ["a", "b", "c", "d"])  # vram c d, ram a b (ram full)
    server.handle_request("a", 5, "back")
    assert list(server.vram_chats) == ["d", "a"]
    assert list(server.ram_chats) == ["b", "c"]
    assert server.num_drops == 0
    assert (server.num_promotions, server.num_cache_hits) == (1, 1)
    assert server.total_chats == 4


def test_ties_go_to_the_chat_that_entered_the_tier_first() -> None:
    server = Server(3, 3)
    for chat in ["x", "y", "z"]:
        server.handle_request(chat, 10, "same time")
    server.handle_request("w", 10, "still the same time")
    assert list(server.ram_chats) == ["x"]
    server.handle_request("v", 10, "and again")
    assert list(server.ram_chats) == ["x", "y"]


def test_tie_break_uses_tier_entry_order_not_first_arrival() -> None:
    # "b" arrives first but re-enters VRAM (by promotion) after "c" entered it.
    server = Server(2, 2)
    feed(server, ["b", "a", "c"])  # vram a c, ram b
    server.handle_request("b", 5, "promote")  # ram: a ; vram: c, b
    server.handle_request("c", 6, "touch c")
    server.handle_request("b", 6, "touch b")  # now c@6 and b@6 tie in VRAM
    server.handle_request("d", 7, "new")
    assert list(server.ram_chats) == ["a", "c"]  # c entered VRAM before b did
    assert list(server.vram_chats) == ["b", "d"]


def test_tie_break_ignores_which_tied_chat_was_touched_last() -> None:
    # b entered VRAM before c; touching b after c at the same timestamp must not change that.
    server = Server(2, 2)
    feed(server, ["a", "b"])
    server.handle_request("b", 3, "touch b")
    server.handle_request("c", 4, "new: a goes to RAM")  # vram b c, ram a
    server.handle_request("c", 6, "touch c")
    server.handle_request("b", 6, "touch b last")  # b@6 and c@6 tie; b entered VRAM first
    server.handle_request("d", 7, "new")
    assert list(server.ram_chats) == ["a", "b"]
    assert list(server.vram_chats) == ["c", "d"]


def test_a_chat_is_never_in_both_tiers() -> None:
    server = Server(2, 3)
    pattern = ["a", "b", "c", "a", "d", "b", "e", "a", "c", "f", "b", "a"]
    for t, chat in enumerate(pattern, start=1):
        server.handle_request(chat, t, "x")
        assert not set(server.vram_chats) & set(server.ram_chats)
        assert len(server.vram_chats) <= 2 and len(server.ram_chats) <= 3
        assert server.has_chat(chat) and server.locate(chat) == "vram"
    assert server.num_cache_hits + server.num_cache_misses == len(pattern)


def test_has_chat_locate_and_remove_chat() -> None:
    server = Server(2, 2)
    feed(server, ["a", "b", "c"])
    assert server.has_chat("a") and server.locate("a") == "ram"
    assert server.locate("c") == "vram" and server.locate("zzz") is None
    assert server.remove_chat("a") == ChatData("a", 1)
    assert server.remove_chat("c") == ChatData("c", 3)
    assert server.remove_chat("a") is None
    assert not server.has_chat("a") and server.total_chats == 1


def test_shutdown_goes_offline_clears_tiers_and_keeps_counters() -> None:
    server = Server(2, 2)
    feed(server, ["a", "b", "c", "a"])
    server.shutdown()
    assert not server.is_online
    assert server.vram_chats == {} and server.ram_chats == {}
    assert (server.num_cache_hits, server.num_cache_misses) == (1, 3)
    with pytest.raises(RuntimeError, match="already offline"):
        server.shutdown()


def test_offline_server_fails_and_changes_nothing() -> None:
    server = Server(2, 2)
    server.shutdown()
    assert server.handle_request("a", 1, "hello") == ChatResponse(success=False)
    assert server.total_chats == 0
    assert (server.num_cache_hits, server.num_cache_misses) == (0, 0)


def test_offline_server_holding_chats_changes_nothing() -> None:
    server = Server(2, 2)
    feed(server, ["a", "b", "c"])
    server.is_online = False  # taken offline without clearing, e.g. a network partition
    before = (dict(server.vram_chats), dict(server.ram_chats), server.stats())
    for chat in ["a", "c", "new"]:
        assert server.handle_request(chat, 10, "hello") == ChatResponse(success=False)
    assert (dict(server.vram_chats), dict(server.ram_chats), server.stats()) == before


@pytest.mark.parametrize(
    "chat_id, timestamp, message",
    [(None, 1, "hi"), ("a", 1, None), ("a", "1", "hi"), ("a", True, "hi"), (7, 1, "hi")],
)
def test_bad_arguments_are_refused_before_anything_changes(chat_id, timestamp, message) -> None:
    server = Server(2, 2)
    feed(server, ["x"])
    before = (dict(server.vram_chats), server.stats())
    with pytest.raises(InvalidRequestError, match="must be"):
        server.handle_request(chat_id, timestamp, message)
    assert (dict(server.vram_chats), server.stats()) == before


def test_stats_is_a_snapshot() -> None:
    server = Server(2, 2)
    feed(server, ["a", "b", "c", "d", "e", "c"])
    stats = server.stats()
    assert (stats.num_cache_hits, stats.num_cache_misses) == (1, 5)
    assert (stats.num_promotions, stats.num_demotions, stats.num_drops) == (1, 4, 1)
    assert (stats.vram_chats, stats.ram_chats, stats.is_online) == (2, 2, True)
    server.handle_request("f", 7, "later")
    assert stats.num_cache_misses == 5  # unchanged
    assert server.stats().num_cache_misses == 6
