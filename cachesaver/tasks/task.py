"""The seed's ``Task`` base class and the ``Session`` a sample talks to its agent through.

Write a task exactly as the seed describes: subclass :class:`Task`, implement
``get_indices``, ``async start_sample(index, session)`` and ``calculate_overall``, and drive
the conversation with ``await session.action(...)``. The runner
(:func:`cachesaver.tasks.run_task`) creates one Session per sample.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Union

import anyio

from ..errors import CacheMissError, ConfigurationError, ContextLengthError
from .agents import Agent, Turn
from .records import index_key
from .types import (
    AgentOutput,
    AgentOutputStatus,
    ChatHistoryItem,
    SampleIndex,
    TaskDefinitionError,
    TaskOutput,
    TaskSampleExecutionResult,
)

__all__ = ["HistoryInput", "Session", "Task", "checked_indices", "checked_name"]

HistoryInput = Union[ChatHistoryItem, Mapping[str, Any], List[Union[ChatHistoryItem, Mapping[str, Any]]]]


class Task:
    """A benchmark: a set of sample indices, the logic of one sample, and a score.

    ``concurrency`` is how many samples the runner runs at once (unless the run overrides
    it). ``release()`` is called once when a run ends, however it ends.
    """

    def __init__(self, name: str, concurrency: int = 1, *args: Any, **kwargs: Any) -> None:
        self.name = name
        self.concurrency = concurrency

    def get_indices(self) -> List[SampleIndex]:
        raise NotImplementedError()

    async def start_sample(self, index: SampleIndex, session: "Session") -> TaskSampleExecutionResult:
        raise NotImplementedError()

    def calculate_overall(self, results: List[TaskOutput]) -> Dict[str, Any]:
        raise NotImplementedError()

    def release(self) -> None:
        pass


def checked_indices(task: Task) -> List[SampleIndex]:
    """``task.get_indices()`` as a list, after checking that every index is an int or a str
    and none is listed twice (TaskDefinitionError otherwise)."""
    indices = list(task.get_indices())
    seen: Dict[str, SampleIndex] = {}
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, (int, str)):
            raise TaskDefinitionError(
                f"task {task.name!r}: sample index {index!r} is a {type(index).__name__}; "
                "get_indices() must return ints or strs"
            )
        key = index_key(index)
        if key in seen:
            raise TaskDefinitionError(
                f"task {task.name!r}: get_indices() lists sample {index!r} twice; indices must be unique"
            )
        seen[key] = index
    return indices


def checked_name(task: Task) -> str:
    """``task.name``, after checking that it can name an output directory (ConfigurationError)."""
    name = getattr(task, "name", None)
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ConfigurationError(
            f"task name {name!r} cannot name an output directory; give the task a non-empty name "
            "without path separators"
        )
    return name


class Session:
    """One sample's conversation with the agent.

    Guarantees:

    * ``history`` holds every injected item, in order, followed by each agent reply whose
      status is NORMAL (as ``role="agent"``).
    * ``action`` asks the agent once per call; a :class:`~cachesaver.errors.ContextLengthError`
      from the agent comes back as ``AgentOutputStatus.AGENT_CONTEXT_LIMIT``; once the session
      is cancelled (``cancel()``, e.g. on a sample time-out) the pending and every later
      ``action`` return ``AgentOutputStatus.CANCELLED`` at once.
    * Other agent exceptions propagate to the task code. A
      :class:`~cachesaver.errors.CacheMissError` is also remembered in ``cache_miss``: the
      runner fails the sample even if the task code catches it.
    """

    def __init__(self, agent: Agent, *, task_name: str, index: SampleIndex) -> None:
        self.agent = agent
        self.task_name = task_name
        self.index = index
        self.history: List[ChatHistoryItem] = []
        self.turns = 0
        self.cache_miss: Optional[CacheMissError] = None
        self._cancelled = False
        self._pending: Optional[anyio.CancelScope] = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Make the pending and all later ``action`` calls return CANCELLED."""
        self._cancelled = True
        if self._pending is not None:
            self._pending.cancel()

    def inject(self, item: HistoryInput) -> None:
        """Append one history item, or a list of them, to the history."""
        if isinstance(item, (list, tuple)):
            items = [ChatHistoryItem.coerce(i) for i in item]
        else:
            items = [ChatHistoryItem.coerce(item)]
        self.history.extend(items)

    async def action(self, *injection: HistoryInput) -> AgentOutput:
        """Inject ``injection`` (items or lists of items), then return the agent's output."""
        for item in injection:
            self.inject(item)
        if self._cancelled:
            return AgentOutput(status=AgentOutputStatus.CANCELLED)
        turn = Turn(self.task_name, self.index, self.turns, tuple(self.history))
        self.turns += 1
        output: Optional[AgentOutput] = None
        with anyio.CancelScope() as scope:
            self._pending = scope
            try:
                output = await self.agent.act(turn)
            except ContextLengthError:
                output = AgentOutput(status=AgentOutputStatus.AGENT_CONTEXT_LIMIT)
            except CacheMissError as exc:
                self.cache_miss = exc
                raise
            finally:
                self._pending = None
        if output is None:  # the pending call was cancelled by cancel()
            return AgentOutput(status=AgentOutputStatus.CANCELLED)
        if not isinstance(output, AgentOutput):
            raise TaskDefinitionError(
                f"agent {type(self.agent).__name__}.act returned {type(output).__name__}; "
                "an agent must return an AgentOutput"
            )
        if output.status is AgentOutputStatus.NORMAL:
            content = "" if output.content is None else output.content
            self.history.append(ChatHistoryItem(role="agent", content=content))
        return output
