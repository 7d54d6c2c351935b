"""The storage engines the tests run against, one factory per engine.

``tests/test_store_contract.py`` runs every guarantee of the store protocol against each entry
of :data:`ENGINES`; the pipeline-level semantics tests (``tests/test_pipelines.py``) run against
each entry of :data:`PIPELINE_ENGINES`. A new engine joins both by adding a factory here.

A factory stands for one store (a directory, a memory object, a server) for the length of one
test. It opens engine objects on that store, "reopens" it (a new engine object on the same data),
damages a key, and says whether other processes can open the same store. A factory that needs
pytest fixtures (a Redis server) names them in ``fixtures``; :func:`make` builds it with them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import diskcache
import pytest

from cachesaver.store import open_store
from cachesaver.store.diskcache import DiskcacheStore
from cachesaver.store.memory import MemoryStore
from cachesaver.store.protocol import SampleStore
from cachesaver.store.redis import RedisStore


class EngineFactory:
    """One store of one engine, under ``tmp_path``; :meth:`close` releases what it opened."""

    name = "?"
    engine_class: type = object
    open_code: str | None = None
    """Python statements that bind ``store`` to this same store in another process, given
    ``location`` (a string); None when the engine cannot be shared between processes."""
    location = ""
    fixtures: tuple[str, ...] = ()
    """Names of the pytest fixtures the factory is built with (keyword arguments of __init__)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._opened: list[SampleStore] = []

    def open(self) -> SampleStore:
        """An engine object on this factory's store, made by ``open_store`` from what a user
        passes as ``cache=``; the first call creates the store."""
        store, owned = open_store(self.pipeline_cache())
        if owned:
            self._opened.append(store)
        return store

    def reopen(self, store: SampleStore) -> SampleStore:
        """Close ``store`` (when closing keeps the data) and open a new engine object on the
        same store."""
        store.close()
        return self.open()

    def damage(self, store: SampleStore, key: str) -> None:
        """Make ``key``'s stored entry undecodable (``key`` has at least one sample)."""
        raise NotImplementedError

    def pipeline_cache(self) -> Any:
        """What a pipeline of the test is given as ``cache=``, the same store every time."""
        raise NotImplementedError

    lose_storage: Callable[[SampleStore], None] | None = None
    """When set: make the store's storage disappear under ``store`` (a deleted directory), so
    its next I/O fails."""

    def close(self) -> None:
        for store in self._opened:
            store.close()


class MemoryEngine(EngineFactory):
    """One :class:`MemoryStore`, handed as is to every pipeline (which never closes it)."""

    name = "memory"
    engine_class = MemoryStore

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.memory = MemoryStore(tmp_path.name)

    def reopen(self, store: SampleStore) -> SampleStore:
        # Its data lives in the object: a new look at the same memory object, never closed.
        return self.open()

    def damage(self, store: SampleStore, key: str) -> None:
        self.memory.damage(key)

    def pipeline_cache(self) -> Any:
        return self.memory


class DiskcacheDirectoryEngine(EngineFactory):
    """A diskcache directory, passed as a path (each engine object opens and closes it)."""

    name = "diskcache-directory"
    engine_class = DiskcacheStore
    open_code = "from cachesaver.store import open_store\nstore, _ = open_store(location)"

    def __init__(self, tmp_path: Path, directory: Path | None = None) -> None:
        super().__init__(tmp_path)
        self.directory = directory if directory is not None else tmp_path / "cache"
        self.location = str(self.directory)

    def pipeline_cache(self) -> Any:
        return self.directory

    def damage(self, store: SampleStore, key: str) -> None:
        """Overwrite the bytes of ``key``'s head entry, as a torn write or a bad disk would."""
        cache = diskcache.Cache(str(self.directory))
        try:
            changed = cache._sql(
                "UPDATE Cache SET value = ? WHERE key = ?", (b"\x80\x04\x95", "cachesaver/1/head/" + key)
            ).rowcount
        finally:
            cache.close()
        assert changed == 1, f"no head entry for {key} to damage"

    def _lose_storage(self, store: SampleStore) -> None:
        store.release_thread()  # an open SQLite connection would keep the deleted file alive
        shutil.rmtree(self.directory)

    lose_storage = _lose_storage


class DiskcachePassedCacheEngine(DiskcacheDirectoryEngine):
    """A ``diskcache.Cache`` the user opened and passes in; the engine never closes it."""

    name = "diskcache-passed-Cache"
    open_code = (
        "import diskcache\nfrom cachesaver.store import open_store\n"
        "store, _ = open_store(diskcache.Cache(location, eviction_policy='none'))"
    )

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.user_caches = [diskcache.Cache(str(self.directory), eviction_policy="none")]

    def pipeline_cache(self) -> Any:
        return self.user_caches[-1]

    def reopen(self, store: SampleStore) -> SampleStore:
        """A new user Cache on the same directory, as a later program would open."""
        store.close()
        self.user_caches.append(diskcache.Cache(str(self.directory), eviction_policy="none"))
        return self.open()

    def close(self) -> None:
        super().close()
        for cache in self.user_caches:
            cache.close()


