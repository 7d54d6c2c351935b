"""The end-of-run summary: what the run did, and what the pipeline's ledger spent and saved.

:class:`RunSummary` is returned by :func:`cachesaver.tasks.run_task`; ``render()`` gives the
table the CLI prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

if TYPE_CHECKING:
    from .shards import MergeOutcome

__all__ = ["RunSummary", "ledger_text"]


def ledger_text(ledger: Any) -> Optional[str]:
    """The ledger's own table (``render()``) or, failing that, its snapshot as lines."""
    if ledger is None:
        return None
    render = getattr(ledger, "render", None)
    if callable(render):
        return str(render())
    snapshot = getattr(ledger, "snapshot", None)
    if callable(snapshot):
        data = snapshot()
        if isinstance(data, Mapping):
            return "\n".join(f"{key}: {value}" for key, value in data.items())
    return None


@dataclass(frozen=True)
class RunSummary:
    """What one call of ``run_task`` did.

    * ``total``: samples the task lists; ``skipped``: already finished before this run;
      ``attempted``: samples run now; ``finished`` / ``failed``: samples now in runs.jsonl /
      only in error.jsonl (over the whole directory, not just this run).
    * ``statuses``: count per status value over all samples with a record.
    * ``agent_turns``: ``Session.action`` calls made in this run.
    * ``samples_served`` / ``samples_cached``: agent samples received in this run and those
      served from the cache, when the agent counts them (None otherwise).
    * ``ledger``: the pipeline ledger's snapshot, ``ledger_table`` its rendering, if given.
    * ``notes``: extra rows for the table, such as a simulated backend's modeled time.
    * ``overall_error``: ``"<Type>: message"`` when ``calculate_overall`` failed (overall.json
      then holds it under ``custom``), else None.
    * ``shard``: for a sharded run, which slice ran (the counts above are over that slice), and
      ``merge`` what merging the finished shards gave (``overall`` is the merged one, empty
      until every shard has finished); both None for an unsharded run.
    """

    task: str
    directory: str
    total: int
    skipped: int
    attempted: int
    finished: int
    failed: int
    statuses: Dict[str, int]
    wall_time_s: float
    agent_turns: int
    samples_served: Optional[int] = None
    samples_cached: Optional[int] = None
    overall: Dict[str, Any] = field(default_factory=dict)
    ledger: Optional[Dict[str, Any]] = None
    ledger_table: Optional[str] = None
    notes: Tuple[Tuple[str, str], ...] = ()
    overall_error: Optional[str] = None
    shard: Optional[str] = None
    merge: Optional["MergeOutcome"] = None

    def with_notes(self, *rows: Tuple[str, str]) -> "RunSummary":
        """A copy with extra ``(name, value)`` rows (e.g. the backend's modeled time)."""
        return dataclasses.replace(self, notes=self.notes + tuple(rows))

    @property
    def cache_hit_rate(self) -> Optional[float]:
        if not self.samples_served:
            return None
        return (self.samples_cached or 0) / self.samples_served

    def rows(self) -> List[Tuple[str, str]]:
        rows = [
            ("task", self.task),
            ("output", self.directory),
        ]
        if self.shard is not None:
            rows.append(("shard", self.shard))
        rows += [
            ("samples", f"{self.total} ({self.skipped} already done, {self.attempted} run now)"),
            ("finished", str(self.finished)),
            ("failed", str(self.failed)),
        ]
        for status, count in sorted(self.statuses.items()):
            rows.append((f"  {status}", str(count)))
        if self.overall_error is not None:
            rows.append(("overall", f"calculate_overall failed: {self.overall_error}"))
        if self.merge is not None:
            rows.append(("merged", self.merge.describe()))
        rows.append(("agent turns", str(self.agent_turns)))
        if self.samples_served is not None:
            rate = self.cache_hit_rate
            shown = "n/a" if rate is None else f"{rate:.1%}"
            rows.append(("cache hits", f"{self.samples_cached}/{self.samples_served} samples ({shown})"))
        rows.append(("wall time", f"{self.wall_time_s:.2f} s"))
        rows.extend(self.notes)
        return rows

    def render(self) -> str:
        """A plain-text table of the run, followed by the ledger's table when there is one."""
        rows = self.rows()
        width = max(len(name) for name, _ in rows)
        lines = ["run summary", "-" * 11]
        lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
        if self.ledger_table:
            lines += ["", "ledger", "-" * 6, self.ledger_table]
        return "\n".join(lines)
