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
* An error reading one request's samples (a damaged entry) fails that request only. New
  samples that cannot be stored (one unpicklable sample, a full disk) are retried one request
  at a time; those that still fail are delivered anyway and logged at ERROR: the caller keeps
  what it paid for even when the disk does not, and the others are stored.
* Within a round, requests whose recorded samples are free are served before requests without
  a record, so the latter cannot take samples the former will ask back for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import anyio

from .background import BackgroundTasks, Outcome
from .claims import RunClaims
from .errors import PipelineClosedError, StoreError
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
                await self._background.spawn(self._serve, service=True)
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
            if self._stopping:
                self.claims.close()  # deletes the claims' on-disk part, if a long run made one
            # Non-empty only when the loop was cancelled (a forced close or a dying event loop).
            for op in self._stores + self._lookups:
                op.outcome.fail(PipelineClosedError("the pipeline was closed before this request was served"))
            self._stores, self._lookups = [], []
            if self._stopped is not None:
                self._stopped.set()

    async def _run_round(self, stores: list[_Store], lookups: list[_Lookup]) -> None:
        try:
            stored, found = await anyio.to_thread.run_sync(self._round, stores, lookups)
        except Exception as exc:  # noqa: BLE001 - a round that failed as a whole fails its ops only
            logger.error("cachesaver store round failed: %s", exc)
            for op in stores:
                op.outcome.fail(exc)
            for op in lookups:
                op.outcome.fail(exc)
            return
        except BaseException:
            closed = PipelineClosedError("the pipeline was closed during a store round")
            for op in stores:
                op.outcome.fail(closed)
            for op in lookups:
                op.outcome.fail(closed)
            raise
        self.rounds += 1
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
    ) -> tuple[list[list[list[int]]], list[Found | BaseException]]:
        stored: list[list[list[int]]] = []
        if stores:
            items = [item for op in stores for item in op.items]
            held = iter(self._store_all(items))
            stored = [[next(held) for _ in op.items] for op in stores]
        heads: dict[str, Any] = self.store.heads([op.key for op in lookups]) if lookups else {}
        records: list[tuple[str, RecordEntry]] = []
        found: list[Found | BaseException | None] = [None] * len(lookups)
        deferred: list[tuple[int, _Lookup, int | None, tuple[int, ...] | None]] = []
        # Requests whose recorded samples are free are served first, so a request without a
        # record in the same round cannot take them.
        for position, op in enumerate(lookups):
            try:
                result = self._lookup_recorded(op, heads, records)
            except Exception as exc:  # noqa: BLE001 - fails that request only
                found[position] = exc
                continue
            if isinstance(result, Found):
                found[position] = result
            else:
                deferred.append((position, op, *result))
        for position, op, use, recorded in deferred:
            try:
                found[position] = self._lookup_free(op, heads, records, use, recorded)
            except Exception as exc:  # noqa: BLE001 - fails that request only
                found[position] = exc
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
        try:
            self.claims.trim()  # between rounds: bounded memory however long the run
        except Exception as exc:  # noqa: BLE001 - nothing is lost, memory just stays higher
            logger.warning("cachesaver could not move per-run claims to disk: %s", exc)
        return stored, found  # type: ignore[return-value]

    def _store_all(self, items: list[NewSamples]) -> list[list[int]]:
        """Store every item, in one transaction if possible; the indices each request now holds.

        If the shared transaction fails, each item is stored in its own, so one bad sample
        costs only its own request's storage. Claims are taken only for committed samples.
        """
        try:
            with self.store.transaction():
                heads = self.store.heads([item.key for item in items])
                starts = [self._write_one(item, heads) for item in items]
        except Exception:  # noqa: BLE001 - retried item by item below
            starts = []
            for item in items:
                try:
                    with self.store.transaction():
                        starts.append(self._write_one(item, {}))
                except Exception as exc:  # noqa: BLE001 - that item's samples are returned unstored
                    logger.error(
                        "cachesaver could not store %d new sample(s) of key %s; they were still "
                        "returned: %s", len(item.samples), item.key, exc,
                    )
                    starts.append(None)
        held: list[list[int]] = []
        for item, start in zip(items, starts):
            if start is None:
                held.append([])
                continue
            used = list(range(start, start + min(item.needed, len(item.samples))))
            self.claims.claim(item.request.namespace, item.key, used)
            held.append(used)
        return held

    def _write_one(self, op: NewSamples, heads: dict[str, Any]) -> int | None:
        request = op.request
        record = None
        if op.use is not None:
            record = (request.namespace, request.request_id, request.n, op.use, op.prior, op.needed)
        head = heads.pop(op.key, None)  # a key written twice in one round is read afresh
        if isinstance(head, StoreError):
            logger.error("cachesaver cannot store new samples of key %s: %s", op.key, head)
            return None
        return self.store.write(op.key, op.samples, record_new=record, head=head)

    def _lookup_recorded(
        self, op: _Lookup, heads: dict[str, Any], records: list[tuple[str, RecordEntry]]
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
        recorded = None if use is None else store.get_record(namespace, key, request_id, n, use, head)
        if recorded is not None and len(recorded) >= n:
            chosen = list(recorded[:n])
            entry = self.claims.claims(namespace, key)
            if len(set(chosen)) == n and not any(entry.is_claimed(i) for i in chosen):
                samples = store.try_read_stored(key, chosen, head)
                if samples is not None:
                    for i in chosen:
                        entry.claim(i)
                    if len(recorded) != n:
                        records.append((key, RecordEntry(namespace, request_id, n, use, tuple(chosen))))
                    return Found(key, use, chosen, samples, 0)
        return use, recorded

    def _lookup_free(
        self,
        op: _Lookup,
        heads: dict[str, Any],
        records: list[tuple[str, RecordEntry]],
        use: int | None,
        recorded: tuple[int, ...] | None,
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
        samples = store.read_stored(key, chosen, head)
        missing = n - len(chosen)
        if use is not None and missing == 0 and tuple(chosen) != recorded:
            records.append((key, RecordEntry(namespace, request_id, n, use, tuple(chosen))))
        return Found(key, use, chosen, samples, missing)
