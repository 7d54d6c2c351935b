"""The package type-checks with the mypy settings in pyproject.toml, and its main seams are typed.

``mypy`` runs in a subprocess from the project root, so it reads ``[tool.mypy]`` there; its
cache is the project's ``.mypy_cache`` (a cold run takes a few seconds, a warm one about one).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=50,
    )


def test_mypy_reports_no_errors_in_the_package():
    result = run_mypy()  # the files = ["cachesaver"] of pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success: no issues found"), result.stdout


# What a user's code sees. A line ending in "# E: code" must get exactly that mypy error; every
# other line must check cleanly.
SNIPPET = """\
    from typing_extensions import assert_type

    from cachesaver.ledger import Ledger
    from cachesaver.models import ScriptedModel
    from cachesaver.pipelines import LocalAPI, OnlineAPI
    from cachesaver.stages.caching import AsyncCacher
    from cachesaver.store.memory import MemoryStore
    from cachesaver.typedefs import Batch, Request, Response


    class SyncModel:
        def request(self, request: Request) -> Response:
            return Response(["x"] * request.n)


    class SyncBatchModel:
        def batch_request(self, batch: Batch) -> list[Response]:
            return [Response(["x"] * r.n) for r in batch.requests]


    class NotAModel:
        def generate(self, prompt: str) -> str:
            return prompt


    async def main() -> None:
        async with OnlineAPI(ScriptedModel(), "c", batch_size=1) as p:
            assert_type(p, OnlineAPI)
            ledger: Ledger = p.ledger
            assert_type(p.ledger, Ledger)
        async with LocalAPI(SyncBatchModel(), MemoryStore(), batch_size=2) as local:
            assert_type(local, LocalAPI)
        async with AsyncCacher(SyncModel(), MemoryStore()) as cacher:
            assert_type(cacher, AsyncCacher)
        OnlineAPI(NotAModel(), "c", batch_size=1)  # E: arg-type
        OnlineAPI(ScriptedModel(), 42, batch_size=1)  # E: arg-type
        OnlineAPI(ScriptedModel(), "c", batch_size=1, ledger=object())  # E: arg-type
"""


def test_user_code_sees_the_typed_seams(tmp_path):
    snippet = tmp_path / "user_code.py"
    snippet.write_text(textwrap.dedent(SNIPPET))
    expected = {
        (number, match.group(1))
        for number, line in enumerate(snippet.read_text().splitlines(), start=1)
        if (match := re.search(r"# E: ([\w-]+)$", line))
    }
    result = run_mypy(str(snippet))
    found = {
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"^.*user_code\.py:(\d+): error: .*\[([\w-]+)\]$", result.stdout, re.M)
    }
    assert found == expected, result.stdout + result.stderr
    elsewhere = [line for line in result.stdout.splitlines() if ": error:" in line and "user_code.py" not in line]
    assert not elsewhere, result.stdout
