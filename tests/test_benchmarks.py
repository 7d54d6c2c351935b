"""The simulated-backend benchmark runs and reports what the pipeline saves on the main job.

Only counts are checked (requests, calls, samples, tokens), never times: the benchmark's
measures are modeled, so they are exact and repeatable. Nothing here needs the reference venv
or the network: the comparison with cachesaver==0.0.6 is checked on made-up reference results.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import anyio
import pytest
from _early import early

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


@pytest.fixture(scope="module")
def our_run() -> tuple[list[str], list[object]]:
    """One real ``bench(0)`` (4 s), shared by the tests that read it: its report lines without
    a reference, and the Cost of every run it measured, in the order it measured them."""
    bench = _load()
    costs: list[object] = []

    def recording(measure):
        async def run(*args):
            costs.append(await measure(*args))
            return costs[-1]
        return run

    bench.run_piped, bench.run_direct = recording(bench.run_piped), recording(bench.run_direct)
    return anyio.run(bench.bench, 0), costs


@pytest.fixture(scope="module")
def our_lines(our_run: tuple[list[str], list[object]]) -> list[str]:
    return our_run[0]


def test_bench_simulated_reports_every_workload_and_the_pipeline_saves(our_lines: list[str]) -> None:
    rows = dict(_parse(line) for line in our_lines)
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


def test_bench_simulated_compares_with_the_reference_results_it_is_given(
    our_run: tuple[list[str], list[object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _load()
    # Our runs are the ones measured above (measuring is tested there), handed out in the order
    # bench() asks for them: this test is about the comparison with what 0.0.6 measured.
    measured = iter(our_run[1])

    async def replayed(*args: object) -> object:
        return next(measured)

    monkeypatch.setattr(bench, "run_piped", replayed)
    monkeypatch.setattr(bench, "run_direct", replayed)
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
    assert next(measured, None) is None  # as many runs as measured, none left over
    rows = dict(_parse(line) for line in lines)
    ours = dict(_parse(line) for line in our_run[0])
    for name, values in rows.items():  # a reference adds a column, never changes ours
        assert {m: v[:2] for m, v in values.items()} == ours[name], name
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
    our_lines: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _load()
    asked = []

    async def measured(seed: int, reference: object = None) -> list[str]:  # bench() is tested above
        asked.append((seed, reference))
        return list(our_lines)

    monkeypatch.setattr(bench, "bench", measured)
    missing = tmp_path / "no-such-python"
    assert bench.main(["--ref-python", str(missing)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("reference: cachesaver==0.0.6 not measured: could not start")
    assert out[3:] == our_lines and asked == [(0, None)]  # the seed, and no reference to compare with
    assert [_parse(line)[0] for line in out[3:]] == [
        "sweep", "sweep rerun", "sweep, both runs", "sweep largest-first", "one config"
    ]
    assert bench.main(["--ref-python", str(missing), "--check"]) == 2  # --check: a missing reference fails


# -- bench_pipeline.py's sequential and agents workloads, bench_memory.py --------------------------
# Run with ``--only ours`` (no reference venv, no network) at tiny sizes; only the shape of the
# report, the counts and the target logic are checked, never a time.

BENCH_DIR = BENCH.parent
LIBRARY = {"name": "cachesaver (test)", "version": "0", "location": "/x", "python": "3", "cache_options": {}}
NUMBER = r"[\d,]+\.\d"


@pytest.fixture
def benchmarks(monkeypatch: pytest.MonkeyPatch):
    """The benchmark scripts importable as modules (they import their siblings by name)."""
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import bench_memory
    import bench_pipeline

    return bench_pipeline, bench_memory


def _rows(lines: list[str], first: str) -> list[list[str]]:
    return [line.split() for line in lines if line.split()[:1] == [first]]


def test_sequential_workload_reports_ours_against_the_floor_and_profiles_it(
    benchmarks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench_pipeline, _ = benchmarks
    raw, profiles = tmp_path / "raw.json", tmp_path / "prof"
    code = bench_pipeline.main(["--only", "ours", "--sections", "sequential", "--sequential-requests", "12",
                                "--json", str(raw), "--profile", str(profiles)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    miss, hit = _rows(lines, "seq-miss")[0], _rows(lines, "seq-hit")[0]
    for row in (miss, hit):  # workload, ours us, ref us, ref/ours, floor us, ours/floor
        assert len(row) == 6 and row[2:4] == ["-", "-"], row
        assert re.fullmatch(NUMBER, row[1]) and re.fullmatch(NUMBER, row[4]) and row[5].endswith("x"), row
    targets = [line.split() for line in lines if re.match(r"seq-(miss|hit) (ref/ours|ours/floor)", line)]
    assert [(t[0], t[1], t[-1]) for t in targets] == [
        ("seq-miss", "ref/ours", "-"), ("seq-miss", "ours/floor", targets[1][-1]),
        ("seq-hit", "ref/ours", "-"), ("seq-hit", "ours/floor", targets[3][-1]),
    ]
    assert {targets[1][-1], targets[3][-1]} <= {"yes", "NO"}
    floor_line = next(line for line in lines if line.startswith("  floor on this disk"))
    for part in ("request_key", "get", "get-miss", "set", "hit = key + get", "miss = key + get-miss + set"):
        assert re.search(rf"{re.escape(part)} {NUMBER}", floor_line), part
    assert "sanity checks (samples, flags, replay): all passed" in lines
    assert re.fullmatch(r"targets met: [0-2] of 2 \(sequential .*\)", lines[-1])
    results = json.loads(raw.read_text())
    first, second = results["sequential"]["ours"]["seq-miss"], results["sequential"]["ours"]["seq-hit"]
    assert (first["upstream_requests"], first["cached_samples"], first["distinct_samples"]) == (12, 0, 12)
    assert (second["upstream_requests"], second["cached_samples"], second["replay_exact"]) == (0, 12, True)
    assert results["floor"]["hit_us"] >= results["floor"]["key_us"]  # a sum of parts, each measured
    for name in ("seq-miss", "seq-hit"):
        assert (profiles / f"ours-{name}.pstats").stat().st_size > 0
        assert "top 30 by cumulative" in (profiles / f"ours-{name}.txt").read_text()


def test_agent_plans_repeat_other_agents_prompts_and_the_ideal_counts_the_longest_chain(benchmarks) -> None:
    import _workload

    plans = _workload.agent_plans(16, 5, 0.25, seed=3)
    assert plans == _workload.agent_plans(16, 5, 0.25, seed=3)  # seeded
    originals = {(a, s): f"a{a}s{s}" for a in range(16) for s in range(5)}
    repeats = [(a, s, p) for a, plan in enumerate(plans) for s, p in enumerate(plan) if p != f"a{a}s{s}"]
    assert len(repeats) == 20  # exactly a quarter of the 80 requests
    for agent, _, prompt in repeats:
        assert prompt in originals.values() and not prompt.startswith(f"a{agent}s")
        assert prompt in [p for a, plan in enumerate(plans) if a != agent for p in plan]
        assert plans[agent].count(prompt) == 1
    ideal = _workload.ideal_rounds
    assert ideal([["p"], ["p"]]) == 1  # merged with a call in flight
    assert ideal([["a", "b"], ["b", "c"]]) == 2
    assert ideal([["a", "b", "c"], ["c"]]) == 2  # "c" was produced at 1: agent 0's third step is a hit
    assert ideal([["a", "b", "c"], ["x", "y", "z"]]) == 3


def test_agents_workload_reports_wall_time_against_the_ideal_and_profiles_it(
    benchmarks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench_pipeline, _ = benchmarks
    import _workload

    raw, profiles = tmp_path / "raw.json", tmp_path / "prof"
    options = ["--agents", "6", "--agent-steps", "3", "--agent-latency-s", "0.005", "--agent-seed", "1"]
    code = bench_pipeline.main(["--only", "ours", "--sections", "agents", *options, "--json", str(raw),
                                "--profile", str(profiles)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    (row,) = _rows(lines, "agents")
    rounds = _workload.ideal_rounds(_workload.agent_plans(6, 3, 0.2, 1))
    # agents, ours wall, ref wall, ref/ours, ideal, ours/ideal, ours calls, ref calls, target (3), met
    assert row[2:4] == ["-", "-"] and float(row[4]) == pytest.approx(rounds * 0.005)
    assert row[-4:-1] == ["ours/ideal", "<=", "1.10x"] and row[-1] in ("yes", "NO")
    assert any(line.startswith(f"  ideal = {rounds} x 5 ms:") for line in lines)
    assert "sanity checks (samples, flags, replay): all passed" in lines
    agents = json.loads(raw.read_text())["agents"]["ours"]
    assert agents["samples_served"] == agents["requests"] == 18
    assert agents["distinct_prompts"] <= agents["model_calls"] <= 18
    assert agents["flag_chain"] <= 3
    assert "top 30 by cumulative" in (profiles / "ours-agents.txt").read_text()


def test_the_report_compares_sequential_and_agents_results_with_their_targets(
    benchmarks, capsys: pytest.CaptureFixture[str]
) -> None:
    bench_pipeline, _ = benchmarks
    args = bench_pipeline._parse_args(["--sections", "sequential,agents", "--agents", "4", "--agent-steps", "2",
                                       "--agent-latency-s", "0.05", "--agent-repeat-fraction", "0"])
    counts = {"short_responses": 0, "samples_served": 300, "distinct_samples": 300,
              "upstream_requests": 0, "close_s": 0.001}

    def seq(miss_us: float, hit_us: float) -> dict:
        return {"seq-miss": dict(counts, median_us=miss_us, cached_samples=0, upstream_requests=300),
                "seq-hit": dict(counts, median_us=hit_us, cached_samples=300, replay_exact=True),
                "library": LIBRARY}

    sequential = {"ours": seq(200.0, 30.0), "ref": seq(650.0, 500.0)}
    floor = {"key_us": 5.0, "get_us": 12.0, "get_miss_us": 8.0, "set_us": 62.0, "hit_us": 17.0, "miss_us": 80.0}
    agent = {"model_calls": 8, "flag_chain": 2, "short_responses": 0, "repeats_in_a_namespace": 0,
             "samples_served": 8, "library": LIBRARY}
    agents = {"ours": dict(agent, wall_s=0.105), "ref": dict(agent, wall_s=0.21)}
    assert bench_pipeline._report(args, {}, {}, sequential, floor, agents) is True
    lines = capsys.readouterr().out.splitlines()
    assert _rows(lines, "seq-miss")[0] == ["seq-miss", "200.0", "650.0", "3.2x", "80.0", "2.5x"]
    assert _rows(lines, "seq-hit")[0] == ["seq-hit", "30.0", "500.0", "16.7x", "17.0", "1.8x"]
    targets = [line.split() for line in lines if re.match(r"seq-(miss|hit) (ref/ours|ours/floor)", line)]
    assert [(t[1], t[-2], t[-1]) for t in targets] == [
        ("ref/ours", "3.2x", "yes"), ("ours/floor", "2.5x", "yes"),  # 650/200 >= 3, 200/80 <= 2.5
        ("ref/ours", "16.7x", "yes"), ("ours/floor", "1.8x", "yes"),
    ]
    (row,) = _rows(lines, "agents")  # ideal: 2 steps x 50 ms = 0.1 s; 0.105 is 5% above it
    assert row[1:6] == ["0.105", "0.210", "2.0x", "0.100", "1.05x"] and row[-1] == "yes"
    assert lines[-1].startswith("targets met: 5 of 5 (sequential")

    agents["ours"]["wall_s"] = 0.2  # twice the ideal
    sequential["ours"]["seq-hit"]["median_us"] = 40.0  # 12.5x faster than 0.0.6 but 2.4x the floor
    assert bench_pipeline._report(args, {}, {}, sequential, floor, agents) is False
    lines = capsys.readouterr().out.splitlines()
    assert _rows(lines, "agents")[0][-1] == "NO"
    assert lines[-1].startswith("targets met: 3 of 5")


def test_the_report_judges_ours_against_a_baseline_commit_per_workload(
    benchmarks, capsys: pytest.CaptureFixture[str]
) -> None:
    bench_pipeline, _ = benchmarks
    args = bench_pipeline._parse_args(["--sections", "concurrent", "--batch-sizes", "16", "--requests", "8",
                                       "--baseline", "HEAD"])
    counts = {"short_responses": 0, "samples_served": 8, "distinct_samples": 8, "duplicated_samples": 0}

    def side(miss: float, hit: float, dup: float, dup_upstream: int) -> dict:
        return {16: {"miss": dict(counts, us_per_request=miss, cached_samples=0, upstream_requests=8),
                     "hit": dict(counts, us_per_request=hit, cached_samples=8, upstream_requests=0,
                                 replay_exact=True),
                     "dup": dict(counts, us_per_request=dup, cached_samples=0, upstream_requests=dup_upstream),
                     "library": LIBRARY}}

    pipelines = {"ours": side(100.0, 33.0, 90.0, 4), "base 1234567": side(95.0, 30.0, 100.0, 4)}
    assert bench_pipeline._report(args, pipelines, {}) is True
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("against the baseline (base 1234567"))
    rows = {row[0]: row for row in (line.split() for line in lines[start:]) if row[:2] in (["miss", "16"],
            ["hit", "16"], ["dup", "16"])}
    assert rows["miss"][2:5] == ["100.0", "95.0", "1.05x"] and rows["miss"][-1] == "yes"
    assert rows["hit"][2:5] == ["33.0", "30.0", "1.10x"] and rows["hit"][-1] == "yes"  # 10% exactly: met
    assert rows["dup"][4] == "0.90x" and rows["dup"][-1] == "yes"

    pipelines["ours"] = side(100.0, 34.0, 90.0, 5)  # hits 13% slower; one more duplicate paid upstream
    assert bench_pipeline._report(args, pipelines, {}) is False
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("against the baseline"))
    verdicts = {row[0]: row[-1] for row in (line.split() for line in lines[start:]) if row[1:2] == ["16"]}
    assert verdicts == {"miss": "yes", "hit": "NO", "dup": "NO"}


def test_a_baseline_commit_is_extracted_and_runs_its_own_worker(benchmarks, tmp_path: Path) -> None:
    bench_pipeline, _ = benchmarks
    side = bench_pipeline._ensure_baseline("HEAD", tmp_path)
    assert side.label.startswith("base ") and side.worker.is_file()
    library = bench_pipeline._run_worker(side, {"mode": "probe"}, tmp_path)["library"]
    assert library["location"].startswith(str(tmp_path))  # that tree's package, not this checkout's
    with pytest.raises(bench_pipeline.BenchmarkError, match="could not extract --baseline"):
        bench_pipeline._ensure_baseline("no-such-revision-xyz", tmp_path)


def test_bench_memory_reports_rss_at_each_checkpoint_and_the_target(
    benchmarks, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, bench_memory = benchmarks
    raw = tmp_path / "raw.json"
    code = bench_memory.main(["--only", "ours", "--requests", "400", "--chunk", "100", "--json", str(raw)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if re.match(r" +[\d,]+ ", line)}
    assert list(rows) == ["0", "100", "200", "400"]
    assert rows["0"][1:] == [rows["0"][1], "-", "-", "-"] and re.fullmatch(NUMBER, rows["0"][1])
    for point in ("100", "200", "400"):  # MiB, B/req over the interval; no reference columns
        assert re.fullmatch(NUMBER, rows[point][1]) and rows[point][3:] == ["-", "-"], rows[point]
    assert any(re.fullmatch(r" +overall +- +-?[\d,]+ +- +-", line) for line in lines)
    target = next(line for line in lines if line.startswith("target: "))
    assert re.fullmatch(r"target: ours <= 250 B per distinct request over 200,000 \(measured over 400\): "
                        r"-?[\d,]+ B, met (yes|NO)", target)
    assert "sanity checks (samples, flags): all passed" in lines
    memory = json.loads(raw.read_text())["results"]["ours"]["memory"]
    assert list(memory["rss_bytes"]) == ["0", "100", "200", "400"]
    assert memory["model"] == "ScriptedModel(keep_log=False)" and memory["short_responses"] == 0


# -- bench_store.py: the engines, their floors, worker processes and duplicates -------------------------
# Tiny sizes, real servers (started by the script itself), no timed assertion: only the shape of the
# report, the counts that do not depend on timing, the sanity checks and the target logic.


@pytest.fixture
def bench_store(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import bench_store

    return bench_store


TINY_STORE = ["--requests", "16", "--sequential-requests", "4", "--worker-requests", "16", "--dup-prompts", "4",
              "--dup-copies", "2", "--workers", "2"]
STORE_ENGINES = ["diskcache,redis", "cluster"]


def _store_command(engines: str):
    def command(directory: Path) -> list[str]:
        return [sys.executable, str(BENCH_DIR / "bench_store.py"), *TINY_STORE, "--engines", engines,
                "--json", str(directory / "raw.json"), "--profile", str(directory / "prof")]
    return command


# Each tiny run (servers, a cluster, a dozen worker processes: 5 to 10 s) runs as the script it is,
# started as soon as the session knows its test is selected (tests/_early.py), beside the other tests.
STORE_RUNS = {
    engines: early(__file__, ["test_bench_store_reports_each_engine_against_its_floor_in_a_tiny_run"],
                   _store_command(engines), cwd=BENCH_DIR.parent)
    for engines in STORE_ENGINES
}


@pytest.mark.parametrize("engines", STORE_ENGINES)
def test_bench_store_reports_each_engine_against_its_floor_in_a_tiny_run(engines: str) -> None:
    run = STORE_RUNS[engines]
    done = run.wait(timeout_s=18)
    assert done.returncode == 0, done.stderr
    assert run.directory is not None
    raw, profiles = run.directory / "raw.json", run.directory / "prof"
    lines = done.stdout.splitlines()
    names = engines.split(",")
    rows = [line.split() for line in lines if line.split()[:1] and line.split()[0] in names]
    per_request = [r for r in rows if r[1] in ("concurrent-miss", "concurrent-hit", "sequential-hit")]
    assert [(r[0], r[1]) for r in per_request] == [
        (name, workload) for name in names for workload in ("concurrent-miss", "concurrent-hit", "sequential-hit")]
    for row in per_request:  # engine, workload, ours, floor, ours/floor, target..., met
        assert re.fullmatch(NUMBER, row[2]) and re.fullmatch(NUMBER, row[3]) and row[4].endswith("x"), row
        targeted = row[0] in ("redis", "cluster") and row[1] == "concurrent-hit"
        assert row[5:] == (["ours/floor", "<=", "3x", row[-1]] if targeted else ["-", "-"]), row
        assert not targeted or row[-1] in ("yes", "NO")
    workers = [r for r in rows if r[1] == "2"]  # engine, workers, miss req/s, x, hit req/s, x, upstream
    assert [r[0] for r in workers] == names and all(r[-1] == "16" for r in workers)  # every distinct prompt once
    duplicates = [r for r in rows if r[1] in ("dup", "dup-spread")]
    assert [(r[0], r[1]) for r in duplicates] == [(name, w) for name in names for w in ("dup", "dup-spread")]
    for row in duplicates:  # engine, workload, 1 proc, 2 proc, 2 / 1, samples (1 / 2), target, met
        assert 4 <= int(row[2]) <= 8 and 4 <= int(row[3]) <= 8 and row[4].endswith("x"), row
        if row[1] == "dup":  # one namespace: one process merges each prompt's copies into one request
            assert row[5:8] == ["8", "/", row[7]], row  # a fresh sample for every request
            assert row[2] == "4" and row[8:10] == ["<=", "1.02x"] and row[-1] in ("yes", "NO", "n/a"), row
        else:  # one namespace per copy: one process pays each prompt once, its sample serves every copy
            assert row[2] == "4" and row[5:8] == ["4", "/", row[7]], row
            assert row[8:] == ["-", "-"], row
    assert any(re.match(rf"  asyncio alone: {NUMBER} us per request to gather 16 tasks", line) for line in lines)
    assert "sanity checks (samples, flags, replay): all passed" in lines
    assert re.fullmatch(r"targets met: \d of \d \(Redis and Redis Cluster concurrent hits <= 3x the floor; .*\)",
                        lines[-1])
    results = json.loads(raw.read_text())["results"]
    for name in names:
        assert results[name]["floor"]["asyncio_gather_us"] > 0
        single = results[name]["single"]
        assert single["concurrent-miss"]["upstream_requests"] == 16 and single["concurrent-miss"]["cached_samples"] == 0
        assert single["concurrent-hit"]["cached_samples"] == 16 and single["concurrent-hit"]["replay_exact"]
        assert single["sequential-hit"]["upstream_requests"] == 0 and single["sequential-hit"]["replay_exact"]
        assert results[name]["dup"]["dup"]["1"]["samples_generated"] == 8  # fresh samples for every request
        hit = results[name]["workers"]["2"]["hit"]
        assert hit["upstream_requests"] == 0 and hit["replay_exact"]
        for workload in ("concurrent-miss", "concurrent-hit", "sequential-hit"):
            assert "top 30 by cumulative" in (profiles / f"{name}-{workload}.txt").read_text()


def test_bench_store_judges_every_gathered_hit_pass_not_only_the_fastest(bench_store) -> None:
    import _store_worker  # on sys.path beside bench_store

    def one_pass(us: float, **extra: int) -> dict:
        return {"us_per_request": us, "model_calls": 0, "upstream_requests": 0, "samples_generated": 0,
                "short_responses": 0, "samples_served": 16, "distinct_samples": 16, "cached_samples": 16,
                **extra}

    hit = dict(_store_worker._every_pass([one_pass(25.0), one_pass(20.0)]), replay_exact=True)
    assert hit["us_per_request"] == 20.0 and hit["passes_us"] == [25.0, 20.0]  # timed by the fastest
    assert bench_store._single_problems("concurrent-hit", hit, 16) == []
    for slow_pass_went_wrong, problem in [
        ({"cached_samples": 15}, "15 of 16 samples flagged cached"),
        ({"distinct_samples": 15}, "1 samples handed out twice"),
        ({"upstream_requests": 2}, "2 model requests on a warm store"),
        ({"short_responses": 1}, "1 responses without exactly one sample"),
    ]:
        passes = [one_pass(20.0), one_pass(25.0, **slow_pass_went_wrong)]
        hit = dict(_store_worker._every_pass(passes), replay_exact=True)
        assert bench_store._single_problems("concurrent-hit", hit, 16) == [problem]


def test_bench_store_targets_are_judged_on_the_figures_it_is_given(bench_store, capsys) -> None:
    args = bench_store._parse_args(["--engines", "redis", *TINY_STORE])
    engine = bench_store.Engine("redis", "one redis-server", "unix:///x.sock")

    def per_request(us: float, requests: int, **extra) -> dict:
        return {"us_per_request": us, "median_us": us, "short_responses": 0, "samples_served": requests,
                "distinct_samples": requests, "cached_samples": requests, "upstream_requests": 0,
                "replay_exact": True, **extra}

    def combined(upstream: int, requests: int = 16, cached: int = 0) -> dict:
        return {"requests_per_s": 100.0, "upstream_requests": upstream, "samples_generated": requests,
                "short_responses": 0, "samples_served": requests, "distinct_samples": requests,
                "cached_samples": cached, "replay_exact": True}

    def results(hit_us: float, dup_upstream: int) -> dict:
        return {"redis": {
            "library": {"version": "0", "location": "/x", "python": "3", "redis_py": "5", "hiredis": "2"},
            "single": {"concurrent-miss": per_request(50.0, 16, cached_samples=0, upstream_requests=16),
                       "concurrent-hit": per_request(hit_us, 16), "sequential-hit": per_request(30.0, 4)},
            "floor": {"concurrent_miss_us": 10.0, "concurrent_hit_us": 10.0, "sequential_hit_us": 20.0},
            "workers": {2: {"miss": combined(16), "hit": dict(combined(0), cached_samples=16)}},
            "dup": {"dup": {1: combined(100, 8), 2: combined(dup_upstream, 8)},
                    "dup-spread": {1: combined(400, 8), 2: combined(100, 8)}},
        }}

    assert bench_store._report(args, {"redis": engine}, results(29.0, 102), True, "7") is True
    lines = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(r"redis +concurrent-hit +29\.0 +10\.0 +2\.9x +ours/floor <= 3x +yes", l) for l in lines)
    assert any(re.fullmatch(r"redis +dup +100 +102 +1\.020x +8 / 8 +<= 1\.02x +yes", l) for l in lines)
    assert any(re.fullmatch(r"redis +dup-spread +400 +100 +0\.250x +8 / 8 +- +-", l) for l in lines)  # no target
    assert lines[-1].startswith("targets met: 2 of 2")
    assert bench_store._report(args, {"redis": engine}, results(31.0, 103), True, "7") is False
    lines = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(r"redis +concurrent-hit +31\.0 +10\.0 +3\.1x +ours/floor <= 3x +NO", l) for l in lines)
    assert any(re.fullmatch(r"redis +dup +100 +103 +1\.030x +8 / 8 +<= 1\.02x +NO", l) for l in lines)
    assert lines[-1].startswith("targets met: 0 of 2")
    # Without shared runs the duplicate target is not measured, and counts as missed.
    assert bench_store._report(args, {"redis": engine}, results(29.0, 100), False, "7") is False
    lines = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(r"redis +dup +100 +100 +1\.000x +8 / 8 +<= 1\.02x +n/a", l) for l in lines)
    assert lines[-1].startswith("targets met: 1 of 2")
