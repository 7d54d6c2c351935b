"""Benchmark the storage engines: diskcache, one Redis server and a 3-master Redis Cluster.

One invocation, from the repository root with the project's interpreter (redis-server and
redis-cli on PATH, as for the test suite)::

    .venv/bin/python benchmarks/bench_store.py                      # every engine (~1-2 min)
    .venv/bin/python benchmarks/bench_store.py --engines redis      # one engine

What it does:

* starts its own Redis servers (never the system service), through ``tests/redis_servers.py``:
  one ``redis-server`` on a unix socket (``--redis-tcp``: a free TCP port of 127.0.0.1) and a
  Redis Cluster of 3 masters on free ports, with their data in the work directory; stops them at
  the end;
* per engine, in a fresh subprocess (``_store_worker.py``, this checkout on ``PYTHONPATH``), with a
  zero-latency model and ``OnlineAPI(model, cache, batch_size, timeout)``: us per request for
  ``--requests`` concurrent misses (distinct prompts, gathered at once, fresh store) and hits (a
  new pipeline on the warm store, the same requests: every one replayed), and the median us of
  ``--sequential-requests`` hits awaited one at a time;
* the physical floor in the same run, in a subprocess too: ``request_key`` plus raw redis-py round
  trips (one pipelined GET of the same payloads for the hits; a pipelined GET that misses plus a
  pipelined SET for the misses; one GET per sequential hit), or bare ``diskcache`` get / set;
  the report gives ours / floor; and, for context, the event loop's own cost of a gathered
  request (tasks that each await one future, set in rounds, with no cache and no I/O), which
  every concurrent figure of ours includes and the floor does not;
* aggregate throughput with 1, 2 and 4 worker processes (``--workers``) sharing one store in one
  shared run (``run_id``): ``--worker-requests`` distinct requests split round-robin, misses on a
  fresh store, then hits (a new shared run replaying them);
* upstream calls for a duplicate-heavy workload (``--dup-prompts`` prompts asked ``--dup-copies``
  times each, one namespace) split over ``--dup-copies`` processes, copy c of every prompt in
  process c, against the same workload in one process;
* prints one line per workload and engine, the targets of issue 12 and whether each is met.

Targets: Redis (one server and cluster) concurrent hits within 3x of the floor per request; the
4-process duplicate workload within 2% of one process's upstream requests. While ``OnlineAPI``
has no ``run_id=`` (shared runs), the worker sections run each worker as a run of its own, and the
report says so. Every store lives under ``benchmarks/.work/`` (git-ignored), removed at the end
unless ``--keep-work``. Exit status: 0; 2 when a step fails (a server, a worker); with
``--check``, 1 when a target is missed or a sanity check fails. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPOSITORY = BENCH_DIR.parent
WORK_ROOT = BENCH_DIR / ".work"
WORKER = BENCH_DIR / "_store_worker.py"
ENGINES = ("diskcache", "redis", "cluster")
WORKLOADS = ("concurrent-miss", "concurrent-hit", "sequential-hit")
DUP_WORKLOADS = ("dup", "dup-spread")  # the copies of a prompt in one namespace, or one namespace per copy
FLOOR_FIELDS = {"concurrent-miss": "concurrent_miss_us", "concurrent-hit": "concurrent_hit_us",
                "sequential-hit": "sequential_hit_us"}

HIT_FLOOR_TARGET = 3.0  # Redis concurrent hits: ours at most this many times the floor per request
DUP_TARGET = 1.02  # the 4-process duplicate workload: at most 2% more upstream requests than one process


class BenchmarkError(Exception):
    """Raised when a step of the benchmark (a server, a worker) fails; the message says which."""


@dataclass
class Engine:
    """One engine under test: how to name a fresh, empty store on it."""

    name: str
    description: str
    location: str  # a directory (diskcache) or a server URL without query (redis, cluster)

    def fresh_cache(self, label: str) -> str:
        """A store no workload has used: a new directory, or a new key prefix on the server."""
        if self.name == "diskcache":
            path = Path(self.location) / f"{label}-{uuid.uuid4().hex[:6]}"
            path.mkdir(parents=True)
            return str(path)
        return f"{self.location}?prefix=bench-{label}-{uuid.uuid4().hex[:6]}"


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark cachesaver's storage engines (diskcache, Redis, Redis Cluster).")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated engines (default {','.join(ENGINES)})")
    parser.add_argument("--requests", type=int, default=4096,
                        help="requests per concurrent workload, gathered at once (default 4096)")
    parser.add_argument("--sequential-requests", type=int, default=300,
                        help="hits awaited one at a time in the sequential workload (default 300)")
    parser.add_argument("--hit-passes", type=int, default=5,
                        help="gathered hit passes per one-process run, each a new pipeline replaying the misses; the "
                             "best is shown, for ours and the floor alike, and the medians below it (default 5)")
    parser.add_argument("--batch-size", type=int, default=16, help="OnlineAPI batch_size (default 16)")
    parser.add_argument("--timeout-s", type=float, default=0.01, help="OnlineAPI batch window in seconds (default 0.01)")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts for throughput (default 1,2,4)")
    parser.add_argument("--worker-requests", type=int, default=4096,
                        help="distinct requests split over the worker processes (default 4096)")
    parser.add_argument("--dup-prompts", type=int, default=1024,
                        help="distinct prompts of the duplicate workload (default 1024)")
    parser.add_argument("--dup-copies", type=int, default=4,
                        help="times each prompt is asked, and worker processes it is split over (default 4)")
    parser.add_argument("--repeat", type=int, default=1, help="run each part this many times, keep the best (default 1)")
    parser.add_argument("--redis-tcp", action="store_true",
                        help="the single Redis server on a free TCP port of 127.0.0.1 instead of a unix socket")
    parser.add_argument("--worker-timeout-s", type=float, default=300.0,
                        help="seconds a worker may take for one step before the benchmark gives up (default 300)")
    parser.add_argument("--json", type=Path, help="also write every raw result to this file")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run the single-process workloads under cProfile and write "
                             "DIR/<engine>-<workload>.pstats, each with a top-30 .txt summary (times are then inflated)")
    parser.add_argument("--keep-work", action="store_true", help="keep the stores under benchmarks/.work/")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed or a sanity check fails")
    args = parser.parse_args(argv)
    args.engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown or not args.engines:
        parser.error(f"--engines takes names from {','.join(ENGINES)}; got {unknown or 'none'}")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers takes comma-separated integers, e.g. 1,2,4")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers must list integers >= 1")
    if min(args.requests, args.sequential_requests, args.batch_size, args.worker_requests, args.dup_prompts,
           args.repeat, args.hit_passes) < 1:
        parser.error("--requests, --sequential-requests, --batch-size, --worker-requests, --dup-prompts, "
                     "--repeat and --hit-passes must be >= 1")
    if args.sequential_requests > args.requests:
        parser.error("--sequential-requests replays requests of the concurrent workload: at most --requests")
    if args.dup_copies < 2:
        parser.error("--dup-copies must be >= 2 (each prompt asked at least twice)")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPOSITORY), *filter(None, [env.get("PYTHONPATH")])])
    return env


# -- servers ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _engines(args: argparse.Namespace, work: Path) -> Iterator[Dict[str, Engine]]:
    """The engines asked for, with their servers running; the servers are stopped on exit."""
    engines: Dict[str, Engine] = {}
    with contextlib.ExitStack() as stack:
        if "diskcache" in args.engines:
            engines["diskcache"] = Engine("diskcache", "diskcache directories", str(work / "diskcache"))
        if {"redis", "cluster"} & set(args.engines):
            sys.path.insert(0, str(REPOSITORY / "tests"))
            try:
                from redis_servers import RedisCluster, RedisServer, RedisServerError
            finally:
                sys.path.remove(str(REPOSITORY / "tests"))
            try:
                if "redis" in args.engines:
                    _progress("starting redis-server ...")
                    server = stack.enter_context(RedisServer(work / "redis", unix_socket=not args.redis_tcp))
                    where = f"unix socket {server.socket_path}" if not args.redis_tcp else f"127.0.0.1:{server.port}"
                    engines["redis"] = Engine("redis", f"one redis-server on {where}", server.url)
                if "cluster" in args.engines:
                    _progress("starting a Redis Cluster of 3 masters ...")
                    cluster = stack.enter_context(RedisCluster(work / "cluster"))
                    ports = ", ".join(str(port) for _, port in cluster.addresses)
                    engines["cluster"] = Engine("cluster", f"Redis Cluster, 3 masters on 127.0.0.1 ports {ports}",
                                                cluster.cluster_url)
            except RedisServerError as exc:
                raise BenchmarkError(f"could not start the benchmark's Redis servers: {exc}") from exc
        yield {name: engines[name] for name in args.engines}


def _server_version() -> Optional[str]:
    try:
        done = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for part in done.stdout.split():
        if part.startswith("v="):
            return part[2:]
    return None


# -- workers --------------------------------------------------------------------------------------------


def _run_worker(spec: Dict[str, Any], work: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """One worker subprocess on ``spec``; its JSON result."""
    command = [sys.executable, str(WORKER), json.dumps(spec)]
    try:
        done = subprocess.run(command, cwd=work, env=_env(), capture_output=True, text=True,
                              timeout=args.worker_timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"the worker took longer than {args.worker_timeout_s} s on {spec['mode']}") from exc
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise BenchmarkError(f"the worker failed (exit {done.returncode}) on {spec}:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


class _Part:
    """One worker process of a multi-process section, read line by line with a deadline."""

    def __init__(self, spec: Dict[str, Any], work: Path) -> None:
        self.errors = open(work / f"worker-{uuid.uuid4().hex[:8]}.stderr", "w+b")
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(spec)], cwd=work, env=_env(), bufsize=0,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors,
        )
        self.buffer = b""

    def read_line(self, deadline: float) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchmarkError("a worker process did not answer in time (--worker-timeout-s)")
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                if not chunk:
                    self.process.wait()
                    self.errors.seek(0)
                    raise BenchmarkError(
                        f"a worker process exited with status {self.process.returncode}:\n"
                        f"{self.errors.read().decode(errors='replace')[-4000:]}"
                    )
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(text.encode())
        except BrokenPipeError:
            self.process.wait()
            self.errors.seek(0)
            raise BenchmarkError(
                f"a worker process exited with status {self.process.returncode}:\n"
                f"{self.errors.read().decode(errors='replace')[-4000:]}"
            ) from None

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.errors.close()


def _run_parts(engine: Engine, workers: int, phases: List[Dict[str, Any]], spec: Dict[str, Any],
               work: Path, args: argparse.Namespace) -> List[List[Dict[str, Any]]]:
    """``workers`` processes on one fresh store; for each phase, every worker's result. Each
    phase starts in all workers at once (after all have prepared it, its requests built and its
    pipeline open, and the previous phase is done)."""
    cache = engine.fresh_cache(f"{spec['label']}-w{workers}")
    parts = [_Part({**spec, "mode": "part", "cache": cache, "worker": w, "workers": workers, "phases": phases}, work)
             for w in range(workers)]
    try:
        results = []
        for _ in phases:
            deadline = time.monotonic() + args.worker_timeout_s
            for part in parts:  # each has its requests and pipeline: start them together
                if part.read_line(deadline) != "ready":
                    raise BenchmarkError("a worker process did not say it was ready")
            for part in parts:
                part.send("go\n")
            for part in parts:
                if part.read_line(deadline) != "answered":
                    raise BenchmarkError("a worker process did not say it had its answers")
            for part in parts:  # all answered: they were alive together, one shared run
                part.send("close\n")
            results.append([json.loads(part.read_line(deadline)) for part in parts])
        return results
    finally:
        for part in parts:  # a worker still waiting for "go" ends when its stdin closes
            part.close()


def _combine(results: List[Dict[str, Any]], requests: int) -> Dict[str, Any]:
    """One phase over all workers: throughput from the first start to the last end, and counts."""
    started, ended = min(r["started"] for r in results), max(r["ended"] for r in results)
    samples: Dict[str, List[Any]] = {}
    for result in results:
        samples.update(result["samples"])
    flat = [s for data in samples.values() for s in data]
    combined = {
        "workers": len(results),
        "requests": sum(r["requests"] for r in results),
        "wall_s": ended - started,
        "requests_per_s": requests / (ended - started) if ended > started else float("inf"),
        "slowest_worker_s": max(r["ended"] - r["started"] for r in results),
        "samples_served": len(flat),
        "distinct_samples": len(set(flat)),
        "_samples": samples,
    }
    for name in ("model_calls", "upstream_requests", "samples_generated", "cached_samples", "duplicated_samples",
                 "short_responses"):
        combined[name] = sum(r[name] for r in results)
    return combined


def _best(old: Optional[Dict[str, Any]], new: Dict[str, Any], field: str, lower: bool = True) -> Dict[str, Any]:
    if old is None:
        return new
    return new if (new[field] < old[field]) == lower else old


def _measure(engine: Engine, args: argparse.Namespace, work: Path, run_ids: Optional[bool]) -> Dict[str, Any]:
    """Every section for one engine (the best of ``--repeat`` runs of each). ``run_ids``: whether
    OnlineAPI takes ``run_id=`` (None: not known yet, the first one-process worker says)."""
    out: Dict[str, Any] = {"single": {}, "floor": None, "workers": {}, "dup": {}}
    common = {"batch_size": args.batch_size, "timeout_s": args.timeout_s}
    for attempt in range(args.repeat):
        _progress(f"  {engine.name}: one process and the floor, run {attempt + 1} of {args.repeat}")
        spec = {"mode": "single", "engine": engine.name, "cache": engine.fresh_cache("single"),
                "floor_cache": engine.fresh_cache("floor"), "requests": args.requests,
                "sequential_requests": args.sequential_requests, "hit_passes": args.hit_passes, **common}
        if args.profile is not None:
            spec.update(profile_dir=str(args.profile.resolve()), label=engine.name)
        result = _run_worker(spec, work, args)
        out["library"] = result.pop("library")
        if run_ids is None:
            run_ids = bool(result["run_id"])
            if not run_ids:
                _progress("note: OnlineAPI takes no run_id= here: each worker process is a run of its own")
        out["run_ids"] = run_ids
        for name in WORKLOADS:
            field = "median_us" if name.startswith("sequential") else "us_per_request"
            out["single"][name] = _best(out["single"].get(name), result[name], field)
        out.setdefault("hit_passes_us", []).extend(result["concurrent-hit"].get("passes_us", ()))
        floor = result["floor"]
        out["floor"] = floor if out["floor"] is None else {
            k: out["floor"][k] + v if isinstance(v, list) else min(v, out["floor"][k]) for k, v in floor.items()
        }

        def run_id(phase: str) -> Optional[str]:  # a new shared run per pass, when there are shared runs
            return f"bench-{engine.name}-{phase}-{uuid.uuid4().hex[:8]}" if run_ids else None

        for workers in args.workers:
            _progress(f"  {engine.name}: {workers} worker process(es), run {attempt + 1} of {args.repeat}")
            phases = [{"name": "miss", "run_id": run_id("miss")}, {"name": "hit", "run_id": run_id("hit")}]
            miss, hit = _run_parts(engine, workers, phases, {"label": "throughput", "requests": args.worker_requests,
                                                             **common}, work, args)
            miss, hit = _combine(miss, args.worker_requests), _combine(hit, args.worker_requests)
            hit["replay_exact"] = hit["_samples"] == miss["_samples"]
            for result in (miss, hit):
                del result["_samples"]
            held = out["workers"].get(workers)
            out["workers"][workers] = {"miss": _best(held and held["miss"], miss, "requests_per_s", lower=False),
                                       "hit": _best(held and held["hit"], hit, "requests_per_s", lower=False)}
        total = args.dup_prompts * args.dup_copies
        for workers in (1, args.dup_copies):
            _progress(f"  {engine.name}: duplicates in {workers} process(es), run {attempt + 1} of {args.repeat}")
            phases = [{"name": name, "run_id": run_id(name)} for name in DUP_WORKLOADS]
            passes = _run_parts(engine, workers, phases, {"label": "dup", "requests": total, "copies": args.dup_copies,
                                                          **common}, work, args)
            for name, results in zip(DUP_WORKLOADS, passes):
                combined = _combine(results, total)
                del combined["_samples"]
                held = out["dup"].setdefault(name, {})
                held[workers] = _best(held.get(workers), combined, "upstream_requests")
    return out


# -- the report -------------------------------------------------------------------------------------------


class _Tally:
    """Counts the targets shown and met, and gathers the sanity problems found."""

    def __init__(self) -> None:
        self.shown = 0
        self.met = 0
        self.problems: List[str] = []

    def target(self, met: Optional[bool]) -> str:
        if met is None:
            return "-"
        self.shown += 1
        self.met += met
        return "yes" if met else "NO"


def _fmt(value: Optional[float], spec: str = ",.1f") -> str:
    return "-" if value is None else format(value, spec)


def _single_problems(name: str, result: Dict[str, Any], requests: int) -> List[str]:
    problems = []
    if result["short_responses"]:
        problems.append(f"{result['short_responses']} responses without exactly one sample")
    if result["distinct_samples"] != result["samples_served"]:
        problems.append(f"{result['samples_served'] - result['distinct_samples']} samples handed out twice")
    if name == "concurrent-miss" and result["cached_samples"]:
        problems.append(f"{result['cached_samples']} samples flagged cached on a fresh store")
    if name != "concurrent-miss":
        if result["upstream_requests"]:
            problems.append(f"{result['upstream_requests']} model requests on a warm store")
        if result["cached_samples"] != requests:
            problems.append(f"{result['cached_samples']} of {requests} samples flagged cached")
        if not result.get("replay_exact"):
            problems.append("the replay differs from the first pass")
    return problems


def _parts_problems(phase: str, result: Dict[str, Any], requests: int, shared: bool) -> List[str]:
    problems = []
    if result["short_responses"]:
        problems.append(f"{result['short_responses']} responses without exactly one sample")
    if result["samples_served"] != requests:
        problems.append(f"{result['samples_served']} samples served for {requests} requests")
    if shared and phase != "dup-spread" and result["distinct_samples"] != result["samples_served"]:
        problems.append(f"{result['samples_served'] - result['distinct_samples']} samples handed out twice in "
                        "the shared run")
    if phase == "miss" and result["cached_samples"]:
        problems.append(f"{result['cached_samples']} samples flagged cached on a fresh store")
    if phase == "hit":
        if result["upstream_requests"]:
            problems.append(f"{result['upstream_requests']} model requests on a warm store")
        if not result.get("replay_exact"):
            problems.append("the replay differs from the first pass")
    return problems


def _report(args: argparse.Namespace, engines: Dict[str, Engine], results: Dict[str, Dict[str, Any]],
            run_ids: bool, server: Optional[str]) -> bool:
    """Print the report; True when every target shown is met and every sanity check passed."""
    tally = _Tally()
    library = next(iter(results.values()))["library"]
    print(f"cachesaver store benchmark: {', '.join(engines)}")
    print(f"  cachesaver {library['version']} at {library['location']} (Python {library['python']}), "
          f"redis-py {library['redis_py']}, hiredis {library['hiredis']}, redis-server {server or '?'}")
    for engine in engines.values():
        print(f"  {engine.name + ':':10} {engine.description}")
    print("  shared runs: " + ("OnlineAPI(run_id=...): every worker section is one shared run per pass" if run_ids
                               else "this checkout's OnlineAPI takes no run_id=, so every worker process is a run "
                                    "of its own (no sample checks across workers)"))
    print()
    print(f"one process: {args.requests:,} requests gathered at once (concurrent; us/req = gather + close over "
          f"requests), {args.sequential_requests:,} hits awaited one at a time (sequential; median), "
          f"OnlineAPI(batch_size={args.batch_size}, timeout={args.timeout_s:g}), zero-latency model, best of "
          f"{args.repeat}")
    header = (f"{'engine':9}  {'workload':15}  {'ours us/req':>11}  {'floor us/req':>12}  {'ours/floor':>10}  "
              f"{'target':18}  met")
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        floor = result["floor"]
        for workload in WORKLOADS:
            ours = result["single"][workload]
            value = ours["median_us"] if workload.startswith("sequential") else ours["us_per_request"]
            bare = floor[FLOOR_FIELDS[workload]]
            ratio = value / bare if bare else None
            targeted = name in ("redis", "cluster") and workload == "concurrent-hit"
            target = f"ours/floor <= {HIT_FLOOR_TARGET:g}x" if targeted else "-"
            met = tally.target(ratio is not None and ratio <= HIT_FLOOR_TARGET) if targeted else "-"
            print(f"{name:9}  {workload:15}  {value:>11,.1f}  {bare:>12,.1f}  {_fmt(ratio, '.1f') + 'x':>10}  "
                  f"{target:18}  {met}")
            count = args.sequential_requests if workload.startswith("sequential") else args.requests
            tally.problems += [f"{name} {workload}: {p}" for p in _single_problems(workload, ours, count)]
    print("  floor: request_key plus, for redis and cluster, raw redis-py round trips of the same payloads (a "
          "pickled one-sample answer): one pipelined GET of all the keys (hit), a pipelined GET that misses plus a "
          "pipelined SET (miss), one GET per request (sequential); for diskcache a bare get (hit) or get-miss + set "
          "(miss) per request. Concurrent floors are per request of the whole batch; the sequential one a median.")
    gathered = [r["floor"]["asyncio_gather_us"] for r in results.values() if "asyncio_gather_us" in r["floor"]]
    if gathered:
        print(f"  asyncio alone: {min(gathered):,.1f} us per request to gather {args.requests:,} tasks that each await "
              "one future, set 256 at a time by another task (no cache, no I/O): the event loop's share of every "
              "concurrent figure of ours, and of none of the floor's (one pipelined call makes no task)")
    medians = []
    for name, result in results.items():
        ours_passes, floor_passes = result.get("hit_passes_us") or [], result["floor"].get("concurrent_hit_passes_us") or []
        if ours_passes and floor_passes:
            ours_median, floor_median = statistics.median(ours_passes), statistics.median(floor_passes)
            medians.append(f"{name} {ours_median:,.1f} against {floor_median:,.1f} ({ours_median / floor_median:.1f}x)")
    if medians:
        print(f"  concurrent hits: the best of {args.hit_passes} passes per run (each a new pipeline replaying the misses; "
              f"the floor's the best of as many); the medians of all passes, ours against the floor: {'; '.join(medians)}")
    print()
    print(f"worker processes: {args.worker_requests:,} distinct requests split round-robin over W processes on one "
          f"store, gathered at once in each; misses on a fresh store, then hits (a new "
          f"{'shared ' if run_ids else ''}run replaying them); req/s = requests / (last worker done - first started)")
    scale = f"x {min(args.workers)} proc"
    header = (f"{'engine':9}  {'workers':>7}  {'miss req/s':>10}  {scale:>8}  {'hit req/s':>10}  {scale:>8}  "
              f"{'upstream':>8}")
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        base = result["workers"].get(min(args.workers))
        for workers in args.workers:
            miss, hit = result["workers"][workers]["miss"], result["workers"][workers]["hit"]
            print(f"{name:9}  {workers:>7}  {miss['requests_per_s']:>10,.0f}  "
                  f"{miss['requests_per_s'] / base['miss']['requests_per_s']:>7.2f}x  {hit['requests_per_s']:>10,.0f}  "
                  f"{hit['requests_per_s'] / base['hit']['requests_per_s']:>7.2f}x  {miss['upstream_requests']:>8,}")
            for phase, combined in (("miss", miss), ("hit", hit)):
                tally.problems += [f"{name} {workers} workers {phase}: {p}"
                                   for p in _parts_problems(phase, combined, args.worker_requests, run_ids)]
    print(f"  {scale}: req/s against {min(args.workers)} process(es) on the same engine; upstream: model "
          f"requests of the miss pass; this machine has {os.cpu_count()} CPU(s)")
    print()
    total = args.dup_prompts * args.dup_copies
    copies = args.dup_copies
    print(f"duplicates: {args.dup_prompts:,} prompts x {copies} = {total:,} requests (each prompt {copies} times, "
          f"distinct request ids) gathered at once, in one process, or in {copies} processes with copy c of every prompt "
          f"in process c; dup: one namespace (each request needs a fresh sample), dup-spread: copy c in namespace "
          f"c (one sample may serve them all); upstream = requests that reached the model, all processes together")
    header = (f"{'engine':9}  {'workload':10}  {'1 proc upstream':>15}  {f'{copies} proc upstream':>15}  "
              f"{f'{copies} / 1':>7}  {'samples (1 / ' + str(copies) + ')':>17}  {'target':14}  met")
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        for workload in DUP_WORKLOADS:
            one, many = result["dup"][workload][1], result["dup"][workload][copies]
            ratio = many["upstream_requests"] / one["upstream_requests"] if one["upstream_requests"] else None
            target, met = "-", "-"
            if workload == "dup":
                target = f"<= {DUP_TARGET:.2f}x"
                if run_ids:
                    met = tally.target(ratio is not None and ratio <= DUP_TARGET)
                else:  # separate runs may hand each other's samples out again: not the target's workload
                    tally.target(False)
                    met = "n/a"
            samples = f"{one['samples_generated']:,} / {many['samples_generated']:,}"
            print(f"{name:9}  {workload:10}  {one['upstream_requests']:>15,}  {many['upstream_requests']:>15,}  "
                  f"{_fmt(ratio, '.3f') + 'x':>7}  {samples:>17}  {target:14}  {met}")
            for workers, combined in ((1, one), (copies, many)):
                shared = run_ids or workers == 1
                tally.problems += [f"{name} {workload} in {workers} process(es): {p}"
                                   for p in _parts_problems(workload, combined, total, shared)]
    if not run_ids:
        print(f"  n/a: without shared runs each process is a run of its own, free to reuse the samples another "
              f"process stored (fewer samples than requests above), so the target, for {copies} processes in one "
              "run, is not measured; it counts as not met")
    print()
    if tally.problems:
        print("sanity checks (samples, flags, replay):")
        for problem in tally.problems:
            print(f"  {problem}")
    else:
        print("sanity checks (samples, flags, replay): all passed")
    print(f"targets met: {tally.met} of {tally.shown} (Redis and Redis Cluster concurrent hits <= "
          f"{HIT_FLOOR_TARGET:g}x the floor; {copies}-process duplicate workload <= {DUP_TARGET:.2f}x one process's "
          "upstream requests)")
    return tally.met == tally.shown and not tally.problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    WORK_ROOT.mkdir(exist_ok=True)
    work = WORK_ROOT / f"store-{os.getpid()}-{int(time.time())}"
    work.mkdir()
    try:
        with _engines(args, work) as engines:
            results: Dict[str, Dict[str, Any]] = {}
            run_ids: Optional[bool] = None
            for name, engine in engines.items():
                _progress(f"{name}: {engine.description}")
                results[name] = _measure(engine, args, work, run_ids)
                run_ids = results[name]["run_ids"]
            ok = _report(args, engines, results, bool(run_ids), _server_version())
        if args.json is not None:
            args.json.write_text(json.dumps(
                {"arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "run_ids": run_ids, "results": results}, indent=2))
        return 1 if (args.check and not ok) else 0
    except BenchmarkError as exc:
        print(f"bench_store.py: {exc}", file=sys.stderr)
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
