"""LedgerTap reports every request that reaches the model, and nothing else."""

from __future__ import annotations

from cachesaver.errors import BackendError, CacheMissError
from cachesaver.ledger import Ledger
from cachesaver.stages.ledger_tap import LedgerTap
from cachesaver.models import ReplayOnlyModel, ScriptedModel
from cachesaver.typedefs import Batch, Request


async def test_each_request_of_a_batch_is_one_upstream_record():
    ledger = Ledger()
    tap = LedgerTap(ScriptedModel(fail={"bad"}), ledger)
    results = await tap.batch_request(Batch([Request("a", n=2), Request("bad"), Request("b")]), return_exceptions=True)
    assert isinstance(results[1], BackendError)
    total = ledger.total()
    assert (total.upstream_calls, total.failed_calls, total.samples_generated) == (3, 1, 3)


async def test_a_replay_only_refusal_is_not_an_upstream_call():
    ledger = Ledger()
    tap = LedgerTap(ReplayOnlyModel(), ledger)
    (result,) = await tap.batch_request(Batch([Request("a")]), return_exceptions=True)
    assert isinstance(result, CacheMissError)
    assert ledger.total().upstream_calls == 0
