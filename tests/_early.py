"""Slow subprocesses a test only waits for, run beside the session before their test needs them.

Some tests spend seconds waiting for one process that needs nothing from the test itself
(mypy over the package, a fresh interpreter importing both SDKs, a benchmark script). A test
module registers such a process at import with :func:`early`, naming the tests that read it.
Once collection is done, ``pytest_collection_finish`` in conftest.py calls
:func:`start_selected`: the registered processes that a selected test reads are run one after
another by a background thread, in the order their tests come, while the session runs the
other tests (``pytest_collection_modifyitems`` puts the tests that wait, :func:`waits`, last).
The test calls :meth:`EarlyProcess.wait`.

What is guaranteed: a process none of whose tests is selected never starts; at most one runs
in the background at a time (the machine has two cores: the session keeps one); ``wait``
starts its process at once when the background thread has not yet (a test run some other
way), so a test never depends on the hook; output goes to temporary files, never a pipe that
could fill up; a process sees the session's environment without ``CACHESAVER_MODE`` (which
conftest.py removes for every test); a command given as a function gets a new empty directory
of its own (:attr:`EarlyProcess.directory`) for what it writes; when the session ends a process still
running is killed, the thread joined and the directories removed (:func:`stop_all`, from
``pytest_sessionfinish``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["EarlyProcess", "early", "start_selected", "stop_all", "waits"]

Command = Sequence[str] | Callable[[Path], Sequence[str]]
REMOVED_FROM_THE_ENVIRONMENT = ("CACHESAVER_MODE",)  # as conftest's no_mode_from_the_environment


class EarlyProcess:
    """One registered command, or a function making it from :attr:`directory` (called when the
    process starts); ``tests`` are the node ids (``file::name``, parameters left out) of the
    tests that wait for it."""

    def __init__(self, command: Command, tests: frozenset[str], options: dict[str, Any]) -> None:
        self.command = command
        self.tests = tests
        self.options = options
        self.directory: Path | None = None
        """The process's own directory (commands given as a function), once it has started."""
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._output: tuple[IO[bytes], ...] = ()
        self._killed = False

    def start(self) -> subprocess.Popen[bytes] | None:
        """Start the process unless it was started already (from any thread); the process, or
        None once the session has killed it (:meth:`kill`)."""
        with self._lock:
            if self._process is None and not self._killed:
                if callable(self.command):
                    self.directory = Path(tempfile.mkdtemp(prefix="early-"))
                    command = self.command(self.directory)
                else:
                    command = self.command
                options = dict(self.options)
                env = {k: v for k, v in os.environ.items() if k not in REMOVED_FROM_THE_ENVIRONMENT}
                env.update(options.pop("env", {}))
                self._output = (tempfile.TemporaryFile(), tempfile.TemporaryFile())
                self._process = subprocess.Popen(
                    list(command), stdout=self._output[0], stderr=self._output[1], env=env, **options
                )
            return self._process

    def wait(self, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Its exit status and output, once it has ended (started now if it was not)."""
        process = self.start()
        if process is None:
            raise RuntimeError("the session is over: its early processes were killed")
        process.wait(timeout=timeout_s)
        stdout, stderr = (self._read(handle) for handle in self._output)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    @staticmethod
    def _read(handle: IO[bytes]) -> str:
        handle.seek(0)
        return handle.read().decode()

    def kill(self) -> None:
        """Kill the process if it runs, and never start it afterwards."""
        with self._lock:
            self._killed = True
            if self._process is not None and self._process.poll() is None:
                self._process.kill()

    def close(self) -> None:
        if self._process is not None:
            self._process.wait()
        for handle in self._output:
            handle.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


_REGISTERED: list[EarlyProcess] = []
_runner: list[threading.Thread] = []


def early(module_file: str, test_names: Iterable[str], command: Command, **options: Any) -> EarlyProcess:
    """Register ``command`` (``subprocess.Popen`` ``options`` such as ``cwd``; ``env`` holds
    variables added to the session's environment) for the tests ``test_names`` of the test
    module ``module_file`` (its ``__file__``)."""
    name = Path(module_file).name
    process = EarlyProcess(command, frozenset(f"{name}::{test}" for test in test_names), dict(options))
    _REGISTERED.append(process)
    return process


def _test_id(item: Any) -> str:
    return f"{Path(str(item.path)).name}::{getattr(item, 'originalname', item.name)}"


def waits(item: Any) -> bool:
    """Whether the pytest ``item`` waits for a registered process."""
    return any(_test_id(item) in process.tests for process in _REGISTERED)


def _run_one_after_another(processes: list[EarlyProcess]) -> None:
    for process in processes:
        started = process.start()
        if started is None:  # the session is ending
            return
        started.wait()


def start_selected(items: Iterable[Any]) -> None:
    """Run, one after another in the background, the registered processes the selected
    ``items`` (pytest items, in the order they will run) read."""
    order = [_test_id(item) for item in items]
    wanted = [process for process in _REGISTERED if process.tests & set(order)]
    wanted.sort(key=lambda process: min(order.index(test) for test in process.tests if test in order))
    if wanted:
        thread = threading.Thread(target=_run_one_after_another, args=(wanted,), name="early-processes", daemon=True)
        _runner.append(thread)
        thread.start()


def stop_all() -> None:
    """Kill what is still running, wait for the background thread, remove the output."""
    for process in _REGISTERED:
        process.kill()
    for thread in _runner:
        thread.join(timeout=30)
    for process in _REGISTERED:
        process.close()
