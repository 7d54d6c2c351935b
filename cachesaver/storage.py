"""The list-valued sample store, on top of ``diskcache``.

Each cache key owns an append-only list of samples; each sample is stored as its own entry, so
appending the 2000th sample costs what appending the 10th does. Per namespace, the store also
keeps *records*: which sample indices a (key, request_id, k-th use of that id) received, which
is what lets a later run replay a request exactly.

Guarantees:

* ``append`` runs in one diskcache transaction (an SQLite write lock), so processes sharing a
  directory never lose or overwrite each other's samples; indices are dense and never reused.
* Nothing is ever deleted or rewritten by cachesaver; a sample once stored keeps its index.
* A sample that has gone missing (for example evicted by a ``diskcache.Cache`` created with an
  eviction policy other than ``'none'``) raises :class:`~cachesaver.errors.CorruptStoreError`
  when read, never a silent gap.
* Every entry cachesaver writes lives under the ``cachesaver/1/`` prefix, so the same
  ``diskcache.Cache`` may hold other data.

All methods block on disk I/O; the cache stage calls them from a worker thread.

>>> import tempfile
>>> store = SampleStore(tempfile.mkdtemp())
>>> store.append("k", ["a", "b"]), store.append("k", ["c"]), store.count("k")
(0, 2, 3)
>>> store.read("k", [2, 0])
['c', 'a']
>>> store.close()
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import diskcache

from .errors import ConfigurationError, CorruptStoreError, StoreError

__all__ = ["SampleStore", "StoredSample"]

logger = logging.getLogger(__name__)

_PREFIX = "cachesaver/1/"
_COUNT = _PREFIX + "count/"
_SAMPLE = _PREFIX + "sample/"
_RECORD = _PREFIX + "record/"
_MISSING = object()


@dataclass(frozen=True)
class StoredSample:
    """One stored sample: what the model returned and the token usage it reported (or None)."""

    data: Any
    usage: Any = None


def _sample_key(key: str, index: int) -> str:
    return f"{_SAMPLE}{key}/{index}"


def _record_key(namespace: str, key: str, request_id: Any, use: int) -> str:
    ident = json.dumps([namespace, key, type(request_id).__name__, request_id, use], ensure_ascii=False)
    return _RECORD + hashlib.sha256(ident.encode("utf-8")).hexdigest()


def open_cache(cache: Any) -> tuple[Any, bool]:
    """The diskcache to use for ``cache`` (a Cache, FanoutCache or a directory), and whether we own it."""
    if isinstance(cache, (str, os.PathLike)):
        return diskcache.Cache(os.fspath(cache), eviction_policy="none"), True
    for method in ("get", "set", "transact"):
        if not callable(getattr(cache, method, None)):
            raise ConfigurationError(
                f"cache must be a diskcache.Cache (or FanoutCache) or a directory path, got "
                f"{type(cache).__name__} without .{method}()"
            )
    policy = getattr(cache, "eviction_policy", "none")
    if policy != "none":
        logger.warning(
            "diskcache at %s uses eviction policy %r: stored samples may be evicted, and reading "
            "an evicted sample raises CorruptStoreError. Create it with "
            "Cache(directory, eviction_policy='none') to keep every sample.",
            getattr(cache, "directory", "?"),
            policy,
        )
    return cache, False


class SampleStore:
    """Append-only sample lists and replay records in one diskcache; see the module docstring."""

    def __init__(self, cache: Any) -> None:
        self.cache, self._owned = open_cache(cache)

    # -- samples --------------------------------------------------------------------------

    def count(self, key: str) -> int:
        """How many samples are stored for ``key``."""
        value = self.cache.get(_COUNT + key, 0, retry=True)
        if type(value) is not int or value < 0:
            raise CorruptStoreError(f"sample count for key {key} is {value!r}, not a non-negative int")
        return value

    def read(self, key: str, indices: Sequence[int]) -> list[Any]:
        """The samples at ``indices`` (as stored data, not StoredSample), in that order."""
        return [s.data for s in self.read_stored(key, indices)]

    def read_stored(self, key: str, indices: Sequence[int]) -> list[StoredSample]:
        """The :class:`StoredSample` at each of ``indices``, in that order."""
        get = self.cache.get
        out = []
        for index in indices:
            value = get(_sample_key(key, index), _MISSING, retry=True)
            if value is _MISSING:
                raise CorruptStoreError(
                    f"sample {index} of key {key} is missing from {self.directory}; it was evicted or "
                    "deleted. Use a diskcache.Cache with eviction_policy='none'."
                )
            if type(value) is not tuple or len(value) != 2:
                raise CorruptStoreError(f"sample {index} of key {key} is not a cachesaver sample")
            out.append(StoredSample(value[0], value[1]))
        return out

    def try_read_stored(self, key: str, indices: Sequence[int]) -> list[StoredSample] | None:
        """Like :meth:`read_stored`, but None when any of the samples is absent."""
        try:
            return self.read_stored(key, indices)
        except CorruptStoreError:
            return None

    def append(self, key: str, samples: Sequence[Any]) -> int:
        """Append ``samples`` (data, no usage) to ``key``'s list; the index of the first one."""
        with self.transaction():
            return self.append_in_transaction(key, [StoredSample(s) for s in samples])

    def append_in_transaction(self, key: str, samples: Sequence[StoredSample]) -> int:
        """Append inside an open :meth:`transaction`; the index of the first appended sample."""
        start = self.count(key)
        put = self.cache.set
        for offset, sample in enumerate(samples):
            put(_sample_key(key, start + offset), (sample.data, sample.usage), retry=True)
        put(_COUNT + key, start + len(samples), retry=True)
        return start

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the store's write lock: everything written inside commits together."""
        try:
            with self.cache.transact(retry=True):
                yield
        except diskcache.Timeout as exc:
            raise StoreError(
                f"the cache at {self.directory} stayed locked by another process; try again"
            ) from exc

    # -- replay records -------------------------------------------------------------------

    def get_record(self, namespace: str, key: str, request_id: Any, use: int) -> tuple[int, ...] | None:
        """The sample indices the ``use``-th request with this id received in ``namespace``."""
        value = self.cache.get(_record_key(namespace, key, request_id, use), None, retry=True)
        if value is None:
            return None
        if type(value) is not tuple or not all(type(i) is int and i >= 0 for i in value):
            raise CorruptStoreError(f"replay record for key {key} in namespace {namespace!r} is malformed")
        return value

    def put_record(
        self, namespace: str, key: str, request_id: Any, use: int, indices: Sequence[int]
    ) -> None:
        """Remember which indices a request received (inside or outside a transaction)."""
        self.cache.set(_record_key(namespace, key, request_id, use), tuple(indices), retry=True)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return str(getattr(self.cache, "directory", "?"))

    def close(self) -> None:
        """Close the underlying diskcache if this store opened it (a passed-in one stays open)."""
        if self._owned:
            self.cache.close()
