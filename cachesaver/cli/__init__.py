"""The ``cachesaver`` command line (the console script and ``python -m cachesaver``).

One module per command: :mod:`~cachesaver.cli.run` holds ``cachesaver run`` (run a task through
a cached pipeline), with the parser, the exit statuses and :func:`main`. ``cachesaver.cli:main``
is the entry point.
"""

from __future__ import annotations

from .run import build_parser, main

__all__ = ["build_parser", "main"]
