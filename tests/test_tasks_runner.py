"""run_task: output files, failures isolated, resume after a crash, replay-only runs, time-outs."""

import io
import json

import anyio
import pytest

from cachesaver.errors import ConfigurationError, ContextLengthError, CorruptStoreError
from cachesaver.models.replay_only import ReplayOnlyModel
from cachesaver.models.scripted import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.tasks import (
    AgentOutput,
    AgentOutputStatus,
    EchoAgent,
    PipelineAgent,
    SampleStatus,
    Task,
    TaskDefinitionError,
    TaskSampleExecutionResult,
    run_task,
)


class CountingTask(Task):
    """Two turns per sample; records which samples started and how often release() ran.

    ``fail`` lists indices whose code raises; ``hook(index)`` runs when a sample starts.
    """

    def __init__(self, count=10, *, fail=(), hook=None, concurrency=1, name="counting"):
        super().__init__(name=name, concurrency=concurrency)
        self.count = count
        self.fail = set(fail)
        self.hook = hook
        self.started = []
        self.completed = []
        self.released = 0
        self.seen_results = None

    def get_indices(self):
        return list(range(self.count))

    async def start_sample(self, index, session):
        self.started.append(index)
        if self.hook is not None:
            await self.hook(index)
        first = await session.action({"role": "user", "content": f"sample {index} turn 0"})
        if index in self.fail:
            raise RuntimeError(f"task bug in sample {index}")
        second = await session.action({"role": "user", "content": f"sample {index} turn 1"})
        self.completed.append(index)
        return TaskSampleExecutionResult(
            status=SampleStatus.COMPLETED, result={"answers": [first.content, second.content]}
        )

    def calculate_overall(self, results):
        self.seen_results = results
        return {"finished": len(results)}

    def release(self):
        self.released += 1


def read_jsonl(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def lines_without_time(path):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(path)]


async def test_writes_runs_errors_and_overall(tmp_path):
    task = CountingTask(4, fail=[2])
    summary = await run_task(task, EchoAgent(), tmp_path)
    directory = tmp_path / "counting"
    runs = read_jsonl(directory / "runs.jsonl")
    assert sorted(r["index"] for r in runs) == [0, 1, 3]
    record = runs[0]
    assert record["output"]["status"] == "completed"
    assert record["output"]["result"] == {"answers": ["sample 0 turn 0", "sample 0 turn 1"]}
    assert [h["role"] for h in record["output"]["history"]] == ["user", "agent", "user", "agent"]
    assert set(record["time"]) == {"timestamp", "str", "duration_s"}
    errors = read_jsonl(directory / "error.jsonl")
    assert [e["index"] for e in errors] == [2]
    assert errors[0]["error"] == "RuntimeError: task bug in sample 2"
    assert "raise RuntimeError" in errors[0]["traceback"]
    assert errors[0]["output"]["status"] == "task error"
    assert len(errors[0]["output"]["history"]) == 2  # the history up to the failure
    overall = json.loads((directory / "overall.json").read_text())
    assert overall["total"] == 4
    assert overall["custom"] == {"finished": 3}
    assert overall["validation"]["completed"] == 0.75
    assert overall["validation"]["task error"] == 0.25
    assert overall["validation"]["min_history_length"] == 2
    assert overall["validation"]["max_history_length"] == 4
    assert (summary.finished, summary.failed, summary.attempted, summary.skipped) == (3, 1, 4, 0)
    assert summary.statuses == {"completed": 3, "task error": 1}
    assert summary.agent_turns == 7
    assert task.released == 1
    assert [r.index for r in task.seen_results] == [0, 1, 3]  # get_indices order


async def test_an_exception_in_one_sample_does_not_stop_the_others(tmp_path):
    task = CountingTask(10, fail=[0, 5], concurrency=3)
    summary = await run_task(task, EchoAgent(), tmp_path)
    assert sorted(task.started) == list(range(10))
    assert (summary.finished, summary.failed) == (8, 2)


