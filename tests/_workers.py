"""Worker processes for the shared-run and single-flight tests (run as ``python -c WORKER``).

Each worker is a real process with its own pipeline on a shared store (a diskcache directory
or a Redis URL). It talks to the test through files in a sync directory: it creates
``ready-<tag>`` and waits for ``go`` (see ``_support.run_released_together``), appends one JSON
line per delivered request to its output file (flushed at once, so a worker killed with -9
leaves every answer it had logged), and appends a line to ``calls-<tag>`` for every upstream
call its model receives, before answering it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from cachesaver.models import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.store.shared_runs import SharedRun
from cachesaver.typedefs import Batch, Request, Response

WORKER = "import sys; sys.path.insert(0, sys.argv[1]); import _workers; _workers.main(sys.argv[2:])"


def _wait_for(path: Path, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.002)


class LoggedModel:
    """A ScriptedModel (samples ``"<tag>:<prompt>#<k>"``, unique per worker) that logs each
    upstream call to ``calls_file`` before answering; with ``hold``, each call then waits until
    ``hold`` (a path) exists, or until the process is killed."""

    def __init__(self, tag: str, calls_file: Path, hold: Path | None = None, answered: Any = None, hold_after: int = 0) -> None:
        self.inner = ScriptedModel(sample=lambda request, k: f"{tag}:{request.prompt}#{k}")
        self.calls_file = calls_file
        self.hold = hold
        self.answered = answered  # how many requests the worker has answered so far
        self.hold_after = hold_after
        self.held = calls_file.with_name(f"held-{tag}")

    async def _log(self, requests: list[Request]) -> None:
        with open(self.calls_file, "a") as handle:
            handle.write(json.dumps([[r.prompt, r.namespace, r.n] for r in requests]) + "\n")
        if self.hold is not None and self.answered() >= self.hold_after:
            self.held.touch()
            while not self.hold.exists():
                await anyio.sleep(0.005)

    latency_s = 0.0
    cache_identity = None  # the requests are the whole key, as the tests read them back

    async def batch_request(self, batch: Batch) -> list[Response]:
        await self._log(list(batch.requests))
        await anyio.sleep(self.latency_s)
        return await self.inner.batch_request(batch)


def main(argv: list[str]) -> None:
    """``json-spec``: {"cache", "sync", "tag", "out", "run": {...SharedRun...} | null,
    "requests": [[prompt, n, request_id, namespace], ...], "chunk": int (requests issued
    together), "hold": path | null (once the worker has answered ``hold_after`` requests, each
    model call creates ``held-<tag>`` and waits for ``hold``, or until the worker is killed), "latency_s": each call's duration, "go": the go-file's name
    (default "go"), "waits": {"<index of a request>": a file name} (the chunk starting at that
    request is issued once the file exists), "linger": a file name (stay open in the run until
    it exists)}."""
    spec = json.loads(argv[0])
    anyio.run(_serve, spec)


async def _serve(spec: dict[str, Any]) -> None:
    sync = Path(spec["sync"])
    tag = spec["tag"]
    answered = [0]
    hold = Path(spec["hold"]) if spec.get("hold") else None
    model = LoggedModel(tag, sync / f"calls-{tag}", hold, lambda: answered[0], spec.get("hold_after", 0))
    model.latency_s = spec.get("latency_s", 0.0)
    run = SharedRun(**spec["run"]) if spec.get("run") else None
    requests = [Request(p, n=n, request_id=rid, namespace=ns) for p, n, rid, ns in spec["requests"]]
    chunk = spec.get("chunk", 8)
    (sync / f"ready-{tag}").touch()
    _wait_for(sync / spec.get("go", "go"))
    with open(spec["out"], "a") as out:
        async with OnlineAPI(model, spec["cache"], batch_size=4, timeout=0.002, run_id=run) as pipeline:
            for start in range(0, len(requests), chunk):
                gate = spec.get("waits", {}).get(str(start))
                if gate:  # this chunk waits for a file of the test
                    while not (sync / gate).exists():
                        await anyio.sleep(0.005)
                part = requests[start : start + chunk]
                answers: list[Any] = [None] * len(part)

                async def one(i: int) -> None:
                    answers[i] = await pipeline.request(part[i])
                    r, a = part[i], answers[i]
                    out.write(json.dumps([r.prompt, r.n, r.request_id, r.namespace, a.data, a.cached, a.duplicated]) + "\n")
                    out.flush()
                    answered[0] += 1

                async with anyio.create_task_group() as group:
                    for i in range(len(part)):
                        group.start_soon(one, i)
            if spec.get("linger"):  # stay in the run (and renew it) until told to leave
                while not (sync / spec["linger"]).exists():
                    await anyio.sleep(0.005)
            ledger = pipeline.ledger.total()

    with open(sync / f"ledger-{tag}", "w") as handle:
        json.dump({"calls": ledger.upstream_calls, "duplicated": ledger.samples_duplicated, "cached": ledger.samples_cached}, handle)


def read_lines(path: Path) -> list[Any]:
    """The JSON lines of ``path`` (none if it does not exist); a line cut by a kill is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def command(tests_dir: str, spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-c", WORKER, tests_dir, json.dumps(spec)]
