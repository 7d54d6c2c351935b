"""Hands stored samples out to requests and stores new ones, never blocking the event loop.

The broker (the allocation logic: claims, replay records, lookup rounds) is the only code that
touches a run's :class:`~cachesaver.store.claims.RunClaims` and its store, which may be any
engine implementing :class:`~cachesaver.store.protocol.SampleStore`: it depends on that protocol
only. It has two lanes, each a background job that works in *rounds*, on a thread of its own
(a lookup round of an engine with ``view_async``: on the event loop, see below):

* the **lookup lane** serves every lookup queued while its previous round ran (reads only).
  With an engine that can view from the event loop without blocking it (``view_async``: one
  Redis server), a round runs on the event loop itself: its view is one exchange the loop
  waits for while other tasks run, with no thread hop (see :meth:`SampleBroker._loop_round`).
  In a burst, the server works while the loop does: once a round's view is back, the views of
  the next rounds (up to :attr:`SampleBroker.rounds_ahead`) are asked for before it chooses,
  each sent as soon as the one before it is back. Rounds are still planned, chosen and answered
  one at a time, in the order their lookups were queued: only the reads run ahead.
  A lookup that finds that lane idle with nothing queued (one caller at a time, as an agent
  calls) is served by a round its own task runs when it awaits its outcome, with the same
  choices, so it waits for no wake-up of the lane; lookups queued meanwhile wait for that
  round to end and are then served by the lane together;
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
  written to a recovery file (see :mod:`cachesaver.store.recovery`), and ``aclose`` raises
  :class:`~cachesaver.errors.UnstoredSamplesError` saying how many samples and where. The next
  broker opened on that store loads recovery files back before its first write round.
* **Inline I/O, within a bound.** A lookup that is the only work queued (no lookup round running
  or waiting) runs on the event loop itself:
  one ``view`` and at most one ``read`` of the store, tens of microseconds on a local disk,
  cheaper than a thread hop. That is the lone caller awaiting one request at a time. A burst
  is not: once one task's lookup ran inline, lookups of *other* tasks in the same pass of the
  event loop (a gather of many requests, many agents woken at once) queue for one lookup round
  on the lane's thread, which serves them together while the loop goes on
  (:attr:`SampleBroker.inline_lookups` counts those run inline). A commit of new samples runs
  inline only when both lanes are idle and nothing is kept unstored, and never waits for a
  lock: if another process holds it, the commit goes to the write lane, which may wait
  ``store_timeout_s``. Everything else runs on
  the lanes' threads. ``SampleBroker.inline_io = False`` turns inline I/O off, and so does an
  engine whose ``inline_io`` attribute is False (Redis: its calls cross the network).
* A request completed by new samples has its replay record committed with those samples
  (:meth:`SampleBroker.record_complete`); if it is abandoned after all, a later commit
  replaces the record by an empty one, and a retry that takes the same use again (which is
  always recorded anew) writes its record after that. Any other delivered request's record is
  committed with the next commit of new samples, or by the write lane at most
  :data:`RECORD_DELAY_S` later.
* An error reading one request's samples (a damaged entry) fails that request only.
* Within a lookup round, requests whose recorded samples are free are served before requests
  without a record, so the latter cannot take samples the former will ask back for.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Mapping, Sequence, TypeVar, cast

import anyio
import anyio.lowlevel

from .._runtime.jobs import BackgroundTasks, Outcome
from ..errors import PipelineClosedError, StoreError, StoreLockedError, UnstoredSamplesError
from ..typedefs import Request
from . import recovery
from .claims import RunClaims
from .protocol import (
    Append,
    KeyView,
    LoopViews,
    RecordId,
    RecordWrite,
    SampleStore,
    StoredSample,
    namespace_prefix,
    record_tag,
)
from .threads import StoreThread

__all__ = ["Found", "NewSamples", "SampleBroker", "Write"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_WAIT_S = 1.0
"""How long a write round with new samples waits for a lock held elsewhere before it keeps
them for later and lets their callers go (kept ones then wait up to ``store_timeout_s``)."""
RECORD_DELAY_S = 0.05
"""At most this long a delivered request's replay record waits to share the next commit."""
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 30.0


@dataclass(slots=True, eq=False)
class Found:
    """What a lookup found for one request: the stored samples it holds, how many are still
    missing, and (once fetched) the writes holding its new samples."""

    key: str
    use: int | None
    indices: Sequence[int]
    samples: list[StoredSample]
    missing: int
    namespace: str = ""
    request_id: Any = None
    n: int = 0
    record_due: bool = False
    writes: Sequence["Write"] = ()  # the writes of its new samples (a new list at each one)
    live: bool = True
    record: "_Record | None" = None  # queued with the samples that completed the request


class Write:
    """New samples of one key, waiting to be stored or stored at ``indices``.

    The first ``own`` of them belong to ``owner`` (the request they were fetched for), which
    claims them when they are committed, if it is still live; the rest are spare. ``request``
    is the key's canonical request (JSON text, or a function building it), which the store
    keeps if these are the key's first samples."""

    __slots__ = ("key", "samples", "owner", "own", "indices", "claimed", "request")

    def __init__(
        self, key: str, samples: Sequence[StoredSample], owner: Found | None = None, own: int = 0,
        request: str | Callable[[], str] | None = None,
    ) -> None:
        self.key = key
        self.request = request
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

    @property
    def ident(self) -> tuple[Any, ...]:
        """Which record this is (a later one with the same ident replaces it)."""
        rid = self.request_id
        return (self.key, self.namespace, type(rid).__name__, rid, self.n, self.use)

    def to_write(self, positions: dict[int, int]) -> RecordWrite:
        """The record for a commit whose appends are at ``positions`` (by id of the Write)."""
        parts: list[int | tuple[int, int]] = list(self.prior)
        for write, own in self.parts:
            if write.indices is not None:
                parts.extend(write.indices[:own])
            else:
                parts.append((positions[id(write)], own))
        return RecordWrite(self.key, RecordId(self.namespace, self.request_id, self.n, self.use), tuple(parts))


class _Lookup(Outcome[Found]):
    """A queued lookup; it is its own outcome."""

    __slots__ = ("request", "key", "found", "abandoned", "use", "tag", "reused", "drive", "owes")

    def __init__(self, request: Request, key: str) -> None:
        Outcome.__init__(self)  # not super(): no object made for the call, on every request
        self.request = request
        self.key = key
        self.found: Found | None = None
        self.abandoned = False
        self.use: int | None = None
        self.tag: str | None = None
        self.reused = False  # its use was given back by an earlier attempt
        # Set when the awaiting task is to run this lookup's round itself (see
        # SampleBroker.lookup); taken by the first get().
        self.drive: Callable[[_Lookup], Awaitable[None]] | None = None
        self.owes = False  # a use its caller's round took, to give back by the lane's next round

    def get(self) -> Coroutine[Any, Any, Found]:
        if self.drive is None:
            return Outcome.get(self)  # the usual case: no coroutine of its own
        return self._driven_get()

    async def _driven_get(self) -> Found:
        await self._driven_wait()
        return self.result()

    def wait(self) -> Awaitable[None]:
        if self.drive is None:
            return Outcome.wait(self)  # the usual case: the wait alone
        return self._driven_wait()

    async def _driven_wait(self) -> None:
        drive = self.drive  # taken only once this runs: the lane may have served it meanwhile
        if drive is not None:
            self.drive = None
            await drive(self)
        await Outcome.wait(self)

    @property
    def outcome(self) -> "_Lookup":
        return self


