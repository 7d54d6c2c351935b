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
* ``sequential``: ``--sequential-requests`` requests awaited one at a time through
  ``OnlineAPI(model, cache, batch_size=1)``, misses (fresh cache) then hits (new pipeline, warm
  cache), median us per request, against the bare floor on this disk measured in the same run
  (``request_key`` + one ``diskcache`` get; + a get-miss and a set for a miss);
* ``agents``: 64 agents at once, each awaiting 10 requests in turn (20% repeat another agent's
  prompt) on a model that sleeps 50 ms per call; wall time against the ideal (the longest chain
  of model calls any agent must wait on with a perfect cache, times 50 ms);
* times appending one sample to one key around list lengths 10 and 2000 (ours:
  ``SampleStore.append``; 0.0.6: what its cacher does on a miss, read the list, extend, write back);
* prints one line per workload (us/request each, the ratio ref/ours, upstream requests each), the
  append costs, and the targets of issues 2 and 11 with whether each is met.

``--sections`` picks the parts (``concurrent,sequential,agents,append``, default all).

``--baseline REV`` also runs the concurrent workloads on commit ``REV`` of this repository
(extracted with ``git archive`` into the work directory, run by its own ``_ours_worker.py`` with
this interpreter), alternating with ours run by run, and prints ours against it: each workload
at most 10% slower (:data:`BASELINE_TARGET`), duplicates with at most its upstream requests. That is
how a change is checked for a regression side by side, in one run, at the same load.

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

import _workload
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
SEQUENTIAL_WORKLOADS = ("seq-miss", "seq-hit")
SECTIONS = ("concurrent", "sequential", "agents", "append")

HIT_SPEEDUP_TARGET = 10.0
MISS_SPEEDUP_TARGET = 4.0
SEQ_HIT_SPEEDUP_TARGET = 10.0
SEQ_MISS_SPEEDUP_TARGET = 3.0
SEQ_HIT_FLOOR_TARGET = 2.0  # ours at most this many times the bare floor (key + get)
SEQ_MISS_FLOOR_TARGET = 2.5  # ours at most this many times the bare floor (key + get-miss + set)
AGENTS_IDEAL_TARGET = 1.10  # ours' wall time at most 10% above the ideal
APPEND_GROWTH_GOAL = 2.0  # informational: "the 2000th append costs about the same as the 10th"
BASELINE_TARGET = 1.10  # --baseline: ours' us/request at most 10% above the baseline commit's


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
    parser.add_argument("--sequential-requests", type=int, default=300,
                        help="requests awaited one at a time in the sequential workload (default 300)")
    parser.add_argument("--agents", type=int, default=64,
                        help="agents running at once in the agents workload (default 64)")
    parser.add_argument("--agent-steps", type=int, default=10,
                        help="requests each agent awaits in turn (default 10)")
    parser.add_argument("--agent-latency-s", type=float, default=0.05,
                        help="seconds the agents workload's model sleeps per call (default 0.05)")
    parser.add_argument("--agent-repeat-fraction", type=float, default=0.2,
                        help="fraction of the agents' requests repeating another agent's prompt (default 0.2)")
    parser.add_argument("--agent-seed", type=int, default=0, help="seed of the repeats (default 0)")
    parser.add_argument("--agent-batch-size", type=int, default=1,
                        help="OnlineAPI batch_size in the agents workload (default 1)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated parts to run (default {','.join(SECTIONS)})")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the concurrent workloads on commit REV of this repository, "
                             "alternating with ours, and compare (target: ours within 10%%)")
    parser.add_argument("--only", choices=("ours", "ref"),
                        help="run one library only (no ratios)")
    add_reference_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write every raw result to this file")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run each timed section of ours under cProfile and write "
                             "ours-<workload>[-bs<B>].pstats files to DIR, each with a top-30 .txt "
                             "summary (times are then inflated)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the cache directories under benchmarks/.work/")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target is missed or a sanity check of ours fails")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown or not args.sections:
        parser.error(f"--sections takes names from {','.join(SECTIONS)}; got {unknown or 'none'}")
    if args.sequential_requests < 1 or args.agent_steps < 1 or args.agent_batch_size < 1:
        parser.error("--sequential-requests, --agent-steps and --agent-batch-size must be >= 1")
    if args.agents < 2:
        parser.error("--agents must be >= 2 (repeats are of another agent's prompts)")
    if not 0 <= args.agent_repeat_fraction < 1 or args.agent_latency_s <= 0:
        parser.error("--agent-repeat-fraction must be in [0, 1) and --agent-latency-s > 0")
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


