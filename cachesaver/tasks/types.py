"""The values of the task interface, with the seed's names, fields and string values.

The seed declares these as pydantic models; here they are frozen dataclasses and ``str``
enums with the same names, fields, defaults and values, so task code written against the seed
runs unchanged:

* Enum fields accept the enum member or its string value (``"completed"``), like pydantic.
* History items may be given as ``ChatHistoryItem`` or as ``{"role": ..., "content": ...}``.
* Anything else (an unknown status, a role other than ``"user"``/``"agent"``) raises
  :class:`TaskDefinitionError` saying which value was wrong.

>>> TaskSampleExecutionResult(status="completed", result={"score": 1}).status
<SampleStatus.COMPLETED: 'completed'>
>>> ChatHistoryItem.coerce({"role": "user", "content": "hi"})
ChatHistoryItem(role='user', content='hi')
>>> SampleStatus.AGENT_CONTEXT_LIMIT.value
'agent context limit'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Literal, Optional, Union

from ..errors import ConfigurationError

__all__ = [
    "AgentOutput",
    "AgentOutputStatus",
    "ChatHistoryItem",
    "JSONSerializable",
    "SampleIndex",
    "SampleStatus",
    "TaskDefinitionError",
    "TaskOutput",
    "TaskSampleExecutionResult",
]

SampleIndex = Union[int, str]
JSONSerializable = Union[None, bool, int, float, str, List[Any], Dict[str, Any]]


class TaskDefinitionError(ConfigurationError):
    """Raised when task code breaks the task interface: an unknown status, a history item
    whose role is not ``"user"`` or ``"agent"``, duplicate sample indices, a result that is not
    JSON, or ``start_sample`` returning something other than a TaskSampleExecutionResult."""


class SampleStatus(str, Enum):
    """How a sample ended; the seed's values, stored as-is in runs.jsonl and overall.json."""

    RUNNING = "running"
    COMPLETED = "completed"
    AGENT_CONTEXT_LIMIT = "agent context limit"
    AGENT_VALIDATION_FAILED = "agent validation failed"
    AGENT_INVALID_ACTION = "agent invalid action"
    TASK_LIMIT_REACHED = "task limit reached"
    UNKNOWN = "unknown"
    TASK_ERROR = "task error"


class AgentOutputStatus(str, Enum):
    """How an agent turn ended; anything but NORMAL comes with ``content=None``."""

    NORMAL = "normal"
    CANCELLED = "cancelled"
    AGENT_CONTEXT_LIMIT = "agent context limit"


def _coerce_enum(kind: type[Enum], value: Any, where: str) -> Any:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise TaskDefinitionError(
            f"{where} is {value!r}, which is not a {kind.__name__}; use one of {allowed}"
        ) from None


@dataclass(frozen=True)
class ChatHistoryItem:
    """One message of a sample's conversation: ``role`` is ``"user"`` (the task) or ``"agent"``."""

    role: Literal["user", "agent"]
    content: str

    def __post_init__(self) -> None:
        if self.role not in ("user", "agent"):
            raise TaskDefinitionError(
                f"ChatHistoryItem.role is {self.role!r}; a task history only has 'user' (the task) "
                "and 'agent' (the model) messages"
            )
        if not isinstance(self.content, str):
            raise TaskDefinitionError(
                f"ChatHistoryItem.content must be a str, got {type(self.content).__name__}; "
                "convert it with str() or json.dumps() before injecting it"
            )

    @classmethod
    def coerce(cls, item: Union["ChatHistoryItem", Mapping[str, Any]]) -> "ChatHistoryItem":
        """``item`` itself, or a ChatHistoryItem built from a ``{"role", "content"}`` mapping."""
        if isinstance(item, cls):
            return item
        if isinstance(item, Mapping):
            unknown = set(item) - {"role", "content"}
            if unknown or "role" not in item or "content" not in item:
                raise TaskDefinitionError(
                    f"a history item needs exactly the keys 'role' and 'content', got {sorted(item)}"
                )
            return cls(role=item["role"], content=item["content"])
        raise TaskDefinitionError(
            f"a history item must be a ChatHistoryItem or a dict with 'role' and 'content', "
            f"got {type(item).__name__}"
        )

    def to_json(self) -> Dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class AgentOutput:
    """What the agent answered for one turn; check ``status`` before using ``content``."""

    status: AgentOutputStatus = AgentOutputStatus.NORMAL
    content: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "status", _coerce_enum(AgentOutputStatus, self.status, "AgentOutput.status")
        )


@dataclass(frozen=True)
class TaskSampleExecutionResult:
    """What ``Task.start_sample`` returns: how the sample ended and a JSON result."""

    status: SampleStatus = SampleStatus.COMPLETED
    result: JSONSerializable = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "status", _coerce_enum(SampleStatus, self.status, "TaskSampleExecutionResult.status")
        )


@dataclass(frozen=True)
class TaskOutput:
    """One finished sample as ``calculate_overall`` sees it and runs.jsonl stores it."""

    index: Union[None, SampleIndex] = None
    status: SampleStatus = SampleStatus.RUNNING
    result: JSONSerializable = None
    history: Union[None, List[ChatHistoryItem]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", _coerce_enum(SampleStatus, self.status, "TaskOutput.status"))
        if self.history is not None:
            object.__setattr__(self, "history", [ChatHistoryItem.coerce(h) for h in self.history])

    def to_json(self) -> Dict[str, Any]:
        """The JSON object stored under ``"output"`` in runs.jsonl and error.jsonl."""
        return {
            "index": self.index,
            "status": self.status.value,
            "result": self.result,
            "history": None if self.history is None else [h.to_json() for h in self.history],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TaskOutput":
        """The inverse of :meth:`to_json`."""
        return cls(
            index=data.get("index"),
            status=data.get("status", SampleStatus.RUNNING),
            result=data.get("result"),
            history=data.get("history"),
        )
