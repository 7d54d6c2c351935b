"""The list-valued sample store, on top of ``diskcache``.

Each cache key owns an append-only list of samples. Per namespace, the store also keeps
*records*: which sample indices the k-th request with a given request_id and ``n`` received
for that key. Records are what let a later run replay a request exactly. (``n`` is part of a
record's identity so that two requests sharing an id but asking different ``n`` are told apart
whatever order they arrive in.)

Layout: a key's *head* entry holds its first :attr:`DiskcacheStore.HEAD_SAMPLES` samples and its
first :attr:`DiskcacheStore.HEAD_RECORDS` records, so a key with few samples costs one read to
serve and one write to extend. Later samples get an entry each (plus a count entry), later
records too. An append therefore rewrites at most one bounded entry: appending the 2000th
sample costs about what appending the 10th does.

Guarantees:

* Writes run in one diskcache transaction (an SQLite write lock), so processes sharing a
  directory never lose or overwrite each other's samples; indices are dense and never reused.
* Nothing stored is ever deleted or changed; a sample keeps its index forever. A record may be
  replaced by a newer one for the same (namespace, key, request_id, n, use).
* A sample that has gone missing (for example evicted by a ``diskcache.Cache`` created with an
  eviction policy other than ``'none'``) raises :class:`~cachesaver.errors.CorruptStoreError`
  when read, never a silent gap.
* Every entry cachesaver writes lives under the ``cachesaver/1/`` prefix, so the same
  ``diskcache.Cache`` may hold other data.
* Readable entries (:class:`~cachesaver.store.protocol.InspectableStore`) ride in diskcache's
  ``tag`` column of rows that are written anyway, so no append writes a row more than before:
  the head row's tag holds the times of its samples and the key's canonical request (set by
  the commit of the key's first samples, and carried along when the head is rewritten); a
  later sample's row carries its own time. Lookups never read tags. Namespace names are one
  entry per namespace, written the first time this object commits a record of it. A cache
  written before these were kept replays as before; its keys' requests are unknown, and its
  samples' times are those of the rows that hold them (for head samples, the head's last
  write: the latest they can have been stored). An older cachesaver that rewrites a head
  drops its tag (the key's request becomes unknown, its times fall back so).
* A wait for the write lock is bounded: when another process holds it (say, one that is stopped)
  for longer than ``store_timeout_s`` (default 30 s), :meth:`DiskcacheStore.transaction` raises
  :class:`~cachesaver.errors.StoreLockedError`. Reads never take the write lock (diskcache
  runs SQLite in WAL mode, where readers do not wait for a writer), so stored samples stay
  readable meanwhile. (A ``diskcache.Cache`` you pass with a read-tracking eviction policy,
  LRU or LFU, writes on every read; those reads wait up to that Cache's own ``timeout``.)
* Writers take the lock in turn (:mod:`~cachesaver.store.write_turns`, two lock files
  beside the database): a writer waiting when the lock is let go is woken at once and gets
  it before the one who let go can take it again, so processes that write often (the
  workers of a shared run) do not starve each other. Where ``fcntl`` does not exist
  (Windows), writers wait in SQLite's busy handler as before.
* ``diskcache`` keeps one SQLite connection per thread. :meth:`DiskcacheStore.release_thread`
  closes the calling thread's; :meth:`DiskcacheStore.close` the calling thread's too. The
  allocation layer runs store calls on its own two threads (reads and writes, so a write
  waiting for the lock never holds up a read) and releases each as its last call, so no
  connection is left open.

All methods block on disk I/O and run in the calling thread; the cache stage's broker calls
them on those two threads.

>>> import tempfile
>>> store = DiskcacheStore(tempfile.mkdtemp())
>>> store.append("k", ["a", "b"]), store.append("k", ["c"]), store.count("k")
(0, 2, 3)
>>> store.read_data("k", [2, 0])
['c', 'a']
>>> store.close()
"""

from __future__ import annotations

import errno
import gc
import logging
import math
import os
import pickle
import sqlite3
import threading
import urllib.parse
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import diskcache

from ..errors import ConfigurationError, CorruptStoreError, StoreError, StoreLockedError
from .protocol import (
    CONSULTED_RECORDS,
    EMPTY_VIEW,
    Append,
    CommitHook,
    KeyEntry,
    KeyView,
    RecordWrite,
    StoredSample,
    import_token_prefix,
    key_view,
    namespace_digest,
    namespace_prefix,
    record_tag,
)
from .write_turns import WriteTurns, turns_for

__all__ = ["STORE_TIMEOUT_S", "DiskcacheStore", "ReadOnlyCache", "Head", "RecordEntry", "SampleStore", "open_cache"]

logger = logging.getLogger(__name__)

_PREFIX = "cachesaver/1/"
_COUNT = _PREFIX + "count/"
_HEAD = _PREFIX + "head/"
_SAMPLE = _PREFIX + "sample/"
_RECORD = _PREFIX + "record/"
_NAMESPACE = _PREFIX + "namespace/"
_MISSING = object()
_MODE_PICKLE = getattr(diskcache.core, "MODE_PICKLE", 4)
_MODE_RAW = getattr(diskcache.core, "MODE_RAW", 1)
# The row ``Cache.set`` writes for a small value without expiry or tag; an existing row whose
# value lives in a file is left alone (rowcount 0), so the caller falls back to ``Cache.set``.
_UPSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, "
    "mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, ?, 0, ?, NULL, ?) "
    "ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, expire_time = NULL, "
    "access_time = excluded.access_time, access_count = 0, tag = excluded.tag, size = 0, "
    "mode = excluded.mode, filename = NULL, value = excluded.value WHERE filename IS NULL"
)


class Head(NamedTuple):
    """A key's head entry: its first samples as (data, usage) pairs and its first records."""

    samples: tuple[tuple[Any, Any], ...]
    records: dict[str, tuple[int, ...]]


class RecordEntry(NamedTuple):
    """Which indices the ``use``-th request with ``request_id`` asking ``n`` samples received,
    in ``namespace``."""

    namespace: str
    request_id: Any
    n: int
    use: int
    indices: tuple[int, ...]


_EMPTY_HEAD = Head((), {})


# The head row's tag: ``"<time>*<count>,<time>*<count>,...[\n<canonical request>]"``, the
# runs of its samples' times in order (``<time>`` empty when unknown: stored before times were
# kept), then the key's request when known (canonical JSON text holds no raw newline).


