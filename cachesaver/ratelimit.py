"""Limits on upstream calls: how many in flight, and optionally requests and tokens per minute.

A :class:`RateLimiter` hands out *slots*; an upstream call runs inside one::

    async with limiter.slot(estimated_tokens=1200) as slot:
        completion = await sdk_call()
        slot.settle(actual_tokens=completion_tokens_used)

Guarantees:

* At most ``max_in_flight`` slots are open at once (None: no limit).
* Slots open at no more than ``requests_per_minute`` on average, with at most a minute's worth
  in a burst (a token bucket that refills continuously); likewise ``tokens_per_minute`` for the
  estimated tokens. A call estimated above a whole minute's budget still runs once the bucket
  is full, and leaves it in debt, so a huge call cannot block forever.
* ``settle`` corrects the token bucket by the difference between the estimate and the tokens
  actually used, so the long-run rate follows real usage.
* Waiters are served in arrival order; cancelling a waiter gives back nothing it did not take.

``clock`` and ``sleep`` are injectable, so tests can drive the limiter with a fake clock.

>>> import anyio
>>> limiter = RateLimiter(RateLimits(max_in_flight=2))
>>> async def one():
...     async with limiter.slot():
...         await anyio.sleep(0)
>>> async def many():
...     async with anyio.create_task_group() as tg:
...         for _ in range(5):
...             tg.start_soon(one)
>>> anyio.run(many)
>>> limiter.peak_in_flight
2
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from .errors import ConfigurationError

__all__ = ["RateLimiter", "RateLimits", "Slot", "estimate_tokens"]


@dataclass(frozen=True)
class RateLimits:
    """Limits on upstream calls; None means unlimited (NaN and infinity are refused).

    Parameters:
        max_in_flight: upstream calls running at the same time.
        requests_per_minute: upstream calls started per minute.
        tokens_per_minute: estimated (then actual) prompt + completion tokens per minute.
    """

    max_in_flight: int | None = 32
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    def __post_init__(self) -> None:
        value = self.max_in_flight
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigurationError(
                f"RateLimits.max_in_flight must be None or an int >= 1, got {value!r}"
            )
        for name in ("requests_per_minute", "tokens_per_minute"):
            rate = getattr(self, name)
            if rate is not None and (
                isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf
            ):
                raise ConfigurationError(
                    f"RateLimits.{name} must be None (no limit) or a finite number > 0, got {rate!r}"
                )


class _Bucket:
    """A token bucket holding up to one minute's budget, refilled continuously."""

    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate_per_s = float(per_minute) / 60.0
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.rate_per_s)
        self.updated = now

    def wait_s(self, cost: float) -> float:
        needed = min(cost, self.capacity)
        if self.level >= needed:
            return 0.0
        return (needed - self.level) / self.rate_per_s


class Slot:
    """An open slot; call :meth:`settle` with the tokens the call really used, if known."""

    def __init__(self, limiter: RateLimiter, estimated_tokens: float) -> None:
        self._limiter = limiter
        self.estimated_tokens = estimated_tokens
        self.actual_tokens: float | None = None

    def settle(self, actual_tokens: float) -> None:
        """Correct the token budget by ``estimated - actual`` (once; later calls are ignored)."""
        if self.actual_tokens is not None:
            return
        self.actual_tokens = actual_tokens
        bucket = self._limiter._tokens
        if bucket is not None:
            bucket.level = min(bucket.capacity, bucket.level + self.estimated_tokens - actual_tokens)


class RateLimiter:
    """Enforces :class:`RateLimits` on the calls that run inside its slots."""

    def __init__(
        self,
        limits: RateLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
    ) -> None:
        self.limits = limits if limits is not None else RateLimits()
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._requests = _Bucket(self.limits.requests_per_minute, now) if self.limits.requests_per_minute else None
        self._tokens = _Bucket(self.limits.tokens_per_minute, now) if self.limits.tokens_per_minute else None
        self._in_flight_limit = (
            anyio.Semaphore(self.limits.max_in_flight) if self.limits.max_in_flight is not None else None
        )
        self._queue = anyio.Lock() if (self._requests or self._tokens) else None
        self.in_flight = 0
        self.peak_in_flight = 0
        self.slots_opened = 0
        self.waited_s = 0.0

    async def _take_budget(self, estimated_tokens: float) -> None:
        if self._queue is None:
            return
        async with self._queue:
            while True:
                now = self._clock()
                wait = 0.0
                for bucket, cost in ((self._requests, 1.0), (self._tokens, estimated_tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_s(cost))
                if wait <= 0:
                    if self._requests is not None:
                        self._requests.level -= 1.0
                    if self._tokens is not None:
                        self._tokens.level -= estimated_tokens
                    return
                self.waited_s += wait
                await self._sleep(wait)

    @asynccontextmanager
    async def slot(self, estimated_tokens: float = 0) -> AsyncIterator[Slot]:
        """Wait for room under every limit, then hold one in-flight place until exit."""
        if self._in_flight_limit is not None:
            await self._in_flight_limit.acquire()
        try:
            if self._queue is not None:
                await self._take_budget(float(estimated_tokens))
            self.in_flight += 1
            self.slots_opened += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield Slot(self, float(estimated_tokens))
            finally:
                self.in_flight -= 1
        finally:
            if self._in_flight_limit is not None:
                self._in_flight_limit.release()


def estimate_tokens(
    messages: Sequence[Mapping[str, Any]],
    *,
    n: int = 1,
    max_completion_tokens: int | None = None,
    default_completion_tokens: int = 256,
) -> int:
    """A rough upper estimate of the tokens a chat call uses: ~4 characters a prompt token,
    plus ``max_completion_tokens`` (or ``default_completion_tokens``) for each of ``n`` samples."""
    characters = 0
    for message in messages:
        content = message.get("content")
        characters += len(content) if isinstance(content, str) else len(str(content))
    prompt = characters // 4 + 4 * len(messages)
    completion = max_completion_tokens if max_completion_tokens is not None else default_completion_tokens
    return prompt + n * completion
