"""Hands stored samples out to requests and stores new ones, off the event loop.

The broker is the only code that touches a run's :class:`~cachesaver.claims.RunClaims` and the
:class:`~cachesaver.storage.SampleStore`. It has two lanes, each a background job that works in
*rounds* in a worker thread:

* the **lookup lane** serves every lookup queued while its previous round ran (reads only);
* the **write lane** stores every batch of new samples and every replay record queued while
  its previous round ran, in one transaction, and then claims the new samples for the request
  they were fetched for.

A claims lock makes each lookup round and each write commit atomic with respect to each other,
so a sample committed by the write lane is claimed by its requester before any lookup can see
it, and no per-key lock is needed. A write that waits for the store's write lock (another
process holds it) never holds up a lookup: cache hits are served meanwhile.

Guarantees:

* Within a run and a namespace no stored sample is handed out twice.
* A request counts as a use of its request_id, and leaves a replay record, only once its
  caller has received its samples (:meth:`SampleBroker.deliver`). A request that failed, came
  back short, or whose caller was cancelled (:meth:`SampleBroker.abandon`) gives its use back,
  leaves no record, and the samples it held (stored ones and those fetched for it) become free
  for later requests of the run.
* New samples that cannot be stored (a full disk, a read-only directory, a held write lock, an
  I/O error) are kept in memory, with their replay records, and retried on every later write
  round and after a growing pause (0.5 s up to 30 s) while idle, so they land once the store
  recovers. :attr:`SampleBroker.unstored_samples` counts them. At most
  :attr:`SampleBroker.max_unstored_samples` are kept: beyond that, requests that would need
  the model fail with :class:`~cachesaver.errors.StoreError` before any model call, so nothing
  more is paid for that cannot be kept. Samples that cannot be serialised at all are dropped
  with an ERROR log and counted in :attr:`SampleBroker.unstorable_samples`.
* Closing (:meth:`SampleBroker.aclose`) makes a last attempt; whatever is still unstored is
  written to a recovery file (see :mod:`cachesaver.recovery`), and ``aclose`` raises
  :class:`~cachesaver.errors.UnstoredSamplesError` saying how many samples and where. The next
  broker opened on that store loads recovery files back before its first write round.
* An error reading one request's samples (a damaged entry) fails that request only.
* Within a lookup round, requests whose recorded samples are free are served before requests
  without a record, so the latter cannot take samples the former will ask back for.
"""

from __future__ import annotations

import logging
import pickle
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import anyio

from . import recovery
from .background import BackgroundTasks, Outcome
from .claims import RunClaims
from .errors import PipelineClosedError, StoreError, UnstoredSamplesError
from .storage import RecordEntry, SampleStore, StoredSample
from .typedefs import Request

__all__ = ["Found", "NewSamples", "SampleBroker", "Write"]

logger = logging.getLogger(__name__)

_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 30.0


@dataclass(slots=True, eq=False)
class Found:
    """What a lookup found for one request: the stored samples it holds, how many are still
    missing, and (once fetched) the writes holding its new samples."""

    key: str
    use: int | None
    indices: list[int]
    samples: list[StoredSample]
    missing: int
    namespace: str = ""
    request_id: Any = None
    n: int = 0
    record_due: bool = False
    writes: list["Write"] = field(default_factory=list)
    live: bool = True


class Write:
    """New samples of one key, waiting to be stored or stored at ``indices``.

    The first ``own`` of them belong to ``owner`` (the request they were fetched for), which
    claims them when they are committed, if it is still live; the rest are spare."""

    __slots__ = ("key", "samples", "owner", "own", "indices", "claimed")

    def __init__(self, key: str, samples: Sequence[StoredSample], owner: Found | None = None, own: int = 0) -> None:
        self.key = key
        self.samples = list(samples)
        self.owner = owner
        self.own = own if owner is not None else 0
        self.indices: list[int] | None = None
        self.claimed = False


@dataclass(frozen=True)
class NewSamples:
    """Samples fetched for ``request`` with no owner to claim them (late answers at close)."""

    request: Request
    key: str
    use: int | None
    prior: list[int]
    samples: list[StoredSample]
    needed: int


