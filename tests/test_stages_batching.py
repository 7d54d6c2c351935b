"""AsyncBatcher on its own: full batches go at once, partial ones when their window ends."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import trio
import trio.testing
from _support import GateModel, SingleOnlyModel, gather, wait_until

from cachesaver.stages.batching import AsyncBatcher
from cachesaver.errors import BackendError, ConfigurationError, PipelineClosedError
from cachesaver.models import ScriptedModel
from cachesaver.typedefs import Batch, Request, Response


async def test_full_batches_of_batch_size_in_arrival_order() -> None:
    model = ScriptedModel()
    requests = [Request(f"p{i}", n=1 + i % 2) for i in range(6)]
    async with AsyncBatcher(model, batch_size=3, timeout=5) as batcher:
        with anyio.fail_after(2):  # full batches never wait for the window
            responses = await batcher.batch_request(Batch(requests=requests))
    assert model.batch_sizes == [3, 3]
    assert [list(call.requests) for call in model.log] == [requests[:3], requests[3:]]
    assert [r.data for r in responses] == [[f"p{i}#{k}" for k in range(1 + i % 2)] for i in range(6)]
    assert model.n_requested == [1 + i % 2 for i in range(6)]  # n is never split or changed


async def test_a_partial_batch_is_sent_when_its_window_ends() -> None:
    model = ScriptedModel()
    async with AsyncBatcher(model, batch_size=10, timeout=0.01) as batcher:
        responses = await gather(*[lambda i=i: batcher.request(Request(f"p{i}")) for i in range(3)])
    assert model.batch_sizes == [3]
    assert [r.data for r in responses] == [["p0#0"], ["p1#0"], ["p2#0"]]


async def test_concurrent_callers_share_batches() -> None:
    model = ScriptedModel()
    async with AsyncBatcher(model, batch_size=4, timeout=0.05) as batcher:
        await gather(*[lambda i=i: batcher.request(Request(f"p{i}")) for i in range(8)])
    assert model.batch_sizes == [4, 4]


async def test_timeout_zero_sends_at_once() -> None:
    model = ScriptedModel()
    async with AsyncBatcher(model, batch_size=100, timeout=0) as batcher:
        with anyio.fail_after(2):
            await batcher.request(Request("hi"))
    assert model.batch_sizes == [1]


def test_the_window_is_timed_from_the_start_of_collection() -> None:
    """Under trio's virtual clock: arrivals at t=0, 0.6 and 1.2 with a 1 s window give a batch
    at t=1.0 holding the first two, and another at t=2.2 (a window restarted by each arrival
    would send all three together at t=2.2)."""
    sent_at: list[tuple[float, int]] = []

    class ClockedModel:
        async def batch_request(self, batch: Batch) -> list[Response]:
            sent_at.append((trio.current_time(), len(batch.requests)))
            return [Response(data=[r.prompt]) for r in batch.requests]

    async def main() -> None:
        batcher = AsyncBatcher(ClockedModel(), batch_size=100, timeout=1.0)

        async def arrive(at: float, prompt: str) -> None:
            await trio.sleep_until(at)
            await batcher.request(Request(prompt))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(arrive, 0.0, "a")
            nursery.start_soon(arrive, 0.6, "b")
            nursery.start_soon(arrive, 1.2, "c")
        await batcher.aclose()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sent_at == [(pytest.approx(1.0), 2), (pytest.approx(2.2), 1)]


async def test_several_batches_are_in_flight_at_once() -> None:
    # The model holds every call until three are running together: serial batches would hang.
    model = GateModel(open_at=3)
    with anyio.fail_after(5):
        async with AsyncBatcher(model, batch_size=2, timeout=5) as batcher:
            responses = await batcher.batch_request(Batch(requests=[Request(f"p{i}") for i in range(6)]))
    assert model.peak_in_flight == 3
    assert [r.data for r in responses] == [[f"p{i}#0"] for i in range(6)]


async def test_a_latency_model_sees_overlapping_batches() -> None:
    model = ScriptedModel(latency_s=0.05)
    async with AsyncBatcher(model, batch_size=2, timeout=5) as batcher:
        await batcher.batch_request(Batch(requests=[Request(f"p{i}") for i in range(8)]))
    assert model.peak_in_flight >= 2
    assert model.batch_sizes == [2, 2, 2, 2]


async def test_closing_sends_the_partial_batch_without_waiting_for_the_window() -> None:
    model = ScriptedModel()
    batcher = AsyncBatcher(model, batch_size=100, timeout=30)
    got: list[Response] = []
    with anyio.fail_after(2):
        async with anyio.create_task_group() as group:

            async def ask() -> None:
                got.append(await batcher.request(Request("hi")))

            group.start_soon(ask)
            await wait_until(lambda: bool(batcher._pending))  # it waits in the window
            assert model.calls == 0
            await batcher.aclose()
    assert got[0].data == ["hi#0"]
    assert model.batch_sizes == [1]


async def test_errors_are_per_request() -> None:
    model = ScriptedModel(fail={"bad"})
    async with AsyncBatcher(model, batch_size=3, timeout=5) as batcher:
        results = await batcher.batch_request(
            Batch(requests=[Request("a"), Request("bad"), Request("c")]), return_exceptions=True
        )
    assert model.batch_sizes == [3]
    assert results[0].data == ["a#0"] and results[2].data == ["c#0"]
    assert isinstance(results[1], BackendError)


async def test_a_cancelled_caller_does_not_cancel_its_neighbours_batch() -> None:
    model = GateModel()
    got: list[Response] = []
    with anyio.fail_after(5):
        async with AsyncBatcher(model, batch_size=2, timeout=5) as batcher:

            async def patient() -> None:
                got.append(await batcher.request(Request("kept")))

            async with anyio.create_task_group() as group:
                with anyio.CancelScope() as doomed_scope:
                    async with anyio.create_task_group() as doomed:
                        doomed.start_soon(batcher.request, Request("dropped"))
                        group.start_soon(patient)
                        await model.entered.wait()
                        doomed_scope.cancel()
                model.release()
    assert got[0].data == ["kept#0"]
    assert model.finished == 1


async def test_a_single_request_model_gets_each_request_of_a_batch() -> None:
    model = SingleOnlyModel()
    async with AsyncBatcher(model, batch_size=3, timeout=5) as batcher:
        responses = await batcher.batch_request(Batch(requests=[Request(f"p{i}") for i in range(3)]))
    assert [r.data for r in responses] == [["p0#0"], ["p1#0"], ["p2#0"]]
    assert model.inner.calls == 3 and not any(call.batched for call in model.inner.log)


async def test_request_after_close_is_a_pipeline_closed_error() -> None:
    batcher = AsyncBatcher(ScriptedModel(), batch_size=2)
    await batcher.aclose()
    with pytest.raises(PipelineClosedError):
        await batcher.request(Request("hi"))
    with pytest.raises(PipelineClosedError):
        await batcher.batch_request(Batch(requests=[Request("hi")]))


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, "2", None, True])
def test_bad_batch_size_is_a_configuration_error(batch_size: Any) -> None:
    with pytest.raises(ConfigurationError):
        AsyncBatcher(ScriptedModel(), batch_size=batch_size)


@pytest.mark.parametrize("timeout", [-0.1, float("nan"), "1", None])
def test_bad_timeout_is_a_configuration_error(timeout: Any) -> None:
    with pytest.raises(ConfigurationError):
        AsyncBatcher(ScriptedModel(), batch_size=2, timeout=timeout)


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, 3600.5])
def test_a_batch_window_that_would_hold_a_lone_request_until_close_is_refused(timeout: float) -> None:
    with pytest.raises(ConfigurationError, match="at most 3600"):
        AsyncBatcher(ScriptedModel(), batch_size=2, timeout=timeout)
    assert AsyncBatcher(ScriptedModel(), batch_size=2, timeout=3600).timeout == 3600.0
