"""Sharded runs: the slices, a shard's own directory, and the merge into the unsharded files."""

import json
import re
import shutil

import pytest

from cachesaver.errors import ConfigurationError
from cachesaver.models.replay_only import ReplayOnlyModel
from cachesaver.models.scripted import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.store.shared_runs import SharedRun, end_run
from cachesaver.tasks import EchoAgent, PipelineAgent, Task, TaskSampleExecutionResult, run_task
from cachesaver.tasks.records import RunDirectory
from cachesaver.tasks.shards import SHARD_FILE, Shard, indices_digest, merge_shards


class Tasked(Task):
    """``count`` samples, two turns each; ``fail`` lists indices whose code raises; ``tag`` goes
    into every result (to tell the records of two runs apart); ``prompt(index)`` is the first
    message (default: one prompt per sample)."""

    def __init__(self, count=7, *, fail=(), tag="", prompt=None, concurrency=2):
        super().__init__(name="sharded", concurrency=concurrency)
        self.count, self.fail, self.tag = count, set(fail), tag
        self.prompt = prompt or (lambda index: f"question {index}")
        self.released = 0

    def get_indices(self):
        return list(range(self.count))

    async def start_sample(self, index, session):
        first = await session.action({"role": "user", "content": self.prompt(index)})
        if index in self.fail:
            raise RuntimeError(f"sample {index} broke")
        second = await session.action({"role": "user", "content": f"and then {index}"})
        return TaskSampleExecutionResult(result={"answers": [first.content, second.content], "tag": self.tag})

    def calculate_overall(self, results):
        return {"samples": len(results), "indices": [r.index for r in results]}

    def release(self):
        self.released += 1


def lines_without_time(path):
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in path.read_text().splitlines()]


def files(directory):
    return lines_without_time(directory / "runs.jsonl"), json.loads((directory / "overall.json").read_text())


# -- the slices ------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_the_shards_of_n_cover_every_index_once_in_task_order(count):
    indices = [f"i{p}" for p in range(11)]
    slices = [Shard(number, count).select(indices) for number in range(1, count + 1)]
    assert sorted(i for s in slices for i in s) == sorted(indices)
    assert all(s == sorted(s, key=indices.index) for s in slices)
    assert Shard(1, count).select(indices)[0] == "i0"  # K counts from 1: shard 1 starts at position 0


def test_a_shard_is_parsed_from_k_slash_n():
    assert Shard.parse("2/3") == Shard(2, 3)
    assert Shard.parse(" 1 / 1 ") == Shard(1, 1)
    assert Shard(2, 3).select(list(range(8))) == [1, 4, 7]
    assert str(Shard(2, 3)) == "2/3" and Shard(2, 3).directory_name == "shard-2-of-3"


@pytest.mark.parametrize(
    "text, message",
    [
        ("0/3", "K counts from 1, so give 1/3 to 3/3"),
        ("4/3", "K counts from 1, so give 1/3 to 3/3"),
        ("1/0", "N must be at least 1"),
        ("3", "--shard takes K/N"),
        ("-1/3", "--shard takes K/N"),
        ("a/b", "--shard takes K/N"),
    ],
)
def test_a_shard_that_does_not_exist_is_a_configuration_error(text, message):
    with pytest.raises(ConfigurationError, match=message):
        Shard.parse(text)


def test_shard_fields_must_be_ints():
    with pytest.raises(ConfigurationError, match="must be an int"):
        Shard(True, 2)


def test_the_digest_tells_lists_apart_by_content_order_and_type():
    assert indices_digest([0, 1]) == indices_digest([0, 1])
    assert len({indices_digest(v) for v in ([0, 1], [1, 0], [0, "1"], [0, 1, 2])}) == 4


# -- sharded runs and their merge ------------------------------------------------------------------