class _Record:
    """A replay record due once its parts are stored: ``prior`` plus the owned part of each write."""

    __slots__ = ("namespace", "key", "request_id", "n", "use", "prior", "parts", "written")

    def __init__(
        self, namespace: str, key: str, request_id: Any, n: int, use: int,
        prior: Sequence[int], parts: Sequence[tuple[Write, int]] = (),
    ) -> None:
        self.namespace, self.key, self.request_id, self.n, self.use = namespace, key, request_id, n, use
        self.prior = tuple(prior)
        self.parts = list(parts)
        self.written = False

    def ready(self) -> bool:
        return all(write.indices is not None for write, _ in self.parts)

    def entry(self) -> RecordEntry:
        indices = list(self.prior)
        for write, own in self.parts:
            indices.extend(write.indices[:own])  # type: ignore[index]
        return RecordEntry(self.namespace, self.request_id, self.n, self.use, tuple(indices))


class _Lookup(Outcome[Found]):
    """A queued lookup; it is its own outcome."""

    __slots__ = ("request", "key", "found", "abandoned")

    def __init__(self, request: Request, key: str) -> None:
        super().__init__()
        self.request = request
        self.key = key
        self.found: Found | None = None
        self.abandoned = False

    @property
    def outcome(self) -> "_Lookup":
        return self


class _Lane:
    """One background loop of the broker: its wake-up event and whether it runs."""

    __slots__ = ("wake", "running", "stopped")

    def __init__(self) -> None:
        self.wake: anyio.Event | None = None
        self.running = False
        self.stopped: anyio.Event | None = None

    def kick(self) -> None:
        if self.wake is not None:
            self.wake.set()


