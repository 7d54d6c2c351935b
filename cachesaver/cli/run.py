"""The ``cachesaver`` command line.

``cachesaver run TASK --out DIR --namespace NS`` runs every sample of a task through a cached
pipeline and writes ``DIR/<task name>/{runs.jsonl, error.jsonl, overall.json}``; TASK is
``package.module:Class`` or ``path/to/file.py:Class``. Running it again into the same DIR
resumes; running it into a new DIR with the same ``--cache``, namespace, backend and model
replays the earlier run from the cache, and ``--mode replay`` (or its older spelling
``--replay-only``, or ``CACHESAVER_MODE=replay``) guarantees no model is called (a sample that
needs an uncached answer fails, its error explaining the miss). ``--mode refresh`` asks the model
again for every request and ``--mode bypass`` stores nothing (see :mod:`cachesaver.modes`).
``python -m cachesaver`` is the same command; ``cachesaver cache ...`` inspects and ships caches
(:mod:`cachesaver.cli.cache`).

Exit status: 0 when every sample finished, 1 when some failed (see error.jsonl) or the task's
``calculate_overall`` failed (overall.json is still written, its ``custom`` holding the error),
2 for a bad command line or configuration (one line on stderr, no traceback, as for every
command of the console script), and 141 (128 +
SIGPIPE, what a shell reports for a command that a closed pipe stopped) when standard output
was closed before everything was printed, as ``cachesaver run ... | head -1`` does: the run
itself has finished and written its files by then, only the summary was cut short, and that
ends quietly, without a traceback.

Sharded runs (:mod:`cachesaver.tasks.shards`): ``cachesaver run ... --shard K/N`` runs the
samples at the positions p of ``get_indices()`` with ``p % N == K - 1`` (K from 1 to N) into
``DIR/<task name>/shard-K-of-N/``; the last shard to finish writes the merged ``runs.jsonl``,
``error.jsonl`` and ``overall.json`` into ``DIR/<task name>/``, the same as one unsharded run's.
``--run-id ID`` makes the pipeline a worker of the shared run ID (give every shard the same one:
the shards are then one run, whether they run at once or one after another). With ``--shard``,
a shard's pipeline keeps the run open ``--linger`` seconds (default :data:`SHARD_LINGER_S`, one
day) after it closes, for the next shard to join, and the shard whose merge completes ends the
run once its pipeline is closed: a later command with the same run id (a replay-only re-run
with any N) is a new run.
``cachesaver merge TASK --out DIR`` merges the finished shards by hand: exit status 0 when it
merged and every sample finished, 1 when shards are still missing (nothing written) or some
sample failed or ``calculate_overall`` failed, 2 for a bad command line or configuration.

``cachesaver --version`` prints ``cachesaver <version>`` and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import anyio

from ..errors import CacheSaverError, ConfigurationError
from ..modes import MODE_ENV, MODES, resolve_mode
from ..models.registry import DEFAULT_PROVIDER, PROVIDERS
from ..tasks.backends import backend_names, default_backend, default_model, make_model, request_factory
from ..tasks.loading import load_task, parse_task_options
from ..tasks.shards import Shard
from ..tasks.summary import RunSummary
from .cache import OneLineParser
from .cache import add_parser as add_cache_commands
from .cache import run as run_cache
from .merge import add_merge_parser, main_merge

if TYPE_CHECKING:
    from ..store.shared_runs import SharedRun

__all__ = ["build_parser", "main"]

DEFAULT_CACHE = "caches/runs"
SHARD_LINGER_S = 86400.0
"""How long a shard with ``--run-id`` keeps its shared run open after it closes (one day),
unless ``--linger`` says otherwise; its claims are kept :data:`~cachesaver.store.shared_runs.
CLAIMS_KEEP_S` (one day) longer than that."""
EXIT_BROKEN_PIPE = 141
"""The exit status when standard output was closed early (128 + SIGPIPE)."""


def package_version() -> str:
    """The installed cachesaver's version (its distribution metadata, else ``__version__``)."""
    try:
        return importlib.metadata.version("cachesaver")
    except importlib.metadata.PackageNotFoundError:
        from .. import __version__

        return str(__version__)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="cachesaver",
        description="Cheaper, faster, reproducible LLM experiments.",
    )
    parser.add_argument("--version", action="version", version=f"cachesaver {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a task (resumable; replays from the cache)",
        description="Run every sample of TASK through a cached pipeline and write the results to "
        "OUT/<task name>/ (runs.jsonl, error.jsonl, overall.json).",
    )
    run.add_argument("task", metavar="TASK", help="the task class: package.module:Class or path/file.py:Class")
    run.add_argument("--out", required=True, metavar="DIR", help="output directory (re-use it to resume)")
    run.add_argument("--namespace", required=True, metavar="NS", help="the run's cache namespace")
    run.add_argument(
        "--backend", choices=backend_names(), default=None,
        help=f"the model backend (default: {DEFAULT_PROVIDER} if {PROVIDERS[DEFAULT_PROVIDER].api_key_env} "
        "is set, else simulated)",
    )
    run.add_argument("--model", metavar="M", help="model name (default depends on the backend)")
    run.add_argument("--concurrency", type=int, metavar="K", help="samples at once (default: the task's)")
    run.add_argument(
        "--mode", choices=MODES, default=None,
        help="the cache mode: record (default), replay (call no model: a miss fails that sample), "
        f"refresh (new samples for every request), bypass (store nothing); default ${MODE_ENV}, else record",
    )
    run.add_argument(
        "--replay-only", action="store_true",
        help="the same as --mode replay",
    )
    run.add_argument(
        "--cache", default=DEFAULT_CACHE, metavar="DIR|URL",
        help=f"cache directory, or a Redis URL (redis://, unix://, redis+cluster://; default {DEFAULT_CACHE})",
    )
    run.add_argument("--batch-size", type=int, default=8, metavar="B", help="requests per upstream batch (default 8)")
    run.add_argument("--temperature", type=float, help="sampling temperature (part of the cache key)")
    run.add_argument("--max-tokens", type=int, metavar="N", help="completion token limit (part of the cache key)")
    run.add_argument("--system-prompt", metavar="TEXT", help="a system message before every conversation")
    run.add_argument("--sample-timeout", type=float, metavar="S", help="seconds a sample may take (default: no limit)")
    run.add_argument("--seed", type=int, default=0, help="seed of the simulated backend (default 0)")
    run.add_argument(
        "--time-scale", type=float, default=0.0, metavar="X",
        help="real seconds slept per modeled second on the simulated backend (default 0: never sleep)",
    )
    run.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE",
        help="keyword argument for the task class (VALUE read as JSON when it parses); repeatable",
    )
    run.add_argument(
        "--shard", metavar="K/N",
        help="run only the K-th of N slices of the samples (positions p of get_indices() with "
        "p %% N == K-1, K from 1); the last shard to finish merges the slices into OUT",
    )
    run.add_argument(
        "--run-id", metavar="ID",
        help="join the shared run ID: the pipelines with this run id on this cache are one run while "
        "any of them is open or lingers (give every shard the same one; they may run at once or one "
        "after another)",
    )
    run.add_argument(
        "--linger", type=float, default=None, metavar="S",
        help=f"with --run-id, keep the run open S seconds after this command's pipeline closes, for "
        f"later commands to join (0, or at least a worker's membership ttl; default {SHARD_LINGER_S:g} "
        "with --shard, else 0); the shard whose merge completes ends the run",
    )
    run.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    add_cache_commands(commands)
    add_merge_parser(commands)
    return parser


