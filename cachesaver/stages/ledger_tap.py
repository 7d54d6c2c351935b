"""The stage that reports every upstream call to a ledger.

``LedgerTap(model, ledger)`` sits directly above the real model. For every request that reaches
the model it calls ``ledger.record_upstream(request, outcome)`` exactly once, with the model's
Response or the exception it produced, then passes the answers on unchanged; answers a sync
model returned after their call was cancelled (see :func:`~cachesaver.stages.base.call_model`) are
recorded too, since they were paid for, and handed on to the cache above. A
:class:`~cachesaver.errors.CacheMissError` (a replay-only model refusing a request) is not an
upstream call and is not recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import CacheMissError
from ..typedefs import Model, Request
from .base import Settled, Stage, _discard_late, call_model

if TYPE_CHECKING:
    from ..ledger import LedgerHooks

__all__ = ["LedgerTap"]


class LedgerTap(Stage):
    """Passes requests to ``model`` unchanged, reporting each one to ``ledger``."""

    def __init__(self, model: Model, ledger: LedgerHooks) -> None:
        super().__init__(model)
        self.ledger = ledger

    async def _settle(self, requests: Sequence[Request]) -> list[Settled]:
        answers = await call_model(self.model, requests, late=self._record_late)
        self._record(requests, answers)
        return answers

    def _record(self, requests: Sequence[Request], answers: Sequence[Settled]) -> None:
        for request, answer in zip(requests, answers):
            if not isinstance(answer, CacheMissError):
                self.ledger.record_upstream(request, answer)

    def _record_late(self, requests: Sequence[Request], answers: list[Settled]) -> None:
        self._record(requests, answers)
        (self._late_answers or _discard_late)(requests, answers)
