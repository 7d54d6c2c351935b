"""The memory engine: the reference implementation of the store protocol, and the fake for tests.

Everything lives in this process's memory and is gone when the object is. Samples are kept
pickled, so a sample that cannot be serialised fails its commit exactly as on disk, and what a
read returns is a fresh copy. A commit is all or nothing and becomes visible at once. It implements
:class:`~cachesaver.store.protocol.InspectableStore` too: each key keeps its canonical request
and each sample the time it was stored.

Two locks, as diskcache has: a *write lock* one commit holds from before its hook's ``before``
to after its ``finish`` (commits run one at a time; another commit waits for it at most
``wait_s``, then raises StoreLockedError), and a short *state lock* every call holds
while it looks at or changes the data. Lookups take only the state lock, so they never wait
for a commit in progress: the allocation layer's hook, called while the write lock is held,
waits for a lookup round, which must be able to finish.

>>> store = MemoryStore()
>>> store.commit([Append("k", (("a", None),))], [RecordWrite("k", RecordId("ns", "r", 1, 0), ((0, 1),))])
[0]
>>> list(store.view(["k"], [("k", RecordId("ns", "r", 1, 0).tag)])["k"].found.values())
[(0,)]
"""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..errors import CorruptStoreError, StoreError, StoreLockedError
from .protocol import (  # noqa: F401 - RecordId is used by the doctest
    CONSULTED_RECORDS,
    RecordId,
    EMPTY_VIEW,
    Append,
    CommitHook,
    KeyEntry,
    KeyView,
    RecordWrite,
    StoredSample,
    import_token_prefix,
    namespace_digest,
    namespace_prefix,
)

__all__ = ["MemoryStore"]


class _Entry:
    __slots__ = ("samples", "records", "damaged", "request", "stamps")

    def __init__(self) -> None:
        self.samples: list[bytes] = []
        self.records: dict[str, tuple[int, ...]] = {}  # insertion order = first written
        self.damaged = False  # set by MemoryStore.damage: the key's entry no longer decodes
        self.request: str | None = None
        self.stamps: list[float] = []  # when each sample was stored