def _ensure_baseline(rev: str, work: Path) -> Side:
    """A side running commit ``rev`` of this repository: its tree extracted under ``work``."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--verify", f"{rev}^{{commit}}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        tree = work / f"baseline-{sha[:12]}"
        tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPOSITORY), "archive", sha, "cachesaver", "benchmarks"],
            capture_output=True, check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else detail
        raise BenchmarkError(
            f"could not extract --baseline {rev!r} from {REPOSITORY}: {exc} {text.strip()}; "
            "give a commit of this repository (it needs git and tar)"
        ) from exc
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    side = Side(f"base {sha[:7]}", Path(sys.executable), tree / "benchmarks" / "_ours_worker.py", env)
    _run_worker(side, {"mode": "probe"}, work)  # raises with the worker's explanation
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
                spec.update(_profile_spec(side, args))
                result = _run_worker(side, spec, work)
                shutil.rmtree(directory, ignore_errors=True)
                best = out[side.label].setdefault(batch_size, {})
                for name in WORKLOADS:
                    if name not in best or result[name]["us_per_request"] < best[name]["us_per_request"]:
                        best[name] = result[name]
                best["library"] = result["library"]
    return out


def _profile_spec(side: Side, args: argparse.Namespace) -> Dict[str, Any]:
    """What a worker spec needs to profile: only our side is profiled, under ``--profile``."""
    if args.profile is None or side.label != "ours":
        return {}
    return {"profile_dir": str(args.profile.resolve()), "label": side.label}


def _run_sequential(
    sides: Sequence[Side], args: argparse.Namespace, work: Path
) -> Dict[str, Dict[str, Any]]:
    """The sequential workloads for every side (fastest median of ``--repeat`` runs)."""
    out: Dict[str, Dict[str, Any]] = {side.label: {} for side in sides}
    for attempt in range(args.repeat):
        for side in sides:
            _progress(f"  {side.label}: sequential, run {attempt + 1} of {args.repeat}")
            directory = _fresh_dir(work, f"{side.label}-sequential-{attempt}")
            spec = {"mode": "sequential", "requests": args.sequential_requests,
                    "timeout_s": args.timeout_s, "work_dir": str(directory), **_profile_spec(side, args)}
            result = _run_worker(side, spec, work)
            shutil.rmtree(directory, ignore_errors=True)
            best = out[side.label]
            for name in SEQUENTIAL_WORKLOADS:
                if name not in best or result[name]["median_us"] < best[name]["median_us"]:
                    best[name] = result[name]
            best["library"] = result["library"]
    return out


def _run_floor(side: Side, args: argparse.Namespace, work: Path) -> Dict[str, float]:
    """The bare floor on this disk, with our key function (fastest of ``--repeat`` runs)."""
    best: Dict[str, float] = {}
    for attempt in range(args.repeat):
        _progress(f"  {side.label}: floor (key + diskcache), run {attempt + 1} of {args.repeat}")
        directory = _fresh_dir(work, f"floor-{attempt}")
        spec = {"mode": "floor", "requests": args.sequential_requests, "work_dir": str(directory)}
        floor = _run_worker(side, spec, work)["floor"]
        shutil.rmtree(directory, ignore_errors=True)
        for name, value in floor.items():
            best[name] = min(value, best.get(name, value))
    return best


def _run_agents(sides: Sequence[Side], args: argparse.Namespace, work: Path) -> Dict[str, Dict[str, Any]]:
    """The agents workload for every side (fastest wall time of ``--repeat`` runs)."""
    out: Dict[str, Dict[str, Any]] = {}
    for attempt in range(args.repeat):
        for side in sides:
            _progress(f"  {side.label}: agents, run {attempt + 1} of {args.repeat}")
            directory = _fresh_dir(work, f"{side.label}-agents-{attempt}")
            spec = {"mode": "agents", "agents": args.agents, "steps": args.agent_steps,
                    "repeat_fraction": args.agent_repeat_fraction, "seed": args.agent_seed,
                    "latency_s": args.agent_latency_s, "batch_size": args.agent_batch_size,
                    "timeout_s": args.timeout_s, "work_dir": str(directory), **_profile_spec(side, args)}
            result = _run_worker(side, spec, work)
            shutil.rmtree(directory, ignore_errors=True)
            if side.label not in out or result["agents"]["wall_s"] < out[side.label]["wall_s"]:
                out[side.label] = dict(result["agents"], library=result["library"])
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


class _Tally:
    """Counts the targets shown and met, and gathers the sanity problems found."""

    def __init__(self) -> None:
        self.shown = 0
        self.met = 0
        self.ours_ok = True
        self.problems: List[str] = []

    def target(self, met: Optional[bool]) -> str:
        """Record one target's outcome (None: not measured); the text of the "met" column."""
        if met is None:
            return "-"
        self.shown += 1
        self.met += met
        self.ours_ok = self.ours_ok and met
        return "yes" if met else "NO"

    def problem(self, label: str, where: str, problems: List[str]) -> None:
        for problem in problems:
            self.problems.append(f"{label} {where}: {problem}")
            if label == "ours":
                self.ours_ok = False


