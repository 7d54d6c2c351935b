"""Fakes and helpers shared by the core test files (a plain module, imported by tests).

Every fake here is a real model (``request`` / ``batch_request``) that records what it saw;
none of them patches cachesaver.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import anyio

from cachesaver.keys import request_key
from cachesaver.models import ScriptedModel
from cachesaver.store import open_store
from cachesaver.typedefs import Batch, Request, Response


@dataclass(frozen=True)
class DecodingRequest(Request):
    """The seed notebook's Request subclass: decoding parameters with defaults."""

    temperature: float = 1
    max_completion_tokens: int = None  # type: ignore[assignment]


class JitterModel:
    """Wraps a model and sleeps a seeded random time (up to ``max_s``) before each call, so
    calls finish in a different order than they started."""

    def __init__(self, inner: Any, seed: int, max_s: float = 0.01) -> None:
        self.inner = inner
        self.rng = random.Random(seed)
        self.max_s = max_s

    async def request(self, request: Request) -> Response:
        await anyio.sleep(self.rng.random() * self.max_s)
        return await self.inner.request(request)

    async def batch_request(self, batch: Batch) -> list[Response]:
        await anyio.sleep(self.rng.random() * self.max_s)
        return await self.inner.batch_request(batch)


class GateModel:
    """A model whose calls block until :meth:`release` (or until ``open_at`` calls are in flight).

    ``entered`` is set as soon as the first call arrives; ``inner`` produces the samples once
    the gate opens, so what a call returns is decided after the gate.
    """

    def __init__(self, inner: ScriptedModel | None = None, open_at: int | None = None) -> None:
        self.inner = inner if inner is not None else ScriptedModel()
        self.open_at = open_at
        self.gate = anyio.Event()
        self.entered = anyio.Event()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.calls = 0
        self.finished = 0

    def release(self) -> None:
        self.gate.set()

    async def _wait(self) -> None:
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.entered.set()
        if self.open_at is not None and self.in_flight >= self.open_at:
            self.gate.set()
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1

    async def request(self, request: Request) -> Response:
        await self._wait()
        answer = await self.inner.request(request)
        self.finished += 1
        return answer

    async def batch_request(self, batch: Batch) -> list[Response]:
        await self._wait()
        answers = await self.inner.batch_request(batch)
        self.finished += 1
        return answers


class SingleOnlyModel:
    """A model with ``request`` only (no ``batch_request``)."""

    def __init__(self, inner: ScriptedModel | None = None) -> None:
        self.inner = inner if inner is not None else ScriptedModel()

    async def request(self, request: Request) -> Response:
        return await self.inner.request(request)


class BatchOnlyModel:
    """A model with ``batch_request`` only, as a local batch model has."""

    def __init__(self, inner: ScriptedModel | None = None) -> None:
        self.inner = inner if inner is not None else ScriptedModel()

    async def batch_request(self, batch: Batch) -> list[Response]:
        return await self.inner.batch_request(batch)


class NamedModel:
    """A user's own model that names its model, as the seed notebook's ``OnlineLLM`` does.

    ``NamedModel(model="llama")`` (or ``model_name=`` / ``cache_identity=``) sets that
    attribute. Its samples are ``"<label>:<prompt>#<k>"``, ``label`` being the attribute's
    value (or ``label=``), so a test sees which model a sample came from; ``calls`` counts
    upstream calls (``request`` and ``batch_request``).
    """

    def __init__(self, label: str | None = None, **attributes: Any) -> None:
        self.__dict__.update(attributes)
        self.label = label if label is not None else next(iter(attributes.values()), "unnamed")
        self.calls = 0

    def _answer(self, request: Request) -> Response:
        return Response(data=[f"{self.label}:{request.prompt}#{k}" for k in range(request.n)])

    async def request(self, request: Request) -> Response:
        self.calls += 1
        await anyio.sleep(0)
        return self._answer(request)

    async def batch_request(self, batch: Batch) -> list[Response]:
        self.calls += 1
        await anyio.sleep(0)
        return [self._answer(r) for r in batch.requests]
