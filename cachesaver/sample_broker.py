"""Hands stored samples out to requests and stores new ones, off the event loop.

The broker is the only code that touches a run's :class:`~cachesaver.claims.RunClaims` and the
:class:`~cachesaver.storage.SampleStore`. It works in *rounds*: every lookup and every store
queued while the previous round ran is handled by the next round, in one worker-thread call,
stores first (so freshly stored samples are claimed by their requester before any lookup can
see them), then lookups. One round runs at a time, so decisions never race and no per-key lock
is needed; the event loop only queues work and wakes waiters.

Guarantees:

* Within a run and a namespace no stored sample is handed out twice.
* New samples are stored in one transaction per round, together with the replay record of the
  request they were fetched for; a lookup fully served from storage records its indices too
  (only when they differ from what was recorded).
* An error reading one request's samples fails that request only. A round whose store
  transaction fails delivers the samples anyway and reports the failure to the caller's log:
  the caller keeps what it paid for even when the disk does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import anyio

from .background import BackgroundTasks, Outcome
from .claims import RunClaims
from .errors import CorruptStoreError, PipelineClosedError, StoreError
from .storage import RecordEntry, SampleStore, StoredSample
from .typedefs import Request

__all__ = ["Found", "NewSamples", "SampleBroker"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Found:
    """What a lookup found: stored samples handed to the request and how many are still missing."""

    key: str
    use: int | None
    indices: list[int]
    samples: list[StoredSample]
    missing: int


class _Lookup(Outcome[Found]):
    """A queued lookup; it is its own outcome."""

    __slots__ = ("request", "key")

    def __init__(self, request: Request, key: str) -> None:
        super().__init__()
        self.request = request
        self.key = key

    @property
    def outcome(self) -> "_Lookup":
        return self


@dataclass(frozen=True)
class NewSamples:
    """Samples fetched for ``request``: ``needed`` of them are its own, the rest are spare.

    ``prior`` are the stored indices the request already holds; the replay record becomes
    ``prior`` plus the indices of its own new samples.
    """

    request: Request
    key: str
    use: int | None
    prior: list[int]
    samples: list[StoredSample]
    needed: int


@dataclass
class _Store:
    items: list[NewSamples]
    outcome: Outcome[list[list[int]]] = field(default_factory=Outcome)


class SampleBroker:
    """Serial owner of a run's claims and of all store I/O; see the module docstring."""

    def __init__(self, store: SampleStore, background: BackgroundTasks, max_round: int = 256) -> None:
        self.store = store
        self.claims = RunClaims()
        self._background = background
        self._max_round = max_round
        self._lookups: list[_Lookup] = []
        self._stores: list[_Store] = []
        self._wake: anyio.Event | None = None
        self._running = False
        self._stopping = False
        self._stopped: anyio.Event | None = None
        self.rounds = 0

    # -- called on the event loop -----------------------------------------------------------

    def lookup(self, request: Request, key: str) -> Outcome[Found]:
        """Queue a lookup; its outcome is delivered by the next round."""
        op = _Lookup(request, key)
        self._lookups.append(op)
        self._kick()
        return op

    def store_new(self, items: Sequence["NewSamples"]) -> Outcome[list[list[int]]]:
        """Queue new samples for storage; the outcome lists, per item, the indices it now holds."""
        op = _Store(list(items))
        self._stores.append(op)
        self._kick()
        return op.outcome

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def ensure_running(self) -> None:
        if not self._running:
            if self._stopping:
                raise PipelineClosedError("the cache is closed; create a new pipeline")
            self._running = True
            self._stopped = anyio.Event()
            try:
                await self._background.spawn(self._serve)
            except BaseException:
                self._running = False
                raise

    async def aclose(self) -> None:
        """Finish every queued round, then stop."""
        self._stopping = True
        self._kick()
        if self._running and self._stopped is not None:
            await self._stopped.wait()

    async def _serve(self) -> None:
        try:
            while True:
                if not self._lookups and not self._stores:
                    if self._stopping:
                        return
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    self._wake = None
                    continue
                stores, self._stores = self._stores, []
                lookups = self._lookups[: self._max_round]
                del self._lookups[: self._max_round]
                await self._run_round(stores, lookups)
        finally:
            self._running = False
            for op in self._stores + self._lookups:  # only reached when cancelled
                op.outcome.fail(PipelineClosedError("the pipeline was closed before this request was served"))
            self._stores, self._lookups = [], []
            if self._stopped is not None:
                self._stopped.set()

    async def _run_round(self, stores: list[_Store], lookups: list[_Lookup]) -> None:
        try:
            stored, found, store_error = await anyio.to_thread.run_sync(self._round, stores, lookups)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else PipelineClosedError("closed during a store round")
            for op in stores:
                op.outcome.fail(error)
            for op in lookups:
                op.outcome.fail(error)
            raise
        self.rounds += 1
        if store_error is not None:
            logger.error(
                "cachesaver could not store %d new sample(s); they were still returned: %s",
                sum(len(item.samples) for op in stores for item in op.items),
                store_error,
            )
        for op, indices in zip(stores, stored):
            op.outcome.set(indices)
        for op, result in zip(lookups, found):
            if isinstance(result, BaseException):
                op.outcome.fail(result)
            else:
                op.outcome.set(result)

    # -- called in the worker thread, one round at a time -----------------------------------

    def _round(
        self, stores: list[_Store], lookups: list[_Lookup]
    ) -> tuple[list[list[list[int]]], list[Found | BaseException], BaseException | None]:
        stored: list[list[list[int]]] = []
        store_error: BaseException | None = None
        if stores:
            try:
                with self.store.transaction():
                    heads = self.store.heads([item.key for op in stores for item in op.items])
                    stored = [[self._store_one(item, heads) for item in op.items] for op in stores]
            except Exception as exc:  # noqa: BLE001 - reported, samples still delivered
                store_error = exc
                stored = [[[] for _ in op.items] for op in stores]
        heads: dict[str, Any] = self.store.heads([op.key for op in lookups]) if lookups else {}
        records: list[tuple[str, RecordEntry]] = []
        found: list[Found | BaseException] = []
        for op in lookups:
            try:
                found.append(self._lookup_one(op, heads, records))
            except Exception as exc:  # noqa: BLE001 - fails that request only
                found.append(exc)
        if records:
            by_key: dict[str, list[RecordEntry]] = {}
            for key, entry in records:
                by_key.setdefault(key, []).append(entry)
            try:
                with self.store.transaction():
                    for key, entries in by_key.items():
                        self.store.write(key, records=entries)
            except Exception as exc:  # noqa: BLE001 - a lost record only costs exact replay
                logger.error("cachesaver could not store %d replay record(s): %s", len(records), exc)
        return stored, found, store_error

    def _store_one(self, op: NewSamples, heads: dict[str, Any]) -> list[int]:
        request = op.request
        record = None
        if op.use is not None:
            record = (request.namespace, request.request_id, op.use, op.prior, op.needed)
        head = heads.pop(op.key, None)  # a key written twice in one round is read afresh
        if isinstance(head, CorruptStoreError):
            logger.error("cachesaver cannot store new samples of key %s: %s", op.key, head)
            return []
        start = self.store.write(op.key, op.samples, record_new=record, head=head)
        used = list(range(start, start + min(op.needed, len(op.samples))))
        self.claims.claim(request.namespace, op.key, used)
        return used

    def _lookup_one(self, op: _Lookup, heads: dict[str, Any], records: list[tuple[str, RecordEntry]]) -> Found:
        request, key = op.request, op.key
        namespace, request_id, n = request.namespace, request.request_id, request.n
        store = self.store
        head = heads.get(key)
        if head is None:
            head = heads[key] = store.head(key)
        if isinstance(head, CorruptStoreError):
            raise head
        use = None if request_id is None else self.claims.next_use(namespace, key, request_id)
        recorded = None if use is None else store.get_record(namespace, key, request_id, use, head)
        if recorded is not None and len(recorded) >= n:
            chosen = list(recorded[:n])
            entry = self.claims.claims(namespace, key)
            if len(set(chosen)) == n and not any(entry.is_claimed(i) for i in chosen):
                samples = store.try_read_stored(key, chosen, head)
                if samples is not None:
                    for i in chosen:
                        entry.claim(i)
                    if len(recorded) != n:
                        records.append((key, RecordEntry(namespace, request_id, use, tuple(chosen))))
                    return Found(key, use, chosen, samples, 0)
        count = store.count(key, head)
        reserved = store.recorded_indices(namespace, head, None if use is None else (request_id, use)) if head.records else ()
        chosen = self.claims.choose(namespace, key, n, count, recorded, reserved)
        samples = store.read_stored(key, chosen, head)
        missing = n - len(chosen)
        if use is not None and missing == 0 and tuple(chosen) != recorded:
            records.append((key, RecordEntry(namespace, request_id, use, tuple(chosen))))
        return Found(key, use, chosen, samples, missing)