async def test_shards_write_their_own_directories_and_the_last_one_merges(tmp_path):
    whole = await run_task(Tasked(), EchoAgent(), tmp_path / "whole")
    outcomes = []
    for number in (3, 1, 2):  # any order
        task = Tasked()
        summary = await run_task(task, EchoAgent(), tmp_path / "sharded", shard=Shard(number, 3))
        assert task.released == 1
        outcomes.append(summary)
        shard_dir = tmp_path / "sharded" / "sharded" / f"shard-{number}-of-3"
        assert summary.directory == str(shard_dir)
        assert [r["index"] for r in lines_without_time(shard_dir / "runs.jsonl")] == list(range(number - 1, 7, 3))
        assert not (shard_dir / "overall.json").exists()
        marker = json.loads((shard_dir / SHARD_FILE).read_text())
        assert marker["shard"] == f"{number}/3" and marker["indices"] == 7
    first, second, last = outcomes
    assert (first.total, first.finished, first.shard) == (2, 2, "3/3: 2 of 7 samples (positions p of get_indices() with p % 3 == 2)")
    assert not first.merge.complete and first.overall == {}
    assert first.merge.waiting == ("shard 1/3 has not finished", "shard 2/3 has not finished")
    assert "merged" in dict(first.rows()) and "not yet: shard 1/3" in first.render()
    assert not second.merge.complete
    assert last.merge.complete and last.merge.shards == ("1/3", "2/3", "3/3")
    assert (last.merge.total, last.merge.finished, last.merge.failed) == (7, 7, 0)
    assert last.overall == whole.overall
    assert files(tmp_path / "sharded" / "sharded") == files(tmp_path / "whole" / "sharded")
    assert list((tmp_path / "sharded" / "sharded").glob("*.tmp")) == []
    assert whole.shard is None and whole.merge is None  # the unsharded run is as it was
    assert not (tmp_path / "whole" / "sharded" / SHARD_FILE).exists()


async def test_a_failed_sample_is_merged_like_an_unsharded_runs_and_rerunning_its_shard_fixes_it(tmp_path):
    whole = await run_task(Tasked(fail=[4]), EchoAgent(), tmp_path / "whole")
    for number in (1, 2):
        summary = await run_task(Tasked(fail=[4]), EchoAgent(), tmp_path / "out", shard=Shard(number, 2))
    assert summary.merge.complete and summary.merge.failed == 1
    merged = tmp_path / "out" / "sharded"
    assert files(merged) == files(tmp_path / "whole" / "sharded")
    [error] = lines_without_time(merged / "error.jsonl")
    assert error["index"] == 4 and error["error"] == "RuntimeError: sample 4 broke"
    assert (summary.failed, whole.failed) == (0, 1)  # shard 2 holds odd positions; 4 is shard 1's

    fixed = await run_task(Tasked(), EchoAgent(), tmp_path / "out", shard=Shard(1, 2))
    assert (fixed.skipped, fixed.attempted) == (3, 1)  # the shard resumed from its own directory
    assert fixed.merge.complete and (fixed.merge.finished, fixed.merge.failed) == (7, 0)
    assert [r["index"] for r in lines_without_time(merged / "runs.jsonl")] == list(range(7))
    assert len(lines_without_time(merged / "error.jsonl")) == 1  # the log of attempts keeps the failure
    assert fixed.overall["validation"]["completed"] == 1.0


async def test_shards_of_other_ns_combine_and_the_latest_record_of_a_sample_wins(tmp_path):
    await run_task(Tasked(tag="old"), EchoAgent(), tmp_path, shard=Shard(1, 2))
    assert not merge_shards(Tasked(), tmp_path).complete
    await run_task(Tasked(tag="new"), EchoAgent(), tmp_path, shard=Shard(2, 4))
    summary = await run_task(Tasked(tag="new"), EchoAgent(), tmp_path, shard=Shard(4, 4))
    # 1/2 covers positions 0, 2, 4, 6; 2/4 covers 1, 5 and 4/4 covers 3: every sample.
    assert summary.merge.complete and summary.merge.shards == ("1/2", "2/4", "4/4")
    runs = lines_without_time(tmp_path / "sharded" / "runs.jsonl")
    assert [(r["index"], r["output"]["result"]["tag"]) for r in runs] == [
        (0, "old"), (1, "new"), (2, "old"), (3, "new"), (4, "old"), (5, "new"), (6, "old")
    ]
    await run_task(Tasked(tag="newest"), EchoAgent(), tmp_path, shard=Shard(1, 1))
    runs = lines_without_time(tmp_path / "sharded" / "runs.jsonl")
    assert {r["output"]["result"]["tag"] for r in runs} == {"newest"}
    assert merge_shards(Tasked(), tmp_path).complete  # merging again is allowed, and the same
    assert lines_without_time(tmp_path / "sharded" / "runs.jsonl") == runs


