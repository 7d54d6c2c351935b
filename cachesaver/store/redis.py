"""The Redis engine: samples and replay records on a Redis server or a Redis Cluster.

Implements :class:`~cachesaver.store.protocol.SampleStore` and
:class:`~cachesaver.store.protocol.InspectableStore` over redis-py (``pip install
'cachesaver[redis]'``; redis-py is imported only when a Redis store is opened). ``cache=``
takes a URL, read by redis-py's ``from_url``:

* ``redis://[user:password@]host[:port][/db]``, ``rediss://...`` (TLS),
  ``unix://[user:password@]/path/redis.sock[?db=N]``: one server;
* ``redis+cluster://[user:password@]host[:port]`` (or ``rediss+cluster://``): a Redis Cluster,
  through redis-py's ``RedisCluster``, any node as the entry point (db 0 only);

plus two query parameters of cachesaver's own: ``prefix=`` (default ``cachesaver``) and
``retry_s=`` (see *Faults*); redis-py's own parameters (``socket_timeout=``,
``ssl_cert_reqs=``, ...) pass through. A ``redis.Redis`` or ``redis.cluster.RedisCluster``
client can be passed instead (``RedisStore(client, prefix=...)``); it is used as is and never
closed.

Layout. Every key starts with ``<prefix>:1:``; the engine never deletes a sample or a record
(nor runs FLUSHDB / FLUSHALL), so stores with other prefixes, and other data, can share the
server; the keys of shared runs (run records, claim states, leases: see
:mod:`cachesaver.store.redis_shared`) expire, or are removed when their run or lease ends. The
keys of one cache key share a hash tag ``{<16 hex digits>}`` (a digest of the cache key), so they
live in one cluster slot: a LIST of its samples (index i = position i: dense, append-only), a
HASH of its sample count and first :data:`~cachesaver.store.protocol.CONSULTED_RECORDS`
records (each with its first-written position), a HASH of its later records and a HASH of what
lookups never read: its canonical request and when its samples were stored, written by the
same commit script (see :mod:`~cachesaver.store.redis_script`). Namespace names are one more
HASH, written by the script of the commit that first records a namespace through this store
object (on a cluster, where that hash has a slot of its own, by one call after that commit:
a name it could not write is tried again with a later commit, and a namespace without a name
shows by its digest). The keys of shared runs (run records, claim states, leases: see
:mod:`cachesaver.store.redis_shared`) are the exception to "never deletes": they expire, or are
removed when their run or lease ends. A sample is a pickle of its
``(data, usage)`` pair, as in the diskcache engine: point cachesaver only at a server you
trust, since whoever can write to it can run code in every process that reads from it.

What is atomic.

* **One server**: a commit is one Lua script: every append, every record and the commit's token
  become visible together, or (a refused or failed commit) none of them.
* **Redis Cluster**: one script per hash slot the commit touches (a script cannot span slots),
  run one after the other: each cache key's samples and records commit together, with the
  token's share for that slot. A commit that fails between two slots (a node lost) raises
  :class:`~cachesaver.errors.StoreUnavailableError` with the slots before it written: with a
  token, a retry writes exactly the missing slots (``applied`` is True only once all are in);
  without one, a retry may store those samples a second time, at new indices (nothing is lost
  and no index is reused). Arguments are checked and samples pickled before anything is sent,
  so a refused commit writes nothing on a cluster too.

Round trips: ``view`` and ``read`` cost one pipelined round trip (one per cluster node they
touch, sent to every node before any reply is read), whatever the number of keys; a commit
costs one (one per slot on a cluster); a script call costs two more after a server restart (the
script is loaded again). A view is one read-only script per :data:`VIEW_KEYS_PER_SCRIPT` keys
(on a cluster, per node: it reads the keys of all the node's hash slots), replying in one flat
array only what the lookup round needs, so a lookup round costs the engine a few script calls
(four for a round of 256 keys), not a command per key; it carries the samples the asked records
name (a replay needs no other read), or else the first :data:`READ_ALONG_SAMPLES` of each key.
Each key's view is one consistent snapshot (no commit seen in part); the keys of different
scripts may be read on either side of a commit, as views racing with commits always may.

Faults, each a :class:`~cachesaver.errors.StoreError` subclass, never a hang:

* Connection trouble (a refused or dropped connection, a server restarting or loading its
  append-only file, a socket time-out, a cluster failing over) is retried with a doubling pause
  for up to ``retry_s`` seconds (default :data:`RETRY_S`), then raises
  :class:`~cachesaver.errors.StoreUnavailableError`. Sockets time out after
  :data:`SOCKET_TIMEOUT_S` (connecting: :data:`CONNECT_TIMEOUT_S`) unless the URL sets
  ``socket_timeout`` / ``socket_connect_timeout``. Every commit carries a nonce the script
  records with it (a small key that expires after 10 minutes; a caller's token is kept for
  good), so a commit the engine retries after a lost reply is applied once. Only a commit
  given up on after its script ran (the reply lost, then the server unreachable for all of
  ``retry_s``) may be stored again by the cache stage's later retry, at new indices.
* A full server (``maxmemory`` reached under ``noeviction``) refuses a commit whole:
  :class:`~cachesaver.errors.StoreFullError`, not retried by the engine (the cache stage keeps
  the samples and retries them later, as for a full disk).
* Wrong credentials, or an ACL that denies a command: :class:`~cachesaver.errors.ConfigurationError`
  naming the URL without its password.
* A server whose ``maxmemory-policy`` is not ``noeviction`` may evict stored samples: a warning is
  logged when the store opens (once per location). An evicted sample reads as
  :class:`~cachesaver.errors.CorruptStoreError`; a key whose samples list or head hash was
  evicted (its count and its list disagree) refuses commits with CorruptStoreError rather than
  hand out an index again.
* An entry cachesaver did not write (a key of the wrong type, bytes that do not unpickle) is a
  :class:`~cachesaver.errors.CorruptStoreError` for that cache key only.

``wait_s`` and :class:`~cachesaver.errors.StoreLockedError`: commits of other processes never
make a commit wait (the server runs scripts one at a time). Commits through one
:class:`RedisStore` object run one at a time, hook calls included (the commit hook's contract);
a commit waits for another thread's commit through the same object at most ``wait_s`` (None:
``store_timeout_s``), then raises StoreLockedError with nothing written.

Threads: redis-py clients are thread-safe (a pool of connections), so any thread may call the
store; ``release_thread`` has nothing to release. Calls cost network round trips, so the cache
stage runs them on its store threads, never on the event loop (:attr:`RedisStore.inline_io`).

>>> RedisStore.describe("redis://user:secret@cache.example:6380/2?prefix=team")
'redis://user@cache.example:6380/2?prefix=team'
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import quote

from ..errors import (
    ConfigurationError,
    CorruptStoreError,
    StoreError,
    StoreFullError,
    StoreLockedError,
    StoreUnavailableError,
)
from .redis_loop import LoopConnection
from .redis_script import COMMIT_SCRIPT, COMMIT_SHA, FORGET_SCRIPT, FORGET_SHA, VIEW_SCRIPT
from .redis_views import (
    READ_ALONG_SAMPLES,
    RECORDED_SAMPLES,
    VIEW_KEYS_PER_SCRIPT,
    asked_tags as _asked,
    decode_views,
    record_indices as _indices,
    slot_tag as _slot_tag,
    view_chunks as _chunks,
    view_command,
)
from .redis_urls import (
    CONNECT_TIMEOUT_S,
    SOCKET_TIMEOUT_S,
    RedisUrl,
    check_prefix,
    describe as describe_url,
    is_redis_url,
    parse_url,
)
from .protocol import (
    CONSULTED_RECORDS,
    Append,
    ClaimNew,
    CommitHook,
    KeyEntry,
    KeyView,
    RecordWrite,
    StoredSample,
    import_token_prefix,
    namespace_digest,
    namespace_prefix,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "LOOP_RETRY_S",
    "DEFAULT_PREFIX",
    "READ_ALONG_SAMPLES",
    "RECORDED_SAMPLES",
    "RETRY_S",
    "SOCKET_TIMEOUT_S",
    "VIEW_KEYS_PER_SCRIPT",
    "RedisStore",
    "is_redis_client",
    "is_redis_url",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PREFIX = "cachesaver"
"""What every key starts with unless ``prefix=`` says otherwise."""
RETRY_S = 5.0
"""How long a call keeps retrying connection trouble before StoreUnavailableError, by default."""
LOOP_RETRY_S = 30.0
"""After a failure to open the event-loop connection of :meth:`RedisStore.view_async`, views
run on the store's threads for this long before it is tried again."""
STORE_TIMEOUT_S = 30.0
"""How long a commit waits for another thread's commit through the same store, by default."""

