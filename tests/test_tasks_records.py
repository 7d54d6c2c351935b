"""The run directory's files: torn lines repaired, corrupt lines reported, finished beats failed."""

import json

import pytest

from cachesaver.errors import CorruptStoreError
from cachesaver.tasks import TaskDefinitionError
from cachesaver.tasks.records import RunDirectory, index_key, output_of


def line(index, **extra):
    return (json.dumps({"index": index, **extra}) + "\n").encode()


def test_load_creates_the_directory_and_starts_empty(tmp_path):
    directory = RunDirectory(tmp_path / "out" / "task")
    state = directory.load()
    assert directory.path.is_dir()
    assert (state.finished, state.failed) == ({}, {})


def test_finished_samples_are_never_counted_as_failed(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.append_error(line(1, error="boom"))
    directory.append_error(line(2, error="boom"))
    directory.append_run(line(1, output={"status": "completed"}))
    state = directory.load()
    assert set(state.finished) == {index_key(1)}
    assert set(state.failed) == {index_key(2)}
    assert state.outcome(index_key(2))["error"] == "boom"


def test_a_torn_last_line_is_truncated_away(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.append_run(line(0))
    directory.append_run(b'{"index": 1, "outp')
    state = directory.load()
    assert list(state.finished) == [index_key(0)]
    assert directory.runs_path.read_bytes() == line(0)
    directory.append_run(line(1))  # appending afterwards starts on a clean line
    assert len(directory.load().finished) == 2


@pytest.mark.parametrize("bad", [b"[1, 2]\n", b'{"no_index": 1}\n', b"{broken\n"])
def test_a_bad_line_in_the_middle_raises_naming_file_and_line(tmp_path, bad):
    directory = RunDirectory(tmp_path)
    directory.errors_path.write_bytes(line(0) + bad + line(2))
    with pytest.raises(CorruptStoreError, match=r"error\.jsonl line 2"):
        directory.load()


def test_one_and_the_string_one_are_different_samples(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.append_run(line(1))
    directory.append_run(line("1"))
    assert len(directory.load().finished) == 2


def test_encode_refuses_values_json_cannot_hold(tmp_path):
    directory = RunDirectory(tmp_path)
    with pytest.raises(TaskDefinitionError, match="not JSON"):
        directory.encode({"index": 0, "output": {"result": float("inf")}})
    assert directory.encode({"index": 0, "output": {"result": "é"}}) == '{"index": 0, "output": {"result": "é"}}\n'.encode()


def test_rewrite_runs_replaces_the_file_in_the_given_order(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.append_run(line(2))
    directory.append_run(line(0))
    directory.rewrite_runs([line(0), line(2)])
    assert directory.runs_path.read_bytes() == line(0) + line(2)
    assert [p.name for p in tmp_path.iterdir()] == ["runs.jsonl"]


def test_a_rewrite_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.append_run(line(1))
    directory.append_run(line(0))

    def lines_then_full_disk():
        yield line(0)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        directory.rewrite_runs(lines_then_full_disk())
    assert directory.runs_path.read_bytes() == line(1) + line(0)
    assert [p.name for p in tmp_path.iterdir()] == ["runs.jsonl"]


def test_overall_is_replaced_whole(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.write_overall({"total": 1})
    directory.write_overall({"total": 2})
    assert json.loads(directory.overall_path.read_text()) == {"total": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["overall.json"]


def test_output_of_takes_the_record_index():
    output = output_of({"index": "b", "output": {"status": "unknown", "history": [{"role": "user", "content": "x"}]}})
    assert (output.index, output.status.value, output.history[0].content) == ("b", "unknown", "x")


def test_read_records_skips_a_torn_last_line_without_truncating_it(tmp_path):
    from cachesaver.tasks.records import read_records

    directory = RunDirectory(tmp_path)
    torn = line(0) + b'{"index": 1, "outp'  # another process is appending this line right now
    directory.runs_path.write_bytes(torn)
    assert [r["index"] for r in read_records(directory.runs_path)] == [0]
    assert directory.runs_path.read_bytes() == torn
    assert read_records(tmp_path / "missing.jsonl") == []


def test_rewrites_leave_no_temporary_file_and_keep_the_default_file_mode(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.append_error(line(5))
    appended_mode = directory.errors_path.stat().st_mode
    directory.rewrite_runs([line(0)])
    directory.rewrite_errors([line(1)])
    directory.write_overall({"total": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error.jsonl", "overall.json", "runs.jsonl"]
    assert {p.stat().st_mode for p in tmp_path.iterdir()} == {appended_mode}  # not mkstemp's 0600
    assert directory.errors_path.read_bytes() == line(1)
