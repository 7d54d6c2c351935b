"""Benchmark this checkout's pipeline against the reference, ``cachesaver==0.0.6``, on the same workloads.

One invocation, from the repository root with the project's interpreter::

    .venv/bin/python benchmarks/bench_pipeline.py                   # the full run: 10,240 requests
    .venv/bin/python benchmarks/bench_pipeline.py --requests 2048   # a quick run

What it does:

* creates (first run) or reuses a separate venv, ``benchmarks/.venv-ref``, holding
  ``cachesaver==0.0.6`` from PyPI (``python -m venv`` + ``pip install``); ``--ref-python`` uses an
  existing interpreter instead;
* for each batch size (1, 16, 128), runs in a fresh subprocess per library, each through its own
  API (``_ours_worker.py`` with this interpreter, ``_reference_worker.py`` in the reference venv),
  three workloads of ``--requests`` requests gathered concurrently through ``OnlineAPI`` with a
  zero-latency model: all misses (fresh cache), all hits (new pipeline on the warm cache, same
  requests), 50% duplicates in one namespace (each prompt twice; fresh cache);
* times appending one sample to one key around list lengths 10 and 2000 (ours:
  ``SampleStore.append``; 0.0.6: what its cacher does on a miss, read the list, extend, write back);
* prints one line per workload (us/request each, the ratio ref/ours, upstream requests each), the
  append costs, and the targets of issue 2 with whether each is met.

Every cache lives in a fresh directory under ``benchmarks/.work/`` (git-ignored), removed at the
end unless ``--keep-work``. The exit status is 0 unless a step fails; with ``--check`` it is 1
when a target is missed or a sanity check of this checkout fails. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from _reference_venv import (
    REFERENCE_REQUIREMENT,
    ReferenceSetupError,
    add_reference_arguments,
    create_venv,
    pip_install,
    reference_env,
    venv_python,
)

BENCH_DIR = Path(__file__).resolve().parent
REPOSITORY = BENCH_DIR.parent
WORK_ROOT = BENCH_DIR / ".work"
OURS_WORKER = BENCH_DIR / "_ours_worker.py"
REFERENCE_WORKER = BENCH_DIR / "_reference_worker.py"
WORKLOADS = ("miss", "hit", "dup")

HIT_SPEEDUP_TARGET = 10.0
MISS_SPEEDUP_TARGET = 4.0
APPEND_GROWTH_GOAL = 2.0  # informational: "the 2000th append costs about the same as the 10th"


class BenchmarkError(Exception):
    """Raised when a step of the benchmark (venv creation, a worker) fails; the message says which."""


@dataclass(frozen=True)
class Side:
    """One library under test: which interpreter runs which worker, with which environment."""

    label: str
    python: Path
    worker: Path
    env: Dict[str, str]


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark cachesaver (this checkout) against cachesaver==0.0.6.",
    )
    parser.add_argument("--requests", type=int, default=10240,
                        help="requests per workload, gathered concurrently (default 10240)")
    parser.add_argument("--batch-sizes", default="1,16,128",
                        help="comma-separated batch sizes (default 1,16,128)")
    parser.add_argument("--timeout-s", type=float, default=0.01,
                        help="batch window in seconds, both libraries (default 0.01)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each workload set this many times, report the fastest (default 1)")
    parser.add_argument("--append-points", default="10,2000",
                        help="list lengths at which to time appends (default 10,2000)")
    parser.add_argument("--append-window", type=int, default=8,
                        help="time the appends within this many of each point (default 8)")
    parser.add_argument("--sample-chars", type=int, default=100,
                        help="size of each appended sample in characters (default 100)")
    parser.add_argument("--only", choices=("ours", "ref"),
                        help="run one library only (no ratios)")
    add_reference_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write every raw result to this file")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run each timed section under cProfile and write <side>-<workload>-bs<B>"
                             ".pstats files to DIR (times are then inflated)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the cache directories under benchmarks/.work/")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target is missed or a sanity check of ours fails")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        args.append_points = [int(p) for p in args.append_points.split(",") if p.strip()]
    except ValueError:
        parser.error("--batch-sizes and --append-points take comma-separated integers, e.g. 1,16,128")
    if args.requests < 2 or args.requests % 2:
        parser.error("--requests must be an even number >= 2 (the duplicate workload pairs prompts)")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must list integers >= 1")
    if args.repeat < 1 or args.append_window < 0 or args.sample_chars < 1:
        parser.error("--repeat and --sample-chars must be >= 1, --append-window >= 0")
    if not args.append_points or min(args.append_points) - args.append_window < 1:
        parser.error("every --append-points value must exceed --append-window")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the reference venv -------------------------------------------------------------------------


def _ours_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _probe(side: Side, work: Path) -> Optional[Dict[str, Any]]:
    """The worker's library description, or None when it cannot run there."""
    try:
        return _run_worker(side, {"mode": "probe"}, work)["library"]
    except BenchmarkError:
        return None


