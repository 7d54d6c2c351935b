"""Consistent hashing: which node owns a key, and which nodes follow it clockwise.

Every node is placed on a 64-bit ring at ``virtual_nodes`` points derived from SHA-256 of its
name, so positions are the same in every process and on every machine (Python's ``hash()`` is
never used). A key belongs to the first node point at or after the key's own point, wrapping
around. Adding or removing a node moves only the keys that node gains or loses.

>>> ring = HashRing(["gpu-0", "gpu-1", "gpu-2"])
>>> owner = ring.owner("chat-42")
>>> owner in ring, ring.walk("chat-42")[0] == owner, sorted(ring.walk("chat-42"))
(True, True, ['gpu-0', 'gpu-1', 'gpu-2'])
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

from ..errors import ConfigurationError

__all__ = ["HashRing", "ring_position"]


def ring_position(text: str) -> int:
    """The point of ``text`` on the ring: the first 8 bytes of its SHA-256, as an int."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


class HashRing:
    """A consistent-hash ring of named nodes with virtual nodes.

    Guarantees: ``owner(key)`` depends only on the key and the set of node names (not on the
    order they were added); ``walk(key)`` lists every node exactly once, owner first, then
    the others in clockwise order.

    Raises :class:`~cachesaver.errors.ConfigurationError` for ``virtual_nodes < 1``, adding a
    node twice, removing an unknown node, or asking an empty ring for an owner.
    """

    def __init__(self, nodes: Iterable[str] = (), *, virtual_nodes: int = 64) -> None:
        if isinstance(virtual_nodes, bool) or not isinstance(virtual_nodes, int) or virtual_nodes < 1:
            raise ConfigurationError(f"virtual_nodes must be an int >= 1, got {virtual_nodes!r}")
        self.virtual_nodes = virtual_nodes
        self._nodes: set[str] = set()
        self._points: list[tuple[int, str]] = []  # sorted (position, node)
        for node in nodes:
            self.add(node)

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"HashRing({sorted(self._nodes)!r}, virtual_nodes={self.virtual_nodes})"

    @property
    def nodes(self) -> list[str]:
        """The node names, sorted."""
        return sorted(self._nodes)

    def add(self, node: str) -> None:
        """Place ``node`` on the ring at its virtual-node points."""
        if not isinstance(node, str) or not node:
            raise ConfigurationError(f"a ring node needs a non-empty string name, got {node!r}")
        if node in self._nodes:
            raise ConfigurationError(f"node {node!r} is already on the ring; remove it first")
        self._nodes.add(node)
        for replica in range(self.virtual_nodes):
            bisect.insort(self._points, (ring_position(f"{node}#{replica}"), node))

    def remove(self, node: str) -> None:
        """Take ``node`` and all its virtual-node points off the ring."""
        if node not in self._nodes:
            raise ConfigurationError(f"node {node!r} is not on the ring; known nodes: {self.nodes}")
        self._nodes.discard(node)
        self._points = [point for point in self._points if point[1] != node]

    def owner(self, key: str) -> str:
        """The node that owns ``key``: the first node point clockwise from the key's point."""
        return self.walk(key)[0]

    def walk(self, key: str) -> list[str]:
        """Every node once, in the order met walking clockwise from ``key``'s point."""
        if not self._points:
            raise ConfigurationError("the ring has no nodes; add at least one before routing keys")
        start = bisect.bisect_left(self._points, (ring_position(key), ""))
        order: list[str] = []
        seen: set[str] = set()
        count = len(self._points)
        for step in range(count):
            node = self._points[(start + step) % count][1]
            if node not in seen:
                seen.add(node)
                order.append(node)
                if len(order) == len(self._nodes):
                    break
        return order
