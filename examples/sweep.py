"""The main job: a Tree-of-Thoughts hyperparameter sweep on the embedded SimulatedLLM.

Six configurations of a breadth-first Tree-of-Thoughts search (beam width x proposals per
state) solve five Game-of-24 puzzles. Each configuration is one namespace of one
:class:`~cachesaver.pipelines.OnlineAPI` pipeline, so inside a configuration every request gets
fresh samples, while later configurations reuse the samples earlier ones stored: a search that
asks for 5 proposals where an earlier one asked for 3 pays for 2, and as long as the reused
samples lead to the same states, whole subtrees come from the cache.

How the search talks to the model (and why the KV cache matters):

* A *proposal* request is a multi-turn chat: a long few-shot system prompt, the puzzle, then
  one ``assistant`` message per step taken so far, each followed by ``Numbers left: ... Propose
  one next step.``. A deeper state extends its parent's conversation, so the simulated cluster
  finds the puzzle's chat in its KV cache and prefills only the new turns.
* A *value* request is an independent one-line prompt about the numbers left, so it misses
  unless the same numbers were valued before. Three value samples per state score it ToT-style
  (sure 20, likely 1, impossible 0.001) and the best ``beam_width`` states survive.

Per configuration it prints the *upstream requests* (requests that reached the model, after
the cache and the deduplicator) and the *batched calls* they were sent in (model calls, after
batching). Run it twice: the second run replays every sample from ``caches/sweep`` with zero
model calls, and says so::

    .venv/bin/python examples/sweep.py
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, TypeVar

import anyio

from cachesaver.models.simulated import SimulatedLLM, SimulatedStats, default_compose
from cachesaver.pipelines import OnlineAPI
from cachesaver.typedefs import Request

T = TypeVar("T")

DEFAULT_CACHE_DIR = Path("caches") / "sweep"
PUZZLES = ("4 5 6 10", "1 2 6 8", "2 3 5 12", "3 3 4 8", "1 4 6 9")
DEPTH = 3
VALUE_SAMPLES = 3
BATCH_SIZE = 16
VALUE_OF = {"sure": 20.0, "likely": 1.0, "impossible": 0.001}

SYSTEM_PROMPT = """You are playing the Game of 24. Use the four given numbers and basic arithmetic
(+ - * /) to obtain 24. Each step combines exactly two of the numbers left into one new number,
so after three steps one number remains; the puzzle is solved when that number is 24. Write one
step per answer in the form "a op b = c (left: remaining numbers)". Fractions are allowed in
intermediate steps and are written as p/q. Do not explain, do not repeat earlier steps, and keep
every number you have not used.

