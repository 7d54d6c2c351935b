"""LoopConnection: a Redis connection the event loop drives without blocking, against a real
redis-server (started by the suite), under asyncio and trio; and RedisStore.view_async over it."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
import redis
from _support import wait_until

from cachesaver.store.protocol import Append, RecordId, RecordWrite
from cachesaver.store.redis import VIEW_KEYS_PER_SCRIPT, RedisStore
from cachesaver.store.redis_loop import LoopConnection

BACKENDS = ["asyncio", "trio"]


def _pack(*commands: tuple[Any, ...]) -> bytes:
    import hiredis

    return b"".join(hiredis.pack_command(command) for command in commands)


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


@pytest.fixture
def loop(redis_server) -> Any:
    """A LoopConnection to the test's server (closed at the end) and the client it was made of."""
    client = _client(redis_server.url)
    opened = LoopConnection.open(client.connection_pool)
    assert opened is not None
    yield opened
    opened.close()
    client.close()


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
def test_on_reply_sees_each_reply_in_order_while_later_commands_still_run(redis_server, loop: LoopConnection, backend: str) -> None:
    seen: list[tuple[int, Any]] = []
    pusher = _client(redis_server.url)
    pusher.delete("q")

    def on_reply(number: int, reply: Any) -> None:
        seen.append((number, reply))
        if number == 0:  # the server is blocked in the BLPOP after it: only this push ends it
            pusher.rpush("q", "go")

    async def main() -> Any:
        return await loop.exchange(_pack(("PING",), ("BLPOP", "q", 5), ("ECHO", "last")), 3, on_reply)

    replies = anyio.run(main, backend=backend)
    # Had the first reply been handed over only with the others, the BLPOP would have timed
    # out (a nil reply) instead of popping what on_reply pushed.
    assert replies == [b"PONG", [b"q", b"go"], b"last"] and seen == list(enumerate(replies))
    assert not loop.closed
    pusher.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_on_reply_that_raises_ends_the_exchange_and_closes_the_connection(loop: LoopConnection, backend: str) -> None:
    def refuse(number: int, reply: Any) -> None:
        raise ValueError(f"reply {number} refused")

    async def main() -> Any:
        return await loop.exchange(_pack(("PING",), ("PING",)), 2, refuse)

    with pytest.raises(ValueError, match="reply 0 refused"):
        anyio.run(main, backend=backend)
    assert loop.closed  # the second reply was never read: never reused out of step


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_exchange_while_one_runs_returns_none_at_once_and_sends_nothing(loop: LoopConnection, backend: str) -> None:
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_exchange_closes_the_connection_so_no_reply_is_read_out_of_step(loop: LoopConnection, backend: str) -> None:
    slow = "local t = redis.call('TIME'); while true do local n = redis.call('TIME'); if (n[1] - t[1]) * 1e6 + n[2] - t[2] > 300000 then break end end return 1"

    async def main() -> tuple[bool, Any]:
        cancelled = False
        with anyio.move_on_after(0.05) as scope:
            await loop.exchange(_pack(("EVAL", slow, 0),), 1)
        cancelled = scope.cancelled_caught
        return cancelled, await loop.exchange(_pack(("PING",),), 1)

    cancelled, after = anyio.run(main, backend=backend)
    assert cancelled and loop.closed and after is None


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
def test_view_async_gives_the_views_view_gives_from_the_connection_opening_the_store_opened(redis_server, backend: str) -> None:
    store = RedisStore(redis_server.url)
    store._loop_opener.join()  # opening the store started opening it, on a thread of its own
    tag = RecordId("ns", "r", 1, 0).tag
    store.commit([Append("k", [("s0", None), ("s1", None)])], [RecordWrite("k", RecordId("ns", "r", 1, 0), (1,))])

    async def main() -> Any:
        return await store.view_async(["k", "nothing"], [("k", tag)])

    views = anyio.run(main, backend=backend)  # no view ran on a thread before it
    assert views == store.view(["k", "nothing"], [("k", tag)]) and views["k"].found == {tag: (1,)}
    assert store.loop_views == 1
    store.close()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="os.fork is POSIX only")
