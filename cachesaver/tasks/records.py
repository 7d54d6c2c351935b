"""The files of one task's run directory: runs.jsonl, error.jsonl and overall.json.

Guarantees:

* ``runs.jsonl`` gets one line per finished sample, ``error.jsonl`` one line per failed
  attempt; each line is written whole and flushed before the sample counts as done, so a killed
  process loses at most the samples that were in flight.
* During a run lines are appended in completion order; :meth:`RunDirectory.rewrite_runs`
  (called by the runner when a run ends) puts runs.jsonl in a chosen order by writing a
  temporary file in the same directory, flushing it to disk and renaming it over runs.jsonl,
  so a crash at any moment leaves either the old file or the new one, never a mix.
  error.jsonl stays a log in completion order.
* A line cut short by a crash (no trailing newline) is removed when the directory is opened
  again; any other unreadable line raises :class:`~cachesaver.errors.CorruptStoreError` naming
  the file and line.
* A sample counts as finished when its index has a line in runs.jsonl, and as failed when it
  has a line in error.jsonl but none in runs.jsonl (error.jsonl keeps every failed attempt).
* ``overall.json`` is replaced atomically.
* Every file is replaced through a temporary file of a name unique to the writer (in the same
  directory), so processes that replace the same file at once (the shards of one run merging,
  :mod:`cachesaver.tasks.shards`) never write into each other's temporary file: the last
  rename wins, whole.
* :func:`read_records` reads a file another process may be appending to: a torn last line is
  skipped, never truncated.

Record layout (``time`` is the only part that differs between identical runs)::

    runs.jsonl   {"index": i, "output": {"index", "status", "result", "history"}, "time": {...}}
    error.jsonl  {"index": i, "error": "Type: message", "traceback": "...", "output": {...},
                  "time": {...}}
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from ..errors import CorruptStoreError
from .types import SampleIndex, TaskDefinitionError, TaskOutput

__all__ = ["RunDirectory", "RunState", "index_key", "read_records", "time_record"]

RUNS_FILE = "runs.jsonl"
ERRORS_FILE = "error.jsonl"
OVERALL_FILE = "overall.json"


def index_key(index: SampleIndex) -> str:
    """A hashable identity for a sample index that keeps ``1`` and ``"1"`` apart."""
    return json.dumps(index, ensure_ascii=False)


def time_record(timestamp: Optional[float] = None, duration_s: Optional[float] = None) -> Dict[str, Any]:
    moment = time.time() if timestamp is None else timestamp
    record: Dict[str, Any] = {
        "timestamp": moment,
        "str": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)),
    }
    if duration_s is not None:
        record["duration_s"] = round(duration_s, 6)
    return record


@dataclass
class RunState:
    """What a run directory already holds, keyed by :func:`index_key`."""

    finished: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    failed: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def outcome(self, key: str) -> Optional[Dict[str, Any]]:
        return self.finished.get(key) or self.failed.get(key)


def _read_jsonl(path: Path, *, repair: bool = True) -> list[Dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    complete = raw.rfind(b"\n") + 1
    if complete < len(raw):  # a line cut short by a crash (or still being written): drop it
        if repair:
            with open(path, "r+b") as handle:
                handle.truncate(complete)
        raw = raw[:complete]
    records = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorruptStoreError(
                f"{path} line {number} is not JSON ({exc.msg}); cachesaver did not write it. "
                "Fix or delete that line, then run again"
            ) from None
        if not isinstance(record, dict) or "index" not in record:
            raise CorruptStoreError(
                f"{path} line {number} is not a sample record (no 'index'); fix or delete that line"
            )
        records.append(record)
    return records


def read_records(path: os.PathLike[str] | str) -> list[Dict[str, Any]]:
    """The records of a runs.jsonl or error.jsonl file, in file order, without changing it.

    A last line without its newline (torn by a crash, or being appended by another process
    right now) is left out, not truncated; a missing file has no records. Any other unreadable
    line raises :class:`~cachesaver.errors.CorruptStoreError` naming the file and line.
    """
    return _read_jsonl(Path(path), repair=False)


def _replace(path: Path, chunks: Iterable[bytes], *, sync: bool) -> None:
    """Write ``chunks`` to a temporary file of this writer's own next to ``path``, then rename
    it over ``path`` (atomic): readers see the old file or the new one, never a mix."""
    # Named by hand, not by mkstemp: mkstemp's files are private (0600), and the file keeps the
    # mode it is created with, which must be what open() gives runs.jsonl (umask applies).
    temporary = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "xb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            if sync:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class RunDirectory:
    """The output directory of one task (``{out}/{task name}``); created on first use."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.path = Path(path)
        self.runs_path = self.path / RUNS_FILE
        self.errors_path = self.path / ERRORS_FILE
        self.overall_path = self.path / OVERALL_FILE

    def load(self) -> RunState:
        """Read what earlier runs left (repairing a torn last line)."""
        self.path.mkdir(parents=True, exist_ok=True)
        state = RunState()
        for record in _read_jsonl(self.runs_path):
            state.finished[index_key(record["index"])] = record
        for record in _read_jsonl(self.errors_path):
            key = index_key(record["index"])
            if key not in state.finished:
                state.failed[key] = record
        return state

    @staticmethod
    def _line(record: Dict[str, Any]) -> bytes:
        try:
            text = json.dumps(record, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TaskDefinitionError(
                f"sample {record.get('index')!r}: the output is not JSON ({exc}); a result must "
                "be made of dicts, lists, str, int, float, bool and None"
            ) from None
        return (text + "\n").encode("utf-8")

    def encode(self, record: Dict[str, Any]) -> bytes:
        """The line ``record`` is written as; raises TaskDefinitionError if it is not JSON."""
        return self._line(record)

    @staticmethod
    def _append(path: Path, line: bytes) -> None:
        with open(path, "ab") as handle:
            handle.write(line)
            handle.flush()

    def append_run(self, line: bytes) -> None:
        self._append(self.runs_path, line)

    def append_error(self, line: bytes) -> None:
        self._append(self.errors_path, line)

    def rewrite_runs(self, lines: Iterable[bytes]) -> None:
        """Replace runs.jsonl atomically with ``lines`` (each from :meth:`encode`), in order."""
        _replace(self.runs_path, lines, sync=True)

    def rewrite_errors(self, lines: Iterable[bytes]) -> None:
        """Replace error.jsonl atomically with ``lines`` (each from :meth:`encode`), in order
        (a merge of shards writes their attempts so; a run only appends)."""
        _replace(self.errors_path, lines, sync=True)

    def write_overall(self, overall: Dict[str, Any]) -> None:
        """Replace overall.json atomically (indented JSON)."""
        text = json.dumps(overall, ensure_ascii=False, indent=2, allow_nan=False) + "\n"
        _replace(self.overall_path, [text.encode("utf-8")], sync=False)

    def write_json(self, name: str, value: Dict[str, Any]) -> None:
        """Replace the file ``name`` of this directory atomically with ``value`` as indented JSON."""
        text = json.dumps(value, ensure_ascii=False, indent=2, allow_nan=False) + "\n"
        _replace(self.path / name, [text.encode("utf-8")], sync=False)


def output_of(record: Dict[str, Any]) -> TaskOutput:
    """The TaskOutput stored in a runs.jsonl or error.jsonl record."""
    output = record.get("output") or {}
    return TaskOutput.from_json({**output, "index": record["index"]})
