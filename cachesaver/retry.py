"""Retrying transient backend failures with exponential backoff, jitter and Retry-After.

:func:`retry_call` runs an async callable and, when it raises
:class:`~cachesaver.errors.TransientBackendError` (rate limit, overload, time-out, dropped
connection, a reply that is not valid JSON), sleeps and calls it again, up to ``policy.max_attempts`` calls in all. Guarantees:

* Only ``TransientBackendError`` is retried. Permanent errors, programming errors and
  cancellation propagate from the first call that raises them.
* The wait before retry *k* (k = 1, 2, ...) is ``initial_delay_s * multiplier ** (k - 1)``,
  capped at ``max_delay_s``, then shrunk by a random fraction of up to ``jitter``; when the
  error carries ``retry_after_s`` (from a ``Retry-After`` header) the wait is at least that,
  capped at ``max_retry_after_s``.
* When every attempt failed, the last error is raised again as a ``TransientBackendError``
  that says how many attempts were made, with the same ``status``, ``request_id``,
  ``provider_request_id`` and ``retry_after_s``, chained to the original.

``sleep`` and ``random`` are injectable, so tests observe the exact waits without waiting.

>>> import anyio
>>> from cachesaver.errors import TransientBackendError
>>> waits, outcomes = [], [TransientBackendError("busy", retry_after_s=3.0), "ok"]
>>> async def flaky():
...     outcome = outcomes.pop(0)
...     if isinstance(outcome, Exception):
...         raise outcome
...     return outcome
>>> async def fake_sleep(seconds):
...     waits.append(seconds)
>>> anyio.run(lambda: retry_call(flaky, RetryPolicy(initial_delay_s=1.0), sleep=fake_sleep))
'ok'
>>> waits
[3.0]
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from ._runtime.checks import check_seconds
from .errors import ConfigurationError, TransientBackendError

__all__ = ["RetryPolicy", "retry_call"]

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[object]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient failures.

    Parameters:
        max_attempts: calls in all, the first included (1 disables retrying).
        initial_delay_s: the wait before the first retry, before jitter.
        multiplier: each further wait is this many times the previous one.
        max_delay_s: no backoff wait exceeds this (Retry-After may, up to ``max_retry_after_s``).
        jitter: the fraction (0 to 1) by which a wait may be randomly shortened, so that many
            clients failing together do not retry together.
        max_retry_after_s: the longest ``Retry-After`` honoured; longer ones are capped.

    Every duration is a finite number of seconds >= 0 and ``multiplier`` a finite number >= 1;
    anything else (NaN, infinity) raises :class:`~cachesaver.errors.ConfigurationError`.
    """

    max_attempts: int = 6
    initial_delay_s: float = 0.5
    multiplier: float = 2.0
    max_delay_s: float = 30.0
    jitter: float = 0.5
    max_retry_after_s: float = 120.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be an int >= 1 (1 disables retries), got {self.max_attempts!r}"
            )
        for name in ("initial_delay_s", "max_delay_s", "max_retry_after_s"):
            check_seconds(f"RetryPolicy.{name}", getattr(self, name))
        multiplier = self.multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not 1 <= multiplier < math.inf:
            raise ConfigurationError(f"RetryPolicy.multiplier must be a finite number >= 1, got {multiplier!r}")
        if not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"RetryPolicy.jitter must be between 0 and 1, got {self.jitter!r}")

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    def delay_s(self, retry: int, error: TransientBackendError, random: Callable[[], float]) -> float:
        """The wait before retry number ``retry`` (1 for the first retry) after ``error``."""
        backoff = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** (retry - 1))
        backoff *= 1.0 - self.jitter * random()
        retry_after = error.retry_after_s
        if retry_after is not None and retry_after > 0:
            return max(backoff, min(float(retry_after), self.max_retry_after_s))
        return backoff


async def retry_call(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Sleep = anyio.sleep,
    random: Callable[[], float] = _random.random,
    on_retry: Callable[[int, TransientBackendError, float], None] | None = None,
) -> T:
    """Await ``call()`` until it succeeds, retrying transient failures as ``policy`` says.

    ``on_retry(retry, error, delay_s)`` is called before each wait, for logging or counting.
    """
    attempt = 1
    while True:
        try:
            return await call()
        except TransientBackendError as error:
            if attempt >= policy.max_attempts:
                if policy.max_attempts == 1:
                    raise
                raise TransientBackendError(
                    f"{error} (gave up after {attempt} attempts; raise RetryPolicy.max_attempts "
                    "to keep trying longer)",
                    status=error.status,
                    request_id=error.request_id,
                    retry_after_s=error.retry_after_s,
                    provider_request_id=error.provider_request_id,
                ) from error
            delay = policy.delay_s(attempt, error, random)
            if on_retry is not None:
                on_retry(attempt, error, delay)
            await sleep(delay)
            attempt += 1
