"""Library-neutral workloads for ``bench_pipeline.py``, shared by both worker scripts.

This module runs inside two interpreters: the project's own (driving this checkout) and the
reference venv (driving ``cachesaver==0.0.6``). It must therefore import nothing from
``cachesaver``; each worker hands it a :class:`Library` describing how to drive its version.

A worker is invoked as ``python <worker>.py '<json spec>'`` and prints exactly one JSON line on
stdout (the results); diagnostics go to stderr. Specs:

* ``{"mode": "pipeline", "requests": N, "batch_size": B, "timeout_s": T, "work_dir": D}``
  runs three workloads of N requests, all gathered concurrently, and reports each:

  - ``miss``: every prompt distinct, fresh cache;
  - ``hit``: a new pipeline on the warm cache of ``miss``, the same requests (new objects);
  - ``dup``: fresh cache, every prompt appears twice (50% duplicates) in one namespace.

  With ``"profile_dir": P, "label": L`` (any mode but floor, append and probe) each timed
  section also runs under cProfile: its stats go to ``P/L-<workload>[-bs<B>].pstats`` and a
  top-30 summary to the ``.txt`` beside it (the times reported are then inflated).

* ``{"mode": "sequential", "requests": N, "timeout_s": T, "work_dir": D}`` awaits N requests
  one at a time through ``OnlineAPI(batch_size=1)``: ``seq-miss`` on a fresh cache, then
  ``seq-hit`` through a new pipeline on the warm cache; per-request median, mean, p90.

* ``{"mode": "floor", "requests": N, "work_dir": D}`` (ours only: needs ``key_of``) times the
  bare floor of one request: the library's key function plus one ``diskcache`` get (hit), or
  plus one get that misses and one set (miss). See :func:`run_floor`.

* ``{"mode": "agents", "agents": A, "steps": S, "repeat_fraction": F, "seed": X,
  "latency_s": L, "batch_size": B, "timeout_s": T, "work_dir": D}`` runs A agents at once, each
  awaiting its S requests in turn, on a model that sleeps L per call. See :func:`run_agents`.

* ``{"mode": "memory", "requests": N, "checkpoints": [...], "chunk": C, "batch_size": B,
  "timeout_s": T, "work_dir": D}`` sends N distinct requests in gathered chunks of C through
  one pipeline and reports this process's resident size at each checkpoint.

* ``{"mode": "append", "points": [10, 2000], "window": W, "sample_chars": C, "work_dir": D}``
  appends samples one at a time to one key and reports the cost of the appends whose
  resulting list length lies within ``W`` of each point.

Timing of a concurrent pipeline workload covers ``gather`` of all requests plus closing the pipeline (so
work deferred to close is paid for); building requests, the pipeline and the cache is not
timed. The model is the same on both sides: zero latency, never awaits, distinct samples,
counts calls, requests and samples.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import hashlib
import io
import json
import os
import pstats
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional

import diskcache

NAMESPACE = "bench"


@dataclass(frozen=True)
class Library:
    """How one cachesaver version is driven. Built by each worker script."""

    name: str
    version: str
    location: str
    make_request: Callable[[str, str, str], Any]  # (prompt, request_id, namespace) -> Request
    make_response: Callable[[List[Any]], Any]  # samples -> Response
    prompt_of: Callable[[Any], str]  # Request -> prompt text
    make_pipeline: Callable[[Any, Any, int, float], Any]  # (model, cache, batch_size, timeout_s)
    close: Callable[[Any], Awaitable[None]]  # closes a pipeline
    make_appender: Callable[[Any], Callable[[str, Any], None]]  # cache -> append(key, sample)
    cache_options: Dict[str, Any]  # diskcache.Cache settings the library documents
    # request -> the library's cache key (ours only: the floor's key cost); None: no floor here
    key_of: Optional[Callable[[Any], str]] = None
    # a model that keeps no per-call history (the memory workload); None: CountingModel
    make_lean_model: Optional[Callable[[], Any]] = None


class CountingModel:
    """Model whose k-th sample ever produced is ``"<prompt>#<k>"`` (all distinct).

    ``calls`` counts invocations of ``request``/``batch_request``; ``requests`` counts the
    requests that reached it (a batch of 16 is one call, 16 requests); ``samples`` counts the
    samples it produced. It keeps nothing per call. With ``latency_s`` 0 (the default) it never
    awaits; otherwise every call sleeps ``latency_s`` (``asyncio.sleep``) before answering.
    """

    def __init__(self, library: Library, latency_s: float = 0.0) -> None:
        self._make_response = library.make_response
        self._prompt_of = library.prompt_of
        self._latency_s = latency_s
        self.calls = 0
        self.requests = 0
        self.samples = 0

    def _answer(self, request: Any) -> Any:
        self.requests += 1
        start = self.samples
        self.samples += request.n
        prompt = self._prompt_of(request)
        return self._make_response([f"{prompt}#{k}" for k in range(start, start + request.n)])

    async def request(self, request: Any) -> Any:
        self.calls += 1
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        return self._answer(request)

    async def batch_request(self, batch: Any) -> List[Any]:
        self.calls += 1
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        return [self._answer(r) for r in batch.requests]


class _Profiled:
    """Runs a section under cProfile when given a path ``P.pstats``, else does nothing.

    On exit writes the stats to ``P.pstats`` and a text summary to ``P.txt``: the top 30
    functions by cumulative time, then the top 30 by own time.
    """

    def __init__(self, path: Optional[str]) -> None:
        self._path = path
        self._profiler = cProfile.Profile() if path else None

    def __enter__(self) -> "_Profiled":
        if self._profiler is not None:
            self._profiler.enable()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._profiler is None:
            return
        self._profiler.disable()
        self._profiler.dump_stats(self._path)
        text = io.StringIO()
        stats = pstats.Stats(self._profiler, stream=text)
        for order in ("cumulative", "tottime"):
            text.write(f"== top 30 by {order} ==\n")
            stats.sort_stats(order).print_stats(30)
        with open(os.path.splitext(self._path)[0] + ".txt", "w", encoding="utf-8") as handle:
            handle.write(text.getvalue())


def _profile_path(spec: Dict[str, Any], name: str) -> Optional[str]:
    """Where a workload's profile goes: ``<profile_dir>/<label>-<name>.pstats``, or None."""
    profile_dir = spec.get("profile_dir")
    if not profile_dir:
        return None
    return os.path.join(profile_dir, f"{spec['label']}-{name}.pstats")


