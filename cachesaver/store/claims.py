"""Which stored samples a run has already handed out, and which ones a request gets next.

A *run* is one pipeline object. Inside a run and a namespace, a stored sample is handed out at
most once (samples are i.i.d. draws, and reusing one would correlate answers). A request takes,
in this order:

1. the indices recorded for it by an earlier run (same namespace, key, request_id, n and k-th
   use of that (request_id, n)), those that nobody in this run has claimed yet;
2. then the lowest indices not yet claimed in this run;
3. then new samples, appended past the end of the stored list.

Because step 1 looks requests up by identity rather than by arrival, a re-run that issues the
same requests with the same ids gets exactly the same samples whatever the order in which its
requests arrive or finish. Requests without an id skip step 1 and still replay cheaply.

Memory is bounded: a run keeps at most :attr:`RunClaims.max_in_memory` entries per (namespace,
key) and as many use counts per (namespace, key, request_id, n) in memory (about 100 bytes
each; a key whose samples were claimed in order costs its count alone, whatever its length).
When :meth:`RunClaims.trim`
finds more, it moves the least recently used ones to a private store in a new directory under
the system's temporary directory (``TMPDIR``; keep it on disk, not in RAM, for the bound to
mean anything) and brings them back when they are needed again, so a long run with ever-new
prompts or ids keeps a fixed memory footprint and makes exactly the same choices. From then on
an entry not in memory costs a disk read (tens of microseconds) in the broker's worker thread.
:meth:`RunClaims.close` deletes that directory and closes its one SQLite connection (so does
collecting the object, or exiting). The private store is a table of the standard library's
``sqlite3``, not a cache engine: claims never depend on which engine holds the samples.
There are no per-key locks: all decisions are made by one worker at a time.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
import tempfile
import threading
import weakref
from itertools import islice
from typing import Any, Collection, Iterable, Sequence


__all__ = ["KeyClaims", "RunClaims"]


class KeyClaims:
    """The claimed indices of one (namespace, key): everything below ``floor`` plus ``above``."""

    __slots__ = ("floor", "above")

    def __init__(self) -> None:
        self.floor = 0
        self.above: set[int] | None = None  # created on the first out-of-order claim

    def is_claimed(self, index: int) -> bool:
        return index < self.floor or (self.above is not None and index in self.above)

    def claim(self, index: int) -> None:
        if index == self.floor:
            self.floor += 1
            above = self.above
            if above:
                while self.floor in above:
                    above.remove(self.floor)
                    self.floor += 1
        elif index > self.floor:
            if self.above is None:
                self.above = set()
            self.above.add(index)

    def release(self, index: int) -> None:
        """Make ``index`` claimable again (a request that held it failed or was abandoned)."""
        if index >= self.floor:
            if self.above is not None:
                self.above.discard(index)
            return
        if self.above is None:
            self.above = set()
        self.above.update(range(index + 1, self.floor))
        self.floor = index

    def lowest_unclaimed(self, limit: int, want: int, exclude: Collection[int] = ()) -> list[int]:
        """Up to ``want`` unclaimed indices below ``limit``, lowest first, skipping ``exclude``."""
        out: list[int] = []
        index = self.floor
        above = self.above or ()
        while len(out) < want and index < limit:
            if index not in above and index not in exclude:
                out.append(index)
            index += 1
        return out


def _spill_name(kind: str, ident: int) -> str:
    return f"{kind}{ident}"


class _Spill:
    """The private on-disk part of a run's claims: one SQLite table of pickled entries in a new
    temporary directory, through one connection that any thread may use (under a lock), closed
    and deleted by :meth:`remove`."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="cachesaver-claims-")
        try:
            self._con = sqlite3.connect(
                os.path.join(self.directory, "claims.db"), check_same_thread=False, isolation_level=None
            )
            self._con.execute("PRAGMA journal_mode = OFF")  # private and rebuilt each run
            self._con.execute("PRAGMA cache_size = -512")  # KiB: the OS caches the file
            self._con.execute("CREATE TABLE entries (name TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self._lock = threading.Lock()

    def get(self, name: str, default: Any) -> Any:
        with self._lock:
            row = self._con.execute("SELECT value FROM entries WHERE name = ?", (name,)).fetchone()
        return default if row is None else pickle.loads(row[0])

    def put_all(self, items: Iterable[tuple[str, Any]]) -> None:
        """Store every (name, value) at once: all or nothing."""
        rows = [(name, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)) for name, value in items]
        with self._lock:
            self._con.execute("BEGIN")
            try:
                self._con.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?)", rows)
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def remove(self) -> None:
        with self._lock:
            self._con.close()
        shutil.rmtree(self.directory, ignore_errors=True)


