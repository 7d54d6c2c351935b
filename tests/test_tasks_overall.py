"""The validation block of overall.json."""

from cachesaver.tasks import SampleStatus, TaskOutput
from cachesaver.tasks.overall import validation


def test_fractions_cover_every_status_and_count_failed_and_missing():
    finished = [TaskOutput(0, "completed"), TaskOutput(1, "completed"), TaskOutput(2, "agent invalid action")]
    block = validation(finished, failed=1, missing=1, history_lengths=[2, 4, 6, 0])
    assert block["completed"] == 0.4
    assert block["agent invalid action"] == 0.2
    assert block["task error"] == 0.2
    assert block["running"] == 0.2
    assert all(block[s.value] == 0.0 for s in SampleStatus if s.value not in
               ("completed", "agent invalid action", "task error", "running"))
    assert (block["min_history_length"], block["average_history_length"], block["max_history_length"]) == (0, 3.0, 6)


def test_an_empty_run_has_no_lengths_and_no_division_by_zero():
    block = validation([], failed=0, missing=0, history_lengths=[])
    assert block["completed"] == 0.0
    assert block["average_history_length"] is None
