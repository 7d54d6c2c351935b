"""Slow subprocesses a test only waits for, started as soon as the session knows the test runs.

Some tests spend seconds waiting for one process that needs nothing from the test itself
(mypy over the package, a fresh interpreter importing both SDKs, a benchmark script). A test
module registers such a process at import with :func:`early`, naming the tests that read it;
once collection is done (``pytest_collection_finish`` in conftest.py calls
:func:`start_selected`) every registered process that one of the selected tests reads is
started, and those tests run last (``pytest_collection_modifyitems`` sorts them after the
others with :func:`waits`), so the process runs beside the rest of the session instead of
while its test waits. The test calls :meth:`EarlyProcess.wait`.

What is guaranteed: a process none of whose tests is selected never starts; ``wait`` starts it
when nothing has (a test run some other way), so a test never depends on the hook; output
goes to temporary files, never a pipe that could fill up; a command given as a function gets a
new empty directory of its own (:attr:`EarlyProcess.directory`) for what it writes; when the
session ends a process still running is killed and its directory removed (:func:`stop_all`,
from ``pytest_sessionfinish``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["EarlyProcess", "early", "start_selected", "stop_all", "waits"]


@dataclass
class EarlyProcess:
    """One registered command, or a function making it from :attr:`directory` (called when the
    process starts); ``tests`` are the node ids (``file::name``, parameters left out) of the
    tests that wait for it."""

    command: Sequence[str] | Callable[[Path], Sequence[str]]
    tests: frozenset[str]
    options: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None
    """The process's own directory (commands given as a function), once it has started."""
    _process: subprocess.Popen[bytes] | None = None
    _output: tuple[IO[bytes], IO[bytes]] | None = None

    def start(self) -> tuple[subprocess.Popen[bytes], tuple[IO[bytes], IO[bytes]]]:
        """Start the process unless it was started already; the process and its output files."""
        if self._process is None or self._output is None:
            if callable(self.command):
                self.directory = Path(tempfile.mkdtemp(prefix="early-"))
                command = self.command(self.directory)
            else:
                command = self.command
            self._output = (tempfile.TemporaryFile(), tempfile.TemporaryFile())
            self._process = subprocess.Popen(
                list(command), stdout=self._output[0], stderr=self._output[1], **self.options
            )
        return self._process, self._output

    def wait(self, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Its exit status and output, once it has ended (started now if it was not)."""
        process, output = self.start()
        process.wait(timeout=timeout_s)
        stdout, stderr = (self._read(handle) for handle in output)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    @staticmethod
    def _read(handle: IO[bytes]) -> str:
        handle.seek(0)
        return handle.read().decode()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for handle in self._output or ():
            handle.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


_REGISTERED: list[EarlyProcess] = []


def early(
    module_file: str, test_names: Iterable[str], command: Sequence[str] | Callable[[Path], Sequence[str]],
    **options: Any,
) -> EarlyProcess:
    """Register ``command`` (``subprocess.Popen`` ``options`` such as ``cwd``) for the tests
    ``test_names`` of the test module ``module_file`` (its ``__file__``)."""
    name = Path(module_file).name
    process = EarlyProcess(command, frozenset(f"{name}::{test}" for test in test_names), dict(options))
    _REGISTERED.append(process)
    return process


def _test_id(item: Any) -> str:
    return f"{Path(str(item.path)).name}::{getattr(item, 'originalname', item.name)}"


def waits(item: Any) -> bool:
    """Whether the pytest ``item`` waits for a registered process."""
    return any(_test_id(item) in process.tests for process in _REGISTERED)


def start_selected(items: Iterable[Any]) -> None:
    """Start every registered process that one of the selected ``items`` (pytest items) reads."""
    selected = {_test_id(item) for item in items}
    for process in _REGISTERED:
        if process.tests & selected:
            process.start()


def stop_all() -> None:
    """Kill what is still running and close the output files."""
    for process in _REGISTERED:
        process.stop()
