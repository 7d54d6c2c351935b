"""What the cache pipeline saves on the main job's sweep, on the simulated backend, next to cachesaver==0.0.6.

Each workload runs the Tree-of-Thoughts sweep of ``examples/sweep.py`` on a fresh SimulatedLLM
with the same seed three ways:

* *direct*: calling the model directly (every request is its own call, nothing is remembered);
* *ours*: through this checkout's :class:`~cachesaver.pipelines.OnlineAPI`;
* *0.0.6*: through the reference release's ``OnlineAPI`` (``cachesaver==0.0.6`` from PyPI, in a
  separate venv, driven by ``_reference_sweep_worker.py``), with the same batch size and batch
  window, and the same SimulatedLLM from this checkout behind it.

It prints one line per workload. Each measure reads ``direct -> ours (direct/ours) vs 0.0.6
<value> (0.0.6/ours)``: every ratio is the other run divided by ours, so above 1x means ours
spends less. The measures:

* ``requests``: requests that reached the model (a merged group of identical requests is one);
* ``calls``: model invocations (our pipeline sends batches; the direct run, and 0.0.6, whose
  cache stage calls the model once per request it must fill, one call per request);
* ``samples generated``: samples the model produced;
* ``tokens``: prompt plus completion tokens the model processed;
* ``modeled s``: the simulated cluster's GPU-busy seconds (prefill after KV-cache reuse,
  decode, per-call overhead);
* ``wall s (noisy)``: real seconds per run, from opening the cache to closing the pipeline
  (0.0.6 runs in another interpreter; a shared machine makes these vary run to run).

Workloads (every pipeline run starts from a new pipeline):

* ``sweep``: the six configurations, smallest first, as the main job runs them, fresh cache;
* ``sweep rerun``: the same sweep once more on the same cache (the direct run, on a fresh model
  with the same seed, pays again);
* ``sweep, both runs``: the two lines above added up;
* ``sweep largest-first``: the configurations in reverse order, fresh cache;
* ``one config``: only the largest configuration, fresh cache, so no other namespace's samples
  exist and only de-duplication and batching can save anything.

Usage::

    .venv/bin/python benchmarks/bench_simulated.py [--seed N] [--ref-python PATH] [--check]

The first run creates ``benchmarks/.venv-ref`` (shared with ``bench_pipeline.py``; needs network
once). When the reference cannot be set up or run, our lines are printed without it and a line
says why; the exit status is then still 0, or 2 with ``--check``. The modeled measures are
exact and repeatable; nothing sleeps (``time_scale=0``) except the batch windows. See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Optional, Sequence

import anyio

from cachesaver.models.simulated import SimulatedLLM
from cachesaver.pipelines import OnlineAPI

BENCH_DIR = Path(__file__).resolve().parent
REPOSITORY = BENCH_DIR.parent
EXAMPLE = REPOSITORY / "examples" / "sweep.py"
REFERENCE_WORKER = BENCH_DIR / "_reference_sweep_worker.py"
BATCH_WINDOW_S = 0.01  # both pipelines: a batch is sent when full or this long after it started
# This checkout's dependencies that the reference worker imports (see pyproject.toml); installed
# into the reference venv next to 0.0.6, which does not need these versions itself.
OUR_WORKER_REQUIREMENTS = ("anyio>=4.11", "diskcache>=5.6")


def _load(path: Path, name: str) -> ModuleType:
    """Import a file that is not part of a package (a script, a benchmark helper)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_sweep() -> ModuleType:
    """Import examples/sweep.py (it is a script, not a package module)."""
    return _load(EXAMPLE, "cachesaver_sweep_example")


@functools.lru_cache(maxsize=None)
def _venv_helpers() -> ModuleType:
    """``_reference_venv.py``, shared with bench_pipeline.py (this file is also imported by path)."""
    return _load(BENCH_DIR / "_reference_venv.py", "cachesaver_bench_reference_venv")


