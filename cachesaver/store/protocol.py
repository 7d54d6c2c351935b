"""The storage contract: what every engine behind the cache stage does and guarantees.

An *engine* is any object implementing :class:`SampleStore`. The cache stage (and its
allocation logic in :mod:`cachesaver.store.allocation`) talks to the store through this
protocol only, so it never knows which engine it holds.

What an engine stores, per cache key:

* an append-only list of **samples**, each a ``(data, usage)`` pair (:data:`StoredSample`);
* **replay records**: for a :class:`RecordId` ``(namespace, request_id, n, use)``, the sample
  indices the ``use``-th request with that id asking ``n`` samples received in that namespace.

What an engine guarantees:

* **Atomic, dense appends.** :meth:`SampleStore.commit` appends every batch of samples and
  writes every record in one atomic step (all or nothing), also against other processes or
  hosts sharing the store. The samples of a key get dense indices 0, 1, 2, ... in append order;
  an index is never reused and a stored sample never changes. A record may be replaced by a
  newer one for the same :class:`RecordId`.
* **One read per lookup round.** :meth:`SampleStore.view` returns, in one call, what a lookup
  round needs of many keys: each key's sample count, its first :data:`CONSULTED_RECORDS`
  records (in the order they were first written), the records asked for by tag, and whatever
  samples the engine read along. :meth:`SampleStore.read` fetches the other samples, again for
  many keys in one call.
* **Idempotent tokens.** A commit may carry a ``token``; a second commit with a token already
  applied does nothing and returns None (:meth:`SampleStore.applied` tells). Recovery files and
  imports use this to never store the same samples twice.
* **Errors.** Every failure is a :class:`~cachesaver.errors.StoreError` subclass, translated
  inside the engine's own module: :class:`~cachesaver.errors.CorruptStoreError` for an entry
  the engine cannot decode or that is missing (it fails only the key it belongs to: ``view``
  and ``read`` return it in that key's place), :class:`~cachesaver.errors.StoreLockedError`
  when a write waited longer than the engine's bound for a lock, a plain ``StoreError`` for
  I/O failures (a full disk, a read-only location, a lost connection). A store that is closed,
  or opened read-only (:attr:`SampleStore.writable` False), raises ``StoreError`` on
  ``commit``.
* **Threads.** Every method blocks and may be called from any thread (the allocation layer
  calls it from two of its own, one for lookups and one for commits). ``view``, ``read`` and
  ``applied`` never wait for a commit in progress, hook calls included: the allocation layer's
  hook waits in ``before`` for a lookup round to end, so a lookup that waited for the commit
  would deadlock. A thread that used the
  store calls :meth:`SampleStore.release_thread` as its last call, so an engine with
  per-thread resources (diskcache's SQLite connections) frees them there.
* **Close** releases what the engine opened; an engine never closes an object the user passed
  in.
* **Inline calls** (optional). An engine whose calls are cheap local I/O may be called on the
  event loop for a lone lookup or commit. One that crosses a network sets a class attribute
  ``inline_io = False`` (the Redis engine does), and the cache stage then runs every call on
  its store threads.
* **Views from the event loop** (optional). An engine with a method ``async view_async(keys,
  tags)`` gives the views of :meth:`SampleStore.view` from the event loop without blocking it
  (non-blocking I/O the loop waits for), or None when it cannot serve them now, having
  changed nothing; the cache stage then runs its lookup rounds on the event loop, with no
  thread hop, and calls ``view`` on its store thread whenever ``view_async`` returns None.
  The Redis engine has one (:meth:`~cachesaver.store.redis.RedisStore.view_async`).
* **Shared runs** (optional). An engine whose method ``shared_runs()`` returns a
  :class:`SharedRunStore` lets pipelines of several processes or hosts form one run
  (``run_id=``): the run's claims, use counts and membership live in the store, each
  :meth:`SharedRunStore.claim` applies the choice rules of :mod:`cachesaver.store.claims`
  atomically per cache key, and :meth:`SharedRunStore.commit` claims new samples atomically
  with their commit. It also holds the per-key leases of single-flight, which identical
  requests of other workers may join while open (:meth:`SharedRunStore.acquire_leases`). The
  memory engine
  (within one process), diskcache (the processes of one host) and Redis (any hosts) offer it;
  :mod:`cachesaver.store.shared_runs` says what a shared run guarantees.


Record identity is the canonical tag string of :func:`record_tag`, the same for every engine.

**Readable entries** (for people, the cache CLI and bundles; the pipeline never reads them):

* An :class:`Append` may carry the key's canonical **request** (the JSON text of
  :func:`cachesaver.keys.canonical_request`: prompt, every keyed field and the model identity).
  The engine stores it when that append holds the key's first samples (they start at index
  0), in the same atomic commit, and ignores it otherwise: a key's request costs one write in
  its life (and, passed as a function, is built only then), none on a lookup. Keys whose first samples came without one (written before
  requests were kept) have none: "request unknown".
* Every sample keeps **when it was stored** (seconds since the epoch: the append's
  ``stored_at``, else the commit's clock), beside its usage, without another write per append.
* An engine that also implements :class:`InspectableStore` lists its keys, describes each
  (request, count, per-sample times, every record), knows the names of the namespaces its
  records belong to (registered by the commits that write them), and forgets records or whole
  keys. These calls are for tools, not the request path: they may be slow on a large store.

>>> from cachesaver.store.memory import MemoryStore
>>> store = MemoryStore()
>>> store.commit([Append("k", (("a", None), ("b", None)))])
[0]
>>> view = store.view(["k"])["k"]
>>> view.count, store.read({"k": [1]})["k"]
(2, [('b', None)])
>>> store.close()
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, Mapping, Protocol, Sequence, Tuple, Union, runtime_checkable

from ..errors import StoreError

__all__ = [
    "CONSULTED_RECORDS",
    "IMPORT_TOKEN_PREFIX",
    "Append",
    "ClaimAsk",
    "ClaimNew",
    "ClaimRelease",
    "ClaimSettle",
    "ClaimTopUp",
    "CommitHook",
    "Grant",
    "InspectableStore",
    "KeyClaimOps",
    "KeyEntry",
    "KeyView",
    "Lease",
    "LeasesTaken",
    "LoopViews",
    "RecordId",
    "RecordWrite",
    "RunRef",
    "RunStatus",
    "SampleStore",
    "SharedRunStore",
    "StoredSample",
    "import_token_prefix",
    "key_view",
    "namespace_digest",
    "namespace_prefix",
    "parse_record_tag",
    "record_tag",
    "use_ident",
]

StoredSample = Tuple[Any, Any]
"""One stored sample as a ``(data, usage)`` pair: what the model returned and the token usage it
reported for that sample (or None)."""

CONSULTED_RECORDS = 16
"""How many records of a key (the first ones written, in any namespace) a lookup consults to
keep a request without a record of its own off samples recorded for others (README promise 4).
The same for every engine."""

_namespace_prefixes: dict[str, str] = {}  # the first 4096 namespaces seen: every tag asks


def namespace_prefix(namespace: str) -> str:
    """The start of every record tag of ``namespace`` ("2/" marks the layout with ``n``)."""
    prefix = _namespace_prefixes.get(namespace)
    if prefix is None:
        prefix = hashlib.sha256(namespace.encode("utf-8", "surrogatepass")).hexdigest()[:32] + "/2/"
        if len(_namespace_prefixes) < 4096:
            _namespace_prefixes[namespace] = prefix
    return prefix


def namespace_digest(namespace: str) -> str:
    """The 32 hex digits that stand for ``namespace`` in record tags (its names are kept apart:
    :meth:`InspectableStore.namespace_names`)."""
    return namespace_prefix(namespace)[:32]


def record_tag(namespace: str, request_id: Any, n: int, use: int) -> str:
    """The canonical identity of a record. The prefix has a fixed length and ``n`` and ``use``
    are ints at the end, so the tag is unambiguous whatever characters the request id holds."""
    prefix = _namespace_prefixes.get(namespace) or namespace_prefix(namespace)
    return f"{prefix}{type(request_id).__name__}:{request_id}/{n}/{use}"


def parse_record_tag(tag: str) -> tuple[str, Any, int, int] | None:
    """``(namespace digest, request_id, n, use)`` of a :func:`record_tag`, or None for a string
    that is not one. A request id is a str or an int (what a Request allows)."""
    if len(tag) < 36 or tag[32:35] != "/2/":
        return None
    head, _, rest = tag[35:].partition(":")
    parts = rest.rsplit("/", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    value: Any = parts[0]
    if head == "int":
        try:
            value = int(value)
        except ValueError:
            return None
    elif head != "str":
        return None
    return tag[:32], value, int(parts[1]), int(parts[2])


IMPORT_TOKEN_PREFIX = "import/"
"""Commit tokens that start with this and then ``<key>/`` belong to an import of that key
(:func:`import_token_prefix`); forgetting the key forgets them, so a later import applies."""


def import_token_prefix(key: str) -> str:
    """The start of every import token of ``key``."""
    return f"{IMPORT_TOKEN_PREFIX}{key}/"


def use_ident(namespace: str, request_id: Any, n: int) -> str:
    """What the record tags of every use of (``namespace``, ``request_id``, ``n``) share: the
    tag of use ``k`` is ``f"{use_ident(...)}/{k}"``."""
    return record_tag(namespace, request_id, n, 0)[:-2]


@dataclass(frozen=True)
class RecordId:
    """Names one replay record: the ``use``-th request with ``request_id`` asking ``n``
    samples, in ``namespace``."""

    namespace: str
    request_id: Any
    n: int
    use: int

    @property
    def tag(self) -> str:
        return record_tag(self.namespace, self.request_id, self.n, self.use)


@dataclass(frozen=True)
class Append:
    """Samples to append to ``key``'s list, in order.

    ``request``: the key's canonical request (JSON text, see the module docstring), or a
    function of no arguments returning it, stored only if these are the key's first samples:
    the engine calls :meth:`request_text` then and only then, so a cache stage pays for
    building the text once per key. ``stored_at``: when the samples were stored (seconds since
    the epoch), for an import that keeps the original times; None is now."""

    key: str
    samples: Tuple[StoredSample, ...]
    request: Union[str, Callable[[], str], None] = None
    stored_at: float | None = None

    def request_text(self) -> str | None:
        """``request`` as text (calling it if it is a function); None when there is none or
        the function fails, so the samples are stored without it rather than not at all."""
        return request_text(self.request)


def request_text(request: Union[str, Callable[[], str], None]) -> str | None:
    """What :meth:`Append.request_text` returns for ``request``."""
    if request is None or isinstance(request, str):
        return request
    try:
        text = request()
    except Exception:  # noqa: BLE001 - a readable request is never worth losing samples
        return None
    return text if isinstance(text, str) else None


@dataclass(frozen=True)
class RecordWrite:
    """A record to write for ``key``. Its indices are ``parts`` in order: an int is a stored
    sample's index; a pair ``(position, count)`` stands for the first ``count`` samples of the
    commit's ``position``-th :class:`Append`, whose indices the engine assigns in that commit."""

    key: str
    record: RecordId
    parts: Tuple[Union[int, Tuple[int, int]], ...] = ()

    def resolve(self, starts: Sequence[int], sizes: Sequence[int] | None = None) -> tuple[int, ...]:
        """The record's indices, given the first index of each append of the commit (and how
        many samples each holds, ``sizes``, to check counts against).

        Raises StoreError for a part naming no append of the commit, counting more samples than
        that append holds, or a negative index: an engine calls this before it writes, so such
        a commit writes nothing."""
        out: list[int] = []
        for part in self.parts:
            if isinstance(part, int):
                if part < 0:
                    raise self._bad_part(part, starts)
                out.append(part)
            else:
                position, count = part
                if (
                    not 0 <= position < len(starts)
                    or count < 0
                    or (sizes is not None and count > sizes[position])
                ):
                    raise self._bad_part(part, starts)
                out.extend(range(starts[position], starts[position] + count))
        return tuple(out)

    def _bad_part(self, part: Any, starts: Sequence[int]) -> StoreError:
        return StoreError(
            f"the record {self.record.tag} of key {self.key} has the part {part!r}, which names no "
            f"stored sample nor samples of one of the commit's {len(starts)} appends; nothing was "
            "written. The caller of SampleStore.commit built a wrong RecordWrite: an int part is a "
            "stored index >= 0, a (position, count) part counts at most that append's samples"
        )


