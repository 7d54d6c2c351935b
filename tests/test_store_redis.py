"""The Redis engine itself (cachesaver/store/redis.py): URLs and clients, the key layout and its
prefix, round trips, commits whose reply is lost, and the faults of a real redis-server (a
restart, a dropped connection, a full server, wrong credentials, an evicting policy, a server
that stops answering). The guarantees every engine shares are in tests/test_store_contract.py.

Every test starts its own redis-server (tests/redis_servers.py) or keeps to its own prefix on
the session's cluster."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.cluster
from redis.crc import key_slot

from cachesaver.errors import (
    ConfigurationError,
    CorruptStoreError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    UnstoredSamplesError,
)
from cachesaver.models import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.store import open_store
from cachesaver.store.protocol import Append, KeyView, RecordId, RecordWrite
from cachesaver.store.redis import READ_ALONG_SAMPLES, VIEW_KEYS_PER_SCRIPT, RedisStore, is_redis_url
from cachesaver.typedefs import Batch, Request


def samples(*names: str) -> tuple[tuple[Any, Any], ...]:
    return tuple((name, None) for name in names)


def ok(value: Any) -> Any:
    assert not isinstance(value, BaseException), value
    return value


def admin(url: str) -> redis.Redis:
    """A plain redis-py client of the test's own (what an operator would use)."""
    return redis.Redis.from_url(url.split("?")[0])


def fill(operator: redis.Redis) -> list[str]:
    """Make the server full, as an operator whose data grew would: a key of the operator's own
    (1 MB, made by a short SETRANGE so no large buffer is freed later), then ``maxmemory`` set
    512 kB below what the server uses (``noeviction``, so every write is refused). Deleting the
    returned keys frees the memory."""
    operator.setrange("filler", 1024 * 1024 - 1, b"x")
    used = int(operator.info("memory")["used_memory"])
    operator.config_set("maxmemory-policy", "noeviction")
    operator.config_set("maxmemory", used - 512 * 1024)
    return ["filler"]


def close_cluster(client: redis.cluster.RedisCluster) -> None:
    """Close a cluster client of the test's own and every node's sockets (RedisCluster.close
    leaves the pools of nodes it was given open until the garbage collector runs)."""
    for node in client.get_nodes():
        if node.redis_connection is not None:
            node.redis_connection.connection_pool.disconnect()
    client.close()


def with_query(url: str, **params: Any) -> str:
    return url + ("&" if "?" in url else "?") + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())


# == URLs, clients, opening ====================================================================


def test_open_store_takes_unix_and_tcp_urls_with_a_prefix(redis_server, redis_server_tcp) -> None:
    for server in (redis_server, redis_server_tcp):
        store, owned = open_store(with_query(server.url, prefix="team-a"))
        try:
            assert isinstance(store, RedisStore) and owned and store.prefix == "team-a" and not store.cluster
            assert store.commit([Append("k", samples("x"))]) == [0]
            assert store.location == RedisStore.describe(with_query(server.url, prefix="team-a"))
            assert store.location.endswith("prefix=team-a")
        finally:
            store.close()
    default, _ = open_store(redis_server.url)
    assert default.prefix == "cachesaver"
    default.close()


def _description() -> Any:
    """The driver description a store gives its connections (redis-py 7.2 and later)."""
    pytest.importorskip("redis.driver_info", reason="redis-py before 7.2 has no driver_info option")
    from cachesaver.store.redis import _driver_info

    return _driver_info()


