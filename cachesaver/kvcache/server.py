"""One inference server that keeps chats' KV caches in two tiers: GPU memory (VRAM) and system RAM.

Only the metadata of a chat's KV cache is modelled (its id and when it was last used), never
the cache itself. The rules, all observable through the public attributes:

* A chat is in at most one tier. A request for a chat found in either tier is a *hit* (and
  updates the chat's ``last_timestamp``); otherwise it is a *miss* and the new chat goes into VRAM.
* A hit in RAM *promotes* the chat back to VRAM.
* Room is made in LRU order: when VRAM is full its least recently used chat (smallest
  ``last_timestamp``; on a tie, the chat that entered VRAM first) is *demoted* to RAM; when RAM is
  full its least recently used chat is *dropped*. A promotion takes the chat out of RAM before
  making room, so a swap never drops a chat.
* An offline server answers ``ChatResponse(success=False)`` and changes nothing.

The worked example: two chats fit in each tier; chats c1..c4 arrive, then c1 again.

>>> server = Server(max_vram_chats=2, max_ram_chats=2)
>>> for timestamp, chat_id in enumerate(["c1", "c2", "c3", "c4", "c1"], start=1):
...     _ = server.handle_request(chat_id, timestamp, "hi")
>>> list(server.vram_chats), list(server.ram_chats)
(['c4', 'c1'], ['c2', 'c3'])
>>> server.num_cache_hits, server.num_cache_misses
(1, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ..errors import ConfigurationError, InvalidRequestError

__all__ = ["ChatData", "ChatResponse", "Server", "ServerStats", "Tier"]

Tier = Literal["vram", "ram"]

_TOO_SMALL = "system requires at least 2 to function"


@dataclass(frozen=True)
class ChatData:
    """What a server holds for one chat: its id and the timestamp of its latest request."""

    chat_id: str
    last_timestamp: int


@dataclass(frozen=True)
class ChatResponse:
    """A server's answer: ``success`` is False when the request could not be served."""

    success: bool
    llm_reply: str = ""


@dataclass(frozen=True)
class ServerStats:
    """A snapshot of a server's counters and occupancy; later requests do not change it."""

    is_online: bool
    num_cache_hits: int
    num_cache_misses: int
    num_promotions: int
    num_demotions: int
    num_drops: int
    vram_chats: int
    ram_chats: int
    max_vram_chats: int
    max_ram_chats: int