@dataclass(frozen=True)
class KeyView:
    """What a lookup round knows of one key.

    ``records`` are the first :data:`CONSULTED_RECORDS` records of the key (tag -> indices), in
    the order they were first written; ``found`` holds the asked-for tags that exist (whether
    among those or not); ``samples`` maps indices to samples the engine read along (possibly
    none)."""

    count: int = 0
    records: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)
    found: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)
    samples: Mapping[int, StoredSample] = field(default_factory=dict)


EMPTY_VIEW = KeyView()


_new_object = object.__new__


def key_view(
    count: int,
    records: Mapping[str, Tuple[int, ...]],
    found: Mapping[str, Tuple[int, ...]],
    samples: Mapping[int, StoredSample],
) -> KeyView:
    """``KeyView(count, records, found, samples)``, the same (equal) object, built in well under
    half the time: engines build one per key of every lookup round, their hottest allocation,
    and a frozen dataclass sets each field through ``object.__setattr__``."""
    view: KeyView = _new_object(KeyView)
    fields = view.__dict__
    fields["count"] = count
    fields["records"] = records
    fields["found"] = found
    fields["samples"] = samples
    return view


class CommitHook(Protocol):
    """Lets the caller of :meth:`SampleStore.commit` act atomically with the commit, as seen
    from its own process: the allocation layer claims new samples for their requester before
    any of its lookups can see them."""

    def before(self) -> None:
        """Called once the engine will write without waiting any more (it holds its locks)."""

    def after(self, starts: list[int]) -> None:
        """Called once the commit is visible, before ``commit`` returns, with its result."""

    def finish(self) -> None:
        """Called last whenever ``before`` was called, whether the commit succeeded or not."""


