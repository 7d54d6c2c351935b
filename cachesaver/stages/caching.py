"""The namespace-aware, list-valued cache stage.

``AsyncCacher(model, cache)`` serves each request from the samples stored for its key and asks
``model`` only for what is missing. Guarantees (a *run* is one cacher object, from
construction to close):

* **Fresh inside a namespace**: within a run and a namespace no stored sample is handed out
  twice, whatever the concurrency, batch size or duplicates; the same request_id used twice
  gets fresh samples the second time.
* **Exact replay**: a new run on the same store, issuing the same requests with the same
  request_ids in the same namespace, gets the same samples per request, all ``cached``, with
  no model call, whatever the order in which requests arrive or finish.
* **Reuse across namespaces**: another namespace gets the stored samples, in stored order,
  with no model call while it asks no more of a key than is stored. So do requests whose
  request_id is None or differs between runs.
* **Fetch only what is missing**: with 1 of 3 samples stored, the model is asked for 2. A
  model that returns fewer than asked has its samples stored and is asked for the rest (up to
  ``max_refetch`` more times); if it still falls short, that request fails with
  :class:`~cachesaver.errors.IncompleteResponseError`. Extra samples are stored for later.
* **Nothing paid for is lost**: samples the model returned are stored even if the caller was
  cancelled, a sibling request failed, or the pipeline is closing. Failures are never stored.
* **One model per sample**: samples are stored under the request's key and the model's
  identity (:func:`~cachesaver.keys.model_identity`, read once at construction: ``model_id=``,
  else the innermost model's ``cache_identity``, ``model`` or ``model_name``), so a cache never
  serves samples of one model to another. ``model_id=None`` adds no identity.
* ``Response.cached[i]`` is True for samples taken from storage; ``duplicated`` flags come from
  the stage below (False when it sets none); ``usage`` is the stored usage of each sample.
* **Readable entries**: a key's first samples are stored with its canonical request
  (:func:`~cachesaver.keys.canonical_request`), computed on a miss only.
* **Modes** (``mode=``, default ``$CACHESAVER_MODE``, else ``"record"``; see
  :mod:`cachesaver.modes`): ``"replay"`` never calls the model and fails a miss with
  :class:`~cachesaver.errors.CacheMissError`, whose message is :meth:`AsyncCacher.explain_miss`'s;
  ``"refresh"`` ignores stored samples and stores new ones after them; ``"bypass"`` calls the
  model and stores nothing. A model with ``replay_only = True``
  (:class:`~cachesaver.models.replay_only.ReplayOnlyModel`) makes the mode ``"replay"``.

``run_id`` (a str or a :class:`~cachesaver.store.shared_runs.SharedRun`) makes the cacher a
worker of that shared run: every cacher on the store with the same run id is one run, in one
process or many, and identical misses in flight in two workers cost one upstream call (see
:mod:`cachesaver.store.shared_runs` and :mod:`cachesaver.stages.single_flight`). None (the
default): the cacher is its own run.

``cache`` is a directory path (opened with eviction disabled and closed on ``aclose()``), a
``diskcache.Cache`` (or ``FanoutCache``), or any engine implementing
:class:`~cachesaver.store.protocol.SampleStore`; see :func:`~cachesaver.store.open_store`.
A store or Cache you pass is never closed. ``store_timeout_s`` (default 30) bounds a write's
wait for the store's lock held by another process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._runtime.collector import PassCollector
from ..artifacts.explain import Catalog, MissExplanation, explain, load_catalog, miss_message
from ..errors import CacheMissError, ConfigurationError, IncompleteResponseError, InvalidRequestError, StoreError
from ..keys import DERIVE, canonical_request, canonical_request_text, model_identity, request_key, store_key, with_n
from ..modes import Mode, resolve_mode
from ..store import CacheSpec, open_store
from ..store.allocation import Found, SampleBroker, Write
from ..store.protocol import SampleStore, StoredSample
from ..store.threads import StoreThread
from ..typedefs import Model, Request, Response
from .base import Settled, Stage, call_model

if TYPE_CHECKING:
    from ..store.shared_runs import SharedRun

__all__ = ["AsyncCacher"]

logger = logging.getLogger(__name__)


class _Pending:
    """A request whose stored samples are known and whose missing ones are being fetched.

    ``extra``: samples to ask the model for beyond ``needed``, stored unclaimed (set by
    single-flight for the requests of other workers that joined this call)."""

    __slots__ = ("request", "found", "samples", "duplicated", "needed", "extra")

    def __init__(self, request: Request, found: Found) -> None:
        self.request = request
        self.found = found
        self.samples: list[StoredSample] = []
        self.duplicated: list[bool] = []
        self.needed = found.missing
        self.extra = 0


def _response(found: Found, new: Sequence[StoredSample] = (), duplicated: Sequence[bool] = ()) -> Response:
    if not new and len(found.samples) == 1:  # the commonest answer: one stored sample
        data, used = found.samples[0]
        return Response._trusted([data], [True], [False], None if used is None else [used])
    samples = found.samples + list(new) if new else found.samples
    usage = [u for _, u in samples]
    stored = len(found.samples)
    return Response._trusted(
        [d for d, _ in samples],
        [True] * stored + [False] * len(new),
        [False] * stored + list(duplicated),
        usage if any(u is not None for u in usage) else None,
    )


class _InFlight:
    """A key being fetched: for which namespaces, and an event set when the fetch has ended
    (made by the first waiter: most fetches have none)."""

    __slots__ = ("namespaces", "samples", "_ended", "done")

    def __init__(self) -> None:
        self.namespaces: set[str] = set()
        self.samples = 0  # how many new samples are asked for it
        self._ended: anyio.Event | None = None
        self.done = False

    async def wait(self) -> None:
        """Return once the fetch has ended."""
        if self.done:
            return
        if self._ended is None:
            self._ended = anyio.Event()
        await self._ended.wait()

    def end(self) -> None:
        self.done = True
        if self._ended is not None:
            self._ended.set()


class AsyncCacher(Stage):
    """Serves requests from a sample store, fetching only missing samples from ``model``."""

    def __init__(
        self, model: Model, cache: CacheSpec, *, max_refetch: int = 2, model_id: Any = DERIVE,
        store_timeout_s: float | None = None, mode: str | None = None, run_id: "str | SharedRun | None" = None,
    ) -> None:
        super().__init__(model)
        self._identity = model_identity(model, model_id)
        if cache is None:
            raise ConfigurationError(
                "AsyncCacher needs a cache: a directory path, a diskcache.Cache or a SampleStore engine"
            )
        if type(max_refetch) is not int or max_refetch < 0:
            raise ConfigurationError(f"max_refetch must be an int >= 0, got {max_refetch!r}")
        inner: Any = model
        while isinstance(inner, Stage):
            inner = inner.model
        self._replay_only = bool(getattr(inner, "replay_only", False))
        self.mode: Mode = _mode_for(mode, self._replay_only, type(inner).__name__)
        """What this stage does with stored samples and the model (see :mod:`cachesaver.modes`)."""
        self.store: SampleStore
        self.store, self._owns_store = open_store(cache, store_timeout_s=store_timeout_s)
        self.max_refetch = max_refetch
        # Replay records are written unless the store cannot take them (a read-only cache
        # replays without leaving any behind).
        self._records = self.store.writable
        self._catalog: Catalog | None = None  # stored requests, loaded on the first replay miss
        self._searched_misses = 0
        # Explanations read the store on a thread of their own (never holding up lookups),
        # released at close like the broker's.
        self._explain_thread = StoreThread("cachesaver-explain", finish=self.store.release_thread)
        self.single_flight: Any = None
        """With ``run_id``: this worker's :class:`~cachesaver.stages.single_flight.SingleFlight`."""
        if run_id is None:
            self._broker = SampleBroker(self.store, self._background)
            fetch = self._fetch
        else:  # a worker of a shared run: claims in the store, single-flight leases
            from .single_flight import SingleFlight

            try:
                self.single_flight = SingleFlight.for_cacher(self, run_id)
            except BaseException:
                if self._owns_store:
                    self.store.close()
                raise
            self._broker = self.single_flight.broker
            fetch = self.single_flight.fetch
        self._fetches: PassCollector[_Pending] = PassCollector(self, fetch)
        # key -> the fetch in flight for it: its namespaces and an event set once it has ended
        self._in_flight: dict[str, _InFlight] = {}
        # Answers a sync model returns after their call was cancelled (a close's deadline) are
        # stored through this cacher: the stages below hand them here (see _store_late). An
        # inner cacher keeps its own chain.
        self._late_answers = self._store_late
        stage: Any = self.model
        while isinstance(stage, Stage) and not isinstance(stage, AsyncCacher):
            stage._late_answers = self._store_late
            stage = stage.model

    @property
    def cache(self) -> Any:
        """What holds the samples: the ``diskcache.Cache`` for a diskcache store, else the store."""
        return getattr(self.store, "cache", self.store)

    @property
    def model_identity(self) -> str | None:
        """The model identity in this cacher's keys (None: keys are the requests' own)."""
        return self._identity

    @property
    def run(self) -> "SharedRun | None":
        """The :class:`~cachesaver.store.shared_runs.SharedRun` this cacher is a worker of, or
        None (its own run)."""
        return None if self.single_flight is None else self.single_flight.broker.run

    def _key(self, request: Request) -> str:
        """The store key of ``request``: every key this cacher uses comes from here."""
        identity = self._identity
        return request_key(request) if identity is None else store_key(request, identity)

    def _request_text(self, pending: _Pending) -> Callable[[], str] | None:
        """The canonical request to store with new samples when they may be the key's first
        (the lookup gave the request none stored), as a function: the store calls it only if
        they are, on its write thread, so a key's request is built once in its life."""
        if pending.found.samples or pending.found.writes:
            return None
        return functools.partial(canonical_request_text, pending.request, self._identity)

    async def explain_miss(self, request: Request) -> MissExplanation:
        """Why ``request`` would not be served from the cache now (or that it would be): what
        is stored under its key, how much of it this run already handed out in its namespace,
        whether another namespace has a replay record of its request_id, or, when nothing is
        stored under the key, the nearest stored requests and the fields that differ. ``str()``
        of the result is a sentence; it reads the store on a thread of this stage and changes
        nothing. Raises InvalidRequestError for a request with no key, StoreError once the
        stage is closed."""
        key = self._key(request)
        doc = canonical_request(request, self._identity)

        def run() -> MissExplanation:
            count = self.store.view([key])[key]
            stored = count.count if not isinstance(count, BaseException) else 0
            handed = self._broker.claimed(request.namespace, key, stored) if stored else 0
            return explain(
                self.store, doc, namespace=request.namespace, request_id=request.request_id, n=request.n,
                handed_out=handed, key=key,
            )

        return await self._explain_thread.run(run)

    async def _explain_misses(self, pending: Sequence[_Pending]) -> list[MissExplanation | None]:
        """The explanation of each replay miss of ``pending`` (None where the store could not
        say): the stored requests are loaded once per run, searched for the first
        :data:`SEARCHED_MISSES` misses whose key holds nothing."""

        def run() -> list[MissExplanation | None]:
            out: list[MissExplanation | None] = []
            for entry in pending:
                request, found = entry.request, entry.found
                try:
                    view = self.store.view([found.key])[found.key]
                    stored = 0 if isinstance(view, BaseException) else view.count
                    handed = self._broker.claimed(request.namespace, found.key, stored) - len(found.samples) if stored else 0
                    search = stored == 0 and self._searched_misses < SEARCHED_MISSES
                    if search:
                        self._searched_misses += 1
                        if self._catalog is None:
                            self._catalog = load_catalog(self.store)
                    out.append(
                        explain(
                            self.store, canonical_request(request, self._identity), namespace=request.namespace,
                            request_id=request.request_id, n=request.n, handed_out=handed, key=found.key,
                            catalog=self._catalog, search=search,
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - the miss is reported without it
                    logger.warning("cachesaver could not explain a cache miss: %s", exc)
                    out.append(None)
            return out

        return await self._explain_thread.run(run)

    async def _replay_misses(self, pending: list[_Pending]) -> list[Settled]:
        """Replay mode: each request of ``pending`` fails with a CacheMissError that explains
        it; the model is not called."""
        why = await self._explain_misses(pending)
        return [
            CacheMissError(miss_message(p.request, p.found.key, p.needed, reason))
            for p, reason in zip(pending, why)
        ]

    async def settle_one(self, request: Request) -> Settled:
        """The Response (or exception) for one request: :meth:`settle` without the list.

        A request that misses while its key is being fetched for another namespace, at least as
        many samples as it asks, waits for that fetch to end and is looked up again (its samples
        are then stored, and free in this namespace), so identical prompts of concurrent agents
        in different namespaces cost one model call. A cache hit never waits."""
        if self.mode == "bypass":
            return (await self._bypass([request]))[0]
        try:
            key = self._key(request)
        except InvalidRequestError as exc:
            return exc
        broker = self._broker
        op = broker.lookup(request, key)
        self._enter()
        try:
            if not broker.started():
                await broker.ensure_running()
            try:
                await op.wait()
                found = op.result()
            except Exception as exc:  # noqa: BLE001 - that request's own failure
                return exc
            if self.mode == "refresh":
                _ignore_stored(found)
            flight = self._in_flight.get(key) if found.missing and self.mode == "record" else None
            if flight is not None and request.namespace not in flight.namespaces and request.n <= flight.samples:
                # A miss (a hit never waits): give back what the lookup took, wait for that
                # fetch to end, and look up again, now with its samples stored.
                broker.abandon(op)
                await flight.wait()
                op = broker.lookup(request, key)
                try:
                    found = await op.get()
                except Exception as exc:  # noqa: BLE001 - that request's own failure
                    return exc
            if found.missing == 0:
                if self._records:
                    broker.deliver(found)
                return _response(found)
            (fetched,) = await self._fetches.submit([_Pending(request, found)])
            result = await fetched.get()
            if isinstance(result, Response):
                broker.deliver(found)
            else:
                broker.abandon(op)
            return result
        except BaseException:
            broker.abandon(op)  # cancelled: this attempt does not count as a use
            raise
        finally:
            self._exit()

    async def _settle(self, requests: Sequence[Request]) -> list[Settled]:
        if self.mode == "bypass":
            return await self._bypass(requests)
        results: list[Settled] = [None] * len(requests)  # type: ignore[list-item]
        waiting: list[tuple[int, Request, Any]] = []
        broker = self._broker
        for i, request in enumerate(requests):
            try:
                key = self._key(request)
            except InvalidRequestError as exc:
                results[i] = exc
                continue
            waiting.append((i, request, broker.lookup(request, key)))
        if not waiting:
            return results
        try:
            await broker.ensure_running()
            misses: list[tuple[int, _Pending]] = []
            for i, request, op in waiting:
                try:
                    found = await op.get()
                except Exception as exc:  # noqa: BLE001 - that request's own failure
                    results[i] = exc
                    continue
                if self.mode == "refresh":
                    _ignore_stored(found)
                if found.missing == 0:
                    results[i] = _response(found)
                else:
                    misses.append((i, _Pending(request, found)))
            if misses:
                outcomes = await self._fetches.submit([p for _, p in misses])
                for (i, _), outcome in zip(misses, outcomes):
                    results[i] = await outcome.get()
        except BaseException:
            for _, _, op in waiting:
                broker.abandon(op)  # cancelled: no attempt of this batch counts as a use
            raise
        for i, _, op in waiting:
            if isinstance(results[i], Response) and self._records:
                broker.deliver(op.found)
            else:
                broker.abandon(op)
        return results

    async def _fetch(self, pending: list[_Pending]) -> list[Settled]:
        """Fetch and store the missing samples of ``pending``; runs detached from the callers.

        Every sample the model returns is stored (or kept for a later write, see
        :mod:`~cachesaver.store.allocation`), the first ones a request asked for claimed for it.
        A request the model answers short is asked for the rest, up to ``max_refetch`` more
        times; an empty or short answer counts as an attempt like any other."""
        broker = self._broker
        storing = self.mode != "bypass"
        if self.mode == "replay" and not self._replay_only:
            return await self._replay_misses(pending)
        if storing and not self.store.writable and not self._replay_only:
            return [
                StoreError(
                    f"the cache at {self.store.location} is read-only and holds "
                    f"{p.request.n - p.needed} of the {p.request.n} samples this request needs; a "
                    "replay from it must ask what was recorded. Copy it to a writable directory to "
                    "add samples"
                )
                for p in pending
            ]
        try:
            if storing:
                broker.check_room()
        except StoreError as exc:
            return [exc for _ in pending]
        flights = self._fly(pending) if storing else []  # bypass stores nothing to wait for
        try:
            return await self._fetch_all(pending)
        finally:
            for key, flight in flights:
                flight.end()
                if self._in_flight.get(key) is flight:
                    del self._in_flight[key]

    def _fly(self, pending: list[_Pending]) -> list[tuple[str, "_InFlight"]]:
        """Mark the keys of ``pending`` as being fetched (for :meth:`settle_one`)."""
        flights: list[tuple[str, _InFlight]] = []
        for entry in pending:
            key = entry.found.key
            flight = self._in_flight.get(key)
            if flight is None:
                flight = self._in_flight[key] = _InFlight()
                flights.append((key, flight))
            flight.namespaces.add(entry.request.namespace)
            flight.samples += entry.needed
        return flights

    async def _fetch_all(self, pending: list[_Pending]) -> list[Settled]:
        outcomes: list[Settled | None] = [None] * len(pending)
        broker = self._broker
        storing = self.mode != "bypass"
        todo = list(range(len(pending)))
        attempts = 0
        for attempt in range(self.max_refetch + 1):
            attempts = attempt + 1
            asks = [with_n(pending[j].request, pending[j].needed + pending[j].extra) for j in todo]
            answers = await call_model(self.model, asks, late=self._late_answers)
            writes: list[Write] = []
            for j, answer in zip(todo, answers):
                entry = pending[j]
                response: Settled | None = answer
                if isinstance(answer, IncompleteResponseError):
                    response = getattr(answer, "response", None)
                    if response is None:
                        continue  # nothing came back: counts as a short answer
                if not isinstance(response, Response):
                    outcomes[j] = answer
                    continue
                if not response.data:
                    continue
                usage = response.usage
                new = list(zip(response.data, usage)) if usage else [(d, None) for d in response.data]
                flags = response.duplicated or [False] * len(new)
                take = min(entry.needed, len(new))
                entry.extra -= min(entry.extra, len(new) - take)  # the spare ones are stored below
                entry.samples.extend(new[:take])
                entry.duplicated.extend(bool(f) for f in flags[:take])
                if storing:
                    write = Write(entry.found.key, new, entry.found, take, self._request_text(entry))
                    entry.found.writes = [*entry.found.writes, write]
                    writes.append(write)
                entry.needed -= take
                if entry.needed == 0:
                    broker.record_complete(entry.found)  # committed with these samples
            if writes:
                await broker.ensure_running()
                await broker.store_writes(writes).get()
            todo = [j for j in todo if outcomes[j] is None and pending[j].needed > 0]
            if not todo:
                break
        if self._replay_only:
            misses = [j for j, outcome in enumerate(outcomes) if isinstance(outcome, CacheMissError)]
            if misses:
                why = await self._explain_misses([pending[j] for j in misses])
                for j, reason in zip(misses, why):
                    outcomes[j] = CacheMissError(f"{outcomes[j]}; {reason}" if reason is not None else str(outcomes[j]))
        for j, entry in enumerate(pending):
            if outcomes[j] is not None:
                continue
            if entry.needed > 0:
                n = entry.request.n
                have = n - entry.needed
                stored = len(entry.found.samples)
                outcomes[j] = IncompleteResponseError(
                    f"got {have} of {n} samples ({stored} from the cache, {have - stored} from the "
                    f"model in {attempts} attempt(s)); the new ones were stored, the request failed",
                    request_id=entry.request.request_id,
                )
            else:
                outcomes[j] = _response(entry.found, entry.samples, entry.duplicated)
        return outcomes  # type: ignore[return-value]

    @property
    def unstored_samples(self) -> int:
        """Samples the model returned that the store has not accepted yet (kept in memory and
        retried; see :mod:`~cachesaver.store.allocation`)."""
        return self._broker.unstored_samples

    def _store_late(self, requests: Sequence[Request], answers: Sequence[Settled]) -> None:
        """Queue for storage the samples of answers that arrived after their call was cancelled.

        Called on the event loop by a stage below (a sync model's worker thread outlived a
        close's deadline). The samples are stored as spare ones, with no claim and no replay
        record: their callers got PipelineClosedError, and later requests get them as cache
        hits. Failures are never stored; a short answer's samples are. The store is queued, not
        awaited; closing flushes it (``_shutdown`` stops the broker only after the stages below
        have ended). If the broker has already stopped, this logs at ERROR and raises
        :class:`~cachesaver.errors.StoreError`: those samples are not stored.
        """
        if self.mode == "bypass":
            return  # bypass stores nothing
        writes: list[Write] = []
        for request, answer in zip(requests, answers):
            response = getattr(answer, "response", None) if isinstance(answer, IncompleteResponseError) else answer
            if not isinstance(response, Response) or not response.data:
                continue
            try:
                key = self._key(request)
            except InvalidRequestError:
                continue
            usage = response.usage
            samples = list(zip(response.data, usage)) if usage else [(d, None) for d in response.data]
            writes.append(Write(key, samples, request=functools.partial(canonical_request_text, request, self._identity)))
        if not writes:
            return
        if not self._broker.accepts_writes:
            count = sum(len(write.samples) for write in writes)
            logger.error(
                "cachesaver could not store %d sample(s) the model returned after close: the cache "
                "was already closed", count,
            )
            raise StoreError(
                f"{count} sample(s) the model returned after the pipeline closed were not stored: "
                "the cache was already closed; close with a longer timeout_s to keep them"
            )
        self._broker.store_writes(writes)

    async def _bypass(self, requests: Sequence[Request]) -> list[Settled]:
        """Bypass mode: every request goes to the model (through the stages below), nothing
        is looked up or stored."""
        results: list[Settled] = [None] * len(requests)  # type: ignore[list-item]
        pending: list[tuple[int, _Pending]] = []
        for i, request in enumerate(requests):
            try:
                key = self._key(request)
            except InvalidRequestError as exc:
                results[i] = exc
                continue
            found = Found(key, None, [], [], request.n, request.namespace, request.request_id, request.n)
            pending.append((i, _Pending(request, found)))
        if pending:
            self._enter()
            try:
                outcomes = await self._fetches.submit([p for _, p in pending])
                for (i, _), outcome in zip(pending, outcomes):
                    results[i] = await outcome.get()
            finally:
                self._exit()
        return results

    async def _shutdown(self) -> None:
        """Store everything fetched so far, stop, and close the store if the cacher opened it.

        Raises UnstoredSamplesError (after closing everything) when samples could not be
        stored; they are in the recovery file it names."""
        try:
            await self._broker.aclose()
        finally:
            await super()._shutdown()
            if self._explain_thread.started:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._explain_thread.close)
            self._explain_thread.close()  # never started: later explanations raise StoreError
            if self._owns_store:
                if getattr(self.store, "inline_io", True) is False:  # a network engine: its close may wait for the network
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self.store.close)
                else:
                    self.store.close()


SEARCHED_MISSES = 50
"""How many replay misses of one run (whose key holds nothing) get the nearest stored requests
searched for their message; later ones say to call ``explain_miss`` for them."""


def _ignore_stored(found: Found) -> None:
    """Refresh mode: the request gets none of the stored samples its lookup picked (they stay
    claimed in this run, so no other request of it gets them either); all ``n`` come from the
    model, and its replay record is written for the new ones."""
    found.indices = []
    found.samples = []
    found.missing = found.n


def _mode_for(mode: str | None, replay_only: bool, model_name: str) -> Mode:
    """The cacher's mode: ``mode`` or the environment's default; always ``"replay"`` over a
    replay-only model, which refuses ``"refresh"`` and ``"bypass"`` when asked for."""
    if replay_only:
        if mode is not None and resolve_mode(mode) not in ("record", "replay"):
            raise ConfigurationError(
                f"mode={mode!r} needs a model to call, and {model_name} only replays; use mode='replay' "
                "(or pass the real model)"
            )
        return "replay"
    return resolve_mode(mode)