class SyncModel:
    """A sync (blocking) model, as a local Hugging Face or vLLM wrapper is: ``batch_request``
    and/or ``request`` are plain methods (``kind`` is "batch", "single" or "both").

    Each call records the thread it ran in and the peak number of calls at once. A call sets
    ``entered`` and, if ``block`` is set, waits for ``released`` (a threading.Event) before
    answering; ``overlap_window_s`` makes each call wait up to that long for another call to
    join it, so calls that can overlap do. Samples are ``"<prompt>#<k>"`` as ScriptedModel's.
    """

    def __init__(self, kind: str = "batch", *, block: bool = False, overlap_window_s: float = 0.0) -> None:
        self.block = block
        self.overlap_window_s = overlap_window_s
        self.entered = threading.Event()
        self.released = threading.Event()
        self._overlap = threading.Event()
        self._lock = threading.Lock()
        self._counters: dict[Any, int] = {}
        self.threads: list[threading.Thread] = []
        self.batch_sizes: list[int] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        if kind == "single":
            self.batch_request = None  # type: ignore[assignment]
        elif kind == "batch":
            self.request = None  # type: ignore[assignment]

    @property
    def calls(self) -> int:
        return len(self.batch_sizes)

    def _call(self, requests: list[Request]) -> list[Response]:
        with self._lock:
            self.threads.append(threading.current_thread())
            self.batch_sizes.append(len(requests))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            if self.in_flight > 1:
                self._overlap.set()
        self.entered.set()
        try:
            if self.overlap_window_s:
                self._overlap.wait(self.overlap_window_s)
            if self.block:
                self.released.wait(5)  # bounded: a model blocking the event loop cannot hang a test
            answers = []
            with self._lock:
                for request in requests:
                    start = self._counters.get(request.prompt, 0)
                    self._counters[request.prompt] = start + request.n
                    answers.append(Response(data=[f"{request.prompt}#{k}" for k in range(start, start + request.n)]))
            return answers
        finally:
            with self._lock:
                self.in_flight -= 1

    def batch_request(self, batch: Batch) -> list[Response]:
        return self._call(list(batch.requests))

    def request(self, request: Request) -> Response:
        return self._call([request])[0]


class ShortOnceModel:
    """Returns ``short_by`` samples too few on its first call for each prompt, then full answers."""

    def __init__(self, short_by: int) -> None:
        self.short_by = short_by
        self.inner = ScriptedModel()
        self.seen: set[Any] = set()

    async def request(self, request: Request) -> Response:
        if request.prompt in self.seen:
            return await self.inner.request(request)
        self.seen.add(request.prompt)
        count = request.n - self.short_by
        if count < 1:
            return Response(data=[])
        return await self.inner.request(dataclasses.replace(request, n=count))


@dataclass
class RecordingLedger:
    """A ledger fake that records every hook call."""

    upstream: list[tuple[Request, Any]] = field(default_factory=list)
    served: list[tuple[Request, Response]] = field(default_factory=list)

    def record_upstream(self, request: Request, outcome: Any) -> None:
        self.upstream.append((request, outcome))

    def record_served(self, request: Request, response: Response) -> None:
        self.served.append((request, response))