async def test_a_store_names_cachesaver_to_redis_py_once_not_per_connection(
    redis_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection of a store opened from a URL (the store threads' and the event loop's)
    carries the one driver description naming cachesaver, which a server from Redis 7.2 lists
    in CLIENT LIST; none reads redis-py's installed metadata again (about 1 ms a connection)."""
    import cachesaver
    import redis.utils

    info = _description()
    assert info.formatted_name == f"redis-py(cachesaver_v{cachesaver.__version__})"
    assert info.lib_version == redis.__version__
    read: list[int] = []
    real = redis.utils.get_lib_version
    monkeypatch.setattr(redis.utils, "get_lib_version", lambda: read.append(1) or real())
    async with OnlineAPI(ScriptedModel(), with_query(redis_server.url, prefix="named"), batch_size=1) as pipeline:
        store = pipeline.cacher._broker.store
        store._loop_opener.join()
        await pipeline.request(Request("named", request_id="a"))  # a lookup and a commit
        assert store.loop_views == 1  # the event loop's connection was opened and used
        assert store.client.connection_pool.connection_kwargs["driver_info"] is info
        assert store._loop._connection.driver_info is info
    assert read == []


def test_every_node_connection_of_a_cluster_store_names_cachesaver(
    redis_cluster, redis_key_prefix, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis.utils

    info = _description()
    read: list[int] = []
    real = redis.utils.get_lib_version
    monkeypatch.setattr(redis.utils, "get_lib_version", lambda: read.append(1) or real())
    store, _ = open_store(with_query(redis_cluster.cluster_url, prefix=redis_key_prefix))
    try:
        assert store.commit([Append(redis_key_prefix + "k", samples("x"))]) == [0]
        nodes = store.client.get_nodes()
        assert len(nodes) >= 3
        assert all(n.redis_connection.connection_pool.connection_kwargs["driver_info"] is info for n in nodes)
    finally:
        store.close()
    assert read == []


def test_a_url_that_names_its_client_keeps_that_name(redis_server) -> None:
    """A name the user gave redis-py (deprecated there since 7.2, so it warns) is not replaced."""
    _description()
    with pytest.warns(DeprecationWarning, match="lib_name"):
        store, _ = open_store(with_query(redis_server.url, prefix="own-name", lib_name="team-notebook"))
    try:
        assert store.commit([Append("k", samples("x"))]) == [0]
        kwargs = store.client.connection_pool.connection_kwargs
        assert "driver_info" not in kwargs and kwargs["lib_name"] == "team-notebook"
    finally:
        store.close()


def test_a_version_redis_py_will_not_list_still_opens_the_store(redis_server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local build's version with a space names redis-py alone; the store opens and works."""
    import cachesaver
    from cachesaver.store.redis import _driver_info

    _description()
    monkeypatch.setattr(cachesaver, "__version__", "0.1 local build")
    _driver_info.cache_clear()
    try:
        store, _ = open_store(with_query(redis_server.url, prefix="odd-version"))
        try:
            assert store.commit([Append("k", samples("x"))]) == [0]
            assert store.client.connection_pool.connection_kwargs["driver_info"].formatted_name == "redis-py"
        finally:
            store.close()
    finally:
        _driver_info.cache_clear()


def test_the_cluster_url_form_opens_a_cluster_store(redis_cluster, redis_key_prefix) -> None:
    store, owned = open_store(with_query(redis_cluster.cluster_url, prefix=redis_key_prefix))
    try:
        assert store.cluster and owned
        assert store.location.startswith("redis+cluster://127.0.0.1:")
        assert isinstance(store.client, redis.cluster.RedisCluster)
    finally:
        store.close()


def test_a_location_never_shows_the_password() -> None:
    assert RedisStore.describe("redis://u:s3cret@h:1/2?prefix=p") == "redis://u@h:1/2?prefix=p"
    assert RedisStore.describe("redis://:s3cret@h") == "redis://h:6379/0"
    assert RedisStore.describe("rediss://h:7000/0?password=s3cret&ssl_cert_reqs=none") == "rediss://h:7000/0"
    assert RedisStore.describe("unix://u:s3cret@/run/r.sock?db=3&password=s3cret") == "unix://u@/run/r.sock?db=3"
    assert RedisStore.describe("redis+cluster://:s3cret@h:7000?prefix=x") == "redis+cluster://h:7000?prefix=x"


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://127.0.0.1:7000/1",
        "unix+cluster:///tmp/x.sock",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1/0?prefix=a{b}",
        "redis://127.0.0.1/0?prefix=",
        "redis://127.0.0.1/0?retry_s=soon",
        "redis://127.0.0.1/0?retry_s=-1",
        "redis://127.0.0.1/0?decode_responses=true",
        "redis://127.0.0.1/0?no_such_option=1",
    ],
)
def test_a_url_cachesaver_cannot_use_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore(url)  # refused before any connection is made


def test_without_redis_py_a_redis_url_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now raises ImportError
    monkeypatch.setitem(sys.modules, "redis.cluster", None)
    with pytest.raises(ConfigurationError, match=r"cachesaver\[redis\]"):
        open_store("redis://127.0.0.1:6379/0")
    assert is_redis_url("redis+cluster://h:1") and not is_redis_url("caches/redis")


def test_a_passed_client_is_used_with_a_prefix_and_never_closed(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store, owned = open_store(client)
    assert owned and store.prefix == "cachesaver" and store.location.startswith("unix://")
    assert store.commit([Append("k", samples("x"))]) == [0]
    store.close()
    assert client.ping() and client.llen(store.entry_keys("k")[0]) == 1  # the client still works
    other = RedisStore(client, prefix="other")
    assert ok(other.view(["k"])["k"]) == KeyView()
    other.close()
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisStore(redis.Redis.from_url(redis_server.url, decode_responses=True))
    client.close()


async def test_a_pipeline_on_a_passed_client_leaves_it_open(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    async with OnlineAPI(ScriptedModel(), client, batch_size=1) as pipeline:
        first = await pipeline.request(Request("hi", n=2, request_id="r"))
    async with OnlineAPI(ScriptedModel(), client, batch_size=1) as pipeline:
        again = await pipeline.request(Request("hi", n=2, request_id="r"))
    assert again.data == first.data and again.cached == [True, True]
    assert client.ping()
    client.close()


# == the key layout ============================================================================


async def test_every_key_starts_with_the_prefix_and_nothing_is_ever_deleted(redis_server) -> None:
    operator = admin(redis_server.url)
    operator.set("their:data", b"keep me")
    url = with_query(redis_server.url, prefix="mine")
    async with OnlineAPI(ScriptedModel(), url, batch_size=4, timeout=0.001) as pipeline:
        for round_ in range(3):
            await pipeline.batch_request(
                Batch([Request(f"p{i % 5}", n=2, request_id=f"id{i}", namespace=f"ns{round_}") for i in range(30)])
            )
    store = RedisStore(url)
    store.commit([], [RecordWrite("k", RecordId("ns", "r", 1, 0))], token="a-token")
    store.close()
    keys = set(operator.scan_iter(count=1000))
    assert b"their:data" in keys and operator.get("their:data") == b"keep me"
    assert all(key.startswith(b"mine:1:") for key in keys - {b"their:data"})
    assert len(keys) > 10
    stats = operator.info("commandstats")
    assert not {"cmdstat_del", "cmdstat_unlink", "cmdstat_flushdb", "cmdstat_flushall"} & set(stats)
    operator.close()


def test_two_prefixes_on_one_server_are_two_stores(redis_server) -> None:
    first, second = RedisStore(redis_server.url, prefix="a"), RedisStore(redis_server.url, prefix="b")
    first.commit([Append("k", samples("a0", "a1"))], token="t")
    assert ok(second.view(["k"])["k"]) == KeyView() and not second.applied("t")
    assert second.commit([Append("k", samples("b0"))], token="t") == [0]
    assert [s for s, _ in ok(first.read({"k": [0, 1]})["k"])] == ["a0", "a1"]
    first.close()
    second.close()


def test_the_keys_of_one_cache_key_share_one_hash_slot(redis_server) -> None:
    store = RedisStore(redis_server.url, prefix="p")
    for key in ("plain", "with {braces} inside", "{}", "ünïcode", "a" * 300):
        names = store.entry_keys(key)
        assert len({key_slot(name) for name in names}) == 1
        assert all(name.startswith(b"p:1:{") for name in names)
    assert len({key_slot(store.entry_keys(f"k{i}")[0]) for i in range(50)}) > 40  # spread over slots
    store.close()


def test_a_cluster_commit_spans_slots_and_every_key_reads_back(redis_cluster, redis_key_prefix) -> None:
    store = RedisStore(with_query(redis_cluster.cluster_url, prefix=redis_key_prefix))
    keys = [f"k{i}" for i in range(30)]
    starts = store.commit(
        [Append(key, samples(f"{key}-0", f"{key}-1")) for key in keys],
        [RecordWrite(key, RecordId("ns", key, 2, 0), ((i, 2),)) for i, key in enumerate(keys)],
        token="spans",
    )
    assert starts == [0] * 30 and store.applied("spans")
    views = store.view(keys, [(key, RecordId("ns", key, 2, 0).tag) for key in keys])
    assert all(ok(views[key]).found == {RecordId("ns", key, 2, 0).tag: (0, 1)} for key in keys)
    nodes = {store.client.get_node_from_key(store.entry_keys(key)[0]).name for key in keys}
    assert len(nodes) == 3  # the commit wrote to every master
    assert store.commit([Append(keys[0], samples("again"))], token="spans") is None
    store.close()


# == round trips =================================================================================


class Recorder:
    """Records every request a redis-py client sends (one per round trip: a command, a
    pipeline, or the engine's own batch of scripts), the thread that sent it and the server it
    went to, at the connection, below every client API."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.servers: list[Any] = []

    @property
    def round_trips(self) -> int:
        return len(self.threads)

    def clear(self) -> None:
        self.threads.clear()
        self.servers.clear()

    def connection_class(self, base: type[redis.Connection]) -> type[redis.Connection]:
        recorder = self

        class Recording(base):  # type: ignore[valid-type, misc]
            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                recorder.threads.append(threading.current_thread())
                recorder.servers.append(getattr(self, "port", None) or getattr(self, "path", None))
                super().send_packed_command(command, check_health)

        return Recording

    def client(self, url: str) -> redis.Redis:
        return redis.Redis.from_url(url, connection_class=self.connection_class(redis.UnixDomainSocketConnection))

    def cluster_client(self, url: str) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster.from_url(url, connection_class=self.connection_class(redis.Connection))


def test_views_reads_and_commits_of_many_keys_cost_one_round_trip_each(redis_server) -> None:
    recorder = Recorder()
    client = recorder.client(redis_server.url)
    store = RedisStore(client)
    store._loop_opener.join()  # its own connection's opening is not counted
    keys = [f"k{i}" for i in range(2 * VIEW_KEYS_PER_SCRIPT + 24)]  # three view scripts
    recorder.clear()
    store.commit([Append("first", samples("x"))])
    assert recorder.round_trips == 3  # a fresh server: NOSCRIPT, SCRIPT LOAD, the script again
    recorder.clear()
    store.commit([Append(key, samples(*(f"{key}-{j}" for j in range(20)))) for key in keys],
                 [RecordWrite(key, RecordId("ns", key, 1, 0), (3,)) for key in keys])
    assert recorder.round_trips == 1
    store.view(["warm"])
    recorder.clear()
    with admin(redis_server.url) as operator:
        scripts = operator.info("commandstats")["cmdstat_evalsha"]["calls"]
        views = store.view(keys, [(key, RecordId("ns", key, 1, 0).tag) for key in keys])
        calls = operator.info("commandstats")["cmdstat_evalsha"]["calls"] - scripts
        assert calls == -(-len(keys) // VIEW_KEYS_PER_SCRIPT) == 3  # at most VIEW_KEYS_PER_SCRIPT keys each
    assert recorder.round_trips == 1 and all(ok(views[key]).count == 20 for key in keys)
    recorder.clear()
    got = store.read({key: [19, 3, 10, 11, 12] for key in keys})
    assert recorder.round_trips == 1 and ok(got["k7"]) == list(samples("k7-19", "k7-3", "k7-10", "k7-11", "k7-12"))
    store.close()
    client.close()


def test_a_cluster_view_costs_one_round_trip_per_node(redis_cluster, redis_key_prefix) -> None:
    recorder = Recorder()
    client = recorder.cluster_client(redis_cluster.url)
    store = RedisStore(client, prefix=redis_key_prefix)
    keys = [f"k{i}" for i in range(300)]  # about 300 hash slots, on all three nodes
    store.commit([Append(key, samples(f"{key}-0")) for key in keys],
                 [RecordWrite(key, RecordId("ns", key, 1, 0), ((i, 1),)) for i, key in enumerate(keys)])
    recorder.clear()
    views = store.view(keys, [(key, RecordId("ns", key, 1, 0).tag) for key in keys])
    assert recorder.round_trips == 3 and len(set(recorder.servers)) == 3
    assert all(ok(views[key]).samples == {0: (f"{key}-0", None)} for key in keys)
    store.close()
    close_cluster(client)


async def test_a_pipeline_never_blocks_the_event_loop_on_redis_and_serves_lone_hits_from_it(redis_server) -> None:
    """Every redis-py call (commits, a view before the store's own event-loop connection is
    open, connecting) runs on the store's threads; once that connection is open (opening the
    store opens it, on a thread), lookups are views the loop sends and waits for without
    blocking (no thread hop), whatever the backend."""
    recorder = Recorder()
    client = recorder.client(redis_server.url)
    loop_thread = threading.current_thread()
    async with OnlineAPI(ScriptedModel(), client, batch_size=1) as pipeline:
        store = pipeline.cacher._broker.store
        store._loop_opener.join()  # opening the store opened its event-loop connection, on a thread
        recorder.clear()  # opening asked the server for its memory policy
        await pipeline.request(Request("lone", n=2, request_id="a"))  # a lone lookup and commit
        first = store.loop_views
        assert first == 1  # the pipeline's first lookup round was sent from the loop
        hits = [await pipeline.request(Request("lone", n=2, request_id="a", namespace=f"o{i}")) for i in range(5)]
        await pipeline.batch_request(Batch([Request(f"many-{i}", request_id=f"m{i}") for i in range(20)]))
        loop_views = store.loop_views - first
    assert len(recorder.threads) >= 3 and loop_thread not in recorder.threads
    assert loop_views >= 6  # the five lone hits and the batch's round, from the loop
    assert all(h.cached == [True, True] and h.data == hits[0].data for h in hits)
    client.close()


async def test_closing_a_pipeline_closes_its_redis_store_off_the_event_loop(redis_server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store's close may wait for the network (the opening of its event-loop connection, a
    client without timeouts): the cache stage runs it on a thread."""
    closed_on: list[threading.Thread] = []
    real_close = RedisStore.close

    def close(self: RedisStore) -> None:
        closed_on.append(threading.current_thread())
        real_close(self)

    monkeypatch.setattr(RedisStore, "close", close)
    async with OnlineAPI(ScriptedModel(), redis_server.url, batch_size=1) as pipeline:
        await pipeline.request(Request("p", request_id="a"))
        store = pipeline.cacher._broker.store
    assert len(closed_on) == 1 and closed_on[0] is not threading.current_thread()
    assert store._loop is None or store._loop.closed


# == lookup rounds: the view script ==============================================================


def test_a_replay_view_carries_the_recorded_samples_and_a_fresh_one_the_first(redis_server) -> None:
    store = RedisStore(redis_server.url)
    names = [f"s{j}" for j in range(40)]
    store.commit([Append("k", samples(*names))], [RecordWrite("k", RecordId("ns", "r", 2, 0), (30, 20)),
                                                   RecordWrite("k", RecordId("ns", "q", 3, 0), (13, 11, 12))])
    replay = ok(store.view(["k"], [("k", RecordId("ns", "r", 2, 0).tag)])["k"])
    assert replay.found == {RecordId("ns", "r", 2, 0).tag: (30, 20)}
    assert {20, 30} <= set(replay.samples) and replay.samples[30] == ("s30", None)  # no read needed
    both = ok(store.view(["k"], [("k", RecordId("ns", "r", 2, 0).tag), ("k", RecordId("ns", "q", 3, 0).tag)])["k"])
    assert {11, 12, 13, 20, 30} <= set(both.samples) and both.samples[12] == ("s12", None)
    assert list(both.records) == [RecordId("ns", "r", 2, 0).tag, RecordId("ns", "q", 3, 0).tag]  # as first written
    fresh = ok(store.view(["k"], [("k", RecordId("ns", "other", 2, 0).tag)])["k"])
    assert fresh.found == {} and sorted(fresh.samples) == list(range(READ_ALONG_SAMPLES))
    store.close()


def test_a_key_whose_one_record_is_the_asked_one_has_the_usual_view_and_a_damaged_one_fails_alone(redis_server) -> None:
    store = RedisStore(redis_server.url)
    mine, other = RecordId("ns", "r", 1, 0).tag, RecordId("ns", "q", 1, 0).tag
    store.commit([Append(key, samples(f"{key}0", f"{key}1", f"{key}2")) for key in ("solo", "bad", "two")],
                 [RecordWrite("solo", RecordId("ns", "r", 1, 0), (2,)), RecordWrite("bad", RecordId("ns", "r", 1, 0), (1,)),
                  RecordWrite("two", RecordId("ns", "r", 1, 0), (2,)), RecordWrite("two", RecordId("ns", "q", 1, 0), (0,))])
    command = store._view_command(["solo"], {"solo": [mine]}, declared=True)
    assert store.client.execute_command(*command)[0] == -4  # the short reply of the usual replay
    solo = ok(store.view(["solo"], [("solo", mine)])["solo"])
    assert (solo.count, solo.records, solo.found, solo.samples) == (3, {mine: (2,)}, {mine: (2,)}, {2: ("solo2", None)})
    two = ok(store.view(["two"], [("two", mine)])["two"])  # another record too: the full reply
    assert (two.records, two.found, two.samples) == ({mine: (2,), other: (0,)}, {mine: (2,)}, {2: ("two2", None)})
    with admin(redis_server.url) as operator:
        operator.hset(store.entry_keys("bad")[1], mine, "0;1,x")  # its first record, indices damaged
    views = store.view(["bad", "solo"], [("bad", mine), ("solo", mine)])
    assert isinstance(views["bad"], CorruptStoreError) and "cannot be decoded" in str(views["bad"])
    assert ok(views["solo"]) == solo  # its neighbour in the same script is read as before
    store.close()


def test_a_damaged_record_position_or_samples_list_fails_its_own_key_in_every_form_of_the_view(redis_server) -> None:
    """The short reply's branches (one record, the asked one) and the general one: a record
    whose first-written position is not a number, or a samples list that is not a list (read
    with LINDEX for one recorded sample, LRANGE for several), fails that key only."""
    store = RedisStore(redis_server.url)
    rid, other = RecordId("ns", "r", 1, 0), RecordId("ns", "q", 1, 0)
    mine = rid.tag
    keys = ("solo", "pos", "pos2", "kind", "kind2")
    store.commit([Append(key, samples(f"{key}0", f"{key}1", f"{key}2")) for key in keys],
                 [RecordWrite("solo", rid, (2,)), RecordWrite("pos", rid, (1,)), RecordWrite("pos2", rid, (1,)),
                  RecordWrite("pos2", other, (0,)), RecordWrite("kind", rid, (1,)), RecordWrite("kind2", RecordId("ns", "r", 2, 0), (0, 1))])
    asked = [(key, mine) for key in keys[:4]] + [("kind2", RecordId("ns", "r", 2, 0).tag)]
    before = store.view(list(keys), asked)
    assert all(ok(before[key]).samples for key in keys)  # all readable before the damage
    with admin(redis_server.url) as operator:
        head = operator.hgetall(store.entry_keys("pos")[1])
        operator.hset(store.entry_keys("pos")[1], mine, b"x;" + head[mine.encode()].split(b";", 1)[1])
        head2 = operator.hgetall(store.entry_keys("pos2")[1])
        operator.hset(store.entry_keys("pos2")[1], other.tag, b"y;" + head2[other.tag.encode()].split(b";", 1)[1])
        for key in ("kind", "kind2"):
            operator.delete(store.entry_keys(key)[0])
            operator.set(store.entry_keys(key)[0], "not a list")
    views = store.view(list(keys), asked)
    for key in keys[1:]:
        assert isinstance(views[key], CorruptStoreError), (key, views[key])
    for tags in ([], [("pos", other.tag)]):  # the damaged lone record, not the asked one (the general reply)
        assert isinstance(store.view(["pos"], tags)["pos"], CorruptStoreError), tags
    assert ok(views["solo"]) == ok(before["solo"])  # its neighbours' damage leaves it as it was
    store.close()


def test_a_server_that_lost_the_view_script_is_given_it_again(redis_server) -> None:
    recorder = Recorder()
    client = recorder.client(redis_server.url)
    store = RedisStore(client)
    store.commit([Append("k", samples("x"))])
    store._loop_opener.join()  # the connection of view_async is open: its opening is not counted
    with admin(redis_server.url) as operator:
        operator.script_flush()  # as a restart does
    recorder.clear()
    assert ok(store.view(["k"])["k"]).samples == {0: ("x", None)}
    assert recorder.round_trips == 3  # NOSCRIPT, SCRIPT LOAD, the script again
    store.close()
    client.close()


class DropsSecondReply(redis.UnixDomainSocketConnection):
    """A connection that loses its socket after reading the first reply of a request with
    several, once (``armed``), as when a server dies mid-reply."""

    armed = False
    reads = 0

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if DropsSecondReply.armed:
            DropsSecondReply.reads += 1
            if DropsSecondReply.reads == 2:
                DropsSecondReply.armed = False
                self.disconnect()
                raise redis.ConnectionError("Connection closed by server.")
        return super().read_response(*args, **kwargs)


def test_a_connection_lost_between_two_view_replies_is_retried_and_never_reused_out_of_step(redis_server) -> None:
    client = redis.Redis.from_url(redis_server.url, connection_class=DropsSecondReply)
    store = RedisStore(client, retry_s=2)
    keys = [f"k{i}" for i in range(VIEW_KEYS_PER_SCRIPT + 10)]  # two view scripts, two replies
    store.commit([Append(key, samples(f"{key}-0")) for key in keys])
    DropsSecondReply.armed, DropsSecondReply.reads = True, 0
    views = store.view(keys)
    assert not DropsSecondReply.armed and all(ok(views[key]).samples == {0: (f"{key}-0", None)} for key in keys)
    assert client.ping() and ok(store.view(["k3"])["k3"]).samples == {0: ("k3-0", None)}  # nothing left unread
    store.close()
    client.close()


def test_keys_a_stale_slot_map_sends_to_the_wrong_node_are_read_by_their_slot(redis_cluster, redis_key_prefix) -> None:
    store = RedisStore(with_query(redis_cluster.cluster_url, prefix=redis_key_prefix))
    keys = [f"k{i}" for i in range(40)]
    store.commit([Append(key, samples(f"{key}-0", f"{key}-1")) for key in keys],
                 [RecordWrite(key, RecordId("ns", key, 1, 0), ((i, 1),)) for i, key in enumerate(keys)])
    manager = store.client.nodes_manager
    moved = keys[:5]
    for key in moved:  # as after a resharding the client has not heard of yet
        slot = key_slot(store.entry_keys(key)[0])
        owner = manager.slots_cache[slot][0]
        manager.slots_cache[slot] = [next(n for n in store.client.get_primaries() if n.name != owner.name)]
    views = store.view(keys, [(key, RecordId("ns", key, 1, 0).tag) for key in keys])
    assert all(ok(views[key]).found == {RecordId("ns", key, 1, 0).tag: (0,)} for key in keys)
    assert all(ok(views[key]).samples == {0: (f"{key}-0", None)} for key in moved)
    for key in moved:  # the redirection taught the client where each slot lives
        slot = key_slot(store.entry_keys(key)[0])
        assert manager.slots_cache[slot][0].name == store.client.get_node_from_key(store.entry_keys(key)[0]).name
    store.close()


class StrictNodeStore(RedisStore):
    """A store whose cluster nodes answer a view script over several hash slots as a strict
    server or proxy does (an error reply from the server itself); counts those scripts."""

    node_scripts = 0

    def _view_command(self, keys: Any, asked: Any, *, declared: bool) -> tuple[Any, ...]:
        if declared:
            return super()._view_command(keys, asked, declared=True)
        self.node_scripts += 1
        return ("EVAL", "return redis.error_reply('ERR Script attempted to access keys that do not hash to the same slot')", 0)


def test_a_view_of_a_slot_being_migrated_is_retried_never_read_as_corrupt(redis_cluster, redis_key_prefix) -> None:
    store = RedisStore(with_query(redis_cluster.cluster_url, prefix=redis_key_prefix, retry_s=0.3))
    store.commit([Append("m", samples("m0"))], [RecordWrite("m", RecordId("ns", "m", 1, 0), (0,))])
    name = store.entry_keys("m")[1]
    slot = key_slot(name)
    client = store.client
    source = client.get_node_from_key(name)
    target = next(node for node in client.get_primaries() if node.name != source.name)
    src, dst = client.get_redis_connection(source), client.get_redis_connection(target)
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    try:  # no key moved yet; a tag with no record makes the script look for a hash that does not exist
        views = store.view(["m"], [("m", RecordId("ns", "m", 1, 1).tag)])
    except StoreUnavailableError:
        pass  # the node said TRYAGAIN for the whole script: retried, then unavailable, as documented
    else:
        assert not isinstance(views["m"], CorruptStoreError) and ok(views["m"]).count == 1
    finally:
        for node in (src, dst):
            node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert ok(store.view(["m"])["m"]).count == 1
    store.close()


def test_a_cluster_that_refuses_node_wide_view_scripts_is_read_by_slot_from_then_on(
    redis_cluster, redis_key_prefix, caplog
) -> None:
    store = StrictNodeStore(with_query(redis_cluster.cluster_url, prefix=redis_key_prefix))
    keys = [f"k{i}" for i in range(40)]
    store.commit([Append(key, samples(f"{key}-0")) for key in keys],
                 [RecordWrite(key, RecordId("ns", key, 1, 0), ((i, 1),)) for i, key in enumerate(keys)])
    tags = [(key, RecordId("ns", key, 1, 0).tag) for key in keys]
    with caplog.at_level(logging.WARNING, logger="cachesaver.store.redis"):
        first = store.view(keys, tags)
    refused = store.node_scripts
    assert refused >= 1 and "reads one hash slot per script" in caplog.text
    second = store.view(keys, tags)
    assert store.node_scripts == refused  # by slot from then on
    for views in (first, second):
        assert all(ok(views[key]).found == {RecordId("ns", key, 1, 0).tag: (0,)} for key in keys)
        assert all(ok(views[key]).samples == {0: (f"{key}-0", None)} for key in keys)
    store.close()


class RefusesOnce(redis.Connection):
    """A cluster node connection whose first send fails while ``armed`` is set, as when a node
    is lost mid-run."""

    armed = False

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if RefusesOnce.armed:
            RefusesOnce.armed = False
            self.disconnect()
            raise redis.ConnectionError("Error 111 connecting to the node. Connection refused.")
        super().send_packed_command(command, check_health)


def test_a_cluster_view_that_loses_a_node_asks_for_the_layout_again_and_answers(redis_cluster, redis_key_prefix) -> None:
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url, connection_class=RefusesOnce)
    store = RedisStore(client, prefix=redis_key_prefix, retry_s=2)
    keys = [f"k{i}" for i in range(30)]
    store.commit([Append(key, samples(f"{key}-0")) for key in keys])
    asked_layout: list[int] = []
    initialize = client.nodes_manager.initialize

    def counted(*args: Any, **kwargs: Any) -> Any:
        asked_layout.append(1)
        return initialize(*args, **kwargs)

    client.nodes_manager.initialize = counted  # type: ignore[method-assign]
    RefusesOnce.armed = True
    views = store.view(keys)
    assert not RefusesOnce.armed and asked_layout == [1]  # the retry asked the cluster first
    assert all(ok(views[key]).samples == {0: (f"{key}-0", None)} for key in keys)
    store.close()
    close_cluster(client)


# == a lost reply, and a cluster commit cut between slots =======================================


class LosesFirstReply(redis.Redis):
    """A client whose first script call reaches the server but whose reply is lost, as when a
    connection drops right after the server ran the script."""

    lost = 0

    def evalsha(self, *args: Any) -> Any:
        result = super().evalsha(*args)
        if not self.lost:
            self.lost += 1
            raise redis.ConnectionError("Connection closed by server (the reply was lost)")
        return result


@pytest.mark.parametrize("token", [None, "t"])
def test_a_commit_whose_reply_was_lost_is_applied_once(redis_server, token: str | None) -> None:
    client = LosesFirstReply.from_url(redis_server.url)
    store = RedisStore(client, retry_s=2)
    hook_starts: list[Any] = []

    class Hook:
        def before(self) -> None: ...

        def after(self, starts: list[int]) -> None:
            hook_starts.append(starts)

        def finish(self) -> None: ...

    store.commit([Append("k", samples("k0"))])
    assert store.commit([Append("k", samples("k1", "k2"))], token=token, hook=Hook()) == [1]
    assert client.lost == 1 and hook_starts == [[1]]
    assert [s for s, _ in ok(store.read({"k": [0, 1, 2]})["k"])] == ["k0", "k1", "k2"]
    assert ok(store.view(["k"])["k"]).count == 3
    if token is not None:
        assert store.applied(token) and store.commit([Append("k", samples("k3"))], token=token) is None
    store.close()
    client.close()


class SlotDown(redis.cluster.RedisCluster):
    """A cluster client that cannot reach the node of one key's slot while ``down`` is set."""

    down: bytes | None = None

    def evalsha(self, sha: Any, numkeys: int, *keys_and_args: Any) -> Any:
        if self.down is not None and self.down in keys_and_args[1:numkeys]:
            raise redis.ConnectionError("Error 111 connecting to the node of that slot. Connection refused.")
        return super().evalsha(sha, numkeys, *keys_and_args)


def test_a_cluster_commit_cut_between_slots_is_completed_by_its_token(redis_cluster, redis_key_prefix) -> None:
    client = SlotDown.from_url(redis_cluster.url)
    store = RedisStore(client, prefix=redis_key_prefix, retry_s=0.05)
    keys = [f"k{i}" for i in range(6)]
    client.down = store.entry_keys(keys[-1])[0]
    appends = [Append(key, samples(f"{key}-0")) for key in keys]
    with pytest.raises(StoreUnavailableError, match="written for the keys"):
        store.commit(appends, token="import-1")
    assert not store.applied("import-1")
    counts = {key: ok(v).count for key, v in store.view(keys).items()}
    assert counts[keys[-1]] == 0 and sum(counts.values()) >= 1  # some slots went in, not that one
    client.down = None
    assert store.commit(appends, token="import-1") == [0] * 6  # the missing slots, the others kept
    assert {key: ok(v).count for key, v in store.view(keys).items()} == dict.fromkeys(keys, 1)
    assert store.applied("import-1") and store.commit(appends, token="import-1") is None
    store.close()
    client.close()


# == faults of a real server ======================================================================


def test_evicted_samples_read_as_corrupt_and_their_indices_are_never_reused(redis_server) -> None:
    store = RedisStore(redis_server.url)
    store.commit([Append("k", samples("k0", "k1", "k2")), Append("j", samples("j0"))])
    with admin(redis_server.url) as operator:
        operator.delete(store.entry_keys("k")[0])  # as an eviction would (the test's own server)
    view = ok(store.view(["k"])["k"])
    assert view.count == 3 and view.samples == {}
    assert isinstance(store.read({"k": [0]})["k"], CorruptStoreError)
    with pytest.raises(CorruptStoreError):
        store.commit([Append("k", samples("new")), Append("j", samples("j1"))])
    assert ok(store.view(["j"])["j"]).count == 1  # nothing of that commit was written
    store.close()


@pytest.mark.parametrize("redis_server", [{"appendonly": True, "appendfsync": "always"}], indirect=True)
async def test_a_pipeline_keeps_working_across_a_server_restart(redis_server) -> None:
    url = with_query(redis_server.url, retry_s=0.2)

    def stop_during_the_call(request: Request) -> None:
        if request.prompt == "during":
            redis_server.stop()  # the server goes away while the model answers
        return None

    model = ScriptedModel(fail_with=stop_during_the_call)
    async with OnlineAPI(model, url, batch_size=1) as pipeline:
        before = await pipeline.request(Request("before", n=2, request_id="b"))
        during = await pipeline.request(Request("during", n=2, request_id="d"))  # delivered, kept
        assert pipeline.cacher._broker.unstored_samples == 2
        with pytest.raises(StoreUnavailableError):
            await pipeline.request(Request("while down"))
        redis_server.start()  # the same socket and append-only file
        again = await pipeline.request(Request("before", n=2, request_id="b2"))
        after = await pipeline.request(Request("after"))
    assert again.cached == [False, False] and again.data != before.data  # fresh samples of the run
    assert after.data == ["after#0"]
    replay_model = ScriptedModel()
    async with OnlineAPI(replay_model, url, batch_size=1) as pipeline:
        replayed = [await pipeline.request(Request(p, n=2, request_id=i)) for p, i in (("before", "b"), ("during", "d"))]
    assert [r.data for r in replayed] == [before.data, during.data] and replay_model.calls == 0


async def test_a_dropped_connection_is_reconnected(redis_server) -> None:
    url = redis_server.url
    model = ScriptedModel()
    async with OnlineAPI(model, url, batch_size=1) as pipeline:
        await pipeline.request(Request("one", request_id="1"))
        with admin(url) as operator:
            assert operator.client_kill_filter(_type="normal", skipme=True) >= 1
        second = await pipeline.request(Request("two", request_id="2"))
        with admin(url) as operator:
            operator.client_kill_filter(_type="normal", skipme=True)
        replay = await pipeline.request(Request("one", request_id="1", namespace="other"))
    assert second.data == ["two#0"] and replay.cached == [True] and model.calls == 2


async def test_a_full_server_refuses_commits_whole_and_the_samples_land_once_memory_frees(redis_server) -> None:
    operator = admin(redis_server.url)
    store = RedisStore(redis_server.url)
    store.commit([Append("k", samples("k0"))])
    fillers = fill(operator)  # the operator's own keys fill the server
    with pytest.raises(StoreFullError):
        store.commit([Append("k", samples("k1")), Append("j", samples("j0"))], [RecordWrite("k", RecordId("ns", "r", 1, 0), ((0, 1),))])
    views = store.view(["k", "j"], [("k", RecordId("ns", "r", 1, 0).tag)])
    assert ok(views["k"]).count == 1 and ok(views["k"]).found == {} and ok(views["j"]) == KeyView()
    store.close()
    model = ScriptedModel()
    async with OnlineAPI(model, redis_server.url, batch_size=1) as pipeline:
        response = await pipeline.request(Request("hi", n=2, request_id="r"))
        assert response.data == ["hi#0", "hi#1"]  # delivered although the server refused them
        assert pipeline.cacher._broker.unstored_samples == 2
        assert isinstance(pipeline.cacher._broker.last_store_error, StoreFullError)
        operator.delete(*fillers)  # memory frees; the close's last attempt stores them
    async with OnlineAPI(ScriptedModel(), redis_server.url, batch_size=1) as pipeline:
        replayed = await pipeline.request(Request("hi", n=2, request_id="r"))
    assert replayed.data == response.data and replayed.cached == [True, True]
    operator.close()


async def test_samples_a_full_server_refused_until_close_go_to_a_recovery_file(redis_server, tmp_path) -> None:
    operator = admin(redis_server.url)
    fillers = fill(operator)
    with pytest.raises(UnstoredSamplesError) as info:
        async with OnlineAPI(ScriptedModel(), redis_server.url, batch_size=1) as pipeline:
            await pipeline.request(Request("hi", n=2, request_id="r"))
    assert info.value.unstored == 2 and info.value.path is not None
    operator.delete(*fillers)
    async with OnlineAPI(ScriptedModel(), redis_server.url, batch_size=1) as pipeline:  # loads the file
        replayed = await pipeline.request(Request("hi", n=2, request_id="r"))
    assert replayed.data == ["hi#0", "hi#1"] and replayed.cached == [True, True]
    operator.close()


@pytest.mark.parametrize("redis_server", [{"requirepass": "s3cret"}], indirect=True)
def test_wrong_credentials_are_a_configuration_error_naming_the_url_without_the_password(redis_server) -> None:
    good = redis_server.url_with(password="s3cret")
    for url in (redis_server.url_with(password="wrongpw"), redis_server.url_with(password=None)):
        with pytest.raises(ConfigurationError) as info:
            RedisStore(url)
        message = str(info.value)
        assert RedisStore.describe(url) in message and "wrongpw" not in message and "s3cret" not in message
    store = RedisStore(good)
    assert store.commit([Append("k", samples("x"))]) == [0] and "s3cret" not in store.location
    store.close()


def test_an_unknown_cluster_user_is_a_configuration_error(redis_cluster) -> None:
    url = "redis+cluster://nobody:nope@" + redis_cluster.cluster_url.split("://", 1)[1]
    with pytest.raises(ConfigurationError) as info:
        RedisStore(url)
    assert "nope" not in str(info.value) and RedisStore.describe(url) in str(info.value)
    assert RedisStore.describe(url).startswith("redis+cluster://nobody@127.0.0.1:")


@pytest.mark.parametrize("redis_server", [{"maxmemory": "64mb", "maxmemory_policy": "allkeys-lru"}], indirect=True)
def test_an_evicting_server_is_warned_about_once_at_open(redis_server, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cachesaver"):
        RedisStore(redis_server.url).close()
        RedisStore(redis_server.url).close()
    warnings = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warnings) == 1
    assert "allkeys-lru" in warnings[0] and RedisStore.describe(redis_server.url) in warnings[0]
    assert "noeviction" in warnings[0]


def test_a_noeviction_server_opens_without_a_warning(redis_server, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cachesaver"):
        RedisStore(redis_server.url).close()
    assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]


def test_a_server_that_stops_answering_is_unavailable_never_a_hang(redis_server) -> None:
    store = RedisStore(with_query(redis_server.url, socket_timeout=0.1, retry_s=0.1))
    store.commit([Append("k", samples("k0"))])
    redis_server.pause()
    try:
        for call in (lambda: store.view(["k"]), lambda: store.read({"k": [0]}),
                     lambda: store.commit([Append("k", samples("k1"))]), lambda: store.applied("t")):
            with pytest.raises(StoreUnavailableError, match="retry_s"):
                call()
    finally:
        redis_server.resume()
    assert ok(store.view(["k"])["k"]).count in (1, 2)  # a timed-out commit may have run on the server
    store.close()


def test_a_stopped_server_is_unavailable_and_a_closed_store_says_so(redis_server) -> None:
    store = RedisStore(with_query(redis_server.url, retry_s=0.05))
    redis_server.stop()
    with pytest.raises(StoreUnavailableError) as info:
        store.commit([Append("k", samples("k0"))])
    assert isinstance(info.value, StoreError) and RedisStore.describe(redis_server.url) in str(info.value)
    with pytest.raises(StoreUnavailableError):
        RedisStore(redis_server.url, retry_s=0)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.view(["k"])
