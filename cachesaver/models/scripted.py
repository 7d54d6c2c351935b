"""A scripted in-process model that records what it was asked: the fake for tests and demos.

``ScriptedModel`` answers every request with distinct, predictable samples
(``"<prompt-tag>#<k>"``, k counting per prompt from 0), records every call, batch size and the
peak number of calls in flight, and can be told to be slow, to fail for chosen prompts, or to
return fewer samples than asked. It implements both model protocols.

>>> import anyio
>>> from cachesaver.typedefs import Request
>>> model = ScriptedModel()
>>> anyio.run(model.request, Request("hello", n=2)).data
['hello#0', 'hello#1']
>>> model.calls, model.samples_generated
(1, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..errors import BackendError
from ..typedefs import Batch, Request, Response

__all__ = ["RecordedCall", "ScriptedModel"]


@dataclass(frozen=True)
class RecordedCall:
    """One call the model received: the requests, in order (a single request is a batch of one)."""

    requests: tuple[Request, ...]
    batched: bool


def _prompt_tag(request: Request) -> str:
    prompt = request.prompt
    if isinstance(prompt, str):
        return prompt
    return str(prompt[-1].get("content"))


@dataclass
class ScriptedModel:
    """A deterministic fake model.

    Parameters:
        latency_s: seconds each call takes (anyio.sleep; 0 still yields to the loop).
        fail: prompts (the string, or the last message's content) that raise ``BackendError``.
        fail_with: a callable ``request -> Exception | None`` for finer failure scripts.
        short_by: return this many samples fewer than asked (never below zero).
        with_usage: attach a usage mapping to every sample.
        sample: a callable ``(request, k) -> sample`` replacing the default ``"<tag>#<k>"``.
        keep_log: True (the default) records every call in ``log``, ``batch_sizes`` and
            ``n_requested``, and numbers samples per prompt tag. False keeps only counters, so a
            long run holds constant memory (benchmarks use it to measure the pipeline, not the
            fake): ``log``, ``batch_sizes`` and ``n_requested`` stay empty, and k counts the
            samples the model has produced for all prompts together (``"<tag>#<k>"`` is still
            distinct for every sample, and the same in every run that makes the same calls in
            the same order).

    Guarantees: the k-th sample ever produced for a prompt tag is the same in every run, so
    tests can predict exactly what an upstream call returns; ``calls`` counts upstream calls
    (one per ``request``, one per ``batch_request``), ``requests_seen`` counts the requests in
    them, ``batch_sizes`` lists each batch's size, ``peak_in_flight`` is the most calls that
    were running at once. ``calls``, ``requests_seen``, ``samples_generated`` and
    ``peak_in_flight`` are counted with either ``keep_log``.
    """

    cache_identity = None
    """Its requests are the whole of what it answers: no model identity is added to keys."""

    latency_s: float = 0.0
    fail: frozenset[str] | set[str] = frozenset()
    fail_with: Callable[[Request], BaseException | None] | None = None
    short_by: int = 0
    with_usage: bool = False
    sample: Callable[[Request, int], Any] | None = None
    keep_log: bool = True
    log: list[RecordedCall] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    n_requested: list[int] = field(default_factory=list)
    samples_generated: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    _counters: dict[str, int] = field(default_factory=dict)
    _calls: int = field(default=0, init=False, repr=False)
    _requests_seen: int = field(default=0, init=False, repr=False)

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def requests_seen(self) -> int:
        return self._requests_seen

    def _answer(self, request: Request) -> Response | BaseException:
        tag = _prompt_tag(request)
        if self.keep_log:
            self.n_requested.append(request.n)
        if tag in self.fail:
            return BackendError(f"scripted failure for prompt {tag!r}", request_id=request.request_id)
        if self.fail_with is not None:
            error = self.fail_with(request)
            if error is not None:
                return error
        count = max(0, request.n - self.short_by)
        if self.keep_log:
            start = self._counters.get(tag, 0)
            self._counters[tag] = start + count
        else:
            start = self.samples_generated
        self.samples_generated += count
        if self.sample is not None:
            data = [self.sample(request, k) for k in range(start, start + count)]
        else:
            data = [f"{tag}#{k}" for k in range(start, start + count)]
        usage = None
        if self.with_usage:
            usage = [{"prompt_tokens": len(tag.split()), "completion_tokens": 2} for _ in data]
        return Response(data=data, usage=usage)

    async def _enter(self, requests: tuple[Request, ...], batched: bool) -> None:
        self._calls += 1
        self._requests_seen += len(requests)
        if self.keep_log:
            self.log.append(RecordedCall(requests, batched))
            self.batch_sizes.append(len(requests))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await anyio.sleep(self.latency_s)
        except BaseException:
            self.in_flight -= 1
            raise

    async def request(self, request: Request) -> Response:
        await self._enter((request,), batched=False)
        try:
            answer = self._answer(request)
        finally:
            self.in_flight -= 1
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def batch_request(self, batch: Batch) -> list[Response]:
        requests = tuple(batch.requests)
        await self._enter(requests, batched=True)
        try:
            return [self._answer(r) for r in requests]  # type: ignore[misc]
        finally:
            self.in_flight -= 1