_LAYOUT = "1"
_COMMIT_MEMO_S = 600  # how long a commit's nonce is kept, so a retry after a lost reply is a no-op
_FIRST_PAUSE_S = 0.02
_MAX_PAUSE_S = 0.5
_warned_locations: set[str] = set()



def _redis() -> Any:
    """The redis package, or ConfigurationError saying how to install it."""
    try:
        import redis
        import redis.cluster
    except ImportError as exc:
        raise ConfigurationError(
            "a Redis cache needs redis-py, which is not installed: pip install 'cachesaver[redis]'"
        ) from exc
    return redis


@lru_cache(maxsize=None)
def _driver_info() -> Any:
    """redis-py's ``driver_info`` naming cachesaver, one object for the whole process, given to
    a store opened from a URL that names no client itself: a server from Redis 7.2 lists the
    store's connections as ``lib-name=redis-py(cachesaver_v<version>)`` (``CLIENT LIST``), and
    a new connection does not read redis-py's version from its installed metadata again (about
    1 ms each). None on a redis-py without that option (before 7.2); a cluster client of
    redis-py 7.2 to 7.4 does not hand it to its nodes, which then keep redis-py's defaults."""
    try:
        import redis
        from redis.driver_info import DriverInfo
    except ImportError:  # an older redis-py: its defaults
        return None
    from .. import __version__

    version = getattr(redis, "__version__", None)
    info = DriverInfo(name="redis-py", lib_version=version) if isinstance(version, str) else DriverInfo()
    try:
        info.add_upstream_driver("cachesaver", __version__)
    except ValueError:  # a version redis-py will not list (a local build's): redis-py's own name
        pass
    return info


class _Errors:
    """redis-py's exception classes, sorted by what the engine does with them."""

    def __init__(self, redis: Any) -> None:
        exc = redis.exceptions
        self.auth: tuple[type[BaseException], ...] = tuple(
            getattr(exc, name)
            for name in ("AuthenticationError", "AuthenticationWrongNumberOfArgsError", "AuthorizationError", "NoPermissionError")
            if hasattr(exc, name)
        )
        self.no_permission: type[BaseException] = exc.NoPermissionError
        self.full: type[BaseException] = exc.OutOfMemoryError
        self.no_script: type[BaseException] = exc.NoScriptError
        self.transient: tuple[type[BaseException], ...] = (
            exc.ConnectionError, exc.TimeoutError, exc.ClusterError, exc.TryAgainError, exc.ReadOnlyError,
            exc.AskError, exc.RedisClusterException,
        )
        self.base: type[BaseException] = exc.RedisError
        self.response: type[BaseException] = exc.ResponseError


@lru_cache(maxsize=1)
def _errors() -> _Errors:
    return _Errors(_redis())


def _take_connection(pool: Any) -> Any:
    """A connection of redis-py's ``pool`` (which checks it is connected and has no stray
    data); redis-py before 5.1 wants a command name."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("EVALSHA")


@lru_cache(maxsize=1)
def _pack_command() -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis's command packer (a C function over every argument at once), or None without
    hiredis (redis-py's own packer is used then)."""
    try:
        import hiredis
    except ImportError:
        return None
    pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
    return pack


@lru_cache(maxsize=65536)
def _slot_of(key: str) -> int:
    """The cluster hash slot of ``key``'s entries."""
    from redis.crc import key_slot

    return int(key_slot(b"{" + _slot_tag(key) + b"}"))


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def is_redis_client(value: Any) -> bool:
    """Whether ``value`` is a redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``);
    never imports redis-py for an object that does not come from it."""
    if not any(cls.__module__.split(".")[0] == "redis" for cls in type(value).__mro__):
        return False
    try:
        redis = _redis()
    except ConfigurationError:
        return False
    return isinstance(value, (redis.Redis, redis.cluster.RedisCluster))


def _check_seconds(name: str, value: Any, *, zero_ok: bool) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigurationError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class _Group:
    """The part of a commit one script writes: cache keys of one slot, their appends and records."""

    keys: list[str]
    appends: list[tuple[int, int, int, str, bytes]]  # (position in the commit, key number from 1, size, time, request)
    records: list[tuple[int, bytes, list[tuple[str, int, int]]]]  # (key number, tag, parts)
    blobs: list[bytes]
    claims: list[tuple[bytes, bytes, int, int, bytes]] = field(default_factory=list)
    """A shared run's claims: (claims hash, pending hash, append number, count, ticket)."""