async def test_a_shard_run_on_another_index_list_does_not_count(tmp_path):
    await run_task(Tasked(count=7), EchoAgent(), tmp_path, shard=Shard(1, 2))
    summary = await run_task(Tasked(count=8), EchoAgent(), tmp_path, shard=Shard(2, 2))
    assert not summary.merge.complete
    assert summary.merge.waiting == (
        "shard 1/2 ran on another index list (7 indices, here 8): run it again with this task's options",
    )
    assert not (tmp_path / "sharded" / "runs.jsonl").exists()
    with pytest.raises(ConfigurationError, match="none of the 2 finished shard"):
        merge_shards(Tasked(count=9), tmp_path)


def test_a_merge_with_no_shard_yet_writes_nothing_and_says_so(tmp_path):
    outcome = merge_shards(Tasked(), tmp_path)
    assert not outcome.complete and "no shard has run yet" in outcome.waiting[0]
    assert re.search(r"^merged +no, nothing written$", outcome.render(), re.MULTILINE)
    assert not (tmp_path / "sharded").exists()


async def test_merging_reads_a_shard_still_writing_without_repairing_it(tmp_path):
    for number in (1, 2):
        await run_task(Tasked(), EchoAgent(), tmp_path / "out", shard=Shard(number, 2))
    runs = tmp_path / "out" / "sharded" / "shard-2-of-2" / "runs.jsonl"
    torn = runs.read_bytes() + b'{"index": 9, "outp'  # a line being appended right now
    runs.write_bytes(torn)
    assert merge_shards(Tasked(), tmp_path / "out").complete
    assert runs.read_bytes() == torn
    assert len(lines_without_time(tmp_path / "out" / "sharded" / "runs.jsonl")) == 7


async def test_shard_directories_copied_from_several_hosts_merge_by_hand(tmp_path):
    for number in (1, 2, 3):  # each "host" writes into an output directory of its own
        await run_task(Tasked(), EchoAgent(), tmp_path / f"host{number}", shard=Shard(number, 3))
        assert not (tmp_path / f"host{number}" / "sharded" / "runs.jsonl").exists()
        shutil.copytree(tmp_path / f"host{number}" / "sharded" / f"shard-{number}-of-3",
                        tmp_path / "merged" / "sharded" / f"shard-{number}-of-3")
    outcome = merge_shards(Tasked(), tmp_path / "merged")
    assert outcome.complete and outcome.overall_error is None
    await run_task(Tasked(), EchoAgent(), tmp_path / "whole")
    assert files(tmp_path / "merged" / "sharded") == files(tmp_path / "whole" / "sharded")
    # The merged directory is an ordinary run directory: an unsharded run there has nothing to do.
    again = await run_task(Tasked(), EchoAgent(), tmp_path / "merged")
    assert (again.skipped, again.attempted) == (7, 0)


async def test_a_failing_calculate_overall_of_the_merge_is_reported(tmp_path):
    class BadScore(Tasked):
        def calculate_overall(self, results):
            raise ValueError("no score")

    await run_task(BadScore(), EchoAgent(), tmp_path, shard=Shard(1, 2))
    summary = await run_task(BadScore(), EchoAgent(), tmp_path, shard=Shard(2, 2))
    assert summary.overall_error == "ValueError: no score"
    overall = json.loads((tmp_path / "sharded" / "overall.json").read_text())
    assert overall["custom"]["error"] == "ValueError: no score" and overall["total"] == 7


async def test_run_task_refuses_a_shard_that_is_not_a_shard(tmp_path):
    task = Tasked()
    with pytest.raises(ConfigurationError, match="shard must be a cachesaver.tasks.shards.Shard"):
        await run_task(task, EchoAgent(), tmp_path, shard="1/2")
    assert task.released == 1
    assert not RunDirectory(tmp_path / "sharded").path.exists()


