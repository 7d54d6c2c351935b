"""The worker of ``bench_store.py``: drives this checkout's pipeline (or the bare engine) on one store.

Started as ``<python> _store_worker.py '<json spec>'`` with ``PYTHONPATH`` set to the repository
root, so the package measured is this checkout's. Every spec names the store as ``cache``: a
diskcache directory or a Redis URL (``unix://...?prefix=P``, ``redis+cluster://...?prefix=P``),
given to ``OnlineAPI`` as is. Modes:

* ``{"mode": "single", "engine": E, "cache": C, "floor_cache": F, "requests": R,
  "sequential_requests": S, "batch_size": B, "timeout_s": T}``: on a fresh store C,
  ``concurrent-miss`` (R distinct prompts ``p<i>``, ids ``r<i>``, one namespace, gathered at
  once through one ``OnlineAPI``), ``concurrent-hit`` (a new pipeline, the same requests as new
  objects: all replayed from the store) and ``sequential-hit`` (a new pipeline, the first S of
  those requests awaited one at a time). Concurrent figures are (gather + close) / R;
  sequential ones the median per request (close timed apart). With ``"profile_dir"`` and
  ``"label"`` each pass runs under cProfile. Then, in the same process on the fresh store F, the
  ``floor``: the same work with nothing but ``request_key`` and the bare engine
  (:func:`run_floor`). ``run_id`` says whether ``OnlineAPI`` takes ``run_id=`` (shared runs).
* ``{"mode": "part", "worker": w, "workers": W, "cache": C, "requests": R, "copies": K,
  "phases": [{"name": "miss" | "hit" | "dup" | "dup-spread", "run_id": ID or null}, ...],
  ...}``: one of W worker processes. For each phase it builds its requests and opens a new
  pipeline (with ``run_id=ID`` when ID is given: the one place it is passed; the pipeline then
  joins that run at once, as it would at its first request), prints ``ready``, waits for a
  ``go`` line on stdin (sent to every worker once all are ready), sends its share (request i of R when ``i % W == w``) gathered at once,
  prints ``answered``, waits for ``close`` (so the workers of a phase are alive together: one
  shared run), closes the pipeline and prints one JSON line. ``miss``: prompts ``t<i>`` on a
  fresh store; ``hit``: the same requests again; ``dup``: prompt ``d<i // K>`` in one namespace,
  so each prompt is asked K times, once in each of K workers when W = K; ``dup-spread``: the
  same with prompts ``e<i // K>``, copy ``i % K`` in a namespace of its own.

The model answers at once (never awaits) with distinct samples everywhere:
``"<prompt>#<worker tag>.<k>"``, the tag unique to the process.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import statistics
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

import cachesaver
from cachesaver.keys import request_key
from cachesaver.pipelines import OnlineAPI
from cachesaver.store.redis_urls import parse_url
from cachesaver.typedefs import Batch, Request, Response

import _workload

NAMESPACE = "bench"


class UniqueModel:
    """Zero-latency model: the k-th sample it makes is ``"<prompt>#<tag>.<k>"``, distinct across
    processes (the tag is unique to this one). Counts calls, requests and samples."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.calls = 0
        self.requests = 0
        self.samples = 0

    def _answer(self, request: Request) -> Response:
        self.requests += 1
        start = self.samples
        self.samples += request.n
        return Response(data=[f"{request.prompt}#{self.tag}.{k}" for k in range(start, start + request.n)])

    async def request(self, request: Request) -> Response:
        self.calls += 1
        return self._answer(request)

    async def batch_request(self, batch: Batch) -> List[Response]:
        self.calls += 1
        return [self._answer(r) for r in batch.requests]


def make_pipeline(model: Any, cache: str, batch_size: int, timeout_s: float, run_id: Optional[str] = None) -> OnlineAPI:
    """The pipeline every mode measures: ``run_id`` is passed only when given (shared runs)."""
    options: Dict[str, Any] = {} if run_id is None else {"run_id": run_id}
    return OnlineAPI(model, cache, batch_size, timeout=timeout_s, **options)