def _ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _report_concurrent(args: argparse.Namespace, pipelines: Dict[str, Dict[int, Dict[str, Any]]],
                       tally: _Tally) -> None:
    requests = args.requests
    half = requests // 2
    print(
        f"concurrent: {requests:,} requests per workload gathered concurrently, "
        f"OnlineAPI, batch window {args.timeout_s:g} s, zero-latency model, best of {args.repeat}"
    )
    print("  us/req = wall time of gather + close / requests; upstream = requests that reached the model")
    print()
    header = (
        f"{'workload':8} {'batch':>5}  {'ours us/req':>11}  {'ref us/req':>10}  {'ref/ours':>8}  "
        f"{'ours upstream':>13}  {'ref upstream':>12}  {'target':24} met"
    )
    print(header)
    print("-" * len(header))
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
            print(
                f"{name:8} {batch_size:>5}  {_fmt(ours and ours['us_per_request']):>11}  "
                f"{_fmt(ref and ref['us_per_request']):>10}  {_ratio(ratio):>8}  "
                f"{_fmt(ours and ours['upstream_requests'], ','):>13}  "
                f"{_fmt(ref and ref['upstream_requests'], ','):>12}  "
                f"{target:24} {tally.target(met)}"
            )
            for label, result in (("ours", ours), ("ref", ref)):
                if result is not None:
                    tally.problem(label, f"{name} batch {batch_size}",
                                  _sanity_problems(name, result, requests))
    print()