def _is_url(cache: str) -> bool:
    """Whether ``--cache`` names a store by URL (``redis://``, ``unix://``, ...) rather than a directory."""
    return "://" in cache


def _shared_run(args: argparse.Namespace) -> Optional[SharedRun]:
    """The shared run of ``--run-id`` and ``--linger`` (None without ``--run-id``): it lingers
    ``--linger`` seconds (default :data:`SHARD_LINGER_S` with ``--shard``, else 0), and keeps its
    claims :data:`~cachesaver.store.shared_runs.CLAIMS_KEEP_S` longer than that. A bad
    ``--linger`` is a ConfigurationError naming the option."""
    from ..store.shared_runs import CLAIMS_KEEP_S, RUN_TTL_S, SharedRun

    if args.run_id is None:
        if args.linger is not None:
            raise ConfigurationError("--linger needs --run-id: only a shared run can linger")
        return None
    linger = args.linger if args.linger is not None else SHARD_LINGER_S if args.shard is not None else 0.0
    if not math.isfinite(linger) or linger < 0 or 0 < linger < RUN_TTL_S:
        raise ConfigurationError(
            f"--linger takes 0 (the run ends when its last pipeline closes) or a finite number of seconds "
            f"of at least {RUN_TTL_S:g} (a worker's membership time to live), got {linger:g}"
        )
    return SharedRun(args.run_id, linger_s=linger, keep_s=linger + CLAIMS_KEEP_S)


