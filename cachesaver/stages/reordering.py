"""The reordering stage: the model sees every batch in a canonical order, whatever the arrival order.

``RequestReorderer`` sorts each batch by (request_id, cache key) before handing it to the model
and puts the answers back in the caller's order. A model whose output depends on its position in
a batch (a seeded local model, a simulated server with a KV cache) then behaves the same however
the requests were timed. Requests without an id sort after those with one, by key; ids of
different types sort by type name first. Duplicate ids are allowed.

Guarantees: answers are returned in the order of the requests given; the model receives each
request exactly once, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidRequestError
from ..keys import request_key
from ..typedefs import Request
from .base import Settled, Stage, call_model

__all__ = ["RequestReorderer"]


def _order(request: Request) -> tuple[Any, ...]:
    rid = request.request_id
    if rid is None:
        return (1, "", "", request_key(request))
    return (0, type(rid).__name__, rid, request_key(request))


class RequestReorderer(Stage):
    """Sorts each batch by (request_id, key) for the model; restores the caller's order."""

    async def _settle(self, requests: Sequence[Request]) -> list[Settled]:
        if len(requests) == 1:
            return await call_model(self.model, requests, late=self._late_answers)
        results: list[Settled] = [None] * len(requests)  # type: ignore[list-item]
        keyed: list[tuple[tuple[Any, ...], int]] = []
        for i, request in enumerate(requests):
            try:
                keyed.append((_order(request), i))
            except InvalidRequestError as exc:
                results[i] = exc
        keyed.sort(key=lambda item: item[0])
        positions = [i for _, i in keyed]
        answers = await call_model(self.model, [requests[i] for i in positions], late=self._late_answers)
        for i, answer in zip(positions, answers):
            results[i] = answer
        return results