@runtime_checkable
class SampleStore(Protocol):
    """The contract every storage engine implements; see the module docstring."""

    @property
    def location(self) -> str:
        """Where the store lives, for messages (a directory, a URL without its password)."""
        ...

    @property
    def writable(self) -> bool:
        """False when the store was opened read-only (replay only)."""
        ...

    def view(
        self, keys: Sequence[str], tags: Sequence[tuple[str, str]] = ()
    ) -> Mapping[str, KeyView | StoreError]:
        """The view of each of ``keys`` (an empty view for a key with nothing stored), looking
        up the ``(key, tag)`` records of ``tags`` too; a damaged key maps to its error."""
        ...

    def read(self, wanted: Mapping[str, Sequence[int]]) -> Mapping[str, list[StoredSample] | StoreError]:
        """The samples at the given indices of each key, in that order; a key with a missing
        or undecodable sample maps to a CorruptStoreError."""
        ...

    def commit(
        self,
        appends: Sequence[Append],
        records: Sequence[RecordWrite] = (),
        *,
        token: str | None = None,
        hook: CommitHook | None = None,
        wait_s: float | None = None,
    ) -> list[int] | None:
        """Append and write atomically; the first index of each append (None if ``token`` was
        applied before, in which case nothing is written). ``hook`` is called as
        :class:`CommitHook` says. ``wait_s`` bounds how long the engine waits for a lock held
        elsewhere (None: its own bound, 0: not at all), after which it raises StoreLockedError
        and writes nothing."""
        ...

    def applied(self, token: str) -> bool:
        """Whether a commit with ``token`` has been applied."""
        ...

    def release_thread(self) -> None:
        """Release what the calling thread holds (a connection); it is the last call a thread
        makes, though the store must stay usable from other threads."""
        ...

    def close(self) -> None:
        """Release what the engine opened (and the calling thread's resources); later calls
        raise StoreError."""
        ...


