"""The claim rules of a shared run over one key's claim state (``cachesaver.store.shared_rules``);
the engines' agreement on them is ``tests/test_store_shared_contract.py``."""

from __future__ import annotations

from typing import Any

from cachesaver.store.protocol import ClaimAsk, ClaimRelease, KeyClaimOps, RunRef, use_ident
from cachesaver.store.shared_rules import KeyRunState, apply_new, apply_ops


class Records:
    """A key with ``count`` samples and the given records (tag -> indices)."""

    def __init__(self, count: int, records: dict[str, tuple[int, ...]] | None = None) -> None:
        self.count = count
        self.consulted = dict(records or {})
        self.written: dict[str, tuple[int, ...]] = {}

    def record(self, tag: str) -> Any:
        return self.written.get(tag, self.consulted.get(tag))

    def write_record(self, tag: str, indices: tuple[int, ...]) -> None:
        self.written[tag] = indices


RUN = RunRef("r", "g", "w1:")


def test_the_state_survives_a_round_trip_through_plain_data() -> None:
    state = KeyRunState()
    records = Records(6)
    apply_ops(state, records, KeyClaimOps(asks=(ClaimAsk("t1", "ns", use_ident("ns", "q", 2), 2), ClaimAsk("t2", "ns", None, 3))), RUN)
    apply_ops(state, records, KeyClaimOps(releases=(ClaimRelease("t2"),)), RUN)  # a use given back, a gap
    apply_new(state, "t1", [6])
    copy = KeyRunState.from_data(state.to_data())
    assert copy.to_data() == state.to_data()
    again = apply_ops(copy, records, KeyClaimOps(asks=(ClaimAsk("t3", "ns", None, 6),)), RUN)
    assert again == [("t3", None, (2, 3, 4, 5), False)]


def test_a_dead_worker_is_processed_once_and_only_its_pending_tickets() -> None:
    state = KeyRunState()
    ident = use_ident("ns", "q", 1)
    apply_ops(state, Records(3), KeyClaimOps(asks=(ClaimAsk("d1", "ns", ident, 1),)), RunRef("r", "g", "dead:"))
    apply_ops(state, Records(3), KeyClaimOps(asks=(ClaimAsk("a1", "ns", ident, 1),)), RUN)
    after = RunRef("r", "g", "w1:", dead=("dead:",))
    (grant,) = apply_ops(state, Records(3), KeyClaimOps(asks=(ClaimAsk("a2", "ns", ident, 1),)), after)
    assert grant[1:3] == (0, (2,))  # dead's use 0 came back; its sample 0 and a1's 1 stay claimed
    (later,) = apply_ops(state, Records(3), KeyClaimOps(asks=(ClaimAsk("a3", "ns", ident, 1),)), after)
    assert later[1] == 2  # not given back a second time
    assert set(state.pending) == {"a1", "a2", "a3"}


def test_new_samples_go_only_to_a_ticket_still_pending() -> None:
    state = KeyRunState()
    apply_ops(state, Records(0), KeyClaimOps(asks=(ClaimAsk("t1", "ns", None, 2),)), RUN)
    assert apply_new(state, "t1", [0, 1]) and not apply_new(state, "gone", [2])
    (grant,) = apply_ops(state, Records(3), KeyClaimOps(asks=(ClaimAsk("t2", "ns", None, 3),)), RUN)
    assert grant[2] == (2,)