def _pipeline_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's keyword arguments besides model and cache: the one place ``--run-id``
    reaches the pipeline (it is passed only when given)."""
    options: dict[str, Any] = {"batch_size": args.batch_size, "mode": args.mode}
    run = _shared_run(args)
    if run is not None:
        options["run_id"] = run
    return options


def _modeled_seconds(model: Any) -> Optional[float]:
    stats = getattr(model, "stats", None)
    if not callable(stats):
        return None
    value = getattr(stats(), "modeled_seconds", None)
    return float(value) if isinstance(value, (int, float)) else None


async def _run(args: argparse.Namespace) -> RunSummary:
    from ..models.replay_only import ReplayOnlyModel
    from ..pipelines import OnlineAPI
    from ..tasks.agents import PipelineAgent
    from ..tasks.runner import run_task

    task = load_task(args.task, **parse_task_options(args.task_option))
    replay = args.mode == "replay"
    backend = args.backend or default_backend()
    model_name = args.model or default_model(backend)
    # A URL is passed as typed (a Path would fold its "//"); a directory as a path.
    cache = args.cache if _is_url(args.cache) else str(Path(args.cache))
    runner_started = False
    try:
        async with contextlib.AsyncExitStack() as stack:
            if replay and not _is_url(cache) and not Path(cache).is_dir():
                raise ConfigurationError(
                    f"--mode replay needs the cache of an earlier run, and {cache!r} does not exist; "
                    "pass the --cache directory that run used"
                )
            compose = getattr(task, "simulated_compose", None)
            # In a replay-only run the backend only builds requests (SDK requests name their
            # backend and base URL), so they key exactly like the run being replayed.
            backend_model = make_model(
                backend, model_name, seed=args.seed, time_scale=args.time_scale,
                compose=compose if callable(compose) else None, requests_only=replay,
            )
            if callable(getattr(backend_model, "aclose", None)):
                stack.push_async_callback(backend_model.aclose)
            model: Any = ReplayOnlyModel() if replay else backend_model
            started_modeled = _modeled_seconds(model)
            pipeline = await stack.enter_async_context(OnlineAPI(model, cache, **_pipeline_options(args)))
            agent = PipelineAgent(
                pipeline,
                namespace=args.namespace,
                model=model_name,
                temperature=args.temperature,
                max_tokens=args.max_tokens,
                system_prompt=args.system_prompt,
                request_factory=request_factory(backend_model),
            )
            runner_started = True
            summary = await run_task(
                task,
                agent,
                args.out,
                concurrency=args.concurrency,
                sample_timeout_s=args.sample_timeout,
                progress=not args.no_progress,
                ledger=pipeline.ledger,
                shard=args.shard,
            )
    finally:
        if not runner_started:
            task.release()  # run_task releases the task itself once it has started
    notes = [("backend", "replay-only (no model)" if replay else f"{backend} ({model_name})")]
    run = _shared_run(args)
    outcome = None if run is None else await _after_run(cache, run, summary)
    if outcome is not None:
        notes.append(("shared run", outcome))
    if args.mode in ("refresh", "bypass"):
        notes.append(("mode", args.mode))
    if replay:
        notes.append(("cache misses", f"{len(model.misses)} (no request reached any model)"))
    modeled = _modeled_seconds(model)
    if modeled is not None and started_modeled is not None:
        notes.append(("modeled time", f"{modeled - started_modeled:.2f} s (simulated GPU-busy seconds)"))
    return summary.with_notes(*notes)


async def _after_run(cache: str, run: SharedRun, summary: RunSummary) -> Optional[str]:
    """End the shared run once this shard's merge completed (its pipeline is closed by now);
    what became of the run, for the summary (None: nothing worth a row)."""
    from ..errors import StoreError
    from ..store.shared_runs import end_run

    if summary.merge is not None and summary.merge.complete:
        try:
            await anyio.to_thread.run_sync(end_run, cache, run.run_id)
        except StoreError as exc:  # the run is done and merged: not a failure of it
            return (
                f"{run.run_id}: could not end it ({exc}); it ends {run.linger_s:g} s after this shard "
                "closed, or at once with cachesaver.store.shared_runs.end_run"
            )
        return f"{run.run_id}: ended (every shard is merged)"
    if run.linger_s:
        return f"{run.run_id}: open {run.linger_s:g} s more for later shards"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    When standard output is closed early (piped into ``head``), returns
    :data:`EXIT_BROKEN_PIPE` quietly instead of raising BrokenPipeError.
    """
    try:
        try:
            status = _main(argv)
        finally:  # also after argparse's exit: a closed pipe shows up here for buffered output
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    return status


