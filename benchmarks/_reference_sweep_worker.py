"""Runs the main job's sweep (``examples/sweep.py``) through ``cachesaver==0.0.6``. Runs in the reference venv.

Started by ``bench_simulated.py`` as ``<ref venv python> _reference_sweep_worker.py '<json spec>'``
with a working directory outside the repository, so ``import cachesaver`` finds the PyPI
release (refused otherwise). It prints exactly one JSON line on stdout; diagnostics go to stderr.

Two cachesaver versions live in this process:

* ``cachesaver`` is the PyPI release 0.0.6: its ``OnlineAPI`` is what is measured;
* this checkout is loaded as ``cachesaver_ours`` (the package imports itself only relatively),
  for the backend, our :class:`SimulatedLLM`, and for the ``Request`` the sweep builds.
  ``examples/sweep.py`` imports ``cachesaver...`` absolutely, so it is executed while those
  names point at ``cachesaver_ours`` (:func:`ours_as_cachesaver`), and 0.0.6 is put back after.

The two APIs differ (0.0.6: ``Request(args, kwargs, n, request_id, namespace)``, a
``NamedTuple`` Response, ``cleanup()``), so two thin adapters sit at the edges:

* :class:`ReferenceFront`, what the sweep calls: our Request -> a 0.0.6 Request whose
  ``kwargs`` carry the prompt and every decoding field that is set -> 0.0.6's pipeline -> our
  Response;
* :class:`ReferenceBackend`, what 0.0.6's cache stage calls: its Request -> our Request ->
  our SimulatedLLM -> a 0.0.6 Response.

Specs:

* ``{"mode": "probe", "repository": R}``: check that both versions and the sweep load;
* ``{"mode": "sweep", "repository": R, "seed": S, "batch_size": B, "timeout_s": T,
  "run_timeout_s": X, "close_timeout_s": C, "work_dir": D, "workloads": [{"name": ...,
  "configs": [indices into sweep.CONFIGS], "cache": "<directory name under D>"}, ...]}``: run
  each workload on a fresh SimulatedLLM (seed S) through a new 0.0.6 ``OnlineAPI(model,
  diskcache.Cache(D/cache), batch_size=B, timeout=T)``; workloads naming the same cache share
  it, in order. A workload that takes longer than X seconds is abandoned and reported as
  timed out; a ``cleanup()`` that takes longer than C seconds is abandoned and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List

import anyio
import diskcache

from _reference_check import EXPECTED_VERSION, check_reference

OURS = "cachesaver_ours"
# The modules examples/sweep.py imports from cachesaver; each is loaded from this checkout first.
SWEEP_IMPORTS = ("typedefs", "pipelines", "models.simulated")
# Fields of our Request that are routing, not content: they map onto 0.0.6's own fields.
ROUTING_FIELDS = ("n", "request_id", "namespace")


REFERENCE_LOCATION = check_reference("_reference_sweep_worker.py", "bench_simulated.py")  # before the rest of cachesaver

from cachesaver.pipelines import OnlineAPI as ReferenceOnlineAPI  # noqa: E402
from cachesaver.typedefs import Request as ReferenceRequest  # noqa: E402
from cachesaver.typedefs import Response as ReferenceResponse  # noqa: E402


# -- loading this checkout and the sweep next to 0.0.6 ------------------------------------------


def load_ours(repository: Path) -> ModuleType:
    """This checkout's package, imported as ``cachesaver_ours`` with the modules the sweep needs."""
    package = repository / "cachesaver"
    spec = importlib.util.spec_from_file_location(
        OURS, package / "__init__.py", submodule_search_locations=[str(package)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load this checkout's package from {package}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[OURS] = module
    spec.loader.exec_module(module)
    for name in SWEEP_IMPORTS:
        importlib.import_module(f"{OURS}.{name}")
    return module


def _family(name: str) -> Dict[str, ModuleType]:
    return {key: module for key, module in sys.modules.items() if key == name or key.startswith(name + ".")}


@contextlib.contextmanager
def ours_as_cachesaver() -> Iterator[None]:
    """While inside, ``cachesaver`` and its submodules are this checkout's (already loaded) modules.

    Only modules loaded by :func:`load_ours` are aliased; code that imports any other
    ``cachesaver`` module inside would load a second copy, so that is refused.
    """
    reference = _family("cachesaver")
    aliases = {"cachesaver" + key[len(OURS):]: module for key, module in _family(OURS).items()}
    for key in reference:
        del sys.modules[key]
    sys.modules.update(aliases)
    try:
        yield
    finally:
        strays = sorted(set(_family("cachesaver")) - set(aliases))
        for key in _family("cachesaver"):
            del sys.modules[key]
        sys.modules.update(reference)
        if strays:
            raise SystemExit(
                f"examples/sweep.py imported {', '.join(strays)}, which the worker did not load from "
                "this checkout; add it to SWEEP_IMPORTS in _reference_sweep_worker.py"
            )


def load_sweep(repository: Path) -> ModuleType:
    """``examples/sweep.py``, its ``cachesaver`` imports resolved to this checkout."""
    path = repository / "examples" / "sweep.py"
    spec = importlib.util.spec_from_file_location("cachesaver_sweep_example", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the sweep example from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    with ours_as_cachesaver():
        spec.loader.exec_module(module)
    return module


# -- the adapters -------------------------------------------------------------------------------


class ReferenceFront:
    """What the sweep calls: ``async request(our Request) -> our Response`` through 0.0.6's pipeline."""

    def __init__(self, pipeline: Any, response_type: type) -> None:
        self._pipeline = pipeline
        self._response_type = response_type
        self.requests = 0

    async def request(self, request: Any) -> Any:
        self.requests += 1
        content = {
            field.name: getattr(request, field.name)
            for field in dataclasses.fields(request)
            if field.name not in ROUTING_FIELDS and getattr(request, field.name) is not None
        }
        reference = ReferenceRequest(
            args=(), kwargs=content, n=request.n, request_id=str(request.request_id),
            namespace=request.namespace,
        )
        response = await self._pipeline.request(reference)
        return self._response_type(
            data=list(response.data),
            cached=None if response.cached is None else list(response.cached),
            duplicated=None if response.duplicated is None else list(response.duplicated),
        )


class ReferenceBackend:
    """What 0.0.6 calls: ``async request(its Request) -> its Response``, served by our model.

    0.0.6's cache stage calls ``request`` once per request it cannot serve from the cache, so
    this is the only method it needs.
    """

    def __init__(self, model: Any, request_type: type) -> None:
        self._model = model
        self._request_type = request_type

    async def request(self, request: Any) -> Any:
        ours = self._request_type(
            **request.kwargs, n=request.n, request_id=request.request_id, namespace=request.namespace
        )
        response = await self._model.request(ours)
        return ReferenceResponse(data=list(response.data))


class BatchSizes:
    """Sits between 0.0.6's batcher and its reorderer and records the size of every batch."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.sizes: List[int] = []

    async def batch_request(self, batch: Any) -> Any:
        self.sizes.append(len(batch.requests))
        return await self._inner.batch_request(batch)


# -- the runs -----------------------------------------------------------------------------------


async def run_workload(
    sweep: ModuleType, ours: ModuleType, spec: Dict[str, Any], workload: Dict[str, Any]
) -> Dict[str, Any]:
    """One workload through a new 0.0.6 OnlineAPI; its costs, or what went wrong."""
    configs = [sweep.CONFIGS[i] for i in workload["configs"]]
    model = sweep.SimulatedLLM(seed=int(spec["seed"]), compose=sweep.compose_game24)
    backend = ReferenceBackend(model, ours.typedefs.Request)
    result: Dict[str, Any] = {}
    started = time.perf_counter()
    cache = diskcache.Cache(os.path.join(spec["work_dir"], workload["cache"]))
    pipeline = ReferenceOnlineAPI(
        model=backend, cache=cache, batch_size=int(spec["batch_size"]), timeout=float(spec["timeout_s"])
    )
    batches = BatchSizes(pipeline.batcher.model)
    pipeline.batcher.model = batches
    front = ReferenceFront(pipeline, ours.typedefs.Response)
    run_timeout_s = float(spec["run_timeout_s"])
    try:
        with anyio.fail_after(run_timeout_s):
            for config in configs:
                await sweep.run_config(front, config)
    except TimeoutError:
        result["error"] = f"timed out after {run_timeout_s:g} s"
    except Exception as exc:  # reported, not hidden: the parent prints it on the workload's line
        result["error"] = f"{type(exc).__name__}: {exc}"
    close_timeout_s = float(spec["close_timeout_s"])
    with anyio.move_on_after(close_timeout_s) as scope:
        await pipeline.cleanup()
    if scope.cancelled_caught:
        result["close_error"] = f"cleanup() did not return within {close_timeout_s:g} s"
        cache.close()
    wall_seconds = time.perf_counter() - started
    stats = model.stats()
    result.update(
        requests=stats.requests,
        calls=stats.calls,
        samples=stats.samples,
        tokens=stats.tokens,
        modeled_seconds=stats.modeled_seconds,
        wall_seconds=wall_seconds,
        sweep_requests=front.requests,
        batch_sizes=batches.sizes,
    )
    return result


async def run_sweep(spec: Dict[str, Any]) -> Dict[str, Any]:
    repository = Path(spec["repository"])
    ours = load_ours(repository)
    sweep = load_sweep(repository)
    return {"workloads": {w["name"]: await run_workload(sweep, ours, spec, w) for w in spec["workloads"]}}


def _library() -> Dict[str, Any]:
    return {
        "name": "cachesaver (reference)",
        "version": EXPECTED_VERSION,
        "location": REFERENCE_LOCATION,
        "python": sys.version.split()[0],
        "anyio": importlib.metadata.version("anyio"),
        "diskcache": importlib.metadata.version("diskcache"),
    }


def main(argv: List[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} '<json spec>' (run by benchmarks/bench_simulated.py)")
    spec = json.loads(argv[1])
    mode = spec.get("mode")
    if mode == "probe":
        repository = Path(spec["repository"])
        load_ours(repository)
        load_sweep(repository)
        results: Dict[str, Any] = {}
    elif mode == "sweep":
        results = asyncio.run(run_sweep(spec))
    else:
        raise SystemExit(f"unknown mode {mode!r}; expected 'sweep' or 'probe'")
    results["library"] = _library()
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main(sys.argv)