def _serialisable(samples: Sequence[StoredSample]) -> bool:
    try:
        pickle.dumps(list(samples), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - any pickling failure means it can never be stored
        return False
    return True


class SampleBroker:
    """Serial owner of a run's claims and of all store I/O; see the module docstring."""

    max_unstored_samples = 100_000
    """Most new samples kept in memory while the store refuses them (see the module docstring)."""

    def __init__(self, store: SampleStore, background: BackgroundTasks, max_round: int = 256) -> None:
        self.store = store
        self.claims = RunClaims()
        self._background = background
        self._max_round = max_round
        self._mutex = threading.Lock()  # one lookup round or one write commit at a time
        self._lookups: list[_Lookup] = []
        self._abandoned: list[_Lookup] = []
        self._writes: list[Write] = []
        self._records: list[_Record] = []
        self._write_outcomes: list[Outcome[None]] = []
        self._unstored: list[Write] = []  # refused by the store, retried later
        self._unstored_records: list[_Record] = []
        self._last_error: BaseException | None = None
        self._lookup_lane = _Lane()
        self._write_lane = _Lane()
        self._stopping = False
        self._recovered = False
        self._closed = False
        self.unstorable_samples = 0
        self.rounds = 0
        self.write_rounds = 0

    # -- what the pipeline can read -----------------------------------------------------------

    @property
    def unstored_samples(self) -> int:
        """New samples delivered or fetched but not (yet) in the store."""
        return sum(len(w.samples) for w in self._unstored)

    @property
    def accepts_writes(self) -> bool:
        """False once the write lane has stopped for good (the broker closed)."""
        return not self._closed

    @property
    def running(self) -> bool:
        """Whether either lane is still running."""
        return self._lookup_lane.running or self._write_lane.running

    @property
    def last_store_error(self) -> BaseException | None:
        """The error of the last write round that failed, None once a round succeeds."""
        return self._last_error

    def check_room(self) -> None:
        """Raise StoreError if no more unstored samples may be kept (so no model call is made)."""
        if self.unstored_samples >= self.max_unstored_samples:
            raise StoreError(
                f"{self.unstored_samples} samples are waiting to be stored in {self.store.directory} "
                f"(the store refuses writes: {self._last_error}); no more are fetched until it "
                "recovers. Free disk space or fix permissions; they are stored then, or written "
                "to a recovery file at close"
            )

    # -- called on the event loop -----------------------------------------------------------

    def lookup(self, request: Request, key: str) -> _Lookup:
        """Queue a lookup; its outcome is delivered by the next lookup round."""
        op = _Lookup(request, key)
        self._lookups.append(op)
        self._lookup_lane.kick()
        return op

    def store_writes(self, writes: Sequence[Write]) -> Outcome[None]:
        """Queue new samples; the outcome is set once a write round tried them (stored, or
        kept for a later round)."""
        if not self.accepts_writes:
            raise StoreError(
                f"{sum(len(w.samples) for w in writes)} new samples arrived after the cache at "
                f"{self.store.directory} was closed; they could not be stored"
            )
        outcome: Outcome[None] = Outcome()
        self._writes.extend(writes)
        self._write_outcomes.append(outcome)
        self._write_lane.kick()
        return outcome

    def store_new(self, items: Sequence[NewSamples]) -> Outcome[None]:
        """Queue samples with no owner (nothing claims them); see :meth:`store_writes`."""
        return self.store_writes([Write(item.key, item.samples) for item in items])

    def deliver(self, found: Found) -> None:
        """The request of ``found`` reached its caller: its use counts, its record is written."""
        if found.use is None or not found.live:
            return
        if found.writes or found.record_due:
            parts = [(w, w.own) for w in found.writes]
            self._records.append(
                _Record(found.namespace, found.key, found.request_id, found.n, found.use, found.indices, parts)
            )
            self._write_lane.kick()

    def abandon(self, op: _Lookup) -> None:
        """The request of ``op`` failed or its caller left: give back its use and samples."""
        if op.abandoned:
            return
        op.abandoned = True
        if op.found is not None:
            op.found.live = False
        self._abandoned.append(op)
        self._lookup_lane.kick()

    async def ensure_running(self) -> None:
        for lane, serve in ((self._lookup_lane, self._serve_lookups), (self._write_lane, self._serve_writes)):
            if lane.running:
                continue
            if self._stopping:
                raise PipelineClosedError("the cache is closed; create a new pipeline")
            lane.running = True
            lane.stopped = anyio.Event()
            try:
                await self._background.spawn(serve, service=True)
            except BaseException:
                lane.running = False
                raise

    async def aclose(self) -> None:
        """Serve every queued lookup, store every queued sample, then stop.

        Raises UnstoredSamplesError when samples are still unstored after a last attempt;
        they were written to a recovery file, which the error names."""
        self._stopping = True
        self._lookup_lane.kick()
        if self._lookup_lane.running and self._lookup_lane.stopped is not None:
            await self._lookup_lane.stopped.wait()
        self._write_lane.kick()
        if self._write_lane.running and self._write_lane.stopped is not None:
            await self._write_lane.stopped.wait()
        elif self._writes or self._records:  # the write lane never ran: one round now
            await self._write_once(final=True)
        self._closed = True
        self.claims.close()  # deletes the claims' on-disk part, if a long run made one
        if self._unstored or self._unstored_records:
            await self._save_recovery()

    # -- the lookup lane ----------------------------------------------------------------------

    async def _serve_lookups(self) -> None:
        lane = self._lookup_lane
        try:
            if not self._recovered:  # before the first lookup, so recovered samples are seen
                self._recovered = True
                await self._load_recovery()
            while True:
                if not self._lookups and not self._abandoned:
                    if self._stopping:
                        return
                    lane.wake = anyio.Event()
                    await lane.wake.wait()
                    lane.wake = None
                    continue
                lookups = self._lookups[: self._max_round]
                del self._lookups[: self._max_round]
                abandoned, self._abandoned = self._abandoned, []
                await self._run_lookups(lookups, abandoned)
        finally:
            lane.running = False
            # Non-empty only when the loop was cancelled (a forced close or a dying event loop).
            for op in self._lookups:
                op.fail(PipelineClosedError("the pipeline was closed before this request was served"))
            self._lookups = []
            if lane.stopped is not None:
                lane.stopped.set()

    async def _run_lookups(self, lookups: list[_Lookup], abandoned: list[_Lookup]) -> None:
        try:
            found = await self.store.read_thread.run(self._lookup_round, lookups, abandoned)
        except Exception as exc:  # noqa: BLE001 - a round that failed as a whole fails its ops only
            logger.error("cachesaver lookup round failed: %s", exc)
            for op in lookups:
                op.fail(exc)
            return
        except BaseException:
            closed = PipelineClosedError("the pipeline was closed during a lookup round")
            for op in lookups:
                op.fail(closed)
            raise
        self.rounds += 1
        for op, result in zip(lookups, found):
            if isinstance(result, BaseException):
                op.fail(result)
            else:
                op.set(result)

    def _lookup_round(self, lookups: list[_Lookup], abandoned: list[_Lookup]) -> list[Found | BaseException]:
        with self._mutex:
            # Abandons first: a use given back is taken by the next lookup of its identity; an
            # abandoned lookup not served yet is skipped when its round reaches it.
            for op in abandoned:
                self._release(op)
            found = self._serve_round(lookups)
            try:
                self.claims.trim()  # between rounds: bounded memory however long the run
            except Exception as exc:  # noqa: BLE001 - nothing is lost, memory just stays higher
                logger.warning("cachesaver could not move per-run claims to disk: %s", exc)
        return found

    def _release(self, op: _Lookup) -> None:
        """Give back what an abandoned request held (called under the claims lock)."""
        found = op.found
        if found is None:
            return  # not served yet: the round that reaches it skips it
        claims = self.claims
        held = list(found.indices)
        for write in found.writes:
            if write.claimed and write.indices is not None:
                held.extend(write.indices[: write.own])
                write.claimed = False
        if held:
            claims.release(found.namespace, found.key, held)
        if found.use is not None:
            claims.release_use(found.namespace, found.key, found.request_id, found.n, found.use)

    def _serve_round(self, lookups: list[_Lookup]) -> list[Found | BaseException]:
        live = [op for op in lookups if not op.abandoned]
        heads: dict[str, Any] = self.store.heads([op.key for op in live]) if live else {}
        found: list[Found | BaseException | None] = [None] * len(lookups)
        deferred: list[tuple[int, _Lookup, int | None, tuple[int, ...] | None]] = []
        # Requests whose recorded samples are free are served first, so a request without a
        # record in the same round cannot take them.
        for position, op in enumerate(lookups):
            if op.abandoned:
                found[position] = PipelineClosedError("the request was abandoned before its lookup")
                continue
            try:
                result = self._lookup_recorded(op, heads)
            except Exception as exc:  # noqa: BLE001 - fails that request only
                found[position] = exc
                continue
            if isinstance(result, Found):
                found[position] = op.found = result
            else:
                deferred.append((position, op, *result))
        for position, op, use, recorded in deferred:
            try:
                found[position] = op.found = self._lookup_free(op, heads, use, recorded)
            except Exception as exc:  # noqa: BLE001 - fails that request only
                if use is not None:
                    request = op.request
                    self.claims.release_use(request.namespace, op.key, request.request_id, request.n, use)
                found[position] = exc
        return found  # type: ignore[return-value]

    def _lookup_recorded(
        self, op: _Lookup, heads: dict[str, Any]
    ) -> Found | tuple[int | None, tuple[int, ...] | None]:
        """Serve ``op`` from its recorded samples if they are all free, else say what is known."""
        request, key = op.request, op.key
        namespace, request_id, n = request.namespace, request.request_id, request.n
        store = self.store
        head = heads.get(key)
        if head is None:
            head = heads[key] = store.head(key)
        if isinstance(head, StoreError):
            raise head
        use = None if request_id is None else self.claims.next_use(namespace, key, request_id, n)
        try:
            recorded = None if use is None else store.get_record(namespace, key, request_id, n, use, head)
        except BaseException:
            if use is not None:
                self.claims.release_use(namespace, key, request_id, n, use)
            raise
        if recorded is not None and len(recorded) >= n:
            chosen = list(recorded[:n])
            entry = self.claims.claims(namespace, key)
            if len(set(chosen)) == n and not any(entry.is_claimed(i) for i in chosen):
                samples = store.try_read_stored(key, chosen, head)
                if samples is not None:
                    for i in chosen:
                        entry.claim(i)
                    return Found(key, use, chosen, samples, 0, namespace, request_id, n, len(recorded) != n)
        return use, recorded

    def _lookup_free(
        self, op: _Lookup, heads: dict[str, Any], use: int | None, recorded: tuple[int, ...] | None
    ) -> Found:
        """Serve ``op`` from free stored samples (recorded ones first); the rest is missing."""
        request, key = op.request, op.key
        namespace, request_id, n = request.namespace, request.request_id, request.n
        store = self.store
        head = heads[key]
        count = store.count(key, head)
        reserved = (
            store.recorded_indices(namespace, head, None if use is None else (request_id, n, use))
            if head.records
            else ()
        )
        chosen = self.claims.choose(namespace, key, n, count, recorded, reserved)
        try:
            samples = store.read_stored(key, chosen, head)
        except BaseException:
            self.claims.release(namespace, key, chosen)
            raise
        missing = n - len(chosen)
        due = use is not None and missing == 0 and tuple(chosen) != recorded
        return Found(key, use, chosen, samples, missing, namespace, request_id, n, due)

    # -- the write lane -----------------------------------------------------------------------

    async def _serve_writes(self) -> None:
        lane = self._write_lane
        pause = _RETRY_FIRST_S
        try:
            while True:
                queued = bool(self._writes or self._records)
                if not queued and self._stopping and not self._lookup_lane.running:
                    if self._unstored or self._unstored_records:
                        await self._write_once(final=True)
                    return
                if not queued:
                    lane.wake = anyio.Event()
                    if self._unstored or self._unstored_records:
                        with anyio.move_on_after(pause):
                            await lane.wake.wait()
                        if not lane.wake.is_set():  # idle with unstored samples: try again
                            lane.wake = None
                            failed = await self._write_once()
                            pause = min(pause * 2, _RETRY_MAX_S) if failed else _RETRY_FIRST_S
                            continue
                    else:
                        await lane.wake.wait()
                    lane.wake = None
                    continue
                failed = await self._write_once()
                pause = min(pause * 2, _RETRY_MAX_S) if failed else _RETRY_FIRST_S
        finally:
            lane.running = False
            if lane.stopped is not None:
                lane.stopped.set()

    async def _write_once(self, final: bool = False) -> bool:
        """One write round over everything queued and everything kept; True if some failed."""
        writes = self._unstored + self._writes
        records = self._unstored_records + self._records
        outcomes = self._write_outcomes
        self._writes, self._records, self._write_outcomes = [], [], []
        self._unstored, self._unstored_records = [], []
        try:
            with anyio.CancelScope(shield=final):
                left, left_records, error = await self.store.write_thread.run(self._write_round, writes, records)
        except BaseException:
            # Cancelled (a forced close): keep everything for the recovery file.
            self._unstored = [w for w in writes if w.indices is None]
            self._unstored_records = [r for r in records if not r.written]
            for outcome in outcomes:
                outcome.set(None)
            raise
        self.write_rounds += 1
        self._unstored, self._unstored_records = left, left_records
        if error is not None:
            if self._last_error is None:
                logger.error(
                    "cachesaver could not store %d new sample(s) and %d replay record(s) in %s; "
                    "they are kept in memory and retried: %s",
                    sum(len(w.samples) for w in left), len(left_records), self.store.directory, error,
                )
            self._last_error = error
        elif self._last_error is not None and not left and not left_records:
            logger.warning("cachesaver: the store at %s accepts writes again; nothing was lost", self.store.directory)
            self._last_error = None
        for outcome in outcomes:
            outcome.set(None)
        return error is not None

    def _write_round(
        self, writes: list[Write], records: list[_Record]
    ) -> tuple[list[Write], list[_Record], BaseException | None]:
        """Store ``writes`` and the ready ``records``; what is left, and the error if any."""
        try:
            self._commit(writes, [r for r in records if self._ready(r, writes)])
            return [], [r for r in records if not r.written], None
        except Exception as exc:  # noqa: BLE001 - retried one by one, so one bad item costs itself
            error: BaseException = exc
        left: list[Write] = []
        for write in writes:
            try:
                self._commit([write], [])
            except Exception as exc:  # noqa: BLE001
                if not _serialisable(write.samples):
                    self.unstorable_samples += len(write.samples)
                    logger.error(
                        "cachesaver could not store %d sample(s) of key %s: they cannot be serialised "
                        "(%s); they were returned to the caller but are not cached",
                        len(write.samples), write.key, exc,
                    )
                    write.indices = []  # settled: a record of its owner keeps the rest
                    continue
                error = exc
                left.append(write)
        left_records: list[_Record] = []
        for record in records:
            if not record.ready():
                left_records.append(record)
                continue
            try:
                self._commit([], [record])
            except Exception as exc:  # noqa: BLE001
                error = exc
                left_records.append(record)
        return left, left_records, (error if left or left_records else None)

    @staticmethod
    def _ready(record: _Record, writes: list[Write]) -> bool:
        """Whether ``record`` can be written together with ``writes``."""
        pending = {id(w) for w in writes}
        return all(w.indices is not None or id(w) in pending for w, _ in record.parts)

    def _commit(self, writes: list[Write], records: list[_Record]) -> None:
        """Append ``writes`` and store ``records`` in one transaction, then claim what is owned."""
        store = self.store
        starts: list[int] = []
        held = False
        try:
            with store.transaction():
                self._mutex.acquire()
                held = True
                heads: dict[str, Any] = store.heads([w.key for w in writes]) if len(writes) > 1 else {}
                for write in writes:
                    head = heads.pop(write.key, None)  # a key written twice is read afresh
                    if isinstance(head, StoreError):
                        raise head
                    starts.append(store.write(write.key, write.samples, head=head))
                provisional = list(writes)
                for write, start in zip(provisional, starts):
                    write.indices = list(range(start, start + len(write.samples)))
                try:
                    by_key: dict[str, list[RecordEntry]] = {}
                    for record in records:
                        by_key.setdefault(record.key, []).append(record.entry())
                    for key, entries in by_key.items():
                        store.write(key, records=entries)
                except BaseException:
                    for write in provisional:
                        write.indices = None
                    raise
            for record in records:
                record.written = True
            # Committed: the owners that are still waiting claim their samples.
            for write in writes:
                owner = write.owner
                if owner is not None and owner.live and write.own:
                    self.claims.claim(owner.namespace, write.key, write.indices[: write.own])  # type: ignore[index]
                    write.claimed = True
        except BaseException:
            for write in writes[: len(starts)]:
                write.indices = None
            raise
        finally:
            if held:
                self._mutex.release()

    # -- recovery files -----------------------------------------------------------------------

    async def _load_recovery(self) -> None:
        try:
            loaded = await self.store.write_thread.run(recovery.load_into, self.store)
        except Exception as exc:  # noqa: BLE001 - the file stays, the next pipeline tries again
            logger.error("cachesaver could not load a recovery file into %s: %s", self.store.directory, exc)
            return
        if loaded:
            logger.warning(
                "cachesaver stored %d sample(s) and %d replay record(s) from recovery files into %s",
                loaded[0], loaded[1], self.store.directory,
            )

    async def _save_recovery(self) -> None:
        writes, records = self._unstored, self._unstored_records
        count = sum(len(w.samples) for w in writes)
        with anyio.CancelScope(shield=True):
            try:
                path = await anyio.to_thread.run_sync(recovery.save, self.store, writes, records)
            except Exception as exc:  # noqa: BLE001 - reported in the error below
                raise UnstoredSamplesError(
                    f"{count} sample(s) and {len(records)} replay record(s) could not be stored in "
                    f"{self.store.directory} ({self._last_error}) nor saved to a recovery file "
                    f"({exc}); they are lost to the cache",
                    unstored=count, path=None,
                ) from exc
        raise UnstoredSamplesError(
            f"{count} sample(s) and {len(records)} replay record(s) could not be stored in "
            f"{self.store.directory} ({self._last_error}); they were saved to {path}, and the next "
            "pipeline opened on this cache stores them",
            unstored=count, path=path,
        )  # not chained with "from": that would hide an error of the ``async with`` body
