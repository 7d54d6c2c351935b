"""The task-interface values keep the seed's names, values and pydantic-like coercion."""

import pytest

from cachesaver.errors import ConfigurationError
from cachesaver.tasks import (
    AgentOutput,
    AgentOutputStatus,
    ChatHistoryItem,
    SampleStatus,
    TaskDefinitionError,
    TaskOutput,
    TaskSampleExecutionResult,
)


def test_sample_status_values_are_the_seeds():
    assert {s.name: s.value for s in SampleStatus} == {
        "RUNNING": "running",
        "COMPLETED": "completed",
        "AGENT_CONTEXT_LIMIT": "agent context limit",
        "AGENT_VALIDATION_FAILED": "agent validation failed",
        "AGENT_INVALID_ACTION": "agent invalid action",
        "TASK_LIMIT_REACHED": "task limit reached",
        "UNKNOWN": "unknown",
        "TASK_ERROR": "task error",
    }
    assert SampleStatus.COMPLETED == "completed"  # a str enum, like the seed's


def test_agent_output_status_values_are_the_seeds():
    assert [s.value for s in AgentOutputStatus] == ["normal", "cancelled", "agent context limit"]


def test_defaults_match_the_seed():
    assert TaskSampleExecutionResult() == TaskSampleExecutionResult(SampleStatus.COMPLETED, None)
    assert TaskOutput() == TaskOutput(None, SampleStatus.RUNNING, None, None)
    assert AgentOutput() == AgentOutput(AgentOutputStatus.NORMAL, None)


def test_status_strings_are_coerced_to_members():
    assert TaskSampleExecutionResult(status="task limit reached").status is SampleStatus.TASK_LIMIT_REACHED
    assert AgentOutput(status="cancelled").status is AgentOutputStatus.CANCELLED
    assert TaskOutput(status="completed").status is SampleStatus.COMPLETED


def test_unknown_status_names_the_allowed_values():
    with pytest.raises(TaskDefinitionError, match="'completed'") as caught:
        TaskSampleExecutionResult(status="done")
    assert isinstance(caught.value, ConfigurationError)


def test_history_items_accept_dicts_and_reject_other_roles():
    assert ChatHistoryItem.coerce({"role": "agent", "content": "x"}) == ChatHistoryItem("agent", "x")
    item = ChatHistoryItem("user", "hi")
    assert ChatHistoryItem.coerce(item) is item
    with pytest.raises(TaskDefinitionError, match="'user'"):
        ChatHistoryItem.coerce({"role": "assistant", "content": "x"})
    with pytest.raises(TaskDefinitionError, match="content must be a str"):
        ChatHistoryItem("user", 3)  # type: ignore[arg-type]
    with pytest.raises(TaskDefinitionError, match="exactly the keys"):
        ChatHistoryItem.coerce({"role": "user", "content": "x", "name": "bob"})
    with pytest.raises(TaskDefinitionError, match="got str"):
        ChatHistoryItem.coerce("hello")  # type: ignore[arg-type]


def test_task_output_json_round_trip_keeps_everything():
    output = TaskOutput(
        index="a-1",
        status="agent invalid action",
        result={"score": [1, 2.5, None]},
        history=[{"role": "user", "content": "q"}, ChatHistoryItem("agent", "a")],
    )
    data = output.to_json()
    assert data == {
        "index": "a-1",
        "status": "agent invalid action",
        "result": {"score": [1, 2.5, None]},
        "history": [{"role": "user", "content": "q"}, {"role": "agent", "content": "a"}],
    }
    assert TaskOutput.from_json(data) == output
    assert TaskOutput.from_json({"index": 0}).history is None
