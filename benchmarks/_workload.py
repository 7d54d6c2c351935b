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

  With ``"profile_dir": P, "label": L`` each timed section also runs under cProfile and its
  stats go to ``P/L-<workload>-bs<B>.pstats`` (the times reported are then inflated).

* ``{"mode": "append", "points": [10, 2000], "window": W, "sample_chars": C, "work_dir": D}``
  appends samples one at a time to one key and reports the cost of the appends whose
  resulting list length lies within ``W`` of each point.

Timing of a pipeline workload covers ``gather`` of all requests plus closing the pipeline (so
work deferred to close is paid for); building requests, the pipeline and the cache is not
timed. The model is the same on both sides: zero latency, never awaits, distinct samples,
counts calls, requests and samples.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import hashlib
import json
import os
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


class CountingModel:
    """Zero-latency model: the k-th sample it ever produces is ``"<prompt>#<k>"`` (all distinct).

    ``calls`` counts invocations of ``request``/``batch_request``; ``requests`` counts the
    requests that reached it (a batch of 16 is one call, 16 requests); ``samples`` counts the
    samples it produced.
    """

    def __init__(self, library: Library) -> None:
        self._make_response = library.make_response
        self._prompt_of = library.prompt_of
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
        return self._answer(request)

    async def batch_request(self, batch: Any) -> List[Any]:
        self.calls += 1
        return [self._answer(r) for r in batch.requests]


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
    profiler = cProfile.Profile() if profile_path else None
    gc.collect()
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter()
    responses = await asyncio.gather(*(pipeline.request(r) for r in requests))
    gathered = time.perf_counter()
    await library.close(pipeline)
    closed = time.perf_counter()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile_path)
    cache.close()
    data = [list(r.data) for r in responses]
    flat = [s for samples in data for s in samples]
    return {
        "us_per_request": (closed - started) / len(requests) * 1e6,
        "gather_s": gathered - started,
        "close_s": closed - gathered,
        "model_calls": model.calls,
        "upstream_requests": model.requests,
        "samples_generated": model.samples,
        "samples_served": len(flat),
        "distinct_samples": len(set(flat)),
        "cached_samples": sum(1 for r in responses for c in (r.cached or ()) if c),
        "duplicated_samples": sum(1 for r in responses for d in (r.duplicated or ()) if d),
        "short_responses": sum(1 for samples in data if len(samples) != 1),
        "_data": data,
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

    profile_dir = spec.get("profile_dir")

    def profile(workload: str) -> Optional[str]:
        if not profile_dir:
            return None
        return os.path.join(profile_dir, f"{spec['label']}-{workload}-bs{batch_size}.pstats")

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


def main(library: Library, argv: List[str]) -> None:
    """Entry point of a worker: run the spec in ``argv[1]``, print one JSON line."""
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} '<json spec>' (run by benchmarks/bench_pipeline.py)")
    spec = json.loads(argv[1])
    mode = spec.get("mode")
    if mode == "pipeline":
        results = asyncio.run(run_pipeline_workloads(library, spec))
    elif mode == "append":
        results = run_append(library, spec)
    elif mode == "probe":
        results = {}
    else:
        raise SystemExit(f"unknown mode {mode!r}; expected 'pipeline', 'append' or 'probe'")
    results["library"] = {
        "name": library.name,
        "version": library.version,
        "location": library.location,
        "cache_options": library.cache_options,
        "python": sys.version.split()[0],
    }
    sys.stdout.write(json.dumps(results) + "\n")