def _discard_stdout() -> None:
    """Point standard output at the null device, so the interpreter's final flush of what is
    still buffered for the closed pipe cannot fail (the recipe of Python's signal docs)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (captured in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _check_run_arguments(args: argparse.Namespace) -> None:
    """Turn ``--shard`` into a Shard and check ``--run-id`` (ConfigurationError, one line)."""
    if args.shard is not None:
        args.shard = Shard.parse(args.shard)
    if args.run_id is not None and not args.run_id.strip():
        raise ConfigurationError("--run-id must not be empty; give every shard of the run the same name")
    _shared_run(args)  # a bad --linger


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command == "cache":
        return run_cache(args)
    if args.command == "merge":
        return main_merge(args)
    try:
        _check_run_arguments(args)
    except ConfigurationError as exc:
        print(f"cachesaver: error: {exc}", file=sys.stderr)
        return 2
    if args.shard is not None and args.run_id is None and not args.replay_only and args.mode != "replay":
        print(
            f"cachesaver: note: shard {args.shard} without --run-id is a run of its own: a prompt that "
            "several shards ask in one namespace may get the same stored sample in each (give every "
            "shard the same --run-id: the shards are then one run, at once or one after another)",
            file=sys.stderr,
        )
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.replay_only:
        if args.mode not in (None, "replay"):
            parser.error(f"--replay-only means --mode replay; it cannot be combined with --mode {args.mode}")
        args.mode = "replay"
    try:
        if args.mode is None:
            args.mode = resolve_mode()  # CACHESAVER_MODE, else record
        summary = anyio.run(_run, args, backend="asyncio")
    except ConfigurationError as exc:
        print(f"cachesaver: error: {exc}", file=sys.stderr)
        return 2
    except CacheSaverError as exc:
        print(f"cachesaver: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(summary.render())
    status = 0
    if summary.failed:
        print(f"\n{summary.failed} sample(s) failed; see {summary.directory}/error.jsonl", file=sys.stderr)
        status = 1
    if summary.overall_error is not None:
        again = (
            "merge again (cachesaver merge TASK --out DIR)" if summary.shard is not None
            else "run the same command again: finished samples are not run again"
        )
        print(
            f"\ncachesaver: the task's calculate_overall failed ({summary.overall_error}); every sample "
            f"is saved in {summary.directory}/runs.jsonl and overall.json holds the error under 'custom'. "
            f"Fix calculate_overall and {again}.",
            file=sys.stderr,
        )
        status = 1
    return status