class MemoryStore:
    """An in-process :class:`~cachesaver.store.protocol.SampleStore`; see the module docstring.

    ``name`` appears in messages (``location``)."""

    def __init__(self, name: str = "memory") -> None:
        self._name = name
        self._lock = threading.Lock()  # the state lock: held briefly by every call
        self._write_lock = threading.Lock()  # held by one commit, hook calls included
        self._entries: dict[str, _Entry] = {}
        self._tokens: set[str] = set()
        self._namespaces: dict[str, str] = {}  # digest -> name
        self._closed = False
        self.writable = True

    @property
    def location(self) -> str:
        return f"memory:{self._name}"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store {self.location} is closed; open a new one")

    def view(
        self, keys: Sequence[str], tags: Sequence[tuple[str, str]] = ()
    ) -> Mapping[str, KeyView | StoreError]:
        asked: dict[str, list[str]] = {}
        for key, tag in tags:
            asked.setdefault(key, []).append(tag)
        with self._lock:
            self._check_open()
            out: dict[str, KeyView | StoreError] = {}
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    out[key] = EMPTY_VIEW
                    continue
                if entry.damaged:
                    out[key] = CorruptStoreError(f"the entry of key {key} in {self.location} cannot be decoded")
                    continue
                consulted = dict(list(entry.records.items())[:CONSULTED_RECORDS])
                found = {t: entry.records[t] for t in asked.get(key, ()) if t in entry.records}
                out[key] = KeyView(len(entry.samples), consulted, found)
            return out

    def read(self, wanted: Mapping[str, Sequence[int]]) -> Mapping[str, list[StoredSample] | StoreError]:
        with self._lock:
            self._check_open()
            raw: dict[str, list[bytes] | None] = {}
            for key, indices in wanted.items():
                entry = self._entries.get(key)
                samples = entry.samples if entry is not None else []
                if any(i < 0 or i >= len(samples) for i in indices):
                    raw[key] = None
                else:
                    raw[key] = [samples[i] for i in indices]
        out: dict[str, list[StoredSample] | StoreError] = {}
        for key, blobs in raw.items():
            if blobs is None:
                out[key] = CorruptStoreError(f"a sample asked of key {key} is not in {self.location}")
                continue
            try:
                out[key] = [_decode(blob, key) for blob in blobs]
            except CorruptStoreError as exc:
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
        return self._commit(appends, records, token, hook, wait_s)

    def _commit(
        self,
        appends: Sequence[Append],
        records: Sequence[RecordWrite],
        token: str | None,
        hook: CommitHook | None,
        wait_s: float | None,
        then: Callable[[list[int]], None] | None = None,
    ) -> list[int] | None:
        """:meth:`commit`; ``then(starts)`` runs under the same locks once the appends are
        applied (a shared run's claims of them), before the hook's ``after``."""
        try:
            encoded = [[pickle.dumps(tuple(s), protocol=pickle.HIGHEST_PROTOCOL) for s in a.samples] for a in appends]
        except Exception as exc:  # noqa: BLE001 - a sample that cannot be serialised
            raise StoreError(f"a sample cannot be serialised for {self.location}: {exc}") from exc
        self._acquire_write(wait_s)
        try:
            with self._lock:
                self._check_open()
            if not self.writable:
                raise StoreError(f"the store {self.location} is read-only; open it writable to add samples")
            if hook is not None:
                hook.before()
            try:
                with self._lock:
                    self._check_open()
                    starts = self._apply(appends, records, encoded, token)
                    if then is not None and starts is not None:
                        then(starts)
                if hook is not None and starts is not None:
                    hook.after(starts)
                return starts
            finally:
                if hook is not None:
                    hook.finish()
        finally:
            self._write_lock.release()

    def _acquire_write(self, wait_s: float | None) -> None:
        """Take the write lock, waiting at most ``wait_s`` (None: as long as it takes)."""
        if wait_s is None:
            acquired = self._write_lock.acquire()
        elif wait_s > 0:
            acquired = self._write_lock.acquire(timeout=wait_s)
        else:
            acquired = self._write_lock.acquire(blocking=False)
        if not acquired:
            raise StoreLockedError(
                f"another commit to {self.location} held its write lock for over {wait_s:g} s "
                "(wait_s); nothing was written. Try again once it has finished"
            )

    def _apply(
        self,
        appends: Sequence[Append],
        records: Sequence[RecordWrite],
        encoded: list[list[bytes]],
        token: str | None,
    ) -> list[int] | None:
        """Apply a commit (under the state lock): all of it, or nothing when it fails."""
        if token is not None and token in self._tokens:
            return None
        # Everything is computed first, then applied: all or nothing.
        counts: dict[str, int] = {}
        starts = []
        for append in appends:
            base = counts.get(append.key)
            if base is None:
                entry = self._entries.get(append.key)
                base = len(entry.samples) if entry is not None else 0
            starts.append(base)
            counts[append.key] = base + len(append.samples)
        sizes = [len(append.samples) for append in appends]
        resolved = [(write.key, write.record.tag, write.resolve(starts, sizes)) for write in records]
        now = time.time()
        for append, blobs, start in zip(appends, encoded, starts):
            entry = self._entries.setdefault(append.key, _Entry())
            if start == 0 and blobs and append.request is not None:
                entry.request = append.request_text()
            entry.samples.extend(blobs)
            entry.stamps.extend([now if append.stored_at is None else append.stored_at] * len(blobs))
        for key, tag, indices in resolved:
            self._entries.setdefault(key, _Entry()).records[tag] = indices
        for write in records:
            self._namespaces.setdefault(namespace_digest(write.record.namespace), write.record.namespace)
        if token is not None:
            self._tokens.add(token)
        return starts

    def applied(self, token: str) -> bool:
        with self._lock:
            self._check_open()
            return token in self._tokens

    def release_thread(self) -> None:
        """Nothing is held per thread."""

    def shared_runs(self) -> Any:
        """Shared runs among the pipelines of this process that use this object (see
        :mod:`cachesaver.store.shared_local`)."""
        from .shared_local import MemorySharedRuns

        return MemorySharedRuns(self)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # -- inspection (InspectableStore) ------------------------------------------------------

    def iter_keys(self) -> Iterator[str]:
        with self._lock:
            self._check_open()
            keys = [key for key, entry in self._entries.items() if entry.samples or entry.records]
        return iter(keys)

    def inspect(self, keys: Sequence[str]) -> Mapping[str, KeyEntry | StoreError]:
        with self._lock:
            self._check_open()
            out: dict[str, KeyEntry | StoreError] = {}
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    out[key] = KeyEntry(key, 0)
                elif entry.damaged:
                    out[key] = CorruptStoreError(f"the entry of key {key} in {self.location} cannot be decoded")
                else:
                    out[key] = KeyEntry(key, len(entry.samples), entry.request, tuple(entry.stamps), dict(entry.records))
            return out

    def namespace_names(self) -> Mapping[str, str]:
        with self._lock:
            self._check_open()
            return dict(self._namespaces)

    def forget(self, key: str, namespaces: Sequence[str] | None = None, *, wait_s: float | None = None) -> int:
        self._acquire_write(wait_s)
        try:
            with self._lock:
                self._check_open()
                if not self.writable:
                    raise StoreError(f"the store {self.location} is read-only; nothing can be forgotten")
                entry = self._entries.get(key)
                if namespaces is None:
                    prefix = import_token_prefix(key)
                    self._tokens = {t for t in self._tokens if not t.startswith(prefix)}
                    if entry is None:
                        return 0
                    del self._entries[key]
                    return len(entry.samples)
                if entry is None:
                    return 0
                prefixes = tuple(namespace_prefix(ns) for ns in namespaces)
                gone = [tag for tag in entry.records if tag.startswith(prefixes)]
                for tag in gone:
                    del entry.records[tag]
                return len(gone)
        finally:
            self._write_lock.release()

    def size_bytes(self) -> int:
        with self._lock:
            self._check_open()
            return sum(
                sum(map(len, entry.samples)) + len(entry.request or "") for entry in self._entries.values()
            )

    # -- for tests of the contract ----------------------------------------------------------

    def damage(self, key: str) -> None:
        """Make ``key``'s entry undecodable, as a torn write would: its view and every read of
        its samples give CorruptStoreError (like diskcache's head entry, which holds a key's
        first samples and records); other keys are untouched."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.damaged = True
                entry.samples = [b"\x80\x04\x95" for _ in entry.samples]


def _decode(blob: bytes, key: str) -> StoredSample:
    try:
        value = pickle.loads(blob)
    except Exception as exc:  # noqa: BLE001 - that entry alone is damaged
        raise CorruptStoreError(f"a sample of key {key} cannot be decoded: {exc}") from exc
    if type(value) is not tuple or len(value) != 2:
        raise CorruptStoreError(f"a sample of key {key} is not a cachesaver sample")
    return value