def _tally(responses: List[Any]) -> Dict[str, Any]:
    """What the responses of one pass say: samples served and distinct, flags, short answers."""
    data = [list(r.data) for r in responses]
    flat = [s for samples in data for s in samples]
    return {
        "samples_served": len(flat),
        "distinct_samples": len(set(flat)),
        "cached_samples": sum(1 for r in responses for c in (r.cached or ()) if c),
        "duplicated_samples": sum(1 for r in responses for d in (r.duplicated or ()) if d),
        "short_responses": sum(1 for samples in data if len(samples) != 1),
        "_data": data,
    }


def _model_counts(model: CountingModel) -> Dict[str, int]:
    return {
        "model_calls": model.calls,
        "upstream_requests": model.requests,
        "samples_generated": model.samples,
    }


async def _run_pass(
    library: Library,
    cache_dir: str,
    prompts: List[str],
    batch_size: int,
    timeout_s: float,
    profile_path: Optional[str] = None,
) -> Dict[str, Any]:
    cache = diskcache.Cache(cache_dir, **library.cache_options)
    model = CountingModel(library)
    requests = [
        library.make_request(prompt, f"r{i}", NAMESPACE) for i, prompt in enumerate(prompts)
    ]
    pipeline = library.make_pipeline(model, cache, batch_size, timeout_s)
    gc.collect()
    with _Profiled(profile_path):
        started = time.perf_counter()
        responses = await asyncio.gather(*(pipeline.request(r) for r in requests))
        gathered = time.perf_counter()
        await library.close(pipeline)
        closed = time.perf_counter()
    cache.close()
    return {
        "us_per_request": (closed - started) / len(requests) * 1e6,
        "gather_s": gathered - started,
        "close_s": closed - gathered,
        **_model_counts(model),
        **_tally(responses),
    }


