"""What the cache pipeline saves on the main job's sweep, measured on the simulated backend.

Each workload runs the Tree-of-Thoughts sweep of ``examples/sweep.py`` twice on a fresh
SimulatedLLM with the same seed: once calling the model directly (every request is its own
call, nothing is remembered), once through :class:`~cachesaver.pipelines.OnlineAPI` with a
fresh cache directory. It prints one line per workload:

* ``requests``: requests that reached the model (a merged group of identical requests is one);
* ``calls``: model invocations (the pipeline sends batches, the direct run one call per request);
* ``samples generated``: samples the model produced;
* ``tokens``: prompt plus completion tokens the model processed;
* ``modeled s``: the simulated cluster's GPU-busy seconds (prefill after KV-cache reuse,
  decode, per-call overhead);
each as ``direct -> pipeline (direct / pipeline)``.

Workloads:

* ``sweep``: the six configurations, smallest first, as the main job runs them;
* ``sweep rerun``: the same sweep once more on the same cache (the direct run, on a fresh model
  with the same seed, pays again);
* ``sweep, both runs``: the two lines above added up;
* ``sweep largest-first``: the configurations in reverse order;
* ``one config``: only the largest configuration, so no other namespace's samples exist and
  only de-duplication and batching can save anything.

Usage: ``.venv/bin/python benchmarks/bench_simulated.py [--seed N]``. Needs no network and
never sleeps (``time_scale=0``); it takes a few seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import anyio

from cachesaver.models.simulated import SimulatedLLM
from cachesaver.pipelines import OnlineAPI

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sweep.py"


def load_sweep() -> ModuleType:
    """Import examples/sweep.py (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("cachesaver_sweep_example", EXAMPLE)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the sweep example from {EXAMPLE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Cost:
    requests: int
    calls: int
    samples: int
    tokens: int
    modeled_seconds: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(a + b for a, b in zip(astuple(self), astuple(other))))


def _ratio(direct: float, piped: float) -> str:
    if piped == 0:
        return "inf" if direct else "1.0x"
    return f"{direct / piped:.1f}x"


async def run_direct(sweep: ModuleType, configs: Sequence[Any], seed: int) -> Cost:
    model = SimulatedLLM(seed=seed, compose=sweep.compose_game24)
    for config in configs:
        await sweep.run_config(model, config)
    stats = model.stats()
    return Cost(stats.requests, stats.calls, stats.samples, stats.tokens, stats.modeled_seconds)


async def run_piped(sweep: ModuleType, configs: Sequence[Any], seed: int, cache_dir: Path) -> Cost:
    model = SimulatedLLM(seed=seed, compose=sweep.compose_game24)
    async with OnlineAPI(model, cache_dir, batch_size=sweep.BATCH_SIZE) as pipeline:
        for config in configs:
            await sweep.run_config(pipeline, config)
        requests = pipeline.ledger.total().upstream_calls
    stats = model.stats()
    return Cost(requests, stats.calls, stats.samples, stats.tokens, stats.modeled_seconds)


def line(name: str, direct: Cost, piped: Cost) -> str:
    """One workload: ``direct -> pipeline (ratio)`` for every measure."""
    cells = [f"{name:<20}"]
    for label, attribute, fmt in (
        ("requests", "requests", "{:,}"),
        ("calls", "calls", "{:,}"),
        ("samples generated", "samples", "{:,}"),
        ("tokens", "tokens", "{:,}"),
        ("modeled s", "modeled_seconds", "{:,.1f}"),
    ):
        a, b = getattr(direct, attribute), getattr(piped, attribute)
        cells.append(f"{label} {fmt.format(a)} -> {fmt.format(b)} ({_ratio(a, b)})")
    return " | ".join(cells)


async def bench(seed: int) -> list[str]:
    sweep = load_sweep()
    configs = list(sweep.CONFIGS)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "sweep"
        first = await run_piped(sweep, configs, seed, cache)
        direct = await run_direct(sweep, configs, seed)
        lines.append(line("sweep", direct, first))
        again = await run_piped(sweep, configs, seed, cache)
        rerun = await run_direct(sweep, configs, seed)  # a fresh model: the same run again
        lines.append(line("sweep rerun", rerun, again))
        lines.append(line("sweep, both runs", direct + rerun, first + again))
        reverse = configs[::-1]
        lines.append(line("sweep largest-first", await run_direct(sweep, reverse, seed),
                          await run_piped(sweep, reverse, seed, Path(tmp) / "reverse")))
        largest = configs[-1:]
        lines.append(line("one config", await run_direct(sweep, largest, seed),
                          await run_piped(sweep, largest, seed, Path(tmp) / "one")))
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="SimulatedLLM seed (default 0)")
    args = parser.parse_args(argv)
    print(
        f"backend: SimulatedLLM (seed {args.seed}, time_scale 0); workload: examples/sweep.py; "
        "each measure reads direct -> through OnlineAPI (direct / pipeline)"
    )
    for text in anyio.run(bench, args.seed):
        print(text)


if __name__ == "__main__":
    main()