async def test_resume_after_a_crash_runs_only_the_missing_samples(tmp_path):
    with anyio.CancelScope() as crash:

        async def hook(index):
            if index == 5:  # the process "dies" while sample 5 is in flight
                crash.cancel()
                await anyio.sleep_forever()

        crashed = CountingTask(10, hook=hook)
        await run_task(crashed, EchoAgent(), tmp_path)
    assert crash.cancelled_caught
    assert crashed.released == 1
    runs = tmp_path / "counting" / "runs.jsonl"
    assert sorted(r["index"] for r in read_jsonl(runs)) == [0, 1, 2, 3, 4]
    assert not (tmp_path / "counting" / "overall.json").exists()

    resumed = CountingTask(10)
    summary = await run_task(resumed, EchoAgent(), tmp_path)
    assert resumed.started == [5, 6, 7, 8, 9]
    assert (summary.skipped, summary.attempted, summary.finished) == (5, 5, 10)
    assert sorted(r["index"] for r in read_jsonl(runs)) == list(range(10))
    assert json.loads((tmp_path / "counting" / "overall.json").read_text())["custom"] == {"finished": 10}


async def test_a_line_torn_by_a_crash_is_dropped_and_its_sample_rerun(tmp_path):
    await run_task(CountingTask(3), EchoAgent(), tmp_path)
    runs = tmp_path / "counting" / "runs.jsonl"
    text = runs.read_text()
    last = text.splitlines()[-1]
    runs.write_text(text[: len(text) - len(last) // 2 - 1])  # cut the last line in half
    again = CountingTask(3)
    await run_task(again, EchoAgent(), tmp_path)
    assert again.started == [json.loads(last)["index"]]
    assert sorted(r["index"] for r in read_jsonl(runs)) == [0, 1, 2]


async def test_a_corrupt_line_is_reported_not_skipped(tmp_path):
    directory = tmp_path / "counting"
    directory.mkdir()
    (directory / "runs.jsonl").write_text('{"index": 0, "output": {}}\nnot json\n{"index": 1}\n')
    task = CountingTask(3)
    with pytest.raises(CorruptStoreError, match="runs.jsonl line 2"):
        await run_task(task, EchoAgent(), tmp_path)
    assert task.released == 1


async def test_failed_samples_are_retried_on_resume(tmp_path):
    await run_task(CountingTask(4, fail=[1, 3]), EchoAgent(), tmp_path)
    fixed = CountingTask(4, fail=[3])
    summary = await run_task(fixed, EchoAgent(), tmp_path)
    assert fixed.started == [1, 3]
    assert (summary.finished, summary.failed) == (3, 1)
    overall = json.loads((tmp_path / "counting" / "overall.json").read_text())
    assert overall["validation"]["task error"] == 0.25
    assert [e["index"] for e in read_jsonl(tmp_path / "counting" / "error.jsonl")] == [1, 3, 3]
    # sample 1 finished after sample 2, yet runs.jsonl is rewritten in get_indices() order
    assert [r["index"] for r in read_jsonl(tmp_path / "counting" / "runs.jsonl")] == [0, 1, 2]


async def test_a_task_reporting_task_error_itself_counts_as_failed_and_is_retried(tmp_path):
    class SelfReporting(CountingTask):
        def __init__(self, broken):
            super().__init__(4)
            self.broken = broken

        async def start_sample(self, index, session):
            self.started.append(index)
            reply = await session.action({"role": "user", "content": f"sample {index}"})
            if index in self.broken:
                result = {1, 2} if index == 3 else {"why": "environment down"}  # 3: not JSON
                return TaskSampleExecutionResult(status=SampleStatus.TASK_ERROR, result=result)
            return TaskSampleExecutionResult(result=reply.content)

    summary = await run_task(SelfReporting(broken={1, 3}), EchoAgent(), tmp_path)
    assert (summary.finished, summary.failed) == (2, 2)
    assert summary.statuses == {"completed": 2, "task error": 2}
    directory = tmp_path / "counting"
    assert [r["index"] for r in read_jsonl(directory / "runs.jsonl")] == [0, 2]
    errors = {e["index"]: e for e in read_jsonl(directory / "error.jsonl")}
    assert errors[1]["error"].startswith("TaskError: start_sample returned status 'task error'")
    assert errors[1]["output"]["status"] == "task error"
    assert errors[1]["output"]["result"] == {"why": "environment down"}  # the result is kept
    assert errors[1]["output"]["history"][0] == {"role": "user", "content": "sample 1"}
    assert "not JSON" in errors[3]["error"] and errors[3]["output"]["result"] is None
    overall = json.loads((directory / "overall.json").read_text())
    assert overall["validation"]["task error"] == 0.5 and overall["custom"] == {"finished": 2}

    retried = SelfReporting(broken=set())
    summary = await run_task(retried, EchoAgent(), tmp_path)
    assert retried.started == [1, 3]
    assert (summary.finished, summary.failed) == (4, 0)


@pytest.mark.parametrize(
    "score, error",
    [
        (lambda results: 1 / 0, "ZeroDivisionError: division by zero"),
        (lambda results: {"ids": {1, 2}}, "TaskDefinitionError: calculate_overall returned a value that is not JSON"),
    ],
)
async def test_a_failing_calculate_overall_still_writes_overall_json(tmp_path, score, error):
    class BadScore(CountingTask):
        def calculate_overall(self, results):
            return score(results)

    task = BadScore(3)
    summary = await run_task(task, EchoAgent(), tmp_path)
    directory = tmp_path / "counting"
    overall = json.loads((directory / "overall.json").read_text())
    assert overall["total"] == 3 and overall["validation"]["completed"] == 1.0
    assert overall["custom"]["error"].startswith(error)
    assert summary.overall_error == overall["custom"]["error"]
    assert f"calculate_overall failed: {error}" in summary.render()
    assert (summary.finished, summary.failed) == (3, 0)
    assert len(read_jsonl(directory / "runs.jsonl")) == 3
    assert task.released == 1


async def test_concurrency_caps_samples_in_flight(tmp_path):
    state = {"now": 0, "peak": 0}

    async def hook(index):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        for _ in range(3):
            await anyio.sleep(0)
        state["now"] -= 1

    await run_task(CountingTask(9, hook=hook, concurrency=1), EchoAgent(), tmp_path, concurrency=3)
    assert state["peak"] == 3


async def run_with_scripted_pipeline(task, out, cache, model, namespace="exp"):
    async with OnlineAPI(model, cache, batch_size=4) as pipeline:
        agent = PipelineAgent(pipeline, namespace=namespace, model="scripted")
        summary = await run_task(task, agent, out, ledger=pipeline.ledger)
    return summary, pipeline.ledger


async def test_replay_only_rerun_makes_no_upstream_call_and_writes_the_same_runs(tmp_path):
    async def lower_indices_are_slower(index):
        await anyio.sleep(0.005 * (6 - index))

    model = ScriptedModel()
    cache = tmp_path / "cache"
    task = CountingTask(6, concurrency=3, hook=lower_indices_are_slower)
    first, _ = await run_with_scripted_pipeline(task, tmp_path / "a", cache, model)
    assert task.completed != sorted(task.completed)  # samples finished out of index order
    calls = model.calls
    assert calls > 0 and first.samples_cached == 0

    replay = ReplayOnlyModel()
    second, ledger = await run_with_scripted_pipeline(CountingTask(6, concurrency=2), tmp_path / "b", cache, replay)
    assert model.calls == calls
    assert replay.misses == []
    assert ledger.total().upstream_calls == 0
    assert (second.samples_served, second.samples_cached) == (12, 12)
    assert second.ledger["upstream_calls"] == {"exp": 0}
    a = lines_without_time(tmp_path / "a" / "counting" / "runs.jsonl")
    b = lines_without_time(tmp_path / "b" / "counting" / "runs.jsonl")
    assert a == b  # line for line, time aside
    assert [r["index"] for r in a] == list(range(6))
    overall_a = json.loads((tmp_path / "a" / "counting" / "overall.json").read_text())
    assert json.loads((tmp_path / "b" / "counting" / "overall.json").read_text()) == overall_a


async def test_a_replay_only_miss_fails_that_sample_naming_the_request(tmp_path):
    model = ScriptedModel()
    cache = tmp_path / "cache"
    await run_with_scripted_pipeline(CountingTask(3), tmp_path / "a", cache, model)
    calls = model.calls
    replay = ReplayOnlyModel()
    summary, _ = await run_with_scripted_pipeline(CountingTask(4), tmp_path / "b", cache, replay)
    assert model.calls == calls  # nothing reached the real model
    assert (summary.finished, summary.failed) == (3, 1)
    [error] = read_jsonl(tmp_path / "b" / "counting" / "error.jsonl")
    assert error["index"] == 3
    assert error["output"]["status"] == "task error"
    assert error["error"].startswith("CacheMissError: replay-only")
    assert "request_id '[\"counting\", 3, 0]'" in error["error"]
    assert "namespace 'exp'" in error["error"]
    assert [r.request_id for r in replay.misses] == ['["counting", 3, 0]']


async def test_a_miss_fails_the_sample_even_if_the_task_swallows_it(tmp_path):
    class Forgiving(CountingTask):
        async def start_sample(self, index, session):
            try:
                await session.action({"role": "user", "content": f"sample {index} turn 0"})
            except Exception:
                pass
            return TaskSampleExecutionResult(result="looks fine")

    async with OnlineAPI(ReplayOnlyModel(), tmp_path / "cache", batch_size=1) as pipeline:
        summary = await run_task(Forgiving(2), PipelineAgent(pipeline), tmp_path)
    assert (summary.finished, summary.failed) == (0, 2)
    errors = read_jsonl(tmp_path / "counting" / "error.jsonl")
    assert all(e["error"].startswith("CacheMissError") for e in errors)


async def test_a_context_length_error_reaches_the_task_as_a_status(tmp_path):
    class TooLong:
        async def act(self, turn):
            raise ContextLengthError("prompt too long")

    class Careful(CountingTask):
        async def start_sample(self, index, session):
            output = await session.action({"role": "user", "content": "x" * 100})
            if output.status == AgentOutputStatus.AGENT_CONTEXT_LIMIT:
                return TaskSampleExecutionResult(status=SampleStatus.AGENT_CONTEXT_LIMIT)
            return TaskSampleExecutionResult()

    summary = await run_task(Careful(2), TooLong(), tmp_path)
    assert summary.statuses == {"agent context limit": 2}
    overall = json.loads((tmp_path / "counting" / "overall.json").read_text())
    assert overall["validation"]["agent context limit"] == 1.0


class Hanging:
    """An agent that never answers."""

    async def act(self, turn):
        await anyio.sleep_forever()


async def test_a_timed_out_sample_is_cancelled_and_recorded_while_others_finish(tmp_path):
    seen = []

    class Polite(CountingTask):
        async def start_sample(self, index, session):
            output = await session.action({"role": "user", "content": "q"})
            seen.append(output.status)
            return TaskSampleExecutionResult(status=SampleStatus.UNKNOWN)

    summary = await run_task(Polite(2), Hanging(), tmp_path, sample_timeout_s=0.01, cancel_grace_s=30)
    assert seen == [AgentOutputStatus.CANCELLED, AgentOutputStatus.CANCELLED]
    assert summary.failed == 2
    errors = read_jsonl(tmp_path / "counting" / "error.jsonl")
    assert all(e["error"].startswith("SampleTimeout: sample") for e in errors)


async def test_a_sample_ignoring_cancellation_is_stopped_after_the_grace_period(tmp_path):
    class Stubborn(CountingTask):
        async def start_sample(self, index, session):
            if index == 0:
                await anyio.sleep_forever()
            return await super().start_sample(index, session)

    summary = await run_task(Stubborn(3), EchoAgent(), tmp_path, sample_timeout_s=0.01, cancel_grace_s=0)
    assert (summary.finished, summary.failed) == (2, 1)
    [error] = read_jsonl(tmp_path / "counting" / "error.jsonl")
    assert error["index"] == 0 and "did not finish within 0.01 s" in error["error"]


async def test_cancelling_the_run_stops_samples_in_flight_and_releases(tmp_path):
    task = CountingTask(3, concurrency=3)
    with anyio.CancelScope() as scope:
        async def cancel_when_all_pending():
            while len(task.started) < 3:
                await anyio.sleep(0)
            scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(cancel_when_all_pending)
            await run_task(task, Hanging(), tmp_path)
    assert scope.cancelled_caught
    assert task.released == 1
    assert read_jsonl(tmp_path / "counting" / "runs.jsonl") == []


async def test_results_that_are_not_json_or_not_results_fail_the_sample(tmp_path):
    class Sloppy(CountingTask):
        async def start_sample(self, index, session):
            if index == 0:
                return TaskSampleExecutionResult(result={1, 2})
            if index == 1:
                return TaskSampleExecutionResult(result=float("nan"))
            return {"status": "completed"}

    summary = await run_task(Sloppy(3), EchoAgent(), tmp_path)
    assert summary.failed == 3
    errors = {e["index"]: e["error"] for e in read_jsonl(tmp_path / "counting" / "error.jsonl")}
    assert "not JSON" in errors[0] and "not JSON" in errors[1]
    assert "return a TaskSampleExecutionResult" in errors[2]


async def test_string_indices_and_the_task_name_place_the_files(tmp_path):
    class Named(CountingTask):
        def get_indices(self):
            return ["1", 1]

    summary = await run_task(Named(name="named-task"), EchoAgent(), tmp_path)
    assert summary.finished == 2
    assert sorted(map(repr, (r["index"] for r in read_jsonl(tmp_path / "named-task" / "runs.jsonl")))) == ["'1'", "1"]


@pytest.mark.parametrize(
    "indices, message", [([0, 0], "twice"), ([0, 1.5], "ints or strs"), ([True], "ints or strs")]
)
async def test_bad_indices_are_refused_and_release_still_runs(tmp_path, indices, message):
    class Bad(CountingTask):
        def get_indices(self):
            return indices

    task = Bad()
    with pytest.raises(TaskDefinitionError, match=message):
        await run_task(task, EchoAgent(), tmp_path)
    assert task.released == 1


@pytest.mark.parametrize(
    "options", [{"concurrency": 0}, {"sample_timeout_s": -1}, {"cancel_grace_s": float("nan")}]
)
async def test_bad_options_are_configuration_errors(tmp_path, options):
    with pytest.raises(ConfigurationError):
        await run_task(CountingTask(1), EchoAgent(), tmp_path, **options)


async def test_a_task_name_must_be_a_directory_name(tmp_path):
    with pytest.raises(ConfigurationError, match="path separators"):
        await run_task(CountingTask(1, name="../escape"), EchoAgent(), tmp_path)


async def test_the_progress_bar_reports_when_enabled(tmp_path):
    shown = io.StringIO()
    await run_task(CountingTask(2, fail=[1]), EchoAgent(), tmp_path, progress=True, progress_file=shown)
    text = shown.getvalue()
    assert "counting" in text and "2/2" in text and "failed=1" in text


def test_runs_on_trio(tmp_path):
    summary = anyio.run(run_task, CountingTask(3, concurrency=2), EchoAgent(), tmp_path, backend="trio")
    assert summary.finished == 3


async def test_agent_output_content_ends_up_in_the_history(tmp_path):
    class Constant:
        async def act(self, turn):
            return AgentOutput(content=f"answer {turn.index}/{turn.turn}")

    await run_task(CountingTask(1), Constant(), tmp_path)
    [record] = read_jsonl(tmp_path / "counting" / "runs.jsonl")
    assert record["output"]["result"] == {"answers": ["answer 0/0", "answer 0/1"]}