async def run_pipeline_workloads(library: Library, spec: Dict[str, Any]) -> Dict[str, Any]:
    count = int(spec["requests"])
    batch_size = int(spec["batch_size"])
    timeout_s = float(spec["timeout_s"])
    work_dir = spec["work_dir"]
    warm = os.path.join(work_dir, "warm")
    dup = os.path.join(work_dir, "dup")
    distinct_prompts = [f"p{i}" for i in range(count)]
    paired_prompts = [f"p{i // 2}" for i in range(count)]

    def profile(workload: str) -> Optional[str]:
        return _profile_path(spec, f"{workload}-bs{batch_size}")

    miss = await _run_pass(library, warm, distinct_prompts, batch_size, timeout_s, profile("miss"))
    hit = await _run_pass(library, warm, distinct_prompts, batch_size, timeout_s, profile("hit"))
    hit["replay_exact"] = hit["_data"] == miss["_data"]
    dupe = await _run_pass(library, dup, paired_prompts, batch_size, timeout_s, profile("dup"))
    for result in (miss, hit, dupe):
        del result["_data"]
    return {"miss": miss, "hit": hit, "dup": dupe}


def run_append(library: Library, spec: Dict[str, Any]) -> Dict[str, Any]:
    points = [int(p) for p in spec["points"]]
    window = int(spec["window"])
    sample_chars = int(spec["sample_chars"])
    cache = diskcache.Cache(os.path.join(spec["work_dir"], "append"), **library.cache_options)
    append = library.make_appender(cache)
    key = hashlib.sha256(b"bench_pipeline append key").hexdigest()
    wanted: Dict[int, List[float]] = {p: [] for p in points}
    last = max(points) + window
    gc.collect()
    for length in range(1, last + 1):
        sample = f"sample {length:08d} ".ljust(sample_chars, "x")
        started = time.perf_counter()
        append(key, sample)
        elapsed = time.perf_counter() - started
        for point in points:
            if abs(length - point) <= window:
                wanted[point].append(elapsed * 1e6)
    cache.close()
    return {
        "points": {
            str(point): {
                "mean_us": statistics.fmean(times),
                "median_us": statistics.median(times),
                "appends": len(times),
            }
            for point, times in wanted.items()
        },
        "sample_chars": sample_chars,
    }


# -- sequential: one request awaited at a time ---------------------------------------------------


async def _run_sequential_pass(
    library: Library, cache_dir: str, prompts: List[str], timeout_s: float, profile_path: Optional[str]
) -> Dict[str, Any]:
    cache = diskcache.Cache(cache_dir, **library.cache_options)
    model = CountingModel(library)
    requests = [library.make_request(p, f"r{i}", NAMESPACE) for i, p in enumerate(prompts)]
    pipeline = library.make_pipeline(model, cache, 1, timeout_s)
    times: List[float] = []
    responses = []
    gc.collect()
    with _Profiled(profile_path):
        started = time.perf_counter()
        for request in requests:
            before = time.perf_counter()
            responses.append(await pipeline.request(request))
            times.append(time.perf_counter() - before)
        finished = time.perf_counter()
        await library.close(pipeline)
        closed = time.perf_counter()
    cache.close()
    return {
        "median_us": statistics.median(times) * 1e6,
        "mean_us": statistics.fmean(times) * 1e6,
        "p90_us": sorted(times)[int(0.9 * (len(times) - 1))] * 1e6,
        "loop_s": finished - started,
        "close_s": closed - finished,
        **_model_counts(model),
        **_tally(responses),
    }


