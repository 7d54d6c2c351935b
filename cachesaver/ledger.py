"""Accounting of what a pipeline spent and saved (placeholder until the ledger lands).

A pipeline calls ``record_upstream`` once for every request that reaches the model (with the
model's Response, or the exception it raised) and ``record_served`` once for every request it
answers to its caller.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .typedefs import Request, Response

__all__ = ["Ledger"]


class Ledger:
    """Counts upstream calls and served samples per namespace."""

    def __init__(self) -> None:
        self.upstream_calls: dict[str, int] = defaultdict(int)
        self.samples_generated: dict[str, int] = defaultdict(int)
        self.samples_cached: dict[str, int] = defaultdict(int)
        self.samples_duplicated: dict[str, int] = defaultdict(int)

    def record_upstream(self, request: Request, outcome: Response | BaseException) -> None:
        self.upstream_calls[request.namespace] += 1
        if isinstance(outcome, Response):
            self.samples_generated[request.namespace] += len(outcome.data)

    def record_served(self, request: Request, response: Response) -> None:
        ns = request.namespace
        self.samples_cached[ns] += sum(1 for c in response.cached or () if c)
        self.samples_duplicated[ns] += sum(1 for d in response.duplicated or () if d)

    def snapshot(self) -> dict[str, Any]:
        return {
            "upstream_calls": dict(self.upstream_calls),
            "samples_generated": dict(self.samples_generated),
            "samples_cached": dict(self.samples_cached),
            "samples_duplicated": dict(self.samples_duplicated),
        }