def _ensure_reference(args: argparse.Namespace, work: Path) -> Side:
    if args.ref_python is not None:
        side = Side("ref", args.ref_python, REFERENCE_WORKER, reference_env())
        if _probe(side, work) is None:
            _run_worker(side, {"mode": "probe"}, work)  # raises with the worker's explanation
        return side
    venv = args.ref_venv.resolve()
    side = Side("ref", venv_python(venv), REFERENCE_WORKER, reference_env())
    if side.python.exists() and _probe(side, work) is not None:
        return side
    _progress(f"creating the reference venv at {venv} with {REFERENCE_REQUIREMENT} (one-off) ...")
    try:
        create_venv(venv, work)
        pip_install(side.python, [REFERENCE_REQUIREMENT], work)
    except ReferenceSetupError as exc:
        raise BenchmarkError(
            f"{exc}\nFix the cause, or pass --ref-python with an interpreter that has {REFERENCE_REQUIREMENT}."
        ) from exc
    _run_worker(side, {"mode": "probe"}, work)  # raises when the fresh venv still cannot run it
    return side


# -- workers ------------------------------------------------------------------------------------


def _run_worker(side: Side, spec: Dict[str, Any], work: Path) -> Dict[str, Any]:
    """Run one worker subprocess on ``spec``; its JSON result."""
    command = [str(side.python), str(side.worker), json.dumps(spec)]
    try:
        done = subprocess.run(command, cwd=work, env=side.env, capture_output=True, text=True)
    except OSError as exc:
        raise BenchmarkError(f"could not start {side.python}: {exc}") from exc
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise BenchmarkError(
            f"the {side.label} worker failed (exit {done.returncode}) on {spec}:\n"
            f"{done.stderr[-4000:] or done.stdout[-4000:]}"
        )
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"the {side.label} worker printed no JSON result:\n{done.stdout[-2000:]}") from exc


def _fresh_dir(work: Path, name: str) -> Path:
    path = work / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _run_pipelines(
    sides: Sequence[Side], args: argparse.Namespace, work: Path
) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """Every workload set for every side; sides alternate run by run, so both see the same load."""
    out: Dict[str, Dict[int, Dict[str, Any]]] = {side.label: {} for side in sides}
    for batch_size in args.batch_sizes:
        for attempt in range(args.repeat):
            for side in sides:
                _progress(f"  {side.label}: batch size {batch_size}, run {attempt + 1} of {args.repeat}")
                directory = _fresh_dir(work, f"{side.label}-bs{batch_size}-{attempt}")
                spec = {
                    "mode": "pipeline",
                    "requests": args.requests,
                    "batch_size": batch_size,
                    "timeout_s": args.timeout_s,
                    "work_dir": str(directory),
                }
                if args.profile is not None:
                    spec.update(profile_dir=str(args.profile.resolve()), label=side.label)
                result = _run_worker(side, spec, work)
                shutil.rmtree(directory, ignore_errors=True)
                best = out[side.label].setdefault(batch_size, {})
                for name in WORKLOADS:
                    if name not in best or result[name]["us_per_request"] < best[name]["us_per_request"]:
                        best[name] = result[name]
                best["library"] = result["library"]
    return out