class LoopViews(Protocol):
    """The optional capability of an engine that views from the event loop (see "Views from
    the event loop" in the module docstring): the callable the cache stage keeps."""

    def __call__(
        self, keys: Sequence[str], tags: Sequence[tuple[str, str]] = ()
    ) -> Awaitable[Mapping[str, KeyView | StoreError] | None]: ...


@dataclass(frozen=True)
class KeyEntry:
    """Everything an engine holds for one key but the samples themselves (read those with
    :meth:`SampleStore.read`).

    ``request`` is the canonical request's JSON text, None when unknown; ``stored_at`` has
    one time per sample (seconds since the epoch; None when the engine cannot tell);
    ``records`` maps the tag of every record of the key (in any namespace, those beyond the
    first :data:`CONSULTED_RECORDS` included) to its indices."""

    key: str
    count: int
    request: str | None = None
    stored_at: Tuple[float | None, ...] = ()
    records: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)


@runtime_checkable
class InspectableStore(SampleStore, Protocol):
    """A :class:`SampleStore` that tools can list, describe and prune (the cache CLI,
    bundles, miss explanations). Same thread and error rules as :class:`SampleStore`."""

    def iter_keys(self) -> Iterator[str]:
        """Every key that holds samples or records, each once, in no given order. A key
        committed while the iteration runs may or may not be listed."""
        ...

    def inspect(self, keys: Sequence[str]) -> Mapping[str, KeyEntry | StoreError]:
        """The :class:`KeyEntry` of each of ``keys`` (count 0 and nothing else for a key with
        nothing stored); a damaged key maps to its error."""
        ...

    def namespace_names(self) -> Mapping[str, str]:
        """The name of each namespace whose records were written with this protocol:
        :func:`namespace_digest` -> name. Namespaces of records written before names were
        kept are missing."""
        ...

    def forget(self, key: str, namespaces: Sequence[str] | None = None, *, wait_s: float | None = None) -> int:
        """Forget, atomically: with ``namespaces`` (names), the key's records in those
        namespaces, returning how many; with None, the whole key (samples, records, request
        and its import tokens, :func:`import_token_prefix`), returning how many samples it
        held. The key's other records stay consultable as before (an engine that keeps the
        first records apart moves later ones up). ``wait_s`` bounds the wait for the write
        lock as in :meth:`SampleStore.commit`; a read-only or closed store raises StoreError."""
        ...

    def size_bytes(self) -> int:
        """How many bytes the store occupies, as the engine measures it (a directory's files,
        a server's memory for its keys)."""
        ...