def test_a_process_forked_while_the_store_opens_its_loop_connection_views_and_opens_its_own(redis_server) -> None:
    """The opener may hold its lock at the fork, or have opened the connection before it; the
    child neither waits for the lock forever nor uses the parent's connection."""
    import os
    import signal
    import warnings

    seed = RedisStore(redis_server.url)
    seed.commit([Append("k", [("s0", None)])])
    seed.close()
    for attempt in range(6):  # forked at once (the opener most likely mid-connect), or once it is open
        store = RedisStore(redis_server.url)
        if attempt % 2:
            store._loop_opener.join()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork of a threaded process
            pid = os.fork()
        if pid == 0:  # the child: a hang is ended by the alarm, a failure by the exit status
            code = 1
            try:
                signal.alarm(10)
                views = [store.view(["k"])["k"].samples for _ in range(2)]
                store._open_loop()
                own = store._loop is not None and store._loop._pid == os.getpid()
                code = 0 if views == [{0: ("s0", None)}] * 2 and own else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        store.close()


def test_closing_a_store_at_once_joins_the_opening_of_its_loop_connection_and_leaves_nothing_open(redis_server) -> None:
    store = RedisStore(redis_server.url)
    opener = store._loop_opener
    store.close()  # very likely while that connection is being opened
    assert opener is not None and not opener.is_alive()
    assert store._loop is None or store._loop.closed

    async def main() -> Any:
        return await store.view_async(["k"])

    assert anyio.run(main) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_view_async_over_several_scripts_gives_every_keys_view_and_none_if_one_script_fails(redis_server, backend: str) -> None:
    store = RedisStore(redis_server.url)
    keys = [f"k{i}" for i in range(2 * VIEW_KEYS_PER_SCRIPT + 5)]  # three view scripts
    store.commit([Append(key, [(f"{key}-0", None)]) for key in keys],
                 [RecordWrite(key, RecordId("ns", key, 1, 0), (0,)) for key in keys])
    tags = [(key, RecordId("ns", key, 1, 0).tag) for key in keys]
    store.view(["warm"])
    store._loop_opener.join()  # the loop connection is open

    async def main() -> Any:
        return await store.view_async(keys, tags)

    views = anyio.run(main, backend=backend)
    assert views == store.view(keys, tags) and list(views) == keys
    assert all(views[key].found == {RecordId("ns", key, 1, 0).tag: (0,)} for key in keys)
    with redis.Redis.from_url(redis_server.url) as operator:  # the last script's keys hold alien values
        operator.delete(*store.entry_keys(keys[-1]))
        operator.set(store.entry_keys(keys[-1])[1], b"alien")
    views = anyio.run(main, backend=backend)
    assert views is not None and "did not write" in str(views[keys[-1]]) and views[keys[0]].count == 1
    with redis.Redis.from_url(redis_server.url) as operator:
        operator.script_flush()  # every script now fails: the view falls back, nothing half-given
    assert anyio.run(main, backend=backend) is None
    store.close()


class _LastScriptFails(RedisStore):
    """A store whose view script over the key ``last`` gets an error reply from the server."""

    def _view_command(self, keys: Any, asked: Any, *, declared: bool) -> tuple[Any, ...]:
        if "last" in keys:
            return ("EVAL", "return redis.error_reply('ERR refused')", 0)
        return super()._view_command(keys, asked, declared=declared)


@pytest.mark.parametrize("backend", BACKENDS)
def test_view_async_gives_no_views_at_all_when_only_its_last_script_fails(redis_server, backend: str) -> None:
    store = _LastScriptFails(redis_server.url)
    keys = [f"k{i}" for i in range(2 * VIEW_KEYS_PER_SCRIPT)] + ["last"]
    store.commit([Append(key, [(f"{key}-0", None)]) for key in keys])
    store.view(["warm"])
    store._loop_opener.join()  # the loop connection is open

    async def main() -> Any:
        first = await store.view_async(keys)
        return first, await store.view_async(keys[:3])

    first, after = anyio.run(main, backend=backend)
    assert first is None  # the first scripts' views, decoded already, are not given half a view
    assert after == store.view(keys[:3]) and after["k1"].samples == {0: ("k1-0", None)}  # still in step
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_view_async_returns_none_for_a_server_without_the_script_and_view_reloads_it(redis_server, backend: str) -> None:
    store = RedisStore(redis_server.url)
    store.commit([Append("k", [("s0", None)])])
    store.view(["k"])
    store._loop_opener.join()  # the loop connection is open
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
    store._loop_opener.join()  # opening the store opened it
    first = store._loop
    assert first is not None
    first.close()  # as a failed exchange does

    async def main() -> Any:
        return await store.view_async(["k"])

    assert anyio.run(main) is None and store._loop is first
    store.view(["k"])  # on a thread, as the cache stage does next
    assert store._loop is not None and store._loop is not first
    assert anyio.run(main)["k"].samples == {0: ("s0", None)}
    store.close()


