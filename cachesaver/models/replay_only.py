"""A model that never answers: the upstream of a replay-only pipeline.

A pipeline's cache stage calls its model only for samples it does not hold, so a pipeline
built on :class:`ReplayOnlyModel` serves every request from the cache and fails every request
the cache cannot serve, with a :class:`~cachesaver.errors.CacheMissError` naming it. Nothing
ever goes to a real model.

>>> import anyio
>>> from cachesaver.typedefs import Request
>>> model = ReplayOnlyModel()
>>> try:
...     anyio.run(model.request, Request("2 + 2 = ?", request_id="q1", namespace="run-a"))
... except CacheMissError as miss:
...     print(str(miss).split(";")[0])  # doctest: +ELLIPSIS
replay-only: the cache holds too few samples for request_id 'q1' in namespace 'run-a' (1 more needed, key ..., prompt '2 + 2 = ?')
>>> len(model.misses)
1
"""

from __future__ import annotations

from typing import List

from ..errors import CacheMissError
from ..keys import request_key
from ..typedefs import Batch, Request, Response

__all__ = ["ReplayOnlyModel", "describe_miss"]

_PREVIEW_CHARS = 80


def _preview(request: Request) -> str:
    prompt = request.prompt
    if isinstance(prompt, str):
        text = prompt
    else:
        text = str(prompt[-1].get("content"))
    if len(text) > _PREVIEW_CHARS:
        text = text[: _PREVIEW_CHARS - 3] + "..."
    return text


def describe_miss(request: Request) -> str:
    """The message of the CacheMissError raised for ``request``."""
    try:
        key = request_key(request)[:12]
    except Exception:  # an unkeyable request would have failed in the cache stage first
        key = "?"
    return (
        f"replay-only: the cache holds too few samples for request_id {request.request_id!r} in "
        f"namespace {request.namespace!r} ({request.n} more needed, key {key}, prompt "
        f"{_preview(request)!r}); run once without replay-only to fill the cache, or use the "
        "cache directory the original run used"
    )


class ReplayOnlyModel:
    """Fails every request it receives with a CacheMissError naming the request.

    ``replay_only = True`` tells the cache stage that a miss costs nothing here, so on a
    read-only cache it still reaches this model (and its CacheMissError) rather than a
    StoreError.

    ``misses`` lists the requests that reached it, in order (``request.n`` is the number of
    samples the cache was short of). Implements both model protocols; in a batch every
    request fails on its own.
    """

    cache_identity = None
    """Its requests are the whole of what it answers: no model identity is added to keys."""

    replay_only = True

    def __init__(self) -> None:
        self.misses: List[Request] = []

    async def request(self, request: Request) -> Response:
        self.misses.append(request)
        raise CacheMissError(describe_miss(request))

    async def batch_request(self, batch: Batch) -> List[Response]:
        failures: List[Response] = []
        for request in batch.requests:
            self.misses.append(request)
            failures.append(CacheMissError(describe_miss(request)))  # type: ignore[arg-type]
        return failures