def _report_sequential(args: argparse.Namespace, sequential: Dict[str, Dict[str, Any]],
                       floor: Optional[Dict[str, float]], tally: _Tally) -> None:
    count = args.sequential_requests
    print(
        f"sequential: {count:,} requests awaited one at a time, OnlineAPI(model, cache, batch_size=1, "
        f"timeout={args.timeout_s:g}), zero-latency model; median us per request, best of {args.repeat}"
    )
    header = (
        f"{'workload':8}  {'ours us/req':>11}  {'ref us/req':>10}  {'ref/ours':>8}  "
        f"{'floor us/req':>12}  {'ours/floor':>10}"
    )
    print(header)
    print("-" * len(header))
    targets = []
    for name, floor_name, speedup, floor_target in (
        ("seq-miss", "miss_us", SEQ_MISS_SPEEDUP_TARGET, SEQ_MISS_FLOOR_TARGET),
        ("seq-hit", "hit_us", SEQ_HIT_SPEEDUP_TARGET, SEQ_HIT_FLOOR_TARGET),
    ):
        ours = sequential.get("ours", {}).get(name)
        ref = sequential.get("ref", {}).get(name)
        bare = floor and floor[floor_name]
        ratio = ref["median_us"] / ours["median_us"] if ours and ref else None
        over_floor = ours["median_us"] / bare if ours and bare else None
        print(
            f"{name:8}  {_fmt(ours and ours['median_us']):>11}  {_fmt(ref and ref['median_us']):>10}  "
            f"{_ratio(ratio):>8}  {_fmt(bare):>12}  {_ratio(over_floor):>10}"
        )
        targets.append((name, f"ref/ours >= {speedup:g}x", ratio,
                        None if ratio is None else ratio >= speedup))
        targets.append((name, f"ours/floor <= {floor_target:g}x", over_floor,
                        None if over_floor is None else over_floor <= floor_target))
        for label, result in (("ours", ours), ("ref", ref)):
            if result is not None:
                tally.problem(label, name, _sanity_problems(name[4:], result, count))
    if floor:
        print(
            f"  floor on this disk (medians of {count:,}; diskcache.Cache(dir, eviction_policy='none'), "
            f"one-sample values): request_key {floor['key_us']:.1f} us, get {floor['get_us']:.1f}, "
            f"get-miss {floor['get_miss_us']:.1f}, set {floor['set_us']:.1f}; "
            f"hit = key + get {floor['hit_us']:.1f} us, miss = key + get-miss + set {floor['miss_us']:.1f} us"
        )
    else:
        print("  floor: not measured (it needs our key function: run ours too)")
    closes = [f"{label} {sequential[label][name]['close_s'] * 1e3:.1f} ms after {name}"
              for label in ("ours", "ref") if label in sequential for name in SEQUENTIAL_WORKLOADS]
    if closes:
        print(f"  closing the pipeline, not in the medians: {', '.join(closes)}")
    print()
    print(f"{'target':30} {'value':>8}  met")
    for name, target, value, met in targets:
        print(f"{name + ' ' + target:30} {_ratio(value):>8}  {tally.target(met)}")
    print()


