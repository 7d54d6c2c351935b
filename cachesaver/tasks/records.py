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

Record layout (``time`` is the only part that differs between identical runs)::

    runs.jsonl   {"index": i, "output": {"index", "status", "result", "history"}, "time": {...}}
    error.jsonl  {"index": i, "error": "Type: message", "traceback": "...", "output": {...},
                  "time": {...}}
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from ..errors import CorruptStoreError
from .types import SampleIndex, TaskDefinitionError, TaskOutput

__all__ = ["RunDirectory", "RunState", "index_key", "time_record"]

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


def _read_jsonl(path: Path) -> list[Dict[str, Any]]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete = raw.rfind(b"\n") + 1
    if complete < len(raw):  # a line cut short by a crash: drop it
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
        temporary = self.runs_path.with_name(RUNS_FILE + ".tmp")
        try:
            with open(temporary, "wb") as handle:
                for line in lines:
                    handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.runs_path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def write_overall(self, overall: Dict[str, Any]) -> None:
        text = json.dumps(overall, ensure_ascii=False, indent=2, allow_nan=False) + "\n"
        temporary = self.overall_path.with_suffix(".json.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.overall_path)


def output_of(record: Dict[str, Any]) -> TaskOutput:
    """The TaskOutput stored in a runs.jsonl or error.jsonl record."""
    output = record.get("output") or {}
    return TaskOutput.from_json({**output, "index": record["index"]})
