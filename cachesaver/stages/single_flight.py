"""Single-flight across workers: identical requests in flight at once in two workers of one
store cost one upstream call.

A cache stage that is a worker of a shared run (``run_id=``, see
:mod:`cachesaver.store.shared_runs`) fetches the missing samples of each pass through
:class:`SingleFlight`:

* Before asking the model, it takes a **lease** per cache key in the store (one step for the
  whole pass), naming the claim scopes (run and namespace) its call serves. It renews the
  leases every ``lease_ttl_s / 3`` while the call runs and releases them once the new samples
  are stored.
* A request whose key is leased by another call (of another worker, or of this one in another
  namespace) **waits** until that lease is gone, then takes what that call stored as cache
  hits: ``cached=True`` and ``duplicated=True`` per sample, so the ledger counts them among
  ``samples_duplicated`` (and ``samples_cached``). What is still missing it fetches itself,
  under a lease of its own. Waiting is polling the store with a growing pause (5 ms to 100 ms).
* A lease whose worker died (killed with -9, its host lost) is not renewed and expires
  ``lease_ttl_s`` after its last renewal; a waiter then takes the work over. A call that failed
  releases its lease too: its waiters then ask the model themselves.
* A request in the **same run and namespace** as the leased call does not wait: it must get
  samples of its own (no stored sample is handed out twice in a namespace of a run), so it
  asks the model at once, as a request of one process does when an identical one is already in
  flight. The saving is for the other runs and namespaces on the store: a sweep whose
  configurations (namespaces) run in parallel workers pays each prompt once.
* Waits are bounded: after ``lease_wait_s`` in all a request asks the model whatever leases
  exist. They are cancelled by a forced close, like any upstream call. A lease step the store
  fails (a lost connection) is logged and skipped: the request asks the model.

Only in the ``"record"`` mode (:mod:`cachesaver.modes`): a replay never calls the model, and
refresh and bypass reuse nothing. Without a run id nothing of this runs: the cache stage
fetches as it always did.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import logging

import anyio

from ..errors import StoreError
from ..typedefs import Response
from .base import Settled

if TYPE_CHECKING:
    from ..store.shared_runs import SharedBroker, SharedFound
    from .caching import _Pending

__all__ = ["SingleFlight"]

logger = logging.getLogger(__name__)


class SingleFlight:
    """The fetch of a shared-run cache stage: ``fetch`` wraps the stage's own fetch (which asks
    the model and stores what it returns) with leases; see the module docstring."""

    def __init__(
        self, broker: "SharedBroker", fetch: Callable[[list["_Pending"]], Awaitable[list[Settled]]],
        mode: Callable[[], str] = lambda: "record",
    ) -> None:
        self.broker = broker
        self._broker = broker
        self._fetch = fetch
        self._mode = mode
        self.waited = 0
        """Requests that waited for another call's lease (for tests and benchmarks)."""

    @classmethod
    def for_cacher(cls, cacher: Any, run_id: Any) -> "SingleFlight":
        """The shared-run broker and fetch of ``cacher`` (an AsyncCacher) in run ``run_id``
        (a str or a SharedRun); ConfigurationError when its store cannot hold one."""
        from ..store.shared_runs import SharedBroker, shared_run, shared_store

        run = shared_run(run_id)
        broker = SharedBroker(cacher.store, cacher._background, run, shared_store(cacher.store))
        return cls(broker, cacher._fetch, lambda: cacher.mode)

    async def fetch(self, pending: list["_Pending"]) -> list[Settled]:
        if self._mode() != "record":  # replay calls no model, refresh and bypass reuse nothing
            return await self._fetch(pending)
        outcomes: list[Settled | None] = [None] * len(pending)
        deadline = anyio.current_time() + self._broker.run.lease_wait_s
        await self._round(pending, list(range(len(pending))), outcomes, deadline)
        return [_flagged(p, o) for p, o in zip(pending, outcomes)]  # type: ignore[arg-type]

    async def _round(self, pending: list["_Pending"], todo: list[int], outcomes: list[Any], deadline: float) -> None:
        broker = self._broker
        holder = broker.new_holder()
        scopes: dict[str, set[str]] = {}
        for i in todo:
            scopes.setdefault(pending[i].found.key, set()).add(broker.scope(pending[i].request.namespace))
        try:
            leases = await broker.acquire({key: sorted(wanted) for key, wanted in scopes.items()}, holder)
        except StoreError as exc:  # single-flight is a saving, never a failure: ask the model
            logger.warning("cachesaver could not take single-flight leases on %s: %s", broker.store.location, exc)
            leases = {}
        go: list[int] = []
        waits: dict[str, tuple[str, list[int]]] = {}
        late = anyio.current_time() >= deadline
        for i in todo:
            key = pending[i].found.key
            lease = leases.get(key)
            if lease is None or late or broker.scope(pending[i].request.namespace) in lease.scopes:
                go.append(i)
            else:
                waits.setdefault(key, (lease.holder, []))[1].append(i)
        async with anyio.create_task_group() as group:
            if go:
                group.start_soon(self._go, pending, go, outcomes, holder)
            else:
                await broker.release(holder)
            for key, (other, indices) in waits.items():
                self.waited += len(indices)
                group.start_soon(self._wait, pending, key, other, indices, outcomes, deadline)

    async def _go(self, pending: list["_Pending"], indices: list[int], outcomes: list[Any], holder: str) -> None:
        try:
            results = await self._fetch([pending[i] for i in indices])
        finally:
            await self._broker.release(holder)
        for i, result in zip(indices, results):
            outcomes[i] = result

    async def _wait(
        self, pending: list["_Pending"], key: str, other: str, indices: list[int], outcomes: list[Any], deadline: float
    ) -> None:
        broker = self._broker
        entries = [pending[i] for i in indices]
        try:
            await broker.wait_for(key, other, deadline)
            grants: list[Any] = await broker.top_up([p.found for p in entries], [p.needed for p in entries])  # type: ignore[misc]
        except StoreError as exc:  # the store failed: ask the model (what it stores may fail too)
            logger.warning("cachesaver stopped waiting for a single-flight lease on %s: %s", broker.store.location, exc)
            deadline = anyio.current_time()  # no more waiting for these
            grants = [None] * len(entries)
        remaining = []
        for i, entry, grant in zip(indices, entries, grants):
            if grant is None or isinstance(grant, BaseException):
                remaining.append(i)
                continue
            found: SharedFound = entry.found  # type: ignore[assignment]
            if grant.indices:
                found.indices.extend(grant.indices)
                found.samples.extend(grant.samples[j] for j in grant.indices)
                entry.needed -= len(grant.indices)
                found.missing = entry.needed
            if grant.wrote_record:
                found.wrote_record = True
            if entry.needed <= 0:
                outcomes[i] = _hits(found)
            else:
                remaining.append(i)
        if remaining:
            await self._round(pending, remaining, outcomes, deadline)


def _hits(found: "SharedFound") -> Response:
    """The Response of a request served whole from the store, partly after waiting."""
    samples = found.samples
    usage = [u for _, u in samples]
    return Response._trusted(
        [d for d, _ in samples],
        [True] * len(samples),
        [i >= found.base for i in range(len(samples))],
        usage if any(u is not None for u in usage) else None,
    )


def _flagged(entry: "_Pending", outcome: Settled) -> Settled:
    """Mark as duplicated the stored samples a request took after waiting for another call."""
    found: Any = entry.found
    stored = len(found.samples)
    if not isinstance(outcome, Response) or found.base >= stored or outcome.duplicated is None:
        return outcome
    flags = list(outcome.duplicated)
    for i in range(found.base, stored):
        flags[i] = True
    return Response._trusted(outcome.data, outcome.cached, flags, outcome.usage)
