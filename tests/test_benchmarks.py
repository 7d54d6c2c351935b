"""The simulated-backend benchmark runs and reports what the pipeline saves on the main job.

Only counts are checked (requests, calls, samples, tokens), never times: the benchmark's
measures are modeled, so they are exact and repeatable.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import anyio
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_simulated.py"
MEASURES = ("requests", "calls", "samples generated", "tokens", "modeled s")


def _load():
    spec = importlib.util.spec_from_file_location("cachesaver_bench_simulated_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _parse(line: str) -> tuple[str, dict[str, tuple[float, float]]]:
    name, *cells = [cell.strip() for cell in line.split("|")]
    values = {}
    for cell in cells:
        match = re.fullmatch(r"(.+) ([\d,.]+) -> ([\d,.]+) \((?:[\d.]+x|inf)\)", cell)
        assert match, cell
        values[match[1]] = (float(match[2].replace(",", "")), float(match[3].replace(",", "")))
    return name, values


def test_bench_simulated_reports_every_workload_and_the_pipeline_saves() -> None:
    bench = _load()
    rows = dict(_parse(line) for line in anyio.run(bench.bench, 0))
    assert list(rows) == ["sweep", "sweep rerun", "sweep, both runs", "sweep largest-first", "one config"]
    for name, values in rows.items():
        assert tuple(values) == MEASURES, name
    sweep, rerun, both = rows["sweep"], rows["sweep rerun"], rows["sweep, both runs"]
    assert sweep["requests"][1] < sweep["requests"][0]
    assert sweep["samples generated"][1] < sweep["samples generated"][0]
    assert all(piped == 0 for _, piped in rerun.values())  # a re-run is replayed from the cache
    assert rerun["requests"][0] == sweep["requests"][0]  # the direct re-run pays the same again
    for measure in MEASURES:
        # printed values are rounded to 0.1, so a sum may differ by one rounding step
        assert both[measure][0] == pytest.approx(sweep[measure][0] + rerun[measure][0], abs=0.15)
    # With one configuration only merging and batching help: every sample is still generated.
    one = rows["one config"]
    assert one["samples generated"][0] == one["samples generated"][1]
    assert one["calls"][1] < one["calls"][0]
