"""The claim rules of a shared run, over the claim state of one cache key.

A shared run (:mod:`cachesaver.store.shared_runs`) keeps, per run generation and cache key, a
*claim state*: which stored indices are claimed in each namespace, the use counts of each
(namespace, request_id, n), and the *pending* tickets (claims of requests not yet delivered).
:func:`apply_ops` applies one :class:`~cachesaver.store.protocol.KeyClaimOps` to it; the memory
and diskcache engines call it inside their own atomic step (a lock, an SQLite transaction), and
the Redis engine runs the same rules as a Lua script (:mod:`cachesaver.store.redis_shared`),
so the three engines make the same choices (``tests/test_store_shared_runs.py`` checks it).

The rules are those of a run in one process (:mod:`cachesaver.store.claims` and the lookup
round of :mod:`cachesaver.store.allocation`):

* uses: the lowest use given back by an abandoned attempt, else the next count;
* an ask whose recorded indices (for its use) are all stored and unclaimed takes them, before
  any other ask of the same claim; the others take, in order, their free recorded indices, the
  lowest unclaimed indices that no other id's record (among the key's first
  :data:`~cachesaver.store.protocol.CONSULTED_RECORDS`) holds in their namespace, then any
  unclaimed ones;
* a ticket that holds all its samples at once (an ask served whole, a top-up completing it)
  has its record written then, when it differs from the recorded one.

A ticket is pending until settled (delivered) or released (abandoned: its samples are freed,
its use given back). The tickets of a worker declared dead give their use back but keep their
samples claimed: that worker may have handed them out, and a sample is never handed out twice
in a run.

>>> class Records:
...     count, consulted = 3, {}
...     def record(self, tag): return None
...     def write_record(self, tag, indices): print("record", tag[-5:], indices)
>>> state = KeyRunState()
>>> ops = KeyClaimOps(asks=(ClaimAsk("t1", "ns", use_ident("ns", "q", 2), 2),))
>>> apply_ops(state, Records(), ops, RunRef("run", "g", "w"))
record q/2/0 (0, 1)
[('t1', 0, (0, 1), True)]
>>> apply_ops(state, Records(), KeyClaimOps(asks=(ClaimAsk("t2", "ns", None, 2),)), RunRef("run", "g", "w"))
[('t2', None, (2,), False)]
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from .claims import KeyClaims
from .protocol import ClaimAsk, KeyClaimOps, RunRef, namespace_prefix, use_ident  # noqa: F401 - doctest

__all__ = ["KeyRunState", "RecordAccess", "Ticket", "apply_new", "apply_ops"]

Granted = tuple[str, Any, tuple[int, ...], bool]
"""(ticket, use, indices claimed now, whether the claim wrote the ticket's record)."""


class RecordAccess(Protocol):
    """What the rules read and write of the key's samples and records, inside the engine's
    atomic step."""

    @property
    def count(self) -> int:
        """How many samples the key has."""
        ...

    @property
    def consulted(self) -> Mapping[str, tuple[int, ...]]:
        """The key's first CONSULTED_RECORDS records (tag -> indices)."""
        ...

    def record(self, tag: str) -> tuple[int, ...] | None:
        """The record with ``tag``, or None."""
        ...

    def write_record(self, tag: str, indices: tuple[int, ...]) -> None:
        """Write (or replace) the record with ``tag``, as a commit would."""
        ...


class Ticket:
    """A pending claim: who took it, where, which use of which id, and the indices it holds."""

    __slots__ = ("worker", "prefix", "ident", "use", "n", "indices")

    def __init__(self, worker: str, prefix: str, ident: str | None, use: int | None, n: int, indices: list[int]) -> None:
        self.worker, self.prefix, self.ident, self.use, self.n, self.indices = worker, prefix, ident, use, n, indices

    @property
    def tag(self) -> str | None:
        return None if self.ident is None or self.use is None else f"{self.ident}/{self.use}"


class KeyRunState:
    """The claim state of one run generation on one cache key (see the module docstring)."""

    __slots__ = ("claimed", "uses", "pending", "dead_seen")

    def __init__(self) -> None:
        self.claimed: dict[str, KeyClaims] = {}
        self.uses: dict[str, list[int]] = {}  # ident -> [count, given back...]
        self.pending: dict[str, Ticket] = {}
        self.dead_seen = 0  # how many of the run's dead workers were processed here

    def claims(self, prefix: str) -> KeyClaims:
        entry = self.claimed.get(prefix)
        if entry is None:
            entry = self.claimed[prefix] = KeyClaims()
        return entry

    def next_use(self, ident: str) -> tuple[int, bool]:
        """The use to take and whether it had been given back."""
        entry = self.uses.setdefault(ident, [0])
        if len(entry) > 1:
            given = min(entry[1:])
            del entry[entry.index(given, 1)]
            return given, True
        entry[0] += 1
        return entry[0] - 1, False

    def give_back(self, ticket: Ticket) -> None:
        if ticket.ident is not None and ticket.use is not None:
            entry = self.uses.setdefault(ticket.ident, [ticket.use + 1])
            if ticket.use not in entry[1:]:
                entry.append(ticket.use)

    # -- plain data, for engines that store the state as one value -----------------------------

    def to_data(self) -> tuple[Any, ...]:
        return (
            self.dead_seen,
            {p: (c.floor, tuple(sorted(c.above)) if c.above else ()) for p, c in self.claimed.items()},
            {i: tuple(u) for i, u in self.uses.items()},
            {t: (k.worker, k.prefix, k.ident, k.use, k.n, tuple(k.indices)) for t, k in self.pending.items()},
        )

    @classmethod
    def from_data(cls, data: Any) -> "KeyRunState":
        state = cls()
        if data is None:
            return state
        dead_seen, claimed, uses, pending = data
        state.dead_seen = dead_seen
        for prefix, (floor, above) in claimed.items():
            entry = state.claims(prefix)
            entry.floor = floor
            entry.above = set(above) if above else None
        state.uses = {ident: list(values) for ident, values in uses.items()}
        state.pending = {t: Ticket(w, p, i, u, n, list(ix)) for t, (w, p, i, u, n, ix) in pending.items()}
        return state


def _reserved(records: RecordAccess, prefix: str, own: str | None) -> set[int]:
    out: set[int] = set()
    for tag, indices in records.consulted.items():
        if tag != own and tag.startswith(prefix):
            out.update(indices)
    return out


def apply_ops(state: KeyRunState, records: RecordAccess, ops: KeyClaimOps, run: RunRef) -> list[Granted]:
    """Apply ``ops`` to ``state`` (see the module docstring); one entry per ask, then per
    top-up."""
    if len(run.dead) > state.dead_seen:
        dead = set(run.dead[state.dead_seen :])
        for name, gone in list(state.pending.items()):
            if gone.worker in dead:
                del state.pending[name]
                state.give_back(gone)  # its samples stay claimed: they may have been delivered
        state.dead_seen = len(run.dead)
    for release in ops.releases:
        ticket = state.pending.pop(release.ticket, None)
        if ticket is None:
            continue
        claims = state.claims(ticket.prefix)
        for index in ticket.indices:
            claims.release(index)
        state.give_back(ticket)
        tag = ticket.tag
        if release.clear_record and tag is not None:
            records.write_record(tag, ())
    for settle in ops.settles:
        state.pending.pop(settle.ticket, None)
    out: list[Granted] = []
    if ops.asks:
        out.extend(_asks(state, records, ops.asks, run.worker))
    for top_up in ops.top_ups:
        out.append(_top_up(state, records, top_up.ticket, top_up.have, top_up.want))
    return out


def _asks(state: KeyRunState, records: RecordAccess, asks: Sequence[ClaimAsk], worker: str) -> list[Granted]:
    count = records.count
    results: list[Granted | None] = [None] * len(asks)
    taken: list[tuple[int, Ticket, bool, tuple[int, ...] | None]] = []  # position, ticket, reused, recorded
    for position, ask in enumerate(asks):
        existing = state.pending.get(ask.ticket)
        if existing is not None:  # asked again (a retried call): what it got the first time
            results[position] = (ask.ticket, existing.use, tuple(existing.indices), False)
            continue
        use, reused = state.next_use(ask.ident) if ask.ident is not None else (None, False)
        ticket = Ticket(worker, namespace_prefix(ask.namespace), ask.ident, use, ask.n, [])
        state.pending[ask.ticket] = ticket
        tag = ticket.tag
        taken.append((position, ticket, reused, records.record(tag) if tag is not None else None))
    deferred = []
    for position, ticket, reused, recorded in taken:
        n = ticket.n
        if recorded is not None and len(recorded) >= n:
            picked = list(recorded[:n])
            claims = state.claims(ticket.prefix)
            if len(set(picked)) == n and all(i < count and not claims.is_claimed(i) for i in picked):
                for index in picked:
                    claims.claim(index)
                ticket.indices = picked
                results[position] = _granted(records, asks[position].ticket, ticket, len(recorded) != n or reused)
                continue
        deferred.append((position, ticket, reused, recorded))
    for position, ticket, reused, recorded in deferred:
        n = ticket.n
        claims = state.claims(ticket.prefix)
        chosen: list[int] = []
        for index in recorded or ():
            if len(chosen) == n:
                break
            if index < count and not claims.is_claimed(index) and index not in chosen:
                chosen.append(index)
        reserved = _reserved(records, ticket.prefix, ticket.tag) if records.consulted else set()
        if len(chosen) < n and reserved:
            chosen.extend(claims.lowest_unclaimed(count, n - len(chosen), reserved | set(chosen)))
        if len(chosen) < n:
            chosen.extend(claims.lowest_unclaimed(count, n - len(chosen), chosen))
        for index in chosen:
            claims.claim(index)
        ticket.indices = chosen
        due = ticket.use is not None and len(chosen) == n and (reused or tuple(chosen) != recorded)
        results[position] = _granted(records, asks[position].ticket, ticket, due)
    return results  # type: ignore[return-value]


def _granted(records: RecordAccess, name: str, ticket: Ticket, due: bool) -> Granted:
    wrote = False
    if due and len(ticket.indices) == ticket.n and ticket.tag is not None:
        records.write_record(ticket.tag, tuple(ticket.indices))
        wrote = True
    return (name, ticket.use, tuple(ticket.indices), wrote)


def _top_up(state: KeyRunState, records: RecordAccess, name: str, have: int, want: int) -> Granted:
    ticket = state.pending.get(name)
    if ticket is None:
        return (name, None, (), False)
    want = min(have + want, ticket.n) - len(ticket.indices)
    claims = state.claims(ticket.prefix)
    count = records.count
    picked: list[int] = []
    reserved = _reserved(records, ticket.prefix, ticket.tag) if records.consulted else set()
    if want > 0 and reserved:
        picked = claims.lowest_unclaimed(count, want, reserved)
    if len(picked) < want:
        picked.extend(claims.lowest_unclaimed(count, want - len(picked), picked))
    for index in picked:
        claims.claim(index)
    ticket.indices.extend(picked)
    wrote = False
    if picked and len(ticket.indices) == ticket.n and ticket.tag is not None:
        records.write_record(ticket.tag, tuple(ticket.indices))
        wrote = True
    return (name, ticket.use, tuple(ticket.indices[have:]), wrote)


def apply_new(state: KeyRunState, ticket_name: str, indices: Sequence[int]) -> bool:
    """Claim the new ``indices`` for pending ``ticket_name`` (in a commit); False, claiming
    nothing, when it is no longer pending."""
    ticket = state.pending.get(ticket_name)
    if ticket is None:
        return False
    claims = state.claims(ticket.prefix)
    for index in indices:
        claims.claim(index)
    ticket.indices.extend(indices)
    return True
