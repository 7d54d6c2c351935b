"""The test suite's own redis-server processes (tests/redis_servers.py and the conftest fixtures)
work with redis-py: one server on a unix socket or TCP, its faults (restart, kill, full,
wrong credentials), and a 3-master Redis Cluster."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
import redis.cluster
import redis_servers
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_servers import RedisCluster, RedisNotInstalledError, RedisServer, RedisServerError

TESTS = Path(__file__).resolve().parent


def client(url: str) -> redis.Redis:
    """A redis-py client that does not retry, so a fault shows at once."""
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=5)


def gone(pid: int) -> bool:
    """True when no process ``pid`` runs any more (a zombie nobody reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---- one server ----


def test_unix_socket_server_serves_set_and_get(redis_server, tmp_path):
    assert redis_server.url == f"unix://{tmp_path.resolve()}/redis/redis.sock"
    with client(redis_server.url) as r:
        assert r.set("greeting", "hello")
        assert r.get("greeting") == b"hello"
        assert r.config_get("port") == {"port": "0"}


def test_tcp_server_serves_set_and_get_on_loopback_only(redis_server_tcp):
    port = redis_server_tcp.port
    assert redis_server_tcp.url == f"redis://127.0.0.1:{port}/0"
    with client(redis_server_tcp.url) as r:
        assert r.set("greeting", "hello")
        assert r.get("greeting") == b"hello"
        assert r.config_get("bind") == {"bind": "127.0.0.1"}
        assert r.config_get("protected-mode") == {"protected-mode": "yes"}


def test_redis_url_fixture_runs_on_both_transports(redis_url, redis_url_tcp):
    assert redis_url.startswith(("unix://", "redis://127.0.0.1:"))
    assert redis_url_tcp.startswith("redis://127.0.0.1:")
    with client(redis_url) as first, client(redis_url_tcp) as second:
        first.set("k", "1")
        assert second.get("k") is None  # two separate servers


# appendfsync always: every acknowledged write is in the file before the reply, so a SIGKILL
# right after it cannot lose it (with the default everysec it may, now and then).
@pytest.mark.parametrize("redis_server", [{"appendonly": True, "appendfsync": "always"}], indirect=True)
@pytest.mark.parametrize("hard", [False, True], ids=["stop", "sigkill"])
def test_restart_keeps_data_with_appendonly(redis_server, hard):
    url, before = redis_server.url, redis_server.pid
    with client(url) as r:
        r.set("kept", "yes")
        r.rpush("samples", "a", "b")
    redis_server.restart(hard=hard)
    assert redis_server.pid != before and redis_server.url == url
    with client(url) as r:
        assert r.get("kept") == b"yes"
        assert r.lrange("samples", 0, -1) == [b"a", b"b"]


def test_restart_on_the_same_tcp_port(tmp_path):
    with RedisServer(tmp_path, appendonly=True) as server:
        port = server.port
        with client(server.url) as r:
            r.set("k", "v")
        server.restart()
        assert server.port == port
        with client(server.url) as r:
            assert r.get("k") == b"v"


def test_without_appendonly_a_restart_starts_empty(redis_server):
    with client(redis_server.url) as r:
        r.set("lost", "yes")
    redis_server.restart()
    with client(redis_server.url) as r:
        assert r.get("lost") is None


def test_a_paused_server_answers_nothing_until_resumed(redis_server):
    with client(redis_server.url) as r:
        r.set("k", "1")
        redis_server.pause()
        try:
            slow = redis.Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 0), socket_timeout=0.1)
            with pytest.raises(redis.TimeoutError):
                slow.get("k")
            slow.close()
        finally:
            redis_server.resume()
        assert r.get("k") == b"1"


def test_kill_then_a_client_gets_connection_error(redis_server):
    pid = redis_server.pid
    with client(redis_server.url) as r:
        r.set("k", "v")
        redis_server.kill()
        assert gone(pid) and not redis_server.running
        with pytest.raises(redis.ConnectionError):
            r.get("k")
    with client(redis_server.url) as fresh, pytest.raises(redis.ConnectionError):
        fresh.ping()


