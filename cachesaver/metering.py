"""The stage that reports every upstream call to a ledger.

``LedgerTap(model, ledger)`` sits directly above the real model. For every request that reaches
the model it calls ``ledger.record_upstream(request, outcome)`` exactly once, with the model's
Response or the exception it produced, then passes the answers on unchanged. A
:class:`~cachesaver.errors.CacheMissError` (a replay-only model refusing a request) is not an
upstream call and is not recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import CacheMissError
from .stage import Settled, Stage, call_model
from .typedefs import Request

__all__ = ["LedgerTap"]


class LedgerTap(Stage):
    """Passes requests to ``model`` unchanged, reporting each one to ``ledger``."""

    def __init__(self, model: Any, ledger: Any) -> None:
        super().__init__(model)
        self.ledger = ledger

    async def _settle(self, requests: Sequence[Request]) -> list[Settled]:
        answers = await call_model(self.model, requests)
        for request, answer in zip(requests, answers):
            if not isinstance(answer, CacheMissError):
                self.ledger.record_upstream(request, answer)
        return answers