# -- one shared run over the shards (needs OnlineAPI(run_id=...)) ----------------------------------


async def test_shards_of_one_shared_run_get_fresh_samples_for_prompts_they_share(tmp_path):
    """Prompts asked by every shard: in one shared run (one run_id) no stored sample is handed
    out twice, as in one unsharded run; a replay without shards reproduces the merge."""
    model, cache = ScriptedModel(), tmp_path / "cache"

    def shared(index):
        return f"q{index // 3}"  # q0 is asked by samples 0, 1, 2: one in each of 3 shards

    # A shared run lasts while one of its workers is open: the three shard pipelines stay open
    # until the last shard is done (shards run one after another, as on a queue of one host).
    async with OnlineAPI(model, cache, batch_size=4, run_id="team-run") as first, \
            OnlineAPI(model, cache, batch_size=4, run_id="team-run") as second, \
            OnlineAPI(model, cache, batch_size=4, run_id="team-run") as third:
        for number, pipeline in ((1, first), (2, second), (3, third)):
            summary = await run_task(Tasked(count=6, prompt=shared), PipelineAgent(pipeline, namespace="exp"),
                                     tmp_path / "out", shard=Shard(number, 3))
    assert summary.merge.complete
    runs, overall = files(tmp_path / "out" / "sharded")
    firsts = [r["output"]["result"]["answers"][0] for r in runs]
    assert sorted(firsts) == ["q0#0", "q0#1", "q0#2", "q1#0", "q1#1", "q1#2"]  # none handed out twice
    async with OnlineAPI(ReplayOnlyModel(), cache, batch_size=4) as pipeline:
        await run_task(Tasked(count=6, prompt=shared), PipelineAgent(pipeline, namespace="exp"), tmp_path / "replay")
    assert files(tmp_path / "replay" / "sharded") == (runs, overall)


async def test_shards_one_after_another_in_a_lingering_run_write_what_one_unsharded_run_writes(tmp_path):
    """Shards on a queue: each opens and closes its own pipeline. With ``linger_s`` they are one
    run, so shard 2 gets fresh samples of the prompts shard 1 asked (q<index // 2>: one sample
    of each prompt in each shard), and the files are those of one unsharded run, line for line
    (one sample at a time, so the draws come in the same order). Once the run is ended, a
    replay-only re-run with the same run id and N=3 reproduces them, calling no model."""

    def task():
        return Tasked(count=6, prompt=lambda index: f"q{index // 2}", concurrency=1)

    async with OnlineAPI(ScriptedModel(), tmp_path / "one-cache", batch_size=4) as pipeline:
        await run_task(task(), PipelineAgent(pipeline, namespace="exp"), tmp_path / "one")
    expected = files(tmp_path / "one" / "sharded")
    assert [r["output"]["result"]["answers"][0] for r in expected[0]] == ["q0#0", "q0#1", "q1#0", "q1#1", "q2#0", "q2#1"]

    model, cache = ScriptedModel(), tmp_path / "cache"  # one model: the same endpoint for every shard
    lingering = SharedRun("team-run", linger_s=3600)
    for number in (1, 2):
        async with OnlineAPI(model, cache, batch_size=4, run_id=lingering) as pipeline:
            summary = await run_task(task(), PipelineAgent(pipeline, namespace="exp"), tmp_path / "out", shard=Shard(number, 2))
    assert summary.merge.complete
    assert files(tmp_path / "out" / "sharded") == expected
    end_run(cache, "team-run")  # what `cachesaver run --shard` does once its merge completes

    for number in (1, 2, 3):
        replay = ReplayOnlyModel()
        async with OnlineAPI(replay, cache, batch_size=4, run_id=lingering) as pipeline:
            summary = await run_task(task(), PipelineAgent(pipeline, namespace="exp"), tmp_path / "replay", shard=Shard(number, 3))
        assert replay.misses == [] and summary.failed == 0
    assert summary.merge.complete
    assert files(tmp_path / "replay" / "sharded") == expected