async def run_sequential(library: Library, spec: Dict[str, Any]) -> Dict[str, Any]:
    """``seq-miss`` (fresh cache) then ``seq-hit`` (a new pipeline on the warm cache), each of
    ``requests`` requests awaited one after another through ``OnlineAPI(batch_size=1)``; the
    median, mean and 90th percentile of the per-request times (closing the pipeline is timed
    apart, as ``close_s``)."""
    count = int(spec["requests"])
    timeout_s = float(spec["timeout_s"])
    warm = os.path.join(spec["work_dir"], "sequential")
    prompts = [f"s{i}" for i in range(count)]
    miss = await _run_sequential_pass(library, warm, prompts, timeout_s, _profile_path(spec, "seq-miss"))
    hit = await _run_sequential_pass(library, warm, prompts, timeout_s, _profile_path(spec, "seq-hit"))
    hit["replay_exact"] = hit["_data"] == miss["_data"]
    for result in (miss, hit):
        del result["_data"]
    return {"seq-miss": miss, "seq-hit": hit}


def run_floor(library: Library, spec: Dict[str, Any]) -> Dict[str, Any]:
    """The bare cost of one request on this disk, with nothing but the key and ``diskcache``.

    For each of ``requests`` new request objects (prompts ``s<i>`` as in the sequential
    workload), times ``key_of(request)`` (the library's own key function; each object is new,
    so nothing is memoised), and on a fresh ``diskcache.Cache`` with the library's options:

    * hit: ``cache.get(key)`` of a stored value the size of what the request is served (the
      one-sample list ``["s<i>#0"]``, stored beforehand, not timed);
    * miss: ``cache.get(key)`` that misses, then ``cache.set(key, value)``.

    Reports the medians of each part and of each per-request total (hit = key + get, miss =
    key + get-miss + set).
    """
    if library.key_of is None:
        raise SystemExit(f"{library.name} offers no key function: the floor is measured with ours")
    count = int(spec["requests"])
    prompts = [f"s{i}" for i in range(count)]
    values = [[f"{p}#0"] for p in prompts]
    parts: Dict[str, List[float]] = {k: [] for k in ("key", "get", "get_miss", "set", "hit", "miss")}
    clock = time.perf_counter
    key_of = library.key_of

    hit_cache = diskcache.Cache(os.path.join(spec["work_dir"], "floor-hit"), **library.cache_options)
    for i, prompt in enumerate(prompts):  # stored beforehand, not timed
        hit_cache.set(key_of(library.make_request(prompt, f"r{i}", NAMESPACE)), values[i])
    requests = [library.make_request(p, f"r{i}", NAMESPACE) for i, p in enumerate(prompts)]
    gc.collect()
    for request in requests:
        t0 = clock()
        key = key_of(request)
        t1 = clock()
        value = hit_cache.get(key)
        t2 = clock()
        if value is None:
            raise SystemExit("the floor's warm cache lost a value")
        parts["key"].append(t1 - t0)
        parts["get"].append(t2 - t1)
        parts["hit"].append(t2 - t0)
    hit_cache.close()

    miss_cache = diskcache.Cache(os.path.join(spec["work_dir"], "floor-miss"), **library.cache_options)
    requests = [library.make_request(p, f"r{i}", NAMESPACE) for i, p in enumerate(prompts)]
    gc.collect()
    for request, value in zip(requests, values):
        t0 = clock()
        key = key_of(request)
        t1 = clock()
        found = miss_cache.get(key)
        t2 = clock()
        miss_cache.set(key, value)
        t3 = clock()
        if found is not None:
            raise SystemExit("the floor's fresh cache already held a value")
        parts["key"].append(t1 - t0)
        parts["get_miss"].append(t2 - t1)
        parts["set"].append(t3 - t2)
        parts["miss"].append(t3 - t0)
    miss_cache.close()
    return {
        "floor": {f"{name}_us": statistics.median(times) * 1e6 for name, times in parts.items()},
    }


# -- agents: real latency, each agent one request at a time ---------------------------------------


