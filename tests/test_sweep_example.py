"""The main job (examples/sweep.py): runs end to end, and a second run replays with zero calls."""

from __future__ import annotations

import importlib.util
import random
import re
import sys
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sweep.py"


@pytest.fixture(scope="module")
def sweep() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cachesaver_sweep_example_test", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_second_run_replays_everything_with_zero_model_calls(
    sweep: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    first = await sweep.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("backend: SimulatedLLM")
    assert (tmp_path / "caches" / "sweep").is_dir()
    assert first.upstream_requests > first.batched_calls > 0  # batching sends several requests per call
    assert len(first.rows) == len(sweep.CONFIGS)
    assert all(row.upstream_requests >= row.batched_calls > 0 for row in first.rows)
    assert first.upstream_requests == sum(r.backend.requests for r in first.rows)  # counts requests...
    assert first.batched_calls == sum(r.backend.calls for r in first.rows)  # ...next to the model's calls
    assert first.rows[0].samples_cached == 0  # nothing stored before the first configuration
    assert sum(row.samples_cached for row in first.rows[1:]) > 0  # later ones reuse its samples
    assert "run again to replay" in out[-1]
    header = out[2].split()
    assert " ".join(header) == " ".join(sweep.COLUMNS)  # the columns the issue asks for
    assert re.split(r"\s{2,}", out[2])[1:3] == ["upstream requests", "batched calls"]
    table = out[3 : 3 + len(sweep.CONFIGS)]
    assert [line.split()[0] for line in table] == [config.name for config in sweep.CONFIGS]
    for line, row in zip(table, first.rows):
        cells = line.split()
        assert [int(c) for c in cells[1:5]] == [
            row.upstream_requests, row.batched_calls, row.samples_cached, row.samples_duplicated,
        ]
    assert out[3 + len(sweep.CONFIGS)].split()[:3] == ["total", str(first.upstream_requests), str(first.batched_calls)]
    assert out[-1].startswith(
        f"first run: {first.upstream_requests} requests reached the model in {first.batched_calls} batched calls"
    )

    second = await sweep.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("backend: SimulatedLLM")
    assert second.upstream_requests == 0 and second.batched_calls == 0
    assert second.samples_cached == second.samples_served == first.samples_served
    assert [r.solved for r in second.rows] == [r.solved for r in first.rows]
    assert all(r.backend.requests == 0 for r in second.rows)
    assert out[-1].startswith("replayed everything from caches/sweep: 0 upstream requests, 0 model calls")


async def test_an_explicit_cache_dir_and_seed_are_honoured(
    sweep: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "elsewhere"
    first = await sweep.main(cache, seed=7)
    assert cache.is_dir() and first.upstream_requests > 0
    other_seed = await sweep.main(cache, seed=8)  # the cache, not the seed, decides the samples
    assert other_seed.upstream_requests == 0
    assert "seed 8" in capsys.readouterr().out


def test_the_search_pieces(sweep: ModuleType) -> None:
    assert sweep.reaches_24((Fraction(4), Fraction(4), Fraction(6), Fraction(8)))
    assert not sweep.reaches_24((Fraction(1), Fraction(1), Fraction(1), Fraction(1)))
    root = sweep.root_state("4 4 6 8")
    child = sweep.child_state(root, "4 + 8 = 12 (left: 4 6 12)")
    assert child.numbers == ("4", "6", "12")
    assert child.messages[: len(root.messages)] == root.messages  # a later turn extends the chat
    assert sweep.child_state(root, "not a step") is None
    step = sweep.compose_game24(root.messages[-1][1], 0, random.Random(1))
    assert sweep.child_state(root, step) is not None
    verdict = sweep.compose_game24(sweep.value_prompt(child), 0, random.Random(1))
    assert verdict.split(":")[0] in sweep.VALUE_OF
    assert sweep.score(["sure: x", "likely: y", "impossible: z"]) == pytest.approx(21.001)
