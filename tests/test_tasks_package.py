"""cachesaver.tasks re-exports a curated, sorted public API."""

import cachesaver.tasks as tasks


def test_all_is_sorted_and_importable():
    assert tasks.__all__ == sorted(tasks.__all__)
    for name in tasks.__all__:
        assert getattr(tasks, name) is not None


def test_the_seed_names_are_all_public():
    seed_names = {
        "Task", "Session", "SampleIndex", "SampleStatus", "TaskSampleExecutionResult", "TaskOutput",
        "ChatHistoryItem", "AgentOutput", "AgentOutputStatus", "JSONSerializable",
    }
    assert seed_names <= set(tasks.__all__)