_MASK64 = (1 << 64) - 1
Ident = int  # 64 bits of the key's hash, then 64 of the rest's (see RunClaims)


class RunClaims:
    """Per-run state: claims per (namespace, key) and use counts per (namespace, key,
    request_id, n), with bounded memory (see the module docstring).

    In memory, an identity is one int: 64 bits of the key's ``hash()`` (which every string
    keeps once computed, so it costs nothing more) and 64 bits of a hash of the rest (the
    namespace; or namespace, request_id and n), so a distinct request costs two small
    dictionary entries (about 100 bytes each) however long its key or id. A key whose samples
    were claimed in order is held as its count alone. Identities hold for one process, as
    the claims do (the disk part included). (Two identities sharing all 128 bits would share
    claims; with ten million identities in one run the odds are below 1e-24.)
    """

    max_in_memory = 50_000
    """Entries of each kind held in memory; when :meth:`trim` finds more, it moves the least
    recently used ones to disk until nine tenths of this remain."""

    def __init__(self, max_in_memory: int | None = None) -> None:
        if max_in_memory is not None:
            self.max_in_memory = max_in_memory
        self._keys: dict[Ident, int | KeyClaims] = {}  # an int: everything below it is claimed
        self._uses: dict[Ident, int] = {}
        self._spill: _Spill | None = None
        self._finalizer: weakref.finalize | None = None
        self._retry_above = 0  # after a failed trim, wait until memory grows past this
        self._released: dict[Ident, list[int]] = {}  # uses given back, per identity
        self.reused = False
        """Whether the use the last :meth:`next_use` returned had been given back before."""

    # -- identities ---------------------------------------------------------------------------

    @staticmethod
    def _key_ident(namespace: str, key: str) -> Ident:
        return ((hash(key) & _MASK64) << 64) | (hash(namespace) & _MASK64)

    @staticmethod
    def _use_ident(namespace: str, key: str, request_id: Any, n: int) -> Ident:
        # An int id is hashed as its text: hash() of ints collides by construction (-1 and -2,
        # 0 and 2**61 - 1), which would make two ids share their use counts.
        rid = str(request_id) if type(request_id) is int else request_id
        return ((hash(key) & _MASK64) << 64) | (hash((namespace, type(request_id).__name__, rid, n)) & _MASK64)

    # -- claims of one key --------------------------------------------------------------------

    def _get(self, ident: Ident) -> KeyClaims:
        """The claims of ``ident`` as an object to change; :meth:`_put` stores it back."""
        keys = self._keys
        value = keys.pop(ident, None)  # popped and put back: the most recently used is last
        if value is None and self._spill is not None:
            saved = self._spill_get(_spill_name("k", ident), None)
            if saved is not None:
                entry = KeyClaims()
                entry.floor, entry.above = saved
                return entry
        if value is None:
            return KeyClaims()
        if type(value) is int:
            entry = KeyClaims()
            entry.floor = value
            return entry
        return value  # type: ignore[return-value]

    def _put(self, ident: Ident, entry: KeyClaims) -> None:
        self._keys[ident] = entry.floor if not entry.above else entry

    def claims(self, namespace: str, key: str) -> KeyClaims:
        """A copy of the claims of (namespace, key), for inspection."""
        ident = self._key_ident(namespace, key)
        entry = self._get(ident)
        self._put(ident, entry)
        copy = KeyClaims()
        copy.floor, copy.above = entry.floor, set(entry.above) if entry.above else None
        return copy

    def take(self, namespace: str, key: str, indices: Sequence[int], stored: int) -> bool:
        """Claim all of ``indices`` (distinct, below ``stored``, none claimed yet) and return
        True; else claim none and return False."""
        ident = self._key_ident(namespace, key)
        keys = self._keys
        value = keys.pop(ident, None)  # put back below (or by _get/_put): the most recent is last
        floor = 0 if value is None and self._spill is None else value  # 0: never claimed
        if type(floor) is int:
            # Claimed in order so far (or never): the common case of a replay, taking the next
            # indices in order, is a new count.
            count = len(indices)
            if (
                count
                and floor + count <= stored
                and indices[0] == floor
                and (count == 1 or list(indices) == list(range(floor, floor + count)))
            ):
                keys[ident] = floor + count
                return True
        if value is not None:
            keys[ident] = value
        if len(set(indices)) != len(indices):
            return False
        entry = self._get(ident)
        try:
            if any(i >= stored or entry.is_claimed(i) for i in indices):
                return False
            for index in indices:
                entry.claim(index)
            return True
        finally:
            self._put(ident, entry)

    def claim(self, namespace: str, key: str, indices: Iterable[int]) -> None:
        ident = self._key_ident(namespace, key)
        entry = self._get(ident)
        for index in indices:
            entry.claim(index)
        self._put(ident, entry)

    def release(self, namespace: str, key: str, indices: Iterable[int]) -> None:
        """Make ``indices`` of (namespace, key) claimable again in this run."""
        ident = self._key_ident(namespace, key)
        entry = self._get(ident)
        for index in indices:
            entry.release(index)
        self._put(ident, entry)

    def choose(
        self,
        namespace: str,
        key: str,
        n: int,
        stored: int,
        recorded: Sequence[int] | None = None,
        reserved: Iterable[int] = (),
    ) -> list[int]:
        """Pick and claim up to ``n`` stored indices (of ``stored``) for a request, in order.

        ``reserved`` are indices recorded for other requests of this namespace: they are taken
        only when no other stored sample is left, so an unidentified request does not take the
        sample an identified one will ask for back.
        """
        ident = self._key_ident(namespace, key)
        entry = self._get(ident)
        chosen: list[int] = []
        if recorded:
            for index in recorded:
                if len(chosen) == n:
                    break
                if index < stored and not entry.is_claimed(index) and index not in chosen:
                    chosen.append(index)
        if len(chosen) < n and reserved:
            avoid = set(reserved)
            avoid.update(chosen)
            chosen.extend(entry.lowest_unclaimed(stored, n - len(chosen), avoid))
        if len(chosen) < n:
            chosen.extend(entry.lowest_unclaimed(stored, n - len(chosen), chosen))
        for index in chosen:
            entry.claim(index)
        self._put(ident, entry)
        return chosen

    # -- uses ---------------------------------------------------------------------------------

    def next_use(self, namespace: str, key: str, request_id: Any, n: int) -> int:
        """0 the first time this run sees (namespace, key, request_id, n), then 1, 2, ..."""
        ident = self._use_ident(namespace, key, request_id, n)
        released = self._released.get(ident) if self._released else None
        if released:
            use = min(released)
            released.remove(use)
            if not released:
                del self._released[ident]
            self.reused = True
            return use
        self.reused = False
        uses = self._uses
        count = uses.pop(ident, None)
        if count is None:
            count = 0 if self._spill is None else self._spill_get(_spill_name("u", ident), 0)
        uses[ident] = count + 1
        return count

    def release_use(self, namespace: str, key: str, request_id: Any, n: int, use: int) -> None:
        """Give back ``use`` (from :meth:`next_use`): the attempt that took it failed or was
        abandoned, so it does not count. The next :meth:`next_use` of that identity returns
        the lowest use given back before counting on. Given-back uses stay in memory (one
        entry per failed attempt whose use has not been taken again)."""
        ident = self._use_ident(namespace, key, request_id, n)
        self._released.setdefault(ident, []).append(use)

    def undo_use(self, namespace: str, key: str, request_id: Any, n: int, use: int, reused: bool) -> None:
        """Take back the last :meth:`next_use` of this identity (which returned ``use``, and
        ``reused`` as :attr:`reused` said) as if it had not been asked: nothing was done with
        it, so the next :meth:`next_use` returns it again, and says it was reused only if it
        was then. Falls back to :meth:`release_use` when a later use was taken meanwhile."""
        ident = self._use_ident(namespace, key, request_id, n)
        if not reused and self._uses.get(ident) == use + 1:
            if use == 0:
                del self._uses[ident]
            else:
                self._uses[ident] = use
            return
        self._released.setdefault(ident, []).append(use)

    # -- memory -------------------------------------------------------------------------------

    @property
    def over_budget(self) -> bool:
        """Whether :meth:`trim` has something to move to disk."""
        ceiling = max(self.max_in_memory, self._retry_above)
        return len(self._keys) > ceiling or len(self._uses) > ceiling

    @property
    def spilled(self) -> bool:
        """Whether some entries were moved to disk (so reading claims may read the disk)."""
        return self._spill is not None

    @property
    def in_memory(self) -> int:
        """How many entries (claims and use counts) are held in memory now."""
        return len(self._keys) + len(self._uses)

    def trim(self) -> None:
        """Move the least recently used entries beyond :attr:`max_in_memory` to disk.

        Call it only between rounds. Blocks on disk I/O when there is something to move. If
        the disk refuses, the error propagates and every entry stays in memory.
        """
        ceiling = max(self.max_in_memory, self._retry_above)
        if len(self._keys) <= ceiling and len(self._uses) <= ceiling:
            return
        limit = self.max_in_memory * 9 // 10  # some slack, so the next rounds need not move any
        try:
            spill = self._open_spill()
            old_keys = list(islice(self._keys.items(), max(len(self._keys) - limit, 0)))
            old_uses = list(islice(self._uses.items(), max(len(self._uses) - limit, 0)))
            # Written first, dropped from memory after the commit: a failed write loses nothing.
            spill.put_all(
                [(_spill_name("k", ident), _saved(entry)) for ident, entry in old_keys]
                + [(_spill_name("u", ident), use) for ident, use in old_uses]
            )
        except Exception:
            # Try again only once memory has grown by half again: no retry storm on a bad disk.
            self._retry_above = max(len(self._keys), len(self._uses)) * 3 // 2
            raise
        self._retry_above = 0
        for ident, _ in old_keys:
            del self._keys[ident]
        for ident, _ in old_uses:
            del self._uses[ident]
        # Rebuilt, so the dictionaries do not keep the room of what left them.
        self._keys = dict(self._keys)
        self._uses = dict(self._uses)

    def _open_spill(self) -> _Spill:
        spill = self._spill
        if spill is None:
            spill = self._spill = _Spill()
            # Deleted at close, or at the latest when this object is collected or at exit.
            self._finalizer = weakref.finalize(self, spill.remove)
        return spill

    def _spill_get(self, name: str, default: Any) -> Any:
        return self._spill.get(name, default)  # type: ignore[union-attr]

    def close(self) -> None:
        """Delete the on-disk part, if any, closing its connection; the object must not be used
        afterwards."""
        spill, self._spill = self._spill, None
        if spill is not None and self._finalizer is not None:
            self._finalizer()  # spill.remove


def _saved(entry: int | KeyClaims) -> tuple[int, set[int] | None]:
    if type(entry) is int:
        return (entry, None)
    return (entry.floor, entry.above)  # type: ignore[union-attr]