# -- shared runs (optional) --------------------------------------------------------------------


@dataclass(frozen=True)
class RunRef:
    """One worker's view of the shared run it belongs to, passed with every claim.

    ``generation`` names this life of the run (a new one starts when the run record is gone:
    ended, or expired after its workers stopped); ``worker`` is the worker's incarnation id;
    ``dead`` lists, in the order they were declared dead, the workers that left or stopped
    renewing: their pending claims give their uses back the next time a claim touches the key.
    """

    run_id: str
    generation: str
    worker: str
    dead: Tuple[str, ...] = ()


@dataclass(frozen=True)
class RunStatus:
    """A shared run's record: its generation, live workers and dead workers (in the order they
    were declared dead); ``lost`` is True when the asking worker had been declared dead."""

    generation: str
    workers: Tuple[str, ...]
    dead: Tuple[str, ...]
    lost: bool = False


@dataclass(frozen=True)
class ClaimAsk:
    """A lookup: claim up to ``n`` stored samples for a request, by the choice rules (its
    recorded indices first if none is claimed in the run, else the lowest unclaimed ones
    avoiding those other ids recorded), and take the next use of ``ident`` (None: the request
    has no id). The claim stays *pending* under ``ticket`` until settled or released."""

    ticket: str
    namespace: str
    ident: str | None
    n: int


@dataclass(frozen=True)
class ClaimTopUp:
    """Pending ``ticket``, known to hold ``have`` samples, wants ``want`` more: claim stored
    ones (the lowest unclaimed, avoiding indices other ids recorded) until it holds ``have +
    want`` (or its ``n``), and grant those it holds beyond ``have`` (so a retried top-up gets
    the same ones). When the ticket then holds its ``n``, its record is written."""

    ticket: str
    have: int
    want: int


