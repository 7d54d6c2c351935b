"""StoreThread: the one thread a store's blocking calls run on, awaited under asyncio and trio."""

from __future__ import annotations

import gc
import threading

import anyio
import anyio.lowlevel
import pytest
from _support import wait_until

from cachesaver.errors import StoreError
from cachesaver.store.threads import StoreThread

BACKENDS = ["asyncio", "trio"]


@pytest.fixture
def thread():
    running = StoreThread()
    yield running
    running.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_run_in_order_on_one_thread_that_is_not_the_loop(thread: StoreThread, backend: str) -> None:
    seen: list[tuple[int, threading.Thread]] = []

    def record(i: int) -> int:
        seen.append((i, threading.current_thread()))
        return i * 10

    async def main() -> list[int]:
        results = [await thread.run(record, 0)]
        async with anyio.create_task_group() as group:  # concurrent callers are served in turn
            for i in range(1, 6):
                group.start_soon(thread.run, record, i)
        results.append(await thread.run(record, 6))
        return results

    assert anyio.run(main, backend=backend) == [0, 60]
    threads = {t for _, t in seen}
    assert len(threads) == 1 and threading.current_thread() not in threads
    assert [i for i, _ in seen][0] == 0 and [i for i, _ in seen][-1] == 6
    assert thread.call(threading.current_thread) in threads  # the plain-code path: same thread


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_exception_reaches_the_awaiting_caller(thread: StoreThread, backend: str) -> None:
    def fail() -> None:
        raise ValueError("disk says no")

    async def main() -> None:
        with pytest.raises(ValueError, match="disk says no"):
            await thread.run(fail)
        assert await thread.run(lambda: "still serving") == "still serving"

    anyio.run(main, backend=backend)
    with pytest.raises(ValueError, match="disk says no"):
        thread.call(fail)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_caller_waits_for_a_started_call_and_gets_its_result(thread: StoreThread, backend: str) -> None:
    """As ``anyio.to_thread.run_sync`` by default: the result of a started write is never lost."""
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []
    received: list[str] = []

    def write() -> str:
        started.set()
        release.wait(5)
        finished.append("written")
        return "indices"

    async def main() -> None:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                scope = anyio.CancelScope()

                async def caller() -> None:
                    with scope:
                        received.append(await thread.run(write))
                        await anyio.sleep(0)  # the cancellation arrives at the next checkpoint
                        received.append("not reached")

                group.start_soon(caller)
                await wait_until(started.is_set)
                scope.cancel()
                for _ in range(20):  # loop turns in which an abandoning caller would give up
                    await anyio.lowlevel.checkpoint()
                assert received == [] and finished == []  # still waiting for the call
                release.set()
        assert scope.cancelled_caught

    anyio.run(main, backend=backend)
    assert finished == ["written"] and received == ["indices"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_caller_cancelled_before_the_call_starts_does_not_start_it(thread: StoreThread, backend: str) -> None:
    ran: list[bool] = []

    async def main() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await thread.run(ran.append, True)
        assert scope.cancelled_caught

    anyio.run(main, backend=backend)
    thread.call(lambda: None)  # everything submitted before has run
    assert ran == []


def test_close_runs_what_was_submitted_then_finish_on_the_thread_and_joins_it() -> None:
    order: list[tuple[str, threading.Thread]] = []
    thread = StoreThread(finish=lambda: order.append(("finish", threading.current_thread())))
    thread.submit(lambda: order.append(("submitted", threading.current_thread())))
    thread.close()
    assert [what for what, _ in order] == ["submitted", "finish"]
    worker = order[0][1]
    assert order[1][1] is worker and worker is not threading.current_thread()
    assert not worker.is_alive()  # joined
    thread.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        thread.call(lambda: None)


def test_close_reraises_what_finish_raised() -> None:
    def broken_close() -> None:
        raise OSError("I/O error")

    thread = StoreThread(finish=broken_close)
    thread.call(lambda: None)
    with pytest.raises(OSError, match="I/O error"):
        thread.close()


def test_a_thread_never_used_starts_nothing_and_closes_at_once() -> None:
    ran: list[bool] = []
    thread = StoreThread(finish=lambda: ran.append(True))
    thread.close()
    assert not thread.started and ran == []  # no call ran, so no connection to close


def test_a_thread_dropped_without_close_still_runs_finish_on_it_and_ends() -> None:
    finished = threading.Event()
    where: list[threading.Thread] = []
    thread = StoreThread(finish=lambda: (where.append(threading.current_thread()), finished.set()))
    worker = thread.call(threading.current_thread)
    del thread
    gc.collect()
    assert finished.wait(5) and where == [worker]
    worker.join(5)
    assert not worker.is_alive()


def test_a_failing_submitted_call_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    thread = StoreThread()

    def fail() -> None:
        raise RuntimeError("spill cannot be deleted")

    thread.submit(fail)
    thread.close()
    assert "spill cannot be deleted" in caplog.text