def _report_agents(args: argparse.Namespace, agents: Dict[str, Dict[str, Any]], tally: _Tally) -> None:
    plans = _workload.agent_plans(args.agents, args.agent_steps, args.agent_repeat_fraction, args.agent_seed)
    rounds = _workload.ideal_rounds(plans)
    ideal_s = rounds * args.agent_latency_s
    total = args.agents * args.agent_steps
    distinct = len({p for plan in plans for p in plan})
    print(
        f"agents: {args.agents} agents at once, each awaiting {args.agent_steps} requests in turn "
        f"({args.agent_repeat_fraction:.0%} repeat another agent's prompt, seed {args.agent_seed}; agent a "
        f"in namespace agent<a>), model sleeps {args.agent_latency_s * 1e3:g} ms per call, "
        f"OnlineAPI(batch_size={args.agent_batch_size}, timeout={args.timeout_s:g}), best of {args.repeat}"
    )
    header = (
        f"{'workload':8}  {'ours wall s':>11}  {'ref wall s':>10}  {'ref/ours':>8}  {'ideal s':>7}  "
        f"{'ours/ideal':>10}  {'ours calls':>10}  {'ref calls':>9}  {'target':20} met"
    )
    print(header)
    print("-" * len(header))
    ours, ref = agents.get("ours"), agents.get("ref")
    ratio = ref["wall_s"] / ours["wall_s"] if ours and ref else None
    over_ideal = ours["wall_s"] / ideal_s if ours else None
    met = None if over_ideal is None else over_ideal <= AGENTS_IDEAL_TARGET
    print(
        f"{'agents':8}  {_fmt(ours and ours['wall_s'], '.3f'):>11}  {_fmt(ref and ref['wall_s'], '.3f'):>10}  "
        f"{_ratio(ratio):>8}  {ideal_s:>7.3f}  {(_fmt(over_ideal, '.2f') + 'x') if ours else '-':>10}  "
        f"{_fmt(ours and ours['model_calls'], ','):>10}  {_fmt(ref and ref['model_calls'], ','):>9}  "
        f"{'ours/ideal <= ' + format(AGENTS_IDEAL_TARGET, '.2f') + 'x':20} {tally.target(met)}"
    )
    print(
        f"  ideal = {rounds} x {args.agent_latency_s * 1e3:g} ms: the longest chain of model calls an agent "
        f"must wait on with a perfect cache (a prompt already produced costs nothing, one in flight "
        f"costs the rest of that call); {total} requests, {distinct} distinct prompts (the fewest calls)"
    )
    if ours:
        print(
            f"  ours' own flags: at most {ours['flag_chain']} requests of one agent had a sample neither "
            f"cached nor duplicated ({ours['flag_chain'] * args.agent_latency_s:.3f} s of calls)"
        )
    for label, result in (("ours", ours), ("ref", ref)):
        if result is None:
            continue
        problems = []
        if result["short_responses"]:
            problems.append(f"{result['short_responses']} responses without exactly one sample")
        if result["repeats_in_a_namespace"]:
            problems.append(f"{result['repeats_in_a_namespace']} samples handed out twice in one namespace")
        if result["samples_served"] != total:
            problems.append(f"{result['samples_served']} samples served for {total} requests")
        tally.problem(label, "agents", problems)
    print()


def _report_appends(args: argparse.Namespace, appends: Dict[str, Dict[str, Any]]) -> None:
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


def _report_baseline(args: argparse.Namespace, pipelines: Dict[str, Dict[int, Dict[str, Any]]],
                     tally: _Tally) -> None:
    label = next(label for label in pipelines if label.startswith("base "))
    print(f"against the baseline ({label}, the same workloads, alternating run by run, best of {args.repeat})")
    header = (f"{'workload':8} {'batch':>5}  {'ours us/req':>11}  {'base us/req':>11}  {'ours/base':>9}  "
              f"{'ours upstream':>13}  {'base upstream':>13}  {'target':31} met")
    print(header)
    print("-" * len(header))
    for batch_size in args.batch_sizes:
        for name in WORKLOADS:
            ours = pipelines.get("ours", {}).get(batch_size, {}).get(name)
            base = pipelines[label].get(batch_size, {}).get(name)
            if not ours or not base:
                continue
            ratio = ours["us_per_request"] / base["us_per_request"]
            target = f"ours/base <= {BASELINE_TARGET:.2f}"
            met = ratio <= BASELINE_TARGET
            if name == "dup":
                target += ", upstream"
                met = met and ours["upstream_requests"] <= base["upstream_requests"]
            print(
                f"{name:8} {batch_size:>5}  {ours['us_per_request']:>11,.1f}  {base['us_per_request']:>11,.1f}  "
                f"{ratio:>8.2f}x  {ours['upstream_requests']:>13,}  {base['upstream_requests']:>13,}  "
                f"{target:31} {tally.target(met)}"
            )
            tally.problem(label, f"{name} batch {batch_size}", _sanity_problems(name, base, args.requests))
    print()


