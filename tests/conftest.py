"""Fixtures shared by the tests: the fake chat-completions server, a recording sleep, and real
redis-server processes (tests/redis_servers.py).

The Redis fixtures never use the system redis service: each starts its own ``redis-server``
with its config and data in the test's temporary directory, and stops it when the test (or,
for the cluster, the session) ends, whether the test passed or not. Without ``redis-server``
and ``redis-cli`` on PATH they fail (never skip), saying how to install them
(``apt-get install -y redis-server``; ``.ci/run`` does it). A test that does not restart,
kill, fill or reconfigure its server takes the session's (``redis_shared_url``, or
``redis_cluster``) with ``redis_key_prefix`` in front of every key.

For the whole session (hooks below): temporary files are on the RAM disk when there is one;
SDK clients load no CA bundle; the slow processes registered with ``tests/_early.py`` run in
the background and the tests that wait for them run last.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import _early
import pytest
import redis_servers
from _engines import PIPELINE_ENGINES, make
from _support import Sleeps
from fake_chat_server import FakeChatServer
from redis_servers import RedisCluster, RedisNotInstalledError, RedisServer


RAM_DISK = Path("/dev/shm")
RAM_DISK_MIN_FREE = 1 << 30  # the suite writes a few hundred MB at most; Docker's default /dev/shm is 64 MB
_TEMPROOT = "PYTEST_DEBUG_TEMPROOT"  # where pytest makes its pytest-of-<user>/pytest-<N> directories
_set_here = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    """Temporary files live on the RAM disk when the machine has one (Linux: ``/dev/shm``).

    A test's caches are SQLite databases: creating, syncing and deleting their files on a real
    disk costs about 10 ms per store opened, and the suite opens hundreds; a long run's claims
    spill to ``tempfile``'s directory. Nothing a test checks depends on the disk (a full disk is
    a small tmpfs mounted by the test itself). So, unless the caller chose otherwise, and when the
    RAM disk has at least ``RAM_DISK_MIN_FREE`` free (a container's 64 MB one does not):

    - ``tmp_path`` and ``tmp_path_factory`` directories go to ``/dev/shm/pytest-of-<user>/``
      (``PYTEST_DEBUG_TEMPROOT``; a ``--basetemp`` or a ``PYTEST_DEBUG_TEMPROOT`` given wins), with
      pytest's usual retention of the last three sessions;
    - ``tempfile`` (this process, and ``TMPDIR`` for the processes tests start) uses a directory
      of this session's own under ``/dev/shm``, removed when the session ends (a ``TMPDIR``
      given wins).
    """
    if not (RAM_DISK.is_dir() and os.access(RAM_DISK, os.W_OK | os.X_OK)):
        return
    stats = os.statvfs(RAM_DISK)
    if stats.f_bavail * stats.f_frsize < RAM_DISK_MIN_FREE:  # a container's small /dev/shm: stay on disk
        return
    set_here: dict = {}
    if config.option.basetemp is None and _TEMPROOT not in os.environ:
        os.environ[_TEMPROOT] = set_here[_TEMPROOT] = str(RAM_DISK)
    if "TMPDIR" not in os.environ:
        session_tmp = tempfile.mkdtemp(prefix="cachesaver-tests-", dir=RAM_DISK)
        os.environ["TMPDIR"] = set_here["TMPDIR"] = session_tmp
        set_here["tempdir"] = tempfile.tempdir
        tempfile.tempdir = session_tmp
    config.stash[_set_here] = set_here


def pytest_unconfigure(config: pytest.Config) -> None:
    set_here = config.stash.get(_set_here, {})
    if _TEMPROOT in set_here:
        os.environ.pop(_TEMPROOT, None)
    if "TMPDIR" in set_here:
        os.environ.pop("TMPDIR", None)
        tempfile.tempdir = set_here["tempdir"]
        shutil.rmtree(set_here["TMPDIR"], ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def no_certificates_to_load(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every SDK client builds an SSL context, and loading the system's CA bundle into it takes
    about 50 ms; the tests only ever speak plain HTTP to 127.0.0.1, so the trust store is an
    empty directory (``SSL_CERT_DIR``, which httpx honours; ``SSL_CERT_FILE`` unset) for the
    session. A test that reached for an HTTPS server would fail verification, never trust it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SSL_CERT_FILE", raising=False)
        patch.setenv("SSL_CERT_DIR", str(tmp_path_factory.mktemp("no-certificates")))
        yield


@pytest.fixture(autouse=True)
def no_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite sets its cache modes itself: a CACHESAVER_MODE of the shell running it (say,
    replay in a user's CI) must not change what the tests see."""
    monkeypatch.delenv("CACHESAVER_MODE", raising=False)