def _requests(prompts: List[str], ids: List[str]) -> List[Request]:
    return [Request(prompt, n=1, request_id=rid, namespace=NAMESPACE) for prompt, rid in zip(prompts, ids)]


def _counts(model: UniqueModel) -> Dict[str, int]:
    return {"model_calls": model.calls, "upstream_requests": model.requests, "samples_generated": model.samples}


async def _concurrent(cache: str, prompts: List[str], spec: Dict[str, Any], name: str) -> Dict[str, Any]:
    model = UniqueModel()
    requests = _requests(prompts, [f"r{i}" for i in range(len(prompts))])
    pipeline = make_pipeline(model, cache, int(spec["batch_size"]), float(spec["timeout_s"]))
    gc.collect()
    with _workload._Profiled(_workload._profile_path(spec, name)):
        started = time.perf_counter()
        responses = await asyncio.gather(*(pipeline.request(r) for r in requests))
        gathered = time.perf_counter()
        await pipeline.aclose()
        closed = time.perf_counter()
    return {
        "us_per_request": (closed - started) / len(requests) * 1e6,
        "gather_s": gathered - started,
        "close_s": closed - gathered,
        **_counts(model),
        **_workload._tally(responses),
    }


async def _sequential(cache: str, prompts: List[str], spec: Dict[str, Any], name: str) -> Dict[str, Any]:
    model = UniqueModel()
    requests = _requests(prompts, [f"r{i}" for i in range(len(prompts))])
    pipeline = make_pipeline(model, cache, int(spec["batch_size"]), float(spec["timeout_s"]))
    times: List[float] = []
    responses = []
    gc.collect()
    with _workload._Profiled(_workload._profile_path(spec, name)):
        for request in requests:
            before = time.perf_counter()
            responses.append(await pipeline.request(request))
            times.append(time.perf_counter() - before)
        finished = time.perf_counter()
        await pipeline.aclose()
        closed = time.perf_counter()
    return {
        "median_us": statistics.median(times) * 1e6,
        "mean_us": statistics.fmean(times) * 1e6,
        "p90_us": sorted(times)[int(0.9 * (len(times) - 1))] * 1e6,
        "close_s": closed - finished,
        **_counts(model),
        **_workload._tally(responses),
    }