Examples:
Input: 4 4 6 8
Steps: 4 + 8 = 12 (left: 4 6 12); 6 - 4 = 2 (left: 2 12); 2 * 12 = 24 (left: 24)
Input: 2 9 10 12
Steps: 12 * 2 = 24 (left: 9 10 24); 10 - 9 = 1 (left: 1 24); 24 * 1 = 24 (left: 24)
Input: 4 9 10 13
Steps: 13 - 10 = 3 (left: 3 4 9); 9 - 3 = 6 (left: 4 6); 4 * 6 = 24 (left: 24)
Input: 1 4 8 8
Steps: 8 / 4 = 2 (left: 1 2 8); 1 + 2 = 3 (left: 3 8); 3 * 8 = 24 (left: 24)
Input: 5 5 5 9
Steps: 5 + 5 = 10 (left: 5 9 10); 10 + 5 = 15 (left: 9 15); 15 + 9 = 24 (left: 24)
Input: 1 2 3 4
Steps: 1 + 2 = 3 (left: 3 3 4); 3 + 3 = 6 (left: 4 6); 6 * 4 = 24 (left: 24)
Input: 2 3 4 5
Steps: 5 + 3 = 8 (left: 2 4 8); 8 + 4 = 12 (left: 2 12); 12 * 2 = 24 (left: 24)
Input: 1 3 4 6
Steps: 3 / 4 = 3/4 (left: 1 6 3/4); 1 - 3/4 = 1/4 (left: 6 1/4); 6 / 1/4 = 24 (left: 24)
Input: 1 1 4 6
Steps: 1 + 1 = 2 (left: 2 4 6); 2 * 6 = 12 (left: 4 12); 12 * 2 = 24 (left: 24)
Input: 2 2 3 4
Steps: 2 * 3 = 6 (left: 2 4 6); 6 * 2 = 12 (left: 4 12); 12 * 2 = 24 (left: 24)"""


@dataclass(frozen=True)
class SweepConfig:
    """One point of the sweep: how many states survive and how many proposals each gets."""

    beam_width: int
    proposals: int
    value_samples: int = VALUE_SAMPLES

    @property
    def name(self) -> str:
        return f"b{self.beam_width}-k{self.proposals}-v{self.value_samples}"


CONFIGS = tuple(SweepConfig(beam, proposals) for beam in (1, 2, 3) for proposals in (3, 5))


# -- the task's shape: what the simulated model answers ------------------------------------

_NUMBERS_LEFT = re.compile(r"Numbers left: ([0-9/ ]+)\.")
_VALUE_NUMBERS = re.compile(r"the numbers ([0-9/ ]+) reach 24")
_LEFT = re.compile(r"\(left: ([0-9/ ]+)\)")
_REASONS = ("the sum is close", "a product fits", "too small to combine", "one division helps", "no pair works")


def _fmt(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _numbers(text: str) -> list[Fraction]:
    return [Fraction(token) for token in text.split()]


@functools.lru_cache(maxsize=None)
def reaches_24(numbers: tuple[Fraction, ...]) -> bool:
    """True if the numbers can be combined into 24 (exhaustive search)."""
    if len(numbers) == 1:
        return numbers[0] == 24
    for i, j in itertools.permutations(range(len(numbers)), 2):
        a, b = numbers[i], numbers[j]
        rest = [x for k, x in enumerate(numbers) if k not in (i, j)]
        for result in (a + b, a - b, a * b) + ((a / b,) if b else ()):
            if reaches_24(tuple(sorted(rest + [result]))):
                return True
    return False


Step = tuple[Fraction, str, Fraction, list[Fraction]]


def _steps(numbers: list[Fraction]) -> list[Step]:
    """Every step from ``numbers``: (a, op, b, the numbers left after it, result last)."""
    steps = []
    for i, j in itertools.permutations(range(len(numbers)), 2):
        a, b = numbers[i], numbers[j]
        rest = [x for k, x in enumerate(numbers) if k not in (i, j)]
        for op, result in (("+", a + b), ("-", a - b), ("*", a * b), ("/", a / b if b else None)):
            if result is not None:
                steps.append((a, op, b, rest + [result]))
    return steps


def compose_game24(prompt: str, rank: int, rng: random.Random) -> str:
    """Candidate answers shaped like a Game-of-24 solver's: a step, or a verdict on a state.

    Verdicts are noisy but informed, as a real model's are: a state that can still reach 24 is
    usually called sure or likely, a dead end usually impossible.
    """
    value = _VALUE_NUMBERS.search(prompt)
    if value:
        numbers = _numbers(value.group(1))
        if len(numbers) == 1:
            verdict = "sure" if numbers[0] == 24 else "impossible"
        else:
            weights = (5, 4, 1) if reaches_24(tuple(sorted(numbers))) else (1, 3, 6)
            verdict = rng.choices(("sure", "likely", "impossible"), weights=weights)[0]
        return f"{verdict}: {rng.choice(_REASONS)}"
    proposal = _NUMBERS_LEFT.search(prompt)
    if proposal:
        numbers = _numbers(proposal.group(1))
        steps = _steps(numbers)
        if steps:
            good = [step for step in steps if reaches_24(tuple(sorted(step[3])))]
            a, op, b, left = rng.choice(good if good and rng.random() < 0.6 else steps)
            return f"{_fmt(a)} {op} {_fmt(b)} = {_fmt(left[-1])} (left: {' '.join(_fmt(x) for x in left)})"
    return default_compose(prompt, rank, rng)


# -- the search ----------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """A node of the search: the numbers left and the conversation that led there."""

    numbers: tuple[str, ...]
    messages: tuple[tuple[str, str], ...]

    def prompt(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


def _next_turn(numbers: Sequence[str]) -> str:
    return f"Numbers left: {' '.join(numbers)}. Propose one next step."


def root_state(puzzle: str) -> State:
    numbers = tuple(puzzle.split())
    return State(numbers, (("system", SYSTEM_PROMPT), ("user", f"Input: {puzzle}\n{_next_turn(numbers)}")))


def child_state(state: State, thought: str) -> Optional[State]:
    """The state after taking ``thought``, or None if it is not a well-formed step."""
    match = _LEFT.search(thought)
    if match is None or len(match.group(1).split()) != len(state.numbers) - 1:
        return None
    numbers = tuple(match.group(1).split())
    return State(numbers, state.messages + (("assistant", thought), ("user", _next_turn(numbers))))


def value_prompt(state: State) -> str:
    return f"Evaluate if the numbers {' '.join(state.numbers)} reach 24. Answer sure, likely or impossible."


def score(verdicts: Sequence[str]) -> float:
    return sum(VALUE_OF.get(v.split(":", 1)[0], 0.0) for v in verdicts)


async def gather(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the calls concurrently; their results in order (the first failure cancels the rest)."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = await calls[i]()

    async with anyio.create_task_group() as group:
        for i in range(len(calls)):
            group.start_soon(one, i)
    return results


async def ask(model: Any, prompt: Any, n: int, request_id: str, config: SweepConfig) -> list[str]:
    """``n`` samples for ``prompt`` in the configuration's namespace."""
    request = Request(prompt, n=n, request_id=request_id, namespace=config.name)
    return (await model.request(request)).data


