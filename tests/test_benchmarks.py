"""The simulated-backend benchmark runs and reports what the pipeline saves on the main job.

Only counts are checked (requests, calls, samples, tokens), never times: the benchmark's
measures are modeled, so they are exact and repeatable. Nothing here needs the reference venv
or the network: the comparison with cachesaver==0.0.6 is checked on made-up reference results.
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
WALL = "wall s (noisy)"
RATIO = r"\((?:[\d.]+x|inf)\)"
CELL = re.compile(
    rf"(.+) ([\d,.]+) -> ([\d,.]+) {RATIO}(?: vs 0\.0\.6 (?:([\d,.]+) {RATIO}|-))?"
)


def _load():
    spec = importlib.util.spec_from_file_location("cachesaver_bench_simulated_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _number(text: str | None) -> float | None:
    return None if text is None else float(text.replace(",", ""))


def _parse(line: str) -> tuple[str, dict[str, tuple[float, ...]]]:
    """A report line: per measure (direct, ours), plus 0.0.6's value (None for ``-``) if shown."""
    name, *cells = [cell.strip() for cell in line.split("|")]
    values = {}
    for cell in cells:
        match = CELL.fullmatch(cell)
        assert match, cell
        numbers = (_number(match[2]), _number(match[3]))
        if " vs 0.0.6 " in cell:
            numbers += (_number(match[4]),)
        values[match[1]] = numbers
    return name, values


def test_bench_simulated_reports_every_workload_and_the_pipeline_saves() -> None:
    bench = _load()
    rows = dict(_parse(line) for line in anyio.run(bench.bench, 0))
    assert list(rows) == ["sweep", "sweep rerun", "sweep, both runs", "sweep largest-first", "one config"]
    for name, values in rows.items():
        assert tuple(values) == MEASURES + (WALL,), name
        assert all(len(pair) == 2 for pair in values.values()), name  # no reference given, none shown
    sweep, rerun, both = rows["sweep"], rows["sweep rerun"], rows["sweep, both runs"]
    assert sweep["requests"][1] < sweep["requests"][0]
    assert sweep["samples generated"][1] < sweep["samples generated"][0]
    assert all(rerun[m][1] == 0 for m in MEASURES)  # a re-run is replayed from the cache
    assert rerun["requests"][0] == sweep["requests"][0]  # the direct re-run pays the same again
    for measure in MEASURES:
        # printed values are rounded to 0.1, so a sum may differ by one rounding step
        assert both[measure][0] == pytest.approx(sweep[measure][0] + rerun[measure][0], abs=0.15)
    # With one configuration only merging and batching help: every sample is still generated.
    one = rows["one config"]
    assert one["samples generated"][0] == one["samples generated"][1]
    assert one["calls"][1] < one["calls"][0]


def test_bench_simulated_compares_with_the_reference_results_it_is_given() -> None:
    bench = _load()
    Cost, ReferenceRun = bench.Cost, bench.ReferenceRun
    reference = bench.Reference(
        {
            "sweep": ReferenceRun(Cost(700, 700, 760, 93_000, 82.5, 1.5), batch_sizes=[1, 1, 16]),
            "sweep rerun": ReferenceRun(Cost(0, 0, 0, 0, 0.0, 1.0)),
            "sweep largest-first": ReferenceRun(None, ["timed out after 300 s"]),
            # "one config" is missing: shown as not measured
        },
        {"version": "0.0.6"},
    )
    lines = anyio.run(bench.bench, 0, reference)
    rows = dict(_parse(line) for line in lines)
    sweep, both = rows["sweep"], rows["sweep, both runs"]
    assert sweep["requests"][2] == 700 and sweep["tokens"][2] == 93_000 and sweep[WALL][2] == 1.5
    assert f"vs 0.0.6 700 ({700 / sweep['requests'][1]:.1f}x)" in lines[0]  # 0.0.6 / ours
    assert both["samples generated"][2] == 760 and both[WALL][2] == 2.5
    for name in ("sweep largest-first", "one config"):
        assert all(values[2] is None for values in rows[name].values()), name
    notes = bench.reference_notes(reference, 16)
    assert "sweep 3 batches, 2 of one item" in notes[0]
    assert notes[1:] == [
        "0.0.6 sweep largest-first: timed out after 300 s (numbers shown as -)",
        "0.0.6 one config: not measured (numbers shown as -)",
    ]


def test_bench_simulated_prints_our_lines_and_why_when_the_reference_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load()
    missing = tmp_path / "no-such-python"
    assert bench.main(["--ref-python", str(missing)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("reference: cachesaver==0.0.6 not measured: could not start")
    assert [_parse(line)[0] for line in out[3:]] == [
        "sweep", "sweep rerun", "sweep, both runs", "sweep largest-first", "one config"
    ]
    assert bench.main(["--ref-python", str(missing), "--check"]) == 2  # --check: a missing reference fails