class Server:
    """A server with some system RAM and some GPU RAM (VRAM).

    Attributes:
        vram_chats: dict mapping chat_id to ChatData for chats in VRAM, in the order they
            entered VRAM.
        ram_chats: dict mapping chat_id to ChatData for chats in system RAM, in the order they
            entered RAM.
        max_vram_chats: maximum number of entries in vram_chats.
        max_ram_chats: maximum number of entries in ram_chats.
        num_cache_hits: requests whose chat was in VRAM or RAM.
        num_cache_misses: requests whose chat was in neither.
        num_promotions: chats moved from RAM to VRAM by a hit.
        num_demotions: chats moved from VRAM to RAM to make room.
        num_drops: chats evicted from RAM, and so from the server, to make room.
        is_online: False after ``shutdown``; an offline server fails every request.

    Raises:
        ValueError (a :class:`~cachesaver.errors.ConfigurationError`): either capacity is below 2.
    """

    vram_chats: dict[str, ChatData]
    ram_chats: dict[str, ChatData]
    max_vram_chats: int
    max_ram_chats: int
    num_cache_hits: int
    num_cache_misses: int
    is_online: bool

    def __init__(self, max_vram_chats: int, max_ram_chats: int) -> None:
        for name, capacity in (("max_vram_chats", max_vram_chats), ("max_ram_chats", max_ram_chats)):
            if isinstance(capacity, bool) or not isinstance(capacity, int):
                raise ConfigurationError(f"{name} must be an int, got {type(capacity).__name__}")
            if capacity < 2:
                raise ConfigurationError(_TOO_SMALL)
        self.max_vram_chats = max_vram_chats
        self.max_ram_chats = max_ram_chats
        self.num_cache_hits = 0
        self.num_cache_misses = 0
        self.num_promotions = 0
        self.num_demotions = 0
        self.num_drops = 0
        self.is_online = True
        self.vram_chats = {}
        self.ram_chats = {}

    def __repr__(self) -> str:
        state = "online" if self.is_online else "offline"
        return (
            f"Server({state}, vram {len(self.vram_chats)}/{self.max_vram_chats}, "
            f"ram {len(self.ram_chats)}/{self.max_ram_chats})"
        )

    @property
    def total_chats(self) -> int:
        """The number of chats in VRAM and RAM together."""
        return len(self.vram_chats) + len(self.ram_chats)

    def has_chat(self, chat_id: str) -> bool:
        """True if the chat is in VRAM or RAM (never both)."""
        return chat_id in self.vram_chats or chat_id in self.ram_chats

    def locate(self, chat_id: str) -> Optional[Tier]:
        """The tier holding the chat (``"vram"`` or ``"ram"``), or None; changes nothing."""
        if chat_id in self.vram_chats:
            return "vram"
        if chat_id in self.ram_chats:
            return "ram"
        return None

    def remove_chat(self, chat_id: str) -> Optional[ChatData]:
        """Remove the chat from whichever tier holds it; return its data, or None if absent."""
        data = self.vram_chats.pop(chat_id, None)
        if data is None:
            data = self.ram_chats.pop(chat_id, None)
        return data

    def shutdown(self) -> None:
        """Go offline and clear both tiers; the counters are kept.

        Raises:
            RuntimeError: the server is already offline.
        """
        if not self.is_online:
            raise RuntimeError("server is already offline; there is nothing to shut down")
        self.is_online = False
        self.vram_chats.clear()
        self.ram_chats.clear()

    def handle_request(self, chat_id: str, timestamp: int, message: str) -> ChatResponse:
        """Serve one message of a chat and account for where its KV cache was found.

        Returns ``ChatResponse(success=False)`` without changing anything when offline.
        Otherwise counts a hit or a miss, stores the chat in VRAM with ``timestamp`` as its
        latest use (promoting or inserting it, demoting and dropping others as the module
        docstring describes) and returns ``ChatResponse(success=True, llm_reply=...)``.
        ``timestamp`` is expected never to decrease from one request to the next.

        Raises:
            InvalidRequestError: ``chat_id`` or ``message`` is not a string, or ``timestamp``
                is not a number; nothing is counted or stored then.
        """
        check_chat_message(chat_id, timestamp, message)
        if not self.is_online:
            return ChatResponse(success=False)
        data = ChatData(chat_id, timestamp)
        if chat_id in self.vram_chats:
            self.num_cache_hits += 1
            self.vram_chats[chat_id] = data  # keeps its place in VRAM's entry order
        elif chat_id in self.ram_chats:
            self.num_cache_hits += 1
            del self.ram_chats[chat_id]  # leave RAM first: a swap needs no drop
            self._make_room_in_vram()
            self.vram_chats[chat_id] = data
            self.num_promotions += 1
        else:
            self.num_cache_misses += 1
            self._make_room_in_vram()
            self.vram_chats[chat_id] = data
        return ChatResponse(success=True, llm_reply=f"chat {chat_id}: received {len(message)} characters")

    def stats(self) -> ServerStats:
        """A snapshot of the counters and the current occupancy of both tiers."""
        return ServerStats(
            is_online=self.is_online,
            num_cache_hits=self.num_cache_hits,
            num_cache_misses=self.num_cache_misses,
            num_promotions=self.num_promotions,
            num_demotions=self.num_demotions,
            num_drops=self.num_drops,
            vram_chats=len(self.vram_chats),
            ram_chats=len(self.ram_chats),
            max_vram_chats=self.max_vram_chats,
            max_ram_chats=self.max_ram_chats,
        )

    def _make_room_in_vram(self) -> None:
        if len(self.vram_chats) < self.max_vram_chats:
            return
        victim = _least_recently_used(self.vram_chats)
        if len(self.ram_chats) >= self.max_ram_chats:
            del self.ram_chats[_least_recently_used(self.ram_chats)]
            self.num_drops += 1
        self.ram_chats[victim] = self.vram_chats.pop(victim)
        self.num_demotions += 1


def check_chat_message(chat_id: object, timestamp: object, message: object) -> None:
    """Raise InvalidRequestError unless ``chat_id`` and ``message`` are strings and
    ``timestamp`` is a number."""
    if type(chat_id) is not str:
        raise InvalidRequestError(f"chat_id must be a str, got {type(chat_id).__name__}")
    if type(message) is not str:
        raise InvalidRequestError(f"message must be a str, got {type(message).__name__}")
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
        raise InvalidRequestError(f"timestamp must be a number, got {type(timestamp).__name__}")


def _least_recently_used(tier: dict[str, ChatData]) -> str:
    # min() keeps the first of equal keys, and dicts iterate in entry order: ties go to the
    # chat that entered the tier first.
    return min(tier.values(), key=lambda chat: chat.last_timestamp).chat_id