async def solve(model: Any, puzzle: str, config: SweepConfig) -> bool:
    """Breadth-first Tree of Thoughts on one puzzle; True if a surviving state reached 24.

    ``model`` is anything with ``async request(Request) -> Response``: a pipeline or a bare
    backend. Every request carries a request_id naming its place in the search, so a new run on
    the same cache replays it exactly.
    """
    frontier = [root_state(puzzle)]
    for depth in range(DEPTH):
        proposals = await gather([
            functools.partial(ask, model, state.prompt(), config.proposals, f"{puzzle}/d{depth}/s{i}/propose", config)
            for i, state in enumerate(frontier)
        ])
        children = [
            child
            for state, thoughts in zip(frontier, proposals)
            for thought in thoughts
            if (child := child_state(state, thought)) is not None
        ]
        verdicts = await gather([
            functools.partial(ask, model, value_prompt(state), config.value_samples, f"{puzzle}/d{depth}/c{j}/value", config)
            for j, state in enumerate(children)
        ])
        ranked = sorted(range(len(children)), key=lambda j: -score(verdicts[j]))  # stable: ties keep order
        frontier = [children[j] for j in ranked[: config.beam_width]]
    return any(state.numbers == ("24",) for state in frontier)


async def run_config(model: Any, config: SweepConfig, puzzles: Sequence[str] = PUZZLES) -> int:
    """Solve every puzzle concurrently under ``config``; the number solved."""
    solved = await gather([functools.partial(solve, model, puzzle, config) for puzzle in puzzles])
    return sum(solved)


# -- the report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigResult:
    """One configuration's numbers. ``upstream_requests`` counts the requests that reached the
    model (identical requests merged into one count once); ``batched_calls`` the model calls
    they were sent in, after batching."""

    config: SweepConfig
    solved: int
    upstream_requests: int
    batched_calls: int
    samples_served: int
    samples_cached: int
    samples_duplicated: int
    backend: SimulatedStats