def _split_tag(tag: Any) -> tuple[str, str | None]:
    """(times, request or None) of a head row's tag (anything else: nothing known)."""
    if not isinstance(tag, str):
        return "", None
    times, newline, request = tag.partition("\n")
    return times, (request if newline else None)


def _join_tag(times: str, request: str | None) -> str | None:
    if request is None:
        return times or None
    return f"{times}\n{request}"


def _add_stamps(times: str, had: int, stamp: float, added: int) -> str:
    """The times of a head's samples once ``added`` samples stored at ``stamp`` follow the
    ``had`` it holds."""
    if sum(c for _, c in _parse_stamps(times)) != had:
        times = f"*{had}" if had else ""
    part = f"{stamp!r}*{added}"
    return f"{times},{part}" if times else part


def _parse_stamps(times: str) -> list[tuple[float | None, int]]:
    """``(time or None, count)`` runs of a head's times; empty when they are not that."""
    if not times:
        return []
    runs: list[tuple[float | None, int]] = []
    try:
        for part in times.split(","):
            when, _, count = part.partition("*")
            runs.append((float(when) if when else None, int(count)))
    except ValueError:
        return []
    return runs


def _upper(prefix: str) -> str:
    """The least string greater than every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class _KeyWrite:
    """What one commit writes for one key: its new head samples and records, its new count and
    the entries outside the head."""

    __slots__ = ("head", "stored", "count", "samples", "records", "copied", "puts", "tag", "times", "request")

    def __init__(self, head: Head, count: int, tag: Any = None) -> None:
        self.head = head
        self.stored = self.count = count
        self.samples: tuple[tuple[Any, Any], ...] = head.samples
        self.records: dict[str, tuple[int, ...]] = head.records
        self.copied = False
        self.puts: list[tuple[str, Any, Any]] = []  # (name, value, tag)
        self.tag = tag  # the head row's tag as read
        self.times, self.request = _split_tag(tag)


class _Undecodable:
    """Stands for an entry whose stored bytes could not be decoded."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _decode_row(fetch: Any, mode: int, filename: Any, value: Any) -> Any:
    """The value of one Cache row (``Disk.fetch`` without its BytesIO for a pickle), or an
    :class:`_Undecodable` standing for a damaged one."""
    try:
        if mode == _MODE_PICKLE and value is not None:
            return pickle.loads(value)
        return fetch(mode, filename, value, False)
    except Exception as exc:  # noqa: BLE001 - that entry alone is damaged
        return _Undecodable(exc)


STORE_TIMEOUT_S = 30.0
"""How long a write waits for another process's lock before StoreLockedError, by default."""

PAGE_CACHE_KIB = 2048
"""SQLite's page cache per connection the store uses, in KiB (SQLite's own default; diskcache
asks 32 MiB). The store also turns memory-mapped reads off on those connections, so its
resident memory stays bounded however large the cache grows: a long run reads through the
operating system's file cache instead."""

_warned_directories: set[str] = set()
_record_prefix = namespace_prefix
_record_tag = record_tag
_TOKEN = _PREFIX + "token/"


def _check_indices(value: Any, key: str) -> tuple[int, ...]:
    if type(value) is tuple and len(value) == 1 and type(value[0]) is int and value[0] >= 0:
        return value  # the common record: one sample
    if type(value) is not tuple or not all(type(i) is int and i >= 0 for i in value):
        raise CorruptStoreError(f"a replay record of key {key} is malformed")
    return value