def test_closing_the_store_closes_its_loop_connection(redis_server) -> None:
    store = RedisStore(redis_server.url)
    store._loop_opener.join()  # opening the store opened it
    loop = store._loop
    assert loop is not None and not loop.closed
    store.close()
    assert loop.closed


def test_the_loop_connection_is_the_stores_own_never_lent_to_the_pool(redis_server) -> None:
    client = _client(redis_server.url)
    store = RedisStore(client)
    store._loop_opener.join()  # opening the store opened it
    pool = client.connection_pool
    assert store._loop is not None and store._loop._connection not in pool._available_connections
    store.close()
    assert store._loop.closed and client.ping()  # a client you passed stays open
    client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_replies_than_asked_for_close_the_connection_rather_than_shift_the_next(loop: LoopConnection, backend: str) -> None:

    async def main() -> tuple[Any, Any]:
        return await loop.exchange(_pack(("PING",), ("ECHO", "stray")), 1), await loop.exchange(_pack(("PING",),), 1)

    assert anyio.run(main, backend=backend) == (None, None) and loop.closed


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_reply_within_the_clients_socket_timeout_closes_the_connection(redis_server, backend: str) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.05)
    loop = LoopConnection.open(client.connection_pool)
    assert loop is not None
    slow = "local t = redis.call('TIME'); while true do local n = redis.call('TIME'); if (n[1] - t[1]) * 1e6 + n[2] - t[2] > 300000 then break end end return 1"

    async def main() -> Any:
        return await loop.exchange(_pack(("EVAL", slow, 0),), 1)

    assert anyio.run(main, backend=backend) is None and loop.closed
    client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_closing_during_an_exchange_ends_it_without_closing_the_socket_under_the_loop(loop: LoopConnection, backend: str) -> None:
    slow = "local t = redis.call('TIME'); while true do local n = redis.call('TIME'); if (n[1] - t[1]) * 1e6 + n[2] - t[2] > 100000 then break end end return 1"

    async def main() -> tuple[Any, bool]:
        out: dict[str, Any] = {}

        async def run() -> None:
            out["reply"] = await loop.exchange(_pack(("EVAL", slow, 0),), 1)

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await wait_until(lambda: loop._busy.locked())
            loop.close()  # as a store closed from another thread would
            out["socket open while it ran"] = loop._sock.fileno() != -1
        return out["reply"], out["socket open while it ran"]

    reply, socket_open = anyio.run(main, backend=backend)
    assert reply is None and socket_open and loop.closed and loop._sock.fileno() == -1


def test_the_loop_connection_is_not_counted_in_the_clients_pool_nor_limited_by_it(redis_server) -> None:
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(redis_server.url, max_connections=1))
    client.ping()  # the pool's one connection
    for _ in range(3):  # each reopen, as after a dropped connection
        loop = LoopConnection.open(client.connection_pool)
        assert loop is not None
        loop.close()
    assert client.ping() and client.connection_pool._created_connections == 1
    client.close()


def test_it_speaks_resp2_whatever_the_clients_protocol_so_nothing_is_pushed(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url, protocol=3)
    loop = LoopConnection.open(client.connection_pool)
    assert loop is not None

    async def main() -> Any:
        return await loop.exchange(_pack(("CLIENT", "INFO"),), 1)

    (reply,) = anyio.run(main)
    assert b" resp=2" in reply and client.connection_pool.get_connection().protocol in (3, "3")
    loop.close()
    client.close()


def test_a_forked_process_never_uses_its_parents_connection(loop: LoopConnection) -> None:
    loop._pid = -1  # as in a child forked after the connection was opened

    async def main() -> Any:
        return await loop.exchange(_pack(("PING",),), 1)

    assert anyio.run(main) is None and loop.closed
    assert loop._sock.fileno() != -1  # the parent's socket is left alone
    loop._pid = __import__("os").getpid()


