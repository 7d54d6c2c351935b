"""Tests for cachesaver.retry: which failures are retried, how long it waits, what it raises."""

from __future__ import annotations

import anyio
import pytest

from _support import Sleeps

from cachesaver.errors import ConfigurationError, PermanentBackendError, TransientBackendError
from cachesaver.retry import RetryPolicy, retry_call


class Script:
    """An async callable that raises or returns the scripted outcomes in order."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def busy(retry_after_s: float | None = None) -> TransientBackendError:
    return TransientBackendError(
        "busy", status=503, request_id="q1", retry_after_s=retry_after_s, provider_request_id="req-1"
    )


NO_JITTER = RetryPolicy(initial_delay_s=0.5, multiplier=2.0, max_delay_s=30.0, jitter=0.0)


async def test_success_on_first_call_never_sleeps() -> None:
    sleeps, call = Sleeps(), Script("ok")
    assert await retry_call(call, NO_JITTER, sleep=sleeps) == "ok"
    assert (call.calls, sleeps.waits) == (1, [])


async def test_transient_failures_back_off_exponentially_then_succeed() -> None:
    sleeps, call = Sleeps(), Script(busy(), busy(), busy(), "ok")
    assert await retry_call(call, NO_JITTER, sleep=sleeps) == "ok"
    assert call.calls == 4
    assert sleeps.waits == [0.5, 1.0, 2.0]


async def test_backoff_is_capped_at_max_delay() -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay_s=10, multiplier=3, max_delay_s=25, jitter=0)
    sleeps, call = Sleeps(), Script(busy(), busy(), busy(), "ok")
    await retry_call(call, policy, sleep=sleeps)
    assert sleeps.waits == [10, 25, 25]


async def test_jitter_shortens_waits_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(initial_delay_s=4.0, jitter=0.5)
    sleeps = Sleeps()
    await retry_call(Script(busy(), "ok"), policy, sleep=sleeps, random=lambda: 1.0)
    await retry_call(Script(busy(), "ok"), policy, sleep=sleeps, random=lambda: 0.0)
    assert sleeps.waits == [2.0, 4.0]


async def test_retry_after_is_honoured_as_a_minimum_wait() -> None:
    sleeps = Sleeps()
    await retry_call(Script(busy(retry_after_s=7.0), "ok"), NO_JITTER, sleep=sleeps)
    # A Retry-After shorter than the backoff does not shorten it.
    await retry_call(Script(busy(retry_after_s=0.1), "ok"), NO_JITTER, sleep=sleeps)
    assert sleeps.waits == [7.0, 0.5]


async def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(jitter=0.0, max_retry_after_s=60.0)
    sleeps = Sleeps()
    await retry_call(Script(busy(retry_after_s=3600.0), "ok"), policy, sleep=sleeps)
    assert sleeps.waits == [60.0]


async def test_permanent_errors_are_raised_at_once() -> None:
    sleeps = Sleeps()
    error = PermanentBackendError("bad key", status=401, request_id="q1")
    call = Script(error, "never")
    with pytest.raises(PermanentBackendError) as raised:
        await retry_call(call, NO_JITTER, sleep=sleeps)
    assert raised.value is error
    assert (call.calls, sleeps.waits) == (1, [])


async def test_other_exceptions_are_not_retried() -> None:
    call = Script(KeyError("bug"), "never")
    with pytest.raises(KeyError):
        await retry_call(call, NO_JITTER, sleep=Sleeps())
    assert call.calls == 1


async def test_giving_up_raises_a_transient_error_saying_how_many_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, jitter=0.0)
    last = busy(retry_after_s=1.0)
    call = Script(busy(), busy(), last)
    with pytest.raises(TransientBackendError, match="gave up after 3 attempts") as raised:
        await retry_call(call, policy, sleep=Sleeps())
    assert call.calls == 3
    error = raised.value
    assert (error.status, error.request_id, error.retry_after_s) == (503, "q1", 1.0)
    assert error.provider_request_id == "req-1"
    assert error.__cause__ is last


async def test_a_single_attempt_policy_raises_the_original_error() -> None:
    error = busy()
    with pytest.raises(TransientBackendError) as raised:
        await retry_call(Script(error), RetryPolicy.none(), sleep=Sleeps())
    assert raised.value is error


async def test_on_retry_sees_each_retry_and_its_wait() -> None:
    seen: list[tuple[int, float]] = []
    await retry_call(
        Script(busy(), busy(), "ok"), NO_JITTER, sleep=Sleeps(), on_retry=lambda k, e, d: seen.append((k, d))
    )
    assert seen == [(1, 0.5), (2, 1.0)]


async def test_cancellation_during_backoff_stops_retrying() -> None:
    call = Script(busy(), "never")
    with anyio.CancelScope() as scope:
        async def cancel_while_sleeping(seconds: float) -> None:
            scope.cancel()
            await anyio.sleep(seconds)

        await retry_call(call, NO_JITTER, sleep=cancel_while_sleeping)
    assert scope.cancelled_caught
    assert call.calls == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"max_attempts": 0},
        {"max_attempts": 1.5},
        {"max_attempts": True},
        {"initial_delay_s": -1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"max_retry_after_s": -2},
    ],
)
def test_bad_policies_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["initial_delay_s", "max_delay_s", "max_retry_after_s", "multiplier"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_and_infinite_policies_are_refused(name: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=f"RetryPolicy.{name} must be a finite number"):
        RetryPolicy(**{name: value})  # type: ignore[arg-type]
