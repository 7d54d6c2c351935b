"""Outcome and BackgroundTasks: work that outlives its caller, with an owner and a shutdown."""

from __future__ import annotations

import logging

import anyio
import pytest

from cachesaver.errors import BackgroundJobError

from cachesaver._runtime.jobs import BackgroundTasks, Outcome
from cachesaver.errors import PipelineClosedError


# -- Outcome --------------------------------------------------------------------------------


async def test_outcome_delivers_a_value_to_every_waiter() -> None:
    outcome: Outcome[int] = Outcome()
    got: list[int] = []

    async def wait() -> None:
        got.append(await outcome.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(wait)
            await anyio.sleep(0)
            assert not outcome.done
            outcome.set(7)
    assert got == [7, 7, 7]
    assert outcome.done and outcome.result() == 7


async def test_outcome_delivers_an_error() -> None:
    outcome: Outcome[int] = Outcome()
    outcome.fail(KeyError("boom"))
    with pytest.raises(KeyError):
        await outcome.get()
    with pytest.raises(KeyError):
        outcome.result()


async def test_outcome_is_delivered_once() -> None:
    outcome: Outcome[int] = Outcome()
    outcome.set(1)
    outcome.set(2)
    outcome.fail(RuntimeError("late"))
    assert await outcome.get() == 1
    failed: Outcome[int] = Outcome()
    failed.fail(ValueError("first"))
    failed.set(3)
    with pytest.raises(ValueError, match="first"):
        await failed.get()


async def test_a_cancelled_waiter_does_not_disturb_the_others() -> None:
    outcome: Outcome[str] = Outcome()
    got: list[str] = []

    async def wait() -> None:
        got.append(await outcome.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as doomed:
                    doomed.start_soon(wait)
                    await anyio.sleep(0)
                    scope.cancel()
            group.start_soon(wait)
            await anyio.sleep(0)
            outcome.set("ok")
    assert got == ["ok"]


# -- BackgroundTasks ------------------------------------------------------------------------


async def test_a_job_runs_to_completion_when_its_spawner_is_cancelled() -> None:
    tasks = BackgroundTasks("test")
    started, release, finished = anyio.Event(), anyio.Event(), anyio.Event()

    async def job() -> None:
        started.set()
        await release.wait()
        finished.set()

    with anyio.fail_after(5):
        with anyio.CancelScope() as scope:
            await tasks.spawn(job)
            await started.wait()
            scope.cancel()
            await anyio.sleep_forever()
        assert scope.cancelled_caught
        release.set()
        await finished.wait()
        await tasks.aclose()


async def test_a_failing_job_is_logged_spares_its_siblings_and_is_raised_at_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = BackgroundTasks("test")
    release, finished = anyio.Event(), anyio.Event()

    async def survivor() -> None:
        await release.wait()
        finished.set()

    async def failing() -> None:
        raise RuntimeError("job went wrong")

    with anyio.fail_after(5), caplog.at_level(logging.ERROR, logger="cachesaver"):
        await tasks.spawn(survivor)
        await tasks.spawn(failing)
        for _ in range(5):
            await anyio.sleep(0)
        release.set()
        await finished.wait()
        with pytest.raises(BackgroundJobError, match="job went wrong") as caught:
            await tasks.aclose()
        await tasks.aclose()  # raised once
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert any("job went wrong" in (r.exc_text or "") + r.getMessage() for r in caplog.records)
    assert tasks.running_jobs == 0


async def test_aclose_waits_for_running_jobs() -> None:
    tasks = BackgroundTasks("test")
    done: list[int] = []

    async def job(i: int) -> None:
        await anyio.sleep(0.01)
        done.append(i)

    with anyio.fail_after(5):
        for i in range(3):
            await tasks.spawn(job, i)
        await tasks.aclose()
    assert sorted(done) == [0, 1, 2]
    assert tasks.running_jobs == 0


async def test_aclose_with_a_timeout_cancels_a_stuck_job() -> None:
    tasks = BackgroundTasks("test")
    cancelled = anyio.Event()

    async def stuck() -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    with anyio.fail_after(5):
        await tasks.spawn(stuck)
        await anyio.sleep(0)
        await tasks.aclose(timeout_s=0.01)
    assert cancelled.is_set()


async def test_spawn_after_aclose_is_a_pipeline_closed_error() -> None:
    tasks = BackgroundTasks("test")

    async def job() -> None:
        pass

    await tasks.spawn(job)
    await tasks.aclose()
    with pytest.raises(PipelineClosedError):
        await tasks.spawn(job)


async def test_aclose_without_any_job_returns() -> None:
    tasks = BackgroundTasks("test")
    with anyio.fail_after(5):
        await tasks.aclose()
        await tasks.aclose()


def test_survives_its_event_loop_ending() -> None:
    """A script may call ``asyncio.run`` twice with one object; the second loop gets a fresh group."""
    tasks = BackgroundTasks("test")
    ran: list[int] = []

    async def job(i: int) -> None:
        ran.append(i)

    async def first() -> None:
        await tasks.spawn(job, 1)
        await anyio.sleep(0.01)

    async def second() -> None:
        with anyio.fail_after(5):
            await tasks.spawn(job, 2)
            await anyio.sleep(0.01)
            await tasks.aclose()

    anyio.run(first)
    anyio.run(second)
    assert ran == [1, 2]


def test_runs_under_trio() -> None:
    tasks = BackgroundTasks("test")
    outcome: Outcome[int] = Outcome()

    async def job() -> None:
        await anyio.sleep(0)
        outcome.set(42)

    async def main() -> int:
        with anyio.fail_after(5):
            await tasks.spawn(job)
            value = await outcome.get()
            await tasks.aclose()
            return value

    assert anyio.run(main, backend="trio") == 42