def _run_append(side: Side, args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    _progress(f"  {side.label}: appends")
    directory = _fresh_dir(work, f"{side.label}-append")
    spec = {
        "mode": "append",
        "points": args.append_points,
        "window": args.append_window,
        "sample_chars": args.sample_chars,
        "work_dir": str(directory),
    }
    try:
        return _run_worker(side, spec, work)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- the report ---------------------------------------------------------------------------------


def _sanity_problems(name: str, result: Dict[str, Any], requests: int) -> List[str]:
    """What a workload's result says went wrong, beyond speed (empty when nothing)."""
    problems = []
    if result["short_responses"]:
        problems.append(f"{result['short_responses']} responses without exactly one sample")
    if result["distinct_samples"] != result["samples_served"]:
        repeats = result["samples_served"] - result["distinct_samples"]
        problems.append(f"{repeats} samples handed out twice in one namespace")
    if name in ("miss", "dup") and result["cached_samples"]:
        problems.append(f"{result['cached_samples']} samples flagged cached on a fresh cache")
    if name == "hit":
        if result["upstream_requests"]:
            problems.append(f"{result['upstream_requests']} model requests on a warm cache")
        if result["cached_samples"] != requests:
            problems.append(f"{result['cached_samples']} of {requests} samples flagged cached")
        if not result.get("replay_exact"):
            problems.append("the replay differs from the first run")
    return problems


def _fmt(value: Optional[float], spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def _describe(library: Dict[str, Any]) -> str:
    options = library.get("cache_options") or {}
    cache = "diskcache.Cache(dir" + "".join(f", {k}={v!r}" for k, v in options.items()) + ")"
    return (
        f"{library['name']} {library['version']} at {library['location']} "
        f"(Python {library['python']}), cache {cache}"
    )


def _report(
    args: argparse.Namespace,
    pipelines: Dict[str, Dict[int, Dict[str, Any]]],
    appends: Dict[str, Dict[str, Any]],
) -> bool:
    """Print the report; True when every target and every sanity check of ours passed."""
    requests = args.requests
    half = requests // 2
    print(
        f"cachesaver pipeline benchmark: {requests:,} requests per workload gathered concurrently, "
        f"OnlineAPI, batch window {args.timeout_s:g} s, zero-latency model, best of {args.repeat}"
    )
    for label in ("ours", "ref"):
        if label in pipelines:
            library = next(iter(pipelines[label].values()))["library"]
            print(f"  {label + ':':5} {_describe(library)}")
    print("  us/req = wall time of gather + close / requests; upstream = requests that reached the model")
    print()
    header = (
        f"{'workload':8} {'batch':>5}  {'ours us/req':>11}  {'ref us/req':>10}  {'ref/ours':>8}  "
        f"{'ours upstream':>13}  {'ref upstream':>12}  {'target':24} met"
    )
    print(header)
    print("-" * len(header))
    met_count = 0
    target_count = 0
    all_ok = True
    problems: List[str] = []
    for batch_size in args.batch_sizes:
        for name in WORKLOADS:
            ours = pipelines.get("ours", {}).get(batch_size, {}).get(name)
            ref = pipelines.get("ref", {}).get(batch_size, {}).get(name)
            ratio = None
            if ours and ref:
                ratio = ref["us_per_request"] / ours["us_per_request"]
            if name == "hit":
                target = f"ref/ours >= {HIT_SPEEDUP_TARGET:g}x"
                met = None if ratio is None else ratio >= HIT_SPEEDUP_TARGET
            elif name == "miss":
                target = f"ref/ours >= {MISS_SPEEDUP_TARGET:g}x"
                met = None if ratio is None else ratio >= MISS_SPEEDUP_TARGET
            else:
                target = f"ours upstream <= {half:,}"
                met = None if ours is None else ours["upstream_requests"] <= half
            if met is not None:
                target_count += 1
                met_count += met
                all_ok = all_ok and met
            print(
                f"{name:8} {batch_size:>5}  {_fmt(ours and ours['us_per_request']):>11}  "
                f"{_fmt(ref and ref['us_per_request']):>10}  "
                f"{(_fmt(ratio, '.1f') + 'x') if ratio is not None else '-':>8}  "
                f"{_fmt(ours and ours['upstream_requests'], ','):>13}  "
                f"{_fmt(ref and ref['upstream_requests'], ','):>12}  "
                f"{target:24} {'-' if met is None else ('yes' if met else 'NO')}"
            )
            for label, result in (("ours", ours), ("ref", ref)):
                if result is None:
                    continue
                for problem in _sanity_problems(name, result, requests):
                    problems.append(f"{label} {name} batch {batch_size}: {problem}")
                    if label == "ours":
                        all_ok = False
    print()
    if appends:
        sample_chars = next(iter(appends.values()))["sample_chars"]
        print(
            f"append one sample to one key (us per append, mean of the {2 * args.append_window + 1} "
            f"appends within {args.append_window} of the list length; {sample_chars}-char samples)"
        )
        print(f"{'':14} {'ours':>8}  {'ref':>8}")
        for point in args.append_points:
            cells = [appends[label]["points"][str(point)]["mean_us"] if label in appends else None
                     for label in ("ours", "ref")]
            print(f"{'sample ' + str(point):14} {_fmt(cells[0]):>8}  {_fmt(cells[1]):>8}")
        first, last = str(min(args.append_points)), str(max(args.append_points))
        growth = [
            appends[label]["points"][last]["mean_us"] / appends[label]["points"][first]["mean_us"]
            if label in appends else None
            for label in ("ours", "ref")
        ]
        print(
            f"{last + ' / ' + first:14} {(_fmt(growth[0], '.2f') + 'x') if growth[0] else '-':>8}  "
            f"{(_fmt(growth[1], '.2f') + 'x') if growth[1] else '-':>8}  "
            f"(goal, informational: ours about the same, <= {APPEND_GROWTH_GOAL:g}x"
            + ("" if growth[0] is None else f"; {'met' if growth[0] <= APPEND_GROWTH_GOAL else 'not met'}")
            + ")"
        )
        print()
    if problems:
        print("sanity checks (samples, flags, replay):")
        for problem in problems:
            print(f"  {problem}")
    else:
        print("sanity checks (samples, flags, replay): all passed")
    print(
        f"targets met: {met_count} of {target_count} "
        f"(hits >= {HIT_SPEEDUP_TARGET:g}x faster than 0.0.6, misses >= {MISS_SPEEDUP_TARGET:g}x, "
        f"duplicate workload <= {half:,} upstream requests)"
    )
    return all_ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    WORK_ROOT.mkdir(exist_ok=True)
    work = WORK_ROOT / f"run-{os.getpid()}-{int(time.time())}"
    work.mkdir()
    try:
        sides = []
        if args.only != "ref":
            sides.append(Side("ours", Path(sys.executable), OURS_WORKER, _ours_env()))
        if args.only != "ours":
            sides.append(_ensure_reference(args, work))
        appends: Dict[str, Dict[str, Any]] = {}
        for side in sides:
            _progress(f"{side.label}: {side.python} {side.worker.name}")
        pipelines = _run_pipelines(sides, args, work)
        for side in sides:
            appends[side.label] = _run_append(side, args, work)
        ok = _report(args, pipelines, appends)
        if args.json is not None:
            args.json.write_text(json.dumps(
                {"arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "pipelines": pipelines, "appends": appends},
                indent=2,
            ))
        return 1 if (args.check and not ok) else 0
    except BenchmarkError as exc:
        print(f"bench_pipeline.py: {exc}", file=sys.stderr)
        return 2
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
            try:
                WORK_ROOT.rmdir()
            except OSError:
                pass  # not empty: another run, or --keep-work left something


if __name__ == "__main__":
    sys.exit(main())
