"""The deduplicating stage: identical requests in flight together cost one upstream call.

Requests are identical when they have the same cache key (see :mod:`cachesaver.keys`) and the
same namespace. Identical requests that reach ``AsyncDeduplicator`` together, in one
``batch_request`` or concurrently (within the same pass of the event loop, as ``gather`` and
the cache stage issue them), are merged into one request whose ``n`` is their sum, sent once.

Guarantees:

* The merged request is the first arrival with ``n`` summed; its samples are split in arrival
  order: the first request gets the first ``n1`` samples, the next the following ``n2``, ...
* ``Response.duplicated`` is False for the first request's samples and True for the samples of
  every request that rode on its call (OR-ed with flags from below, if any).
* A failure of the merged call fails every request merged into it (they are the same request);
  it never affects other groups. A short answer gives the early requests full answers and the
  later ones :class:`~cachesaver.errors.IncompleteResponseError` with what was left.
* Extra samples beyond the summed ``n`` go to the first request, so a cache above keeps them.
* The upstream call runs detached: a cancelled caller does not cancel its group's call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio.lowlevel

from .background import Outcome
from .errors import IncompleteResponseError, InvalidRequestError, PipelineClosedError
from .keys import request_key, with_n
from .stage import Settled, Stage, call_model
from .typedefs import Request, Response

__all__ = ["AsyncDeduplicator"]


class _Group:
    __slots__ = ("members",)

    def __init__(self) -> None:
        self.members: list[tuple[Request, Outcome[Settled]]] = []


def _slice(response: Response, start: int, stop: int, duplicated: bool) -> Response:
    below = response.duplicated
    flags = [duplicated or bool(below[i]) if below else duplicated for i in range(start, stop)]
    return Response(
        data=response.data[start:stop],
        cached=response.cached[start:stop] if response.cached is not None else None,
        duplicated=flags,
        usage=response.usage[start:stop] if response.usage is not None else None,
    )


class AsyncDeduplicator(Stage):
    """Merges identical concurrent requests into one call with ``n`` summed."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._open: dict[tuple[str, str], _Group] = {}
        self._flush_scheduled = False
        self.merged_requests = 0

    async def _settle(self, requests: Sequence[Request]) -> list[Settled]:
        results: list[Settled] = [None] * len(requests)  # type: ignore[list-item]
        waiting: list[tuple[int, Outcome[Settled]]] = []
        for i, request in enumerate(requests):
            try:
                ident = (request_key(request), request.namespace)
            except InvalidRequestError as exc:
                results[i] = exc
                continue
            group = self._open.get(ident)
            if group is None:
                group = self._open[ident] = _Group()
            else:
                self.merged_requests += 1
            outcome: Outcome[Settled] = Outcome()
            group.members.append((request, outcome))
            waiting.append((i, outcome))
        if waiting and not self._flush_scheduled:
            self._flush_scheduled = True
            self._enter()
            try:
                await self._spawn(self._flush)
            except BaseException:
                self._exit()
                self._flush_scheduled = False
                raise
        for i, outcome in waiting:
            results[i] = await outcome.get()
        return results

    async def _flush(self) -> None:
        groups: list[_Group] = []
        try:
            # Let every request issued in this pass of the event loop join its group first.
            await anyio.lowlevel.checkpoint()
            groups = list(self._open.values())
            self._open = {}
            self._flush_scheduled = False
            merged = [with_n(g.members[0][0], sum(r.n for r, _ in g.members)) for g in groups]
            answers = await call_model(self.model, merged)
            for group, answer in zip(groups, answers):
                self._distribute(group, answer)
        except BaseException:
            if not groups:
                groups = list(self._open.values())
                self._open = {}
                self._flush_scheduled = False
            closed = PipelineClosedError("the deduplicator was closed while this request was in flight")
            for group in groups:
                for _, outcome in group.members:
                    outcome.set(closed)
            raise
        finally:
            self._exit()

    @staticmethod
    def _distribute(group: _Group, answer: Settled) -> None:
        partial = getattr(answer, "response", None) if isinstance(answer, IncompleteResponseError) else None
        if isinstance(answer, BaseException) and partial is None:
            for _, outcome in group.members:
                outcome.set(answer)
            return
        response: Response = partial if partial is not None else answer  # type: ignore[assignment]
        total = len(response.data)
        start = 0
        last = len(group.members) - 1
        for position, (request, outcome) in enumerate(group.members):
            stop = start + request.n
            if position == 0 and last == 0:
                stop = total  # a lone request keeps any extras
            elif position == 0:
                extras = total - sum(r.n for r, _ in group.members)
                stop = start + request.n + max(0, extras)
            stop = min(stop, total)
            piece = _slice(response, start, stop, duplicated=position > 0)
            if len(piece.data) < request.n:
                error = IncompleteResponseError(
                    f"the model returned {len(piece.data)} of {request.n} samples",
                    request_id=request.request_id,
                )
                error.response = piece  # type: ignore[attr-defined]
                outcome.set(error)
            else:
                outcome.set(piece)
            start = stop