def _report(
    args: argparse.Namespace,
    pipelines: Dict[str, Dict[int, Dict[str, Any]]],
    appends: Dict[str, Dict[str, Any]],
    sequential: Optional[Dict[str, Dict[str, Any]]] = None,
    floor: Optional[Dict[str, float]] = None,
    agents: Optional[Dict[str, Dict[str, Any]]] = None,
) -> bool:
    """Print the report; True when every target shown and every sanity check of ours passed."""
    libraries = {}
    for results in (pipelines, sequential or {}, agents or {}):
        for label, by_label in results.items():
            library = by_label.get("library") or next(iter(by_label.values()), {}).get("library")
            if library:
                libraries.setdefault(label, library)
    print(f"cachesaver pipeline benchmark: {', '.join(args.sections)}")
    for label in ("ours", "ref", *(label for label in libraries if label.startswith("base "))):
        if label in libraries:
            print(f"  {label + ':':5} {_describe(libraries[label])}")
    print()
    tally = _Tally()
    if "concurrent" in args.sections and pipelines:
        _report_concurrent(args, pipelines, tally)
        if args.baseline:
            _report_baseline(args, pipelines, tally)
    if "sequential" in args.sections and sequential:
        _report_sequential(args, sequential, floor, tally)
    if "agents" in args.sections and agents:
        _report_agents(args, agents, tally)
    if appends:
        _report_appends(args, appends)
    if tally.problems:
        print("sanity checks (samples, flags, replay):")
        for problem in tally.problems:
            print(f"  {problem}")
    else:
        print("sanity checks (samples, flags, replay): all passed")
    stated = []
    if "concurrent" in args.sections:
        stated.append(f"concurrent hits >= {HIT_SPEEDUP_TARGET:g}x faster than 0.0.6, misses >= "
                      f"{MISS_SPEEDUP_TARGET:g}x, duplicate workload <= {args.requests // 2:,} upstream requests")
    if "sequential" in args.sections:
        stated.append(f"sequential hits >= {SEQ_HIT_SPEEDUP_TARGET:g}x and <= {SEQ_HIT_FLOOR_TARGET:g}x "
                      f"the floor, misses >= {SEQ_MISS_SPEEDUP_TARGET:g}x and <= {SEQ_MISS_FLOOR_TARGET:g}x "
                      "the floor")
    if "agents" in args.sections:
        stated.append(f"agents within {AGENTS_IDEAL_TARGET - 1:.0%} of the ideal")
    if "concurrent" in args.sections and args.baseline:
        stated.append(f"concurrent workloads within {BASELINE_TARGET - 1:.0%} of the baseline, "
                      "duplicates with at most its upstream requests")
    print(f"targets met: {tally.met} of {tally.shown} ({'; '.join(stated)})")
    return tally.ours_ok


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
        for side in sides:
            _progress(f"{side.label}: {side.python} {side.worker.name}")
        pipelines: Dict[str, Dict[int, Dict[str, Any]]] = {}
        sequential: Dict[str, Dict[str, Any]] = {}
        floor: Optional[Dict[str, float]] = None
        agents: Dict[str, Dict[str, Any]] = {}
        appends: Dict[str, Dict[str, Any]] = {}
        if "concurrent" in args.sections:
            baseline = [_ensure_baseline(args.baseline, work)] if args.baseline else []
            for side in baseline:
                _progress(f"{side.label}: {side.python} {side.worker}")
            pipelines = _run_pipelines([*sides, *baseline], args, work)
        if "sequential" in args.sections:
            sequential = _run_sequential(sides, args, work)
            if sides[0].label == "ours":
                floor = _run_floor(sides[0], args, work)
        if "agents" in args.sections:
            agents = _run_agents(sides, args, work)
        if "append" in args.sections:
            for side in sides:
                appends[side.label] = _run_append(side, args, work)
        ok = _report(args, pipelines, appends, sequential, floor, agents)
        if args.json is not None:
            args.json.write_text(json.dumps(
                {"arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "pipelines": pipelines, "sequential": sequential, "floor": floor, "agents": agents,
                 "appends": appends},
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