@dataclass(frozen=True)
class SweepReport:
    cache_dir: Path
    rows: list[ConfigResult] = field(default_factory=list)

    @property
    def upstream_requests(self) -> int:
        return sum(r.upstream_requests for r in self.rows)

    @property
    def batched_calls(self) -> int:
        return sum(r.batched_calls for r in self.rows)

    @property
    def samples_served(self) -> int:
        return sum(r.samples_served for r in self.rows)

    @property
    def samples_cached(self) -> int:
        return sum(r.samples_cached for r in self.rows)


COLUMNS = (
    "configuration", "upstream requests", "batched calls", "samples cached", "duplicates merged", "modeled s",
    "KV hit rate", "solved",
)


def _row(cells: Sequence[Any]) -> str:
    first, *rest = (str(c) for c in cells)
    return "  ".join([first.ljust(16)] + [c.rjust(len(title)) for c, title in zip(rest, COLUMNS[1:])]).rstrip()


def _kv(stats: SimulatedStats) -> str:
    return f"{stats.kv_hit_rate:.0%}" if stats.kv_hits + stats.kv_misses else "-"


def _servers(model: SimulatedLLM) -> str:
    return ", ".join(
        f"{name} (VRAM {server.max_vram_chats}, RAM {server.max_ram_chats} chats)"
        for name, server in model.cluster.servers.items()
    )


async def main(cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR, *, seed: int = 0) -> SweepReport:
    """Run the sweep through OnlineAPI with the cache in ``cache_dir``, print a table, return it."""
    cache_dir = Path(cache_dir)
    model = SimulatedLLM(seed=seed, compose=compose_game24)
    print(f"backend: SimulatedLLM (embedded, seed {seed}, no API key) on a simulated KV-cache cluster: {_servers(model)}")
    print(
        f"sweep: Tree of Thoughts on {len(PUZZLES)} Game-of-24 puzzles, depth {DEPTH}, "
        f"{len(CONFIGS)} configurations, one namespace each, through OnlineAPI (cache: {cache_dir})"
    )
    print(_row(COLUMNS))
    rows = []
    async with OnlineAPI(model, cache_dir, batch_size=BATCH_SIZE) as pipeline:
        for config in CONFIGS:
            before = model.stats()
            solved = await run_config(pipeline, config)
            used = model.stats().since(before)
            entry = pipeline.ledger.entry(config.name)
            row = ConfigResult(
                config, solved, entry.upstream_calls, used.calls, entry.samples_served,
                entry.samples_cached, entry.samples_duplicated, used,
            )
            rows.append(row)
            print(_row([
                config.name, row.upstream_requests, row.batched_calls, row.samples_cached, row.samples_duplicated,
                f"{used.modeled_seconds:.1f}", _kv(used), f"{solved}/{len(PUZZLES)}",
            ]))
    total = model.stats()
    report = SweepReport(cache_dir, rows)
    print(_row([
        "total", report.upstream_requests, report.batched_calls, report.samples_cached,
        sum(r.samples_duplicated for r in rows),
        f"{total.modeled_seconds:.1f}", _kv(total), "",
    ]))
    if report.upstream_requests == 0:
        print(
            f"replayed everything from {cache_dir}: 0 upstream requests, 0 model calls, "
            f"{report.samples_cached} of {report.samples_served} samples served from the cache"
        )
    else:
        print(
            f"first run: {report.upstream_requests} requests reached the model in {report.batched_calls} "
            f"batched calls, {report.samples_cached} of {report.samples_served} samples came from the "
            f"cache; run again to replay everything from {cache_dir} with zero model calls"
        )
    return report


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Tree-of-Thoughts sweep on the embedded SimulatedLLM.")
    parser.add_argument("cache_dir", nargs="?", default=str(DEFAULT_CACHE_DIR), help="cache directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="SimulatedLLM seed (default: %(default)s)")
    arguments = parser.parse_args()
    anyio.run(functools.partial(main, arguments.cache_dir, seed=arguments.seed), backend="asyncio")