@dataclass(frozen=True)
class ClaimRelease:
    """Pending ``ticket`` was abandoned: free its samples, give its use back and, if
    ``clear_record``, write an empty record for its use (it had written one). A ticket no
    longer pending (settled, or released when its worker was declared dead) is left alone."""

    ticket: str
    clear_record: bool = False


@dataclass(frozen=True)
class ClaimSettle:
    """Pending ``ticket`` was delivered: its samples stay claimed and its use counts."""

    ticket: str


@dataclass(frozen=True)
class KeyClaimOps:
    """What one :meth:`SharedRunStore.claim` does on one cache key, in this order: releases,
    settles, asks (those whose recorded samples are all free first, then the others, each
    group in order), top-ups."""

    releases: Tuple[ClaimRelease, ...] = ()
    settles: Tuple[ClaimSettle, ...] = ()
    asks: Tuple[ClaimAsk, ...] = ()
    top_ups: Tuple[ClaimTopUp, ...] = ()


@dataclass(frozen=True)
class Grant:
    """What an ask or a top-up got: the ``use`` taken (None without an id), the ``indices``
    claimed now, in order, and their ``samples``; ``wrote_record`` when the ticket is complete
    and its record was written (or rewritten) by this claim."""

    ticket: str
    use: int | None
    indices: Tuple[int, ...]
    samples: Mapping[int, StoredSample]
    wrote_record: bool = False


@dataclass(frozen=True)
class ClaimNew:
    """In a commit: claim the first ``count`` samples of the commit's ``position``-th append for
    pending ``ticket`` (nothing if the ticket is no longer pending: they stay spare)."""

    ticket: str
    position: int
    count: int


@dataclass(frozen=True)
class Lease:
    """A live single-flight lease on a cache key: who holds it, the claim scopes its upstream
    call serves (a waiter in one of them could not take its samples), how long until it expires
    unless renewed, and how many acquires by others it has turned away.

    ``open``: the holder has not sealed its call yet, so a request of another holder in one of
    ``scopes`` may *join* it (:meth:`SharedRunStore.acquire_leases`); ``joined`` counts, per
    scope (in ``scopes`` order), the samples joined so far; ``late``, the acquires by others in
    one of ``scopes`` that found it sealed (they ask the model themselves); ``visitors``, the
    distinct workers, other than the holder's, whose acquires found it (joined, waiting or
    late)."""

    holder: str
    scopes: Tuple[str, ...]
    expires_in_s: float
    waiting: int = 0
    open: bool = False
    joined: Tuple[int, ...] = ()
    late: int = 0
    visitors: int = 0


@dataclass(frozen=True)
class LeasesTaken:
    """What :meth:`SharedRunStore.acquire_leases` did: per key, None (the caller holds the lease
    now) or the live lease of another holder, as it stands after the step; and ``peers``, the
    live workers of the caller's run besides the caller, read in the same step (None: no run
    given)."""

    leases: Mapping[str, Lease | None]
    peers: int | None = None


