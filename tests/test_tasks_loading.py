"""Finding task classes from module:Class and path.py:Class references."""

import os
import sys

import pytest

from cachesaver.errors import ConfigurationError
from cachesaver.tasks import Task, load_task, load_task_class, parse_task_options

TASK_FILE = '''
from cachesaver.tasks import Task

class Small(Task):
    def __init__(self, size=2, label="x"):
        super().__init__(name="small")
        self.size, self.label = size, label
    def get_indices(self):
        return list(range(self.size))
    async def start_sample(self, index, session):
        raise NotImplementedError

NOT_A_TASK = 3
'''


def test_module_reference():
    assert load_task_class("cachesaver.tasks:Task") is Task


def test_file_reference_with_options(tmp_path):
    path = tmp_path / "my_tasks.py"
    path.write_text(TASK_FILE)
    task = load_task(f"{path}:Small", **parse_task_options(["size=5", "label=hello"]))
    assert (task.name, task.size, task.label, task.get_indices()[-1]) == ("small", 5, "hello", 4)
    assert load_task_class(f"{path}:Small") is type(task)  # loaded once


@pytest.mark.parametrize(
    ("options", "reason"),
    [({"bogus": 1}, "unexpected keyword argument 'bogus'"), ({"size": "many"}, "")],
    ids=["unknown-option", "bad-value"],
)
def test_options_the_task_class_refuses_are_a_configuration_error(tmp_path, options, reason):
    path = tmp_path / "refusing_tasks.py"
    path.write_text(TASK_FILE.replace("self.size, self.label = size, label", "self.size, self.label = int(size), label"))
    with pytest.raises(ConfigurationError, match=r"Small\(.*\) failed: .*--task-option") as raised:
        load_task(f"{path}:Small", **options)
    assert reason in str(raised.value)
    assert isinstance(raised.value.__cause__, (TypeError, ValueError))


def test_a_module_reference_finds_modules_in_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_task_module_xyz.py").write_text(TASK_FILE)
    here = os.getcwd()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != "" and os.path.abspath(p) != here])
    monkeypatch.delitem(sys.modules, "cwd_task_module_xyz", raising=False)
    monkeypatch.chdir(tmp_path)
    cls = load_task_class("cwd_task_module_xyz:Small")
    assert (cls.__name__, cls.__module__) == ("Small", "cwd_task_module_xyz")
    assert sys.path[0] == str(tmp_path)
    load_task_class("cwd_task_module_xyz:Small")
    assert sys.path.count(str(tmp_path)) == 1  # added once
    sys.modules.pop("cwd_task_module_xyz")


@pytest.mark.parametrize(
    "reference, message",
    [
        ("no_colon", "not 'module:Class'"),
        ("cachesaver.tasks:", "not 'module:Class'"),
        ("no_such_module_xyz:Task", "no module named"),
        ("cachesaver.tasks:Missing", "defines no 'Missing'"),
        ("cachesaver.tasks:run_task", "not a task class"),
        ("missing/file.py:Task", "does not exist"),
    ],
)
def test_bad_references_say_what_is_wrong(reference, message):
    with pytest.raises(ConfigurationError, match=message):
        load_task_class(reference)


def test_a_file_attribute_that_is_not_a_task(tmp_path):
    path = tmp_path / "other.py"
    path.write_text(TASK_FILE)
    with pytest.raises(ConfigurationError, match="not a task class"):
        load_task_class(f"{path}:NOT_A_TASK")


def test_errors_inside_the_task_module_propagate(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ModuleNotFoundError):
        load_task_class(f"{path}:Anything")


def test_task_options_parse_json_or_keep_text():
    assert parse_task_options(["n=3", "ratio=0.5", "flag=true", "name=abc", "items=[1, 2]", "empty="]) == {
        "n": 3, "ratio": 0.5, "flag": True, "name": "abc", "items": [1, 2], "empty": "",
    }
    with pytest.raises(ConfigurationError, match="KEY=VALUE"):
        parse_task_options(["novalue"])
    with pytest.raises(ConfigurationError, match="KEY=VALUE"):
        parse_task_options(["bad-key=1"])
