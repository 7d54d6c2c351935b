"""Fakes and helpers shared by the core test files (a plain module, imported by tests).

Every fake here is a real model (``request`` / ``batch_request``) that records what it saw;
none of them patches cachesaver.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

import anyio

from cachesaver.models import ScriptedModel
from cachesaver.typedefs import Batch, Request, Response


@dataclass(frozen=True)
class DecodingRequest(Request):
    """The seed notebook's Request subclass: decoding parameters with defaults."""

    temperature: float = 1
    max_completion_tokens: int = None  # type: ignore[assignment]


class JitterModel:
    """Wraps a model and sleeps a seeded random time (up to ``max_s``) before each call, so
    calls finish in a different order than they started."""

    def __init__(self, inner: Any, seed: int, max_s: float = 0.01) -> None:
        self.inner = inner
        self.rng = random.Random(seed)
        self.max_s = max_s

    async def request(self, request: Request) -> Response:
        await anyio.sleep(self.rng.random() * self.max_s)
        return await self.inner.request(request)

    async def batch_request(self, batch: Batch) -> list[Response]:
        await anyio.sleep(self.rng.random() * self.max_s)
        return await self.inner.batch_request(batch)


class GateModel:
    """A model whose calls block until :meth:`release` (or until ``open_at`` calls are in flight).

    ``entered`` is set as soon as the first call arrives; ``inner`` produces the samples once
    the gate opens, so what a call returns is decided after the gate.
    """

    def __init__(self, inner: ScriptedModel | None = None, open_at: int | None = None) -> None:
        self.inner = inner if inner is not None else ScriptedModel()
        self.open_at = open_at
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.calls = 0
        self.finished = 0

    def release(self) -> None:
        self.gate.set()

    async def _wait(self) -> None:
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.entered.set()
        if self.open_at is not None and self.in_flight >= self.open_at:
            self.gate.set()
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1

    async def request(self, request: Request) -> Response:
        await self._wait()
        answer = await self.inner.request(request)
        self.finished += 1
        return answer

    async def batch_request(self, batch: Batch) -> list[Response]:
        await self._wait()
        answers = await self.inner.batch_request(batch)
        self.finished += 1
        return answers


class SingleOnlyModel:
    """A model with ``request`` only (no ``batch_request``)."""

    def __init__(self, inner: ScriptedModel | None = None) -> None:
        self.inner = inner if inner is not None else ScriptedModel()

    async def request(self, request: Request) -> Response:
        return await self.inner.request(request)


class BatchOnlyModel:
    """A model with ``batch_request`` only, as a local batch model has."""

    def __init__(self, inner: ScriptedModel | None = None) -> None:
        self.inner = inner if inner is not None else ScriptedModel()

    async def batch_request(self, batch: Batch) -> list[Response]:
        return await self.inner.batch_request(batch)


class ShortOnceModel:
    """Returns ``short_by`` samples too few on its first call for each prompt, then full answers."""

    def __init__(self, short_by: int) -> None:
        self.short_by = short_by
        self.inner = ScriptedModel()
        self.seen: set[Any] = set()

    async def request(self, request: Request) -> Response:
        if request.prompt in self.seen:
            return await self.inner.request(request)
        self.seen.add(request.prompt)
        count = request.n - self.short_by
        if count < 1:
            return Response(data=[])
        return await self.inner.request(dataclasses.replace(request, n=count))


@dataclass
class RecordingLedger:
    """A ledger fake that records every hook call."""

    upstream: list[tuple[Request, Any]] = field(default_factory=list)
    served: list[tuple[Request, Response]] = field(default_factory=list)

    def record_upstream(self, request: Request, outcome: Any) -> None:
        self.upstream.append((request, outcome))

    def record_served(self, request: Request, response: Response) -> None:
        self.served.append((request, response))


async def gather(*calls: Any) -> list[Any]:
    """Run the zero-argument async callables concurrently; their results in order."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = await calls[i]()

    async with anyio.create_task_group() as group:
        for i in range(len(calls)):
            group.start_soon(one, i)
    return results


async def wait_until(predicate: Any, limit_s: float = 5.0) -> None:
    """Yield to the loop until ``predicate()`` holds (a deadlock guard bounds the wait)."""
    with anyio.fail_after(limit_s):
        while not predicate():
            await anyio.sleep(0.001)
