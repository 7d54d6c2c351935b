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

from typing import Any, Dict, List, Optional, Sequence

from .types import SampleStatus, TaskOutput

__all__ = ["validation"]


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
