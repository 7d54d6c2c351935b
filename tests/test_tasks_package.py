"""cachesaver.tasks re-exports a curated, sorted public API."""

import inspect
import typing

import cachesaver.tasks as tasks


def test_all_is_sorted_and_lists_exactly_the_public_names():
    assert tasks.__all__ == sorted(tasks.__all__)
    public = {
        name for name, value in vars(tasks).items() if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(tasks.__all__) == public  # nothing exported by accident, nothing listed but missing


def test_every_export_is_defined_in_the_tasks_package():
    for name in tasks.__all__:
        value = getattr(tasks, name)
        if typing.get_origin(value) is typing.Union:  # SampleIndex, JSONSerializable
            continue
        assert value.__module__.startswith("cachesaver.tasks."), name
        assert value.__name__ == name


def test_the_seed_names_are_all_public():
    seed_names = {
        "Task", "Session", "SampleIndex", "SampleStatus", "TaskSampleExecutionResult", "TaskOutput",
        "ChatHistoryItem", "AgentOutput", "AgentOutputStatus", "JSONSerializable",
    }
    assert seed_names <= set(tasks.__all__)
