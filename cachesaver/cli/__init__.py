"""The ``cachesaver`` command line (the console script and ``python -m cachesaver``).

One module per command: :mod:`~cachesaver.cli.run` holds ``cachesaver run`` (run a task, or one
shard of it, through a cached pipeline), with the top-level parser, its exit statuses and
:func:`main`; :mod:`~cachesaver.cli.cache` holds ``cachesaver cache ...`` (inspect, export,
import, prune, diff a cache; explain a miss); :mod:`~cachesaver.cli.merge` holds
``cachesaver merge`` (merge the shards of a sharded run). ``cachesaver.cli:main`` is the entry
point.
"""

from __future__ import annotations

from .run import build_parser, main

__all__ = ["build_parser", "main"]
