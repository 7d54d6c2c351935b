"""A simulated serving cluster that keeps chats' KV caches in VRAM and system RAM.

:mod:`~cachesaver.kvcache.server` holds one two-tier server, :mod:`~cachesaver.kvcache.ring`
the consistent-hash ring, :mod:`~cachesaver.kvcache.cluster` the router with session affinity
and failover. :class:`~cachesaver.models.simulated.SimulatedLLM` sends every request through a
:class:`Cluster`.
"""

from .cluster import Cluster, ClusterStats, Routing
from .ring import HashRing, ring_position
from .server import ChatData, ChatResponse, Server, ServerStats, Tier

__all__ = [
    "ChatData",
    "ChatResponse",
    "Cluster",
    "ClusterStats",
    "HashRing",
    "Routing",
    "Server",
    "ServerStats",
    "Tier",
    "ring_position",
]
