"""Single-flight across workers: identical requests in flight at once in two workers of one
store cost one upstream call.

A cache stage that is a worker of a shared run (``run_id=``, see
:mod:`cachesaver.store.shared_runs`) fetches the missing samples of each pass through
:class:`SingleFlight`:

* Before asking the model, it takes a **lease** per cache key in the store (one step for the
  whole pass), naming the claim scopes (run and namespace) its call serves. It renews the
  leases every ``lease_ttl_s / 3`` while the call runs and releases them once the new samples
  are stored.
* **Joining, same namespace.** While the run has other live workers, the lease holder keeps
  its call open for up to ``join_window_s`` (default 0.5 s) before it asks the model: a request of
  another worker (or of another pass of this one) in the same run and namespace that finds the
  open lease *joins* it, adding its ``n`` to the lease in the same store step. At the end of
  the window the holder *seals* its leases (one step), reading what joined, and asks the model
  once per key for its own samples plus the joined ones (``n`` summed); it stores them all,
  claims its own, and the others stay unclaimed for the joiners, who wait for the lease to go
  and then claim them: fresh samples generated for them, so ``cached=False`` and
  ``duplicated=True`` (the ledger counts them in ``samples_duplicated``: they saved a call, not
  tokens). The window ends early once every key has been found by every other live worker
  (no one else could join). On diskcache every lease step is a write that waits its turn at
  the store's write lock (:mod:`cachesaver.store.write_turns`), the seal too: a joiner whose
  step is already waiting when the window ends mostly gets in before the seal. A worker alone
  in its run (the lease step says how many others are live) pays no window; nor does a
  pipeline without a run id, where none of this runs. One that took its leases sealed because
  it was alone, and learns from that step that others have joined the run, opens them (one
  more step) and waits after all.
* **Quiet workers.** A window that no one joined while others were live makes the worker
  *quiet*: its windows still open end, and its later passes take their leases sealed, until
  it joins another's call, finds one sealed in its namespace, or learns at a release that
  requests in its namespace came after its seal. So workers with distinct requests (shards of
  one benchmark) pay the window about once, not on every pass.
* **Other namespaces.** A request whose key is leased by another call serving other
  namespaces (of another worker, or of this one) **waits** until that lease is gone, then takes
  what that call stored as cache hits: ``cached=True`` and ``duplicated=True`` per sample, so
  the ledger counts them among ``samples_duplicated`` (and ``samples_cached``). A pass that
  asks one key in several namespaces makes one call for the first namespace, with enough
  samples for the most any of them needs, and serves the others from it the same way. What
  is still missing a request fetches itself, under a lease of its own. Waiting polls the
  store, one key per holder, with a growing pause (5 ms to 100 ms).
* A request in the same run and namespace that finds the lease already **sealed** (its call
  on its way) does not wait: it must get samples of its own (no stored sample is handed out
  twice in a namespace of a run), so it asks the model at once.
* A lease whose worker died (killed with -9, its host lost) is not renewed and expires
  ``lease_ttl_s`` after its last renewal; its waiters and joiners then take the work over. A
  call that failed stores nothing and releases its lease: they ask the model themselves. The
  holder's call runs detached from its callers, so what it was asked for its joiners is
  stored even if its own caller was cancelled.
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
        """Requests that waited for another call's lease, joined or not (for tests and benchmarks)."""
        self.joined = 0
        """Of those, the requests that joined that call (their n added to it)."""

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
        late = anyio.current_time() >= deadline
        scopes = {i: broker.scope(pending[i].request.namespace) for i in todo}
        wants: dict[str, dict[str, int]] = {}
        for i in todo:
            wanted = wants.setdefault(pending[i].found.key, {})
            wanted[scopes[i]] = wanted.get(scopes[i], 0) + (0 if late else pending[i].needed)
        joinable = not late and broker.joinable
        leases: Any = None
        peers: int | None = None
        try:
            taken = await broker.acquire(wants, holder, joinable)
            leases, peers = taken.leases, taken.peers
        except StoreError as exc:  # single-flight is a saving, never a failure: ask the model
            logger.warning("cachesaver could not take single-flight leases on %s: %s", broker.store.location, exc)
        go: list[int] = []
        held: dict[str, list[int]] = {}
        waits: dict[str, tuple[str, list[int]]] = {}
        joined: set[int] = set()
        for i in todo:
            key = pending[i].found.key
            lease = None if leases is None else leases.get(key)
            if leases is None or (lease is not None and late):
                go.append(i)
            elif lease is None:
                held.setdefault(key, []).append(i)
            elif scopes[i] in lease.scopes and not lease.open:
                go.append(i)  # sealed: this request needs samples of its own, at once
            else:
                if scopes[i] in lease.scopes:
                    joined.add(i)
                waits.setdefault(key, (lease.holder, []))[1].append(i)
        if held and not joinable and not late and peers and broker.joinable:
            # Taken sealed by a worker that thought it was alone, now that the step says not.
            try:
                await broker.acquire({key: wants[key] for key in held}, holder, True)
                joinable = True
            except StoreError as exc:
                logger.warning("cachesaver could not open single-flight leases on %s: %s", broker.store.location, exc)
        window = broker.run.join_window_s if joinable and held and peers else 0.0
        async with anyio.create_task_group() as group:
            if go:
                group.start_soon(self._go, pending, go, outcomes)
            if held:
                group.start_soon(self._hold, pending, held, scopes, outcomes, holder, joinable, window, peers or 0, deadline)
            else:
                await broker.release(holder)
            if waits:
                self.waited += sum(len(indices) for _, indices in waits.values())
                self.joined += len(joined)
                group.start_soon(self._wait, pending, waits, joined, outcomes, deadline)

    async def _go(self, pending: list["_Pending"], indices: list[int], outcomes: list[Any]) -> None:
        """Ask the model for ``indices`` at once (no lease of ours on their keys)."""
        results = await self._fetch([pending[i] for i in indices])
        for i, result in zip(indices, results):
            outcomes[i] = result

    async def _window(self, keys: list[str], holder: str, peers: int, window: float) -> None:
        """Keep ``holder``'s leases on ``keys`` open for joiners for ``window`` seconds, or less:
        until every one has been found by all the other live workers (``peers``, or more if a
        later lease step saw more), since no one else could join, or until another call of
        this worker ends its window with no joiner (the worker turns quiet). Reads the leases
        with a growing pause (10 ms to 100 ms)."""
        broker = self._broker
        end = anyio.current_time() + window
        pause = 0.01
        quieted = broker.quiet_event()
        while True:
            left = end - anyio.current_time()
            if left <= 0:
                return
            with anyio.move_on_after(min(pause, left)):
                await quieted.wait()
            if broker.quiet:
                return
            pause = min(pause * 1.5, 0.1)
            if anyio.current_time() >= end:
                return
            try:
                leases = await broker.leases(keys)
            except StoreError:  # a read the store failed: wait the window out
                continue
            everyone = max(peers, broker.peers or 0)
            keys = [k for k, lease in leases.items() if lease is not None and lease.holder == holder and lease.visitors < everyone]
            if not keys:  # every key found by every other worker (or gone): no one else can join
                return

    async def _hold(
        self, pending: list["_Pending"], held: dict[str, list[int]], scopes: dict[int, str], outcomes: list[Any],
        holder: str, sealing: bool, window: float, peers: int, deadline: float,
    ) -> None:
        """The keys whose leases ``holder`` took: keep them open for ``window``, seal them
        (reading what joined), ask the model once per key for the first scope's requests plus
        what the others need (the other scopes of the pass and the joined requests), store it
        all, serve the pass's other scopes from it, and release."""
        broker = self._broker
        lead: list[int] = []
        others: list[int] = []
        remaining: list[int] = []
        try:
            if window > 0:
                await self._window(list(held), holder, peers, window)
            joins: dict[str, dict[str, int] | None] = {}
            if sealing:
                try:
                    joins = await broker.seal(holder)
                except StoreError as exc:  # the joined requests then ask the model themselves
                    logger.warning("cachesaver could not seal single-flight leases on %s: %s", broker.store.location, exc)
            for key, indices in held.items():
                own: dict[str, int] = {}
                for i in indices:
                    own[scopes[i]] = own.get(scopes[i], 0) + pending[i].needed
                first = scopes[indices[0]]
                joined = joins.get(key) or {}
                # The new samples are unclaimed in every other scope: the most any scope needs.
                most = max(own.get(scope, 0) + joined.get(scope, 0) for scope in own.keys() | joined.keys())
                pending[indices[0]].extra = most - own[first]
                for i in indices:
                    (lead if scopes[i] == first else others).append(i)
            results = await self._fetch([pending[i] for i in lead])
            for i, result in zip(lead, results):
                outcomes[i] = result
            if others:
                remaining, failed = await self._top_up(pending, others, set(), outcomes)
                if failed:
                    deadline = anyio.current_time()  # no more waiting for these
        finally:
            for indices in held.values():
                pending[indices[0]].extra = 0
            await broker.release(holder)
        if remaining:
            await self._round(pending, remaining, outcomes, deadline)

    async def _wait(
        self, pending: list["_Pending"], waits: dict[str, tuple[str, list[int]]], joined: set[int],
        outcomes: list[Any], deadline: float,
    ) -> None:
        """Wait for the other holders' leases of ``waits`` (key -> holder, indices), polling
        them together; as leases go, take what their calls stored (one claim per batch) and
        send what is still missing to another round."""
        broker = self._broker
        left = dict(waits)
        async with anyio.create_task_group() as group:
            while left:
                try:
                    gone = await broker.wait_for({key: other for key, (other, _) in left.items()}, deadline)
                except StoreError as exc:  # the store failed: ask the model (what it stores may fail too)
                    logger.warning("cachesaver stopped waiting for single-flight leases on %s: %s", broker.store.location, exc)
                    indices = [i for _, batch in left.values() for i in batch]
                    group.start_soon(self._round, pending, indices, outcomes, anyio.current_time())
                    return
                if not gone:  # lease_wait_s is over: they ask the model themselves
                    group.start_soon(self._round, pending, [i for _, batch in left.values() for i in batch], outcomes, deadline)
                    return
                group.start_soon(self._served, pending, [i for key in gone for i in left.pop(key)[1]], joined, outcomes, deadline)

    async def _served(
        self, pending: list["_Pending"], indices: list[int], joined: set[int], outcomes: list[Any], deadline: float
    ) -> None:
        """Take the stored samples for ``indices`` now that the calls they waited for are over;
        what is still missing goes to another round."""
        remaining, failed = await self._top_up(pending, indices, joined, outcomes)
        if remaining:
            await self._round(pending, remaining, outcomes, anyio.current_time() if failed else deadline)

    async def _top_up(
        self, pending: list["_Pending"], indices: list[int], joined: set[int], outcomes: list[Any]
    ) -> tuple[list[int], bool]:
        """Claim stored samples for ``indices`` (those in ``joined`` take them as fetched for
        them); the indices still short, and whether the store failed (then they wait no more)."""
        broker = self._broker
        entries = [pending[i] for i in indices]
        failed = False
        try:
            grants: list[Any] = await broker.top_up([p.found for p in entries], [p.needed for p in entries])  # type: ignore[misc]
        except StoreError as exc:  # the store failed: ask the model (what it stores may fail too)
            logger.warning("cachesaver could not take the samples of a single-flight call on %s: %s", broker.store.location, exc)
            grants = [None] * len(entries)
            failed = True
        remaining = []
        for i, entry, grant in zip(indices, entries, grants):
            if grant is None or isinstance(grant, BaseException):
                remaining.append(i)
                continue
            found: SharedFound = entry.found  # type: ignore[assignment]
            if grant.indices:
                found.indices = [*found.indices, *grant.indices]
                found.samples.extend(grant.samples[j] for j in grant.indices)
                found.reused.extend([i not in joined] * len(grant.indices))
                entry.needed -= len(grant.indices)
                found.missing = entry.needed
            if grant.wrote_record:
                found.wrote_record = True
            if entry.needed <= 0:
                outcomes[i] = _hits(found)
            else:
                remaining.append(i)
        return remaining, failed


def _hits(found: "SharedFound") -> Response:
    """The Response of a request served whole from the store, partly after waiting."""
    samples = found.samples
    usage = [u for _, u in samples]
    base = found.base
    return Response._trusted(
        [d for d, _ in samples],
        [True] * base + found.reused,
        [i >= base for i in range(len(samples))],
        usage if any(u is not None for u in usage) else None,
    )


def _flagged(entry: "_Pending", outcome: Settled) -> Settled:
    """Flag the stored samples a request took after waiting for another call: duplicated, and
    cached unless fetched for it by a call it joined."""
    found: Any = entry.found
    stored = len(found.samples)
    if not isinstance(outcome, Response) or found.base >= stored or outcome.duplicated is None:
        return outcome
    flags = list(outcome.duplicated)
    cached = list(outcome.cached) if outcome.cached is not None else [True] * len(flags)
    for i in range(found.base, stored):
        flags[i] = True
        cached[i] = found.reused[i - found.base]
    return Response._trusted(outcome.data, cached, flags, outcome.usage)