class _LoopRound:
    """A lookup round on the event loop, planned (its uses and tags taken); ``viewed`` is set
    once a view asked for ahead (see :meth:`SampleBroker._begin_ahead`) came back, with its
    ``views`` (None: the loop could not give them) or its ``error``."""

    __slots__ = ("lookups", "results", "live", "tags", "keys", "views", "error", "viewed")

    def __init__(
        self, lookups: list[_Lookup], results: list[Found | BaseException | None], live: list[int],
        tags: list[tuple[str, str]],
    ) -> None:
        self.lookups, self.results, self.live, self.tags = lookups, results, live, tags
        self.keys: list[str] = []
        self.views: Mapping[str, KeyView | StoreError] | None = None
        self.error: BaseException | None = None
        self.viewed: anyio.Event | None = None


class _Lane:
    """One background loop of the broker: its wake-up event and whether it runs."""

    __slots__ = ("wake", "running", "stopped", "ready", "busy")

    def __init__(self) -> None:
        self.wake: anyio.Event | None = None
        self.running = False
        self.stopped: anyio.Event | None = None
        self.ready = False  # started (recovery loaded) and not stopping
        self.busy = False  # a round is running (on the lane's thread, or on the event loop)

    @property
    def idle(self) -> bool:
        """Running, and no round in progress (work may be waiting to be picked up)."""
        return self.ready and not self.busy

    def kick(self) -> None:
        if self.wake is not None:
            self.wake.set()


class _ClaimOnCommit:
    """The commit hook of a write round: holds the claims lock from the moment the engine can
    write until the new samples are claimed for their requesters."""

    __slots__ = ("broker", "writes", "records")

    def __init__(self, broker: "SampleBroker", writes: list[Write], records: list[_Record]) -> None:
        self.broker, self.writes, self.records = broker, writes, records

    def before(self) -> None:
        self.broker._mutex.acquire()

    def after(self, starts: list[int]) -> None:
        claims = self.broker.claims
        for write, start in zip(self.writes, starts):
            write.indices = list(range(start, start + len(write.samples)))
            owner = write.owner
            if owner is not None and owner.live and write.own:
                claims.claim(owner.namespace, write.key, write.indices[: write.own])
                write.claimed = True
        for record in self.records:
            record.written = True

    def finish(self) -> None:
        self.broker._mutex.release()


def _abandoned_error() -> PipelineClosedError:
    """The error of a lookup whose request was abandoned (failed, or its caller left) before
    its round served it."""
    return PipelineClosedError("the request was abandoned before its lookup")


def _closed_during_round() -> PipelineClosedError:
    """The error of the lookups of a round cancelled (the pipeline closing) before it answered."""
    return PipelineClosedError("the pipeline was closed during a lookup round")


def _fail_round(lookups: Sequence[_Lookup], exc: BaseException) -> None:
    """Fail the lookups of a round that failed as a whole, and only them: an error is logged and
    given to each; a cancellation or the pipeline closing gives each a PipelineClosedError (the
    caller re-raises it)."""
    failure: BaseException
    if isinstance(exc, Exception):
        logger.error("cachesaver lookup round failed: %s", exc)
        failure = exc
    else:
        failure = _closed_during_round()
    for op in lookups:
        op.fail(failure)