# -- the workloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One line of the report: which configurations, in which order, on which cache directory.

    Workloads naming the same ``cache`` share it, in the order of :data:`WORKLOADS`.
    """

    name: str
    order: str  # "smallest-first", "largest-first" or "largest-only"
    cache: str

    def configs(self, configs: Sequence[Any]) -> list[Any]:
        if self.order == "smallest-first":
            return list(configs)
        if self.order == "largest-first":
            return list(configs)[::-1]
        if self.order == "largest-only":
            return list(configs)[-1:]
        raise ValueError(f"unknown order {self.order!r}")


WORKLOADS = (
    Workload("sweep", "smallest-first", cache="sweep"),
    Workload("sweep rerun", "smallest-first", cache="sweep"),
    Workload("sweep largest-first", "largest-first", cache="reverse"),
    Workload("one config", "largest-only", cache="one"),
)
BOTH_RUNS = ("sweep, both runs", "sweep", "sweep rerun")  # a summed line: (name, first, second)


@dataclass(frozen=True)
class Cost:
    """What one run cost; ``wall_seconds`` is None when it was not measured cleanly."""

    requests: int
    calls: int
    samples: int
    tokens: int
    modeled_seconds: float
    wall_seconds: Optional[float] = None

    def __add__(self, other: "Cost") -> "Cost":
        wall = None
        if self.wall_seconds is not None and other.wall_seconds is not None:
            wall = self.wall_seconds + other.wall_seconds
        return Cost(
            self.requests + other.requests,
            self.calls + other.calls,
            self.samples + other.samples,
            self.tokens + other.tokens,
            self.modeled_seconds + other.modeled_seconds,
            wall,
        )


@dataclass(frozen=True)
class ReferenceRun:
    """One workload through 0.0.6: its cost (None when the run failed) and what went wrong."""

    cost: Optional[Cost]
    problems: list[str] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)  # what its batcher sent, in one-sample items


@dataclass(frozen=True)
class Reference:
    """What the reference worker measured, per workload name, and which library it ran."""

    runs: dict[str, ReferenceRun]
    library: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_worker(cls, result: Mapping[str, Any]) -> "Reference":
        runs = {}
        for name, run in result["workloads"].items():
            problems = [run[key] for key in ("error", "close_error") if run.get(key)]
            cost = None
            if "error" not in run:
                wall = None if run.get("close_error") else run["wall_seconds"]
                cost = Cost(run["requests"], run["calls"], run["samples"], run["tokens"],
                            run["modeled_seconds"], wall)
            runs[name] = ReferenceRun(cost, problems, list(run.get("batch_sizes", [])))
        return cls(runs, dict(result.get("library", {})))


# -- our runs -----------------------------------------------------------------------------------


def _cost(model: SimulatedLLM, requests: int, wall_seconds: float) -> Cost:
    stats = model.stats()
    return Cost(requests, stats.calls, stats.samples, stats.tokens, stats.modeled_seconds, wall_seconds)


async def run_direct(sweep: ModuleType, configs: Sequence[Any], seed: int) -> Cost:
    model = SimulatedLLM(seed=seed, compose=sweep.compose_game24)
    started = time.perf_counter()
    for config in configs:
        await sweep.run_config(model, config)
    return _cost(model, model.stats().requests, time.perf_counter() - started)


async def run_piped(sweep: ModuleType, configs: Sequence[Any], seed: int, cache_dir: Path) -> Cost:
    model = SimulatedLLM(seed=seed, compose=sweep.compose_game24)
    started = time.perf_counter()
    async with OnlineAPI(model, cache_dir, batch_size=sweep.BATCH_SIZE, timeout=BATCH_WINDOW_S) as pipeline:
        for config in configs:
            await sweep.run_config(pipeline, config)
    return _cost(model, pipeline.ledger.total().upstream_calls, time.perf_counter() - started)


# -- the report ---------------------------------------------------------------------------------

MEASURES = (
    ("requests", "requests", "{:,}"),
    ("calls", "calls", "{:,}"),
    ("samples generated", "samples", "{:,}"),
    ("tokens", "tokens", "{:,}"),
    ("modeled s", "modeled_seconds", "{:,.1f}"),
    ("wall s (noisy)", "wall_seconds", "{:,.2f}"),
)


def _ratio(other: float, ours: float) -> str:
    if ours == 0:
        return "inf" if other else "1.0x"
    return f"{other / ours:.1f}x"


def _value(fmt: str, value: Optional[float]) -> str:
    return "-" if value is None else fmt.format(value)


def line(name: str, direct: Cost, ours: Cost, reference: Optional[ReferenceRun] = None) -> str:
    """One workload: ``direct -> ours (direct/ours)`` for every measure, then ``vs 0.0.6 ...``.

    Without ``reference`` the ``vs 0.0.6`` part is left out; a failed reference run prints ``-``.
    """
    cells = [f"{name:<20}"]
    for label, attribute, fmt in MEASURES:
        a, b = getattr(direct, attribute), getattr(ours, attribute)
        cell = f"{label} {_value(fmt, a)} -> {_value(fmt, b)}"
        if a is not None and b is not None:
            cell += f" ({_ratio(a, b)})"
        if reference is not None:
            c = None if reference.cost is None else getattr(reference.cost, attribute)
            cell += f" vs 0.0.6 {_value(fmt, c)}"
            if c is not None and b is not None:
                cell += f" ({_ratio(c, b)})"
        cells.append(cell)
    return " | ".join(cells)


def _sum(first: Optional[ReferenceRun], second: Optional[ReferenceRun]) -> Optional[ReferenceRun]:
    if first is None or second is None:
        return None
    if first.cost is None or second.cost is None:
        return ReferenceRun(None)
    return ReferenceRun(first.cost + second.cost)


async def bench(seed: int, reference: Optional[Reference] = None) -> list[str]:
    """Run our workloads; one report line each. With ``reference``, each line also compares to it.

    ``reference`` holds 0.0.6's results, measured beforehand by :func:`run_reference`; a
    workload it lacks is shown as ``-``.
    """
    sweep = load_sweep()
    missing = ReferenceRun(None)  # reference_notes says so
    measured: dict[str, tuple[Cost, Cost, Optional[ReferenceRun]]] = {}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in WORKLOADS:
            configs = workload.configs(sweep.CONFIGS)
            ours = await run_piped(sweep, configs, seed, Path(tmp) / workload.cache)
            direct = await run_direct(sweep, configs, seed)  # a fresh model every time
            theirs = None if reference is None else reference.runs.get(workload.name, missing)
            measured[workload.name] = (direct, ours, theirs)
            lines.append(line(workload.name, direct, ours, theirs))
            if workload.name == BOTH_RUNS[2]:
                (d1, o1, r1), (d2, o2, r2) = measured[BOTH_RUNS[1]], measured[BOTH_RUNS[2]]
                lines.append(line(BOTH_RUNS[0], d1 + d2, o1 + o2, _sum(r1, r2)))
    return lines


def reference_notes(reference: Reference, batch_size: int) -> list[str]:
    """What 0.0.6 did that the numbers alone do not say: its batch sizes, failures, timeouts."""
    notes = []
    cells = []
    for name, run in reference.runs.items():
        sizes = run.batch_sizes
        if sizes:
            ones = sum(1 for size in sizes if size == 1)
            cells.append(
                f"{name} {len(sizes):,} batches, {ones:,} of one item, mean {sum(sizes) / len(sizes):.2f}"
            )
    if cells:
        notes.append(
            f"0.0.6's batcher (batch_size {batch_size}, window {BATCH_WINDOW_S:g} s; it splits a "
            f"request for n samples into n one-sample items) sent: {'; '.join(cells)}. Its batches "
            "form by timing, so its counts vary a little from run to run"
        )
    for name, run in reference.runs.items():
        for problem in run.problems:
            shown = "numbers shown as -" if run.cost is None else "its wall time is shown as -"
            notes.append(f"0.0.6 {name}: {problem} ({shown})")
    for workload in WORKLOADS:
        if workload.name not in reference.runs:
            notes.append(f"0.0.6 {workload.name}: not measured (numbers shown as -)")
    return notes


# -- the reference ------------------------------------------------------------------------------


class ReferenceUnavailable(Exception):
    """Raised when 0.0.6 cannot be set up or its worker fails; the message says why."""


def _run_worker(python: Path, spec: Mapping[str, Any], cwd: Path, timeout_s: float) -> dict[str, Any]:
    """Run the reference worker on ``spec`` from ``cwd``; its JSON result."""
    command = [str(python), str(REFERENCE_WORKER), json.dumps(spec)]
    try:
        done = subprocess.run(
            command, cwd=cwd, env=_venv_helpers().reference_env(),
            capture_output=True, text=True, timeout=timeout_s,
        )
    except OSError as exc:
        raise ReferenceUnavailable(f"could not start {python}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ReferenceUnavailable(f"the reference worker did not finish within {timeout_s:g} s") from exc
    lines = [text for text in done.stdout.splitlines() if text.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ReferenceUnavailable(
            f"the reference worker failed (exit {done.returncode}) in mode {spec['mode']!r}: " + " / ".join(tail)
        )
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise ReferenceUnavailable(f"the reference worker printed no JSON result: {lines[-1][:200]}") from exc


def prepare_reference(ref_python: Optional[Path], ref_venv: Path, work: Path) -> Path:
    """An interpreter that runs the reference worker: ``ref_python``, or the venv (created if needed).

    A venv that exists but cannot run the worker gets ``cachesaver==0.0.6`` and this checkout's
    worker requirements installed into it (pip does nothing for what is already satisfied).
    """
    venv = _venv_helpers()
    probe = {"mode": "probe", "repository": str(REPOSITORY)}
    if ref_python is not None:
        _run_worker(ref_python, probe, work, 120)
        return ref_python
    ref_venv = ref_venv.resolve()
    python = venv.venv_python(ref_venv)
    try:
        if python.exists():
            try:
                _run_worker(python, probe, work, 120)
                return python
            except ReferenceUnavailable:
                pass
        else:
            print(f"creating the reference venv at {ref_venv} (one-off) ...", file=sys.stderr, flush=True)
            venv.create_venv(ref_venv, work)
        requirements = [venv.REFERENCE_REQUIREMENT, *OUR_WORKER_REQUIREMENTS]
        print(f"installing {', '.join(requirements)} into {ref_venv} ...", file=sys.stderr, flush=True)
        venv.pip_install(python, requirements, work)
    except venv.ReferenceSetupError as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1].strip()}"
        raise ReferenceUnavailable(
            f"{reason}; fix that, or pass --ref-python with an interpreter that has {venv.REFERENCE_REQUIREMENT}"
        ) from exc
    _run_worker(python, probe, work, 120)  # raises with the worker's explanation
    return python


def run_reference(
    python: Path, seed: int, batch_size: int, work: Path, run_timeout_s: float, close_timeout_s: float
) -> Reference:
    """Every workload through 0.0.6, in one worker process run from ``work`` (outside the repository)."""
    configs = list(load_sweep().CONFIGS)
    spec = {
        "mode": "sweep",
        "repository": str(REPOSITORY),
        "seed": seed,
        "batch_size": batch_size,
        "timeout_s": BATCH_WINDOW_S,
        "run_timeout_s": run_timeout_s,
        "close_timeout_s": close_timeout_s,
        "work_dir": str(work),
        "workloads": [
            {"name": w.name, "cache": w.cache, "configs": [configs.index(c) for c in w.configs(configs)]}
            for w in WORKLOADS
        ],
    }
    timeout_s = len(WORKLOADS) * (run_timeout_s + close_timeout_s) + 60
    return Reference.from_worker(_run_worker(python, spec, work, timeout_s))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="SimulatedLLM seed (default 0)")
    _venv_helpers().add_reference_arguments(parser, extra_packages=", anyio and diskcache")
    parser.add_argument("--no-reference", action="store_true", help="do not run 0.0.6 (our lines only)")
    parser.add_argument("--run-timeout-s", type=float, default=300.0,
                        help="abandon a 0.0.6 workload after this many seconds (default 300)")
    parser.add_argument("--close-timeout-s", type=float, default=30.0,
                        help="abandon 0.0.6's cleanup() after this many seconds (default 30)")
    parser.add_argument("--check", action="store_true",
                        help="exit 2 when the reference could not be run or one of its workloads failed")
    args = parser.parse_args(argv)
    batch_size = load_sweep().BATCH_SIZE

    reference: Optional[Reference] = None
    why_missing = "not requested (--no-reference)" if args.no_reference else None
    if not args.no_reference:
        with tempfile.TemporaryDirectory(prefix="bench-simulated-ref-") as tmp:
            work = Path(tmp)
            try:
                python = prepare_reference(args.ref_python, args.ref_venv, work)
                print(f"running the sweep through cachesaver==0.0.6 with {python} ...", file=sys.stderr, flush=True)
                reference = run_reference(
                    python, args.seed, batch_size, work, args.run_timeout_s, args.close_timeout_s
                )
            except ReferenceUnavailable as exc:
                why_missing = str(exc)

    print(
        f"backend: SimulatedLLM (seed {args.seed}, time_scale 0); workload: examples/sweep.py; "
        f"batch size {batch_size}, batch window {BATCH_WINDOW_S:g} s"
    )
    if reference is not None:
        library = reference.library
        print(
            f"reference: cachesaver {library.get('version')} from PyPI at {library.get('location')} "
            f"(Python {library.get('python')}), diskcache.Cache(dir), the same SimulatedLLM from this checkout"
        )
        print(
            "each measure reads: direct -> ours through OnlineAPI (direct/ours) vs 0.0.6 through its "
            "OnlineAPI (0.0.6/ours); above 1x, ours spends less"
        )
    else:
        print(f"reference: cachesaver==0.0.6 not measured: {why_missing}")
        print("each measure reads: direct -> ours through OnlineAPI (direct/ours); above 1x, ours spends less")
    for text in anyio.run(bench, args.seed, reference):
        print(text)
    if reference is not None:
        for note in reference_notes(reference, batch_size):
            print(note)
    incomplete = reference is None or any(run.problems for run in reference.runs.values())
    return 2 if (args.check and incomplete and not args.no_reference) else 0


if __name__ == "__main__":
    sys.exit(main())