@pytest.mark.parametrize("redis_server", [{"requirepass": "s3cret pass"}], indirect=True)
def test_requirepass_refuses_clients_without_the_password(redis_server):
    with client(redis_server.url_with(password=None)) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.get("k")
    with client(redis_server.url_with(password="wrong")) as wrong, pytest.raises(redis.AuthenticationError):
        wrong.get("k")
    assert ":s3cret%20pass@" in redis_server.url
    with client(redis_server.url) as r:
        assert r.set("k", "v") and r.get("k") == b"v"


@pytest.mark.parametrize("redis_server", [{"maxmemory": "4mb", "maxmemory_policy": "noeviction"}], indirect=True)
def test_maxmemory_with_noeviction_refuses_writes_with_oom(redis_server):
    with client(redis_server.url) as r:
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        big = b"x" * (1 << 20)
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
            for i in range(8):  # 8 MB in all: more than the 4 MB allowed
                r.set(f"big:{i}", big)
        assert r.get("big:0") == big  # what was stored stays readable


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    before = set(redis_servers.live_pids())
    with pytest.raises(RedisServerError, match=r"(?s)exited with status.*maxmemory-policy"):
        RedisServer(tmp_path, maxmemory_policy="no-such-policy").start()
    assert set(redis_servers.live_pids()) == before


def test_a_restart_whose_port_was_taken_meanwhile_is_an_error(tmp_path):
    with RedisServer(tmp_path) as server:
        port = server.port
        server.stop()
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            with pytest.raises(RedisServerError, match="Address already in use"):
                server.start()
        assert server.port == port and not server.running


def test_a_taken_port_is_retried_on_another(tmp_path, monkeypatch):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        ports = iter([taken, taken])
        server = RedisServer(tmp_path)
        monkeypatch.setattr(server, "_pick_port", lambda: next(ports, None) or redis_servers.free_port())
        with server:
            assert server.port != taken
            with client(server.url) as r:
                assert r.ping()
        assert server.log_tail().count("Address already in use") >= 2


def test_a_fixed_taken_port_is_an_error_not_a_retry(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(RedisServerError, match="Address already in use"):
            RedisServer(tmp_path, port=taken).start()


def test_managed_directives_cannot_be_overridden(tmp_path):
    with pytest.raises(RedisServerError, match="dir is set by RedisServer"):
        RedisServer(tmp_path, dir="/elsewhere")
    with pytest.raises(RedisServerError, match="use unix_socket= or port="):
        RedisServer(tmp_path, unixsocket="/tmp/x.sock")


def test_a_long_directory_gets_a_short_socket_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with RedisServer(deep, unix_socket=True) as server:
        assert len(str(server.socket_path)) <= 100
        with client(server.url) as r:
            assert r.ping()
        socket_dir = server.socket_path.parent
    assert not socket_dir.exists()
    assert (deep / "redis.conf").is_file()


def test_missing_redis_server_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RedisNotInstalledError, match=r"apt-get install -y redis-server"):
        RedisServer(tmp_path).start()
    with pytest.raises(RedisNotInstalledError, match="redis-cli is not on PATH"):
        RedisCluster(tmp_path).start()


def test_fixtures_fail_rather_than_skip_without_redis_server(tmp_path, monkeypatch):
    import conftest

    monkeypatch.setenv("PATH", str(tmp_path))
    for helper in (RedisServer(tmp_path / "one"), RedisCluster(tmp_path / "cluster")):
        with pytest.raises(pytest.fail.Exception, match="apt-get install -y redis-server") as failed:
            conftest._started(helper)
        assert not isinstance(failed.value, pytest.skip.Exception)


def test_stop_and_the_context_manager_leave_no_process(tmp_path):
    server = RedisServer(tmp_path / "a").start()
    pid = server.pid
    assert pid in redis_servers.live_pids()
    server.stop()
    assert gone(pid) and pid not in redis_servers.live_pids()
    with RedisServer(tmp_path / "b", unix_socket=True) as other:
        pid = other.pid
    assert gone(pid)


