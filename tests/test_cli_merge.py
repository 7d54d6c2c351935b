"""``cachesaver merge``: the shards of several hosts merged by hand, and what it refuses."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cachesaver.cli import main

GAME24 = str(Path(__file__).resolve().parent.parent / "examples" / "game24.py") + ":Game24Task"


@pytest.fixture(autouse=True)
def no_api_keys(monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def run(tmp_path, out, *extra, puzzles=5):
    return main(["run", GAME24, "--out", str(tmp_path / out), "--namespace", "g24", "--cache", str(tmp_path / "cache"),
                 "--no-progress", "--task-option", f"puzzles={puzzles}", *extra])


def merge(tmp_path, out, puzzles=5):
    return main(["merge", GAME24, "--out", str(tmp_path / out), "--task-option", f"puzzles={puzzles}"])


def row(text, name):
    return re.search(rf"^{name} +(.+)$", text, re.MULTILINE).group(1)


def files(directory):
    runs = [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (directory / "runs.jsonl").read_text().splitlines()]
    return runs, (directory / "overall.json").read_text()


def test_shard_directories_of_several_hosts_merge_into_the_unsharded_files(tmp_path, capsys):
    assert run(tmp_path, "whole") == 0
    for number in (1, 2):  # each "host" has an output directory of its own
        assert run(tmp_path, f"host{number}", "--shard", f"{number}/2", "--replay-only") == 0
        shutil.copytree(tmp_path / f"host{number}" / "game24" / f"shard-{number}-of-2",
                        tmp_path / "together" / "game24" / f"shard-{number}-of-2")
    capsys.readouterr()
    command = [sys.executable, "-m", "cachesaver", "merge", GAME24, "--out", "together", "--task-option", "puzzles=5"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert row(done.stdout, "shards") == "1/2, 2/2" and row(done.stdout, "finished") == "5"
    assert row(done.stdout, "merged") == "runs.jsonl, overall.json"
    assert files(tmp_path / "together" / "game24") == files(tmp_path / "whole" / "game24")
    assert merge(tmp_path, "together") == 0  # merging again changes nothing
    assert files(tmp_path / "together" / "game24") == files(tmp_path / "whole" / "game24")


def test_a_merge_with_a_shard_missing_writes_nothing_and_exits_1(tmp_path, capsys):
    assert run(tmp_path, "out", "--shard", "1/2") == 0
    capsys.readouterr()
    assert merge(tmp_path, "out") == 1
    captured = capsys.readouterr()
    assert captured.err == "\ncachesaver: nothing merged: shard 2/2 has not finished\n"
    assert row(captured.out, "  waiting") == "shard 2/2 has not finished"
    assert not (tmp_path / "out" / "game24" / "runs.jsonl").exists()


def test_merging_with_other_task_options_than_the_shards_is_one_line_and_exit_2(tmp_path, capsys):
    for number in (1, 2):
        assert run(tmp_path, "out", "--shard", f"{number}/2") == 0
    capsys.readouterr()
    assert merge(tmp_path, "out", puzzles=6) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cachesaver: error: none of the 2 finished shard(s)")
    assert "same task and --task-option values as the shards" in err


def test_a_merge_of_a_shard_that_failed_a_sample_exits_1_pointing_at_error_jsonl(tmp_path, capsys):
    assert run(tmp_path, "first", puzzles=2) == 0
    for number in (1, 2):  # puzzle 2 was never run: a replay-only miss fails it
        run(tmp_path, "out", "--shard", f"{number}/2", "--replay-only", puzzles=3)
    capsys.readouterr()
    assert merge(tmp_path, "out", puzzles=3) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert row(captured.out, "merged") == "runs.jsonl, overall.json, error.jsonl (1 failed attempt)"
    assert f"1 sample(s) failed; see {tmp_path / 'out' / 'game24'}/error.jsonl" in err
    [error] = (tmp_path / "out" / "game24" / "error.jsonl").read_text().splitlines()
    assert json.loads(error)["index"] == 2 and "CacheMissError" in json.loads(error)["error"]