async def gather(*calls: Any) -> list[Any]:
    """Run the zero-argument async callables concurrently; their results in order."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = await calls[i]()

    async with anyio.create_task_group() as group:
        for i in range(len(calls)):
            group.start_soon(one, i)
    return results


async def wait_until(predicate: Any, limit_s: float = 5.0) -> None:
    """Yield to the loop until ``predicate()`` holds (a deadlock guard bounds the wait)."""
    with anyio.fail_after(limit_s):
        while not predicate():
            await anyio.sleep(0.001)


# -- a worker for tests/test_multiprocess.py, run as a separate Python process ------------------

WORKER = (
    "import sys; sys.path.insert(0, sys.argv[1]); import _support; _support.worker_main(sys.argv[2:])"
)


def _wait_for_go(directory: str, tag: str) -> None:
    import os
    import time

    open(os.path.join(directory, f"ready-{tag}"), "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(directory, "go")):
        if time.monotonic() > deadline:
            raise SystemExit("never told to go")
        time.sleep(0.001)


def worker_main(argv: list[str]) -> None:
    """``mode cache_dir sync_dir tag out_file``: append through DiskcacheStore or a pipeline."""
    import json

    mode, cache_dir, sync_dir, tag, out_file = argv
    if mode == "store":
        from cachesaver.store.diskcache import DiskcacheStore

        store = DiskcacheStore(cache_dir)
        _wait_for_go(sync_dir, tag)
        appended = []
        for i in range(500):
            key = f"key{i % 3}"
            samples = [f"{tag}-{i}-{j}" for j in range(1 + i % 3)]
            start = store.append(key, samples)
            appended.append([key, start, samples])
        store.close()
        result: Any = appended
    else:
        result = anyio.run(_pipeline_worker, cache_dir, sync_dir, tag)
    with open(out_file, "w") as handle:
        json.dump(result, handle)


async def _pipeline_worker(cache_dir: str, sync_dir: str, tag: str) -> dict[str, Any]:
    from cachesaver.pipelines import OnlineAPI

    model = ScriptedModel(sample=lambda request, k: f"{tag}:{request.prompt}#{k}")
    rng = random.Random(tag)
    requests = [Request(f"p{rng.randrange(4)}", n=rng.randrange(1, 4), request_id=f"{tag}-{i}") for i in range(240)]
    _wait_for_go(sync_dir, tag)
    served: list[list[Any]] = []
    async with OnlineAPI(model, cache_dir, batch_size=8, timeout=0.001) as pipeline:
        for start in range(0, len(requests), 40):
            chunk = requests[start : start + 40]
            responses = await gather(*[lambda r=r: pipeline.request(r) for r in chunk])
            served += [[r.prompt, r.n, r.request_id, response.data] for r, response in zip(chunk, responses)]
    generated: dict[str, list[Any]] = {}
    for call in model.log:
        for request in call.requests:
            generated.setdefault(request.prompt, [])
    for prompt in generated:
        count = sum(r.n for call in model.log for r in call.requests if r.prompt == prompt)
        generated[prompt] = [f"{tag}:{prompt}#{k}" for k in range(count)]
    return {"served": served, "generated": generated}


@dataclass(frozen=True)
class Extra(Request):
    """A Request with one extra, free-form key field."""

    extra: Any = None


def stored_count(cache: Any, request: Request) -> int:
    """How many samples ``cache`` (what a pipeline was given as ``cache=``: a directory, a
    diskcache.Cache or a store) holds for ``request``'s key."""
    store, owned = open_store(cache)
    try:
        key = request_key(request)
        view = store.view([key])[key]
        if isinstance(view, BaseException):
            raise view
        return view.count
    finally:
        if owned:
            store.close()


class Sleeps:
    """A stand-in for ``anyio.sleep`` that records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await anyio.lowlevel.checkpoint()


# -- another process holding a store's SQLite write lock ---------------------------------------

LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")  # diskcache's write lock, then hold it until killed
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def write_lock_held(database: Path) -> Iterator[subprocess.Popen]:
    """Another process holds the SQLite write lock of ``database`` while inside (or until it is
    killed)."""
    process = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(database)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.kill()
        process.communicate()


def open_files_under(directory: Path, suffix: str = "") -> list[str]:
    """Files below ``directory`` (ending with ``suffix``) this process holds open, once per
    descriptor, sorted; needs Linux's /proc/self/fd, which every test machine has."""
    out = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(directory)) and target.endswith(suffix):
            out.append(target)
    return sorted(out)


def run_released_together(commands: list[list[str]], sync_dir: Path, tags: list[str] | tuple[str, ...]) -> None:
    """Start one process per command, wait until each has created ``sync_dir/ready-<tag>``,
    release them all at once by creating ``sync_dir/go``, and wait for them to exit 0 (a
    deadlock guard bounds each wait; a process left running is killed)."""
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for command in commands
    ]
    try:
        deadline = time.monotonic() + 30
        while not all((sync_dir / f"ready-{tag}").exists() for tag in tags):
            if time.monotonic() > deadline or any(w.poll() not in (None, 0) for w in workers):
                break
            time.sleep(0.005)
        (sync_dir / "go").touch()
        for worker in workers:
            _, stderr = worker.communicate(timeout=50)
            assert worker.returncode == 0, stderr
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _forwarded(name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


class StoreForwarder:
    """A SampleStore that is ``inner`` for every method of the protocol, each spelt out (from
    Python 3.12 a runtime protocol check does not see what a ``__getattr__`` would forward).
    Nothing else is forwarded: a subclass adds what its test needs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def writable(self) -> bool:
        return self.inner.writable


class SharedRunsForwarder:
    """A SharedRunStore that is ``inner`` for every method of the protocol, each spelt out."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner


for _name in ("view", "read", "commit", "applied", "release_thread", "close"):
    setattr(StoreForwarder, _name, _forwarded(_name))
for _name in ("join", "leave", "status", "end", "claim", "claimed", "commit", "acquire_leases", "seal_leases",
              "renew_leases", "release_leases", "leases"):
    setattr(SharedRunsForwarder, _name, _forwarded(_name))

