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
* With ``across_calls=False`` only the requests of one ``batch_request`` merge, and each call
  goes to the model on its own (the caller's task runs it): this is how pipelines merge the
  identical requests that waited in one batch window without joining separate batches.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._runtime.collector import PassCollector
from .._runtime.jobs import DETACHED
from ..errors import IncompleteResponseError, InvalidRequestError
from ..keys import request_key, with_n
from ..typedefs import Model, Request, Response
from .base import Settled, Stage, call_model

__all__ = ["AsyncDeduplicator"]


def _slice(response: Response, start: int, stop: int, duplicated: bool) -> Response:
    below = response.duplicated
    flags = [duplicated or bool(below[i]) if below else duplicated for i in range(start, stop)]
    return Response._trusted(
        response.data[start:stop],
        response.cached[start:stop] if response.cached is not None else None,
        flags,
        response.usage[start:stop] if response.usage is not None else None,
    )


class AsyncDeduplicator(Stage):
    """Merges identical concurrent requests into one call with ``n`` summed."""

    def __init__(self, model: Model, *, across_calls: bool = True) -> None:
        super().__init__(model)
        self.across_calls = across_calls
        self._passes: PassCollector[Request] = PassCollector(self, self._merge_and_call)
        self.merged_requests = 0
        self._whole_passes = False
        """Set by a pipeline whose cache stage hands this stage each pass of the event loop in
        one call, from a background job: such a call is merged and sent at once, in that job."""

    async def _settle(self, requests: Sequence[Request]) -> list[Settled]:
        if not self.across_calls:
            if len(requests) == 1:  # nothing to merge with
                return await call_model(self.model, requests, late=self._late_answers)
            return await self._merge_and_call(list(requests))
        if self._whole_passes and DETACHED.get():
            self._enter()
            try:
                return await self._merge_and_call(list(requests))
            finally:
                self._exit()
        outcomes = await self._passes.submit(requests)
        return [await outcome.get() for outcome in outcomes]

    async def _merge_and_call(self, requests: list[Request]) -> list[Settled]:
        results: list[Settled] = [None] * len(requests)  # type: ignore[list-item]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, request in enumerate(requests):
            try:
                ident = (request_key(request), request.namespace)
            except InvalidRequestError as exc:
                results[i] = exc
                continue
            members = groups.get(ident)
            if members is None:
                groups[ident] = [i]
            else:
                members.append(i)
                self.merged_requests += 1
        member_lists = list(groups.values())
        merged = [
            with_n(requests[m[0]], sum(requests[i].n for i in m)) if len(m) > 1 else requests[m[0]]
            for m in member_lists
        ]
        answers = await call_model(self.model, merged, late=self._late_answers)
        for members, answer in zip(member_lists, answers):
            for i, piece in zip(members, _distribute([requests[i] for i in members], answer)):
                results[i] = piece
        return results


def _distribute(members: list[Request], answer: Settled) -> list[Settled]:
    partial = getattr(answer, "response", None) if isinstance(answer, IncompleteResponseError) else None
    if isinstance(answer, BaseException) and partial is None:
        return [answer] * len(members)
    response: Response = partial if partial is not None else answer  # type: ignore[assignment]
    if len(members) == 1 and partial is None:
        if response.duplicated is not None and len(response.duplicated) == len(response.data):
            return [response]  # its flags are already explicit: nothing to add
        return [_slice(response, 0, len(response.data), duplicated=False)]
    total = len(response.data)
    extras = max(0, total - sum(r.n for r in members))
    out: list[Settled] = []
    start = 0
    for position, request in enumerate(members):
        stop = min(total, start + request.n + (extras if position == 0 else 0))
        piece = _slice(response, start, stop, duplicated=position > 0)
        if len(piece.data) < request.n:
            error = IncompleteResponseError(
                f"the model returned {len(piece.data)} of {request.n} samples",
                request_id=request.request_id,
            )
            error.response = piece  # type: ignore[attr-defined]
            out.append(error)
        else:
            out.append(piece)
        start = stop
    return out
