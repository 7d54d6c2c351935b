"""Run every sample of a task against an agent, resumably, and write the run's files.

>>> import anyio, tempfile
>>> from cachesaver.tasks import EchoAgent, Task, TaskSampleExecutionResult
>>> class Ping(Task):
...     def get_indices(self): return [0, 1]
...     async def start_sample(self, index, session):
...         reply = await session.action({"role": "user", "content": f"ping {index}"})
...         return TaskSampleExecutionResult(result=reply.content)
...     def calculate_overall(self, results): return {"n": len(results)}
>>> with tempfile.TemporaryDirectory() as out:
...     summary = anyio.run(run_task, Ping("ping"), EchoAgent(), out)
>>> summary.finished, summary.overall["custom"], summary.overall["validation"]["completed"]
(2, {'n': 2}, 1.0)
"""

from __future__ import annotations

import math
import os
import time
import traceback
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Tuple

import anyio
import anyio.to_thread

from ..errors import ConfigurationError
from .agents import Agent, CacheCounts
from .overall import overall_of, statuses_of
from .progress import SampleProgress
from .records import RunDirectory, RunState, index_key, time_record
from .shards import MergeOutcome, Shard, merge_shards, write_shard_file
from .summary import RunSummary, ledger_text
from .task import Session, Task, checked_indices, checked_name
from .types import (
    JSONSerializable,
    SampleIndex,
    SampleStatus,
    TaskDefinitionError,
    TaskOutput,
    TaskSampleExecutionResult,
)

__all__ = ["run_task"]


