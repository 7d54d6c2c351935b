"""``cachesaver merge TASK --out DIR``: merge the finished shards of a sharded run by hand.

The last shard of ``cachesaver run ... --shard K/N`` to finish merges by itself; this command
does the same, e.g. after the shard directories of several hosts were copied into one DIR
(:func:`cachesaver.tasks.shards.merge_shards`). TASK and ``--task-option`` must be those the
shards ran: shards run on another index list are refused.

Exit status: 0 when the merge was written and every sample finished; 1 when shards are missing
(nothing is written; stderr says which), when a sample failed (see error.jsonl) or when the
task's ``calculate_overall`` failed (overall.json is still written, its ``custom`` holding the
error); 2 for a bad command line or configuration (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import CacheSaverError, ConfigurationError
from ..tasks.loading import load_task, parse_task_options
from ..tasks.shards import MergeOutcome, merge_shards

__all__ = ["add_merge_parser", "main_merge"]


def add_merge_parser(commands: Any) -> None:
    """Add the ``merge`` command to the ``cachesaver`` subcommands."""
    merge = commands.add_parser(
        "merge",
        help="merge the finished shards of a sharded run",
        description="Merge OUT/<task name>/shard-K-of-N/ into OUT/<task name>/ (runs.jsonl, "
        "error.jsonl, overall.json), as the last shard to finish does.",
    )
    merge.add_argument("task", metavar="TASK", help="the task class the shards ran")
    merge.add_argument("--out", required=True, metavar="DIR", help="the output directory the shards wrote into")
    merge.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE",
        help="keyword argument for the task class, as given to the shards; repeatable",
    )


def _merge(args: argparse.Namespace) -> MergeOutcome:
    task = load_task(args.task, **parse_task_options(args.task_option))
    try:
        return merge_shards(task, args.out)
    finally:
        task.release()


def main_merge(args: argparse.Namespace) -> int:
    """Run ``cachesaver merge`` with parsed ``args``; returns the exit status."""
    try:
        outcome = _merge(args)
    except ConfigurationError as exc:
        print(f"cachesaver: error: {exc}", file=sys.stderr)
        return 2
    except CacheSaverError as exc:
        print(f"cachesaver: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(outcome.render())
    if not outcome.complete:
        print(f"\ncachesaver: nothing merged: {'; '.join(outcome.waiting)}", file=sys.stderr)
        return 1
    status = 0
    if outcome.failed:
        print(f"\n{outcome.failed} sample(s) failed; see {outcome.directory}/error.jsonl", file=sys.stderr)
        status = 1
    if outcome.overall_error is not None:
        print(
            f"\ncachesaver: the task's calculate_overall failed ({outcome.overall_error}); overall.json "
            "holds the error under 'custom'. Fix calculate_overall and merge again.",
            file=sys.stderr,
        )
        status = 1
    return status
