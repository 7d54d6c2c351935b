"""Game of 24 as a cachesaver task: a reasoning benchmark with a deterministic scorer.

Each sample is four numbers from 1 to 13 that can make 24; the agent must answer with an
expression using each number exactly once with ``+ - * /`` and parentheses. A wrong answer
gets one more attempt with feedback. Puzzles are generated in code (seeded, checked solvable
by an exact solver), so nothing is downloaded.

Run it on the embedded simulated backend (or on Together when ``TOGETHER_API_KEY`` is set)::

    python examples/game24.py                 # a first run, then a replay-only re-run
    cachesaver run examples/game24.py:Game24Task --out out --namespace g24
    cachesaver run examples/game24.py:Game24Task --out out-replay --namespace g24 --replay-only

On the simulated backend the task's :meth:`Game24Task.simulated_compose` shapes the answers
(some right, some wrong, some malformed), so the score is not trivial.
"""

from __future__ import annotations

import ast
import contextlib
import random
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import anyio

from cachesaver.tasks import (
    AgentOutputStatus,
    SampleStatus,
    Session,
    Task,
    TaskOutput,
    TaskSampleExecutionResult,
)

TARGET = 24


# -- puzzles ---------------------------------------------------------------------------------
def solve(numbers: Sequence[int]) -> Optional[str]:
    """An expression making 24 from ``numbers`` (each used once), or None if there is none."""

    def search(items: List[Tuple[Fraction, str]]) -> Optional[str]:
        if len(items) == 1:
            return items[0][1] if items[0][0] == TARGET else None
        for i, j in combinations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            options = [(a + b, f"({ea} + {eb})"), (a * b, f"({ea} * {eb})"),
                       (a - b, f"({ea} - {eb})"), (b - a, f"({eb} - {ea})")]
            if b:
                options.append((a / b, f"({ea} / {eb})"))
            if a:
                options.append((b / a, f"({eb} / {ea})"))
            for value, text in options:
                found = search(rest + [(value, text)])
                if found:
                    return found
        return None

    found = search([(Fraction(n), str(n)) for n in numbers])
    return found[1:-1] if found else None


def generate_puzzles(count: int, seed: int = 24) -> List[Tuple[int, ...]]:
    """``count`` distinct solvable puzzles, the same for the same seed on every machine."""
    rng = random.Random(seed)
    puzzles: List[Tuple[int, ...]] = []
    while len(puzzles) < count:
        numbers = tuple(sorted(rng.randint(1, 13) for _ in range(4)))
        if numbers not in puzzles and solve(numbers) is not None:
            puzzles.append(numbers)
    return puzzles


# -- scoring ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """The score of one answer: ``problem`` says what is wrong (None when correct)."""

    expression: Optional[str]
    correct: bool
    problem: Optional[str]
    valid_expression: bool


# A Game-24 expression over four numbers up to 13 fits in well under this; longer ones are
# refused before parsing, so a pathological answer cannot exhaust the parser or the evaluator.
MAX_EXPRESSION_CHARS = 200

_ANSWER = re.compile(r"answer\s*[:=]\s*(.+)", re.IGNORECASE)
_EXPRESSION_LINE = re.compile(r"^[\d\s+\-*/().×÷=]+$")


