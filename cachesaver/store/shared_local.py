"""Shared runs and leases on the memory and diskcache engines (:class:`~cachesaver.store.
protocol.SharedRunStore`).

Both keep the same data: a *run record* per run id (its generation, live workers with their
deadlines, dead workers in order), a *claim state* per (generation, cache key) (see
:mod:`cachesaver.store.shared_rules`) and a *lease* per cache key (holder, scopes, deadline,
whether it is open to joins, the samples joined per scope, the late arrivals and the workers
that came by). They differ in where it lives and what makes a step atomic:

* :class:`MemorySharedRuns`: in the :class:`~cachesaver.store.memory.MemoryStore` object, under
  its state lock (so for the pipelines of one process sharing that object); times from the
  monotonic clock.
* :class:`DiskcacheSharedRuns`: rows of the cache directory (under ``cachesaver/1/run/``,
  ``cachesaver/1/claims/``, ``cachesaver/1/lease/`` and ``cachesaver/1/lease-trace/``), each
  step one SQLite write transaction (the lock every commit takes), so for the processes of one
  host; times from the host's wall clock, which they share. A claim state row expires
  ``keep_s`` after it was last written; run records ``ttl_s`` after the last join; leases and
  their traces when their time is up; a run's claim rows are deleted when it ends.

A commit that claims new samples does so in the same atomic step as its appends: under the
memory store's locks, or inside the commit's SQLite transaction (in the commit hook's
``before``, where the new indices are already known: nobody else can append meanwhile).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..errors import CorruptStoreError, StoreError
from .protocol import (
    CONSULTED_RECORDS,
    Append,
    ClaimNew,
    CommitHook,
    Grant,
    KeyClaimOps,
    Lease,
    LeasesTaken,
    RecordWrite,
    RecordId,
    RunRef,
    RunStatus,
    StoredSample,
    namespace_digest,
    namespace_prefix,
)
from .shared_rules import KeyRunState, apply_new, apply_ops

if TYPE_CHECKING:
    from .diskcache import DiskcacheStore
    from .memory import MemoryStore

__all__ = ["DiskcacheSharedRuns", "MemorySharedRuns"]


def worker_name(worker: str) -> str:
    """The name part of a worker incarnation id (``"<hex>:<name>"``)."""
    return worker.partition(":")[2]


class _Run:
    """A run record: generation, live workers (id -> deadline), dead workers in order."""

    __slots__ = ("generation", "workers", "dead", "expires")

    def __init__(self, generation: str) -> None:
        self.generation = generation
        self.workers: dict[str, float] = {}
        self.dead: list[str] = []
        self.expires = 0.0

    def prune(self, now: float) -> None:
        for worker, deadline in list(self.workers.items()):
            if deadline <= now:
                del self.workers[worker]
                self.dead.append(worker)

    def join(self, worker: str, ttl_s: float, now: float) -> RunStatus:
        self.prune(now)
        if worker in self.dead:
            return self.status(lost=True)
        name = worker_name(worker)
        for other in list(self.workers):
            if other != worker and name and worker_name(other) == name:  # a restart replaces it
                del self.workers[other]
                self.dead.append(other)
        self.workers[worker] = now + ttl_s
        self.expires = max(self.expires, now + ttl_s)
        return self.status()

    def leave(self, worker: str, now: float) -> bool:
        """Remove ``worker``; True when no live worker is left (the run ends)."""
        self.prune(now)
        if self.workers.pop(worker, None) is not None:
            self.dead.append(worker)
        return not self.workers

    def status(self, lost: bool = False, now: float | None = None) -> RunStatus:
        workers = self.workers
        if now is not None:  # read only: those past their deadline count as dead
            late = [w for w, deadline in workers.items() if deadline <= now]
            return RunStatus(
                self.generation, tuple(w for w in workers if w not in late), tuple(self.dead + late), lost
            )
        return RunStatus(self.generation, tuple(workers), tuple(self.dead), lost)

    def to_data(self) -> tuple[Any, ...]:
        return (self.generation, dict(self.workers), list(self.dead), self.expires)

    @classmethod
    def from_data(cls, data: Any) -> "_Run":
        run = cls(data[0])
        run.workers, run.dead, run.expires = dict(data[1]), list(data[2]), float(data[3])
        return run


class _Records:
    """:class:`~cachesaver.store.shared_rules.RecordAccess` over a key's count and records as
    read in the engine's atomic step, with the claim's own writes seen at once."""

    __slots__ = ("count", "consulted", "_lookup", "written")

    def __init__(self, count: int, consulted: Mapping[str, tuple[int, ...]], lookup: Callable[[str], Any]) -> None:
        self.count = count
        self.consulted = dict(consulted)
        self._lookup = lookup
        self.written: dict[str, tuple[int, ...]] = {}

    def record(self, tag: str) -> tuple[int, ...] | None:
        if tag in self.written:
            return self.written[tag]
        return self._lookup(tag)

    def write_record(self, tag: str, indices: tuple[int, ...]) -> None:
        self.written[tag] = indices
        if tag in self.consulted or len(self.consulted) < CONSULTED_RECORDS:
            self.consulted[tag] = indices


def _record_writes(key: str, written: Mapping[str, tuple[int, ...]]) -> list[RecordWrite]:
    """The records a claim wrote, as a commit writes them (the rules know tags, not ids)."""
    return [RecordWrite(key, _TaggedRecord("", None, 0, 0, tag), tuple(indices)) for tag, indices in written.items()]


@dataclass(frozen=True)
class _TaggedRecord(RecordId):
    """A RecordId that is its tag (the other fields are unused)."""

    raw_tag: str = ""

    @property
    def tag(self) -> str:
        return self.raw_tag


def _count_claimed(state: KeyRunState, namespace: str, below: int) -> int:
    entry = state.claimed.get(namespace_prefix(namespace))
    return 0 if entry is None else sum(1 for i in range(below) if entry.is_claimed(i))


def _grants(granted: Sequence[tuple[str, Any, tuple[int, ...], bool]], samples: Mapping[int, StoredSample]) -> list[Grant]:
    return [Grant(t, use, indices, {i: samples[i] for i in indices}, wrote) for t, use, indices, wrote in granted]


class _LeaseState:
    """A single-flight lease as the local engines keep it (see :class:`~cachesaver.store.
    protocol.Lease`): holder, scopes, deadline (the engine's clock), turned-away acquires,
    whether it is open to joins, the samples joined per scope, the late arrivals and the
    workers that found it (the first one the holder's own)."""

    __slots__ = ("holder", "scopes", "deadline", "waiting", "open", "joined", "late", "visitors")

    def __init__(
        self, holder: str, scopes: tuple[str, ...], deadline: float, open_: bool = False,
        waiting: int = 0, joined: Sequence[int] = (), late: int = 0, visitors: Sequence[str] = (),
    ) -> None:
        self.holder, self.scopes, self.deadline, self.waiting, self.open = holder, scopes, deadline, waiting, open_
        self.joined = list(joined) if joined else [0] * len(scopes)
        self.late = late
        self.visitors = list(visitors)

    def join(self, wanted: Mapping[str, int], who: str) -> None:
        """Another holder's acquire (of worker ``who``): one more turned away and a visitor; if
        it wants one of the scopes, its samples joined while open, else one more late arrival."""
        self.waiting += 1
        if who not in self.visitors:
            self.visitors.append(who)
        if not any(scope in wanted for scope in self.scopes):
            return
        if not self.open:
            self.late += 1
            return
        for position, scope in enumerate(self.scopes):
            self.joined[position] += int(wanted.get(scope, 0))

    def seal(self) -> dict[str, int]:
        self.open = False
        return dict(zip(self.scopes, self.joined))

    def view(self, now: float) -> Lease:
        return Lease(
            self.holder, self.scopes, self.deadline - now, self.waiting, self.open, tuple(self.joined), self.late,
            max(len(self.visitors) - 1, 0),  # the first is the holder's own worker
        )

    def to_data(self) -> tuple[Any, ...]:
        return (
            self.holder, self.scopes, self.deadline, self.waiting, self.open, tuple(self.joined), self.late,
            tuple(self.visitors),
        )

    @classmethod
    def from_data(cls, data: Any) -> "_LeaseState":
        """A stored lease; one written before leases could be joined (four fields) is sealed."""
        holder, scopes, deadline, waiting = data[:4]
        if len(data) < 8:
            return cls(holder, tuple(scopes), float(deadline), False, int(waiting))
        return cls(holder, tuple(scopes), float(deadline), bool(data[4]), int(waiting), data[5], int(data[6]), data[7])


def _worker(holder: str, run: RunRef | None) -> str:
    """Who takes or visits a lease: the run's worker, else the holder itself."""
    return holder if run is None else run.worker


def _first(worker: str, been: Sequence[str]) -> tuple[str, ...]:
    """The visitors a new lease of ``worker`` starts with: itself, then those of the key's
    previous lease's trace (``been``)."""
    return (worker, *(other for other in been if other != worker))


def _peers(run: _Run, worker: str, now: float) -> int:
    """The live workers of ``run`` other than ``worker``."""
    return sum(1 for other, deadline in run.workers.items() if other != worker and deadline > now)


# -- memory ------------------------------------------------------------------------------------


class _MemoryShared:
    """The shared-run data kept on one MemoryStore object."""

    def __init__(self) -> None:
        self.runs: dict[str, _Run] = {}
        self.states: dict[tuple[str, str], tuple[KeyRunState, float]] = {}
        self.leases: dict[str, _LeaseState] = {}
        self.traces: dict[str, tuple[tuple[str, ...], float]] = {}  # key -> (workers, until)


class MemorySharedRuns:
    """Shared runs within one process, on a :class:`~cachesaver.store.memory.MemoryStore`."""

    def __init__(self, store: "MemoryStore") -> None:
        self._store = store
        with store._lock:
            shared = getattr(store, "_shared", None)
            if shared is None:
                shared = store._shared = _MemoryShared()  # type: ignore[attr-defined]
        self._data: _MemoryShared = shared

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _live_run(self, run_id: str, now: float) -> _Run | None:
        run = self._data.runs.get(run_id)
        if run is not None and run.expires <= now:
            self._drop(run_id)
            return None
        return run

    def _drop(self, run_id: str) -> None:
        run = self._data.runs.pop(run_id, None)
        if run is not None:
            for ident in [i for i in self._data.states if i[0] == run.generation]:
                del self._data.states[ident]

    def join(self, run_id: str, worker: str, ttl_s: float, generation: str) -> RunStatus:
        with self._store._lock:
            self._store._check_open()
            now = self._now()
            run = self._live_run(run_id, now)
            if run is None:
                run = self._data.runs[run_id] = _Run(generation)
            return run.join(worker, ttl_s, now)

    def leave(self, run_id: str, worker: str) -> None:
        with self._store._lock:
            now = self._now()
            run = self._live_run(run_id, now)
            if run is not None and run.leave(worker, now):
                self._drop(run_id)

    def status(self, run_id: str) -> RunStatus | None:
        with self._store._lock:
            now = self._now()
            run = self._live_run(run_id, now)
            return None if run is None else run.status(now=now)

    def end(self, run_id: str) -> None:
        with self._store._lock:
            self._drop(run_id)

    def _state(self, generation: str, key: str, now: float) -> KeyRunState:
        found = self._data.states.get((generation, key))
        if found is None or found[1] <= now:
            return KeyRunState()
        return found[0]

    def claim(self, run: RunRef, ops: Mapping[str, KeyClaimOps], keep_s: float) -> dict[str, list[Grant] | StoreError]:
        from .memory import _decode, _Entry

        store = self._store
        out: dict[str, list[Grant] | StoreError] = {}
        with store._lock:
            store._check_open()
            now = self._now()
            for key, key_ops in ops.items():
                entry = store._entries.get(key)
                if entry is not None and entry.damaged:
                    out[key] = CorruptStoreError(f"the entry of key {key} in {store.location} cannot be decoded")
                    continue
                live = entry if entry is not None else _Entry()
                records = live.records
                view = _Records(len(live.samples), dict(list(records.items())[:CONSULTED_RECORDS]), records.get)
                state = self._state(run.generation, key, now)
                granted = apply_ops(state, view, key_ops, run)
                if view.written:
                    target = store._entries.setdefault(key, live)
                    for tag, indices in view.written.items():
                        target.records[tag] = indices
                    for ask in key_ops.asks:  # the names of the namespaces records are kept for
                        store._namespaces.setdefault(namespace_digest(ask.namespace), ask.namespace)
                self._data.states[(run.generation, key)] = (state, now + keep_s)
                try:
                    samples = {i: _decode(live.samples[i], key) for g in granted for i in g[2]}
                except CorruptStoreError as exc:
                    out[key] = exc
                    continue
                out[key] = _grants(granted, samples)
        return out

    def claimed(self, run: RunRef, namespace: str, key: str, below: int) -> int:
        with self._store._lock:
            state = self._state(run.generation, key, self._now())
            return _count_claimed(state, namespace, below)

    def commit(
        self,
        run: RunRef,
        appends: Sequence[Append],
        records: Sequence[RecordWrite],
        claims: Sequence[ClaimNew],
        keep_s: float,
        *,
        hook: CommitHook | None = None,
        wait_s: float | None = None,
    ) -> list[int]:
        """As :meth:`MemoryStore.commit`, with ``claims`` applied under the same locks."""

        def apply_claims(starts: list[int]) -> None:
            now = self._now()
            for claim in claims:
                key = appends[claim.position].key
                state = self._state(run.generation, key, now)
                start = starts[claim.position]
                apply_new(state, claim.ticket, range(start, start + claim.count))
                self._data.states[(run.generation, key)] = (state, now + keep_s)

        starts = self._store._commit(appends, records, None, hook, wait_s, then=apply_claims)
        if starts is None:  # no token: always applied
            raise StoreError("cachesaver: an internal invariant failed (no token: always applied); please report this bug")
        return starts

    def acquire_leases(
        self, wants: Mapping[str, Mapping[str, int]], holder: str, ttl_s: float, *,
        joinable: bool = False, run: RunRef | None = None,
    ) -> LeasesTaken:
        out: dict[str, Lease | None] = {}
        with self._store._lock:
            self._store._check_open()
            now = self._now()
            for key, wanted in wants.items():
                lease = self._data.leases.get(key)
                live = lease is not None and lease.deadline > now
                if lease is not None and live and lease.holder != holder:
                    lease.join(wanted, _worker(holder, run))
                    out[key] = lease.view(now)
                elif lease is not None and live:  # its own: a retried step keeps its joins
                    lease.deadline = now + ttl_s
                    lease.open = lease.open or joinable
                    out[key] = None
                else:
                    trace = self._data.traces.pop(key, None)
                    been = trace[0] if trace is not None and trace[1] > now else ()
                    self._data.leases[key] = _LeaseState(
                        holder, tuple(wanted), now + ttl_s, joinable, visitors=_first(_worker(holder, run), been)
                    )
                    out[key] = None
            peers = None
            if run is not None:
                record = self._live_run(run.run_id, now)
                peers = 0 if record is None else _peers(record, run.worker, now)
        return LeasesTaken(out, peers)

    def seal_leases(self, keys: Sequence[str], holder: str) -> dict[str, dict[str, int] | None]:
        out: dict[str, dict[str, int] | None] = {}
        with self._store._lock:
            now = self._now()
            for key in keys:
                lease = self._data.leases.get(key)
                out[key] = lease.seal() if lease is not None and lease.holder == holder and lease.deadline > now else None
        return out

    def renew_leases(self, keys: Sequence[str], holder: str, ttl_s: float) -> list[str]:
        lost = []
        with self._store._lock:
            now = self._now()
            for key in keys:
                lease = self._data.leases.get(key)
                if lease is not None and lease.holder == holder and lease.deadline > now:
                    lease.deadline = now + ttl_s
                else:
                    lost.append(key)
        return lost

    def release_leases(self, keys: Sequence[str], holder: str, *, trace_s: float = 0.0) -> int:
        late = 0
        with self._store._lock:
            now = self._now()
            for key in keys:
                lease = self._data.leases.get(key)
                if lease is not None and lease.holder == holder:
                    late += lease.late
                    del self._data.leases[key]
                    if trace_s > 0:
                        self._data.traces[key] = (tuple(lease.visitors), now + trace_s)
            if len(self._data.traces) > 4096:  # forget the traces that are over
                self._data.traces = {k: t for k, t in self._data.traces.items() if t[1] > now}
        return late

    def leases(self, keys: Sequence[str]) -> dict[str, Lease | None]:
        with self._store._lock:
            now = self._now()
            out: dict[str, Lease | None] = {}
            for key in keys:
                lease = self._data.leases.get(key)
                out[key] = lease.view(now) if lease is not None and lease.deadline > now else None
            return out


# -- diskcache ---------------------------------------------------------------------------------

_RUN = "cachesaver/1/run/"
_CLAIMS = "cachesaver/1/claims/"
_LEASE = "cachesaver/1/lease/"
_TRACE = "cachesaver/1/lease-trace/"
_RECORD = "cachesaver/1/record/"


class _ClaimsInCommit:
    """The commit hook of a diskcache commit that claims: in ``before`` (the transaction holds
    the write lock) it computes where each append will land and claims the new samples, so
    both commit together; then it hands over to the caller's hook."""

    def __init__(self, owner: "DiskcacheSharedRuns", run: RunRef, appends: Sequence[Append], claims: Sequence[ClaimNew], keep_s: float, inner: CommitHook | None) -> None:
        self.owner, self.run, self.appends, self.claims, self.keep_s, self.inner = owner, run, appends, claims, keep_s, inner
        self.starts: list[int] = []

    def before(self) -> None:
        if self.inner is not None:
            self.inner.before()
        store = self.owner._store
        counts: dict[str, int] = {}
        for append in self.appends:
            if append.key not in counts:
                counts[append.key] = store.count(append.key, store.head(append.key))
            self.starts.append(counts[append.key])
            counts[append.key] += len(append.samples)
        states: dict[str, KeyRunState] = {}
        for claim in self.claims:
            key = self.appends[claim.position].key
            if key not in states:
                states[key] = self.owner._load_state(self.run.generation, key)
            start = self.starts[claim.position]
            apply_new(states[key], claim.ticket, range(start, start + claim.count))
        for key, state in states.items():
            self.owner._save_state(self.run.generation, key, state, self.keep_s)

    def after(self, starts: list[int]) -> None:
        if starts != self.starts:  # cannot happen: the write lock was held from before() on
            raise CorruptStoreError(
                f"a commit to {self.owner._store.location} landed at {starts}, not at {self.starts} "
                "where its claims were made; the store changed under its write lock"
            )
        if self.inner is not None:
            self.inner.after(starts)

    def finish(self) -> None:
        if self.inner is not None:
            self.inner.finish()


class DiskcacheSharedRuns:
    """Shared runs for the processes of one host, in a diskcache directory."""

    def __init__(self, store: "DiskcacheStore") -> None:
        self._store = store

    @staticmethod
    def _now() -> float:
        return time.time()  # the host's clock: shared by its processes

    def _check(self) -> None:
        self._store._check_open()
        if not self._store.writable:
            raise StoreError(f"the cache at {self._store.location} is read-only: a shared run needs to write its claims")

    def _write(self, func: Callable[[], Any]) -> Any:
        """``func()`` inside one write transaction; SQLite failures as StoreError."""
        self._check()
        with self._store.transaction():
            try:
                return func()
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - an I/O failure inside the transaction
                raise StoreError(f"could not update the shared run in {self._store.location}: {exc}") from exc

    def _set(self, name: str, value: Any, expire_s: float | None = None) -> None:
        self._store.cache.set(name, value, expire=expire_s)

    def _load_run(self, run_id: str) -> _Run | None:
        data = self._store._get(_RUN + run_id, None)
        try:
            return None if data is None else _Run.from_data(data)
        except Exception as exc:  # noqa: BLE001 - not what cachesaver writes
            raise CorruptStoreError(f"the record of shared run {run_id!r} in {self._store.location} is damaged: {exc}") from exc

    def _save_run(self, run_id: str, run: _Run, now: float) -> None:
        self._set(_RUN + run_id, run.to_data(), max(run.expires - now, 0.001))

    def _load_state(self, generation: str, key: str) -> KeyRunState:
        data = self._store._get(f"{_CLAIMS}{generation}/{key}", None)
        try:
            return KeyRunState.from_data(data)
        except Exception as exc:  # noqa: BLE001 - not what cachesaver writes
            raise CorruptStoreError(f"the claims of key {key} in {self._store.location} are damaged: {exc}") from exc

    def _save_state(self, generation: str, key: str, state: KeyRunState, keep_s: float) -> None:
        self._set(f"{_CLAIMS}{generation}/{key}", state.to_data(), keep_s)

    def join(self, run_id: str, worker: str, ttl_s: float, generation: str) -> RunStatus:
        def step() -> RunStatus:
            now = self._now()
            run = self._load_run(run_id)
            if run is None or run.expires <= now:
                run = _Run(generation)
            status = run.join(worker, ttl_s, now)
            self._save_run(run_id, run, now)
            return status

        return self._write(step)

    def leave(self, run_id: str, worker: str) -> None:
        def step() -> str | None:
            now = self._now()
            run = self._load_run(run_id)
            if run is None:
                return None
            if run.leave(worker, now):
                self._store.cache.delete(_RUN + run_id)
                return run.generation
            self._save_run(run_id, run, now)
            return None

        ended = self._write(step)
        if ended is not None:
            self._forget(ended)

    def status(self, run_id: str) -> RunStatus | None:
        self._store._check_open()
        run = self._load_run(run_id)
        now = self._now()
        if run is None or run.expires <= now:
            return None
        return run.status(now=now)

    def end(self, run_id: str) -> None:
        def step() -> str | None:
            run = self._load_run(run_id)
            self._store.cache.delete(_RUN + run_id)
            return None if run is None else run.generation

        ended = self._write(step)
        if ended is not None:
            self._forget(ended)

    def _forget(self, generation: str) -> None:
        """Delete the claim rows of an ended generation (best effort: they expire anyway)."""
        cache = self._store.cache
        sql = getattr(cache, "_sql", None)
        if sql is None:
            return
        low = f"{_CLAIMS}{generation}/"
        try:
            names = [row[0] for row in sql("SELECT key FROM Cache WHERE raw = 1 AND key >= ? AND key < ?", (low, low[:-1] + "0")).fetchall()]
            if names:
                with self._store.transaction():
                    for name in names:
                        cache.delete(name)
        except Exception:  # noqa: BLE001 - rows left behind expire after keep_s
            pass

    def claim(self, run: RunRef, ops: Mapping[str, KeyClaimOps], keep_s: float) -> dict[str, list[Grant] | StoreError]:
        store = self._store

        def step() -> dict[str, list[Grant] | StoreError]:
            out: dict[str, list[Grant] | StoreError] = {}
            heads = store.heads(list(ops))
            writes: list[RecordWrite] = []
            for key, key_ops in ops.items():
                head = heads[key]
                if isinstance(head, StoreError):
                    out[key] = head
                    continue
                try:
                    count = store.count(key, head)
                    full = len(head.records) >= store.HEAD_RECORDS

                    def lookup(tag: str, key: str = key, records: Any = head.records, full: bool = full) -> Any:
                        value = records.get(tag)
                        if value is None and full:
                            value = store._get(f"{_RECORD}{key}/{tag}", None)
                        return value

                    view = _Records(count, dict(list(head.records.items())[:CONSULTED_RECORDS]), lookup)
                    state = self._load_state(run.generation, key)
                    granted = apply_ops(state, view, key_ops, run)
                    wanted = sorted({i for g in granted for i in g[2]})
                    samples = dict(zip(wanted, store.read_stored(key, wanted, head))) if wanted else {}
                except StoreError as exc:
                    out[key] = exc
                    continue
                self._save_state(run.generation, key, state, keep_s)
                writes.extend(_record_writes(key, view.written))
                out[key] = _grants(granted, samples)
            if writes:
                store._write_commit([], writes)
                named.extend(store._name_namespaces(a.namespace for o in ops.values() for a in o.asks))
            return out

        named: list[str] = []
        out: dict[str, list[Grant] | StoreError] = self._write(step)
        store._named.update(named)  # the transaction committed: these names are stored
        return out

    def claimed(self, run: RunRef, namespace: str, key: str, below: int) -> int:
        self._store._check_open()
        return _count_claimed(self._load_state(run.generation, key), namespace, below)

    def commit(
        self,
        run: RunRef,
        appends: Sequence[Append],
        records: Sequence[RecordWrite],
        claims: Sequence[ClaimNew],
        keep_s: float,
        *,
        hook: CommitHook | None = None,
        wait_s: float | None = None,
    ) -> list[int]:
        """:meth:`DiskcacheStore.commit`, its transaction also claiming (see the module doc)."""
        wrapped = _ClaimsInCommit(self, run, appends, claims, keep_s, hook) if claims else hook
        starts = self._store.commit(appends, records, hook=wrapped, wait_s=wait_s)
        if starts is None:  # no token: always applied
            raise StoreError("cachesaver: an internal invariant failed (no token: always applied); please report this bug")
        return starts

    def _lease(self, key: str) -> _LeaseState | None:
        data = self._store._get(_LEASE + key, None)
        if data is None:
            return None
        try:
            return _LeaseState.from_data(data)
        except Exception as exc:  # noqa: BLE001 - not what cachesaver writes
            raise CorruptStoreError(f"the single-flight lease of key {key} in {self._store.location} is damaged: {exc}") from exc

    def _save_lease(self, key: str, lease: _LeaseState, now: float) -> None:
        self._set(_LEASE + key, lease.to_data(), max(lease.deadline - now, 0.001))

    def acquire_leases(
        self, wants: Mapping[str, Mapping[str, int]], holder: str, ttl_s: float, *,
        joinable: bool = False, run: RunRef | None = None,
    ) -> LeasesTaken:
        def step() -> LeasesTaken:
            now = self._now()
            out: dict[str, Lease | None] = {}
            for key, wanted in wants.items():
                lease = self._lease(key)
                live = lease is not None and lease.deadline > now
                if lease is not None and live and lease.holder != holder:
                    lease.join(wanted, _worker(holder, run))
                    self._save_lease(key, lease, now)
                    out[key] = lease.view(now)
                    continue
                if lease is not None and live:  # its own: a retried step keeps its joins
                    lease.deadline = now + ttl_s
                    lease.open = lease.open or joinable
                else:
                    been = self._store._get(_TRACE + key, None) or ()
                    if been:  # carried over into the new lease
                        self._store.cache.delete(_TRACE + key)
                    lease = _LeaseState(holder, tuple(wanted), now + ttl_s, joinable, visitors=_first(_worker(holder, run), been))
                self._save_lease(key, lease, now)
                out[key] = None
            peers = None
            if run is not None:
                record = self._load_run(run.run_id)
                peers = 0 if record is None or record.expires <= now else _peers(record, run.worker, now)
            return LeasesTaken(out, peers)

        taken: LeasesTaken = self._write(step)
        return taken

    def seal_leases(self, keys: Sequence[str], holder: str) -> dict[str, dict[str, int] | None]:
        def step() -> dict[str, dict[str, int] | None]:
            now = self._now()
            out: dict[str, dict[str, int] | None] = {}
            for key in keys:
                lease = self._lease(key)
                if lease is None or lease.holder != holder or lease.deadline <= now:
                    out[key] = None
                    continue
                out[key] = lease.seal()
                self._save_lease(key, lease, now)
            return out

        sealed: dict[str, dict[str, int] | None] = self._write(step)
        return sealed

    def renew_leases(self, keys: Sequence[str], holder: str, ttl_s: float) -> list[str]:
        def step() -> list[str]:
            now = self._now()
            lost = []
            for key in keys:
                lease = self._lease(key)
                if lease is not None and lease.holder == holder and lease.deadline > now:
                    lease.deadline = now + ttl_s
                    self._save_lease(key, lease, now)
                else:
                    lost.append(key)
            return lost

        lost: list[str] = self._write(step)
        return lost

    def release_leases(self, keys: Sequence[str], holder: str, *, trace_s: float = 0.0) -> int:
        def step() -> int:
            late = 0
            for key in keys:
                lease = self._lease(key)
                if lease is not None and lease.holder == holder:
                    late += lease.late
                    self._store.cache.delete(_LEASE + key)
                    if trace_s > 0:
                        self._set(_TRACE + key, tuple(lease.visitors), trace_s)
            return late

        late: int = self._write(step)
        return late

    def leases(self, keys: Sequence[str]) -> dict[str, Lease | None]:
        self._store._check_open()
        now = self._now()
        out: dict[str, Lease | None] = {}
        for key in keys:
            lease = self._lease(key)
            out[key] = lease.view(now) if lease is not None and lease.deadline > now else None
        return out