@pytest.fixture
def server():
    """A FakeChatServer on 127.0.0.1 (a free port), stopped after the test."""
    with FakeChatServer() as running:
        yield running


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture(params=list(PIPELINE_ENGINES))
def cache(request: pytest.FixtureRequest, tmp_path) -> Iterator[object]:
    """What the pipelines of a test get as ``cache=``, once per engine of
    ``_engines.PIPELINE_ENGINES``: ``diskcache`` is the directory ``tmp_path``, ``memory`` one
    MemoryStore shared by every pipeline of the test (a pipeline never closes a store it was
    handed, so a second pipeline on it replays), ``redis`` a URL with a prefix of the test's own
    on the session's shared redis-server. Shadows pytest's own ``cache`` fixture, which no test
    uses."""
    factory = make(PIPELINE_ENGINES[request.param], tmp_path, request)
    try:
        yield factory.pipeline_cache()
    finally:
        factory.close()


def _started(server: RedisServer | RedisCluster) -> RedisServer | RedisCluster:
    try:
        return server.__enter__()
    except RedisNotInstalledError as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)  # outside the except: the hint alone, no traceback


def _options(request: pytest.FixtureRequest) -> dict:
    """Config directives given by indirect parametrisation, e.g.
    ``@pytest.mark.parametrize("redis_server", [{"appendonly": True}], indirect=True)``."""
    return dict(getattr(request, "param", None) or {})


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path) -> Iterator[RedisServer]:
    """A fresh redis-server for this test on a unix socket in ``tmp_path / "redis"``.

    ``redis_server.url`` is ``unix:///.../redis.sock``; options (``appendonly``, ``maxmemory``,
    ``maxmemory_policy``, ``requirepass``, ...) come from indirect parametrisation.
    """
    server = _started(RedisServer(tmp_path / "redis", unix_socket=True, **_options(request)))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server_tcp(request: pytest.FixtureRequest, tmp_path) -> Iterator[RedisServer]:
    """A fresh redis-server for this test on a free TCP port of 127.0.0.1 (data in ``tmp_path``).

    ``redis_server_tcp.url`` is ``redis://127.0.0.1:PORT/0``; options as for ``redis_server``.
    """
    server = _started(RedisServer(tmp_path / "redis-tcp", **_options(request)))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url_tcp(redis_server_tcp: RedisServer) -> str:
    """The URL of a fresh TCP redis-server for this test: ``redis://127.0.0.1:PORT/0``."""
    return redis_server_tcp.url


@pytest.fixture(params=["unix", "tcp"])
def redis_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """The URL of a fresh redis-server for this test; a test using it runs once on a unix socket
    (``unix:///.../redis.sock``) and once on TCP (``redis://127.0.0.1:PORT/0``)."""
    server = _started(RedisServer(tmp_path / f"redis-{request.param}", unix_socket=request.param == "unix"))
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_shared_server(tmp_path_factory) -> Iterator[RedisServer]:
    """One redis-server on a unix socket for the whole session, shared by the tests that run the
    store contract and the pipeline semantics on Redis: like ``redis_cluster``, each test keeps
    to its own ``redis_key_prefix`` and never deletes another's keys."""
    server = _started(RedisServer(tmp_path_factory.mktemp("redis-shared"), unix_socket=True))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_shared_url(redis_shared_server: RedisServer) -> str:
    """``unix:///.../redis.sock`` of the session's shared redis-server."""
    return redis_shared_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[RedisCluster]:
    """One 3-master Redis Cluster for the whole session (creating one takes about 2 s).

    Shared by every test that uses it, so each test must keep to its own keys: put
    ``redis_key_prefix`` (unique per test) in front of every key, and never FLUSHALL or
    FLUSHDB. ``redis_cluster.startup_nodes`` feeds ``redis.cluster.RedisCluster``;
    ``redis_cluster.url`` is the first node (``redis://127.0.0.1:P1``).
    """
    cluster = _started(RedisCluster(tmp_path_factory.mktemp("redis-cluster")))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_key_prefix() -> str:
    """A key prefix unique to this test (``t<hex>:``), for isolation on a shared server or cluster."""
    return f"t{uuid.uuid4().hex[:12]}:"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that wait for an early process run last, in their order (tests/_early.py)."""
    items.sort(key=_early.waits)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the slow processes the selected tests only wait for (tests/_early.py)."""
    if not session.config.option.collectonly:
        _early.start_selected(session.items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Last resort: stop any redis-server a test started and did not stop, and any early
    process still running."""
    redis_servers.stop_all()
    _early.stop_all()
