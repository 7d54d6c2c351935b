"""Tests for cachesaver.ratelimit: in-flight limit, requests and tokens per minute, on a fake clock."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from cachesaver.errors import ConfigurationError
from cachesaver.ratelimit import RateLimiter, RateLimits, estimate_tokens


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 9))
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def limiter(clock: FakeClock, **limits: object) -> RateLimiter:
    return RateLimiter(RateLimits(**limits), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


async def test_in_flight_limit_is_never_exceeded_and_is_reached() -> None:
    limit = RateLimiter(RateLimits(max_in_flight=3))
    inside = 0
    peak = 0

    async def call() -> None:
        nonlocal inside, peak
        async with limit.slot():
            inside += 1
            peak = max(peak, inside)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            inside -= 1

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(call)
    assert peak == 3
    assert limit.peak_in_flight == 3
    assert limit.slots_opened == 20
    assert limit.in_flight == 0


async def test_unlimited_in_flight_when_none() -> None:
    limit = RateLimiter(RateLimits(max_in_flight=None))
    release = anyio.Event()

    async def call() -> None:
        async with limit.slot():
            await release.wait()

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(call)
        while limit.in_flight < 50:
            await anyio.lowlevel.checkpoint()
        release.set()
    assert limit.peak_in_flight == 50


async def test_requests_per_minute_allows_a_burst_then_paces() -> None:
    clock = FakeClock()
    limit = limiter(clock, requests_per_minute=60)
    for _ in range(60):
        async with limit.slot():
            pass
    assert clock.sleeps == []  # a minute's worth may go at once
    async with limit.slot():
        pass
    async with limit.slot():
        pass
    assert clock.sleeps == [1.0, 1.0]  # then one per second
    assert clock.now == 2.0


async def test_tokens_per_minute_waits_for_enough_budget() -> None:
    clock = FakeClock()
    limit = limiter(clock, tokens_per_minute=1200)  # 20 tokens a second
    async with limit.slot(1000):
        pass
    async with limit.slot(600):  # 200 left: needs 400 more = 20 s
        pass
    assert clock.sleeps == [20.0]


async def test_settle_refunds_an_overestimate() -> None:
    clock = FakeClock()
    limit = limiter(clock, tokens_per_minute=1000)
    async with limit.slot(600) as slot:
        slot.settle(100)  # 500 of the 600 reserved come back: 900 left
    async with limit.slot(800):
        pass
    assert clock.sleeps == []


async def test_settle_charges_an_underestimate() -> None:
    clock = FakeClock()
    limit = limiter(clock, tokens_per_minute=600)  # 10 tokens a second
    async with limit.slot(100) as slot:
        slot.settle(600)  # 500 more than reserved: the budget is empty
        slot.settle(0)  # only the first settle counts
    async with limit.slot(100):
        pass
    assert clock.sleeps == [10.0]


async def test_a_call_above_a_minutes_budget_runs_once_the_bucket_is_full() -> None:
    clock = FakeClock()
    limit = limiter(clock, tokens_per_minute=600)
    async with limit.slot(5000):  # bucket full: runs now, leaves a debt of 4400
        pass
    assert clock.sleeps == []
    async with limit.slot(10):
        pass
    assert clock.sleeps == [441.0]  # (4400 + 10) tokens at 10 a second


async def test_waiters_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    limit = limiter(clock, requests_per_minute=1)
    order: list[int] = []

    async def call(i: int) -> None:
        async with limit.slot():
            order.append(i)

    async with anyio.create_task_group() as group:
        for i in range(4):
            group.start_soon(call, i)
            await anyio.lowlevel.checkpoint()
    assert order == [0, 1, 2, 3]
    assert clock.sleeps == [60.0, 60.0, 60.0]


async def test_a_cancelled_waiter_gives_its_in_flight_place_back() -> None:
    limit = RateLimiter(RateLimits(max_in_flight=1))
    release = anyio.Event()

    async def holder() -> None:
        async with limit.slot():
            await release.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(holder)
        await anyio.lowlevel.checkpoint()
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with limit.slot():
                pytest.fail("the cancelled waiter must not enter")  # pragma: no cover
        release.set()
    async with limit.slot():  # the place is free again
        pass
    assert limit.in_flight == 0


@pytest.mark.parametrize(
    "changes",
    [
        {"max_in_flight": 0},
        {"max_in_flight": 2.5},
        {"max_in_flight": True},
        {"requests_per_minute": 0},
        {"tokens_per_minute": -5},
        {"tokens_per_minute": "many"},
    ],
)
def test_bad_limits_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RateLimits(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["requests_per_minute", "tokens_per_minute"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_and_infinite_rates_are_refused(name: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=f"RateLimits.{name} must be None .no limit. or a finite number"):
        RateLimits(**{name: value})  # type: ignore[arg-type]


def test_estimate_tokens_counts_prompt_characters_and_the_completion_budget() -> None:
    messages = [{"role": "user", "content": "x" * 400}]
    assert estimate_tokens(messages, n=2, max_completion_tokens=50) == 100 + 4 + 2 * 50
    assert estimate_tokens(messages, default_completion_tokens=10) == 104 + 10
