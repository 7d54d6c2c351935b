"""LoopConnection: a Redis connection the event loop drives without blocking, against a real
redis-server (started by the suite), under asyncio and trio; and RedisStore.view_async over it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import redis
from _support import wait_until

from cachesaver.store.protocol import Append, RecordId, RecordWrite
from cachesaver.store.redis import RedisStore
from cachesaver.store.redis_loop import LoopConnection

BACKENDS = ["asyncio", "trio"]


def _pack(*commands: tuple[Any, ...]) -> bytes:
    import hiredis

    return b"".join(hiredis.pack_command(command) for command in commands)


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exchange_sends_commands_and_reads_their_replies_error_replies_as_values(redis_server, backend: str) -> None:
    client = _client(redis_server.url)
    client.set("k", b"v" * 200_000)  # a reply larger than one read
    loop = LoopConnection.open(client.connection_pool)
    assert loop is not None

    async def main() -> tuple[Any, Any]:
        first = await loop.exchange(_pack(("PING",), ("GET", "k"), ("EVALSHA", "0" * 40, 0)), 3)
        again = await loop.exchange(_pack(("GET", "missing"),), 1)  # still in step after an error
        return first, again

    first, again = anyio.run(main, backend=backend)
    assert first[0] == b"PONG" and first[1] == b"v" * 200_000
    assert type(first[2]).__name__ == "ReplyError" and "NOSCRIPT" in str(first[2])
    assert again == [None] and not loop.closed
    loop.close()
    client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_exchange_while_one_runs_returns_none_at_once_and_sends_nothing(redis_server, backend: str) -> None:
    client = _client(redis_server.url)
    loop = LoopConnection.open(client.connection_pool)
    assert loop is not None
    slow = "local t = redis.call('TIME'); while true do local n = redis.call('TIME'); if (n[1] - t[1]) * 1e6 + n[2] - t[2] > 200000 then break end end return 1"

    async def main() -> tuple[Any, Any]:
        out: dict[str, Any] = {}

        async def first() -> None:
            out["first"] = await loop.exchange(_pack(("EVAL", slow, 0), ("PING",)), 2)

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            await wait_until(lambda: loop._busy.locked())
            out["second"] = await loop.exchange(_pack(("PING",),), 1)
        return out["first"], out["second"]

    first, second = anyio.run(main, backend=backend)
    assert first == [1, b"PONG"] and second is None
    loop.close()
    client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_exchange_closes_the_connection_so_no_reply_is_read_out_of_step(redis_server, backend: str) -> None:
    client = _client(redis_server.url)
    loop = LoopConnection.open(client.connection_pool)
    assert loop is not None
    slow = "local t = redis.call('TIME'); while true do local n = redis.call('TIME'); if (n[1] - t[1]) * 1e6 + n[2] - t[2] > 300000 then break end end return 1"

    async def main() -> tuple[bool, Any]:
        cancelled = False
        with anyio.move_on_after(0.05) as scope:
            await loop.exchange(_pack(("EVAL", slow, 0),), 1)
        cancelled = scope.cancelled_caught
        return cancelled, await loop.exchange(_pack(("PING",),), 1)

    cancelled, after = anyio.run(main, backend=backend)
    assert cancelled and loop.closed and after is None
    client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_connection_the_server_dropped_returns_none_and_is_closed(redis_server, backend: str) -> None:
    client = _client(redis_server.url)
    loop = LoopConnection.open(client.connection_pool)
    assert loop is not None
    client.client_kill_filter(skipme=True)  # every other client: the loop connection too

    async def main() -> Any:
        return await loop.exchange(_pack(("PING",),), 1)

    assert anyio.run(main, backend=backend) is None and loop.closed
    client.close()


# == RedisStore.view_async ========================================================================


@pytest.mark.parametrize("backend", BACKENDS)
def test_view_async_gives_the_views_view_gives_once_a_view_opened_its_connection(redis_server, backend: str) -> None:
    store = RedisStore(redis_server.url)
    tag = RecordId("ns", "r", 1, 0).tag
    store.commit([Append("k", [("s0", None), ("s1", None)])], [RecordWrite("k", RecordId("ns", "r", 1, 0), (1,))])

    async def main() -> tuple[Any, Any]:
        before = await store.view_async(["k"], [("k", tag)])
        await anyio.to_thread.run_sync(store.view, ["warm"])  # on a thread: opens the connection
        return before, await store.view_async(["k", "nothing"], [("k", tag)])

    before, views = anyio.run(main, backend=backend)
    assert before is None  # not opened yet: nothing changed, the caller uses view on a thread
    assert views == store.view(["k", "nothing"], [("k", tag)]) and views["k"].found == {tag: (1,)}
    assert store.loop_views == 1
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_view_async_returns_none_for_a_server_without_the_script_and_view_reloads_it(redis_server, backend: str) -> None:
    store = RedisStore(redis_server.url)
    store.commit([Append("k", [("s0", None)])])
    store.view(["k"])  # opens the loop connection
    with redis.Redis.from_url(redis_server.url) as operator:
        operator.script_flush()  # as a restart does

    async def main() -> Any:
        return await store.view_async(["k"])

    assert anyio.run(main, backend=backend) is None
    assert store.view(["k"])["k"].samples == {0: ("s0", None)}  # the thread's view loads it again
    assert anyio.run(main, backend=backend)["k"].samples == {0: ("s0", None)}
    store.close()


def test_a_store_on_a_dropped_loop_connection_reopens_it_with_its_next_view(redis_server) -> None:
    store = RedisStore(redis_server.url)
    store.commit([Append("k", [("s0", None)])])
    store.view(["k"])
    first = store._loop
    assert first is not None
    first.close()  # as a failed exchange does

    async def main() -> Any:
        return await store.view_async(["k"])

    assert anyio.run(main) is None and store._loop is None
    store.view(["k"])  # on a thread, as the cache stage does next
    assert store._loop is not None and store._loop is not first
    assert anyio.run(main)["k"].samples == {0: ("s0", None)}
    store.close()


def test_closing_the_store_closes_its_loop_connection(redis_server) -> None:
    store = RedisStore(redis_server.url)
    store.view(["k"])
    loop = store._loop
    assert loop is not None and not loop.closed
    store.close()
    assert loop.closed


def test_the_loop_connection_is_the_stores_own_never_lent_to_the_pool(redis_server) -> None:
    client = _client(redis_server.url)
    store = RedisStore(client)
    store.view(["k"])
    pool = client.connection_pool
    assert store._loop is not None and store._loop._connection not in pool._available_connections
    store.close()
    assert store._loop.closed and client.ping()  # a client you passed stays open
    client.close()
