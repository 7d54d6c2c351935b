"""Tests for cachesaver._runtime.loop_thread: blocking calls into a private event loop thread."""

from __future__ import annotations

import threading

import anyio
import pytest

from cachesaver.errors import PipelineClosedError
from cachesaver._runtime.loop_thread import LoopThread


@pytest.fixture
def loop():
    running = LoopThread()
    yield running
    running.stop()


def test_calls_run_on_the_loop_thread_and_return_values(loop: LoopThread) -> None:
    async def where() -> str:
        await anyio.sleep(0)
        return threading.current_thread().name

    assert loop.call(where) == "cachesaver-loop"
    assert loop.call(lambda x: x + 1, 1) == 2


def test_exceptions_reach_the_caller(loop: LoopThread) -> None:
    async def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        loop.call(fail)
    assert loop.call(lambda: "still running") == "still running"


async def test_calls_work_from_inside_another_running_loop(loop: LoopThread) -> None:
    async def value() -> int:
        return 7

    assert loop.call(value) == 7


def test_stop_is_idempotent_and_later_calls_are_refused() -> None:
    loop = LoopThread()
    loop.stop()
    loop.stop()
    assert not loop.running
    with pytest.raises(PipelineClosedError):
        loop.call(lambda: None)


def test_the_thread_is_a_daemon(loop: LoopThread) -> None:
    assert loop._thread.daemon  # a forgotten stop() never blocks interpreter exit
