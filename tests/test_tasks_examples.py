"""The two example tasks: the seed's VirtualTask runs unchanged; Game of 24 scores exactly."""

import json
import random
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import anyio
import anyio.lowlevel
import pytest

from cachesaver.tasks import (
    AgentOutput,
    AgentOutputStatus,
    EchoAgent,
    load_task_class,
    run_task,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example_module(name, monkeypatch=None):
    cls_name = {"virtual_task": "VirtualTask", "game24": "Game24Task"}[name]
    module = sys.modules[load_task_class(f"{EXAMPLES / name}.py:{cls_name}").__module__]
    if monkeypatch is not None and hasattr(module, "asyncio"):
        async def no_wait(seconds):
            await anyio.lowlevel.checkpoint()

        monkeypatch.setattr(module, "asyncio", SimpleNamespace(sleep=no_wait))
    return module


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_the_seeds_virtual_task_runs_unchanged(tmp_path, monkeypatch, capsys):
    module = example_module("virtual_task", monkeypatch)
    summary = await run_task(module.VirtualTask(), EchoAgent(), tmp_path)
    runs = read_jsonl(tmp_path / "virtual-task" / "runs.jsonl")
    assert sorted(r["index"] for r in runs) == list(range(10))
    assert {r["output"]["status"] for r in runs} == {"completed"}
    assert {len(r["output"]["history"]) for r in runs} == {6}
    assert runs[0]["output"]["history"][:2] == [
        {"role": "user", "content": "Loop: 0"},
        {"role": "agent", "content": "Loop: 0"},
    ]
    overall = json.loads((tmp_path / "virtual-task" / "overall.json").read_text())
    assert overall["total"] == 10
    assert overall["custom"] == {"score": 0.4}
    assert overall["validation"]["completed"] == 1.0
    assert overall["validation"]["average_history_length"] == 6
    assert summary.finished == 10
    assert capsys.readouterr().out.count("task start sample") == 10


async def test_virtual_task_main_runs_on_the_simulated_backend(tmp_path, monkeypatch, capsys):
    module = example_module("virtual_task", monkeypatch)
    await module.main(str(tmp_path / "out"), str(tmp_path / "cache"))
    out = capsys.readouterr().out
    assert re.search(r"^finished\s+10$", out, re.MULTILINE) and "virtual-demo" in out


def test_puzzles_are_solvable_distinct_and_the_same_every_time():
    game24 = example_module("game24")
    puzzles = game24.generate_puzzles(20)
    assert puzzles == game24.generate_puzzles(20)
    assert len(set(puzzles)) == 20
    for numbers in puzzles:
        assert game24.score(numbers, f"Answer: {game24.solve(numbers)}").correct
    assert game24.solve([1, 1, 1, 1]) is None


@pytest.mark.parametrize(
    "answer, correct, problem",
    [
        ("Answer: (3 * 4) + (3 * 4)", True, None),
        ("thinking...\n3*4 + 3*4 = 24", True, None),
        ("Answer: 3 × 4 + 3 × 4.", True, None),
        ("Answer: 3 + 3 + 4 + 4", False, "= 14, not 24"),
        ("Answer: 3 * 4 * 2", False, "uses [2, 3, 4]"),
        ("Answer: 4 / (3 - 3) + 4", False, "division by zero"),
        ("Answer: __import__('os')", False, "cannot evaluate"),
        ("Answer: 3 ** 4", False, "cannot evaluate"),
        ("I give up", False, "no expression"),
    ],
)
def test_the_scorer_is_exact_and_never_raises(answer, correct, problem):
    verdict = example_module("game24").score([3, 3, 4, 4], answer)
    assert verdict.correct is correct
    if problem is not None:
        assert problem in verdict.problem


def test_the_scorer_refuses_an_over_long_expression_before_parsing_it():
    game24 = example_module("game24")
    verdict = game24.score([3, 3, 4, 4], "Answer: " + "+".join(["1"] * 1200))
    assert (verdict.correct, verdict.valid_expression) == (False, False)
    assert "2399 characters; keep it under 200" in verdict.problem


def test_the_scorer_survives_an_expression_too_deep_to_evaluate(monkeypatch):
    game24 = example_module("game24")
    monkeypatch.setattr(game24, "MAX_EXPRESSION_CHARS", 10**6)  # let it reach the evaluator
    verdict = game24.score([3, 3, 4, 4], "Answer: " + "+".join(["1"] * 5000))
    assert (verdict.correct, verdict.valid_expression) == (False, False)
    assert "nested too deeply" in verdict.problem


class Scripted:
    """Answers each sample's turns from a list."""

    def __init__(self, answers):
        self.answers = answers

    async def act(self, turn):
        reply = self.answers[turn.turn]
        if isinstance(reply, AgentOutput):
            return reply
        return AgentOutput(content=reply)


@pytest.mark.parametrize(
    "answers, status, correct, turns",
    [
        (["Answer: (3 * 4) + (3 * 4)"], "completed", True, 1),
        (["Answer: 3 + 3 + 4 + 4", "Answer: (3 * 4) * (4 - 3)"], "completed", False, 2),
        (["Answer: 3 + 3 + 4 + 4", "Answer: 3*4+3*4"], "completed", True, 2),
        (["nothing", "still nothing"], "agent invalid action", False, 2),
        (["Answer: 3 * 4", "Answer: 12 * 2"], "agent validation failed", False, 2),
        ([AgentOutput(status=AgentOutputStatus.AGENT_CONTEXT_LIMIT)], "agent context limit", False, 1),
        ([AgentOutput(status=AgentOutputStatus.CANCELLED)], "unknown", False, 1),
    ],
)
async def test_game24_statuses(tmp_path, answers, status, correct, turns):
    game24 = example_module("game24")
    task = game24.Game24Task(puzzles=1)
    task.puzzles = [(3, 3, 4, 4)]
    summary = await run_task(task, Scripted(answers), tmp_path)
    [record] = read_jsonl(tmp_path / "game24" / "runs.jsonl")
    assert record["output"]["status"] == status
    assert record["output"]["result"]["correct"] is correct
    assert summary.agent_turns == turns
    assert summary.overall["custom"]["accuracy"] == (1.0 if correct else 0.0)


def test_simulated_answers_are_shaped_like_the_game():
    game24 = example_module("game24")
    prompt = game24.puzzle_prompt([3, 3, 4, 4])
    answers = [game24.Game24Task.simulated_compose(prompt, rank, random.Random(0)) for rank in range(6)]
    verdicts = [game24.score([3, 3, 4, 4], a) for a in answers]
    assert verdicts[0].correct
    assert not any(v.correct for v in verdicts[1:])
    assert verdicts[5].expression is None


async def test_game24_main_runs_then_replays_with_zero_calls(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    game24 = example_module("game24")
    await game24.main(str(tmp_path / "out"), str(tmp_path / "cache"), 6)
    out = capsys.readouterr().out
    first, replay = out.split("== replay-only")
    assert re.search(r"^cache hits\s+0/", first, re.MULTILINE)
    assert "100.0%" in replay
    total_row = [line for line in replay.splitlines() if line.startswith("total")][0]
    assert total_row.split()[1] == "0"  # upstream calls
    runs = {}
    for label in ("first-run", "replay-only"):
        records = read_jsonl(tmp_path / "out" / label / "game24" / "runs.jsonl")
        runs[label] = [{k: v for k, v in r.items() if k != "time"} for r in records]
    assert runs["first-run"] == runs["replay-only"]  # line for line, time aside
    assert [r["index"] for r in runs["first-run"]] == list(range(6))
