"""Run the ``cachesaver`` command line inside the test process, as the console script would.

The console script is ``sys.exit(cachesaver.cli.main())``; :func:`run_cli` does the same call in
this process (a fresh interpreter costs about half a second per command, and most CLI tests run
several commands), and hands back what ``subprocess.run(..., capture_output=True, text=True)``
would: the exit status, standard output and standard error.

What a real process would show is kept:

- the exit status follows ``sys.exit``: ``main``'s return value, or the code of a
  ``SystemExit`` (argparse's usage errors exit 2); ``None`` is 0, a message is printed to
  standard error and gives 1;
- ``cwd``, ``env`` and ``stdin`` are applied for the length of the call and restored after it;
- log records of level WARNING and above are written to the captured standard error, as
  Python's last-resort handler does in a process whose logging is not configured;
- an exception that escapes ``main`` is not turned into an exit status: it propagates and fails
  the test with its traceback (a real process would print it and exit 1).

What it cannot show, and what the tests that need it run as real processes for: the console
script and ``python -m cachesaver`` as launchers (``sys.path``, ``--version``), output into a
closed pipe, a progress bar on a real stderr, and several processes at once.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from cachesaver.cli import main

__all__ = ["run_cli"]


@contextmanager
def _environment(cwd: Path, env: Mapping[str, str] | None, stdin: str | None) -> Iterator[None]:
    saved_cwd, saved_stdin = os.getcwd(), sys.stdin
    saved_env = {name: os.environ.get(name) for name in (env or {})}
    os.chdir(cwd)
    os.environ.update(env or {})
    sys.stdin = io.StringIO(stdin or "")
    try:
        yield
    finally:
        sys.stdin = saved_stdin
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.chdir(saved_cwd)


def _exit_status(code: object, stderr: io.StringIO) -> int:
    """What ``sys.exit(code)`` makes the process exit with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=stderr)
    return 1


def run_cli(
    argv: Sequence[str], *, cwd: Path, stdin: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cachesaver *argv`` run in this process from ``cwd``, with ``env`` added to the
    environment and ``stdin`` as standard input; its exit status and captured output."""
    stdout, stderr = io.StringIO(), io.StringIO()
    last_resort = logging.StreamHandler(stderr)
    last_resort.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(last_resort)
    try:
        with _environment(cwd, env, stdin), redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                code: object = main(list(argv))
            except SystemExit as exc:
                code = exc.code
            status = _exit_status(code, stderr)
    finally:
        root.removeHandler(last_resort)
    return subprocess.CompletedProcess(["cachesaver", *argv], status, stdout.getvalue(), stderr.getvalue())