@runtime_checkable
class SharedRunStore(Protocol):
    """Shared runs and single-flight leases on one store (``engine.shared_runs()``).

    Every method blocks, may be called from any thread, and raises only StoreError subclasses.
    Times are the store's: the server's clock for Redis, the host's for diskcache. A *claim
    state* is per (run generation, cache key); it expires ``keep_s`` after the last claim that
    touched it, which only matters for a run live that long.
    """

    def join(self, run_id: str, worker: str, ttl_s: float, generation: str) -> RunStatus:
        """Add (or renew) ``worker`` as a live worker of ``run_id`` until ``ttl_s`` from now,
        starting the run with ``generation`` if it has no record. Workers whose time passed are
        declared dead; so is a live worker with the same name (the part after the first
        ``:``) and another incarnation. The record lives ``ttl_s`` after the last join.
        A worker that had been declared dead is not added back: the status says ``lost``."""
        ...

    def leave(self, run_id: str, worker: str) -> None:
        """``worker`` leaves (it counts as dead from now); with no live worker left, the run
        ends and a later join starts a new generation."""
        ...

    def status(self, run_id: str) -> RunStatus | None:
        """The run's record (workers whose time passed listed as dead), or None: no live run."""
        ...

    def end(self, run_id: str) -> None:
        """End the run now, whoever is still in it (its claims are dropped)."""
        ...

    def claim(
        self, run: RunRef, ops: Mapping[str, KeyClaimOps], keep_s: float
    ) -> Mapping[str, list[Grant] | StoreError]:
        """Apply ``ops`` atomically per cache key (one grant per ask, then per top-up, in
        order); a damaged key maps to its error, other keys are unaffected."""
        ...

    def claimed(self, run: RunRef, namespace: str, key: str, below: int) -> int:
        """How many of the indices below ``below`` of ``key`` are claimed in ``namespace`` of
        the run (for miss explanations; changes nothing)."""
        ...

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
        """:meth:`SampleStore.commit` (without a token) that also applies ``claims``, in the
        same atomic step as the appends of their keys."""
        ...

    def acquire_leases(
        self,
        wants: Mapping[str, Mapping[str, int]],
        holder: str,
        ttl_s: float,
        *,
        joinable: bool = False,
        run: RunRef | None = None,
    ) -> LeasesTaken:
        """One atomic step per key of ``wants`` (claim scope -> samples the caller's call needs
        in that scope), the keys in one round trip:

        * a key with no live lease (or with ``holder``'s own) gets ``holder``'s lease for
          ``ttl_s``, serving ``wants[key]``'s scopes, *open* to joins when ``joinable`` (until
          :meth:`seal_leases`), else sealed; its entry is None. Taking one's own lease again (a
          retried step) renews it and keeps its joins, and with ``joinable`` opens it (a
          holder does so only before it seals: one that took it sealed and then learned that
          others are live). A lease taken while the trace of the
          key's previous lease lasts (:meth:`release_leases`) starts with that lease's
          workers among its ``visitors``: they have been by already;
        * on a key with another holder's live lease, the step counts one more ``waiting`` and
          adds the caller's worker (``run.worker``, else ``holder``) to its ``visitors``
          unless it is the holder's own. If that lease is open and serves one of the wanted
          scopes, it adds the wanted samples of each scope it serves to its ``joined``
          counts: the caller has *joined* that call, whose holder asks the model for those
          samples too and stores them unclaimed. If it is sealed and serves one of the wanted
          scopes, it counts one more ``late``. The entry is that lease after the step
          (``open`` as it was: the caller joined in the scopes it serves if and only if
          ``open``).

        With ``run``, ``peers`` counts the run's live workers other than ``run.worker`` (in the
        same round trip; atomically with the leases on the local engines). A Redis step retried
        after a lost reply may count its joins twice: that holder then asks a few samples more,
        stored spare."""
        ...

    def seal_leases(self, keys: Sequence[str], holder: str) -> Mapping[str, Mapping[str, int] | None]:
        """Close ``holder``'s leases on ``keys`` to joins, atomically per key; per key, the
        samples joined in each scope (what the call must ask beyond its own), or None when
        ``holder`` no longer holds it (expired, taken over). Sealing twice is harmless."""
        ...

    def renew_leases(self, keys: Sequence[str], holder: str, ttl_s: float) -> list[str]:
        """Extend ``holder``'s leases on ``keys`` to ``ttl_s`` from now; the keys it no longer
        holds."""
        ...

    def release_leases(self, keys: Sequence[str], holder: str, *, trace_s: float = 0.0) -> int:
        """Drop ``holder``'s leases on ``keys`` (another's lease is left alone); how many
        ``late`` acquires the dropped leases had counted. With ``trace_s``, each dropped lease
        leaves a trace of its workers (its holder's and its visitors) for that long."""
        ...

    def leases(self, keys: Sequence[str]) -> Mapping[str, Lease | None]:
        """The live lease of each key, or None."""
        ...
