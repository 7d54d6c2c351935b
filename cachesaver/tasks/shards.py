"""Sharded runs: the K-th of N disjoint slices of a task's samples, and the merge of the slices.

``cachesaver run TASK --out DIR --shard K/N`` (``run_task(..., shard=Shard(K, N))``) runs only
slice K of N: the samples at the positions ``p`` of ``get_indices()`` (counted from 0) with
``p % N == K - 1``. K counts from 1, so ``--shard 1/3``, ``2/3`` and ``3/3`` cover every sample
once. The N runs may go one after another or at once, in one host or many, as long as they share
the store (``--cache``) and the output directory (or their shard directories are copied into one
afterwards).

Layout under ``{out}/{task name}``::

    shard-K-of-N/runs.jsonl, error.jsonl    what slice K wrote: a run directory of its own, so the
                                            same shard command into the same DIR resumes it
    shard-K-of-N/shard.json                 written when the slice's samples are done
    runs.jsonl, error.jsonl, overall.json   the merge: what one unsharded run writes

Guarantees:

* A shard, once its samples are done, writes ``shard.json`` and then merges: when the finished
  shards cover every sample of the task, it writes the merged runs.jsonl, error.jsonl and
  overall.json. So the last shard to finish leaves the merged files; shards that finish at the same
  moment write the same files, each file replaced whole. :func:`merge_shards` (``cachesaver merge
  TASK --out DIR``) merges by hand, e.g. after copying the shard directories of several hosts
  into one DIR; merging again gives the same files.
* The merged runs.jsonl and overall.json are those of one unsharded run that produced the same
  outputs: runs.jsonl has one line per finished sample in ``get_indices()`` order (line for line
  the same but for ``time``), and overall.json is computed from the same records by the same code
  (:func:`~cachesaver.tasks.overall.overall_of`). The merged error.jsonl holds every failed
  attempt of every shard, in the order they failed (by ``time.timestamp``).
* A shard counts only if its ``shard.json`` was written for the same index list, in the same
  order, as the merging task's (a sha256 digest of the list is compared), so shards run with
  other task options are never mixed in; merging a task whose list no finished shard has is a
  :class:`~cachesaver.errors.ConfigurationError`.
* Shards of different N may be mixed (a replay with another N into the same DIR): a sample is
  covered by any finished shard that selects it. When several records finish one sample, the
  latest (by ``time.timestamp``) is kept; a sample is failed when none finishes it and an attempt
  failed. Records of the merged runs.jsonl already there count too, so a finished sample stays
  finished, and its records of samples the task no longer lists stay, last, as in a resumed run.
* Merging only reads the shard directories (a torn last line, of a shard still writing, is left
  out and left alone) and writes only the merged files, each through a temporary file of its own.
* Without a shared run (``--run-id``), each shard's pipeline is a run of its own: samples of a
  prompt that several shards ask in one namespace may repeat across shards. Replaying, or giving
  the shards one shared run, keeps the promises of one run. A shared run lasts while one of its
  pipelines is open, and ``linger_s`` after the last one closed
  (:class:`~cachesaver.store.shared_runs.SharedRun`): so shards that run at once share it, and
  shards that run one after another do when their pipelines linger, as ``cachesaver run
  --run-id ID --shard K/N`` makes them (for a day by default; the shard whose merge completes
  then ends the run).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigurationError, CorruptStoreError
from .overall import overall_of
from .records import RunDirectory, RunState, index_key, read_records, time_record
from .types import SampleIndex

if TYPE_CHECKING:
    import os

    from .task import Task

__all__ = ["SHARD_FILE", "MergeOutcome", "Shard", "indices_digest", "merge_shards", "write_shard_file"]

SHARD_FILE = "shard.json"
_SHARD_DIRECTORY = re.compile(r"shard-([1-9][0-9]*)-of-([1-9][0-9]*)")
_SHARD_TEXT = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*")


@dataclass(frozen=True)
class Shard:
    """Slice ``number`` of ``count`` (1 <= number <= count) of a task's samples: the samples at
    the positions p of ``get_indices()`` (counted from 0) with ``p % count == number - 1``.

    >>> Shard.parse("2/3").select(["a", "b", "c", "d", "e"])
    ['b', 'e']
    >>> Shard(2, 3).directory_name
    'shard-2-of-3'
    """

    number: int
    count: int

    def __post_init__(self) -> None:
        for name in ("number", "count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"Shard.{name} must be an int, got {value!r}")
        if self.count < 1:
            raise ConfigurationError(f"a task cannot be split into {self.count} shards; N must be at least 1")
        if not 1 <= self.number <= self.count:
            raise ConfigurationError(
                f"shard {self.number}/{self.count} does not exist: K counts from 1, so give 1/{self.count} "
                f"to {self.count}/{self.count}"
            )

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """The shard ``"K/N"`` names (the CLI's ``--shard``); ConfigurationError when it names none."""
        found = _SHARD_TEXT.fullmatch(text)
        if found is None:
            raise ConfigurationError(
                f"--shard takes K/N, the K-th of N slices with K from 1 to N (e.g. 2/3), got {text!r}"
            )
        try:
            return cls(int(found[1]), int(found[2]))
        except ConfigurationError as exc:
            raise ConfigurationError(f"--shard {text.strip()}: {exc}") from None

    def selects(self, position: int) -> bool:
        """Whether the sample at ``position`` of ``get_indices()`` belongs to this shard."""
        return position % self.count == self.number - 1

    def select(self, indices: Sequence[SampleIndex]) -> List[SampleIndex]:
        """The indices of this shard, in the task's order."""
        return [index for position, index in enumerate(indices) if self.selects(position)]

    @property
    def directory_name(self) -> str:
        """``shard-K-of-N``: this shard's directory under ``{out}/{task name}``."""
        return f"shard-{self.number}-of-{self.count}"

    def describe(self) -> str:
        """What the shard selects, in words."""
        return f"positions p of get_indices() with p % {self.count} == {self.number - 1}"

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"


def indices_digest(indices: Sequence[SampleIndex]) -> str:
    """A sha256 of the index list, in order (``1`` and ``"1"`` differ): equal digests, equal lists."""
    text = json.dumps([index_key(index) for index in indices], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_shard_file(directory: RunDirectory, shard: Shard, indices: Sequence[SampleIndex], state: RunState) -> None:
    """Write ``shard.json`` in the shard's ``directory``: the shard is done, for this index list."""
    selected = [index_key(index) for index in shard.select(indices)]
    directory.write_json(
        SHARD_FILE,
        {
            "shard": str(shard),
            "slice": shard.describe(),
            "indices": len(indices),
            "indices_sha256": indices_digest(indices),
            "selected": len(selected),
            "finished": sum(1 for key in selected if key in state.finished),
            "failed": sum(1 for key in selected if key in state.failed),
            "time": time_record(),
        },
    )


@dataclass(frozen=True)
class MergeOutcome:
    """What :func:`merge_shards` found and wrote.

    * ``complete``: the finished shards cover every sample, and the merged files were written;
      otherwise nothing was written and ``waiting`` says, one line per shard, what is missing.
    * ``shards``: the finished shards that count (``"K/N"``), in order.
    * ``total``, ``finished``, ``failed``, ``statuses``: over the task's samples, as for a run.
    * ``overall``: what overall.json holds (empty when not complete); ``overall_error`` is
      ``"<Type>: message"`` when ``calculate_overall`` failed.
    * ``failed_attempts``: the lines of the merged error.jsonl (written only when there is one).
    """

    task: str
    directory: str
    complete: bool
    total: int
    shards: Tuple[str, ...] = ()
    waiting: Tuple[str, ...] = ()
    finished: int = 0
    failed: int = 0
    statuses: Dict[str, int] = field(default_factory=dict)
    overall: Dict[str, Any] = field(default_factory=dict)
    overall_error: Optional[str] = None
    failed_attempts: int = 0

    def describe(self) -> str:
        """One line: what was merged where, or what the merge waits for."""
        if self.complete:
            return (
                f"{self.finished} finished, {self.failed} failed of {self.total} into "
                f"{self.directory}/runs.jsonl, overall.json"
            )
        return "not yet: " + "; ".join(self.waiting)

    def render(self) -> str:
        """A plain-text table, like the run summary's."""
        rows = [("task", self.task), ("output", self.directory), ("shards", ", ".join(self.shards) or "none")]
        if self.complete:
            rows += [("samples", str(self.total)), ("finished", str(self.finished)), ("failed", str(self.failed))]
            rows += [(f"  {status}", str(count)) for status, count in sorted(self.statuses.items())]
            if self.overall_error is not None:
                rows.append(("overall", f"calculate_overall failed: {self.overall_error}"))
            plural = "" if self.failed_attempts == 1 else "s"
            errors = f", error.jsonl ({self.failed_attempts} failed attempt{plural})" if self.failed_attempts else ""
            rows.append(("merged", f"runs.jsonl, overall.json{errors}"))
        else:
            rows.append(("merged", "no, nothing written"))
            rows += [("  waiting", line) for line in self.waiting]
        width = max(len(name) for name, _ in rows)
        lines = ["merge summary", "-" * 13]
        lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Found:
    """One shard directory under the task's output directory."""

    shard: Shard
    directory: RunDirectory
    marker: Optional[Dict[str, Any]]


def _shard_directories(base: Path) -> List[_Found]:
    found: List[_Found] = []
    if not base.is_dir():
        return found
    for path in base.iterdir():
        match = _SHARD_DIRECTORY.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        number, count = int(match[1]), int(match[2])
        if number > count:
            continue
        marker_path = path / SHARD_FILE
        marker: Optional[Dict[str, Any]] = None
        try:
            text = marker_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            pass
        else:
            try:
                marker = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CorruptStoreError(
                    f"{marker_path} is not JSON ({exc.msg}); delete it and run that shard again"
                ) from None
            if not isinstance(marker, dict) or not isinstance(marker.get("indices_sha256"), str):
                raise CorruptStoreError(f"{marker_path} is not a shard file; delete it and run that shard again")
        found.append(_Found(Shard(number, count), RunDirectory(path), marker))
    found.sort(key=lambda item: (item.shard.count, item.shard.number))
    return found


def _timestamp(record: Dict[str, Any]) -> float:
    """When the record was written (``time.timestamp``); -inf for a record without one."""
    when = record.get("time")
    moment = when.get("timestamp") if isinstance(when, dict) else None
    if isinstance(moment, bool) or not isinstance(moment, (int, float)):
        return float("-inf")
    return float(moment)


def _keep_latest(chosen: Dict[str, Dict[str, Any]], record: Dict[str, Any]) -> None:
    key = index_key(record["index"])
    held = chosen.get(key)
    if held is None or _timestamp(record) > _timestamp(held):
        chosen[key] = record


def _waiting(found: List[_Found], digest: str, indices: Sequence[SampleIndex]) -> Tuple[str, ...]:
    """Per shard that would complete a set of N, why it does not count yet."""
    if not found:
        return ("no shard has run yet: run cachesaver run ... --shard K/N for K = 1 to N",)
    lines: List[str] = []
    for count in sorted({item.shard.count for item in found}):
        by_number = {item.shard.number: item for item in found if item.shard.count == count}
        for number in range(1, count + 1):
            item = by_number.get(number)
            if item is None or item.marker is None:
                lines.append(f"shard {number}/{count} has not finished")
            elif item.marker["indices_sha256"] != digest:
                lines.append(
                    f"shard {number}/{count} ran on another index list ({item.marker.get('indices')} "
                    f"indices, here {len(indices)}): run it again with this task's options"
                )
    return tuple(lines)


def merge_shards(task: "Task", out_dir: "os.PathLike[str] | str") -> MergeOutcome:
    """Merge the finished shards of ``task`` under ``{out_dir}/{task.name}`` (module docstring).

    Writes runs.jsonl, error.jsonl and overall.json there when the finished shards cover every
    sample, else nothing. Calls ``task.calculate_overall`` (when complete), never
    ``task.release()``. Raises ConfigurationError when shards have finished but none for this
    task's index list. Blocking file I/O: call it from a worker thread in async code.
    """
    from .task import checked_indices, checked_name

    name = checked_name(task)
    indices = checked_indices(task)
    digest = indices_digest(indices)
    base = Path(out_dir) / name
    found = _shard_directories(base)
    finished_shards = [item for item in found if item.marker is not None]
    counting = [item for item in finished_shards if item.marker is not None and item.marker["indices_sha256"] == digest]
    if finished_shards and not counting:
        raise ConfigurationError(
            f"none of the {len(finished_shards)} finished shard(s) under {base} ran on this task's "
            f"{len(indices)} indices; give the merge the same task and --task-option values as the shards"
        )
    covered = [False] * len(indices)
    for item in counting:
        for position in range(item.shard.number - 1, len(indices), item.shard.count):
            covered[position] = True
    shards = tuple(str(item.shard) for item in counting)
    if not all(covered):
        return MergeOutcome(
            task=name, directory=str(base), complete=False, total=len(indices), shards=shards,
            waiting=_waiting(found, digest, indices),
        )

    merged = RunDirectory(base)
    finished: Dict[str, Dict[str, Any]] = {}
    failed: Dict[str, Dict[str, Any]] = {}
    error_lines: List[Tuple[float, int, bytes]] = []
    seen_error_lines: set[bytes] = set()

    def log_error(record: Dict[str, Any]) -> None:
        line = merged.encode(record)
        if line not in seen_error_lines:
            seen_error_lines.add(line)
            error_lines.append((_timestamp(record), len(error_lines), line))

    for record in read_records(merged.runs_path):  # the previous merge (or an unsharded run)
        _keep_latest(finished, record)
    for record in read_records(merged.errors_path):
        log_error(record)
        _keep_latest(failed, record)
    for item in counting:
        mine = {index_key(index) for index in item.shard.select(indices)}
        for record in read_records(item.directory.runs_path):
            if index_key(record["index"]) in mine:
                _keep_latest(finished, record)
        for record in read_records(item.directory.errors_path):
            log_error(record)
            if index_key(record["index"]) in mine:
                _keep_latest(failed, record)

    state = RunState()
    listed = [index_key(index) for index in indices]
    listed_set = set(listed)
    order = [key for key in listed if key in finished] + [key for key in finished if key not in listed_set]
    state.finished = {key: finished[key] for key in order}
    state.failed = {key: record for key, record in failed.items() if key not in finished}
    overall, statuses, overall_error = overall_of(task, indices, state)
    merged.rewrite_runs([merged.encode(state.finished[key]) for key in order])
    if error_lines or merged.errors_path.exists():
        merged.rewrite_errors([line for _, _, line in sorted(error_lines)])
    merged.write_overall(overall)
    return MergeOutcome(
        task=name,
        directory=str(base),
        complete=True,
        total=len(indices),
        shards=shards,
        finished=sum(1 for key in listed if key in state.finished),
        failed=sum(1 for key in listed if key in state.failed),
        statuses=statuses,
        overall=overall,
        overall_error=overall_error,
        failed_attempts=len(error_lines),
    )
