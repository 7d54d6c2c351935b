"""Shared runs: every pipeline on one store with the same ``run_id`` is one run.

``OnlineAPI(model, cache, batch_size, timeout, run_id="exp-1")`` (and the same ``run_id=`` on
``LocalAPI``, ``AsyncCacher`` and the drop-in clients) makes the pipeline a *worker* of run
``exp-1`` on its store. All workers of a run, in one process, several processes or several
hosts, share one set of claims, kept in the store:

* **Fresh samples**: within the run and a namespace, no stored sample is handed out twice,
  whichever worker asks.
* **Exact replay by request_id**: a later run (another run id, or none) that issues the same
  requests with the same ids gets the same samples per request, however the requests were split
  among the workers of either run: the use counts of each (namespace, key, request_id, n) are
  the run's, not a worker's.
* **Without run_id** (the default) every pipeline is its own run, exactly as before; shared
  runs cost store round trips of their own (a claim per lookup round, a settle when requests
  are delivered), so they are opt-in.

The store must offer the capability (:class:`~cachesaver.store.protocol.SharedRunStore`):
the memory engine (pipelines of one process sharing the object), diskcache (the processes of
one host: a network filesystem is not safe) and Redis (any hosts). Another engine, or a
read-only cache, raises :class:`~cachesaver.errors.ConfigurationError` when the pipeline is made.

Membership and time limits (:class:`SharedRun` sets them):

* A worker joins the run at its first request and renews its membership every ``ttl_s / 3``
  (default :data:`RUN_TTL_S`, 10 minutes) while the pipeline is open; closing it leaves the
  run. When the last live worker leaves, the run ends: a later pipeline with the same run id
  starts a new run (and so replays). A worker that stops renewing (killed, or its host lost)
  is declared dead ``ttl_s`` after its last renewal; a run none of whose workers renews
  expires ``ttl_s`` after the last renewal, so a crashed run does not hold samples forever.
* **Lingering** (``linger_s``, 0 by default): a worker with ``linger_s`` that closes keeps
  the run open ``linger_s`` more, so workers that run one after another (shards on a queue)
  are one run: one that joins within that time gets the same claims and use counts. Before
  it leaves, it joins a placeholder worker ``<id>:+linger`` (:data:`LINGER_NAME`, listed
  among the live workers by :func:`run_status`) for ``linger_s``, which nobody renews and
  which replaces the run's earlier placeholder. With no live worker left when it expires,
  the run ends, exactly ``linger_s`` after the last close (``linger_s >= ttl_s``); so a run
  ends at most ``linger_s`` after its last worker closed or last renewed. :func:`end_run`
  ends it at once (when its last shard is done, say). The placeholder does not count as a
  worker that could join a single-flight call: a worker that joins a lingering run alone
  pays no join window.
* A dead worker's requests that were not delivered give their use back (a request re-issued
  after that replays exactly), but keep their samples claimed (it may have handed some out).
  A worker started with ``worker="name"`` replaces at once a live worker of that name (a
  restarted shard need not wait ``ttl_s``); names must be unique among the run's live workers.
* A worker that could not renew for longer than ``ttl_s`` (a suspended process) has been
  declared dead: it logs an error and joins again as a new worker; samples it handed out
  before may then be handed out again in the run.
* Claim states expire ``keep_s`` (default one day) after the last claim on their key, which
  only matters for runs that leave a key untouched that long.

A request's claim is *pending* from its lookup until it is delivered (then *settled*, within
one lookup round) or abandoned (released: samples free, use given back). A worker killed
between delivering a request and settling it (milliseconds) gives that use back too; only a
later request with the same (namespace, key, request_id, n) in the same run can notice.

Single-flight across workers (:mod:`cachesaver.stages.single_flight`) uses the same capability:
leases per key, each renewed every ``lease_ttl_s / 3`` while its upstream call runs, and kept
open up to ``join_window_s`` for identical requests of other workers in the same namespace to
join (their ``n`` added to the call).

>>> import anyio
>>> from cachesaver.models import ScriptedModel
>>> from cachesaver.pipelines import OnlineAPI
>>> from cachesaver.store.memory import MemoryStore
>>> from cachesaver.typedefs import Request
>>> async def demo():
...     store, model = MemoryStore(), ScriptedModel()
...     async with OnlineAPI(model, store, 4, run_id="r") as a, OnlineAPI(model, store, 4, run_id="r") as b:
...         first = await a.request(Request("hi", n=2))
...         second = await b.request(Request("hi", n=2))  # the same run: fresh samples
...     async with OnlineAPI(model, store, 4, run_id="r") as c:  # a new run (the old one ended)
...         third = await c.request(Request("hi", n=2))
...     return first.data, second.data, third.data, third.cached
>>> anyio.run(demo)
(['hi#0', 'hi#1'], ['hi#2', 'hi#3'], ['hi#0', 'hi#1'], [True, True])
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import re
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import anyio

from .._runtime.jobs import BackgroundTasks
from ..errors import ConfigurationError, PipelineClosedError, StoreError
from .allocation import Found, SampleBroker, Write, _Lookup, _Record, _abandoned_error
from .protocol import (
    Append,
    ClaimAsk,
    ClaimNew,
    ClaimRelease,
    ClaimSettle,
    ClaimTopUp,
    Grant,
    KeyClaimOps,
    Lease,
    LeasesTaken,
    RecordWrite,
    RunRef,
    RunStatus,
    SampleStore,
    SharedRunStore,
    namespace_prefix,
    use_ident,
)
from .threads import StoreThread

__all__ = [
    "CLAIMS_KEEP_S",
    "LEASE_TTL_S",
    "JOIN_WINDOW_S",
    "LEASE_WAIT_S",
    "LINGER_NAME",
    "RUN_TTL_S",
    "SharedBroker",
    "SharedFound",
    "SharedRun",
    "end_run",
    "linger",
    "run_status",
    "shared_run",
    "shared_store",
]

logger = logging.getLogger(__name__)

RUN_TTL_S = 600.0
"""How long a worker stays a member of its run without renewing (it renews every third of it)."""
LEASE_TTL_S = 10.0
"""How long a single-flight lease lives without renewal (renewed every third of it)."""
LEASE_WAIT_S = 600.0
"""The longest a request waits for other workers' leases before it asks the model itself."""
CLAIMS_KEEP_S = 86400.0
"""How long a key's claim state outlives the last claim on it."""
JOIN_WINDOW_S = 0.5
"""The longest a single-flight lease stays open for other workers' identical requests to join
its call, when the run has other live workers (see :mod:`cachesaver.stages.single_flight`).
Measured: 4 processes on a loaded 2-core host, released together, ask the same prompt 0.1 to
0.5 s apart on Redis; on diskcache, where every step is a write taken in turn
(:mod:`cachesaver.store.write_turns`), the last copy's lease step lands 0.2 to 0.6 s after
the first, but it is queued before the holder's seal, which waits its turn behind it."""

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
LINGER_NAME = "+linger"
"""The worker name of the placeholder a closing worker with ``linger_s`` leaves in its run (no
user worker can have it: ``+`` is not allowed in ``SharedRun.worker``). The placeholders of one
run share it, so the latest replaces the one before."""