def extract_expression(text: str) -> Optional[str]:
    """The expression of an answer: the last ``Answer: ...`` line, else the last line made only
    of numbers and operators; ``= 24`` at the end is dropped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    candidates = [m.group(1) for line in lines if (m := _ANSWER.search(line))]
    if not candidates:
        candidates = [line for line in lines if _EXPRESSION_LINE.match(line) and re.search(r"\d", line)]
    if not candidates:
        return None
    expression = candidates[-1].replace("×", "*").replace("÷", "/").strip().rstrip(".")
    return expression.split("=")[0].strip() or None


def _evaluate(node: ast.AST, used: List[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ZeroDivisionError("division by zero")
        return left / right
    raise ValueError("only whole numbers, + - * / and parentheses are allowed")


def score(numbers: Sequence[int], answer: str) -> Verdict:
    """Whether ``answer`` makes 24 from exactly ``numbers``; never raises, whatever the answer.

    An expression longer than ``MAX_EXPRESSION_CHARS`` is an invalid expression (not parsed),
    and so is one nested too deeply to parse or evaluate.
    """
    expression = extract_expression(answer)
    if expression is None:
        return Verdict(None, False, "no expression found; end with 'Answer: <expression>'", False)
    if len(expression) > MAX_EXPRESSION_CHARS:
        shown = expression[:40] + "..."
        problem = (
            f"the expression {shown!r} is {len(expression)} characters; keep it under "
            f"{MAX_EXPRESSION_CHARS}"
        )
        return Verdict(expression, False, problem, False)
    try:
        used: List[int] = []
        value = _evaluate(ast.parse(expression, mode="eval"), used)
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return Verdict(expression, False, f"cannot evaluate {expression!r}: {exc}", False)
    except (RecursionError, MemoryError):
        return Verdict(expression, False, f"cannot evaluate {expression!r}: nested too deeply", False)
    if sorted(used) != sorted(numbers):
        return Verdict(expression, False, f"uses {sorted(used)} instead of {sorted(numbers)}", True)
    if value != TARGET:
        return Verdict(expression, False, f"{expression} = {value}, not {TARGET}", True)
    return Verdict(expression, True, None, True)


def puzzle_prompt(numbers: Sequence[int]) -> str:
    shown = " ".join(map(str, numbers))
    return (
        f"Numbers: {shown}\nUse each number exactly once with + - * / and parentheses to make "
        f"{TARGET}. Think briefly, then give the expression on a last line 'Answer: <expression>'."
    )


def feedback_prompt(numbers: Sequence[int], problem: str) -> str:
    shown = " ".join(map(str, numbers))
    return f"Numbers: {shown}\nThat is not right: {problem}. Try again; end with 'Answer: <expression>'."


# -- the task ---------------------------------------------------------------------------------
class Game24Task(Task):
    """Game of 24 over ``puzzles`` generated puzzles, with up to ``max_attempts`` answers each.

    Status: COMPLETED when the last answer is an expression over the right numbers (right or
    wrong: ``result["correct"]`` says which), AGENT_VALIDATION_FAILED when it uses other
    numbers, AGENT_INVALID_ACTION when it has no usable expression, AGENT_CONTEXT_LIMIT when
    the conversation outgrew the model. ``calculate_overall`` gives the accuracy.
    """

    def __init__(self, puzzles: int = 12, max_attempts: int = 2, seed: int = 24, concurrency: int = 4) -> None:
        super().__init__(name="game24", concurrency=concurrency)
        self.puzzles = generate_puzzles(puzzles, seed)
        self.max_attempts = max_attempts

    def get_indices(self) -> List[int]:
        return list(range(len(self.puzzles)))

    async def start_sample(self, index: int, session: Session) -> TaskSampleExecutionResult:
        numbers = self.puzzles[index]
        result: Dict[str, Any] = {"numbers": list(numbers), "answers": [], "correct": False}
        session.inject({"role": "user", "content": puzzle_prompt(numbers)})
        verdict: Optional[Verdict] = None
        for attempt in range(self.max_attempts):
            output = await session.action()
            if output.status == AgentOutputStatus.AGENT_CONTEXT_LIMIT:
                return TaskSampleExecutionResult(status=SampleStatus.AGENT_CONTEXT_LIMIT, result=result)
            if output.status != AgentOutputStatus.NORMAL:
                return TaskSampleExecutionResult(status=SampleStatus.UNKNOWN, result=result)
            verdict = score(numbers, output.content or "")
            result["answers"].append(verdict.expression)
            if verdict.correct:
                result["correct"] = True
                return TaskSampleExecutionResult(status=SampleStatus.COMPLETED, result=result)
            if attempt + 1 < self.max_attempts:
                session.inject({"role": "user", "content": feedback_prompt(numbers, verdict.problem or "")})
        if verdict is None or not verdict.valid_expression:
            return TaskSampleExecutionResult(status=SampleStatus.AGENT_INVALID_ACTION, result=result)
        if verdict.problem and verdict.problem.startswith("uses "):
            return TaskSampleExecutionResult(status=SampleStatus.AGENT_VALIDATION_FAILED, result=result)
        return TaskSampleExecutionResult(status=SampleStatus.COMPLETED, result=result)

    def calculate_overall(self, results: List[TaskOutput]) -> Dict[str, Any]:
        solved = sum(1 for r in results if isinstance(r.result, dict) and r.result.get("correct"))
        first_try = sum(
            1 for r in results
            if isinstance(r.result, dict) and r.result.get("correct") and len(r.result.get("answers", ())) == 1
        )
        return {
            "accuracy": solved / len(results) if results else 0.0,
            "solved": solved,
            "solved_first_try": first_try,
            "samples": len(results),
        }

    @staticmethod
    def simulated_compose(prompt: str, rank: int, rng: random.Random) -> str:
        """How the simulated backend answers a Game-24 prompt: the likeliest answer is right,
        the next ones are wrong, one uses the wrong numbers and the rarest has no expression."""
        found = re.search(r"Numbers:\s*([\d ]+)", prompt)
        numbers = [int(n) for n in found.group(1).split()] if found else [1, 2, 3, 4]
        a, b, c, d = (numbers + [1, 1, 1, 1])[:4]
        thought = rng.choice(["Let me try combinations.", "Work backwards from 24.", "Pair the numbers."])
        answers = {
            0: solve(numbers),
            1: f"{a} + {b} + {c} + {d}",
            2: f"({a} + {b}) * ({c} - {d})",
            3: f"{a} * {b} - {c} - {d}",
            4: f"{a} * {b}",
        }
        expression = answers.get(rank)
        if expression is None:
            return f"{thought} I could not find a way."
        return f"{thought}\nAnswer: {expression}"


# -- run it twice: once for real, once replay-only --------------------------------------------
async def main(out_dir: str = "out/game24-example", cache_dir: str = "caches/examples", puzzles: int = 12) -> None:
    from cachesaver.models.replay_only import ReplayOnlyModel
    from cachesaver.pipelines import OnlineAPI
    from cachesaver.tasks import PipelineAgent, run_task
    from cachesaver.tasks.backends import default_backend, default_model, make_model, request_factory

    backend = default_backend()  # together when TOGETHER_API_KEY is set, else simulated
    model_name = default_model(backend)
    for label, replay_only in (("first-run", False), ("replay-only", True)):
        async with contextlib.AsyncExitStack() as stack:
            backend_model = make_model(
                backend, compose=Game24Task.simulated_compose, requests_only=replay_only
            )
            if callable(getattr(backend_model, "aclose", None)):
                stack.push_async_callback(backend_model.aclose)
            model = ReplayOnlyModel() if replay_only else backend_model
            pipeline = await stack.enter_async_context(OnlineAPI(model, cache_dir, batch_size=4))
            agent = PipelineAgent(
                pipeline, namespace="game24-example", model=model_name, max_tokens=512,
                request_factory=request_factory(backend_model),
            )
            summary = await run_task(
                Game24Task(puzzles=int(puzzles)), agent, Path(out_dir) / label, ledger=pipeline.ledger
            )
        print(f"== {label} ({backend}) ==")
        print(summary.render())
        print()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:], backend="asyncio")