def agent_plans(agents: int, steps: int, repeat_fraction: float, seed: int) -> List[List[str]]:
    """The prompts of each agent, in order: ``a<agent>s<step>``, except that a seeded
    ``repeat_fraction`` of all the slots (rounded) repeat an original prompt of another agent
    (any of its steps), never one the same agent already issues. Needs at least two agents."""
    rng = random.Random(seed)
    plans = [[f"a{a}s{s}" for s in range(steps)] for a in range(agents)]
    slots = [(a, s) for a in range(agents) for s in range(steps)]
    repeated = set(rng.sample(slots, round(repeat_fraction * len(slots))))
    originals = [slot for slot in slots if slot not in repeated]
    for agent, step in sorted(repeated):
        candidates = [o for o in originals if o[0] != agent and plans[o[0]][o[1]] not in plans[agent]]
        if not candidates:
            raise ValueError("too few agents or original prompts for the repeats asked for")
        source = rng.choice(candidates)
        plans[agent][step] = plans[source[0]][source[1]]
    return plans


def ideal_rounds(plans: List[List[str]]) -> int:
    """The longest chain of model calls any agent must wait on, with a perfect cache.

    All agents start together; each call takes one unit. At each instant an agent skips the
    prompts already produced (a hit costs nothing), and its next prompt either joins a call
    started at that instant by another agent for the same prompt (merged, done when that call
    is) or starts a call of its own. Every call starts at a whole unit, so this is the number
    of units until the last agent is done.
    """
    done: set = set()
    position = [0] * len(plans)
    rounds = 0
    while True:
        started = set()
        for agent, plan in enumerate(plans):
            while position[agent] < len(plan) and plan[position[agent]] in done:
                position[agent] += 1
            if position[agent] < len(plan):
                started.add(plan[position[agent]])
        if not started:
            return rounds
        rounds += 1
        done |= started
        for agent, plan in enumerate(plans):
            if position[agent] < len(plan) and plan[position[agent]] in started:
                position[agent] += 1


async def run_agents(library: Library, spec: Dict[str, Any]) -> Dict[str, Any]:
    """``agents`` agents at once, each awaiting its ``steps`` requests one after another
    (``agent_plans``; agent ``a`` uses namespace ``agent<a>``, so another agent's sample may be
    reused), through one ``OnlineAPI`` on a fresh cache, on a model that sleeps ``latency_s``
    per call. Reports the wall time from the first request until the pipeline is closed."""
    plans = agent_plans(int(spec["agents"]), int(spec["steps"]), float(spec["repeat_fraction"]),
                        int(spec["seed"]))
    cache = diskcache.Cache(os.path.join(spec["work_dir"], "agents"), **library.cache_options)
    model = CountingModel(library, float(spec["latency_s"]))
    pipeline = library.make_pipeline(model, cache, int(spec["batch_size"]), float(spec["timeout_s"]))

    async def agent(index: int) -> List[Any]:
        answers = []
        for step, prompt in enumerate(plans[index]):
            request = library.make_request(prompt, f"a{index}s{step}", f"agent{index}")
            answers.append(await pipeline.request(request))
        return answers

    gc.collect()
    with _Profiled(_profile_path(spec, "agents")):
        started = time.perf_counter()
        per_agent = await asyncio.gather(*(agent(a) for a in range(len(plans))))
        gathered = time.perf_counter()
        await library.close(pipeline)
        closed = time.perf_counter()
    cache.close()
    tallies = [_tally(answers) for answers in per_agent]

    def paid(response: Any) -> bool:  # needed the model for this very request
        cached = response.cached or [False] * len(response.data)
        duplicated = response.duplicated or [False] * len(response.data)
        return any(not c and not d for c, d in zip(cached, duplicated))

    return {
        "agents": {
            "wall_s": closed - started,
            "gather_s": gathered - started,
            "close_s": closed - gathered,
            **_model_counts(model),
            "requests": sum(len(plan) for plan in plans),
            "distinct_prompts": len({p for plan in plans for p in plan}),
            "flag_chain": max(sum(1 for r in answers if paid(r)) for answers in per_agent),
            "samples_served": sum(t["samples_served"] for t in tallies),
            "repeats_in_a_namespace": sum(t["samples_served"] - t["distinct_samples"] for t in tallies),
            "cached_samples": sum(t["cached_samples"] for t in tallies),
            "duplicated_samples": sum(t["duplicated_samples"] for t in tallies),
            "short_responses": sum(t["short_responses"] for t in tallies),
        }
    }


