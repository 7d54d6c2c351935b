"""A router in front of several KV-cache servers: session affinity, consistent hashing, failover.

Routing rules for a request of chat ``chat_id``:

1. If the chat was served before, it goes back to the server that served it last (*affinity*),
   where its KV cache may still be.
2. A chat with no affinity goes to its owner on a :class:`~cachesaver.kvcache.ring.HashRing`
   of the server names.
3. If the chosen server is offline, the request *fails over* to the next online server
   clockwise from the chat's ring position (a miss there, unless that server already holds the
   chat) and the affinity moves to it.
4. If no server is online (or there are none), the cluster answers
   ``ChatResponse(success=False)`` and counts a failed request.

>>> cluster = Cluster.uniform(["gpu-0", "gpu-1"], max_vram_chats=2, max_ram_chats=4)
>>> first = cluster.route("chat-1", 1, "hello")
>>> second = cluster.route("chat-1", 2, "and again")
>>> (first.found_in, second.found_in, second.server == first.server)
(None, 'vram', True)
>>> cluster.stats().hit_rate
0.5
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigurationError
from .ring import HashRing
from .server import ChatResponse, Server, ServerStats, Tier, check_chat_message

__all__ = ["Cluster", "ClusterStats", "Routing"]


@dataclass(frozen=True)
class Routing:
    """Where a request went and what happened there.

    ``server`` is None only when the request failed because no server was online;
    ``found_in`` is the tier that held the chat's KV cache (None for a miss or a failure);
    ``failover`` is True when the preferred server was offline and another one served it.
    """

    response: ChatResponse
    server: Optional[str]
    found_in: Optional[Tier]
    failover: bool

    @property
    def hit(self) -> bool:
        """True when the chat's KV cache was found on the server that served the request."""
        return self.found_in is not None


@dataclass(frozen=True)
class ClusterStats:
    """A snapshot of the cluster's counters and of every server's stats, keyed by name."""

    requests: int
    hits: int
    misses: int
    vram_hits: int
    ram_hits: int
    failovers: int
    failed_requests: int
    servers: dict[str, ServerStats] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        """Hits over served requests (0.0 before any request was served)."""
        served = self.hits + self.misses
        return self.hits / served if served else 0.0

    @property
    def occupancy(self) -> dict[str, dict[str, int]]:
        """Chats held per server and tier: ``{name: {"vram": k, "ram": m}}``."""
        return {name: {"vram": s.vram_chats, "ram": s.ram_chats} for name, s in self.servers.items()}


class Cluster:
    """Named :class:`~cachesaver.kvcache.server.Server` objects behind one router.

    The cluster's own counters (hits, misses, failovers, failed requests) survive
    ``remove_server``; per-server counters live on each server.
    """

    def __init__(
        self,
        servers: Mapping[str, Server] | Iterable[tuple[str, Server]] = (),
        *,
        virtual_nodes: int = 64,
    ) -> None:
        self._servers: dict[str, Server] = {}
        self._ring = HashRing(virtual_nodes=virtual_nodes)
        self._affinity: dict[str, str] = {}
        self.requests = 0
        self.hits = 0
        self.misses = 0
        self.vram_hits = 0
        self.ram_hits = 0
        self.failovers = 0
        self.failed_requests = 0
        pairs = servers.items() if isinstance(servers, Mapping) else servers
        for name, server in pairs:
            self.add_server(name, server)

    @classmethod
    def uniform(
        cls, names: Iterable[str], max_vram_chats: int, max_ram_chats: int, *, virtual_nodes: int = 64
    ) -> "Cluster":
        """A cluster of identical servers, one per name."""
        return cls(
            [(name, Server(max_vram_chats, max_ram_chats)) for name in names],
            virtual_nodes=virtual_nodes,
        )

    def __repr__(self) -> str:
        return f"Cluster({self._servers!r})"

    @property
    def servers(self) -> dict[str, Server]:
        """The servers by name (a copy of the mapping; the servers themselves are live)."""
        return dict(self._servers)

    def add_server(self, name: str, server: Server) -> None:
        """Put ``server`` behind the router under ``name``; it takes over part of the ring."""
        if name in self._servers:
            raise ConfigurationError(f"a server named {name!r} is already in the cluster; pick another name")
        if not isinstance(server, Server):
            raise ConfigurationError(f"add_server needs a Server, got {type(server).__name__}")
        self._ring.add(name)
        self._servers[name] = server

    def remove_server(self, name: str) -> Server:
        """Take the server out of the cluster and forget every affinity that pointed to it."""
        if name not in self._servers:
            raise ConfigurationError(f"no server named {name!r}; the cluster has {sorted(self._servers)}")
        self._ring.remove(name)
        self._affinity = {chat: owner for chat, owner in self._affinity.items() if owner != name}
        return self._servers.pop(name)

    def server_for(self, chat_id: str) -> Optional[str]:
        """The server the chat is pinned to by affinity, or None if it has none."""
        return self._affinity.get(chat_id)

    def has_chat(self, chat_id: str) -> bool:
        """True if the server the chat is pinned to still holds its KV cache."""
        name = self._affinity.get(chat_id)
        return name is not None and self._servers[name].has_chat(chat_id)

    def handle_request(self, chat_id: str, timestamp: int, message: str) -> ChatResponse:
        """Serve one message through the router; see :meth:`route` for the details."""
        return self.route(chat_id, timestamp, message).response

    def route(self, chat_id: str, timestamp: int, message: str) -> Routing:
        """Serve one message and report which server handled it and where the chat was found.

        Raises InvalidRequestError, counting nothing, when ``chat_id`` or ``message`` is not a
        string or ``timestamp`` is not a number.
        """
        check_chat_message(chat_id, timestamp, message)
        self.requests += 1
        pinned = self._affinity.get(chat_id)
        candidates = [pinned] if pinned is not None else []
        if len(self._ring):
            candidates.extend(name for name in self._ring.walk(chat_id) if name != pinned)
        for position, name in enumerate(candidates):
            server = self._servers[name]
            if not server.is_online:
                continue
            found_in = server.locate(chat_id)
            response = server.handle_request(chat_id, timestamp, message)
            self._affinity[chat_id] = name
            if found_in is None:
                self.misses += 1
            else:
                self.hits += 1
                if found_in == "vram":
                    self.vram_hits += 1
                else:
                    self.ram_hits += 1
            failover = position > 0
            if failover:
                self.failovers += 1
            return Routing(response=response, server=name, found_in=found_in, failover=failover)
        self.failed_requests += 1
        return Routing(response=ChatResponse(success=False), server=None, found_in=None, failover=False)

    def stats(self) -> ClusterStats:
        """A snapshot of the router's counters and every server's stats and occupancy."""
        return ClusterStats(
            requests=self.requests,
            hits=self.hits,
            misses=self.misses,
            vram_hits=self.vram_hits,
            ram_hits=self.ram_hits,
            failovers=self.failovers,
            failed_requests=self.failed_requests,
            servers={name: server.stats() for name, server in self._servers.items()},
        )
