"""Collecting the work that arrives in one pass of the event loop, to handle it in one go.

Requests issued together (by ``gather``, a ``batch_request``, or a stage that answers many
callers at once) arrive at a stage one task after another within the same pass of the event
loop. :class:`PassCollector` lets a stage treat them as one group: the first submission
schedules a detached flush, which first runs once the rest of the pass has run (a new task
starts after the callbacks already queued), then hands everything collected to the stage's
handler and delivers one outcome per item.

(Not to be confused with the cache stage's *lookup rounds* in
:mod:`cachesaver.store.allocation`: one pass collected here becomes one submission to the broker,
which may serve several passes in one lookup round.)

Guarantees: every submitted item gets exactly one outcome, in submission order; the handler
runs detached from the submitters (a cancelled submitter does not cancel it); if the handler
raises, every item it held gets that exception; if the flush is cancelled (forced close), every
item it holds is answered with PipelineClosedError.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio.lowlevel

from ..errors import PipelineClosedError
from .jobs import Outcome

if TYPE_CHECKING:
    from ..stages.base import Stage

__all__ = ["PassCollector"]

Item = TypeVar("Item")


class PassCollector(Generic[Item]):
    """Batches items submitted in one event-loop pass into one call of ``handle``."""

    def __init__(self, stage: "Stage", handle: Callable[[list[Item]], Awaitable[Sequence[Any]]]) -> None:
        self._stage = stage
        self._handle = handle
        self._queue: list[tuple[Item, Outcome[Any]]] = []
        self._scheduled = False
        self.passes = 0

    async def submit(self, items: Sequence[Item]) -> list[Outcome[Any]]:
        """Queue ``items``; their outcomes are delivered when this pass is handled."""
        outcomes: list[Outcome[Any]] = [Outcome() for _ in items]
        self._queue.extend(zip(items, outcomes))
        if not self._scheduled:
            self._scheduled = True
            self._stage._enter()
            try:
                await self._stage._spawn(self._flush)
            except BaseException:
                self._stage._exit()
                self._scheduled = False
                raise
        return outcomes

    def _take(self) -> list[tuple[Item, Outcome[Any]]]:
        taken, self._queue = self._queue, []
        self._scheduled = False
        return taken

    async def _flush(self) -> None:
        taken: list[tuple[Item, Outcome[Any]]] = []
        try:
            # A new job first runs after every callback already queued in this pass of the
            # event loop, so the rest of the pass has joined by now.
            taken = self._take()
            self.passes += 1
            results = await self._handle([item for item, _ in taken])
            for (_, outcome), result in zip(taken, results):
                outcome.set(result)
        except Exception as exc:  # noqa: BLE001 - the handler failed: every item gets its error
            for _, outcome in taken:
                outcome.set(exc)
        except BaseException:
            if not taken:
                taken = self._take()
            closed = PipelineClosedError(
                f"{type(self._stage).__name__} was closed while this request was in flight"
            )
            for _, outcome in taken:
                outcome.set(closed)
            raise
        finally:
            self._stage._exit()