# -- memory: resident size of one process as distinct requests accumulate ----------------------


def resident_bytes() -> int:
    """This process's resident set size now (``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("/proc/self/status has no VmRSS line: the memory workload needs Linux")


async def run_memory(library: Library, spec: Dict[str, Any]) -> Dict[str, Any]:
    """Distinct requests (``n=1``, prompts ``m<i>``, request ids ``r<i>``, one namespace) through
    one ``OnlineAPI`` on a fresh cache, awaited in gathered chunks of ``chunk``; the resident
    size after ``gc.collect()`` at each of ``checkpoints`` (request counts, 0 = the pipeline
    built, nothing asked yet), and once more after closing. Each chunk's requests and responses
    are dropped before the next, and the model keeps no history (``make_lean_model``)."""
    count = int(spec["requests"])
    chunk = int(spec["chunk"])
    checkpoints = sorted({int(c) for c in spec["checkpoints"]} | {0, count})
    cache = diskcache.Cache(os.path.join(spec["work_dir"], "memory"), **library.cache_options)
    model = library.make_lean_model() if library.make_lean_model else CountingModel(library)
    pipeline = library.make_pipeline(model, cache, int(spec["batch_size"]), float(spec["timeout_s"]))
    short = cached = 0
    gc.collect()
    rss = {0: resident_bytes()}
    started = time.perf_counter()
    with _Profiled(_profile_path(spec, "memory")):
        for low, high in zip(checkpoints, checkpoints[1:]):
            for first in range(low, high, chunk):
                requests = [library.make_request(f"m{i}", f"r{i}", NAMESPACE)
                            for i in range(first, min(first + chunk, high))]
                responses = await asyncio.gather(*(pipeline.request(r) for r in requests))
                short += sum(1 for r in responses if len(r.data) != 1)
                cached += sum(1 for r in responses for c in (r.cached or ()) if c)
                del requests, responses
            gc.collect()
            rss[high] = resident_bytes()
        elapsed = time.perf_counter() - started
        await library.close(pipeline)
    gc.collect()
    after_close = resident_bytes()
    cache.close()
    return {
        "memory": {
            "rss_bytes": {str(k): v for k, v in rss.items()},
            "rss_after_close_bytes": after_close,
            "requests": count,
            "short_responses": short,
            "cached_samples": cached,
            "elapsed_s": elapsed,
            "model": type(model).__name__ + ("(keep_log=False)" if getattr(model, "keep_log", True) is False else ""),
        }
    }


def main(library: Library, argv: List[str]) -> None:
    """Entry point of a worker: run the spec in ``argv[1]``, print one JSON line."""
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} '<json spec>' (run by benchmarks/bench_pipeline.py)")
    spec = json.loads(argv[1])
    mode = spec.get("mode")
    if mode == "pipeline":
        results = asyncio.run(run_pipeline_workloads(library, spec))
    elif mode == "sequential":
        results = asyncio.run(run_sequential(library, spec))
    elif mode == "floor":
        results = run_floor(library, spec)
    elif mode == "agents":
        results = asyncio.run(run_agents(library, spec))
    elif mode == "memory":
        results = asyncio.run(run_memory(library, spec))
    elif mode == "append":
        results = run_append(library, spec)
    elif mode == "probe":
        results = {}
    else:
        raise SystemExit(
            f"unknown mode {mode!r}; expected one of pipeline, sequential, floor, agents, memory, "
            "append, probe"
        )
    results["library"] = {
        "name": library.name,
        "version": library.version,
        "location": library.location,
        "cache_options": library.cache_options,
        "python": sys.version.split()[0],
    }
    sys.stdout.write(json.dumps(results) + "\n")