# A child interpreter starts a server and leaves without stopping it.
_LEAVER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from redis_servers import RedisServer
    server = RedisServer(sys.argv[2], unix_socket=True).start()
    print(server.pid, flush=True)
    if sys.argv[3] == "sigkill":
        os.kill(os.getpid(), 9)
    """
)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_no_server_outlives_the_process_that_started_it(tmp_path, how):
    done = subprocess.run(
        [sys.executable, "-c", _LEAVER, str(TESTS), str(tmp_path), how],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == (0 if how == "exit" else -9), done.stderr
    pid = int(done.stdout.split()[0])
    assert wait_gone(pid), f"redis-server {pid} survived its parent ({how})"


# ---- the cluster (one per session: every test keeps to its own prefix) ----


def cluster_client(cluster: RedisCluster) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster(startup_nodes=cluster.startup_nodes)


def test_cluster_is_ok_on_every_master(redis_cluster):
    assert len(redis_cluster.nodes) == 3
    for host, port in redis_cluster.addresses:
        with client(f"redis://{host}:{port}/0") as node:
            info = node.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_slots_assigned"]) == 16384
            assert int(info["cluster_known_nodes"]) == 3
            assert int(info["cluster_size"]) == 3


def test_cluster_keys_land_on_all_three_masters_and_read_back(redis_cluster, redis_key_prefix):
    keys = [f"{redis_key_prefix}{i}" for i in range(30)]
    with cluster_client(redis_cluster) as rc:
        for key in keys:
            rc.set(key, key.upper())
        owners = {key: rc.get_node_from_key(key).port for key in keys}
        assert set(owners.values()) == {port for _, port in redis_cluster.addresses}
        assert [rc.get(key) for key in keys] == [key.upper().encode() for key in keys]
    for key, port in owners.items():  # each key really lives on the master that owns its slot
        with client(f"redis://127.0.0.1:{port}/0") as node:
            assert node.execute_command("GET", key) == key.upper().encode()


def test_cluster_hash_tag_keeps_keys_in_one_slot(redis_cluster, redis_key_prefix):
    tagged = [f"{redis_key_prefix}{{request-1}}:{part}" for part in ("samples", "cursor", "replay")]
    untagged = [f"{redis_key_prefix}{part}" for part in ("samples", "cursor", "replay", "a", "b")]
    with cluster_client(redis_cluster) as rc:
        slots = {rc.cluster_keyslot(key) for key in tagged}
        assert slots == {rc.cluster_keyslot(f"{redis_key_prefix}{{request-1}}")}
        assert len({rc.cluster_keyslot(key) for key in untagged}) > 1
        # Keys of one slot move together in one script; keys of several slots cannot.
        script = "redis.call('RPUSH', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"
        assert rc.eval(script, 2, tagged[0], tagged[1], "s0") == 1
        assert rc.lrange(tagged[0], 0, -1) == [b"s0"]
        spread = [a for a in untagged if rc.cluster_keyslot(a) != rc.cluster_keyslot(untagged[0])][:1]
        with pytest.raises(redis.RedisClusterException):
            rc.eval(script, 2, untagged[0], spread[0], "s0")


def test_cluster_url_reaches_the_whole_cluster(redis_cluster, redis_key_prefix):
    first_port = redis_cluster.addresses[0][1]
    assert redis_cluster.url == f"redis://127.0.0.1:{first_port}"
    assert redis_cluster.cluster_url == f"redis+cluster://127.0.0.1:{first_port}"
    with redis.cluster.RedisCluster.from_url(redis_cluster.url) as rc:
        assert len(rc.get_primaries()) == 3
        rc.set(f"{redis_key_prefix}k", "v")
        assert rc.get(f"{redis_key_prefix}k") == b"v"


def test_cluster_stop_stops_every_node(tmp_path):
    cluster = RedisCluster(tmp_path)
    for node in cluster.nodes:  # the nodes alone: joining them is what the session fixture shows
        node.start()
    pids = [node.pid for node in cluster.nodes]
    cluster.stop()
    assert all(gone(pid) for pid in pids)
    assert not set(pids) & set(redis_servers.live_pids())