class RedisStore:
    """Samples and replay records on Redis; see the module docstring.

    ``target`` is a URL (see the module docstring) or a redis-py client (``redis.Redis`` or
    ``redis.cluster.RedisCluster``, used as is and never closed). ``prefix`` (default: the URL's
    ``prefix=``, else ``cachesaver``) starts every key; ``retry_s`` (default: the URL's
    ``retry_s=``, else :data:`RETRY_S`) bounds how long a call retries connection trouble;
    ``store_timeout_s`` bounds how long a commit waits for another thread's commit through this
    object.

    Opening asks the server for its memory policy (one round trip, retried like any call):
    wrong credentials raise ConfigurationError here, an unreachable server
    StoreUnavailableError, and an evicting policy logs a warning. On one server it then opens
    the connection :meth:`view_async` uses on a thread of its own, without waiting for it (a
    view asked before it is open runs on a store thread, as after a drop); :meth:`close` joins
    that thread, so it may wait for that connection's opening (bounded by the client's
    connect and socket timeouts; the cache stage closes its stores off the event loop).
    """

    inline_io = False
    """Calls cost a network round trip (and may retry for ``retry_s``): the cache stage runs
    them on its store threads, never on the event loop."""

    writable = True
    """A Redis store is always opened for writing (a read-only replica refuses commits with
    StoreUnavailableError)."""

    def __init__(
        self,
        target: Any,
        *,
        prefix: str | None = None,
        retry_s: float | None = None,
        store_timeout_s: float = STORE_TIMEOUT_S,
    ) -> None:
        redis = _redis()
        self._errors = _errors()
        self.store_timeout_s = _check_seconds("store_timeout_s", store_timeout_s, zero_ok=False)
        self._write_lock = threading.Lock()
        self._closed = False
        self._loop: LoopConnection | None = None  # the connection of view_async, once opened
        self._loop_wanted = True  # False: this server or client cannot be driven from the loop
        self._loop_opening = threading.Lock()
        self._loop_retry_at = 0.0  # after a failure to open it, when to try again
        self._loop_warned = False
        self._loop_opener: threading.Thread | None = None  # opens that connection once the store is open
        self._pid = os.getpid()  # a forked child gets a lock and opener of its own (see _open_loop)
        self.loop_views = 0  # views served by view_async
        self._named: set[str] = set()  # namespaces whose names this object has stored
        self._stale_layout = False  # a cluster view met connection trouble: ask for the layout again
        self._views_by_slot = False  # a cluster node refused a view script spanning its slots
        if isinstance(target, str):
            parsed = parse_url(target)
            chosen_prefix = prefix if prefix is not None else parsed.prefix
            self.prefix = check_prefix(DEFAULT_PREFIX if chosen_prefix is None else chosen_prefix)
            chosen = retry_s if retry_s is not None else parsed.retry_s
            self.retry_s = _check_seconds("retry_s", RETRY_S if chosen is None else chosen, zero_ok=True)
            self.cluster = parsed.cluster
            self._location = describe_url(target, self.prefix)
            self._owned = True
            self.client = self._call("connect to", lambda: self._connect(redis, parsed))
        elif is_redis_client(target):
            self.prefix = check_prefix(DEFAULT_PREFIX if prefix is None else prefix)
            self.retry_s = _check_seconds("retry_s", RETRY_S if retry_s is None else retry_s, zero_ok=True)
            self.cluster = isinstance(target, redis.cluster.RedisCluster)
            self.client = target
            self._owned = False
            self._location = self._client_location(target)
            if target.get_encoder().decode_responses:
                raise ConfigurationError(
                    f"the redis client for {self._location} decodes responses (decode_responses=True), "
                    "but cachesaver stores bytes (pickles): pass a client made without it"
                )
        else:
            raise ConfigurationError(
                f"a Redis store needs a redis:// / rediss:// / unix:// / redis+cluster:// URL or a "
                f"redis-py client, got {type(target).__name__}"
            )
        self._base = _utf8(self.prefix) + b":" + _LAYOUT.encode() + b":"
        try:
            self._check_server()
        except BaseException:
            self.close()
            raise
        if not self.cluster:  # the first lookup round can then run from the event loop
            self._loop_opener = threading.Thread(
                target=self._open_loop, name="cachesaver-redis-loop-open", daemon=True
            )
            self._loop_opener.start()

    # -- opening -----------------------------------------------------------------------------

    @staticmethod
    def describe(url: str) -> str:
        """``url`` as the store names it: without its password, with its ``prefix``."""
        return describe_url(url)

    def _connect(self, redis: Any, parsed: RedisUrl) -> Any:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries inside redis-py: the engine's own loop retries, within retry_s, and knows
        # which calls are safe to repeat.
        options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), **parsed.timeouts}
        info = None if parsed.names_client else _driver_info()  # a name the URL gives is kept
        if info is not None:
            options["driver_info"] = info
        try:
            if parsed.cluster:
                return redis.cluster.RedisCluster.from_url(parsed.client_url, **options)
            client = redis.Redis.from_url(parsed.client_url, **options)
            pool = client.connection_pool
            pool.connection_class(**pool.connection_kwargs)  # checks the URL's options; no I/O
            return client
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot open the Redis store {self._location}: {exc}") from exc

    def _client_location(self, client: Any) -> str:
        if self.cluster:
            node = client.get_default_node()
            return f"redis+cluster://{node.host}:{node.port}?prefix={quote(self.prefix, safe='')}"
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        prefix = quote(self.prefix, safe="")
        if "path" in kwargs:
            return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}&prefix={prefix}"
        return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}?prefix={prefix}"

    def _check_server(self) -> None:
        """Check the credentials, warn about an evicting memory policy, load the view script."""
        errors = self._errors
        redis = _redis()

        def ask() -> list[str]:
            try:
                if self.cluster:
                    info = self.client.info("memory", target_nodes=redis.cluster.RedisCluster.PRIMARIES)
                else:
                    info = self.client.info("memory")
            except errors.no_permission:
                self.client.ping()  # INFO denied by an ACL: the credentials still get checked
                return []
            parts = [info] if "maxmemory_policy" in info else list(info.values())
            return [str(part.get("maxmemory_policy", "noeviction")) for part in parts]

        policies = self._call("connect to", ask)
        # Loaded now, so a lookup round costs one round trip from the first (every primary of a
        # cluster); a server restarted since gets it again at its first NOSCRIPT.
        self._call("connect to", lambda: self.client.script_load(VIEW_SCRIPT))
        evicting = sorted({p for p in policies if p != "noeviction"})
        if evicting and self._location not in _warned_locations:
            _warned_locations.add(self._location)
            logger.warning(
                "Redis at %s uses maxmemory-policy %s: when it is full it may evict stored samples, and "
                "reading an evicted sample raises CorruptStoreError. Set maxmemory-policy noeviction on "
                "that server to keep every sample (a full server then refuses writes; cachesaver keeps "
                "the new samples and retries them).",
                self._location, " / ".join(evicting),
            )

    # -- keys --------------------------------------------------------------------------------

    def entry_keys(self, key: str) -> tuple[bytes, bytes, bytes]:
        """The Redis keys holding cache key ``key``: its samples list, its head hash (sample
        count and first records) and its later-records hash; all in one hash slot."""
        return self._names(key)

    def _names(self, key: str) -> tuple[bytes, bytes, bytes]:
        """The samples list, head hash and later-records hash of ``key``."""
        middle = b"{" + _slot_tag(key) + b"}:"
        raw = _utf8(key)
        return (self._base + middle + b"s:" + raw, self._base + middle + b"h:" + raw, self._base + middle + b"r:" + raw)

    def _info_name(self, key: str) -> bytes:
        """The info hash of ``key`` (its request and its samples' times), in its hash slot."""
        return self._base + b"{" + _slot_tag(key) + b"}:i:" + _utf8(key)

    def _namespaces_name(self) -> bytes:
        return self._base + b"{" + _slot_tag("namespaces") + b"}:namespaces"

    def claim_keys(self, generation: str, key: str) -> tuple[bytes, bytes]:
        """The claims hash and pending hash of a shared run's ``generation`` on cache key
        ``key``, in the key's hash slot (see :mod:`cachesaver.store.redis_shared`)."""
        middle = b"{" + _slot_tag(key) + b"}:"
        tail = _utf8(generation) + b":" + _utf8(key)
        return self._base + middle + b"c:" + tail, self._base + middle + b"p:" + tail

    def lease_key(self, key: str) -> bytes:
        """The single-flight lease of cache key ``key``, in the key's hash slot."""
        return self._base + b"{" + _slot_tag(key) + b"}:l:" + _utf8(key)

    def run_key(self, run_id: str) -> bytes:
        """The record of shared run ``run_id`` (a hash slot of its own)."""
        return self._base + b"{" + _slot_tag("run:" + run_id) + b"}:run:" + _utf8(run_id)

    def shared_runs(self) -> Any:
        """This store's :class:`~cachesaver.store.protocol.SharedRunStore` (see
        :mod:`cachesaver.store.redis_shared`)."""
        from .redis_shared import RedisSharedRuns

        return RedisSharedRuns(self)

    def _token_key(self, token: str) -> bytes:
        return self._base + b"{" + _slot_tag("token:" + token) + b"}:token:" + _utf8(token)

    # -- calls, retries and errors -------------------------------------------------------------

    @property
    def location(self) -> str:
        return self._location

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store {self._location} is closed; open a new one")

    def _call(self, action: str, func: Callable[[], T]) -> T:
        """``func()``, retrying connection trouble for up to ``retry_s``; every redis-py error
        translated (see the module docstring). ``func`` must be safe to run again."""
        errors = self._errors
        deadline: float | None = None
        pause = _FIRST_PAUSE_S
        while True:
            try:
                return func()
            except ConfigurationError:
                raise
            except Exception as exc:
                if _caused_by(exc, errors.auth):
                    raise ConfigurationError(
                        f"Redis at {self._location} refused the credentials or denied a command ({exc}); "
                        "check the user name and password in the URL (or the client) and the user's ACL"
                    ) from exc
                if isinstance(exc, errors.full):
                    raise StoreFullError(
                        f"Redis at {self._location} is full (maxmemory reached; {exc}) and refused to "
                        f"{action} it; nothing was written. Free memory on the server or raise maxmemory; "
                        "the cache stage keeps the new samples and stores them once it accepts writes"
                    ) from exc
                if not isinstance(exc, errors.transient) and not _busy(exc, errors.base):
                    if isinstance(exc, errors.base):
                        raise StoreError(f"Redis at {self._location} failed to {action} it: {exc}") from exc
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_s
                if now + pause > deadline:
                    raise StoreUnavailableError(
                        f"could not {action} Redis at {self._location}: {type(exc).__name__}: {exc} "
                        f"(retried for {self.retry_s:g} s, retry_s). Check that the server runs and is "
                        "reachable; stored samples are safe on the server"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)

    def _retryable(self, reply: BaseException) -> bool:
        """Whether an error reply is one :meth:`_call` retries (or a credentials error, which it
        translates)."""
        errors = self._errors
        return isinstance(reply, errors.transient) or isinstance(reply, errors.auth) or _busy(reply, errors.base)

    def _raise_transient(self, replies: Sequence[Any]) -> None:
        """Raise the first reply of a pipeline that is an error worth retrying (or a credentials
        error), so :meth:`_call` handles it; other error replies stay in place."""
        for reply in replies:
            if isinstance(reply, BaseException) and self._retryable(reply):
                raise reply

    def _pipeline(self, build: Callable[[Any], None]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        build(pipe)
        replies = list(pipe.execute(raise_on_error=False))
        self._raise_transient(replies)
        return replies

    # -- reading -------------------------------------------------------------------------------

    def view(
        self, keys: Sequence[str], tags: Sequence[tuple[str, str]] = ()
    ) -> dict[str, KeyView | StoreError]:
        """See :meth:`cachesaver.store.protocol.SampleStore.view`: one round trip (on a cluster,
        one per node the keys live on, all sent before any reply is read), running the view
        script (:data:`~cachesaver.store.redis_script.VIEW_SCRIPT`) on at most
        :data:`VIEW_KEYS_PER_SCRIPT` keys at a time, each reply decoded as it arrives while the
        servers go on with the next. The views of one script are one consistent snapshot: no
        commit is seen in part. A view carries the samples of the asked records when every
        asked tag has one (at most :data:`RECORDED_SAMPLES` of them: a replay needs exactly
        those), else the first :data:`READ_ALONG_SAMPLES`.

        On a cluster one script reads the keys of every hash slot of its node; keys whose slot
        the client placed on the wrong node (moved, or migrating) are read again by their slot
        through redis-py's cluster client, which follows the redirection, and connection
        trouble makes the next attempt ask the cluster for its layout again. (Redis runs such a
        script, whose keys it is not told in advance; a server or proxy that refuses it makes
        this store read one hash slot per script from then on, with a warning.)"""
        self._check_open()
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        asked = _asked(tags)
        if self.cluster:
            return self._call("read from", lambda: self._view_cluster(unique, asked))
        chunks = _chunks(unique)
        batch = (self.client, chunks, [self._view_command(chunk, asked, declared=True) for chunk in chunks])

        def run() -> dict[str, KeyView | StoreError]:
            out: dict[str, KeyView | StoreError] = {}
            self._exchange_views([batch], asked, out)
            return out

        views = self._call("read from", run)
        if self._loop_wanted and (self._loop is None or not self._loop.usable):
            self._open_loop(wait=False)  # being opened elsewhere: this view does not wait for it
        return views

    async def view_async(
        self, keys: Sequence[str], tags: Sequence[tuple[str, str]] = ()
    ) -> dict[str, KeyView | StoreError] | None:
        """:meth:`view` from the event loop, without blocking it and without a thread: the same
        views, from one round trip on a connection of its own (see
        :mod:`cachesaver.store.redis_loop`). None when it cannot serve them now, having changed
        nothing: a cluster; TLS; that connection not open yet (opening the store starts
        opening it; after a drop, the next :meth:`view`, on a store thread, opens it again) or
        dropped; another view on it in progress;
        or an error reply (a restarted server without the script, a busy one). The caller then
        calls :meth:`view` on a thread, which retries, reloads the script and reports errors."""
        loop = self._loop
        if loop is None or loop.closed or self._closed or self.cluster:
            return None  # the next view, on a thread, opens a new one
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        asked = _asked(tags)
        chunks = _chunks(unique)
        pack = _pack_command()
        if pack is None:
            return None
        packed = b"".join([pack(self._view_command(chunk, asked, declared=True)) for chunk in chunks])
        out: dict[str, KeyView | StoreError] = {}
        refused: list[Any] = []

        def decode(number: int, reply: Any) -> None:  # as each script's reply arrives
            if refused or isinstance(reply, Exception):
                refused.append(reply)
            else:
                self._decode_views(chunks[number], reply, asked, out)

        replies = await loop.exchange(packed, len(chunks), decode)
        if replies is None or refused:
            return None
        self.loop_views += 1
        return out

    def _open_loop(self, wait: bool = True) -> None:
        """Open the connection of :meth:`view_async` (on a thread, never the event loop). A server or client it
        cannot be driven on is not asked again; a failure to connect is logged (a warning, once
        per store) and tried again after :data:`LOOP_RETRY_S`, views running on the threads
        meanwhile. Not ``wait``: return at once while another thread is opening it. In a
        process forked from the one that opened the store, the parent's opening (its lock may
        have been held at the fork) is forgotten and this process opens its own."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._loop_opening = threading.Lock()
            self._loop_opener = None
        lock = self._loop_opening
        if not lock.acquire(blocking=wait):
            return
        try:
            self._open_loop_locked()
        finally:
            lock.release()

    def _open_loop_locked(self) -> None:
        current = self._loop
        if (current is not None and current.usable) or not self._loop_wanted or self._closed:
            return
        if time.monotonic() < self._loop_retry_at:
            return
        try:
            opened = LoopConnection.open(self.client.connection_pool)
        except Exception as exc:  # noqa: BLE001 - views keep running on the store threads
            self._loop_retry_at = time.monotonic() + LOOP_RETRY_S
            if not self._loop_warned:
                self._loop_warned = True
                logger.warning(
                    "cachesaver could not open its event-loop connection to %s (%s); lookups "
                    "run on the store's threads, and it tries again every %g s",
                    self._location, exc, LOOP_RETRY_S,
                )
            return
        if opened is None:
            self._loop_wanted = False
            return
        self._loop = opened
        if self._closed:  # closed while connecting: nothing may stay open
            opened.close()

    def _view_command(self, keys: Sequence[str], asked: Mapping[str, list[str]], *, declared: bool) -> tuple[Any, ...]:
        """The view script's call for ``keys`` (see :func:`~cachesaver.store.redis_views.view_command`).
        ``declared``: on a cluster (one hash slot) every name it reads is declared, so a node
        migrating the slot answers TRYAGAIN or ASK for the whole script; on one server only the
        first key's head hash, for proxies that route a script by its first key (a server that
        refuses undeclared keys, as Dragonfly does by default, fails every view loudly: it is not
        supported). Not ``declared``: none, for every slot of one cluster node."""
        if not declared:
            names: list[bytes] = []
        elif self.cluster:
            names = [name for key in keys for name in self._names(key)]
        else:
            names = [self._names(keys[0])[1]]
        return view_command(self._base, names, keys, asked)

    def _decode_views(
        self,
        keys: Sequence[str],
        reply: Any,
        asked: Mapping[str, list[str]],
        out: dict[str, KeyView | StoreError],
        moved: list[str] | None = None,
    ) -> None:
        """:func:`~cachesaver.store.redis_views.decode_views`, each corrupt entry named with this store."""
        decode_views(keys, reply, asked, out, self._corrupt, moved)

    def _exchange(self, batches: Sequence[tuple[Any, Sequence[tuple[Any, ...]]]], on_reply: Callable[[int, int, Any], None]) -> None:
        """Send the commands of each batch ``(client, commands)`` on one connection of its
        client (a server, or a node of a cluster), every batch before any reply is read, so the
        servers work at once; then pass each reply (an error reply as its exception) to
        ``on_reply(batch number, command number, reply)`` as it arrives. A connection whose
        replies were not all read is closed, never handed back out of step."""
        response_error = self._errors.response
        pack = _pack_command()
        held: list[tuple[Any, Any]] = []
        complete = False
        try:
            for client, commands in batches:
                pool = client.connection_pool
                connection = _take_connection(pool)
                held.append((pool, connection))
                if pack is None:
                    packed = b"".join(connection.pack_commands(commands))
                else:
                    packed = b"".join([pack(command) for command in commands])
                connection.send_packed_command([packed])  # one write: one wait for the socket
            for number, ((_, commands), (_, connection)) in enumerate(zip(batches, held)):
                for position in range(len(commands)):
                    try:
                        reply = connection.read_response()
                    except response_error as exc:
                        reply = exc
                    on_reply(number, position, reply)
            complete = True
        finally:
            for pool, connection in held:
                if not complete:
                    connection.disconnect()
                pool.release(connection)

    def _exchange_views(
        self,
        batches: Sequence[tuple[Any, list[list[str]], list[tuple[Any, ...]]]],
        asked: Mapping[str, list[str]],
        out: dict[str, KeyView | StoreError],
        moved: list[str] | None = None,
    ) -> None:
        """Run the view commands of each batch ``(client, key chunks, their commands)`` through
        :meth:`_exchange`, decoding each reply into ``out`` (keys a cluster node could not read
        into ``moved``). A server without the script (restarted, or new) gets it and is sent its
        commands again: two more round trips. After every reply is read, raises the first one
        worth retrying (connection trouble, a busy or loading server, credentials) for
        :meth:`_call`."""
        no_script = self._errors.no_script
        todo = list(batches)
        for attempt in range(2):
            again: dict[int, list[int]] = {}
            retry: list[BaseException] = []

            def on_reply(number: int, position: int, reply: Any) -> None:
                if type(reply) is not list and isinstance(reply, BaseException):
                    if isinstance(reply, no_script) and attempt == 0:
                        again.setdefault(number, []).append(position)
                        return
                    if self._retryable(reply) or isinstance(reply, no_script):
                        retry.append(reply)
                        return
                    if moved is not None:  # a node refused a script over several of its slots
                        self._refuse_node_views(reply)
                        moved.extend(todo[number][1][position])
                        return
                self._decode_views(todo[number][1][position], reply, asked, out, moved)

            self._exchange([(client, commands) for client, _, commands in todo], on_reply)
            if retry:
                raise retry[0]
            if not again:
                return
            for number in again:
                todo[number][0].script_load(VIEW_SCRIPT)
            todo = [
                (todo[number][0], [todo[number][1][p] for p in positions], [todo[number][2][p] for p in positions])
                for number, positions in again.items()
            ]

    def _view_cluster(self, unique: list[str], asked: Mapping[str, list[str]]) -> dict[str, KeyView | StoreError]:
        """:meth:`view` on a cluster (see there), once: for :meth:`_call` to retry."""
        client = self.client
        transient = self._errors.transient
        out: dict[str, KeyView | StoreError] = {}
        try:
            if self._stale_layout:
                client.nodes_manager.initialize()
                self._stale_layout = False
            if self._views_by_slot:
                self._view_by_slot(unique, asked, out)
                return {key: out[key] for key in unique}
            by_node: dict[str, tuple[Any, list[str]]] = {}
            for key in unique:
                node = client.nodes_manager.get_node_from_slot(_slot_of(key))
                entry = by_node.get(node.name)
                if entry is None:
                    by_node[node.name] = (node, [key])
                else:
                    entry[1].append(key)
            batches = []
            for node, keys in by_node.values():
                chunks = _chunks(keys)
                commands = [self._view_command(chunk, asked, declared=False) for chunk in chunks]
                batches.append((client.get_redis_connection(node), chunks, commands))
            moved: list[str] = []
            self._exchange_views(batches, asked, out, moved)
            if moved:
                self._view_by_slot(moved, asked, out)
        except transient:
            self._stale_layout = True
            raise
        return {key: out[key] for key in unique}  # in the order asked

    def _refuse_node_views(self, reply: BaseException) -> None:
        """A cluster node answered a view script over several of its hash slots with an error
        (a server or proxy that only runs scripts on declared keys of one slot): this store
        reads by slot from now on (one script per hash slot: slower, never wrong)."""
        if not self._views_by_slot:
            self._views_by_slot = True
            logger.warning(
                "Redis Cluster at %s refused a view script over several hash slots (%s); cachesaver "
                "reads one hash slot per script from now on", self._location, reply,
            )

    def _view_by_slot(self, keys: list[str], asked: Mapping[str, list[str]], out: dict[str, KeyView | StoreError]) -> None:
        """Read ``keys`` on a cluster with one script per hash slot through the cluster client
        (it follows MOVED / ASK redirections), decoding each reply into ``out``."""
        by_slot: dict[int, list[str]] = {}
        for key in keys:
            by_slot.setdefault(_slot_of(key), []).append(key)
        for group in by_slot.values():
            for chunk in _chunks(group):
                command = self._view_command(chunk, asked, declared=True)
                try:
                    try:
                        reply = self.client.execute_command(*command)
                    except self._errors.no_script:
                        self.client.script_load(VIEW_SCRIPT)
                        reply = self.client.execute_command(*command)
                except self._errors.base as exc:
                    if self._retryable(exc):
                        raise
                    reply = exc
                self._decode_views(chunk, reply, asked, out)

    def _corrupt(self, key: str, why: str) -> CorruptStoreError:
        return CorruptStoreError(f"the entry of key {key} in {self._location} cannot be read: {why}")

    def read(self, wanted: Mapping[str, Sequence[int]]) -> dict[str, list[StoredSample] | StoreError]:
        """See :meth:`cachesaver.store.protocol.SampleStore.read`: one pipelined round trip, one
        LRANGE per run of consecutive indices."""
        self._check_open()
        out: dict[str, list[StoredSample] | StoreError] = {}
        plan: list[tuple[str, Sequence[int], list[tuple[int, int]]]] = []
        for key, indices in wanted.items():
            if any(type(i) is not int or i < 0 for i in indices):
                out[key] = CorruptStoreError(f"a sample asked of key {key} is not in {self._location}")
            elif not indices:
                out[key] = []
            else:
                plan.append((key, indices, _runs(sorted(set(indices)))))
        if not plan:
            return out

        def build(pipe: Any) -> None:
            for key, _, runs in plan:
                samples = self._names(key)[0]
                for start, stop in runs:
                    pipe.lrange(samples, start, stop - 1)

        replies = iter(self._call("read from", lambda: self._pipeline(build)))
        for key, indices, runs in plan:
            got: dict[int, Any] = {}
            failure: str | None = None
            for start, stop in runs:
                reply = next(replies)
                if isinstance(reply, BaseException):
                    failure = f"it holds an entry cachesaver did not write ({reply})"
                elif len(reply) < stop - start:
                    failure = f"sample {start + len(reply)} is missing (evicted, or never stored)"
                else:
                    got.update(zip(range(start, stop), reply))
            if failure is not None:
                out[key] = self._corrupt(key, failure)
                continue
            try:
                out[key] = [_decode(got[i], key) for i in indices]
            except CorruptStoreError as exc:
                out[key] = exc
        return out

    def applied(self, token: str) -> bool:
        """See :meth:`cachesaver.store.protocol.SampleStore.applied`."""
        self._check_open()
        name = self._token_key(token)
        return bool(self._call("read from", lambda: self.client.exists(name)))

    # -- writing -------------------------------------------------------------------------------

    def commit(
        self,
        appends: Sequence[Append],
        records: Sequence[RecordWrite] = (),
        *,
        token: str | None = None,
        hook: CommitHook | None = None,
        wait_s: float | None = None,
    ) -> list[int] | None:
        """See :meth:`cachesaver.store.protocol.SampleStore.commit` and the module docstring
        (what is atomic on one server and on a cluster). Samples are pickled first; records are
        checked after ``hook.before``, just before the first script is sent."""
        return self._commit(appends, records, token, hook, wait_s)

    def _commit(
        self,
        appends: Sequence[Append],
        records: Sequence[RecordWrite],
        token: str | None,
        hook: CommitHook | None,
        wait_s: float | None,
        claims: Sequence[ClaimNew] = (),
        generation: str = "",
        keep_s: float = 0.0,
    ) -> list[int] | None:
        """:meth:`commit`, also applying a shared run's ``claims`` (of run ``generation``, their
        claim states kept ``keep_s``) in the script of their append's slot."""
        self._check_open()
        try:
            blobs = [[pickle.dumps(tuple(s), protocol=pickle.HIGHEST_PROTOCOL) for s in a.samples] for a in appends]
        except Exception as exc:  # noqa: BLE001 - a sample that cannot be serialised
            raise StoreError(f"a sample cannot be serialised for {self._location}: {exc}") from exc
        bound = self.store_timeout_s if wait_s is None else min(max(wait_s, 0.0), self.store_timeout_s)
        if not (self._write_lock.acquire(timeout=bound) if bound > 0 else self._write_lock.acquire(blocking=False)):
            raise StoreLockedError(
                f"another commit through this store ({self._location}, another thread of this process) "
                f"held it for over {bound:g} s; nothing was written. Redis commits of other processes "
                "never make one wait; try again once that commit has finished"
            )
        try:
            self._check_open()
            if hook is not None:
                hook.before()
            try:
                new_names = sorted({w.record.namespace for w in records} - self._named) if records else []
                groups = self._groups(appends, records, blobs, claims, generation)
                starts = self._write(groups, len(appends), token, new_names, int(keep_s * 1000))
                if starts is not None and new_names:
                    if self.cluster:  # the names' hash is in a slot of its own: one more call
                        self._name_namespaces(new_names)
                    else:  # written by the commit's script
                        self._named.update(new_names)
                if hook is not None and starts is not None:
                    hook.after(starts)
                return starts
            finally:
                if hook is not None:
                    hook.finish()
        finally:
            self._write_lock.release()

    def _groups(
        self,
        appends: Sequence[Append],
        records: Sequence[RecordWrite],
        blobs: list[list[bytes]],
        claims: Sequence[ClaimNew] = (),
        generation: str = "",
    ) -> list[_Group]:
        """The commit split into what one script writes (everything on one server; one group
        per hash slot on a cluster), or StoreError before anything is written."""
        sizes = [len(append.samples) for append in appends]
        starts = [0] * len(appends)
        for write in records:
            write.resolve(starts, sizes)  # raises StoreError for a part naming no sample
        slot_of: Callable[[str], Any]
        if self.cluster:
            slot_of = _slot_of
        else:
            slot_of = lambda key: 0  # noqa: E731
        groups: dict[Any, _Group] = {}
        numbers: dict[str, int] = {}
        where: list[tuple[Any, int]] = []  # per append: its group and position there (from 1)

        def group_of(key: str) -> tuple[_Group, int]:
            slot = slot_of(key)
            group = groups.get(slot)
            if group is None:
                group = groups[slot] = _Group([], [], [], [])
            if key not in numbers:
                group.keys.append(key)
                numbers[key] = len(group.keys)
            return group, numbers[key]

        now = time.time()
        for position, append in enumerate(appends):
            group, number = group_of(append.key)
            text = append.request_text() if append.request is not None and append.samples else None
            when = now if append.stored_at is None else append.stored_at
            group.appends.append((position, number, len(append.samples), repr(float(when)), _utf8(text or "")))
            group.blobs.extend(blobs[position])
            where.append((slot_of(append.key), len(group.appends)))
        for write in records:
            group, number = group_of(write.key)
            parts: list[tuple[str, int, int]] = []
            for part in write.parts:
                if isinstance(part, int):
                    parts.append(("i", part, 0))
                    continue
                position, count = part
                slot, at = where[position]
                if groups[slot] is not group:
                    raise StoreError(
                        f"the record {write.record.tag} of key {write.key} names samples appended to key "
                        f"{appends[position].key}, in another hash slot of the Redis Cluster {self._location}; "
                        "nothing was written. A record names samples of its own key"
                    )
                parts.append(("p", at, count))
            group.records.append((number, _utf8(write.record.tag), parts))
        for claim in claims:
            slot, at = where[claim.position]
            claims_key, pending_key = self.claim_keys(generation, appends[claim.position].key)
            groups[slot].claims.append((claims_key, pending_key, at, claim.count, _utf8(claim.ticket)))
        return list(groups.values())

    def _write(
        self, groups: list[_Group], appends: int, token: str | None, names: Sequence[str] = (), keep_ms: int = 0
    ) -> list[int] | None:
        """Run the commit's scripts; the first index of each append, or None when ``token``
        was applied before. On one server the script also keeps the namespace ``names``."""
        nonce = uuid.uuid4().hex
        starts: list[int] = [0] * appends
        if not self.cluster:
            if not groups and token is None:
                return []
            group = groups[0] if groups else _Group([], [], [], [])
            if token is not None:
                memo, ttl = self._token_key(token), 0
            else:
                memo, ttl = self._base + b"{" + _slot_tag(group.keys[0]) + b"}:commit:" + nonce.encode(), _COMMIT_MEMO_S
            got = self._run_script(group, memo, nonce, ttl, names=names, keep_ms=keep_ms)
            if got is None:
                return None
            for (position, *_), start in zip(group.appends, got):
                starts[position] = start
            return starts
        done = self._token_key(token) if token is not None else None
        if done is not None and self._call("read from", lambda: self.client.exists(done)):
            return None
        fresh = done is None or not groups  # with a token: None only if every slot was in before
        for number, group in enumerate(groups):
            tag = b"{" + _slot_tag(group.keys[0]) + b"}:"
            if token is not None:
                memo, ttl = self._base + tag + b"part:" + _utf8(token), 0
            else:
                memo, ttl = self._base + tag + b"commit:" + nonce.encode(), _COMMIT_MEMO_S
            try:
                got = self._run_script(group, memo, nonce, ttl, stored=True, keep_ms=keep_ms)
            except StoreError as exc:
                if number == 0:
                    raise
                written = sorted({key for g in groups[:number] for key in g.keys})
                raise type(exc)(
                    f"{exc} This commit to a Redis Cluster was written for the keys {written} (their "
                    f"hash slots) and not for the others: retrying it with its token writes only the "
                    "missing ones, without one it may store those samples again"
                ) from exc
            if got is None:
                continue
            if got[0] == "fresh":
                fresh = True
            for (position, *_), start in zip(group.appends, got[1]):
                starts[position] = start
        if done is not None:
            self._call("write to", lambda: self.client.set(done, nonce))
        return starts if fresh else None

    def _run_script(
        self,
        group: _Group,
        memo: bytes,
        nonce: str,
        ttl: int,
        stored: bool = False,
        names: Sequence[str] = (),
        keep_ms: int = 0,
    ) -> Any:
        """Run the commit script for ``group``; its starts (on a cluster, ``stored=True``:
        ``("fresh" | "earlier", starts)``), or None when ``memo`` was set by another commit."""
        keys: list[bytes] = [memo]
        for key in group.keys:
            keys.extend(self._names(key))
            keys.append(self._info_name(key))
        args: list[Any] = [nonce, ttl, CONSULTED_RECORDS, len(group.keys), len(group.appends)]
        for _, number, size, when, request in group.appends:
            args += [number, size, when, request]
        args.append(len(group.records))
        for number, tag, parts in group.records:
            args += [number, tag, len(parts)]
            for part in parts:
                args.extend(part)
        args.append(len(names))
        for name in names:
            args += [namespace_digest(name), _utf8(name)]
        if names:
            keys.append(self._namespaces_name())
        args.append(len(group.claims))
        if group.claims:
            args.append(keep_ms)
            positions: dict[bytes, int] = {}
            for claims_key, pending_key, at, count, ticket in group.claims:
                for redis_key in (claims_key, pending_key):
                    if redis_key not in positions:
                        keys.append(redis_key)
                        positions[redis_key] = len(keys)
                args += [positions[claims_key], positions[pending_key], at, count, ticket]
        args.extend(group.blobs)
        client = self.client
        no_script = self._errors.no_script

        def run() -> Any:
            try:
                return client.evalsha(COMMIT_SHA, len(keys), *keys, *args)
            except no_script:  # a restarted server, or another one: load the script again
                client.script_load(COMMIT_SCRIPT)
                return client.evalsha(COMMIT_SHA, len(keys), *keys, *args)

        status, value = self._call("write to", run)
        if status == -1:
            key = group.keys[int(value) - 1]
            raise self._corrupt(key, "it holds an entry cachesaver did not write; nothing of the commit was written")
        text = bytes(value).decode()
        if status == 1:
            found = _starts(text)
            return ("fresh", found) if stored else found
        owner, _, earlier = text.partition("|")
        if owner == nonce:  # this very commit, applied by an attempt whose reply was lost
            return ("fresh", _starts(earlier)) if stored else _starts(earlier)
        if stored:  # another attempt with this token wrote this slot: its indices, nothing new
            return ("earlier", _starts(earlier))
        return None

    def _name_namespaces(self, new: Sequence[str]) -> None:
        """On a cluster: store the namespace names ``new``, after the commit that recorded them;
        never raises (the commit is done; a name is tried again with a later commit)."""
        name = self._namespaces_name()
        try:
            self._call("write to", lambda: self.client.hset(name, mapping={namespace_digest(ns): _utf8(ns) for ns in new}))
        except StoreError as exc:
            logger.warning("cachesaver could not store namespace names in %s (tried again later): %s", self._location, exc)
            return
        self._named.update(new)

    # -- inspection (InspectableStore) ---------------------------------------------------------

    def _scan(self, pattern: bytes) -> list[bytes]:
        """Every Redis key matching ``pattern`` (on every node of a cluster)."""
        return self._call("read from", lambda: [bytes(k) for k in self.client.scan_iter(match=pattern, count=1000)])

    def _pattern(self, after_tag: bytes) -> bytes:
        """A SCAN pattern for this store's keys of any hash slot whose name goes on with ``after_tag``."""
        return _glob_escape(self._base) + b"{*}:" + after_tag

    def iter_keys(self) -> Iterator[str]:
        """See :meth:`cachesaver.store.protocol.InspectableStore.iter_keys`: a SCAN for head hashes
        (every cache key with anything stored has one)."""
        self._check_open()
        skip = len(self._base) + 1 + 16 + 2 + 2  # "{" + tag + "}:" + "h:"
        keys = []
        for name in self._scan(self._pattern(b"h:*")):
            if name.startswith(self._base) and name[skip - 2 : skip] == b"h:":
                keys.append(name[skip:].decode("utf-8", "surrogatepass"))
        return iter(sorted(set(keys)))

    def inspect(self, keys: Sequence[str]) -> dict[str, KeyEntry | StoreError]:
        """See :meth:`cachesaver.store.protocol.InspectableStore.inspect`: one pipelined round
        trip, three hashes per key."""
        self._check_open()
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}

        def build(pipe: Any) -> None:
            for key in unique:
                _, head, later = self._names(key)
                pipe.hgetall(head)
                pipe.hgetall(later)
                pipe.hgetall(self._info_name(key))

        replies = iter(self._call("read from", lambda: self._pipeline(build)))
        out: dict[str, KeyEntry | StoreError] = {}
        for key in unique:
            head, later, info = next(replies), next(replies), next(replies)
            try:
                out[key] = self._key_entry(key, head, later, info)
            except CorruptStoreError as exc:
                out[key] = exc
        return out

    def _key_entry(self, key: str, head: Any, later: Any, info: Any) -> KeyEntry:
        for reply in (head, later, info):
            if isinstance(reply, BaseException):
                raise self._corrupt(key, f"it holds an entry cachesaver did not write ({reply})")
        if not head:
            return KeyEntry(key, 0)
        try:
            count = int(head.get(b"#n", b"0"))
            placed = []
            for raw_tag, value in head.items():
                if raw_tag != b"#n":
                    position, _, indices = bytes(value).partition(b";")
                    placed.append((int(position), bytes(raw_tag).decode("utf-8", "surrogatepass"), _indices(indices)))
            placed.sort()
            records = {tag: indices for _, tag, indices in placed}
            for raw_tag, value in sorted(later.items()):
                records[bytes(raw_tag).decode("utf-8", "surrogatepass")] = _indices(bytes(value))
            stamps: list[float | None] = []
            for part in bytes(info.get(b"t", b"")).decode().split(","):
                if part:
                    when, _, run = part.partition("*")
                    stamps.extend([float(when)] * int(run))
            request = info.get(b"r")
            text = bytes(request).decode("utf-8", "surrogatepass") if request is not None else None
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._corrupt(key, f"its entries cannot be decoded ({exc})") from exc
        missing = count - len(stamps)
        times = tuple(([None] * missing + stamps) if missing > 0 else stamps[-count:] if count else ())
        return KeyEntry(key, count, text, times, records)

    def namespace_names(self) -> dict[str, str]:
        """See :meth:`cachesaver.store.protocol.InspectableStore.namespace_names`."""
        self._check_open()
        name = self._namespaces_name()
        raw = self._call("read from", lambda: self.client.hgetall(name))
        return {bytes(k).decode(): bytes(v).decode("utf-8", "surrogatepass") for k, v in raw.items()}

    def forget(self, key: str, namespaces: Sequence[str] | None = None, *, wait_s: float | None = None) -> int:
        """See :meth:`cachesaver.store.protocol.InspectableStore.forget`. Records: one script on
        the key's hash slot. A whole key: its import tokens first (wherever they live), then its
        four entries in one DEL, so a crash in between leaves the key as it was, not a key
        whose later import is taken for done."""
        self._check_open()
        bound = self.store_timeout_s if wait_s is None else min(max(wait_s, 0.0), self.store_timeout_s)
        if not (self._write_lock.acquire(timeout=bound) if bound > 0 else self._write_lock.acquire(blocking=False)):
            raise StoreLockedError(
                f"another commit through this store ({self._location}) held it for over {bound:g} s; "
                "nothing was forgotten. Try again once it has finished"
            )
        try:
            self._check_open()
            samples, head, later = self._names(key)
            if namespaces is not None:
                prefixes = [_utf8(namespace_prefix(ns)) for ns in namespaces]
                client = self.client

                def run() -> Any:
                    try:
                        return client.evalsha(FORGET_SHA, 2, head, later, CONSULTED_RECORDS, *prefixes)
                    except self._errors.no_script:
                        client.script_load(FORGET_SCRIPT)
                        return client.evalsha(FORGET_SHA, 2, head, later, CONSULTED_RECORDS, *prefixes)

                removed = int(self._call("write to", run))
                if removed < 0:
                    raise self._corrupt(key, "a replay record cannot be decoded; nothing was forgotten")
                return removed
            count = int(self._call("read from", lambda: self.client.hget(head, b"#n")) or 0)
            escaped = _glob_escape(_utf8(import_token_prefix(key)))
            stale = self._scan(self._pattern(b"token:" + escaped + b"*")) + self._scan(self._pattern(b"part:" + escaped + b"*"))
            if stale:
                # One key per DEL: on a cluster the tokens live in other hash slots.
                self._call("write to", lambda: [self.client.delete(name) for name in stale])
            entries = [samples, head, later, self._info_name(key)]
            self._call("write to", lambda: self.client.delete(*entries))
            return count
        finally:
            self._write_lock.release()

    def size_bytes(self) -> int:
        """See :meth:`cachesaver.store.protocol.InspectableStore.size_bytes`: the server's
        MEMORY USAGE of every key of this store's prefix."""
        self._check_open()
        names = self._scan(_glob_escape(self._base) + b"*")
        if not names:
            return 0

        def build(pipe: Any) -> None:
            for name in names:
                pipe.memory_usage(name)

        replies = self._call("read from", lambda: self._pipeline(build))
        return sum(int(r) for r in replies if isinstance(r, int))

    # -- lifecycle -----------------------------------------------------------------------------

    def release_thread(self) -> None:
        """Nothing is held per thread (connections return to the client's pool after each call)."""

    def close(self) -> None:
        """Later calls raise StoreError; a client the store opened from a URL is closed, one you
        passed is not (the one connection :meth:`view_async` opened of it is)."""
        self._closed = True
        opener = self._loop_opener
        if opener is not None and opener is not threading.current_thread():
            opener.join()  # it closes what it opened once it sees the store closed
        if self._loop is not None:
            self._loop.close()
        if self._owned and getattr(self, "client", None) is not None:
            try:
                if self.cluster:
                    # RedisCluster.close() closes each node's client but not the connection
                    # pool it was given, so its sockets would wait for the garbage collector.
                    for node in self.client.get_nodes():
                        pool = getattr(getattr(node, "redis_connection", None), "connection_pool", None)
                        if pool is not None:
                            pool.disconnect()
                self.client.close()
            except Exception:  # noqa: BLE001 - closing sockets of a gone server
                pass

    def __repr__(self) -> str:
        return f"<RedisStore {self._location}>"


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` or an exception it was raised from is one of ``kinds``."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, kinds):
            return True
        current = current.__cause__
        seen += 1
    return False


def _busy(exc: BaseException, base: type[BaseException]) -> bool:
    """A server busy running a long script answers BUSY: worth retrying."""
    return isinstance(exc, base) and str(exc).startswith("BUSY")


def _glob_escape(text: bytes) -> bytes:
    """``text`` with the characters special to a SCAN pattern escaped."""
    out = bytearray()
    for byte in text:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct ``indices`` as runs ``(start, stop)`` of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def _starts(text: str) -> list[int]:
    return [int(part) for part in text.split(",")] if text else []


def _decode(blob: Any, key: str) -> StoredSample:
    try:
        value = pickle.loads(blob)
    except Exception as exc:  # noqa: BLE001 - that entry alone is damaged
        raise CorruptStoreError(f"a sample of key {key} cannot be decoded: {exc}") from exc
    if type(value) is not tuple or len(value) != 2:
        raise CorruptStoreError(f"a sample of key {key} is not a cachesaver sample")
    return value
