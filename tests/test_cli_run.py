"""The cachesaver command line: run, resume, replay-only, errors and exit codes.

Most commands run in this process (``main``, or ``_cli.run_cli`` where a test reads the exit
status and output as a process would give them). Real processes are started where the process
is what is checked: the two launchers (console script, ``python -m``), a progress bar on stderr,
output into a closed pipe, one error line on a real stderr, and shards that run at the same time.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from _cli import run_cli
from fake_chat_server import Fault, FakeChatServer

from cachesaver.cli import main

GAME24 = str(Path(__file__).resolve().parent.parent / "examples" / "game24.py") + ":Game24Task"

SMALL_TASK = '''
from cachesaver.tasks import Task, TaskSampleExecutionResult

class Small(Task):
    def __init__(self):
        super().__init__(name="small", concurrency=2)
    def get_indices(self):
        return [0, 1, 2]
    async def start_sample(self, index, session):
        reply = await session.action({"role": "user", "content": f"question {index}"})
        status = "completed" if reply.status == "normal" else reply.status.value
        return TaskSampleExecutionResult(status=status, result=reply.content)
    def calculate_overall(self, results):
        return {"n": len(results)}
'''


@pytest.fixture(autouse=True)
def no_api_keys(monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def run(tmp_path, out, *extra, task=GAME24):
    return main(["run", task, "--out", str(tmp_path / out), "--namespace", "g24",
                 "--cache", str(tmp_path / "cache"), "--no-progress", *extra])


def outputs(path):
    return {r["index"]: r["output"] for r in map(json.loads, path.read_text().splitlines())}


def lines_without_time(path):
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in path.read_text().splitlines()]


def only_error(path):
    [error] = map(json.loads, path.read_text().splitlines())
    return error


def row(text, name):
    return re.search(rf"^{name}\s+(.+)$", text, re.MULTILINE).group(1)


def test_run_then_replay_only_gives_the_same_results_with_no_model(tmp_path, capsys):
    assert run(tmp_path, "first", "--task-option", "puzzles=4", "--concurrency", "2") == 0
    first = capsys.readouterr().out
    assert row(first, "backend") == "simulated (simulated)"
    assert row(first, "finished") == "4"
    assert "modeled time" in first
    assert run(tmp_path, "again", "--task-option", "puzzles=4", "--replay-only") == 0
    again = capsys.readouterr().out
    assert row(again, "backend") == "replay-only (no model)"
    assert row(again, "cache misses").startswith("0 ")
    assert row(again, "total").split()[0] == "0"  # ledger: no upstream call
    first_lines = lines_without_time(tmp_path / "first" / "game24" / "runs.jsonl")
    assert first_lines == lines_without_time(tmp_path / "again" / "game24" / "runs.jsonl")  # line for line
    assert [r["index"] for r in first_lines] == [0, 1, 2, 3]
    overall = json.loads((tmp_path / "again" / "game24" / "overall.json").read_text())
    assert overall["total"] == 4 and "accuracy" in overall["custom"]


def test_a_replay_only_miss_exits_1_and_points_at_error_jsonl(tmp_path, capsys):
    assert run(tmp_path, "first", "--task-option", "puzzles=2") == 0
    capsys.readouterr()
    assert run(tmp_path, "again", "--task-option", "puzzles=3", "--replay-only") == 1
    captured = capsys.readouterr()
    assert row(captured.out, "cache misses").startswith("1 ")
    assert "error.jsonl" in captured.err
    [error] = map(json.loads, (tmp_path / "again" / "game24" / "error.jsonl").read_text().splitlines())
    assert error["index"] == 2 and "CacheMissError" in error["error"] and '["game24", 2, 0]' in error["error"]


@pytest.mark.parametrize("how", ["--mode replay", "CACHESAVER_MODE=replay"])
def test_mode_replay_is_replay_only_and_explains_each_miss(tmp_path, capsys, monkeypatch, how):
    assert run(tmp_path, "first", "--task-option", "puzzles=2") == 0
    capsys.readouterr()
    extra = ["--mode", "replay"] if how.startswith("--") else []
    if not extra:
        monkeypatch.setenv("CACHESAVER_MODE", "replay")
    assert run(tmp_path, "again", "--task-option", "puzzles=3", *extra) == 1
    out = capsys.readouterr().out
    assert row(out, "backend") == "replay-only (no model)" and row(out, "cache misses").startswith("1 ")
    assert row(out, "total").split()[0] == "0"  # no upstream call
    error = only_error(tmp_path / "again" / "game24" / "error.jsonl")
    assert error["index"] == 2 and "nothing is stored under this request's key" in error["error"]
    assert "nearest stored: " in error["error"]


def test_mode_bypass_calls_the_model_and_stores_nothing(tmp_path, capsys):
    assert run(tmp_path, "first", "--task-option", "puzzles=1", "--mode", "bypass") == 0
    assert row(capsys.readouterr().out, "mode") == "bypass"
    assert run(tmp_path, "again", "--task-option", "puzzles=1", "--mode", "replay") == 1


def test_replay_only_with_another_mode_is_a_command_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        run(tmp_path, "out", "--replay-only", "--mode", "refresh")
    assert caught.value.code == 2
    assert "--replay-only means --mode replay" in capsys.readouterr().err


def test_a_bad_mode_in_the_environment_exits_2_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CACHESAVER_MODE", "strict")
    assert run(tmp_path, "out", "--task-option", "puzzles=1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CACHESAVER_MODE" in err


def test_rerunning_into_the_same_directory_resumes(tmp_path, capsys):
    assert run(tmp_path, "out", "--task-option", "puzzles=2") == 0
    capsys.readouterr()
    assert run(tmp_path, "out", "--task-option", "puzzles=3") == 0
    assert row(capsys.readouterr().out, "samples") == "3 (2 already done, 1 run now)"


def test_settings_that_change_requests_change_the_cache_key(tmp_path, capsys):
    assert run(tmp_path, "first", "--task-option", "puzzles=1") == 0
    assert run(tmp_path, "hot", "--task-option", "puzzles=1", "--replay-only", "--temperature", "0.3") == 1
    assert run(tmp_path, "other-model", "--task-option", "puzzles=1", "--replay-only", "--model", "m2") == 1
    for out in ("hot", "other-model"):
        error = only_error(tmp_path / out / "game24" / "error.jsonl")
        assert error["index"] == 0 and error["output"]["status"] == "task error"
        assert error["error"].startswith("CacheMissError: ")
        assert "request_id '[\"game24\", 0, 0]'" in error["error"] and "namespace 'g24'" in error["error"]
    assert not (tmp_path / "first" / "game24" / "error.jsonl").exists()


def test_replay_only_without_a_cache_is_a_configuration_error(tmp_path, capsys):
    assert run(tmp_path, "out", "--replay-only") == 2
    assert "needs the cache of an earlier run" in capsys.readouterr().err


def test_an_sdk_backend_without_its_key_says_what_to_set(tmp_path, capsys):
    assert run(tmp_path, "out", "--backend", "together") == 2
    assert "TOGETHER_API_KEY" in capsys.readouterr().err


def test_a_bad_task_reference_is_a_configuration_error(tmp_path, capsys):
    assert run(tmp_path, "out", task="nowhere/missing.py:Task") == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", GAME24, "--namespace", "x"],
        ["run", GAME24, "--out", "o", "--namespace", "x", "--concurrency", "0"],
        ["run", GAME24, "--out", "o", "--namespace", "x", "--backend", "nope"],
        [],
    ],
)
def test_bad_command_lines_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2


def test_python_dash_m_runs_a_task_file(tmp_path):
    task_file = tmp_path / "small_task.py"
    task_file.write_text(SMALL_TASK)
    command = [sys.executable, "-m", "cachesaver", "run", f"{task_file}:Small", "--out", "out",
               "--namespace", "ns", "--cache", "cache"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert row(done.stdout, "finished") == "3"
    assert "small" in done.stderr  # the progress bar
    assert json.loads((tmp_path / "out" / "small" / "overall.json").read_text())["custom"] == {"n": 3}


@pytest.mark.parametrize("launcher", ["console script", "python -m"])
def test_a_module_in_the_current_directory_is_found_by_both_launchers(tmp_path, launcher):
    (tmp_path / "small_task_module.py").write_text(SMALL_TASK)
    if launcher == "console script":
        script = shutil.which("cachesaver", path=str(Path(sys.executable).parent))
        if script is None:
            pytest.skip("the cachesaver console script is not installed next to this Python")
        command = [script]
    else:
        command = [sys.executable, "-m", "cachesaver"]
    command += ["run", "small_task_module:Small", "--out", "out", "--namespace", "ns", "--cache", "cache",
                "--no-progress"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert row(done.stdout, "finished") == "3"


SELF_REPORTING_TASK = '''
from cachesaver.tasks import SampleStatus, Task, TaskSampleExecutionResult

class Reporting(Task):
    def __init__(self, broken=(), score="ok"):
        super().__init__(name="reporting", concurrency=2)
        self.broken, self.score = set(broken), score
    def get_indices(self):
        return [0, 1, 2]
    async def start_sample(self, index, session):
        reply = await session.action({"role": "user", "content": f"question {index}"})
        if index in self.broken:
            return TaskSampleExecutionResult(status=SampleStatus.TASK_ERROR, result={"why": "down"})
        return TaskSampleExecutionResult(result=reply.content)
    def calculate_overall(self, results):
        if self.score != "ok":
            raise ValueError(self.score)
        return {"n": len(results)}
'''


def test_a_task_reporting_task_error_exits_1_and_is_retried(tmp_path, capsys):
    (tmp_path / "reporting.py").write_text(SELF_REPORTING_TASK)
    task = f"{tmp_path / 'reporting.py'}:Reporting"
    assert run(tmp_path, "out", "--task-option", "broken=[1]", task=task) == 1
    captured = capsys.readouterr()
    assert (row(captured.out, "finished"), row(captured.out, "failed")) == ("2", "1")
    assert "1 sample(s) failed" in captured.err
    error = only_error(tmp_path / "out" / "reporting" / "error.jsonl")
    assert error["index"] == 1 and error["output"]["result"] == {"why": "down"}
    assert run(tmp_path, "out", task=task) == 0
    assert row(capsys.readouterr().out, "samples") == "3 (2 already done, 1 run now)"


def test_a_failing_calculate_overall_exits_1_with_overall_json_written(tmp_path, capsys):
    (tmp_path / "reporting.py").write_text(SELF_REPORTING_TASK)
    task = f"{tmp_path / 'reporting.py'}:Reporting"
    assert run(tmp_path, "out", "--task-option", "score=no score today", task=task) == 1
    captured = capsys.readouterr()
    assert row(captured.out, "overall") == "calculate_overall failed: ValueError: no score today"
    assert "calculate_overall failed (ValueError: no score today)" in captured.err
    assert "Traceback" not in captured.err
    directory = tmp_path / "out" / "reporting"
    overall = json.loads((directory / "overall.json").read_text())
    assert overall["total"] == 3 and overall["validation"]["completed"] == 1.0
    assert overall["custom"]["error"] == "ValueError: no score today"
    assert len(lines_without_time(directory / "runs.jsonl")) == 3
    assert run(tmp_path, "out", task=task) == 0  # fixed: overall.json is rewritten, nothing re-run
    assert row(capsys.readouterr().out, "samples") == "3 (3 already done, 0 run now)"
    assert json.loads((directory / "overall.json").read_text())["custom"] == {"n": 3}


def test_together_backend_against_a_local_server_then_replay_only_without_a_key(tmp_path, monkeypatch, capsys):
    task_file = tmp_path / "small_task.py"
    task_file.write_text(SMALL_TASK)
    task = f"{task_file}:Small"
    with FakeChatServer() as server:
        monkeypatch.setenv("TOGETHER_BASE_URL", server.together_base_url)
        monkeypatch.setenv("TOGETHER_API_KEY", "test-key")
        server.fail_when(
            lambda body: Fault(400, message="maximum context length exceeded")
            if body["messages"][-1]["content"] == "question 1" else None
        )
        assert run(tmp_path, "first", "--backend", "together", "--model", "test-model", task=task) == 0
        first = outputs(tmp_path / "first" / "small" / "runs.jsonl")
        assert first[0]["result"] == "question 0#0" and first[2]["result"] == "question 2#0"
        assert first[1]["status"] == "agent context limit"  # ContextLengthError became a status
        assert {body["model"] for body in server.requests} == {"test-model"}
        calls = server.calls

        monkeypatch.delenv("TOGETHER_API_KEY")
        capsys.readouterr()
        code = run(tmp_path, "again", "--backend", "together", "--model", "test-model", "--replay-only", task=task)
        assert server.calls == calls  # nothing reached the server
    first_lines = lines_without_time(tmp_path / "first" / "small" / "runs.jsonl")
    again_lines = lines_without_time(tmp_path / "again" / "small" / "runs.jsonl")
    assert again_lines == [line for line in first_lines if line["index"] != 1]
    # failures are never cached, so the sample whose call failed cannot be replayed
    assert code == 1
    error = only_error(tmp_path / "again" / "small" / "error.jsonl")
    assert error["index"] == 1 and "CacheMissError" in error["error"]


def console_script() -> str:
    script = shutil.which("cachesaver", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the cachesaver console script is not installed next to this Python")
    return script


VALIDATING_TASK = SMALL_TASK.replace(
    "    def __init__(self):\n",
    "    def __init__(self, limit=3):\n        if limit < 1:\n            raise ValueError('limit must be >= 1')\n",
)


def test_a_bad_task_option_is_one_line_on_stderr_and_exit_2(tmp_path):
    (tmp_path / "validating_task.py").write_text(VALIDATING_TASK)
    cases = [
        (GAME24, "novalue", "is not KEY=VALUE"),
        (GAME24, "bogus=1", "unexpected keyword argument 'bogus'"),
        ("validating_task.py:Small", "limit=0", "limit must be >= 1"),
    ]
    for number, (task, option, reason) in enumerate(cases):
        argv = ["run", task, "--out", "out", "--namespace", "ns", "--cache", "cache", "--no-progress",
                "--task-option", option]
        if number == 0:  # once through the console script: the line is all a real stderr gets
            done = subprocess.run([console_script(), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=50)
        else:
            done = run_cli(argv, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("cachesaver: error: "), done.stderr
        assert reason in done.stderr
        assert done.stdout == ""


@pytest.mark.parametrize("launcher", ["console script", "python -m"])
def test_version_prints_the_installed_version(tmp_path, launcher):
    from importlib.metadata import version

    command = [console_script()] if launcher == "console script" else [sys.executable, "-m", "cachesaver"]
    done = subprocess.run([*command, "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"cachesaver {version('cachesaver')}\n"


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    argv = ["run", GAME24, "--out", "out", "--namespace", "ns", "--cache", "cache", "--no-progress",
            "--task-option", "puzzles=1"]
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited: every write to stdout fails
    try:
        done = subprocess.run([console_script(), *argv], cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, timeout=50)
    finally:
        os.close(write)
    assert done.returncode == 141
    assert done.stderr == b""  # no BrokenPipeError traceback, no "Exception ignored" line
    assert (tmp_path / "out" / "game24" / "overall.json").exists()  # the run finished; only its summary was cut


# -- sharded runs: --shard K/N, --run-id, the merge --------------------------------------------------


def shard_commands(tmp_path, out, count, *extra, task=GAME24, cache="cache", options=("puzzles=7",)):
    """One console-script command per shard K/count of ``task`` into ``out``."""
    base = [console_script(), "run", task, "--out", out, "--namespace", "g24", "--cache", cache, "--no-progress",
            *[arg for option in options for arg in ("--task-option", option)], *extra]
    return [base + ["--shard", f"{number}/{count}"] for number in range(1, count + 1)]


def run_all_at_once(tmp_path, commands):
    """Start every command, then wait for all: the shards of one run on one host."""
    processes = [subprocess.Popen(c, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in commands]
    done = []
    for process in processes:
        out, err = process.communicate(timeout=50)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


def run_in_process(tmp_path, command):
    """One console-script command of ``shard_commands`` run through ``main`` in this process."""
    assert command[0] == console_script()
    return run_cli(command[1:], cwd=tmp_path)


def run_one_after_another(tmp_path, commands):
    """The shards of a run one at a time (on one host, or on hosts that share the cache): each
    in this process, as nothing runs beside it."""
    return [run_in_process(tmp_path, c) for c in commands]


def merged_files(directory):
    return lines_without_time(directory / "runs.jsonl"), (directory / "overall.json").read_text()


def test_one_run_three_shards_and_a_two_shard_replay_write_the_same_files(tmp_path):
    whole = run_in_process(tmp_path, shard_commands(tmp_path, "one", 1)[0][:-2])
    assert whole.returncode == 0, whole.stderr
    three = run_all_at_once(tmp_path, shard_commands(tmp_path, "three", 3))
    assert [d.returncode for d in three] == [0, 0, 0], [d.stderr for d in three]
    assert sorted(row(d.stdout, "samples") for d in three) == ["2 (0 already done, 2 run now)"] * 2 + [
        "3 (0 already done, 3 run now)"]
    assert row(three[1].stdout, "shard") == "2/3: 2 of 7 samples (positions p of get_indices() with p % 3 == 1)"
    merges = [row(d.stdout, "merged") for d in three]
    assert any(m.startswith("7 finished, 0 failed of 7 into three/game24/runs.jsonl") for m in merges), merges
    two = run_one_after_another(tmp_path, shard_commands(tmp_path, "two", 2, "--replay-only"))
    assert [d.returncode for d in two] == [0, 0], [d.stderr for d in two]
    assert [row(d.stdout, "cache misses").split()[0] for d in two] == ["0", "0"]
    assert row(two[0].stdout, "merged").startswith("not yet: shard 2/2 has not finished")
    assert all("--run-id" not in d.stderr for d in two)  # a replay needs no shared run: no note

    expected = merged_files(tmp_path / "one" / "game24")
    assert [r["index"] for r in expected[0]] == list(range(7))
    for out in ("three", "two"):
        assert merged_files(tmp_path / out / "game24") == expected, out  # runs.jsonl line for line; overall.json byte for byte
    assert sorted(p.name for p in (tmp_path / "three" / "game24").iterdir()) == [
        "overall.json", "runs.jsonl", "shard-1-of-3", "shard-2-of-3", "shard-3-of-3"]


def test_shards_on_one_redis_server_replay_on_one_host_unsharded(tmp_path, redis_shared_url, redis_key_prefix):
    url = f"{redis_shared_url}?prefix={quote(redis_key_prefix + 'cli-shards', safe='')}"  # the session's server
    shards = run_all_at_once(tmp_path, shard_commands(tmp_path, "sharded", 2, cache=url))
    assert [d.returncode for d in shards] == [0, 0], [d.stderr for d in shards]
    assert not (tmp_path / url.split("://")[0]).exists()  # the URL named no directory
    replay = run_in_process(tmp_path, shard_commands(tmp_path, "replay", 1, "--replay-only", cache=url)[0][:-2])
    assert replay.returncode == 0, replay.stderr
    assert row(replay.stdout, "cache misses").startswith("0 ")
    assert merged_files(tmp_path / "replay" / "game24") == merged_files(tmp_path / "sharded" / "game24")


def test_a_shard_that_does_not_exist_is_one_line_on_stderr_and_exit_2(tmp_path):
    for shard, reason in [("0/3", "K counts from 1, so give 1/3 to 3/3"), ("4/3", "K counts from 1"),
                          ("2", "--shard takes K/N"), ("1/0", "N must be at least 1")]:
        done = run_cli(["run", GAME24, "--out", "out", "--namespace", "ns", "--cache", "cache", "--no-progress",
                        "--shard", shard], cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("cachesaver: error: --shard"), done.stderr
        assert reason in done.stderr and done.stdout == ""
    assert not (tmp_path / "out").exists()


def test_an_empty_run_id_is_a_configuration_error(tmp_path, capsys):
    assert run(tmp_path, "out", "--run-id", " ") == 2
    assert capsys.readouterr().err == (
        "cachesaver: error: --run-id must not be empty; give every shard of the run the same name\n")


SHARED_PROMPTS_TASK = '''
import itertools
import pathlib
import uuid

import anyio

from cachesaver.tasks import Task, TaskSampleExecutionResult

_DRAWS = itertools.count()
_PROCESS = uuid.uuid4().hex[:8]


class Shared(Task):
    """Nine samples over three prompts, q<index // 3>: with three shards, each prompt is asked
    once in every shard. With ``rendezvous`` (a directory), a sample that got its reply waits
    until all nine have theirs, so no shard closes its pipeline, leaving the shared run, before
    every shard has joined it."""

    def __init__(self, rendezvous=None):
        super().__init__(name="shared", concurrency=3)
        self.rendezvous = None if rendezvous is None else pathlib.Path(rendezvous)

    def get_indices(self):
        return list(range(9))

    async def start_sample(self, index, session):
        reply = await session.action({"role": "user", "content": f"q{index // 3}"})
        if self.rendezvous is not None:
            (self.rendezvous / str(index)).touch()
            with anyio.fail_after(15):  # a deadlock guard, not a timing
                while len(list(self.rendezvous.iterdir())) < 9:
                    await anyio.sleep(0.01)
        return TaskSampleExecutionResult(result=reply.content)

    def calculate_overall(self, results):
        return {"distinct answers": len({r.result for r in results})}

    @staticmethod
    def simulated_compose(prompt, rank, rng):
        return f"{prompt}: answer {_PROCESS}-{next(_DRAWS)}"  # every sample drawn anywhere is distinct
'''


def shared_task(tmp_path):
    (tmp_path / "shared_task.py").write_text(SHARED_PROMPTS_TASK)
    return "shared_task.py:Shared"


def test_shards_of_one_run_id_never_hand_out_a_sample_twice_and_replay_with_any_n(tmp_path):
    task = shared_task(tmp_path)
    (tmp_path / "rendezvous").mkdir()
    shards = run_all_at_once(tmp_path, shard_commands(tmp_path, "team", 3, "--run-id", "team-1", task=task,
                                                      options=(f"rendezvous={tmp_path / 'rendezvous'}",)))
    assert [d.returncode for d in shards] == [0, 0, 0], [d.stderr for d in shards]
    assert all("note" not in d.stderr for d in shards)
    runs, overall = merged_files(tmp_path / "team" / "shared")
    answers = [r["output"]["result"] for r in runs]
    assert len(set(answers)) == 9, answers  # i.i.d. across shards: one run, fresh samples per request
    assert json.loads(overall)["custom"] == {"distinct answers": 9}
    for out, count in (("replay-1", 1), ("replay-2", 2)):
        replay = run_one_after_another(tmp_path, shard_commands(tmp_path, out, count, "--replay-only", task=task,
                                                                options=()))
        assert [d.returncode for d in replay] == [0] * count, [d.stderr for d in replay]
        assert merged_files(tmp_path / out / "shared") == (runs, overall), out


QUEUED_TASK = '''
import pathlib

from cachesaver.tasks import Task, TaskSampleExecutionResult


class Queued(Task):
    """Six samples over three prompts, q<index // 2>: with two shards, each prompt is asked once
    in each. A simulated answer counts the draws of its prompt in the directory ``draws``, so a
    fresh sample differs from every stored one, and one unsharded run (one sample at a time)
    draws the same answers in the same order as two shards run one after another."""

    def __init__(self, draws):
        super().__init__(name="queued", concurrency=1)
        self.draws = pathlib.Path(draws)

    def get_indices(self):
        return list(range(6))

    async def start_sample(self, index, session):
        reply = await session.action({"role": "user", "content": f"q{index // 2}"})
        return TaskSampleExecutionResult(result=reply.content)

    def calculate_overall(self, results):
        return {"answers": sorted(r.result for r in results)}

    def simulated_compose(self, prompt, rank, rng):
        counter = self.draws / prompt
        drawn = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(drawn + 1))
        return f"{prompt}: draw {drawn}"
'''


def test_shards_of_one_run_id_one_after_another_write_what_one_unsharded_run_writes(tmp_path):
    """Shards on a queue are one run: they linger, so shard 2 is served fresh samples of the
    prompts shard 1 asked, and the merge is one unsharded run's files; shard 2, whose merge
    completes, ends the run, so a replay-only re-run with the same run id and N=3 is a new run
    and reproduces them with no model call."""
    (tmp_path / "queued_task.py").write_text(QUEUED_TASK)
    for draws in ("draws-one", "draws-two"):
        (tmp_path / draws).mkdir()

    def commands(out, count, *extra, draws="draws-two", cache="cache"):
        return shard_commands(tmp_path, out, count, *extra, task="queued_task.py:Queued", cache=cache,
                              options=(f"draws={tmp_path / draws}",))

    whole = run_in_process(tmp_path, commands("one", 1, draws="draws-one", cache="cache-one")[0][:-2])
    assert whole.returncode == 0, whole.stderr
    expected = merged_files(tmp_path / "one" / "queued")
    assert json.loads(expected[1])["custom"]["answers"] == [f"q{i}: draw {k}" for i in range(3) for k in (0, 1)]

    shards = run_one_after_another(tmp_path, commands("two", 2, "--run-id", "queue-1"))
    assert [d.returncode for d in shards] == [0, 0], [d.stderr for d in shards]
    assert merged_files(tmp_path / "two" / "queued") == expected  # runs.jsonl line for line, overall.json byte for byte
    assert row(shards[0].stdout, "shared run") == "queue-1: open 86400 s more for later shards"
    assert row(shards[1].stdout, "shared run") == "queue-1: ended (every shard is merged)"
    assert all(d.stderr == "" for d in shards)

    replay = run_one_after_another(tmp_path, commands("replay", 3, "--run-id", "queue-1", "--replay-only"))
    assert [d.returncode for d in replay] == [0, 0, 0], [d.stderr for d in replay]
    assert [row(d.stdout, "cache misses") for d in replay] == ["0 (no request reached any model)"] * 3
    assert merged_files(tmp_path / "replay" / "queued") == expected


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--run-id", "r", "--shard", "1/2", "--linger", "60"), "--linger takes 0 (the run ends when its last pipeline closes) or a finite number of seconds of at least 600"),
        (("--run-id", "r", "--linger", "inf"), "--linger takes 0"),
        (("--run-id", "r", "--linger", "-1"), "--linger takes 0"),
        (("--shard", "1/2", "--linger", "3600"), "--linger needs --run-id: only a shared run can linger"),
    ],
)
def test_a_bad_linger_is_one_line_on_stderr_and_exit_2(tmp_path, extra, message):
    done = run_cli(["run", GAME24, "--out", "out", "--namespace", "ns", "--cache", "cache", "--no-progress", *extra],
                   cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"cachesaver: error: {message}"), done.stderr
    assert not (tmp_path / "out").exists()


def test_shards_without_a_run_id_are_runs_of_their_own_and_say_so(tmp_path):
    task = shared_task(tmp_path)
    shards = run_one_after_another(tmp_path, shard_commands(tmp_path, "apart", 3, task=task, options=()))
    assert [d.returncode for d in shards] == [0, 0, 0], [d.stderr for d in shards]
    for number, done in enumerate(shards, start=1):
        assert done.stderr.startswith(f"cachesaver: note: shard {number}/3 without --run-id is a run of its own")
        assert "the shards are then one run, at once or one after another" in done.stderr
    runs, _ = merged_files(tmp_path / "apart" / "shared")
    # Shards 2 and 3 were served the samples shard 1 stored: q0's three requests got one sample.
    assert len({r["output"]["result"] for r in runs}) == 3
    assert [row(d.stdout, "cache hits") for d in shards[1:]] == ["3/3 samples (100.0%)"] * 2
