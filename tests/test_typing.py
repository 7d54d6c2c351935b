"""The package type-checks with the mypy settings in pyproject.toml, and its main seams are typed.

``mypy`` runs in a subprocess from the project root, so it reads ``[tool.mypy]`` there; its
cache is the project's ``.mypy_cache`` (a cold run takes a few seconds, a warm one about one).
The run over the package starts as soon as the session knows its test is selected
(``_early``), beside the tests before it; the user-code run waits for it, then reuses its cache.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from _early import early

ROOT = Path(__file__).resolve().parent.parent
MYPY = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
# the files = ["cachesaver"] of pyproject.toml; read by both tests (the second for its cache)
PACKAGE_CHECK = early(
    __file__, ["test_mypy_reports_no_errors_in_the_package", "test_user_code_sees_the_typed_seams"], MYPY, cwd=ROOT
)


def run_mypy(*args: str) -> subprocess.CompletedProcess[str]:
    PACKAGE_CHECK.wait(timeout_s=50)  # one mypy at a time on the project's cache
    return subprocess.run([*MYPY, *args], cwd=ROOT, capture_output=True, text=True, timeout=50)


def test_mypy_reports_no_errors_in_the_package():
    result = PACKAGE_CHECK.wait(timeout_s=50)
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
