"""Resident memory per distinct request: this checkout against ``cachesaver==0.0.6``, one process each.

One invocation, from the repository root with the project's interpreter::

    .venv/bin/python benchmarks/bench_memory.py                    # 200,000 requests (a few minutes)
    .venv/bin/python benchmarks/bench_memory.py --requests 20000   # a quick run
    .venv/bin/python benchmarks/bench_memory.py --only ours        # no reference venv

Each library runs in a fresh subprocess (the workers and the reference venv of
``bench_pipeline.py``, mode ``memory`` of ``_workload.py``): ``--requests`` distinct requests
(``n=1``, distinct prompts and request ids, one namespace) go through ONE
``OnlineAPI(model, cache, --batch-size, timeout=--timeout-s)`` on a fresh ``diskcache``
directory under ``benchmarks/.work/``, awaited in gathered chunks of ``--chunk``. The worker
reads its own resident size (``VmRSS`` of ``/proc/self/status``, after ``gc.collect()``) once
the pipeline is built (0 requests) and after a quarter, half and all of the requests, and
once more after closing. Each chunk's requests and responses are dropped before the next, and
our model is ``ScriptedModel(keep_log=False)`` (0.0.6's is ``_workload.CountingModel``): neither
keeps anything per call, so what grows is the pipeline.

The report gives RSS at each checkpoint, bytes per distinct request over each interval and
overall, and the target of issue 11: at most 250 B per distinct request over 200,000. Exit
status 0, 2 when a step failed; with ``--check``, 1 when the target is missed or a sanity check
of ours fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from _reference_venv import add_reference_arguments
from bench_pipeline import (
    OURS_WORKER,
    WORK_ROOT,
    BenchmarkError,
    Side,
    _describe,
    _ensure_reference,
    _fresh_dir,
    _ours_env,
    _profile_spec,
    _progress,
    _run_worker,
)

BYTES_PER_REQUEST_TARGET = 250
TARGET_REQUESTS = 200_000
MIB = 1024 * 1024


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Resident memory per distinct request, ours and 0.0.6.")
    parser.add_argument("--requests", type=int, default=TARGET_REQUESTS,
                        help=f"distinct requests (default {TARGET_REQUESTS}); RSS is read at 0, 1/4, 1/2 and all")
    parser.add_argument("--chunk", type=int, default=1000,
                        help="requests gathered at once (default 1000)")
    parser.add_argument("--batch-size", type=int, default=16, help="OnlineAPI batch_size (default 16)")
    parser.add_argument("--timeout-s", type=float, default=0.01, help="batch window in seconds (default 0.01)")
    parser.add_argument("--only", choices=("ours", "ref"), help="run one library only")
    add_reference_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write every raw result to this file")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run ours under cProfile: DIR/ours-memory.pstats and a top-30 .txt "
                             "(slower; RSS includes the profiler's tables)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the target is missed or a sanity check of ours fails")
    args = parser.parse_args(argv)
    if args.requests < 4 or args.chunk < 1 or args.batch_size < 1:
        parser.error("--requests must be >= 4, --chunk and --batch-size >= 1")
    return args


def checkpoints(requests: int) -> List[int]:
    """The request counts at which RSS is read: 0, a quarter, a half and all of them."""
    return sorted({0, requests // 4, requests // 2, requests})


def _report(args: argparse.Namespace, results: Dict[str, Dict[str, Any]]) -> bool:
    """Print the report; True when the target (if measured) and ours' sanity checks passed."""
    points = checkpoints(args.requests)
    print(
        f"cachesaver memory benchmark: {args.requests:,} distinct requests (n=1, one namespace) through one "
        f"OnlineAPI(batch_size={args.batch_size}, timeout={args.timeout_s:g}) on a fresh cache, gathered in "
        f"chunks of {args.chunk:,}; resident size (VmRSS) after gc.collect()"
    )
    for label in ("ours", "ref"):
        if label in results:
            print(f"  {label + ':':5} {_describe(results[label]['library'])}, "
                  f"model {results[label]['memory']['model']}")
    print()
    header = f"{'requests':>16}  {'ours MiB':>9}  {'ours B/req':>10}  {'ref MiB':>9}  {'ref B/req':>10}"
    print(header)
    print("-" * len(header))

    def rss(label: str, point: int) -> Optional[int]:
        return results[label]["memory"]["rss_bytes"][str(point)] if label in results else None

    def per_request(label: str, low: int, high: int) -> Optional[float]:
        if label not in results or high == low:
            return None
        return (rss(label, high) - rss(label, low)) / (high - low)

    def cells(values: List[Optional[float]]) -> str:
        """(ours RSS, ours B/req, ref RSS, ref B/req) as columns; None shows as ``-``."""
        out = []
        for index, value in enumerate(values):
            if value is None:
                out.append(f"{'-':>{9 if index % 2 == 0 else 10}}")
            elif index % 2 == 0:
                out.append(f"{value / MIB:>9.1f}")
            else:
                out.append(f"{value:>10,.0f}")
        return "  ".join(out)

    previous = None
    for point in points:
        row = []
        for label in ("ours", "ref"):
            row += [rss(label, point), None if previous is None else per_request(label, previous, point)]
        print(f"{point:>16,}  {cells(row)}")
        previous = point
    overall = {label: per_request(label, 0, args.requests) for label in ("ours", "ref")}
    print(f"{'overall':>16}  {cells([None, overall['ours'], None, overall['ref']])}")
    closed = [results[label]["memory"]["rss_after_close_bytes"] if label in results else None
              for label in ("ours", "ref")]
    print(f"{'after close':>16}  {cells([closed[0], None, closed[1], None])}")
    times = [f"{label} {results[label]['memory']['elapsed_s']:.1f} s" for label in ("ours", "ref") if label in results]
    print(f"  B/req = RSS growth over the interval / requests in it; time to send them: {', '.join(times)}")
    print()
    ours = overall["ours"]
    met = None if ours is None else ours <= BYTES_PER_REQUEST_TARGET
    scale = "" if args.requests == TARGET_REQUESTS else f" (measured over {args.requests:,})"
    target = f"ours <= {BYTES_PER_REQUEST_TARGET} B per distinct request over {TARGET_REQUESTS:,}{scale}"
    value = "-" if ours is None else f"{ours:,.0f} B"
    print(f"target: {target}: {value}, met {'-' if met is None else ('yes' if met else 'NO')}")
    problems = []
    for label, result in results.items():
        memory = result["memory"]
        if memory["short_responses"]:
            problems.append(f"{label}: {memory['short_responses']} responses without exactly one sample")
        if memory["cached_samples"]:
            problems.append(f"{label}: {memory['cached_samples']} samples flagged cached on a fresh cache")
    if problems:
        print("sanity checks (samples, flags):")
        for problem in problems:
            print(f"  {problem}")
    else:
        print("sanity checks (samples, flags): all passed")
    print(f"targets met: {int(bool(met))} of {0 if met is None else 1}")
    return met is not False and not any(p.startswith("ours:") for p in problems)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    WORK_ROOT.mkdir(exist_ok=True)
    work = WORK_ROOT / f"memory-{os.getpid()}-{int(time.time())}"
    work.mkdir()
    try:
        sides = []
        if args.only != "ref":
            sides.append(Side("ours", Path(sys.executable), OURS_WORKER, _ours_env()))
        if args.only != "ours":
            sides.append(_ensure_reference(args, work))
        results: Dict[str, Dict[str, Any]] = {}
        for side in sides:
            _progress(f"  {side.label}: {args.requests:,} distinct requests")
            directory = _fresh_dir(work, side.label)
            spec = {"mode": "memory", "requests": args.requests, "checkpoints": checkpoints(args.requests),
                    "chunk": args.chunk, "batch_size": args.batch_size, "timeout_s": args.timeout_s,
                    "work_dir": str(directory)}
            spec.update(_profile_spec(side, args))
            results[side.label] = _run_worker(side, spec, work)
            shutil.rmtree(directory, ignore_errors=True)
        ok = _report(args, results)
        if args.json is not None:
            args.json.write_text(json.dumps(
                {"arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "results": results},
                indent=2,
            ))
        return 1 if (args.check and not ok) else 0
    except BenchmarkError as exc:
        print(f"bench_memory.py: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            WORK_ROOT.rmdir()
        except OSError:
            pass  # not empty: another run left something


if __name__ == "__main__":
    sys.exit(main())