def _every_pass(passes: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The fastest pass's timings, with counts that hold for every pass: model requests, short
    answers and samples over all passes (so one handed out twice in any pass shows), and the
    fewest samples any pass flagged cached."""
    result = dict(min(passes, key=lambda p: p["us_per_request"]))
    result["passes_us"] = [p["us_per_request"] for p in passes]
    for field in ("model_calls", "upstream_requests", "samples_generated", "short_responses",
                  "samples_served", "distinct_samples"):
        result[field] = sum(p[field] for p in passes)
    result["cached_samples"] = min(p["cached_samples"] for p in passes)
    return result


async def run_single(spec: Dict[str, Any]) -> Dict[str, Any]:
    cache = spec["cache"]
    count, sequential = int(spec["requests"]), int(spec["sequential_requests"])
    prompts = [f"p{i}" for i in range(count)]
    miss = await _concurrent(cache, prompts, spec, "concurrent-miss")
    hits = [await _concurrent(cache, prompts, spec, "concurrent-hit") for _ in range(int(spec.get("hit_passes", 1)))]
    hit = _every_pass(hits)  # each pass a new pipeline (a run) replaying the first
    hit["replay_exact"] = all(h["_data"] == miss["_data"] for h in hits)
    seq = await _sequential(cache, prompts[:sequential], spec, "sequential-hit")
    seq["replay_exact"] = seq["_data"] == miss["_data"][:sequential]
    for result in (miss, hit, seq):
        del result["_data"]
    return {"concurrent-miss": miss, "concurrent-hit": hit, "sequential-hit": seq}


def run_single_and_floor(spec: Dict[str, Any]) -> Dict[str, Any]:
    results = asyncio.run(run_single(spec))
    results.update(run_floor({**spec, "cache": spec["floor_cache"]}))
    results["floor"]["asyncio_gather_us"] = asyncio.run(_asyncio_gather_us(int(spec["requests"])))
    results["run_id"] = asyncio.run(_takes_run_id(spec["cache"]))
    return results


# -- the floor: request_key plus the bare engine ---------------------------------------------------


def _payload(prompt: str) -> bytes:
    """What the engines store for a one-sample answer: a pickle of the sample's (data, usage)."""
    return pickle.dumps((f"{prompt}#0", None), protocol=pickle.HIGHEST_PROTOCOL)


def _redis_client(cache: str) -> Any:
    import redis
    import redis.cluster

    url = parse_url(cache)
    if url.cluster:
        return redis.cluster.RedisCluster.from_url(url.client_url)
    return redis.Redis.from_url(url.client_url)


def run_floor(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The bare cost of the same requests, measured with ``request_key`` and the engine alone.

    Every request is a new object (so ``request_key`` hashes it again), prompts ``p<i>``.

    * Redis (one server or a cluster, through redis-py with hiredis): concurrent hit = the keys
      of R requests plus ONE pipelined GET of R stored payloads (a pickled one-sample answer,
      stored beforehand, not timed), per request; concurrent miss = the keys plus one pipelined
      GET that misses everywhere plus one pipelined SET of R payloads (two round trips, as a
      lookup round and a commit); sequential hit = key + one GET round trip, median of S. A
      cluster client's pipeline sends one batch per node.
    * diskcache (``Cache(dir, eviction_policy='none')``, one call at a time: it has no
      pipelining): concurrent hit = key + ``get`` per request, total / R; concurrent miss = key +
      ``get`` that misses + ``set``; sequential hit = key + ``get``, median of S.

    The concurrent hit is the best of ``hit_passes`` passes (each with new request objects), as
    ours is the best of as many hit passes; every pass is in ``concurrent_hit_passes_us``.
    """
    cache, engine = spec["cache"], spec["engine"]
    count, sequential = int(spec["requests"]), int(spec["sequential_requests"])
    passes = int(spec.get("hit_passes", 1))
    prompts = [f"p{i}" for i in range(count)]
    clock = time.perf_counter

    def fresh_requests(tag: str) -> List[Request]:
        return _requests(prompts, [f"{tag}{i}" for i in range(count)])

    if engine == "diskcache":
        import diskcache

        warm = diskcache.Cache(os.path.join(cache, "floor-hit"), eviction_policy="none")
        for request in fresh_requests("r"):
            warm.set(request_key(request), (f"{request.prompt}#0", None))
        hit_passes = []
        for _ in range(passes):
            requests = fresh_requests("r")
            gc.collect()
            started = clock()
            for request in requests:
                if warm.get(request_key(request)) is None:
                    raise SystemExit("the floor's warm cache lost a value")
            hit_passes.append(clock() - started)
        singles = []
        for request in fresh_requests("r")[:sequential]:
            t0 = clock()
            warm.get(request_key(request))
            singles.append(clock() - t0)
        warm.close()
        cold = diskcache.Cache(os.path.join(cache, "floor-miss"), eviction_policy="none")
        requests = fresh_requests("r")
        gc.collect()
        started = clock()
        for request in requests:
            key = request_key(request)
            if cold.get(key) is not None:
                raise SystemExit("the floor's fresh cache already held a value")
            cold.set(key, (f"{request.prompt}#0", None))
        miss_s = clock() - started
        cold.close()
    else:
        client = _redis_client(cache)
        base = f"bench-floor:{uuid.uuid4().hex[:8]}"
        payloads = [_payload(p) for p in prompts]

        def names(requests: List[Request], space: str) -> List[str]:
            return [f"{base}:{space}:{request_key(r)}" for r in requests]

        setup = client.pipeline(transaction=False)
        for name, payload in zip(names(fresh_requests("r"), "hit"), payloads):
            setup.set(name, payload)
        setup.execute()
        hit_passes = []
        for _ in range(passes):
            requests = fresh_requests("r")
            gc.collect()
            started = clock()
            pipe = client.pipeline(transaction=False)
            for name in names(requests, "hit"):
                pipe.get(name)
            values = pipe.execute()
            hit_passes.append(clock() - started)
            if any(v is None for v in values):
                raise SystemExit("the floor's stored payloads were not all found")
        singles = []
        for request in fresh_requests("r")[:sequential]:
            t0 = clock()
            client.get(f"{base}:hit:{request_key(request)}")
            singles.append(clock() - t0)
        requests = fresh_requests("r")
        gc.collect()
        started = clock()
        keys = names(requests, "miss")
        pipe = client.pipeline(transaction=False)
        for name in keys:
            pipe.get(name)
        found = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for name, payload in zip(keys, payloads):
            pipe.set(name, payload)
        pipe.execute()
        miss_s = clock() - started
        if any(v is not None for v in found):
            raise SystemExit("the floor's fresh keys already held a value")
        client.close()
    return {
        "floor": {
            "concurrent_hit_us": min(hit_passes) / count * 1e6,
            "concurrent_hit_passes_us": [s / count * 1e6 for s in hit_passes],
            "concurrent_miss_us": miss_s / count * 1e6,
            "sequential_hit_us": statistics.median(singles) * 1e6,
        }
    }


async def _asyncio_gather_us(count: int, rounds_of: int = 256) -> float:
    """The event loop's own share of a gathered request, with no cache and no I/O: us per
    request to gather ``count`` tasks that each await one future, which another task sets
    ``rounds_of`` at a time (one loop pass between rounds), as a cache's lookup rounds do. Any
    asyncio cache pays this per concurrent request; the floor, one pipelined call, does not.
    The best of 3 passes."""
    loop = asyncio.get_running_loop()
    waiting: List[asyncio.Future] = []
    queued = asyncio.Event()

    async def one(i: int) -> int:
        future = loop.create_future()
        waiting.append(future)
        queued.set()
        await future
        return i

    async def rounds() -> None:
        while True:
            await queued.wait()
            queued.clear()
            while waiting:
                batch = waiting[:rounds_of]
                del waiting[:rounds_of]
                await asyncio.sleep(0)
                for future in batch:
                    future.set_result(None)

    server = asyncio.ensure_future(rounds())
    best = float("inf")
    try:
        for _ in range(3):
            gc.collect()
            started = time.perf_counter()
            done = await asyncio.gather(*(one(i) for i in range(count)))
            best = min(best, time.perf_counter() - started)
            if done != list(range(count)):
                raise SystemExit("the asyncio measure lost a task's result")
    finally:
        server.cancel()
    return best / count * 1e6


# -- part: one of several worker processes in one shared run ---------------------------------------


def _share(spec: Dict[str, Any], phase: str) -> List[Request]:
    """This worker's requests of the phase: request i of R when ``i % W == w``."""
    count, workers, worker = int(spec["requests"]), int(spec["workers"]), int(spec["worker"])
    copies = int(spec.get("copies", 1))
    mine = [i for i in range(count) if i % workers == worker]
    if phase == "miss" or phase == "hit":
        prompts, namespaces = [f"t{i}" for i in mine], [NAMESPACE] * len(mine)
    else:  # prompt d<i // K>: copy i % K of it; "dup-spread" puts copy c in a namespace of its own
        letter = "d" if phase == "dup" else "e"  # other prompts: the phases may share a store
        prompts = [f"{letter}{i // copies}" for i in mine]
        namespaces = [NAMESPACE if phase == "dup" else f"{NAMESPACE}-c{i % copies}" for i in mine]
    return [Request(p, n=1, request_id=f"r{i}", namespace=ns) for p, i, ns in zip(prompts, mine, namespaces)]


def _wait_for(word: str, phase: str) -> None:
    line = sys.stdin.readline()
    if line.strip() != word:
        raise SystemExit(f"expected {word!r} on stdin in phase {phase!r}, got {line!r}")


async def _part_phase(spec: Dict[str, Any], phase: Dict[str, Any]) -> Dict[str, Any]:
    model = UniqueModel()
    requests = _share(spec, phase["name"])
    pipeline = make_pipeline(model, spec["cache"], int(spec["batch_size"]), float(spec["timeout_s"]), phase.get("run_id"))
    if phase.get("run_id") and getattr(pipeline.cacher, "single_flight", None) is not None:
        # Join the shared run now, as the pipeline would at its first request: every worker is
        # in the run when the phase starts, so none takes itself to be alone in it.
        await pipeline.cacher.single_flight.broker.ensure_running()
    gc.collect()
    print("ready", flush=True)  # prepared: the phase starts in every worker at once, on "go"
    await asyncio.to_thread(_wait_for, "go", phase["name"])
    started = time.time()
    responses = await asyncio.gather(*(pipeline.request(r) for r in requests))
    answered = time.time()
    # Every worker keeps its pipeline open until all have their answers: the workers of a pass
    # are alive together, so they are one shared run (a run ends when its last worker leaves).
    print("answered", flush=True)
    await asyncio.to_thread(_wait_for, "close", phase["name"])
    waited = time.time()
    await pipeline.aclose()
    ended = time.time()
    tally = _workload._tally(responses)
    data = tally.pop("_data")
    return {
        "phase": phase["name"],
        "started": started,
        "answered": answered,
        "ended": ended,
        "close_s": ended - waited,
        "requests": len(requests),
        **_counts(model),
        **tally,
        "samples": {r.request_id: d for r, d in zip(requests, data)},
    }


def run_part(spec: Dict[str, Any]) -> None:
    """Per phase: prepare (requests, pipeline), print ``ready``; after ``go`` on stdin send the
    requests, print ``answered``, and after ``close`` close the pipeline and print the phase's
    JSON line."""
    for phase in spec["phases"]:
        result = asyncio.run(_part_phase(spec, phase))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


# -- what this checkout offers --------------------------------------------------------------------------------------------


async def _takes_run_id(cache: str) -> bool:
    """Whether a pipeline on ``cache`` takes ``run_id=`` (OnlineAPI without shared runs raises TypeError)."""
    try:
        pipeline = make_pipeline(UniqueModel(), cache, 1, 0.01, run_id=f"bench-store-probe-{uuid.uuid4().hex[:8]}")
    except TypeError:
        return False
    await pipeline.aclose()
    return True


def _library() -> Dict[str, Any]:
    described: Dict[str, Any] = {
        "version": getattr(cachesaver, "__version__", "?"),
        "location": os.path.dirname(os.path.abspath(cachesaver.__file__)),
        "python": sys.version.split()[0],
    }
    try:
        import hiredis
        import redis

        described.update(redis_py=redis.__version__, hiredis=hiredis.__version__)
    except ImportError:
        described.update(redis_py=None, hiredis=None)
    return described


def main(argv: List[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} '<json spec>' (run by benchmarks/bench_store.py)")
    spec = json.loads(argv[1])
    mode = spec.get("mode")
    if mode == "part":
        run_part(spec)
        return
    if mode != "single":
        raise SystemExit(f"unknown mode {mode!r}; expected single or part")
    results = run_single_and_floor(spec)
    results["library"] = _library()
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main(sys.argv)
