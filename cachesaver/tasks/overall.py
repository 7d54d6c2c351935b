"""overall.json: the totals of a run, computed from what the run directory holds.

Layout (AgentBench's)::

    {"total": N,                      # samples the task lists
     "validation": {"<status>": fraction of N, ... every SampleStatus ...,
                    "average_history_length": ..., "max_history_length": ...,
                    "min_history_length": ...},
     "custom": task.calculate_overall(finished outputs, in get_indices order)}

A failed sample (in error.jsonl only) counts as ``"task error"``; a sample with no record
yet counts as ``"running"``. History lengths are over every sample with a record.

>>> from cachesaver.tasks.types import TaskOutput
>>> v = validation([TaskOutput(0, "completed", None, [])], failed=1, missing=0, history_lengths=[2, 4])
>>> v["completed"], v["task error"], v["average_history_length"]
(0.5, 0.5, 3.0)
"""

from __future__ import annotations

import json
import traceback
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from .records import RunState, index_key, output_of
from .types import SampleIndex, SampleStatus, TaskOutput

if TYPE_CHECKING:
    from .task import Task

__all__ = ["overall_of", "validation"]


def validation(
    finished: Sequence[TaskOutput],
    *,
    failed: int,
    missing: int,
    history_lengths: Sequence[int],
) -> Dict[str, Any]:
    """The ``validation`` block: the fraction of samples per status and history-length stats."""
    total = len(finished) + failed + missing
    counts = {status: 0 for status in SampleStatus}
    for output in finished:
        counts[output.status] += 1
    counts[SampleStatus.TASK_ERROR] += failed
    counts[SampleStatus.RUNNING] += missing
    block: Dict[str, Any] = {
        status.value: (count / total if total else 0.0) for status, count in counts.items()
    }
    lengths: List[int] = list(history_lengths)
    average: Optional[float] = sum(lengths) / len(lengths) if lengths else None
    block["average_history_length"] = average
    block["max_history_length"] = max(lengths) if lengths else None
    block["min_history_length"] = min(lengths) if lengths else None
    return block


def _custom(task: "Task", finished: List[TaskOutput]) -> Tuple[Any, Optional[str]]:
    """``calculate_overall(finished)`` and None, or an error description and the error."""
    try:
        custom = task.calculate_overall(finished)
    except Exception as exc:  # the task's scoring failed: every sample is still saved
        error = f"{type(exc).__name__}: {exc}"
        return {"error": error, "traceback": traceback.format_exc()}, error
    try:
        json.dumps(custom, allow_nan=False)
    except (TypeError, ValueError) as exc:
        error = (
            f"TaskDefinitionError: calculate_overall returned a value that is not JSON ({exc}); "
            "return dicts, lists, str, int, float, bool and None"
        )
        return {"error": error}, error
    return custom, None


def statuses_of(indices: Sequence[SampleIndex], state: RunState) -> Dict[str, int]:
    """The count per status value over the samples of ``indices`` that have a record."""
    statuses: Dict[str, int] = {}
    for index in indices:
        record = state.outcome(index_key(index))
        if record is not None:
            status = output_of(record).status.value
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


def overall_of(
    task: "Task", indices: Sequence[SampleIndex], state: RunState
) -> Tuple[Dict[str, Any], Dict[str, int], Optional[str]]:
    """overall.json for ``indices`` (the task's, in ``get_indices`` order) from ``state``, the
    count per status, and the error of ``calculate_overall`` (None when it worked).

    The same state gives the same overall.json, however it was assembled (one run, resumes,
    or the shards of one run merged).
    """
    finished: List[TaskOutput] = []
    failed = 0
    missing = 0
    lengths: List[int] = []
    statuses: Dict[str, int] = {}
    for index in indices:
        key = index_key(index)
        if key in state.finished:
            output = output_of(state.finished[key])
            finished.append(output)
        elif key in state.failed:
            output = output_of(state.failed[key])
            failed += 1
        else:
            missing += 1
            continue
        lengths.append(len(output.history or ()))
        statuses[output.status.value] = statuses.get(output.status.value, 0) + 1
    custom, error = _custom(task, finished)
    overall = {
        "total": len(indices),
        "validation": validation(finished, failed=failed, missing=missing, history_lengths=lengths),
        "custom": custom,
    }
    return overall, statuses, error
