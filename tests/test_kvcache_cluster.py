"""The router: ring placement, session affinity, failover, total outage, membership changes."""

from __future__ import annotations

import pytest

from cachesaver.errors import ConfigurationError, InvalidRequestError
from cachesaver.kvcache import ChatResponse, Cluster, HashRing, Server

NAMES = ["gpu-0", "gpu-1", "gpu-2"]


def make_cluster(vram: int = 2, ram: int = 2) -> Cluster:
    return Cluster.uniform(NAMES, max_vram_chats=vram, max_ram_chats=ram)


def test_new_chat_goes_to_its_ring_owner() -> None:
    cluster = make_cluster(4, 4)
    ring = HashRing(NAMES)
    for i in range(30):
        routing = cluster.route(f"chat-{i}", i, "hi")
        assert routing.server == ring.owner(f"chat-{i}")
        assert routing.found_in is None and not routing.failover and routing.response.success
    assert cluster.stats().misses == 30


def test_later_turns_stick_to_the_same_server_and_hit() -> None:
    cluster = make_cluster()
    first = cluster.route("chat-a", 1, "turn 1")
    second = cluster.route("chat-a", 2, "turn 2")
    assert second.server == first.server == cluster.server_for("chat-a")
    assert second.found_in == "vram" and second.hit and cluster.has_chat("chat-a")
    stats = cluster.stats()
    assert (stats.hits, stats.misses, stats.vram_hits, stats.hit_rate) == (1, 1, 1, 0.5)


def test_ram_hits_are_counted_separately() -> None:
    cluster = Cluster([("only", Server(2, 4))])
    for t, chat in enumerate(["a", "b", "c", "a"], start=1):
        cluster.route(chat, t, "x")
    stats = cluster.stats()
    assert (stats.hits, stats.ram_hits, stats.vram_hits) == (1, 1, 0)


def test_affinity_beats_ring_ownership() -> None:
    cluster = make_cluster(4, 4)
    owner = HashRing(NAMES).owner("chat-z")
    cluster.servers[owner].shutdown()
    moved = cluster.route("chat-z", 1, "hi")
    assert moved.server != owner
    cluster.remove_server(owner)
    cluster.add_server(owner, Server(4, 4))  # the owner is back online with an empty cache
    again = cluster.route("chat-z", 2, "hi")
    assert again.server == moved.server and again.found_in == "vram"


def test_failover_goes_clockwise_misses_there_and_moves_the_affinity() -> None:
    cluster = make_cluster(4, 4)
    ring = HashRing(NAMES)
    chat = "chat-failover"
    order = ring.walk(chat)
    assert cluster.route(chat, 1, "t1").server == order[0]
    assert cluster.route(chat, 2, "t2").found_in == "vram"

    cluster.servers[order[0]].shutdown()
    routed = cluster.route(chat, 3, "t3")
    assert routed.server == order[1] and routed.failover and routed.found_in is None
    assert routed.response.success
    assert cluster.server_for(chat) == order[1]

    follow_up = cluster.route(chat, 4, "t4")
    assert follow_up.server == order[1] and follow_up.found_in == "vram" and not follow_up.failover

    cluster.servers[order[1]].shutdown()
    last = cluster.route(chat, 5, "t5")
    assert last.server == order[2] and last.failover
    stats = cluster.stats()
    assert (stats.failovers, stats.hits, stats.misses, stats.failed_requests) == (2, 2, 3, 0)


def test_every_server_offline_fails_and_counts() -> None:
    cluster = make_cluster()
    cluster.route("a", 1, "x")
    for server in cluster.servers.values():
        server.shutdown()
    assert cluster.handle_request("a", 2, "x") == ChatResponse(success=False)
    assert cluster.route("b", 3, "x").server is None
    stats = cluster.stats()
    assert (stats.failed_requests, stats.requests, stats.hits, stats.misses) == (2, 3, 0, 1)


def test_empty_cluster_fails_requests_instead_of_raising() -> None:
    cluster = Cluster()
    assert cluster.handle_request("a", 1, "x") == ChatResponse(success=False)
    assert cluster.stats().failed_requests == 1


def test_remove_server_clears_its_affinities_only() -> None:
    cluster = make_cluster(8, 8)
    for i in range(30):
        cluster.route(f"chat-{i}", i, "x")
    victim = cluster.server_for("chat-0")
    assert victim is not None
    pinned_elsewhere = {f"chat-{i}": cluster.server_for(f"chat-{i}") for i in range(30)}
    removed = cluster.remove_server(victim)
    assert isinstance(removed, Server) and victim not in cluster.servers
    for chat, server in pinned_elsewhere.items():
        if server == victim:
            assert cluster.server_for(chat) is None and not cluster.has_chat(chat)
        else:
            assert cluster.server_for(chat) == server
    again = cluster.route("chat-0", 100, "x")
    assert again.server == HashRing([n for n in NAMES if n != victim]).owner("chat-0")
    assert again.found_in is None and not again.failover


def test_add_and_remove_errors() -> None:
    cluster = make_cluster()
    with pytest.raises(ConfigurationError, match="already in the cluster"):
        cluster.add_server("gpu-0", Server(2, 2))
    with pytest.raises(ConfigurationError, match="no server named"):
        cluster.remove_server("gpu-9")
    with pytest.raises(ConfigurationError, match="needs a Server"):
        cluster.add_server("gpu-9", object())  # type: ignore[arg-type]


def test_stats_report_occupancy_per_server_and_tier() -> None:
    cluster = Cluster([("solo", Server(2, 3)), ("other", Server(2, 2))])
    cluster.servers["other"].shutdown()
    for t, chat in enumerate(["a", "b", "c", "d"], start=1):
        cluster.route(chat, t, "x")
    stats = cluster.stats()
    assert stats.occupancy == {"solo": {"vram": 2, "ram": 2}, "other": {"vram": 0, "ram": 0}}
    assert stats.servers["solo"].num_demotions == 2
    assert not stats.servers["other"].is_online
    cluster.route("e", 5, "x")
    assert stats.occupancy["solo"]["ram"] == 2  # a snapshot


def test_an_added_server_takes_over_the_chats_the_ring_now_gives_it() -> None:
    cluster = make_cluster(8, 8)
    cluster.add_server("gpu-3", Server(8, 8))
    ring = HashRing([*NAMES, "gpu-3"])
    chats = [f"chat-{i}" for i in range(40)]
    owners = {chat: cluster.route(chat, i, "hi").server for i, chat in enumerate(chats)}
    assert owners == {chat: ring.owner(chat) for chat in chats}
    assert "gpu-3" in owners.values()
    assert cluster.servers["gpu-3"].total_chats == sum(o == "gpu-3" for o in owners.values())


def test_a_bad_message_is_refused_and_counts_nothing() -> None:
    cluster = make_cluster()
    with pytest.raises(InvalidRequestError, match="message must be a str"):
        cluster.route("chat-a", 1, None)
    stats = cluster.stats()
    assert (stats.requests, stats.misses, stats.failed_requests) == (0, 0, 0)
    assert not cluster.has_chat("chat-a")
