"""The batching stage: groups requests into batches of at most ``batch_size`` for the model.

Guarantees:

* A batch is sent as soon as it holds ``batch_size`` requests, or ``timeout`` seconds after its
  first request arrived (the window is timed from the start of collection, not from the last
  arrival), whichever comes first.
* Several batches may be in flight at once; a full batch never waits for an earlier one.
* Requests keep their arrival order inside a batch; ``n`` is never split or changed.
* Each batch call runs detached: a cancelled caller does not cancel the batch its neighbours
  are waiting for. Errors are per request (see :mod:`cachesaver.stages.base`).
* When closing begins, the pending partial batch is sent at once, without waiting the window.
* ``timeout`` is a finite number of seconds from 0 to 3600 (``MAX_WAIT_S``); anything else
  (NaN, infinity, 1e300, which would hold a lone request until close) raises
  :class:`~cachesaver.errors.ConfigurationError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from .._runtime.checks import MAX_WAIT_S, check_seconds
from .._runtime.jobs import DETACHED, Outcome, _native_loop_token
from ..errors import ConfigurationError, PipelineClosedError
from ..typedefs import Model, Request
from .base import Settled, Stage, call_model

__all__ = ["AsyncBatcher"]

_Item = tuple[Request, Outcome[Settled]]


class AsyncBatcher(Stage):
    """Collects requests into batches of ``batch_size``, waiting at most ``timeout`` seconds."""

    def __init__(self, model: Model, batch_size: int, timeout: float = 0.01) -> None:
        super().__init__(model)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be an int >= 1, got {batch_size!r}")
        check_seconds("timeout (the batch window)", timeout, maximum=MAX_WAIT_S)
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self._pending: list[_Item] = []
        self._generation = 0
        self._timer_generation = -1
        self._flushing_now: anyio.Event | None = None
        self._flushing_loop: object = None
        self._closing_begun = False
        self.batches_sent = 0

    async def _settle(self, requests: Sequence[Request]) -> list[Settled]:
        outcomes: list[Outcome[Settled]] = []
        full: list[list[_Item]] = []
        for request in requests:
            outcome: Outcome[Settled] = Outcome()
            self._pending.append((request, outcome))
            outcomes.append(outcome)
            if len(self._pending) >= self.batch_size:
                full.append(self._take(self.batch_size))
        if not self._pending and full and DETACHED.get():
            # Called from a background job (the cache stage's): the last batch is sent in this
            # job's task, the others in jobs of their own, all at once.
            for batch in full[:-1]:
                await self._send(batch)
            self._enter()
            await self._dispatch(full[-1])
            return [outcome.result() if outcome.done else await outcome.get() for outcome in outcomes]
        for batch in full:
            await self._send(batch)
        if self._pending:
            if self.timeout == 0 or self._closing_begun:
                await self._send(self._take(len(self._pending)))
            elif self._timer_generation != self._generation:
                self._timer_generation = self._generation
                self._enter()
                try:
                    await self._spawn(self._window, self._generation)
                except BaseException:
                    self._exit()
                    raise
        return [await outcome.get() for outcome in outcomes]

    def _take(self, count: int) -> list[_Item]:
        batch = self._pending[:count]
        del self._pending[:count]
        if not self._pending:
            self._generation += 1  # the next arrival starts a new window
        return batch

    async def _send(self, batch: list[_Item]) -> None:
        self._enter()
        try:
            await self._spawn(self._dispatch, batch)
        except BaseException:
            self._exit()
            raise

    async def _window(self, generation: int) -> None:
        try:
            loop = _native_loop_token()
            if self._flushing_now is None or self._flushing_loop is not loop:
                self._flushing_now, self._flushing_loop = anyio.Event(), loop  # events are loop-bound
            if not self._closing_begun:  # closing may have begun before this task first ran
                with anyio.move_on_after(self.timeout):
                    await self._flushing_now.wait()
            if generation == self._generation:
                while self._pending:
                    await self._send(self._take(min(self.batch_size, len(self._pending))))
        finally:
            self._exit()

    async def _dispatch(self, batch: list[_Item]) -> None:
        try:
            self.batches_sent += 1
            answers = await call_model(self.model, [r for r, _ in batch], late=self._late_answers)
            for (_, outcome), answer in zip(batch, answers):
                outcome.set(answer)
        except BaseException:
            closed = PipelineClosedError("the batcher was closed while this request was in flight")
            for _, outcome in batch:
                outcome.set(closed)
            raise
        finally:
            self._exit()

    def begin_close(self) -> None:
        """Send the pending partial batch now instead of waiting for its window."""
        self._closing_begun = True
        if self._flushing_now is not None:
            self._flushing_now.set()
        super().begin_close()