class ReadOnlyCache:
    """Reads a diskcache directory that cannot be written (a read-only mount, a downloaded
    artifact), with SQLite in read-only mode; offers what the store reads with.

    Opened with SQLite's ``immutable=1`` (a WAL database in a read-only directory cannot be
    opened otherwise): the directory is taken not to change while it is open.
    """

    eviction_policy = "none"

    def __init__(self, directory: str) -> None:
        self.directory = directory
        database = os.path.join(directory, diskcache.core.DBNAME)
        if not os.path.isfile(database):
            raise ConfigurationError(
                f"{directory!r} cannot be written and holds no cache to read; pass a writable "
                "directory, or the directory of an existing cache to replay from it"
            )
        self._disk = diskcache.Disk(directory)
        self._connections: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._database = database
        self._con()  # fail now, not at the first lookup
        self.close()  # the opening thread's connection; each thread opens its own

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            uri = "file:" + urllib.parse.quote(self._database)
            # immutable=1: no locks and no shared-memory file, which a read-only directory
            # cannot hold (mode=ro alone fails on a WAL database there, and leaks its handle).
            con = sqlite3.connect(uri + "?immutable=1", uri=True, isolation_level=None)
            self._local.con = con
        return con

    def _sql(self, statement: str, *args: Any) -> Any:
        return self._con().execute(statement, *args)

    def get(self, name: str, default: Any = None, retry: bool = False, tag: bool = False) -> Any:
        columns = "mode, filename, value, tag" if tag else "mode, filename, value, NULL"
        row = self._sql(f"SELECT {columns} FROM Cache WHERE raw = 1 AND key = ?", (name,)).fetchone()
        if row is None:
            return (default, None) if tag else default
        mode, filename, value, row_tag = row
        fetched = self._disk.fetch(mode, filename, value, False)
        return (fetched, row_tag) if tag else fetched

    def set(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreError(f"the cache at {self.directory} is read-only")

    def transact(self, retry: bool = False) -> Any:
        raise StoreError(f"the cache at {self.directory} is read-only")

    def close(self) -> None:
        """Close the calling thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            self._local.con = None
            con.close()


def _read_only_directory(directory: str) -> bool:
    """Whether ``directory`` exists but cannot be written (a read-only mount or permissions)."""
    if not os.path.isdir(directory):
        return False
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return True
    except (OSError, AttributeError):
        pass
    return not os.access(directory, os.W_OK)


def _cannot_write(exc: BaseException) -> bool:
    """Whether opening failed because the directory or its database cannot be written."""
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return True
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("readonly" in text or "read-only" in text or "unable to open" in text)


def open_cache(cache: Any, timeout_s: float = 60.0) -> tuple[Any, bool]:
    """The diskcache to use for ``cache`` (a Cache, FanoutCache or a directory), and whether we own it.

    A directory is opened with SQLite busy timeout ``timeout_s``, and the connection diskcache
    opened in the calling thread to set it up is closed again (the next call reopens one where
    it runs). Raises ConfigurationError when ``cache`` is none of those, or is a path where no
    cache can be opened (a file, a directory that cannot be created or written)."""
    if isinstance(cache, (str, os.PathLike)):
        directory = os.fspath(cache)
        if _read_only_directory(directory):
            return ReadOnlyCache(directory), True
        try:
            opened = diskcache.Cache(directory, timeout=timeout_s, eviction_policy="none", cull_limit=0)
            opened.close()
            return opened, True
        except (OSError, sqlite3.OperationalError) as exc:
            if _cannot_write(exc) and os.path.isdir(directory):
                gc.collect()  # the half-opened Cache holds a connection; let it go now
                return ReadOnlyCache(directory), True
            if isinstance(exc, OSError) or "locked" not in str(exc):
                raise ConfigurationError(
                    f"cannot open a cache in {directory!r}: {exc}; pass a directory that can be "
                    "created and written (or an open diskcache.Cache)"
                ) from exc
            raise StoreLockedError(
                f"cannot open the cache in {directory!r}: another process has held its SQLite "
                f"write lock for over 60 s (diskcache's bound when opening). Stop or resume that "
                "process, then try again"
            ) from exc
        except (OSError, sqlite3.Error) as exc:
            raise ConfigurationError(
                f"cannot open a cache in {directory!r}: {exc}; pass a directory that can be "
                "created and written (or an open diskcache.Cache)"
            ) from exc
    for method in ("get", "set", "transact"):
        if not callable(getattr(cache, method, None)):
            raise ConfigurationError(
                f"cache must be a diskcache.Cache (or FanoutCache) or a directory path, got "
                f"{type(cache).__name__} without .{method}()"
            )
    policy = getattr(cache, "eviction_policy", "none")
    directory = getattr(cache, "directory", "?")
    if policy != "none" and directory not in _warned_directories:
        _warned_directories.add(directory)
        logger.warning(
            "diskcache at %s uses eviction policy %r: stored samples may be evicted, and reading "
            "an evicted sample raises CorruptStoreError. Create it with "
            "Cache(directory, eviction_policy='none') to keep every sample.",
            directory,
            policy,
        )
    return cache, False


def _check_timeout(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"store_timeout_s must be a finite number of seconds > 0, got {value!r}; it bounds "
            "how long a write waits for another process's lock on the cache (default 30)"
        )
    return float(value)


class DiskcacheStore:
    """Append-only sample lists and replay records in one diskcache; see the module docstring.

    Implements :class:`~cachesaver.store.protocol.SampleStore`.

    ``cache`` is a ``diskcache.Cache`` (or ``FanoutCache``), never closed by the store, or a
    directory the store opens and closes. ``store_timeout_s`` bounds every wait for the write
    lock (default :attr:`STORE_TIMEOUT_S`).
    """

    HEAD_SAMPLES = 16
    HEAD_RECORDS = 16
    STORE_TIMEOUT_S = STORE_TIMEOUT_S

    def __init__(self, cache: Any, *, store_timeout_s: float = STORE_TIMEOUT_S) -> None:
        self.store_timeout_s = _check_timeout(store_timeout_s)
        self.cache, self._owned = open_cache(cache, self.store_timeout_s)
        self.writable = not isinstance(self.cache, ReadOnlyCache)
        """False when the directory could not be written and was opened read-only (replay)."""
        self._closed = False
        self._named: set[str] = set()  # namespaces whose names this object knows are stored
        self._plain = isinstance(self.cache, diskcache.Cache)
        self._bulk_ok = type(self.cache) in (diskcache.Cache, ReadOnlyCache) and getattr(
            self.cache, "eviction_policy", None
        ) in ("none", "least-recently-stored")
        # Rows written directly (what Cache.set writes, without its per-call bookkeeping) only
        # where Cache.set would do nothing more: a plain Cache with the default Disk and no
        # eviction, so no culling is skipped.
        self._raw_writes = (
            type(self.cache) is diskcache.Cache
            and type(getattr(self.cache, "_disk", None)) is diskcache.Disk
            and getattr(self.cache, "eviction_policy", None) == "none"
        )
        self._tuned = threading.local()
        self._turns: WriteTurns | None = turns_for(self.cache) if self.writable else None

    # -- reading ----------------------------------------------------------------------------

    def _get(self, name: str, default: Any, tag: bool = False) -> Any:
        """``cache.get`` that reports an unreadable entry as CorruptStoreError, a failing
        database as StoreError (with ``tag``, the pair ``(value, tag)``)."""
        try:
            # retry=False: a FanoutCache would turn a lock time-out into ``default``.
            if tag:
                return self.cache.get(name, default, retry=not self._plain, tag=True)
            return self.cache.get(name, default, retry=not self._plain)
        except diskcache.Timeout as exc:  # only caches whose reads write (LRU, LFU policies)
            raise self._locked(getattr(self.cache, "timeout", self.store_timeout_s)) from exc
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"could not read {name} from {self.directory}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a value that does not unpickle
            raise CorruptStoreError(f"entry {name} in {self.directory} cannot be decoded: {exc}") from exc

    def head(self, key: str) -> Head:
        """The head entry of ``key`` (empty when nothing is stored)."""
        return self._check_head(key, self._get(_HEAD + key, None))

    def heads(self, keys: Sequence[str]) -> dict[str, Head | StoreError]:
        """The head entries of several keys at once (one query per few hundred keys).

        A damaged or unreadable entry is returned as its :class:`StoreError` (a
        :class:`CorruptStoreError` when damaged), so it fails only the requests for that key.
        """
        unique = list(dict.fromkeys(keys)) if len(keys) > 1 else list(keys)
        values = self._bulk_get([_HEAD + key for key in unique]) if self._bulk_ok else None
        out: dict[str, Head | StoreError] = {}
        for key in unique:
            try:
                out[key] = self.head(key) if values is None else self._check_head(key, values.get(_HEAD + key))
            except StoreError as exc:
                out[key] = exc
        return out

    def _check_head(self, key: str, value: Any) -> Head:
        if value is None:
            return _EMPTY_HEAD
        if isinstance(value, _Undecodable):
            raise CorruptStoreError(f"the head entry of key {key} cannot be decoded: {value.error}") from value.error
        if (
            type(value) is not tuple
            or len(value) != 2
            or type(value[0]) is not tuple
            or type(value[1]) is not dict
            or len(value[0]) > self.HEAD_SAMPLES
        ):
            raise CorruptStoreError(f"the head entry of key {key} is not a cachesaver entry")
        return tuple.__new__(Head, value)

    def _bulk_get(self, names: list[str], tags: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Values of many string-keyed entries in few SQL queries; None if unsupported here.
        With ``tags`` (the write path only), each entry's tag is put there too.

        Reads diskcache's table directly, which is only done for a plain ``diskcache.Cache``
        whose eviction policy does not track reads (so skipping its read bookkeeping changes
        nothing) and whose entries cachesaver wrote without expiry.
        """
        try:
            sql = self.cache._sql
            fetch = self.cache._disk.fetch
            out: dict[str, Any] = {}
            if len(names) == 1:  # a lone key: the simplest query
                if tags is None:
                    row = sql("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1", (names[0],)).fetchone()
                    if row is not None:
                        out[names[0]] = _decode_row(fetch, *row)
                    return out
                row = sql("SELECT mode, filename, value, tag FROM Cache WHERE key = ? AND raw = 1", (names[0],)).fetchone()
                if row is not None:
                    tags[names[0]] = row[3]
                    out[names[0]] = _decode_row(fetch, row[0], row[1], row[2])
                return out
            columns = "key, mode, filename, value" if tags is None else "key, mode, filename, value, tag"
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = sql(
                    f"SELECT {columns} FROM Cache WHERE raw = 1 AND key IN ({marks})",
                    chunk,
                ).fetchall()
                if tags is not None:  # the write path: each row's tag, then the same as lookups
                    tags.update((row[0], row[4]) for row in rows)
                    rows = [row[:4] for row in rows]
                for name, mode, filename, value in rows:
                    out[name] = _decode_row(fetch, mode, filename, value)
            return out
        except Exception as exc:  # noqa: BLE001 - fall back to diskcache's public API for good
            logger.info("cachesaver: bulk reads unavailable (%s); using Cache.get", exc)
            self._bulk_ok = False
            return None

    def count(self, key: str, head: Head | None = None) -> int:
        """How many samples are stored for ``key`` (``head``: its head entry, if already read)."""
        if head is None:
            head = self.head(key)
        if len(head.samples) < self.HEAD_SAMPLES:
            return len(head.samples)
        value = self._get(_COUNT + key, None)
        if type(value) is not int or value < self.HEAD_SAMPLES:
            raise CorruptStoreError(f"sample count for key {key} is {value!r}; the store is damaged")
        return value

    def read_data(self, key: str, indices: Sequence[int]) -> list[Any]:
        """The samples at ``indices`` (their data, without usage), in that order."""
        return [data for data, _ in self.read_stored(key, indices)]

    def read_stored(self, key: str, indices: Sequence[int], head: Head | None = None) -> list[StoredSample]:
        """The ``(data, usage)`` pair stored at each of ``indices``, in that order."""
        size = self.HEAD_SAMPLES
        if any(i < 0 for i in indices):
            raise CorruptStoreError(f"key {key} has no sample at a negative index (asked {list(indices)})")
        if head is None and any(i < size for i in indices):
            head = self.head(key)
        get = self._get
        out = []
        for index in indices:
            if index < size:
                value = head.samples[index] if head is not None and index < len(head.samples) else _MISSING
            else:
                value = get(f"{_SAMPLE}{key}/{index}", _MISSING)
            if value is _MISSING:
                raise CorruptStoreError(
                    f"sample {index} of key {key} is missing from {self.directory}; it was evicted or "
                    "deleted. Use a diskcache.Cache with eviction_policy='none'."
                )
            if type(value) is not tuple or len(value) != 2:
                raise CorruptStoreError(f"sample {index} of key {key} is not a cachesaver sample")
            out.append(value)
        return out

    def try_read_stored(self, key: str, indices: Sequence[int], head: Head | None = None) -> list[StoredSample] | None:
        """Like :meth:`read_stored`, but None when any of the samples is absent."""
        try:
            return self.read_stored(key, indices, head)
        except CorruptStoreError:
            return None

    def get_record(
        self, namespace: str, key: str, request_id: Any, n: int, use: int, head: Head | None = None
    ) -> tuple[int, ...] | None:
        """The indices the ``use``-th request with ``request_id`` asking ``n`` samples received
        in ``namespace``, or None."""
        if head is None:
            head = self.head(key)
        tag = _record_tag(namespace, request_id, n, use)
        value = head.records.get(tag)
        if value is None and len(head.records) >= self.HEAD_RECORDS:
            value = self._get(f"{_RECORD}{key}/{tag}", None)
        return None if value is None else _check_indices(value, key)

    def recorded_indices(
        self, namespace: str, head: Head, exclude: tuple[Any, int, int] | None = None
    ) -> set[int]:
        """Indices the head's records give to requests in ``namespace`` (but ``exclude``'s
        (request_id, n, use)). Records kept outside the head are not included."""
        prefix = _record_prefix(namespace)
        skip = _record_tag(namespace, *exclude) if exclude is not None else None
        out: set[int] = set()
        for tag, indices in head.records.items():
            if tag.startswith(prefix) and tag != skip:
                out.update(indices)
        return out

    # -- writing ----------------------------------------------------------------------------

    def append(self, key: str, samples: Sequence[Any]) -> int:
        """Append ``samples`` (data, no usage) to ``key``'s list; the index of the first one."""
        with self.transaction():
            return self._write_commit([Append(key, tuple((s, None) for s in samples))], [])[0]

    def write(
        self,
        key: str,
        samples: Sequence[StoredSample] = (),
        records: Sequence[RecordEntry] = (),
        record_new: tuple[str, Any, int, int, Sequence[int], int] | None = None,
        head: Head | None = None,
    ) -> int:
        """Append ``samples`` ((data, usage) pairs) to ``key`` and store ``records``; call inside
        :meth:`transaction`.

        ``record_new`` = (namespace, request_id, n, use, prior, needed) also records that request
        as holding ``prior`` plus the first ``needed`` of the appended samples. Returns the index
        of the first appended sample (the old count). ``head`` is the key's head entry as read
        inside the same transaction, when the caller already has it.
        """
        if head is None:
            head = self.head(key)
        start = self.count(key, head)
        put = self.cache.set
        head_samples = head.samples
        pairs = list(samples)
        room = self.HEAD_SAMPLES - len(head_samples)
        if room > 0 and pairs:
            head_samples = head_samples + tuple(pairs[:room])
        for offset in range(max(room, 0), len(pairs)):
            put(f"{_SAMPLE}{key}/{start + offset}", pairs[offset])
        if pairs and start + len(pairs) >= self.HEAD_SAMPLES:
            put(_COUNT + key, start + len(pairs))
        all_records = list(records)
        if record_new is not None:
            namespace, request_id, n, use, prior, needed = record_new
            used = range(start, start + min(needed, len(pairs)))
            all_records.append(RecordEntry(namespace, request_id, n, use, tuple(prior) + tuple(used)))
        head_records = head.records
        copied = False
        for entry in all_records:
            tag = _record_tag(entry.namespace, entry.request_id, entry.n, entry.use)
            indices = tuple(entry.indices)
            if tag in head_records or len(head_records) < self.HEAD_RECORDS:
                if not copied:
                    head_records, copied = dict(head_records), True
                head_records[tag] = indices
            else:
                put(f"{_RECORD}{key}/{tag}", indices)
        if head_samples is not head.samples or copied:
            put(_HEAD + key, (head_samples, head_records))
        return start

    @contextmanager
    def transaction(self, wait_s: float | None = None) -> Iterator[None]:
        """Hold the store's write lock: everything written inside commits together.

        Waits at most ``store_timeout_s`` (or ``wait_s`` if smaller; about a millisecond for 0)
        for the lock, then raises
        :class:`~cachesaver.errors.StoreLockedError`. Writers wait their turn first
        (:mod:`~cachesaver.store.write_turns`: the lock goes to waiters in turn, each woken the
        moment it is free), within the same bound. Nested transactions (in one thread) join
        the outer one. An SQLite or OS error opening the connection, taking the lock, inside
        the block or at its commit (a deleted directory, a full disk) rolls back and is raised
        as StoreError.
        """
        bound = self.store_timeout_s if wait_s is None else min(max(wait_s, 0.0), self.store_timeout_s)
        deadline = time.monotonic() + bound
        turn = self._take_turn(self.cache, deadline, self.store_timeout_s)
        try:
            with ExitStack() as stack:
                shards = getattr(self.cache, "_shards", None) if not self._plain else None
                if isinstance(shards, (list, tuple)) and all(isinstance(c, diskcache.Cache) for c in shards):
                    for shard in shards:  # FanoutCache.transact retries forever; lock shard by shard
                        self._lock(stack, shard, deadline)
                else:
                    self._lock(stack, self.cache, deadline)
                yield
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"could not write to the cache at {self.directory}: {exc}; nothing was written. "
                "Check that the directory still exists, is writable and has free space"
            ) from exc
        finally:
            if turn:
                self._give_turn()

    def _take_turn(self, cache: Any, deadline: float, waited: float) -> bool:
        """Wait for this thread's turn at the write lock until ``deadline``, else raise
        StoreLockedError (saying ``waited`` seconds). False when no turn was taken (there are
        none here, or this thread is inside a transaction of ``cache`` already: its turn, or
        one opened without a turn, which must not wait behind others for what it holds);
        True: give it back with :meth:`_give_turn` once the transaction has ended."""
        turns = self._turns
        # vars(): a FanoutCache's __getattr__ refuses private names (its shards keep their own)
        if turns is None or vars(cache).get("_txn_id") == threading.get_ident():
            return False
        if not turns.take(deadline):
            raise self._locked(waited)
        return True

    def _give_turn(self) -> None:
        if self._turns is not None:
            self._turns.give()

    def _lock(self, stack: ExitStack, cache: Any, deadline: float) -> None:
        """Enter ``cache.transact()`` on ``stack`` before ``deadline`` or raise StoreLockedError."""
        pause = 0.001
        while True:
            # One attempt waits in SQLite's busy handler; bound that wait by what is left.
            left = deadline - time.monotonic()
            try:
                with self._busy_timeout(cache, left):
                    stack.enter_context(cache.transact(retry=False))
                return
            except diskcache.Timeout as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._locked(self.store_timeout_s) from exc
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.05)

    @contextmanager
    def _busy_timeout(self, cache: Any, seconds: float) -> Iterator[None]:
        """Bound SQLite's busy wait of the calling thread's connection to ``cache`` by
        ``seconds`` (a Cache we did not open keeps its own ``timeout``, restored after)."""
        own = getattr(cache, "timeout", None)
        con = None
        own_ms = 0
        # Within 50 ms of the connection's own timeout: not worth two PRAGMA statements.
        if isinstance(cache, diskcache.Cache) and isinstance(own, (int, float)) and own > seconds + 0.05:
            own_ms = int(own * 1000)
            try:
                con = cache._con
                con.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")
            except (AttributeError, sqlite3.Error):  # not diskcache's layout: its own timeout
                con = None
        try:
            yield
        finally:
            if con is not None:
                try:
                    con.execute(f"PRAGMA busy_timeout = {own_ms}")
                except sqlite3.Error:
                    pass

    def _locked(self, waited: float) -> StoreLockedError:
        return StoreLockedError(
            f"the cache at {self.directory} stayed locked for writing for {waited:g} s "
            "(store_timeout_s): another process holds its SQLite write lock, perhaps one that is "
            "stopped or hung. Nothing was written; stored samples can still be read. End or resume "
            "that process (or pass a larger store_timeout_s), then try again."
        )

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return str(getattr(self.cache, "directory", "?"))

    @property
    def location(self) -> str:
        return self.directory

    def release_thread(self) -> None:
        """Close the calling thread's connection (diskcache keeps one per thread); the store
        stays usable and reopens one if that thread uses it again."""
        if self._turns is not None:
            self._turns.close_thread()
        self.cache.close()

    def close(self) -> None:
        """Close the calling thread's connection; later protocol calls raise StoreError. A
        ``diskcache.Cache`` you passed stays open for you (only connections of threads that
        called :meth:`release_thread` or this are closed)."""
        self._closed = True
        if self._turns is not None:
            self._turns.close_thread()
        self.cache.close()

    # -- the store protocol ---------------------------------------------------------------

    def _tune(self) -> None:
        """Bound the page cache of the calling thread's connection (once per connection)."""
        if not self._raw_writes:
            return
        try:
            con = self.cache._con
            if getattr(self._tuned, "con", None) is not con:
                con.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
                con.execute("PRAGMA mmap_size = 0")
                self._tuned.con = con
        except (sqlite3.Error, OSError):
            pass  # the call that follows meets the same trouble and reports it

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store at {self.directory} is closed; open a new pipeline on it")

    def view(
        self, keys: Sequence[str], tags: Sequence[tuple[str, str]] = ()
    ) -> dict[str, KeyView | StoreError]:
        """See :meth:`cachesaver.store.protocol.SampleStore.view`: one bulk read of the head
        entries, plus a read per key whose head is full (its count) and per asked record kept
        outside the head."""
        self._check_open()
        self._tune()
        unique = list(dict.fromkeys(keys)) if len(keys) > 1 else list(keys)
        names = [_HEAD + key for key in unique]
        values = self._bulk_get(names) if self._bulk_ok else None
        asked: dict[str, Any] = {}  # key -> its asked tag, or a list of them when several
        for key, tag in tags:
            have = asked.get(key)
            if have is None:
                asked[key] = tag
            elif type(have) is list:
                have.append(tag)
            else:
                asked[key] = [have, tag]
        full, many = self.HEAD_SAMPLES, self.HEAD_RECORDS
        out: dict[str, KeyView | StoreError] = {}
        for key, name in zip(unique, names):
            try:
                head: Any
                if values is None:
                    head = self.head(key)
                else:
                    head = values.get(name)
                    if head is None:
                        out[key] = EMPTY_VIEW
                        continue
                    if not (  # the common, well-formed head: checked here, without a call
                        type(head) is tuple
                        and len(head) == 2
                        and type(head[0]) is tuple
                        and type(head[1]) is dict
                        and len(head[0]) <= full
                    ):
                        head = self._check_head(key, head)
                samples, records = head
                if not samples and not records:
                    out[key] = EMPTY_VIEW
                    continue
                count = len(samples) if len(samples) < full else self.count(key, Head(samples, records))
                found: dict[str, tuple[int, ...]] = {}
                mine = asked.get(key, ())
                for tag in (mine,) if type(mine) is str else mine:
                    value = records.get(tag)
                    if value is None and len(records) >= many:
                        value = self._get(f"{_RECORD}{key}/{tag}", None)
                    if value is not None:
                        found[tag] = _check_indices(value, key)
            except StoreError as exc:
                out[key] = exc
                continue
            if len(records) > CONSULTED_RECORDS:  # never with this layout; kept for clarity
                records = dict(list(records.items())[:CONSULTED_RECORDS])
            along = {0: samples[0]} if count == 1 else dict(enumerate(samples))
            out[key] = key_view(count, records, found, along)
        return out

    def read(self, wanted: Mapping[str, Sequence[int]]) -> dict[str, list[StoredSample] | StoreError]:
        """See :meth:`cachesaver.store.protocol.SampleStore.read`."""
        self._check_open()
        self._tune()
        out: dict[str, list[StoredSample] | StoreError] = {}
        for key, indices in wanted.items():
            try:
                out[key] = self.read_stored(key, indices)
            except StoreError as exc:
                out[key] = exc
        return out

    def commit(
        self,
        appends: Sequence[Append],
        records: Sequence[RecordWrite] = (),
        *,
        token: str | None = None,
        hook: CommitHook | None = None,
        wait_s: float | None = None,
    ) -> list[int] | None:
        """See :meth:`cachesaver.store.protocol.SampleStore.commit`: one SQLite transaction,
        waiting at most ``store_timeout_s`` (or ``wait_s``) for the write lock."""
        self._check_open()
        if not self.writable:
            raise StoreError(f"the cache at {self.directory} is read-only; open a writable copy to add samples")
        if self._raw_writes:
            self._tune()
            return self._commit_direct(appends, records, token, hook, wait_s)
        started = False
        named: list[str] = []
        try:
            with self.transaction(wait_s):
                if hook is not None:
                    hook.before()
                started = True
                try:
                    if token is not None and self._get(_TOKEN + token, None) is not None:
                        starts = None
                    else:
                        starts = self._write_commit(appends, records)
                        if records:
                            named = self._name_namespaces(write.record.namespace for write in records)
                        if token is not None:
                            self.cache.set(_TOKEN + token, True)
                except (sqlite3.Error, OSError) as exc:
                    raise StoreError(f"could not write to the cache at {self.directory}: {exc}") from exc
                except StoreError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a sample that does not pickle
                    raise StoreError(f"could not store a sample in {self.directory}: {exc}") from exc
            if starts is not None and named:
                self._named.update(named)
            if hook is not None and starts is not None:
                hook.after(starts)
        finally:
            if hook is not None and started:
                hook.finish()
        return starts

    def _commit_direct(
        self,
        appends: Sequence[Append],
        records: Sequence[RecordWrite],
        token: str | None,
        hook: CommitHook | None,
        wait_s: float | None,
    ) -> list[int] | None:
        """:meth:`commit` on a plain ``diskcache.Cache``: the same SQLite transaction that
        ``Cache.transact`` opens (BEGIN IMMEDIATE on the thread's connection, marked as the
        Cache's transaction so a ``Cache.set`` inside joins it), without its layers."""
        cache = self.cache
        try:
            con = cache._con
            turn = self._begin(cache, con, wait_s)
        except (sqlite3.Error, OSError) as exc:
            raise self._write_failed(exc) from exc
        cache._txn_id = threading.get_ident()
        started = False
        named: list[str] = []
        try:
            try:
                if hook is not None:
                    hook.before()
                started = True
                if token is not None and self._get(_TOKEN + token, None) is not None:
                    starts = None
                else:
                    starts = self._write_commit(appends, records)
                    if records:
                        named = self._name_namespaces(write.record.namespace for write in records)
                    if token is not None:
                        self._put_all([(_TOKEN + token, True, None)])
                # Cleared before the lock goes, as Cache.transact does: a thread that takes
                # the lock next marks the Cache as its own.
                cache._txn_id = None
                con.execute("COMMIT")
            except BaseException as exc:
                cache._txn_id = None
                try:
                    con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # nothing to roll back (the commit itself failed and ended it)
                if isinstance(exc, (sqlite3.Error, OSError)):
                    raise self._write_failed(exc) from exc
                if isinstance(exc, Exception) and not isinstance(exc, StoreError):
                    raise StoreError(f"could not store a sample in {self.directory}: {exc}") from exc
                raise
            finally:
                if turn:  # the transaction has ended (committed or rolled back)
                    self._give_turn()
            if named:
                self._named.update(named)
            if hook is not None and starts is not None:
                hook.after(starts)
        finally:
            if hook is not None and started:
                hook.finish()
        return starts

    def _begin(self, cache: Any, con: sqlite3.Connection, wait_s: float | None) -> bool:
        """This thread's turn (see :meth:`_take_turn`), then BEGIN IMMEDIATE, together within
        ``store_timeout_s`` (or ``wait_s``), else StoreLockedError; whether a turn was taken
        (the caller gives it back when the transaction ends; a failure here gives it back)."""
        bound = self.store_timeout_s if wait_s is None else min(max(wait_s, 0.0), self.store_timeout_s)
        deadline = time.monotonic() + bound
        turn = self._take_turn(cache, deadline, bound)
        try:
            self._begin_immediate(cache, con, bound, deadline)
        except BaseException:
            if turn:
                self._give_turn()
            raise
        return turn

    def _begin_immediate(self, cache: Any, con: sqlite3.Connection, bound: float, deadline: float) -> None:
        own = cache.timeout
        left = max(deadline - time.monotonic(), 0.0)
        lowered = own > left + 0.05  # the connection would wait longer than we may
        if lowered:
            con.execute(f"PRAGMA busy_timeout = {max(1, int(left * 1000))}")
        pause = 0.001
        try:
            while True:
                try:
                    con.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._locked(bound) from exc
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.05)
        finally:
            if lowered:
                con.execute(f"PRAGMA busy_timeout = {int(own * 1000)}")

    def _write_failed(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"could not write to the cache at {self.directory}: {exc}; nothing was written. "
            "Check that the directory still exists, is writable and has free space"
        )

    def _write_commit(self, appends: Sequence[Append], records: Sequence[RecordWrite]) -> list[int]:
        """Write a commit's appends and records inside the transaction; the first index of
        each append. Each key's head entry is read once (in one bulk read) and written once."""
        keys = list(dict.fromkeys([a.key for a in appends] + [w.key for w in records]))
        tags: dict[str, Any] = {}
        heads = self._heads_for_write(keys, tags)
        state: dict[str, _KeyWrite] = {}
        for key in keys:
            head = heads[key]
            if isinstance(head, StoreError):
                raise head
            state[key] = _KeyWrite(head, self.count(key, head), tags.get(_HEAD + key))
        starts: list[int] = []
        room_of = self.HEAD_SAMPLES
        now = time.time()
        for append in appends:
            entry = state[append.key]
            start = entry.count
            pairs = append.samples
            stamp = now if append.stored_at is None else append.stored_at
            room = room_of - len(entry.samples)
            if room > 0 and pairs:
                had = len(entry.samples)
                entry.samples = entry.samples + tuple(pairs[:room])
                entry.times = _add_stamps(entry.times, had, stamp, len(entry.samples) - had)
            if start == 0 and pairs and append.request is not None and entry.request is None:
                entry.request = append.request_text()  # the key's first samples: its request
            for offset in range(max(room, 0), len(pairs)):
                entry.puts.append((f"{_SAMPLE}{append.key}/{start + offset}", pairs[offset], stamp))
            entry.count = start + len(pairs)
            starts.append(start)
        sizes = [len(append.samples) for append in appends]
        for write in records:
            entry = state[write.key]
            indices = write.resolve(starts, sizes)
            tag = write.record.tag
            if tag in entry.records or len(entry.records) < self.HEAD_RECORDS:
                if not entry.copied:
                    entry.records, entry.copied = dict(entry.records), True
                entry.records[tag] = indices
            else:
                entry.puts.append((f"{_RECORD}{write.key}/{tag}", indices, None))
        items: list[tuple[str, Any, Any]] = []
        for key, entry in state.items():
            items.extend(entry.puts)
            if entry.count != entry.stored and entry.count >= self.HEAD_SAMPLES:
                items.append((_COUNT + key, entry.count, None))
            if entry.samples is not entry.head.samples or entry.copied:
                items.append((_HEAD + key, (entry.samples, entry.records), _join_tag(entry.times, entry.request)))
        self._put_all(items)
        return starts

    def _heads_for_write(self, keys: Sequence[str], tags: dict[str, Any]) -> dict[str, Head | StoreError]:
        """:meth:`heads` for a commit, also putting each head row's tag in ``tags``."""
        names = [_HEAD + key for key in keys]
        values = self._bulk_get(names, tags) if self._bulk_ok else None
        out: dict[str, Head | StoreError] = {}
        for key, name in zip(keys, names):
            try:
                if values is None:
                    value, tags[name] = self._get(name, None, tag=True)
                else:
                    value = values.get(name)
                out[key] = self._check_head(key, value)
            except StoreError as exc:
                out[key] = exc
        return out

    def _put_all(self, items: Sequence[tuple[str, Any, Any]]) -> None:
        """``Cache.set`` each (name, value, tag), inside the transaction: the same rows,
        written directly where that is known to be equivalent (see ``_raw_writes``)."""
        put = self.cache.set
        if not self._raw_writes:
            for name, value, tag in items:
                put(name, value, tag=tag)
            return
        cache = self.cache
        execute = cache._con.execute
        limit = cache.disk_min_file_size
        protocol = cache.disk_pickle_protocol
        now = time.time()
        for name, value, tag in items:
            data: int | bytes
            if type(value) is int:
                mode, data = _MODE_RAW, value
            else:
                data = pickle.dumps(value, protocol=protocol)
                if len(data) >= limit:  # a value diskcache keeps in a file of its own
                    put(name, value, tag=tag)
                    continue
                mode = _MODE_PICKLE
            if execute(_UPSERT, (name, now, now, tag, mode, data)).rowcount != 1:
                put(name, value, tag=tag)  # the old value lives in a file: Cache.set replaces it

    def _name_namespaces(self, namespaces: Iterable[str]) -> list[str]:
        """Store the name of each of ``namespaces`` not stored yet (inside a transaction);
        those this object did not know of, to remember once the transaction commits."""
        new: list[str] = []
        for namespace in namespaces:
            if namespace in self._named or namespace in new:
                continue
            name = _NAMESPACE + namespace_digest(namespace)
            if self._get(name, None) != namespace:
                self._put_all([(name, namespace, None)])
            new.append(namespace)
        return new

    def applied(self, token: str) -> bool:
        """See :meth:`cachesaver.store.protocol.SampleStore.applied`."""
        self._check_open()
        return self._get(_TOKEN + token, None) is not None

    def shared_runs(self) -> Any:
        """Shared runs among the processes of this host (see :mod:`cachesaver.store.shared_local`)."""
        from .shared_local import DiskcacheSharedRuns

        return DiskcacheSharedRuns(self)

    # -- inspection (InspectableStore) ----------------------------------------------------

    def _tables(self) -> list[Any] | None:
        """The diskcache objects whose SQL table holds the entries (a FanoutCache's shards),
        or None for a cache of another kind (read through its public API then)."""
        if isinstance(self.cache, (diskcache.Cache, ReadOnlyCache)):
            return [self.cache]
        shards = getattr(self.cache, "_shards", None)
        if isinstance(shards, (list, tuple)) and all(isinstance(c, diskcache.Cache) for c in shards):
            return list(shards)
        return None

    def _scan(self, prefix: str) -> list[tuple[str, Any, float | None]]:
        """``(name, tag, store time)`` of every entry whose name starts with ``prefix``."""
        try:
            tables = self._tables()
            if tables is None:
                names = [n for n in self.cache.iterkeys() if isinstance(n, str) and n.startswith(prefix)]
                return [(n, self._get(n, None, tag=True)[1], None) for n in names]
            rows: list[tuple[str, Any, float | None]] = []
            for table in tables:
                rows.extend(
                    table._sql(
                        "SELECT key, tag, store_time FROM Cache WHERE raw = 1 AND key >= ? AND key < ?",
                        (prefix, _upper(prefix)),
                    ).fetchall()
                )
            return rows
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"could not list the entries of {self.directory}: {exc}") from exc

    def iter_keys(self) -> Iterator[str]:
        """See :meth:`cachesaver.store.protocol.InspectableStore.iter_keys` (every key has a
        head entry)."""
        self._check_open()
        start = len(_HEAD)
        return iter([name[start:] for name, _, _ in self._scan(_HEAD)])

    def inspect(self, keys: Sequence[str]) -> dict[str, KeyEntry | StoreError]:
        """See :meth:`cachesaver.store.protocol.InspectableStore.inspect`."""
        self._check_open()
        out: dict[str, KeyEntry | StoreError] = {}
        for key, head in self.heads(keys).items():
            if isinstance(head, StoreError):
                out[key] = head
                continue
            try:
                out[key] = self._inspect(key, head)
            except StoreError as exc:
                out[key] = exc
        return out

    def _inspect(self, key: str, head: Head) -> KeyEntry:
        if not head.samples and not head.records:
            return KeyEntry(key, 0)
        count = self.count(key, head)
        _, head_tag, head_time = self._row(_HEAD + key)
        times, request = _split_tag(head_tag)
        stamps: list[float | None] = []
        for when, run in _parse_stamps(times):
            stamps.extend([when if when is not None else head_time] * run)
        if len(stamps) != len(head.samples):
            stamps = [head_time] * len(head.samples)
        if count > len(head.samples):
            rows: dict[int, float | None] = {}
            prefix = f"{_SAMPLE}{key}/"
            for name, tag, stored in self._scan(prefix):
                suffix = name[len(prefix):]
                if suffix.isdigit():
                    rows[int(suffix)] = tag if isinstance(tag, float) else stored
            for index in range(len(head.samples), count):
                if index not in rows:
                    raise CorruptStoreError(
                        f"sample {index} of key {key} is missing from {self.directory}; it was evicted or deleted"
                    )
                stamps.append(rows[index])
        records = dict(head.records)
        if len(head.records) >= self.HEAD_RECORDS:
            records.update(self._spilled_records(key))
        return KeyEntry(key, count, request, tuple(stamps), records)

    def _row(self, name: str) -> tuple[str, Any, float | None]:
        """``(name, tag, store time)`` of one entry (tag and time None when it is absent)."""
        tables = self._tables()
        if tables is None:
            return name, self._get(name, None, tag=True)[1], None
        try:
            for table in tables:
                row = table._sql("SELECT tag, store_time FROM Cache WHERE raw = 1 AND key = ?", (name,)).fetchone()
                if row is not None:
                    return name, row[0], row[1]
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"could not read {name} from {self.directory}: {exc}") from exc
        return name, None, None

    def _spilled_records(self, key: str) -> dict[str, tuple[int, ...]]:
        """The records of ``key`` kept outside its head (tag -> indices)."""
        prefix = f"{_RECORD}{key}/"
        out: dict[str, tuple[int, ...]] = {}
        for name, _, _ in sorted(self._scan(prefix)):
            value = self._get(name, None)
            if value is not None:
                out[name[len(prefix):]] = _check_indices(value, key)
        return out

    def namespace_names(self) -> dict[str, str]:
        """See :meth:`cachesaver.store.protocol.InspectableStore.namespace_names`."""
        self._check_open()
        out: dict[str, str] = {}
        for name, _, _ in self._scan(_NAMESPACE):
            value = self._get(name, None)
            if isinstance(value, str):
                out[name[len(_NAMESPACE):]] = value
        return out

    def forget(self, key: str, namespaces: Sequence[str] | None = None, *, wait_s: float | None = None) -> int:
        """See :meth:`cachesaver.store.protocol.InspectableStore.forget`: one transaction.
        Forgetting records rewrites the head without them and moves records kept outside
        the head into it, up to :attr:`HEAD_RECORDS`, so they are still consulted."""
        self._check_open()
        if not self.writable:
            raise StoreError(f"the cache at {self.directory} is read-only; nothing can be forgotten")
        try:
            with self.transaction(wait_s):
                if namespaces is None:
                    return self._forget_key(key)
                return self._forget_records(key, tuple(namespace_prefix(ns) for ns in namespaces))
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"could not write to the cache at {self.directory}: {exc}") from exc

    def _forget_key(self, key: str) -> int:
        head = self.head(key)
        count = self.count(key, head) if head.samples else 0
        names = [_HEAD + key, _COUNT + key]
        for prefix in (f"{_SAMPLE}{key}/", f"{_RECORD}{key}/", _TOKEN + import_token_prefix(key)):
            names.extend(name for name, _, _ in self._scan(prefix))
        for name in names:
            self.cache.delete(name, retry=not self._plain)
        return count

    def _forget_records(self, key: str, prefixes: tuple[str, ...]) -> int:
        value, head_tag = self._get(_HEAD + key, None, tag=True)
        head = self._check_head(key, value)
        spilled = self._spilled_records(key) if len(head.records) >= self.HEAD_RECORDS else {}
        gone = [tag for tag in (*head.records, *spilled) if tag.startswith(prefixes)]
        if not gone:
            return 0
        kept = [(t, i) for t, i in head.records.items() if not t.startswith(prefixes)]
        kept += [(t, i) for t, i in spilled.items() if not t.startswith(prefixes)]
        in_head = dict(kept[: self.HEAD_RECORDS])
        for tag in spilled:
            if tag in in_head or tag.startswith(prefixes):
                self.cache.delete(f"{_RECORD}{key}/{tag}", retry=not self._plain)
        self.cache.set(_HEAD + key, (head.samples, in_head), tag=head_tag)
        return len(gone)

    def size_bytes(self) -> int:
        """See :meth:`cachesaver.store.protocol.InspectableStore.size_bytes`: the files of the
        cache directory (other data of a shared Cache included)."""
        self._check_open()
        total = 0
        for folder, _, files in os.walk(self.directory):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(folder, name))
                except OSError:
                    pass
        return total


SampleStore = DiskcacheStore
"""The name this engine had before the store protocol existed; kept so old imports work."""