class RedisEngine(EngineFactory):
    """A prefix of its own (``redis_key_prefix``) on the session's shared redis-server, passed as
    a ``unix://`` URL with ``prefix=``; each engine object opens and closes its own client."""

    name = "redis"
    engine_class = RedisStore
    open_code = "from cachesaver.store import open_store\nstore, _ = open_store(location)"
    fixtures = ("redis_shared_url", "redis_key_prefix")

    def __init__(self, tmp_path: Path, redis_shared_url: str, redis_key_prefix: str) -> None:
        super().__init__(tmp_path)
        self.location = f"{redis_shared_url}?prefix={quote(redis_key_prefix, safe='')}"

    def pipeline_cache(self) -> Any:
        return self.location

    def damage(self, store: SampleStore, key: str) -> None:
        """Put what cachesaver never writes in ``key``'s entries: a string where its head hash
        is, bytes that do not unpickle as its first sample."""
        import redis

        assert isinstance(store, RedisStore)
        samples, head, _ = store.entry_keys(key)
        with redis.Redis.from_url(self.location.split("?")[0]) as client:
            assert client.exists(samples), f"no samples stored for {key} to damage"
            client.lset(samples, 0, b"\x80\x04\x95")
            client.delete(head)  # the test's own prefix: never another test's keys
            client.set(head, b"not a hash")


class RedisClusterEngine(RedisEngine):
    """A prefix of its own on the session's 3-master Redis Cluster (``redis+cluster://`` URL)."""

    name = "redis-cluster"
    fixtures = ("redis_cluster", "redis_key_prefix")

    def __init__(self, tmp_path: Path, redis_cluster: Any, redis_key_prefix: str) -> None:
        EngineFactory.__init__(self, tmp_path)
        self.cluster = redis_cluster
        self.location = f"{redis_cluster.cluster_url}?prefix={quote(redis_key_prefix, safe='')}"

    def damage(self, store: SampleStore, key: str) -> None:
        import redis.cluster

        assert isinstance(store, RedisStore)
        samples, head, _ = store.entry_keys(key)
        client = redis.cluster.RedisCluster.from_url(self.cluster.url)
        try:
            client.lset(samples, 0, b"\x80\x04\x95")
            client.delete(head)
            client.set(head, b"not a hash")
        finally:
            client.close()


class DiskcacheTmpPathEngine(DiskcacheDirectoryEngine):
    """A diskcache in the test's ``tmp_path`` itself (the usual ``cache=`` of a pipeline test)."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path, directory=tmp_path)


ENGINES: dict[str, type[EngineFactory]] = {
    factory.name: factory
    for factory in (MemoryEngine, DiskcacheDirectoryEngine, DiskcachePassedCacheEngine, RedisEngine, RedisClusterEngine)
}
"""Every engine the store contract runs against, by test id."""

PIPELINE_ENGINES: dict[str, type[EngineFactory]] = {
    "diskcache": DiskcacheTmpPathEngine,
    "memory": MemoryEngine,
    "redis": RedisEngine,
}
"""The engines the pipeline-level semantics run against, each made from the test's
``tmp_path``: diskcache as a directory (``tmp_path`` itself, the usual ``cache=``), the memory
engine (one object shared by every pipeline of the test), and Redis (a URL with a prefix of
the test's own on the session's shared server; each pipeline opens its own client). Redis
Cluster runs the store contract only: a cluster client costs a topology query per pipeline,
which would add some 15 s to this suite for no guarantee the contract does not already check."""


def make(factory: type[EngineFactory], tmp_path: Path, request: pytest.FixtureRequest) -> EngineFactory:
    """An instance of ``factory`` for this test, given the fixtures it names."""
    return factory(tmp_path, **{name: request.getfixturevalue(name) for name in factory.fixtures})


def engines_with(capability: str) -> list[str]:
    """The names of the engines whose factory has ``capability`` (``open_code``, ``lose_storage``)."""
    return [name for name, factory in ENGINES.items() if getattr(factory, capability) is not None]


# The fixtures of the contract suites: every engine of ENGINES, and a store it opens.


@pytest.fixture(params=list(ENGINES))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineFactory]:
    factory = make(ENGINES[request.param], tmp_path, request)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def store(engine: EngineFactory) -> SampleStore:
    return engine.open()