def _seconds(name: str, value: Any, zero: bool = False) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(f"SharedRun.{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SharedRun:
    """A shared run and its time limits (see the module docstring); ``run_id="x"`` is
    ``run_id=SharedRun("x")``.

    * ``ttl_s``: a worker that has not renewed for this long is dead, a run none renews ends.
    * ``lease_ttl_s``: a single-flight lease not renewed for this long passes to a waiter.
    * ``lease_wait_s``: the longest a request waits for leases before it calls the model.
    * ``keep_s``: a key's claim state is dropped this long after the last claim on it.
    * ``join_window_s``: the longest a worker holding a lease keeps its call open for
      identical requests of other workers in the same namespace to join it (n summed) before
      it asks the model; only while the run has other live workers, ended early once all of
      them have come by (see :mod:`cachesaver.stages.single_flight`). 0: never (each asks
      for itself). Finite, >= 0.
    * ``worker``: a name for this worker (letters, digits, ``._-``); a worker joining with the
      name of a live one replaces it (a restart). None: a fresh anonymous worker.
    * ``linger_s``: how long the run stays open after this worker closes, for workers that
      start later (shards run one after another) to be in it. 0 (the default): it ends when its
      last live worker leaves. Else at least ``ttl_s`` (a run's record lives ``ttl_s`` after a
      worker's last renewal anyway, so a shorter linger could not end it sooner: lower
      ``ttl_s`` too) and at most ``keep_s``. End a lingering run at once with :func:`end_run`.
    """

    run_id: str
    ttl_s: float = RUN_TTL_S
    lease_ttl_s: float = LEASE_TTL_S
    lease_wait_s: float = LEASE_WAIT_S
    keep_s: float = CLAIMS_KEEP_S
    worker: str | None = None
    join_window_s: float = JOIN_WINDOW_S
    linger_s: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not self.run_id or len(self.run_id) > 200:
            raise ConfigurationError(f"run_id must be a non-empty str of at most 200 characters, got {self.run_id!r}")
        for name in ("ttl_s", "lease_ttl_s", "lease_wait_s", "keep_s"):
            object.__setattr__(self, name, _seconds(name, getattr(self, name)))
        for name in ("join_window_s", "linger_s"):
            object.__setattr__(self, name, _seconds(name, getattr(self, name), zero=True))
        if self.keep_s < self.ttl_s:
            raise ConfigurationError(
                f"SharedRun.keep_s ({self.keep_s:g}) must be at least ttl_s ({self.ttl_s:g}): claims must "
                "outlive the workers that made them"
            )
        if self.linger_s and not self.ttl_s <= self.linger_s <= self.keep_s:
            raise ConfigurationError(
                f"SharedRun.linger_s ({self.linger_s:g}) must be 0 or from ttl_s ({self.ttl_s:g}) to keep_s "
                f"({self.keep_s:g}): a run's record lives ttl_s after a worker's last renewal, so a shorter "
                "linger cannot end it sooner (lower ttl_s too), and its claims must outlive the linger "
                "(raise keep_s too)"
            )
        if self.worker is not None and (not isinstance(self.worker, str) or not _NAME.match(self.worker)):
            raise ConfigurationError(
                f"SharedRun.worker must be 1 to 64 letters, digits, '.', '_' or '-', got {self.worker!r}"
            )


def shared_run(run_id: Any) -> SharedRun:
    """``run_id`` as a :class:`SharedRun` (a str becomes one with the default limits)."""
    if isinstance(run_id, SharedRun):
        return run_id
    if isinstance(run_id, str):
        return SharedRun(run_id)
    raise ConfigurationError(f"run_id must be a str or a SharedRun, got {type(run_id).__name__}")


def shared_store(store: SampleStore) -> SharedRunStore:
    """The shared-run capability of ``store``, or ConfigurationError saying why there is none."""
    if not getattr(store, "writable", True):
        raise ConfigurationError(
            f"the cache at {store.location} is read-only, and a shared run writes its claims to the "
            "store: drop run_id to replay from it, or use a writable copy"
        )
    factory = getattr(store, "shared_runs", None)
    backend = factory() if callable(factory) else None
    if not isinstance(backend, SharedRunStore):
        raise ConfigurationError(
            f"the store {store.location} ({type(store).__name__}) cannot hold a shared run: run_id= "
            "needs a diskcache directory (processes of one host), a Redis URL (any hosts) or a "
            "MemoryStore (one process); or drop run_id"
        )
    return backend


def _gone(lease: Lease | None, holder: str) -> bool:
    """Whether the lease ``holder`` had is gone: released, expired, or another's now."""
    return lease is None or lease.holder != holder


def _with_store(cache: Any, func: Any) -> Any:
    from . import open_store

    store, owned = open_store(cache)
    try:
        return func(shared_store(store))
    finally:
        if owned:
            store.close()


def run_status(cache: Any, run_id: str) -> RunStatus | None:
    """The record of shared run ``run_id`` on ``cache`` (what ``cache=`` takes): its live and
    dead workers; None when no such run is live."""
    return _with_store(cache, lambda shared: shared.status(run_id))


def end_run(cache: Any, run_id: str) -> None:
    """End shared run ``run_id`` on ``cache`` now, its claims dropped: a lingering run whose
    work is done (``SharedRun.linger_s``), or a crashed one to replay at once under the same
    id. A later pipeline with that run id starts a new run. Call it once the run's pipelines
    are closed: one still open goes on without the dropped claims (it may hand out again what
    the run had handed out) and becomes a worker of the new run at its next renewal.
    Blocking: from async code, call it in a worker thread
    (``await anyio.to_thread.run_sync(end_run, cache, run_id)``)."""
    _with_store(cache, lambda shared: shared.end(run_id))


def linger(shared: SharedRunStore, run_id: str, generation: str, linger_s: float) -> None:
    """Keep run ``run_id`` (in its ``generation``) open ``linger_s`` more: join a placeholder
    worker (:data:`LINGER_NAME`) that nobody renews, which replaces the run's earlier one. What a
    worker with ``SharedRun.linger_s`` does before it leaves. With ``linger_s >= ttl_s`` the
    run's record then expires when the placeholder does, unless a worker joins before.

    If the run is no longer in ``generation`` (ended meanwhile, by :func:`end_run` say), that
    join started a run of its own: the placeholder leaves it at once, which ends it unless a
    worker joined it in between (then it is that worker's run)."""
    placeholder = f"{uuid.uuid4().hex[:12]}:{LINGER_NAME}"
    # A generation never used (not a worker's proposal, which may be the run's own): a run the
    # placeholder starts must not take up an ended run's claims.
    status = shared.join(run_id, placeholder, linger_s, uuid.uuid4().hex)
    if status.generation != generation:
        shared.leave(run_id, placeholder)


@dataclass(slots=True, eq=False)
class SharedFound(Found):
    """A lookup's result in a shared run: its claim ``ticket``, whether a claim wrote its record,
    how many of its samples it found at lookup (``base``; later ones it took after waiting
    for another worker's lease) and, per later sample, whether it was reused (a stored sample
    another call fetched for itself: True) or fetched for this request by a call it joined."""

    ticket: str = ""
    wrote_record: bool = False
    base: int = 0
    reused: list[bool] = field(default_factory=list)


class _Bookkeeping:
    """The commit hook of a shared run's commit: marks what landed (the claims themselves are
    made by the engine, in the commit)."""

    __slots__ = ("writes", "records")

    def __init__(self, writes: list[Write], records: list[_Record]) -> None:
        self.writes, self.records = writes, records

    def before(self) -> None:
        pass

    def after(self, starts: list[int]) -> None:
        for write, start in zip(self.writes, starts):
            write.indices = list(range(start, start + len(write.samples)))
            write.claimed = write.owner is not None and write.own > 0
        for record in self.records:
            record.written = True

    def finish(self) -> None:
        pass




class SharedBroker(SampleBroker):
    """The allocation broker of a shared-run worker: claims in the store, not in memory.

    What differs from :class:`~cachesaver.store.allocation.SampleBroker`: a lookup round is one
    :meth:`~cachesaver.store.protocol.SharedRunStore.claim` (never inline on the event loop), a
    commit claims new samples in the store in the same atomic step, a delivered request is
    settled with the next round, an abandoned one released with it; the worker joins the run
    before its first round, renews it (and its leases) from a background job, and leaves at
    close."""

    inline_io = False

    def __init__(self, store: SampleStore, background: BackgroundTasks, run: SharedRun, backend: SharedRunStore) -> None:
        super().__init__(store, background)
        self.inline_io = False
        self._loop_views = None  # a round is one claim step in the store, on the read thread
        self.run = run
        self.backend = backend
        self.worker = self._new_worker()
        self.ref: RunRef | None = None
        self._proposed = uuid.uuid4().hex  # the generation, should this worker start the run
        self._tickets = itertools.count()
        self._holders = itertools.count()
        self._settles: deque[tuple[str, ClaimSettle]] = deque()
        self._releases: deque[tuple[str, ClaimRelease]] = deque()
        self._held: dict[str, list[str]] = {}  # lease holder -> its keys (renewed while held)
        self.peers: int | None = None
        """The run's other live workers as the last lease step saw them, lingering placeholders
        left out (None: no step yet)."""
        self._lingering = 0  # live placeholders (LINGER_NAME) at the last join
        self.quiet = False
        """True once a call this worker kept open for joiners got none: its passes then take
        their leases sealed (no join window), and those still in their window end it, until
        this worker joins another's call, finds one sealed in its namespace, or learns at a
        release that others came after its seal."""
        self.quieted: anyio.Event | None = None
        """Set when :attr:`quiet` turns True (a window waiting on it ends); made by
        :meth:`quiet_event`."""
        self.housekeeping = StoreThread("cachesaver-shared-run", finish=store.release_thread)
        self._join_lock: anyio.Lock | None = None
        self._beating = False
        self._beat_wake: anyio.Event | None = None
        self._left = False

    def _new_worker(self) -> str:
        return f"{uuid.uuid4().hex[:12]}:{self.run.worker or ''}"

    # -- membership ------------------------------------------------------------------------------

    def _join(self) -> None:
        run = self.run
        status = self.backend.join(run.run_id, self.worker, run.ttl_s, self._proposed)
        if status.lost:
            logger.error(
                "cachesaver: this worker of shared run %r on %s did not renew its membership for over "
                "%g s (ttl_s) and was declared dead; it joins again as a new worker. Samples it handed "
                "out before may be handed out again in the run", run.run_id, self.store.location, run.ttl_s,
            )
            self.worker = self._new_worker()
            status = self.backend.join(run.run_id, self.worker, run.ttl_s, self._proposed)
        previous = self.ref
        if previous is not None and previous.generation != status.generation:
            logger.error(
                "cachesaver: shared run %r on %s had ended while this worker could not reach the store; "
                "it goes on in a new run (its earlier claims no longer count)", run.run_id, self.store.location,
            )
        self.ref = RunRef(run.run_id, status.generation, self.worker, status.dead)
        self._lingering = sum(1 for worker in status.workers if worker.partition(":")[2] == LINGER_NAME)

    def started(self) -> bool:
        return self.ref is not None and (self._beating or self._stopping) and super().started()

    async def ensure_running(self) -> None:
        if self.ref is None:
            if self._stopping:
                raise PipelineClosedError("the cache is closed; create a new pipeline")
            if self._join_lock is None:
                self._join_lock = anyio.Lock()
            async with self._join_lock:
                if self.ref is None:
                    await self.housekeeping.run(self._join)
        await super().ensure_running()
        if not self._beating and not self._stopping:
            self._beating = True
            try:
                await self._background.spawn(self._heartbeat, service=True)
            except BaseException:
                self._beating = False
                raise

    async def _heartbeat(self) -> None:
        run = self.run
        period = min(run.ttl_s, run.lease_ttl_s) / 3
        due = anyio.current_time() + run.ttl_s / 3
        try:
            while not self._stopping:
                self._beat_wake = wake = anyio.Event()
                with anyio.move_on_after(period):
                    await wake.wait()
                if self._stopping:
                    return
                try:
                    if self._held:
                        await self.housekeeping.run(self._renew_leases, list(self._held.items()))
                    if anyio.current_time() >= due:
                        due = anyio.current_time() + run.ttl_s / 3
                        await self.housekeeping.run(self._join)
                except StoreError as exc:
                    logger.warning("cachesaver could not renew shared run %r on %s: %s", run.run_id, self.store.location, exc)
        finally:
            self._beating = False

    def _renew_leases(self, held: list[tuple[str, list[str]]]) -> None:
        ttl = self.run.lease_ttl_s
        for holder, keys in held:
            lost = self.backend.renew_leases(keys, holder, ttl)
            if lost:
                logger.warning("cachesaver: %d single-flight lease(s) of %s expired before renewal", len(lost), holder)

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            if self._beat_wake is not None:
                self._beat_wake.set()
            with anyio.CancelScope(shield=True):
                held, self._held = list(self._held.items()), {}
                try:
                    if not self._left and self.ref is not None:
                        self._left = True
                        await self.housekeeping.run(self._leave, held)
                finally:
                    await anyio.to_thread.run_sync(self.housekeeping.close)

    def _leave(self, held: list[tuple[str, list[str]]]) -> None:
        """Release the leases, send the settles and releases still queued, leave the run."""
        run = self.run
        try:
            for holder, keys in held:
                self.backend.release_leases(keys, holder)
            ops: dict[str, dict[str, list[Any]]] = {}
            for kind, queue in (("releases", self._releases), ("settles", self._settles)):
                while queue:
                    key, item = queue.popleft()
                    ops.setdefault(key, {"releases": [], "settles": []})[kind].append(item)
            if ops and self.ref is not None:
                claim_ops = {k: KeyClaimOps(tuple(o["releases"]), tuple(o["settles"])) for k, o in ops.items()}
                self.backend.claim(self.ref, claim_ops, run.keep_s)
            if run.linger_s and self.ref is not None:
                linger(self.backend, run.run_id, self.ref.generation, run.linger_s)
            self.backend.leave(run.run_id, self.worker)
        except StoreError as exc:
            logger.warning(
                "cachesaver could not leave shared run %r on %s (it is declared dead after ttl_s): %s",
                run.run_id, self.store.location, exc,
            )

    # -- lookup rounds -------------------------------------------------------------------------

    def _has_lookup_work(self) -> bool:
        return bool(self._settles or self._releases) or super()._has_lookup_work()

    def _lookup_round(self, lookups: list[_Lookup], abandoned: list[_Lookup]) -> list[Found | BaseException]:
        ops: dict[str, dict[str, list[Any]]] = {}

        def add(key: str, kind: str, item: Any) -> None:
            ops.setdefault(key, {"releases": [], "settles": [], "asks": []})[kind].append(item)

        taken: list[tuple[str, Any]] = []
        for op in abandoned:
            found = op.found
            if isinstance(found, SharedFound) and found.ticket:
                clear = found.wrote_record or (found.record is not None and found.record.written)
                taken.append(("releases", (found.key, ClaimRelease(found.ticket, clear))))
        while self._releases:
            taken.append(("releases", self._releases.popleft()))
        while self._settles:
            taken.append(("settles", self._settles.popleft()))
        for kind, (key, item) in taken:
            add(key, kind, item)
        results: list[Found | BaseException | None] = [None] * len(lookups)
        asked: list[tuple[int, str]] = []
        for position, op in enumerate(lookups):
            if op.abandoned:
                results[position] = _abandoned_error()
                continue
            request = op.request
            ticket = f"{self.worker}/{next(self._tickets)}"
            ident = use_ident(request.namespace, request.request_id, request.n) if request.request_id is not None else None
            add(op.key, "asks", ClaimAsk(ticket, request.namespace, ident, request.n))
            asked.append((position, ticket))
        if not ops:
            return results  # type: ignore[return-value]
        claim_ops = {
            key: KeyClaimOps(tuple(o["releases"]), tuple(o["settles"]), tuple(o["asks"])) for key, o in ops.items()
        }
        if self.ref is None:  # joined by ensure_running before any lookup
            raise StoreError("cachesaver: an internal invariant failed (joined by ensure_running before any lookup); please report this bug")
        try:
            granted = self.backend.claim(self.ref, claim_ops, self.run.keep_s)
        except BaseException:
            # Maybe applied: releasing the asks is safe (an unknown ticket is left alone), and
            # the releases and settles are tried again with the next round.
            for kind, item in taken:
                (self._releases if kind == "releases" else self._settles).append(item)
            for position, ticket in asked:
                self._releases.append((lookups[position].key, ClaimRelease(ticket)))
            raise
        by_ticket: dict[str, Grant] = {}
        for key, grants in granted.items():
            if not isinstance(grants, BaseException):
                by_ticket.update((g.ticket, g) for g in grants)
        for position, ticket in asked:
            op = lookups[position]
            request = op.request
            grant = by_ticket.get(ticket)
            if grant is None:
                error = granted.get(op.key)
                self._releases.append((op.key, ClaimRelease(ticket)))  # in case part of it went in
                results[position] = error if isinstance(error, BaseException) else StoreError(
                    f"the store {self.store.location} did not answer the claim of this request"
                )
                continue
            samples = [grant.samples[i] for i in grant.indices]
            op.use = grant.use
            results[position] = op.found = SharedFound(
                op.key, grant.use, list(grant.indices), samples, request.n - len(samples), request.namespace,
                request.request_id, request.n, False, ticket=ticket, wrote_record=grant.wrote_record,
                base=len(samples),
            )
        return results  # type: ignore[return-value]

    def claimed(self, namespace: str, key: str, below: int) -> int:
        """How many of the indices below ``below`` of (namespace, key) the run (every worker)
        has handed out; reads the store. For explanations, not the request path."""
        ref = self.ref
        if ref is None:  # not joined yet: the run as it stands, if it is live
            status = self.backend.status(self.run.run_id)
            if status is None:
                return 0
            ref = RunRef(self.run.run_id, status.generation, self.worker, status.dead)
        return self.backend.claimed(ref, namespace, key, below)

    def deliver(self, found: Found) -> None:
        """The request reached its caller: settle its claim with the next round."""
        if isinstance(found, SharedFound) and found.ticket and found.live:
            self._settles.append((found.key, ClaimSettle(found.ticket)))
            self._lookup_lane.kick()

    def abandon(self, op: _Lookup) -> None:
        """The request failed or its caller left: its claim is released with the next round
        (and a record it wrote is cleared then, in the same step)."""
        if op.abandoned:
            return
        op.abandoned = True
        found = op.found
        if found is not None:
            found.live = False
            record = found.record
            if record is not None and not record.written:  # not out yet: it never goes
                for queue in (self._records, self._unstored_records):
                    if record in queue:
                        queue.remove(record)
        self._abandoned.append(op)
        self._lookup_lane.kick()

    # -- commits -------------------------------------------------------------------------------

    def _commit(self, writes: list[Write], records: list[_Record], wait_s: float | None = None) -> None:
        positions = {id(w): i for i, w in enumerate(writes)}
        appends = [Append(w.key, tuple(w.samples), w.request) for w in writes]
        record_writes: list[RecordWrite] = [r.to_write(positions) for r in records]
        if len(record_writes) > 1:  # a record and its later replacement: only the last one
            last = {(w.key, w.record.tag): w for w in record_writes}
            if len(last) < len(record_writes):
                record_writes = list(last.values())
        claims = [
            ClaimNew(w.owner.ticket, i, w.own)
            for i, w in enumerate(writes)
            if isinstance(w.owner, SharedFound) and w.owner.live and w.own and w.owner.ticket
        ]
        if self.ref is None:  # joined by ensure_running before any lookup
            raise StoreError("cachesaver: an internal invariant failed (a shared run used before it was joined); please report this bug")
        self.backend.commit(
            self.ref, appends, record_writes, claims, self.run.keep_s, hook=_Bookkeeping(writes, records), wait_s=wait_s
        )

    # -- single-flight (used by cachesaver.stages.single_flight) ----------------------------------

    def scope(self, namespace: str) -> str:
        """The claim scope of ``namespace`` in this run: a waiter in the same scope as a lease's
        call could not take its samples."""
        if self.ref is None:  # joined by ensure_running before any lookup
            raise StoreError("cachesaver: an internal invariant failed (a shared run used before it was joined); please report this bug")
        return f"{self.ref.generation}:{namespace_prefix(namespace)}"

    def new_holder(self) -> str:
        return f"{self.worker}/lease{next(self._holders)}"

    @property
    def joinable(self) -> bool:
        """Whether a pass should take its leases open to joins: the run has a join window and
        other live workers (or none is known yet: the lease step says, and the pass then seals
        at once if it was alone), and this worker is not :attr:`quiet`."""
        return self.run.join_window_s > 0 and self.peers != 0 and not self.quiet

    async def acquire(self, wants: dict[str, dict[str, int]], holder: str, joinable: bool) -> LeasesTaken:
        """Take (or join) the leases of ``wants``' keys for ``holder`` (see
        :meth:`~cachesaver.store.protocol.SharedRunStore.acquire_leases`); those taken are
        renewed until :meth:`release`. Updates :attr:`peers`."""
        taken = await self.housekeeping.run(
            functools.partial(self.backend.acquire_leases, joinable=joinable, run=self.ref),
            wants, holder, self.run.lease_ttl_s,
        )
        if taken.peers is not None:
            if self._lingering:
                # A lingering run's placeholder is no worker that could join a call: left out,
                # as the last join saw it (a placeholder gone since makes the count one short,
                # until the next join, ttl_s / 3 at most: a missed saving, never a wrong sample).
                taken = replace(taken, peers=max(taken.peers - self._lingering, 0))
            self.peers = taken.peers
        for key, lease in taken.leases.items():
            if lease is not None and not set(wants[key]).isdisjoint(lease.scopes):
                self.quiet = False  # it joined another call, or came too late for one
        mine = [key for key, lease in taken.leases.items() if lease is None]
        if mine:
            self._held[holder] = mine
        return taken

    def quiet_event(self) -> anyio.Event:
        """An event set the next time this worker turns :attr:`quiet`."""
        if self.quieted is None:
            self.quieted = anyio.Event()
        return self.quieted

    async def leases(self, keys: Sequence[str]) -> Mapping[str, Lease | None]:
        """The live lease of each of ``keys`` (one store step)."""
        return await self.housekeeping.run(self.backend.leases, list(keys))

    async def seal(self, holder: str) -> dict[str, dict[str, int] | None]:
        """Seal ``holder``'s leases; per key, the samples joined in each scope (None: lost)."""
        keys = self._held.get(holder)
        if not keys:
            return {}
        sealed = await self.housekeeping.run(self.backend.seal_leases, keys, holder)
        out = {key: None if joined is None else dict(joined) for key, joined in sealed.items()}
        if self.peers and not any(any(joined.values()) for joined in out.values() if joined):
            self.quiet = True  # nobody joined while others were live: stop waiting for joiners
            if self.quieted is not None:
                self.quieted.set()
                self.quieted = None
        elif any(joined and any(joined.values()) for joined in out.values()):
            self.quiet = False
        return out

    async def release(self, holder: str) -> None:
        """Release ``holder``'s leases (shielded from cancellation), leaving a trace of who came
        by while others are live; a release that learns of late arrivals ends :attr:`quiet`."""
        keys = self._held.pop(holder, None)
        if keys:
            with anyio.CancelScope(shield=True):
                trace_s = self.run.join_window_s if self.peers else 0.0  # who came by, for the next holder
                try:
                    late = await self.housekeeping.run(
                        functools.partial(self.backend.release_leases, trace_s=trace_s), keys, holder
                    )
                except StoreError as exc:  # it expires after lease_ttl_s
                    logger.warning("cachesaver could not release %d lease(s) on %s: %s", len(keys), self.store.location, exc)
                    return
                if late:  # others asked the same after the seal: keep leases open again
                    self.quiet = False

    async def wait_for(self, holders: Mapping[str, str], deadline: float) -> list[str]:
        """Return, once at least one of the leases ``holders`` names (key -> holder) is gone
        (released, expired, or passed on), the keys whose leases are gone; at ``deadline``, [].
        A holder takes, renews and releases the leases of a pass together, so this polls one
        key per holder (one store step for them all, with a growing pause, 5 ms to 100 ms), and
        reads all of a holder's keys once that one is gone."""
        groups: dict[str, list[str]] = {}
        for key, holder in holders.items():
            groups.setdefault(holder, []).append(key)
        pause = 0.005
        while anyio.current_time() < deadline:
            probes = {keys[0]: holder for holder, keys in groups.items()}
            leases = await self.housekeeping.run(self.backend.leases, list(probes))
            moved = [holder for key, holder in probes.items() if _gone(leases.get(key), holder)]
            if moved:
                keys = [key for holder in moved for key in groups[holder]]
                leases = await self.housekeeping.run(self.backend.leases, keys) if len(keys) > len(moved) else leases
                gone = [key for key in keys if _gone(leases.get(key), holders[key])]
                if gone:
                    return gone
            expiry = min((lease.expires_in_s for lease in leases.values() if lease is not None), default=pause)
            await anyio.sleep(min(pause, max(deadline - anyio.current_time(), 0), expiry + 0.001))
            pause = min(pause * 1.5, 0.1)
        return []

    async def top_up(self, founds: Sequence[SharedFound], wants: Sequence[int]) -> list[Grant | BaseException]:
        """Claim up to ``wants`` more stored samples for each pending found (one claim)."""
        ops: dict[str, list[ClaimTopUp]] = {}
        for found, want in zip(founds, wants):
            ops.setdefault(found.key, []).append(ClaimTopUp(found.ticket, len(found.indices), want))
        if self.ref is None:  # joined by ensure_running before any lookup
            raise StoreError("cachesaver: an internal invariant failed (a shared run used before it was joined); please report this bug")
        granted = await self.housekeeping.run(
            self.backend.claim, self.ref, {k: KeyClaimOps(top_ups=tuple(v)) for k, v in ops.items()}, self.run.keep_s
        )
        out: list[Grant | BaseException] = []
        for found in founds:
            grants = granted.get(found.key)
            if isinstance(grants, BaseException) or grants is None:
                out.append(grants if grants is not None else StoreError("no answer to a top-up"))
                continue
            out.append(next(g for g in grants if g.ticket == found.ticket))
        return out