def test_a_failure_to_open_the_loop_connection_is_warned_once_and_retried_later(
    redis_server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def refuse(pool: Any) -> Any:
        calls.append(1)
        raise redis.ConnectionError("refused")

    monkeypatch.setattr(LoopConnection, "open", staticmethod(refuse))
    store = RedisStore(redis_server.url)
    store._loop_opener.join()  # opening the store tried once
    with caplog.at_level("WARNING", logger="cachesaver.store.redis"):
        assert store.view(["k"])["k"].count == 0 and store.view(["k"])["k"].count == 0  # views still work
    assert calls == [1] and store._loop is None  # not tried again before LOOP_RETRY_S
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "event-loop connection" in caplog.records[0].getMessage()
    store.close()


_SLOW = ("BLPOP", "cachesaver-test:never-pushed", "0.005")
"""A command the server answers no sooner than 5 ms later (nil, at its next tick after the
time-out), so the exchange waits for its reply: a PING may be answered before the client
reads, and then nothing is watched."""


class _CountingLoop(asyncio.SelectorEventLoop):
    """A real selector event loop that counts how often a reader is registered and removed."""

    def __init__(self) -> None:
        super().__init__()
        self.added = 0
        self.removed = 0

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
        self.added += 1
        super().add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self.removed += 1
        return super().remove_reader(fd)


def test_an_asyncio_loop_watches_the_socket_once_for_many_exchanges_and_stops_before_it_closes(loop: LoopConnection) -> None:
    event_loop = _CountingLoop()

    async def main() -> list[Any]:
        replies = [await loop.exchange(_pack(_SLOW), 1) for _ in range(20)]
        counts = (event_loop.added, event_loop.removed)
        number = loop._sock.fileno()
        loop.close()  # on the watching loop's own thread: at once
        return [replies, counts, event_loop.removed, event_loop.remove_reader(number)]

    try:
        replies, counts, removed, still_watched = event_loop.run_until_complete(main())
    finally:
        event_loop.close()
    assert replies == [[None]] * 20
    assert counts == (1, 0)  # one registration for all 20 waits, kept between them
    assert removed == 1 and not still_watched and loop._sock.fileno() == -1  # unwatched, then closed


def test_a_close_from_another_thread_leaves_the_socket_to_the_watching_loop_and_its_number_to_the_next(redis_server) -> None:
    client = _client(redis_server.url)
    first = LoopConnection.open(client.connection_pool)
    assert first is not None
    number = first._sock.fileno()

    async def main() -> list[Any]:
        assert await first.exchange(_pack(_SLOW), 1) == [None]
        assert first._watched is not None  # watched from that wait on
        await asyncio.to_thread(first.close)  # as a store closed on a worker thread
        await wait_until(lambda: first._sock.fileno() == -1)  # closed by the loop, unwatched first
        assert not asyncio.get_running_loop().remove_reader(number)  # no watch left on that number
        second = await asyncio.to_thread(LoopConnection.open, client.connection_pool)
        assert second is not None
        # The same socket number again: a loop still watching the old socket would refuse it.
        replies = [second._sock.fileno() == number] + [await second.exchange(_pack(("PING",)), 1) for _ in range(5)]
        second.close()
        return replies

    replies = asyncio.run(main())
    assert replies == [True] + [[b"PONG"]] * 5
    client.close()


def test_a_connection_the_server_drops_between_exchanges_is_no_longer_watched_and_its_next_exchange_ends(redis_server, loop: LoopConnection) -> None:
    killer = _client(redis_server.url)

    async def main() -> tuple[bool, Any, bool]:
        assert await loop.exchange(_pack(_SLOW), 1) == [None]
        (ident,) = await loop.exchange(_pack(("CLIENT", "ID")), 1)
        assert loop._watched is not None  # watched since the first wait
        watching = asyncio.get_running_loop()
        killer.client_kill_filter(_id=ident)
        await wait_until(lambda: loop._watched is None)  # readable with no read waiting
        still_registered = watching.remove_reader(loop._sock.fileno())  # False: nothing to remove
        return still_registered, await loop.exchange(_pack(("PING",)), 1), loop.closed

    still_registered, reply, closed = asyncio.run(main())
    assert not still_registered and reply is None and closed
    killer.close()