def _serialisable(samples: Sequence[StoredSample]) -> bool:
    try:
        pickle.dumps(list(samples), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - any pickling failure means it can never be stored
        return False
    return True


class SampleBroker:
    """Serial owner of a run's claims and of all store I/O; see the module docstring.

    ``store`` is any :class:`~cachesaver.store.protocol.SampleStore`; the broker runs its calls
    on two threads of its own (lookups, commits) and releases each at close."""

    max_unstored_samples = 100_000
    """Most new samples kept in memory while the store refuses them (see the module docstring)."""

    inline_io = True
    """Whether a lone lookup or commit may run on the event loop (see the module docstring)."""

    rounds_ahead = 2
    """How many lookup rounds on the event loop may be planned, their views asked for, while
    the lane is still choosing an earlier one (0: none; a round's view is then asked for when
    the round before it has ended)."""

    def __init__(self, store: SampleStore, background: BackgroundTasks, max_round: int = 256) -> None:
        self.store = store
        if getattr(store, "inline_io", True) is False:  # a network engine: never on the event loop
            self.inline_io = False
        self.claims = RunClaims()
        self._background = background
        self._max_round = max_round
        self._mutex = threading.Lock()  # one lookup round or one commit's claims at a time
        self.read_thread = StoreThread("cachesaver-store-reads", finish=store.release_thread)
        # An engine that can view from the event loop without blocking it: rounds run there.
        view_async = getattr(store, "view_async", None)
        self._loop_views: LoopViews | None = view_async if callable(view_async) else None
        self.write_thread = StoreThread("cachesaver-store-writes", finish=store.release_thread)
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
        self._used_inline = False  # the event loop's thread used the store
        self._inline_task: Any = None  # (its loop or token, the task) that looked up inline in this pass
        self._driven: _Lookup | None = None  # a lookup whose caller runs its round (see lookup)
        self._loop_viewing = False  # the last view from the loop was given (so callers may drive)
        self._driven_done: anyio.Event | None = None  # set when that round ends (the lane waits)
        self._ahead: deque[_LoopRound] = deque()  # the next loop rounds, planned, their views asked for
        self._to_view: deque[_LoopRound] = deque()  # those of them whose view is not sent yet
        self._viewing_ahead = False  # a task sends their views, one after another
        self._records_since = 0.0  # when the oldest pending replay record was queued
        self._in_flight_kept: list[Write] = []  # kept samples a write round is trying again
        self.unstorable_samples = 0
        self.rounds = 0
        self.inline_lookups = 0  # lookup rounds of one request run on the event loop itself
        self.driven_lookups = 0  # lookup rounds of one request run by the task awaiting it
        self.ahead_views = 0  # loop rounds whose view was asked for before the previous one chose
        self.write_rounds = 0

    # -- what the pipeline can read -----------------------------------------------------------

    @property
    def unstored_samples(self) -> int:
        """New samples the store refused so far, kept in memory (those a write round is trying
        again included)."""
        kept = sum(len(w.samples) for w in self._unstored)
        return kept + sum(len(w.samples) for w in self._in_flight_kept if w.indices is None)

    @property
    def accepts_writes(self) -> bool:
        """False once the broker has closed."""
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
                f"{self.unstored_samples} samples are waiting to be stored in {self.store.location} "
                f"(the store refuses writes: {self._last_error}); no more are fetched until it "
                "recovers. Free disk space or fix permissions; they are stored then, or written "
                "to a recovery file at close"
            )

    # -- called on the event loop -----------------------------------------------------------

    def lookup(self, request: Request, key: str) -> _Lookup:
        """Queue a lookup; its outcome is delivered by the next lookup round (at once, when it
        is the only work and may run inline)."""
        op = _Lookup(request, key)
        lane = self._lookup_lane
        if (
            self.inline_io and self._driven is None and not self._lookups and not self._abandoned and lane.idle
            and self._inline_turn()
        ):
            if self._mutex.acquire(blocking=False):  # a commit is not claiming right now
                self._used_inline = True
                try:
                    (result,) = self._serve_round([op])
                except Exception as exc:  # noqa: BLE001 - a round that failed fails its op
                    result = exc
                finally:
                    self._mutex.release()
                self.rounds += 1
                self.inline_lookups += 1
                if isinstance(result, BaseException):
                    op.fail(result)
                else:
                    op.set(result)
                if self.claims.over_budget:
                    lane.kick()  # the lane moves claims to disk, off the loop
                return op
        elif (
            self._loop_viewing and self._driven is None and not self._lookups and not self._abandoned
            and lane.idle and not self.claims.over_budget
        ):
            op.drive = self._drive  # the caller's get() runs its round: no wake-up of the lane
            self._driven = op
            return op
        self._lookups.append(op)
        lane.kick()
        return op

    async def _drive(self, op: _Lookup) -> None:
        """The round of ``op`` alone, run by the task awaiting it, on the event loop; the lane
        waits for it to end before its next round. Anything but the plain case (lookups queued
        meanwhile, the claims lock held by a commit, claims on disk, a view the loop cannot
        give, samples to read) hands ``op`` to the lane's next round instead, holding nothing."""
        try:
            if not await self._drive_round(op):
                self._to_lane(op)
        finally:
            self._end_drive()

    def _to_lane(self, op: _Lookup) -> None:
        """Queue a lookup its caller does not serve for the lane's next round, first (it was
        looked up before every queued one); fail it when the lane has stopped."""
        if self._lookup_lane.running:
            self._lookups.insert(0, op)
        else:  # the lane crashed, never ran or was stopped: nothing would serve it
            op.fail(PipelineClosedError("the pipeline was closed before this request was served"))

    async def _drive_round(self, op: _Lookup) -> bool:
        """Serve ``op`` here, True; or False, having given back (or left for the lane's next
        round to give back) all it took. The claims lock is only ever taken without waiting, and
        the only wait is the view, so a cancellation of the caller (anyio's or asyncio's own)
        finds nothing half done: what the round took is given back by the lane's next round."""
        if self._lookups or self._abandoned or self.claims.spilled or self.claims.over_budget or self._stopping:
            return False
        if not self._mutex.acquire(blocking=False):
            return False
        result: Found | BaseException | None = None
        tag: str | None = None
        try:
            if op.abandoned:
                result = _abandoned_error()
            else:
                tag = self._plan_one(op)
        finally:
            self._mutex.release()
        if result is None:
            key = op.key
            try:
                views = await self._loop_views([key], [(key, tag)] if tag is not None else [])  # type: ignore[misc]
            except BaseException:
                self._owe(op)
                raise
            self._loop_viewing = views is not None
            if views is None or not self._mutex.acquire(blocking=False):
                self._owe(op)
                return False
            picked: Sequence[int] = ()
            try:
                view = views[key]
                if isinstance(view, BaseException):
                    self._give_back(op)
                    result = view
                else:
                    picked, due = self._pick_one(op, view)
                    along = view.samples
                    for index in picked:
                        if index not in along:  # samples to read: on the lane's thread
                            self.claims.release(op.request.namespace, key, picked)
                            self._undo_use(op)
                            return False
                    result = self._found_one(op, picked, [along[i] for i in picked], due)
            except Exception as exc:  # a crash (a bug): this request gets it, holding nothing
                self._give_back(op, picked)
                logger.error("cachesaver lookup round failed: %s", exc)
                result = exc
            finally:
                self._mutex.release()
        self.rounds += 1
        self.driven_lookups += 1
        if result is None:  # not possible: a round answers each of its lookups
            self._owe(op)
            result = StoreError("cachesaver: an internal invariant failed (a lookup round gave no answer); please report this bug")
        if isinstance(result, BaseException):
            op.fail(result)
        else:
            op.set(result)
        return True

    def _owe(self, op: _Lookup) -> None:
        """``op``'s round took its use and went no further: the lane's next round takes it back
        (before it plans again), so the lock is never waited for here."""
        op.owes = True
        self._abandoned.append(op)

    def _undo_use(self, op: _Lookup) -> None:
        """Take back the use ``op``'s round took, as if it had not been asked (under the claims
        lock): a round that serves it later takes the same use, reused only if it was."""
        request = op.request
        if op.use is not None:
            self.claims.undo_use(request.namespace, op.key, request.request_id, request.n, op.use, op.reused)

    def _end_drive(self) -> None:
        """The caller's round has ended: a lane waiting for it goes on; an idle lane is woken
        only for work (a lookup handed over or queued meanwhile, a use to give back, claims
        to move to disk), so a lone caller's hit wakes no other task."""
        self._driven = None
        done, self._driven_done = self._driven_done, None
        if done is not None:
            done.set()
        if self._has_lookup_work():
            self._lookup_lane.kick()

    def _hand_over_driven(self) -> None:
        """Give a driven lookup whose round has not started to the lane, which serves it as
        any queued lookup (its caller's ``get`` then waits for that round): when the lane has
        other work first, and at close, so no lookup waits for a caller that never awaits."""
        op = self._driven
        if op is not None and op.drive is not None:
            op.drive = None
            self._to_lane(op)
            self._end_drive()

    def _inline_turn(self) -> bool:
        """Whether the calling task may look up inline: no other task did in this pass of the
        event loop (see "Inline I/O" in the module docstring)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio)
            loop = None
        if loop is not None:
            task: tuple[object, object] = (loop, asyncio.current_task(loop))
        else:
            token: Any = anyio.lowlevel.current_token().native_token
            task = (token, anyio.get_current_task().id)
        if self._inline_task is None:
            self._inline_task = task  # with its loop: a loop closed mid-pass binds no later one
            if loop is not None:
                loop.call_soon(self._end_inline_pass)
            else:
                token.run_sync_soon(self._end_inline_pass)
            return True
        if self._inline_task[0] is not task[0]:  # another event loop: that pass is long over
            self._inline_task = None
            return self._inline_turn()
        return self._inline_task == task

    def _end_inline_pass(self) -> None:
        self._inline_task = None

    def store_writes(self, writes: Sequence[Write]) -> Outcome[None]:
        """Queue new samples; the outcome is set once a write round tried them (stored, or
        kept for a later round)."""
        if not self.accepts_writes:
            raise StoreError(
                f"{sum(len(w.samples) for w in writes)} new samples arrived after the cache at "
                f"{self.store.location} was closed; they could not be stored"
            )
        outcome: Outcome[None] = Outcome()
        lane = self._write_lane
        if (
            self.inline_io and lane.idle and self._lookup_lane.idle and not self._writes
            and not self._unstored and not self._unstored_records
        ):
            self._used_inline = True
            batch = list(writes)
            pending = {id(w) for w in batch}
            records = [r for r in self._records if self._ready(r, pending)]  # replay records due
            try:
                self._commit(batch, records, wait_s=0)  # never waits for another's lock
            except Exception:  # noqa: BLE001 - the write lane retries it, and may wait
                pass
            else:
                self.write_rounds += 1
                if records:
                    self._records = [r for r in self._records if not r.written]
                outcome.set(None)
                return outcome
        self._writes.extend(writes)
        self._write_outcomes.append(outcome)
        lane.kick()
        return outcome

    def store_new(self, items: Sequence[NewSamples]) -> Outcome[None]:
        """Queue samples with no owner (nothing claims them); see :meth:`store_writes`."""
        return self.store_writes([Write(item.key, item.samples) for item in items])

    def record_complete(self, found: Found) -> None:
        """The writes of ``found`` now hold every sample its request lacked: queue its replay
        record to be committed with them (call it before :meth:`store_writes` of the last
        write). Should the request not reach its caller after all, :meth:`abandon` retracts the
        record (a later commit replaces it by an empty one), so only delivered uses keep one."""
        if found.use is None or not found.live or found.record is not None:
            return
        found.record = _Record(
            found.namespace, found.key, found.request_id, found.n, found.use, found.indices,
            [(w, w.own) for w in found.writes],
        )
        self._records.append(found.record)

    def claimed(self, namespace: str, key: str, below: int) -> int:
        """How many of the indices below ``below`` of (namespace, key) this run has handed out.
        Blocks for the claims lock (a lookup round or a commit's claiming): call it off the
        event loop. For explanations, not the request path."""
        with self._mutex:
            entry = self.claims.claims(namespace, key)
            return sum(1 for i in range(below) if entry.is_claimed(i))

    def deliver(self, found: Found) -> None:
        """The request of ``found`` reached its caller: its use counts, its record is written."""
        if found.use is None or not found.live or found.record is not None:
            return
        if found.writes or found.record_due:
            parts = [(w, w.own) for w in found.writes]
            if not self._records:
                self._records_since = anyio.current_time()
            self._records.append(
                _Record(found.namespace, found.key, found.request_id, found.n, found.use, found.indices, parts)
            )
            self._write_lane.kick()  # committed within RECORD_DELAY_S, or with the next samples

    def abandon(self, op: _Lookup) -> None:
        """The request of ``op`` failed or its caller left: give back its use and samples."""
        if op.abandoned:
            return
        op.abandoned = True
        if op.drive is not None:  # its caller left before running its round: nothing was taken
            op.drive = None
            op.fail(_abandoned_error())
            self._end_drive()
        found = op.found
        if found is not None:
            found.live = False
            if found.record is not None and found.use is not None:
                # Its record went (or goes) out with its samples: replace it by an empty one.
                # A retry that takes this use again writes its own record after this one.
                if not self._records:
                    self._records_since = anyio.current_time()
                self._records.append(_Record(found.namespace, found.key, found.request_id, found.n, found.use, ()))
                self._write_lane.kick()
        self._abandoned.append(op)
        self._lookup_lane.kick()

    def started(self) -> bool:
        """Whether :meth:`ensure_running` has nothing to start now."""
        return self._lookup_lane.running and self._write_lane.running

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
        """Serve every queued lookup, store every queued sample, release the store's threads,
        then stop.

        Raises UnstoredSamplesError when samples are still unstored after a last attempt;
        they were written to a recovery file, which the error names."""
        self._stopping = True
        self._lookup_lane.ready = self._write_lane.ready = False  # no more inline work
        self._hand_over_driven()
        self._lookup_lane.kick()
        if self._lookup_lane.running and self._lookup_lane.stopped is not None:
            await self._lookup_lane.stopped.wait()
        self._write_lane.kick()
        if self._write_lane.running and self._write_lane.stopped is not None:
            await self._write_lane.stopped.wait()
        elif self._writes or self._records or self._unstored or self._unstored_records:
            await self._write_once(final=True)  # the write lane never ran, or crashed: one round now
        self._closed = True
        self.claims.close()  # deletes the claims' on-disk part, if a long run made one
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._release_threads)
        if self._used_inline:
            self.store.release_thread()  # the event loop's thread ran inline calls
        if self._unstored or self._unstored_records:
            await self._save_recovery()

    def _release_threads(self) -> None:
        try:
            self.read_thread.close()
        finally:
            self.write_thread.close()

    # -- the lookup lane ----------------------------------------------------------------------

    async def _serve_lookups(self) -> None:
        lane = self._lookup_lane
        lane.ready = False
        crash: BaseException | None = None
        try:
            if not self._recovered:  # before the first lookup, so recovered samples are seen
                self._recovered = True
                await self._load_recovery()
            lane.ready = True
            failed: list[Exception] = []
            async with anyio.create_task_group() as views_ahead:  # owns the views asked for ahead
                try:
                    await self._serve_lookup_rounds(views_ahead)
                except Exception as exc:  # raised as itself below, not in an exception group
                    failed.append(exc)
                    views_ahead.cancel_scope.cancel()
            if failed:
                raise failed[0]
        except Exception as exc:  # a crash (a bug): what was queued gets it; the owner re-raises
            crash = exc
            raise
        finally:
            lane.running = lane.ready = lane.busy = False
            # Non-empty only when the loop crashed or was cancelled (a forced close or a dying
            # event loop).
            error = crash if crash is not None else PipelineClosedError(
                "the pipeline was closed before this request was served"
            )
            self._to_view.clear()
            while self._ahead:  # planned, never answered: what they took comes back
                ahead = self._ahead.popleft()
                with anyio.CancelScope(shield=True):
                    try:
                        await self._locked(self._give_back_all, ahead.lookups, ahead.live)
                    except Exception as exc:  # noqa: BLE001 - its callers are failed all the same
                        logger.error("cachesaver could not give back a lookup round's uses: %s", exc)
                for op in ahead.lookups:
                    op.fail(error)
            for op in self._lookups:
                op.fail(error)
            self._lookups = []
            if lane.stopped is not None:
                lane.stopped.set()

    async def _serve_lookup_rounds(self, views_ahead: Any) -> None:
        """The lookup lane's rounds, until it stops; a view asked for ahead runs in ``views_ahead``."""
        lane = self._lookup_lane
        while True:
            if self._ahead:  # planned before the previous round chose: its view is on its way
                ahead = self._ahead.popleft()
                await self._settle_round(ahead.lookups, self._finish_loop_round(ahead, views_ahead))
                continue
            if self._driven is not None:
                if self._driven.drive is not None:  # its caller has not started: served here
                    self._hand_over_driven()
                else:  # a caller runs a round: the next one waits for it
                    if self._driven_done is None:
                        self._driven_done = anyio.Event()
                    await self._driven_done.wait()
                    continue
            if not self._has_lookup_work():
                if self._stopping:
                    return
                lane.wake = anyio.Event()
                await lane.wake.wait()
                lane.wake = None
                continue
            lookups = self._lookups[: self._max_round]
            del self._lookups[: self._max_round]
            abandoned, self._abandoned = self._abandoned, []
            if self._loop_views is not None:
                await self._settle_round(lookups, self._loop_round(lookups, abandoned, views_ahead))
            else:
                await self._settle_round(lookups, self.read_thread.run(self._lookup_round, lookups, abandoned))

    def _has_lookup_work(self) -> bool:
        """Whether the lookup lane has a round to run (a shared run's broker adds its own)."""
        return bool(self._lookups or self._abandoned or self.claims.over_budget)

    async def _settle_round(self, lookups: list[_Lookup], outcomes: Awaitable[list[Found | BaseException]]) -> None:
        """Await a round's ``outcomes`` and hand each to its lookup; a round that failed as a
        whole fails its lookups only."""
        self._lookup_lane.busy = True
        try:
            found = await outcomes
        except BaseException as exc:  # noqa: BLE001 - a round that failed as a whole fails its ops only
            _fail_round(lookups, exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._lookup_lane.busy = bool(self._ahead)  # rounds planned ahead keep it busy
        self.rounds += 1
        for op, result in zip(lookups, found):
            if isinstance(result, BaseException):
                op.fail(result)
            else:
                op.set(result)

    async def _loop_round(
        self, lookups: list[_Lookup], abandoned: list[_Lookup], views_ahead: Any = None
    ) -> list[Found | BaseException]:
        """:meth:`_lookup_round` on the event loop itself, for an engine with ``view_async``:
        its view is one exchange the loop waits for without blocking (other tasks run
        meanwhile), with no thread hop. The claims lock is never waited for on the loop: each
        of the three steps under it (the uses, the choices, the answers) runs on the read
        thread instead when a commit holds it, or when claims were moved to disk (their reads
        are disk I/O). The view falls back to the read thread when the engine cannot serve it
        from the loop, and so does a read of samples the view lacked. The choices are those of
        a round on the read thread. A round that fails or is cancelled between its steps gives
        back what it took (uses, claimed samples) and puts back the abandoned lookups it had
        not released yet. Given ``views_ahead`` (a task group), the next round is planned and
        its view asked for as soon as this one's view is back (:meth:`_begin_ahead`)."""
        return await self._finish_loop_round(await self._plan_loop_round(lookups, abandoned), views_ahead)

    async def _plan_loop_round(self, lookups: list[_Lookup], abandoned: list[_Lookup]) -> _LoopRound:
        """The first step of a loop round: the abandoned lookups released, then the uses and
        tags taken. On failure, the abandoned lookups are put back for the next round."""
        try:
            if self.claims.over_budget:  # between rounds, as on the read thread; disk I/O, so there
                await self.read_thread.run(self._with_mutex, self._trim)
            results, live, tags = await self._locked(self._plan_locked, lookups, abandoned)
        except BaseException:
            self._abandoned[:0] = abandoned  # released by the next round
            raise
        planned = _LoopRound(lookups, results, live, tags)
        if live:
            planned.keys = self._round_keys(lookups, live)
        return planned

    async def _finish_loop_round(self, planned: _LoopRound, views_ahead: Any = None) -> list[Found | BaseException]:
        """The rest of a planned loop round (its view, the choices, any read, the answers);
        failing or cancelled, it gives back what the round took."""
        lookups, results, live, keys, tags = planned.lookups, planned.results, planned.live, planned.keys, planned.tags
        if not live:
            return results  # type: ignore[return-value]
        chosen: dict[int, Sequence[int]] = {}
        chose = False
        try:
            views: Mapping[str, KeyView | StoreError] | None = None
            if planned.viewed is not None:  # asked for ahead
                await planned.viewed.wait()
                if planned.error is not None:
                    raise planned.error
                views = planned.views
                self._loop_viewing = views is not None
            elif self._loop_views is not None:
                views = await self._loop_views(keys, tags)
                self._loop_viewing = views is not None  # lone callers run their own rounds while so
            if views is None:
                views = await self.read_thread.run(self.store.view, keys, tags)
            elif views_ahead is not None:
                await self._begin_ahead(views_ahead, lookups)
            chosen, due = await self._locked(self._choose, lookups, results, live, views)
            chose = True
            order = self._unread(lookups, chosen, views)
            got: Mapping[str, Any] = {}
            if order:
                got = await self.read_thread.run(self.store.read, order)
            return await self._locked(self._answer, lookups, results, chosen, due, views, order, got)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if not chose:
                    await self._locked(self._give_back_all, lookups, live)
                else:
                    await self._locked(self._give_back_chosen, lookups, chosen)
            raise

    async def _begin_ahead(self, views_ahead: Any, current: list[_Lookup]) -> None:
        """Plan the next rounds of the queued lookups (up to :attr:`rounds_ahead`) and ask for
        their views now, one after another, in a task of ``views_ahead``: the server works on
        them while this round chooses and its callers go on, and each view is sent the moment
        the one before it is back. Rounds are still planned, chosen and answered in order, one
        at a time; only views run ahead, and they read the store, not the claims. Not while a
        caller runs its own round, or while claims are on disk or over their memory bound (a
        step on the read thread), nor while a lookup abandoned before now is in a round not
        answered yet (``current``, the round that asks, or one planned ahead): lookups queued
        after an abandon are planned after what it held was given back, as without rounds ahead."""
        started = False
        while self._lookups and len(self._ahead) < self.rounds_ahead and self._driven is None:
            if self.claims.spilled or self.claims.over_budget:
                break
            if self._abandoned and self._abandoned_unanswered(current):
                break
            lookups = self._lookups[: self._max_round]
            del self._lookups[: self._max_round]
            abandoned, self._abandoned = self._abandoned, []
            try:
                planned = await self._plan_loop_round(lookups, abandoned)
            except BaseException as exc:  # noqa: BLE001 - a round that failed as a whole fails its ops only
                _fail_round(lookups, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self._ahead.append(planned)
            self._lookup_lane.busy = True
            if planned.live:
                planned.viewed = anyio.Event()
                self._to_view.append(planned)
                self.ahead_views += 1
                if not self._viewing_ahead:
                    self._viewing_ahead = started = True
                    views_ahead.start_soon(self._view_ahead)
        if started:
            await anyio.lowlevel.checkpoint()  # the first view is sent before this round goes on

    def _abandoned_unanswered(self, current: list[_Lookup]) -> bool:
        """Whether a lookup abandoned before now is in a round not answered yet (``current``
        or one planned ahead): what that answer hands it is given back only after it."""
        unanswered = {id(op) for op in current}
        for ahead in self._ahead:
            unanswered.update(id(op) for op in ahead.lookups)
        return any(id(op) in unanswered for op in self._abandoned)

    async def _view_ahead(self) -> None:
        """The views of the rounds planned ahead, in order, each sent as soon as the previous
        one is back, for :meth:`_finish_loop_round` to take; until none is left to send."""
        try:
            while self._to_view:
                planned = self._to_view.popleft()
                try:
                    planned.views = await self._loop_views(planned.keys, planned.tags)  # type: ignore[misc]
                except Exception as exc:  # noqa: BLE001 - the round's lookups get it
                    planned.error = exc
                except BaseException:
                    planned.error = _closed_during_round()
                    raise
                finally:
                    planned.viewed.set()  # type: ignore[union-attr]
        finally:
            self._viewing_ahead = False

    def _plan_locked(
        self, lookups: list[_Lookup], abandoned: list[_Lookup]
    ) -> tuple[list[Found | BaseException | None], list[int], list[tuple[str, str]]]:
        """Abandons first, as in :meth:`_lookup_round`; then the uses and tags of the round."""
        for op in abandoned:
            self._release(op)
        return self._plan_round(lookups)

    def _trim(self) -> None:
        """Move claims beyond the memory bound to disk (under the claims lock, off the loop)."""
        try:
            self.claims.trim()
        except Exception as exc:  # noqa: BLE001 - nothing is lost, memory just stays higher
            logger.warning("cachesaver could not move per-run claims to disk: %s", exc)

    def _give_back_all(self, lookups: list[_Lookup], live: list[int]) -> None:
        for position in live:
            self._give_back(lookups[position])

    async def _locked(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` under the claims lock: here, when it is free and the claims are all in
        memory, else on the read thread (never waiting for the lock, nor reading claims from
        disk, on the event loop)."""
        if not self.claims.spilled and self._mutex.acquire(blocking=False):
            try:
                return func(*args)
            finally:
                self._mutex.release()
        return await self.read_thread.run(self._with_mutex, func, *args)

    def _with_mutex(self, func: Callable[..., T], *args: Any) -> T:
        with self._mutex:
            return func(*args)

    def _lookup_round(self, lookups: list[_Lookup], abandoned: list[_Lookup]) -> list[Found | BaseException]:
        with self._mutex:
            # Abandons first: a use given back is taken by the next lookup of its identity; an
            # abandoned lookup not served yet is skipped when its round reaches it.
            for op in abandoned:
                self._release(op)
            found = self._serve_round(lookups)
            self._trim()  # between rounds: bounded memory however long the run
        return found

    def _release(self, op: _Lookup) -> None:
        """Give back what an abandoned request held (called under the claims lock)."""
        found = op.found
        if found is None:
            if op.owes:  # its caller's round took its use and went no further
                op.owes = False
                self._undo_use(op)
            return  # not served yet: the round that reaches it skips it
        held = list(found.indices)
        for write in found.writes:
            if write.claimed and write.indices is not None:
                held.extend(write.indices[: write.own])
                write.claimed = False
        if held:
            self.claims.release(found.namespace, found.key, held)
        if found.use is not None:
            self.claims.release_use(found.namespace, found.key, found.request_id, found.n, found.use)

    def _give_back(self, op: _Lookup, chosen: Sequence[int] = ()) -> None:
        """Undo what serving ``op`` took this round (its use, the indices it chose)."""
        request = op.request
        if chosen:
            self.claims.release(request.namespace, op.key, chosen)
        if op.use is not None:
            self.claims.release_use(request.namespace, op.key, request.request_id, request.n, op.use)

    def _serve_round(self, lookups: list[_Lookup]) -> list[Found | BaseException]:
        """Serve ``lookups``: one view of their keys, then one read of the samples not in it."""
        if len(lookups) == 1:
            return [self._serve_one(lookups[0])]
        results, live, tags = self._plan_round(lookups)
        if not live:
            return results  # type: ignore[return-value]
        try:
            views = self.store.view(self._round_keys(lookups, live), tags)
        except BaseException:
            self._give_back_all(lookups, live)
            raise
        return self._serve_views(lookups, results, live, views)

    def _plan_round(
        self, lookups: list[_Lookup]
    ) -> tuple[list[Found | BaseException | None], list[int], list[tuple[str, str]]]:
        """Take the use and record tag of each live lookup: (results so far, the positions of
        the live ones, the (key, tag) pairs the view is asked for)."""
        claims = self.claims
        next_use = claims.next_use
        results: list[Found | BaseException | None] = [None] * len(lookups)
        live: list[int] = []  # positions (ints, so a round of hundreds allocates few objects)
        tags: list[tuple[str, str]] = []
        for position, op in enumerate(lookups):
            if op.abandoned:
                results[position] = _abandoned_error()
                continue
            request = op.request
            request_id = request.request_id
            if request_id is not None:
                namespace, n = request.namespace, request.n
                op.use = use = next_use(namespace, op.key, request_id, n)
                op.reused = claims.reused
                op.tag = tag = record_tag(namespace, request_id, n, use)
                tags.append((op.key, tag))
            live.append(position)
        return results, live, tags

    @staticmethod
    def _round_keys(lookups: list[_Lookup], live: list[int]) -> list[str]:
        """The keys of a round's live lookups, each once, in order."""
        return list(dict.fromkeys([lookups[p].key for p in live]))

    def _serve_views(
        self,
        lookups: list[_Lookup],
        results: list[Found | BaseException | None],
        live: list[int],
        views: Mapping[str, KeyView | StoreError],
    ) -> list[Found | BaseException]:
        """Serve the live lookups of a round from the views of their keys (under the claims
        lock), reading the samples the views lack."""
        chosen, due = self._choose(lookups, results, live, views)
        order = self._unread(lookups, chosen, views)
        got: Mapping[str, Any] = {}
        if order:
            try:
                got = self.store.read(order)
            except BaseException:
                self._give_back_chosen(lookups, chosen)
                raise
        return self._answer(lookups, results, chosen, due, views, order, got)

    def _choose(
        self,
        lookups: list[_Lookup],
        results: list[Found | BaseException | None],
        live: list[int],
        views: Mapping[str, KeyView | StoreError],
    ) -> tuple[dict[int, Sequence[int]], dict[int, bool]]:
        """Claim the indices each live lookup gets from its key's view (under the claims lock):
        (position -> its indices, position -> whether its record is due). A failed view gives
        its lookups' uses back and is their answer."""
        claims = self.claims
        chosen: dict[int, Sequence[int]] = {}  # position -> the indices it holds
        due: dict[int, bool] = {}  # position -> whether its record is due
        deferred: list[int] = []
        # Requests whose recorded samples are free are served first, so a request without a
        # record in the same round cannot take them.
        for position in live:
            op = lookups[position]
            view = views[op.key]
            if isinstance(view, BaseException):
                self._give_back(op)
                results[position] = view
                continue
            if op.tag is not None:
                recorded = view.found.get(op.tag)
                n = op.request.n
                if recorded is not None and len(recorded) >= n:
                    picked = recorded if len(recorded) == n else recorded[:n]  # a tuple: no copy
                    if claims.take(op.request.namespace, op.key, picked, view.count):
                        chosen[position], due[position] = picked, len(recorded) != n or op.reused
                        continue
            deferred.append(position)
        for position in deferred:
            op = lookups[position]
            view = cast(KeyView, views[op.key])  # a failed view was answered in the first pass
            request = op.request
            recorded = view.found.get(op.tag) if op.tag is not None else None
            reserved = self._reserved(view, request.namespace, op.tag) if view.records else ()
            choice = claims.choose(request.namespace, op.key, request.n, view.count, recorded, reserved)
            chosen[position] = choice
            due[position] = (
                op.use is not None and len(choice) == request.n and (op.reused or tuple(choice) != recorded)
            )
        return chosen, due

    @staticmethod
    def _unread(
        lookups: list[_Lookup], chosen: dict[int, Sequence[int]], views: Mapping[str, KeyView | StoreError]
    ) -> dict[str, list[int]]:
        """The samples the views did not carry, per key (sorted): one read for all of them."""
        wanted: dict[str, set[int]] = {}
        for position, picked in chosen.items():
            key = lookups[position].key
            along = views[key].samples  # type: ignore[union-attr]  # chosen: its view is a KeyView
            for index in picked:
                if index not in along:
                    wanted.setdefault(key, set()).add(index)
        return {key: sorted(indices) for key, indices in wanted.items()}

    def _give_back_chosen(self, lookups: list[_Lookup], chosen: dict[int, Sequence[int]]) -> None:
        for position, picked in chosen.items():
            self._give_back(lookups[position], picked)

    def _answer(
        self,
        lookups: list[_Lookup],
        results: list[Found | BaseException | None],
        chosen: dict[int, Sequence[int]],
        due: dict[int, bool],
        views: Mapping[str, KeyView | StoreError],
        order: dict[str, list[int]],
        got: Mapping[str, Any],
    ) -> list[Found | BaseException]:
        """The answers of a round once the samples the views lacked were read (``got``, for the
        keys of ``order``): a key whose read failed fails its lookups, which give back what they
        held (under the claims lock)."""
        read: dict[str, Any] = {}
        for key, indices in order.items():
            value = got.get(key)
            read[key] = value if isinstance(value, BaseException) else dict(zip(indices, value or ()))
        for position, picked in chosen.items():
            op = lookups[position]
            request = op.request
            along = views[op.key].samples  # type: ignore[union-attr]  # chosen: its view is a KeyView
            if read and op.key in read:
                fetched = read[op.key]
                if isinstance(fetched, BaseException):
                    self._give_back(op, picked)
                    results[position] = fetched
                    continue
                samples = [along[i] if i in along else fetched[i] for i in picked]
            elif len(picked) == 1:  # the commonest answer, without a comprehension's call
                samples = [along[picked[0]]]
            else:
                samples = [along[i] for i in picked]
            results[position] = op.found = Found(
                op.key, op.use, picked, samples, request.n - len(picked),
                request.namespace, request.request_id, request.n, due[position],
            )
        return results  # type: ignore[return-value]

    def _serve_one(self, op: _Lookup) -> Found | BaseException:
        """:meth:`_serve_round` for a round of one lookup, with the same choices."""
        if op.abandoned:
            return _abandoned_error()
        key = op.key
        tag = self._plan_one(op)
        try:
            view = self.store.view((key,), ((key, tag),) if tag is not None else ())[key]
        except BaseException:
            self._give_back(op)
            raise
        if isinstance(view, BaseException):
            self._give_back(op)
            return view
        picked, due = self._pick_one(op, view)
        along = view.samples
        missing = [i for i in picked if i not in along]
        if missing:
            try:
                got = self.store.read({key: sorted(missing)})[key]
            except BaseException:
                self._give_back(op, picked)
                raise
            if isinstance(got, BaseException):
                self._give_back(op, picked)
                return got
            fetched = dict(zip(sorted(missing), got))
            samples = [along[i] if i in along else fetched[i] for i in picked]
        else:
            samples = [along[i] for i in picked]
        return self._found_one(op, picked, samples, due)

    def _plan_one(self, op: _Lookup) -> str | None:
        """:meth:`_plan_round` for one live lookup (under the claims lock): take its use, and
        return its record tag (None: no request id)."""
        request = op.request
        request_id = request.request_id
        if request_id is None:
            return None
        namespace, n = request.namespace, request.n
        claims = self.claims
        op.use = use = claims.next_use(namespace, op.key, request_id, n)
        op.reused = claims.reused
        op.tag = tag = record_tag(namespace, request_id, n, use)
        return tag

    def _pick_one(self, op: _Lookup, view: KeyView) -> tuple[Sequence[int], bool]:
        """:meth:`_choose` for one lookup whose view was read (under the claims lock): the
        indices it claims and whether its record is due."""
        claims = self.claims
        request = op.request
        namespace, n, key, tag = request.namespace, request.n, op.key, op.tag
        recorded = view.found.get(tag) if tag is not None else None
        if recorded is not None and len(recorded) >= n:
            picked = recorded if len(recorded) == n else recorded[:n]  # a tuple: no copy
            if claims.take(namespace, key, picked, view.count):
                return picked, len(recorded) != n or op.reused
        reserved = self._reserved(view, namespace, tag) if view.records else ()
        choice = claims.choose(namespace, key, n, view.count, recorded, reserved)
        return choice, op.use is not None and len(choice) == n and (op.reused or tuple(choice) != recorded)

    @staticmethod
    def _found_one(op: _Lookup, picked: Sequence[int], samples: list[StoredSample], due: bool) -> Found:
        """The answer of one lookup that holds ``picked`` (its ``samples``, in that order)."""
        request = op.request
        n = request.n
        op.found = Found(op.key, op.use, picked, samples, n - len(picked), request.namespace, request.request_id, n, due)
        return op.found

    @staticmethod
    def _reserved(view: KeyView, namespace: str, own: str | None) -> set[int]:
        """Indices the consulted records give to other requests of ``namespace``."""
        prefix = namespace_prefix(namespace)
        out: set[int] = set()
        for tag, indices in view.records.items():
            if tag != own and tag.startswith(prefix):
                out.update(indices)
        return out

    # -- the write lane -----------------------------------------------------------------------

    async def _serve_writes(self) -> None:
        lane = self._write_lane
        pause = _RETRY_FIRST_S
        lane.ready = True
        try:
            while True:
                queued = bool(self._writes or self._records)
                if not queued and self._stopping and not self._lookup_lane.running:
                    if self._unstored or self._unstored_records:
                        await self._write_once(final=True)
                    return
                if not self._writes and self._records and self.inline_io and not self._stopping:
                    # Only replay records: give the next inline commit a moment to take them
                    # along (one transaction instead of two); the oldest waits RECORD_DELAY_S
                    # at most, however often the lane is woken meanwhile.
                    left = self._records_since + RECORD_DELAY_S - anyio.current_time()
                    if left > 0:
                        lane.wake = anyio.Event()
                        with anyio.move_on_after(left):
                            await lane.wake.wait()
                        lane.wake = None
                        continue
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
        except Exception as exc:  # a crash (a bug): waiters get it, samples are kept
            self._unstored.extend(w for w in self._writes if w not in self._unstored)
            self._unstored_records.extend(r for r in self._records if r not in self._unstored_records)
            self._writes, self._records = [], []
            self._last_error = exc
            outcomes, self._write_outcomes = self._write_outcomes, []
            for outcome in outcomes:
                outcome.fail(exc)
            raise
        finally:
            lane.running = lane.ready = False
            if lane.stopped is not None:
                lane.stopped.set()

    async def _write_once(self, final: bool = False) -> bool:
        """One write round over everything queued and everything kept; True if some failed."""
        writes = self._unstored + self._writes
        records = self._unstored_records + self._records
        outcomes = self._write_outcomes
        # Callers wait for a round with new samples: it waits FIRST_WAIT_S at most for a lock
        # held elsewhere, then keeps them and lets the callers go; kept ones retry with the
        # store's full bound.
        wait_s = FIRST_WAIT_S if outcomes and not final else None
        self._in_flight_kept = self._unstored
        self._writes, self._records, self._write_outcomes = [], [], []
        self._unstored, self._unstored_records = [], []
        self._write_lane.busy = True
        try:
            with anyio.CancelScope(shield=final):
                left, left_records, error = await self.write_thread.run(self._write_round, writes, records, wait_s)
        except BaseException:
            # Cancelled (a forced close): keep everything for the recovery file.
            self._unstored = [w for w in writes if w.indices is None]
            self._unstored_records = [r for r in records if not r.written]
            for outcome in outcomes:
                outcome.set(None)
            raise
        finally:
            self._write_lane.busy = False
            self._in_flight_kept = []
        self.write_rounds += 1
        self._unstored, self._unstored_records = left, left_records
        if error is not None:
            if self._last_error is None:
                logger.error(
                    "cachesaver could not store %d new sample(s) and %d replay record(s) in %s; "
                    "they are kept in memory and retried: %s",
                    sum(len(w.samples) for w in left), len(left_records), self.store.location, error,
                )
            self._last_error = error
        elif self._last_error is not None and not left and not left_records:
            logger.warning("cachesaver: the store at %s accepts writes again; nothing was lost", self.store.location)
            self._last_error = None
        for outcome in outcomes:
            outcome.set(None)
        return error is not None

    def _write_round(
        self, writes: list[Write], records: list[_Record], wait_s: float | None = None
    ) -> tuple[list[Write], list[_Record], BaseException | None]:
        """Store ``writes`` and the ready ``records``; what is left, and the error if any.

        A lock held elsewhere keeps everything for later at once; any other failure is retried
        item by item, so one bad sample costs only its own storage."""
        try:
            pending = {id(w) for w in writes}
            self._commit(writes, [r for r in records if self._ready(r, pending)], wait_s)
            return [], [r for r in records if not r.written], None
        except StoreLockedError as exc:
            return writes, [r for r in records if not r.written], exc
        except Exception as exc:  # noqa: BLE001 - retried one by one, so one bad item costs itself
            error: BaseException = exc
        left: list[Write] = []
        for write in writes:
            try:
                self._commit([write], [], wait_s)
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
        held: set[tuple[Any, ...]] = set()  # records held back: later ones of theirs wait too
        for record in records:
            ident = record.ident
            if not record.ready() or ident in held:
                left_records.append(record)
                held.add(ident)
                continue
            try:
                self._commit([], [record], wait_s)
            except Exception as exc:  # noqa: BLE001
                error = exc
                left_records.append(record)
                held.add(ident)
        return left, left_records, (error if left or left_records else None)

    @staticmethod
    def _ready(record: _Record, pending: set[int]) -> bool:
        """Whether ``record`` can be written together with the writes whose ids are ``pending``."""
        return all(w.indices is not None or id(w) in pending for w, _ in record.parts)

    def _commit(self, writes: list[Write], records: list[_Record], wait_s: float | None = None) -> None:
        """Append ``writes`` and store ``records`` in one commit, claiming what is owned."""
        positions = {id(w): i for i, w in enumerate(writes)}
        appends = [Append(w.key, tuple(w.samples), w.request) for w in writes]
        record_writes = [r.to_write(positions) for r in records]
        if len(record_writes) > 1:  # a record and its later replacement: only the last one
            last = {(w.key, w.record.tag): w for w in record_writes}
            if len(last) < len(record_writes):
                record_writes = list(last.values())
        self.store.commit(appends, record_writes, hook=_ClaimOnCommit(self, writes, records), wait_s=wait_s)

    # -- recovery files -----------------------------------------------------------------------

    async def _load_recovery(self) -> None:
        try:
            loaded = await self.write_thread.run(recovery.load_into, self.store)
        except Exception as exc:  # noqa: BLE001 - the file stays, the next pipeline tries again
            logger.error("cachesaver could not load a recovery file into %s: %s", self.store.location, exc)
            return
        if loaded:
            logger.warning(
                "cachesaver stored %d sample(s) and %d replay record(s) from recovery files into %s",
                loaded[0], loaded[1], self.store.location,
            )

    async def _save_recovery(self) -> None:
        writes, records = self._unstored, self._unstored_records
        count = sum(len(w.samples) for w in writes)
        with anyio.CancelScope(shield=True):
            try:
                path = await anyio.to_thread.run_sync(recovery.save, self.store.location, writes, records)
            except Exception as exc:  # noqa: BLE001 - reported in the error below
                raise UnstoredSamplesError(
                    f"{count} sample(s) and {len(records)} replay record(s) could not be stored in "
                    f"{self.store.location} ({self._last_error}) nor saved to a recovery file "
                    f"({exc}); they are lost to the cache",
                    unstored=count, path=None,
                ) from exc
        raise UnstoredSamplesError(
            f"{count} sample(s) and {len(records)} replay record(s) could not be stored in "
            f"{self.store.location} ({self._last_error}); they were saved to {path}, and the next "
            "pipeline opened on this cache stores them",
            unstored=count, path=path,
        )  # not chained with "from": that would hide an error of the ``async with`` body
