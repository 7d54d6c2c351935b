"""The experiment runner: AgentBench-style tasks over a cachesaver pipeline.

Write a :class:`Task` as the AgentBench seed describes, pick an agent (:class:`PipelineAgent`
sends the conversation through a pipeline; :class:`EchoAgent` repeats the last user message)
and call :func:`run_task`. The run writes ``runs.jsonl``, ``error.jsonl`` and
``overall.json`` under ``{out}/{task name}``, resumes where it stopped, and replays exactly
from the cache when run again in a fresh output directory.
"""

from .agents import Agent, AgentRequest, CacheCounts, EchoAgent, PipelineAgent, Turn, request_id_for
from .loading import load_task, load_task_class, parse_task_options
from .runner import run_task
from .summary import RunSummary
from .task import Session, Task
from .types import (
    AgentOutput,
    AgentOutputStatus,
    ChatHistoryItem,
    JSONSerializable,
    SampleIndex,
    SampleStatus,
    TaskDefinitionError,
    TaskOutput,
    TaskSampleExecutionResult,
)

__all__ = [
    "Agent",
    "AgentOutput",
    "AgentOutputStatus",
    "AgentRequest",
    "CacheCounts",
    "ChatHistoryItem",
    "EchoAgent",
    "JSONSerializable",
    "PipelineAgent",
    "RunSummary",
    "SampleIndex",
    "SampleStatus",
    "Session",
    "Task",
    "TaskDefinitionError",
    "TaskOutput",
    "TaskSampleExecutionResult",
    "Turn",
    "load_task",
    "load_task_class",
    "parse_task_options",
    "request_id_for",
    "run_task",
]
