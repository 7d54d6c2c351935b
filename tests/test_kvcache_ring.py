"""Consistent hashing: stable across processes, balanced, minimal movement, clockwise walks."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
from _early import early

from cachesaver.errors import ConfigurationError
from cachesaver.kvcache import HashRing, ring_position

NODES = ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
KEYS = [f"chat-{i}" for i in range(2000)]


POSITIONS = (
    "from cachesaver.kvcache import HashRing, ring_position;"
    "r = HashRing(['gpu-0','gpu-1','gpu-2','gpu-3']);"
    "print(ring_position('chat-7'), [r.owner(f'chat-{i}') for i in range(50)])"
)
# Two interpreters with other hash seeds, run beside the session (tests/_early.py).
POSITION_RUNS = [
    early(__file__, ["test_positions_are_stable_across_processes"], [sys.executable, "-c", POSITIONS],
          env={"PYTHONHASHSEED": seed})
    for seed in ("1", "2")
]


def test_positions_are_stable_across_processes() -> None:
    env_runs = [run.wait(timeout_s=18) for run in POSITION_RUNS]
    for run in env_runs:
        assert run.returncode == 0, run.stderr
    assert env_runs[0].stdout == env_runs[1].stdout
    ring = HashRing(NODES)
    expected = f"{ring_position('chat-7')} {[ring.owner(f'chat-{i}') for i in range(50)]}\n"
    assert env_runs[0].stdout == expected


def test_owner_does_not_depend_on_insertion_order() -> None:
    a = HashRing(NODES)
    b = HashRing(reversed(NODES))
    assert [a.owner(k) for k in KEYS] == [b.owner(k) for k in KEYS]


def test_virtual_nodes_spread_keys_over_every_node() -> None:
    ring = HashRing(NODES, virtual_nodes=128)  # one ring: building it per key cost 2 s
    counts = Counter(ring.owner(k) for k in KEYS)
    assert set(counts) == set(NODES)
    assert min(counts.values()) > len(KEYS) / len(NODES) / 2


def test_adding_a_node_moves_only_keys_it_takes_over() -> None:
    ring = HashRing(NODES)
    before = {k: ring.owner(k) for k in KEYS}
    ring.add("gpu-4")
    after = {k: ring.owner(k) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert moved and all(after[k] == "gpu-4" for k in moved)
    assert len(moved) < len(KEYS) / 2


def test_removing_a_node_moves_only_its_keys_to_the_next_node_clockwise() -> None:
    ring = HashRing(NODES)
    before = {k: ring.walk(k) for k in KEYS}
    ring.remove("gpu-2")
    for key in KEYS:
        if before[key][0] == "gpu-2":
            assert ring.owner(key) == before[key][1]
        else:
            assert ring.owner(key) == before[key][0]
    assert "gpu-2" not in ring and len(ring) == 3


def test_walk_lists_every_node_once_owner_first() -> None:
    ring = HashRing(NODES)
    for key in KEYS[:100]:
        order = ring.walk(key)
        assert order[0] == ring.owner(key)
        assert sorted(order) == sorted(NODES)


def test_errors_say_what_to_do() -> None:
    with pytest.raises(ConfigurationError, match="add at least one"):
        HashRing().owner("x")
    ring = HashRing(["a"])
    with pytest.raises(ConfigurationError, match="already on the ring"):
        ring.add("a")
    with pytest.raises(ConfigurationError, match="not on the ring"):
        ring.remove("b")
    with pytest.raises(ConfigurationError, match="virtual_nodes"):
        HashRing(virtual_nodes=0)
    with pytest.raises(ConfigurationError, match="non-empty string"):
        ring.add("")
    assert ring.nodes == ["a"]