def _check_positive(name: str, value: Optional[float], *, integer: bool = False) -> None:
    if value is None:
        return
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0) or math.isinf(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


class _Run:
    """The state of one ``run_task`` call (one per call; not reused)."""

    def __init__(
        self,
        task: Task,
        agent: Agent,
        directory: RunDirectory,
        state: RunState,
        progress: SampleProgress,
        sample_timeout_s: Optional[float],
        cancel_grace_s: float,
    ) -> None:
        self.task = task
        self.agent = agent
        self.directory = directory
        self.state = state
        self.progress = progress
        self.sample_timeout_s = sample_timeout_s
        self.cancel_grace_s = cancel_grace_s
        self.lock = anyio.Lock()
        self.agent_turns = 0

    async def execute(
        self, index: SampleIndex, session: Session
    ) -> Tuple[Any, Optional[BaseException], Optional[str], bool]:
        """Run start_sample; returns (result, error, traceback, timed_out)."""
        result: Any = None
        error: Optional[BaseException] = None
        trace: Optional[str] = None
        timed_out = False

        async def watchdog(timeout_s: float, scope: anyio.CancelScope) -> None:
            nonlocal timed_out
            await anyio.sleep(timeout_s)
            timed_out = True
            session.cancel()
            await anyio.sleep(self.cancel_grace_s)
            scope.cancel()

        async with anyio.create_task_group() as group:
            if self.sample_timeout_s is not None:
                group.start_soon(watchdog, self.sample_timeout_s, group.cancel_scope)
            try:
                result = await self.task.start_sample(index, session)
            except Exception as exc:  # task code failed: recorded, the run goes on
                error, trace = exc, traceback.format_exc()
            group.cancel_scope.cancel()
        return result, error, trace, timed_out

    @staticmethod
    def _error_record(
        index: SampleIndex,
        message: str,
        trace: Optional[str],
        result: JSONSerializable,
        history: List[Any],
        duration: float,
    ) -> Dict[str, Any]:
        failed = TaskOutput(index, SampleStatus.TASK_ERROR, result, history)
        return {
            "index": index,
            "error": message,
            "traceback": trace,
            "output": failed.to_json(),
            "time": time_record(duration_s=duration),
        }

    async def run_sample(self, index: SampleIndex) -> None:
        session = Session(self.agent, task_name=self.task.name, index=index)
        self.progress.started()
        began = time.monotonic()
        try:
            result, error, trace, timed_out = await self.execute(index, session)
        finally:
            self.agent_turns += session.turns
        duration = time.monotonic() - began
        history = list(session.history)
        message: Optional[str] = None
        kept_result: JSONSerializable = None  # the result a failed sample still records
        if timed_out:
            message = (
                f"SampleTimeout: sample {index!r} did not finish within {self.sample_timeout_s} s "
                "(raise sample_timeout_s / --sample-timeout if it needs longer)"
            )
        elif error is not None:
            message = f"{type(error).__name__}: {error}"
        elif session.cache_miss is not None:
            miss = session.cache_miss
            message = f"{type(miss).__name__}: {miss}"
        elif not isinstance(result, TaskSampleExecutionResult):
            message = (
                f"TaskDefinitionError: start_sample returned {type(result).__name__}; "
                "return a TaskSampleExecutionResult(status=..., result=...)"
            )
        elif result.status is SampleStatus.TASK_ERROR:
            message = (
                "TaskError: start_sample returned status 'task error'; the sample counts as failed "
                "and runs again on the next run into this directory"
            )
            kept_result = result.result
        line = b""
        if message is None:
            output = TaskOutput(index, result.status, result.result, history)
            record = {"index": index, "output": output.to_json(), "time": time_record(duration_s=duration)}
            try:
                line = self.directory.encode(record)
            except TaskDefinitionError as exc:
                message = f"TaskDefinitionError: {exc}"
        if message is not None:
            record = self._error_record(index, message, trace, kept_result, history, duration)
            try:
                line = self.directory.encode(record)
            except TaskDefinitionError as exc:  # the kept result is not JSON: drop it
                record = self._error_record(index, f"{message}; {exc}", trace, None, history, duration)
                line = self.directory.encode(record)
        # A sample whose outcome is known is always written, even if the run is being cancelled.
        with anyio.CancelScope(shield=True):
            async with self.lock:
                append = self.directory.append_run if message is None else self.directory.append_error
                await anyio.to_thread.run_sync(append, line)
            key = index_key(index)
            if message is None:
                self.state.finished[key] = record
                self.state.failed.pop(key, None)
            else:
                self.state.failed[key] = record
            self.progress.finished(failed=message is not None)


def _ordered_runs(directory: RunDirectory, indices: List[SampleIndex], state: RunState) -> List[bytes]:
    """runs.jsonl's lines in ``get_indices()`` order, then records of samples the task no
    longer lists, in the order they were found."""
    listed = [index_key(index) for index in indices]
    keys = [key for key in listed if key in state.finished]
    listed_set = set(listed)
    keys += [key for key in state.finished if key not in listed_set]
    return [directory.encode(state.finished[key]) for key in keys]


async def run_task(
    task: Task,
    agent: Agent,
    out_dir: "os.PathLike[str] | str",
    *,
    concurrency: Optional[int] = None,
    sample_timeout_s: Optional[float] = None,
    cancel_grace_s: float = 1.0,
    progress: bool = False,
    progress_file: Optional[IO[str]] = None,
    ledger: Any = None,
    shard: Optional[Shard] = None,
) -> RunSummary:
    """Run every sample of ``task`` not yet finished in ``{out_dir}/{task.name}``.

    Guarantees:

    * Samples already in runs.jsonl are skipped; samples only in error.jsonl are run again.
      Each sample's outcome is appended as soon as it is known (see
      :mod:`cachesaver.tasks.records`), so a killed run loses at most the samples in flight.
    * At most ``concurrency`` samples run at once (default: ``task.concurrency``).
    * A sample whose task code raises, that returns status ``TASK_ERROR`` itself (its result
      is kept in the error record), whose result is not JSON, that met a cache miss in a
      replay-only run (even if the task caught it), or that outlives ``sample_timeout_s`` is
      written to error.jsonl with status ``"task error"`` and the reason (and traceback);
      it counts as failed and runs again on the next run; the other samples go on.
    * On time-out the session is cancelled first (pending and later ``action`` calls return
      ``CANCELLED``), and the sample's code is cancelled ``cancel_grace_s`` later if it has
      not returned by then.
    * When the samples are done (not when the run is cancelled or crashes), runs.jsonl is
      rewritten atomically with one line per finished sample in ``get_indices()`` order
      (samples the task no longer lists last), so runs that finish the same samples with the
      same outputs write the same runs.jsonl but for ``time``, whatever order samples
      completed in, and across resumes.
    * overall.json is then rewritten from the whole directory. If ``calculate_overall`` raises
      or returns something that is not JSON, overall.json is still written, with ``custom``
      ``{"error": "<Type>: message", ...}``, and ``RunSummary.overall_error`` says so.
    * ``task.release()`` is called exactly once, however the run ends.
    * Cancelling the call cancels the samples in flight promptly and re-raises.

    ``ledger`` (normally ``pipeline.ledger``) is only read, for the summary.

    With ``shard`` (a :class:`~cachesaver.tasks.shards.Shard`), only that slice of the samples
    runs, in ``{out_dir}/{task.name}/shard-K-of-N`` (runs.jsonl and error.jsonl as above, over
    the slice; no overall.json there). When its samples are done it writes its ``shard.json``
    and merges the finished shards (:func:`~cachesaver.tasks.shards.merge_shards`): once they
    cover every sample, ``{out_dir}/{task.name}`` gets the runs.jsonl and overall.json one
    unsharded run would write. The summary counts the slice; ``summary.merge`` says whether the
    merge was written, and ``summary.overall`` is the merged overall.json (empty until then).
    """
    started = time.monotonic()
    progress_bar: Optional[SampleProgress] = None
    try:
        name = checked_name(task)
        _check_positive("concurrency", concurrency, integer=True)
        _check_positive("sample_timeout_s", sample_timeout_s)
        _check_positive("cancel_grace_s", cancel_grace_s)
        width = task.concurrency if concurrency is None else concurrency
        _check_positive("task.concurrency", width, integer=True)
        if shard is not None and not isinstance(shard, Shard):
            raise ConfigurationError(f"shard must be a cachesaver.tasks.shards.Shard, got {type(shard).__name__}")
        indices = checked_indices(task)
        selected = indices if shard is None else shard.select(indices)
        base = Path(out_dir) / name
        directory = RunDirectory(base if shard is None else base / shard.directory_name)
        state = await anyio.to_thread.run_sync(directory.load)
        todo = [i for i in selected if index_key(i) not in state.finished]
        skipped = len(selected) - len(todo)

        counts = agent if isinstance(agent, CacheCounts) else None
        served_before = counts.samples_served if counts else 0
        cached_before = counts.samples_cached if counts else 0

        def hit_rate() -> Optional[float]:
            if counts is None:
                return None
            served = counts.samples_served - served_before
            return (counts.samples_cached - cached_before) / served if served else None

        progress_bar = SampleProgress(name, len(todo), enabled=progress, hit_rate=hit_rate, file=progress_file)
        run = _Run(task, agent, directory, state, progress_bar, sample_timeout_s, cancel_grace_s)
        pending = iter(todo)

        async def worker() -> None:
            for index in pending:
                await run.run_sample(index)

        async with anyio.create_task_group() as group:
            for _ in range(min(width, len(todo))):
                group.start_soon(worker)

        await anyio.to_thread.run_sync(
            lambda: directory.rewrite_runs(_ordered_runs(directory, selected, state))
        )
        merge: Optional[MergeOutcome] = None
        if shard is None:
            overall, statuses, overall_error = overall_of(task, indices, state)
            await anyio.to_thread.run_sync(directory.write_overall, overall)
        else:
            statuses = statuses_of(selected, state)

            def finish_shard() -> MergeOutcome:
                write_shard_file(directory, shard, indices, state)
                return merge_shards(task, out_dir)

            merge = await anyio.to_thread.run_sync(finish_shard)
            overall, overall_error = merge.overall, merge.overall_error
        finished = sum(1 for i in selected if index_key(i) in state.finished)
        return RunSummary(
            task=name,
            directory=str(directory.path),
            total=len(selected),
            skipped=skipped,
            attempted=len(todo),
            finished=finished,
            failed=sum(1 for i in selected if index_key(i) in state.failed),
            statuses=statuses,
            wall_time_s=time.monotonic() - started,
            agent_turns=run.agent_turns,
            samples_served=None if counts is None else counts.samples_served - served_before,
            samples_cached=None if counts is None else counts.samples_cached - cached_before,
            overall=overall,
            ledger=ledger.snapshot() if callable(getattr(ledger, "snapshot", None)) else None,
            ledger_table=ledger_text(ledger),
            overall_error=overall_error,
            shard=None if shard is None else f"{shard}: {len(selected)} of {len(indices)} samples ({shard.describe()})",
            merge=merge,
        )
    finally:
        if progress_bar is not None:
            progress_bar.close()
        task.release()
