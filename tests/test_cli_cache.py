"""``cachesaver cache ...``: every command, --json, the exit statuses, and one-line errors.

The commands run in this process through ``cachesaver.cli.main``, the function the console
script calls (``_cli.run_cli``: exit status, stdout and stderr as a process would give them).
The launchers themselves run as real processes: the console script (one error, and output into a
closed pipe) and ``python -m cachesaver``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from _cli import run_cli

from cachesaver.models import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.typedefs import Batch, Request


def console_script() -> str:
    script = shutil.which("cachesaver", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the cachesaver console script is not installed next to this Python")
    return script


def cli(*argv: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(argv, cwd=cwd, stdin=stdin, env=env)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess[str], said: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and re.match(r"cachesaver( \w+)*: error: ", done.stderr), done.stderr
    assert said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@dataclass(frozen=True)
class Hot(Request):
    temperature: float = 0.7


REQUESTS = {
    "sweep-k3": [Hot(f"Is {n} prime?", n=3, request_id=f"q{n}") for n in (7, 91)],
    "sweep-k5": [Hot(f"Is {n} prime?", n=5, request_id=f"q{n}") for n in (7, 91)] + [Hot("Name a prime.", n=2)],
}


async def fill(cache: Path) -> dict[str, list[list[Any]]]:
    out = {}
    async with OnlineAPI(ScriptedModel(with_usage=True), cache, batch_size=4, model_id="m") as pipeline:
        for namespace, requests in REQUESTS.items():
            batch = [Hot(r.prompt, n=r.n, request_id=r.request_id, namespace=namespace) for r in requests]
            out[namespace] = [r.data for r in await pipeline.batch_request(Batch(batch))]
    return out


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    anyio.run(fill, tmp_path / "cache")
    return tmp_path / "cache"


def test_stats_counts_namespaces_keys_samples_records_bytes_and_times(cache: Path, tmp_path: Path) -> None:
    out = ok(cli("cache", "stats", "--cache", "cache", cwd=tmp_path))
    assert "namespaces  2" in out and "keys        3" in out and "samples     12" in out and "records     4" in out
    assert "oldest      20" in out and "newest      20" in out and "bytes       " in out
    document = json.loads(ok(cli("cache", "--cache", "cache", "stats", "--json", cwd=tmp_path)))  # either order
    assert (document["keys"], document["samples"], document["records"]) == (3, 12, 4)
    assert document["namespaces"] == [{"namespace": "sweep-k3", "keys": 2, "records": 2},
                                      {"namespace": "sweep-k5", "keys": 2, "records": 2}]
    assert document["bytes"] > 0 and document["oldest"].endswith("Z")
    from_env = ok(cli("cache", "stats", cwd=tmp_path, env={"CACHESAVER_CACHE_DIR": str(cache)}))
    assert from_env.splitlines()[1:] == out.splitlines()[1:]


def test_ls_lists_one_line_per_key_with_a_preview_and_uses(cache: Path, tmp_path: Path) -> None:
    out = ok(cli("cache", "ls", "--cache", str(cache), cwd=tmp_path)).splitlines()
    assert out[0].split() == ["key", "samples", "newest", "(UTC)", "uses", "prompt"]
    rows = {line.split("  ")[-1].strip(): line for line in out[2:-1]}
    assert set(rows) == {"Is 7 prime?", "Is 91 prime?", "Name a prime."}
    assert "sweep-k3:1 sweep-k5:1" in rows["Is 7 prime?"] and " 5 " in rows["Is 7 prime?"]
    assert out[-1] == "3 key(s)"
    only = ok(cli("cache", "ls", "--cache", str(cache), "--namespace", "sweep-k3", "--grep", "IS 91", cwd=tmp_path))
    assert "Is 91 prime?" in only and "Is 7 prime?" not in only and only.endswith("1 key(s)\n")
    listed = json.loads(ok(cli("cache", "ls", "--cache", str(cache), "--json", cwd=tmp_path)))
    assert sorted(e["prompt"] for e in listed) == ["Is 7 prime?", "Is 91 prime?", "Name a prime."]
    assert all(e["request"]["model_identity"] == "m" for e in listed)


def test_show_prints_the_request_samples_and_records(cache: Path, tmp_path: Path) -> None:
    listed = json.loads(ok(cli("cache", "ls", "--cache", str(cache), "--json", "--grep", "Is 7", cwd=tmp_path)))
    key = listed[0]["key"]
    out = ok(cli("cache", "show", key[:8], "--cache", str(cache), cwd=tmp_path))
    assert f"key       {key}" in out and "model     m" in out and "prompt    Is 7 prime?" in out
    assert "temperature 0.7" in out and "samples   5" in out and "Is 7 prime?#4" in out
    assert "sweep-k5   \"q7\"" in out
    document = json.loads(ok(cli("cache", "show", key, "--cache", str(cache), "--json", cwd=tmp_path)))
    assert [s["data"] for s in document["samples"]] == [f"Is 7 prime?#{i}" for i in range(5)]
    assert {(r["namespace"], r["request_id"], r["n"]) for r in document["records"]} == {("sweep-k3", "q7", 3), ("sweep-k5", "q7", 5)}
    one_line_error(cli("cache", "show", "zzzz", "--cache", str(cache), cwd=tmp_path), "no key starting with 'zzzz'")


def test_export_import_then_replay_makes_no_model_call(cache: Path, tmp_path: Path) -> None:
    first = anyio.run(fill, tmp_path / "reference")  # the same requests, recorded in a cache of its own
    # The keys with replay records in sweep-k5: its two requests with an id ("Name a prime." has
    # none, so it left no record in any namespace).
    out = ok(cli("cache", "export", "k5.csbundle", "--cache", str(cache), "--namespace", "sweep-k5", cwd=tmp_path))
    assert out.startswith("exported 2 keys, 10 samples and 2 records (namespaces: sweep-k5) to k5.csbundle")
    with gzip.open(tmp_path / "k5.csbundle", "rt") as handle:
        manifest = json.loads(handle.readline())
    assert manifest["namespaces"] == ["sweep-k5"] and manifest["counts"]["keys"] == 2
    assert manifest["content_sha256"] in out
    imported = ok(cli("cache", "import", "k5.csbundle", "--cache", "fresh", cwd=tmp_path))
    assert "2 keys (2 changed), 10 samples and 2 records added" in imported
    again = json.loads(ok(cli("cache", "import", "k5.csbundle", "--cache", "fresh", "--json", cwd=tmp_path)))
    assert (again["keys_changed"], again["samples_added"], again["records_added"]) == (0, 0, 0)

    async def replay() -> tuple[list[list[Any]], int]:
        model = ScriptedModel()
        batch = [Hot(r.prompt, n=r.n, request_id=r.request_id, namespace="sweep-k5") for r in REQUESTS["sweep-k5"][:2]]
        async with OnlineAPI(model, tmp_path / "fresh", batch_size=4, model_id="m", mode="replay") as pipeline:
            return [r.data for r in await pipeline.batch_request(Batch(batch))], model.calls

    data, calls = anyio.run(replay)
    assert data == first["sweep-k5"][:2] and calls == 0


def test_export_refuses_samples_that_are_not_json_naming_the_key_unless_pickles_are_allowed(tmp_path: Path) -> None:
    async def objects() -> None:
        async with OnlineAPI(ScriptedModel(sample=lambda r, k: (r.prompt, k)), tmp_path / "c", batch_size=1, model_id="m") as p:
            await p.request(Request("tuple samples", request_id="a"))

    anyio.run(objects)
    one_line_error(cli("cache", "export", "b.csbundle", "--cache", "c", cwd=tmp_path), "is a tuple, not plain JSON")
    assert not (tmp_path / "b.csbundle").exists()
    assert "pickled: importing needs --allow-pickle" in ok(cli("cache", "export", "b.csbundle", "--cache", "c", "--allow-pickle", cwd=tmp_path))
    one_line_error(cli("cache", "import", "b.csbundle", "--cache", "d", cwd=tmp_path), "pickled sample")
    ok(cli("cache", "import", "b.csbundle", "--cache", "d", "--allow-pickle", cwd=tmp_path))


def test_prune_forgets_a_namespaces_records_and_old_keys_with_a_dry_run_first(cache: Path, tmp_path: Path) -> None:
    dry = ok(cli("cache", "prune", "--namespace", "sweep-k3", "--dry-run", "--cache", str(cache), cwd=tmp_path))
    assert dry == "would forget 2 replay record(s) of namespace(s) sweep-k3 in 2 key(s)\n"
    assert json.loads(ok(cli("cache", "stats", "--json", "--cache", str(cache), cwd=tmp_path)))["records"] == 4
    assert "forgot 2 replay record(s)" in ok(cli("cache", "prune", "--namespace", "sweep-k3", "--cache", str(cache), cwd=tmp_path))
    stats = json.loads(ok(cli("cache", "stats", "--json", "--cache", str(cache), cwd=tmp_path)))
    assert (stats["records"], stats["samples"], [n["namespace"] for n in stats["namespaces"]]) == (2, 12, ["sweep-k5"])
    assert "forgot 0 key(s)" in ok(cli("cache", "prune", "--older-than", "1", "--cache", str(cache), cwd=tmp_path))
    old = json.loads(ok(cli("cache", "prune", "--older-than", "0", "--json", "--cache", str(cache), cwd=tmp_path)))
    assert (old["keys"], old["samples"]) == (3, 12)
    assert json.loads(ok(cli("cache", "stats", "--json", "--cache", str(cache), cwd=tmp_path)))["keys"] == 0
    one_line_error(cli("cache", "prune", "--cache", str(cache), cwd=tmp_path), "say what to prune")


def test_diff_exits_0_for_the_same_entries_and_1_naming_what_differs(cache: Path, tmp_path: Path) -> None:
    ok(cli("cache", "export", "all.csbundle", "--cache", str(cache), cwd=tmp_path))
    ok(cli("cache", "import", "all.csbundle", "--cache", "copy", cwd=tmp_path))
    same = cli("cache", "diff", str(cache), "copy", cwd=tmp_path)
    assert same.returncode == 0 and same.stdout == "A and B hold the same entries (3 key(s))\n"
    ok(cli("cache", "prune", "--namespace", "sweep-k5", "--cache", "copy", cwd=tmp_path))

    async def more() -> None:
        async with OnlineAPI(ScriptedModel(), tmp_path / "copy", batch_size=4, model_id="m") as pipeline:
            await pipeline.request(Hot("Is 7 prime?", n=8, request_id="more", namespace="sweep-k3"))
            await pipeline.request(Hot("Brand new"))

    anyio.run(more)
    differ = cli("cache", "diff", str(cache), "copy", cwd=tmp_path)
    assert differ.returncode == 1, differ.stderr
    lines = differ.stdout.splitlines()
    assert any(line.endswith("samples: A has 5, B has 8 (the same up to there); records: 1 only in A, 1 only in B, "
                             "0 with other samples") for line in lines), lines
    assert any(line.endswith("records: 1 only in A, 0 only in B, 0 with other samples") for line in lines), lines
    assert any(line.endswith("only in B (1 samples)") for line in lines), lines
    assert lines[-1] == "A and B differ in 3 of 4 key(s)"
    document = json.loads(cli("cache", "diff", str(cache), "copy", "--json", cwd=tmp_path).stdout)
    assert document["same"] is False and len(document["differences"]) == 3


def test_explain_says_why_a_request_misses_and_exits_1(cache: Path, tmp_path: Path) -> None:
    request = {"prompt": "Is 91 prime?", "temperature": 0.5, "n": 3, "request_id": "q91", "namespace": "sweep-k5"}
    missed = cli("cache", "explain", json.dumps(request), "--model-id", "m", "--cache", str(cache), cwd=tmp_path)
    assert missed.returncode == 1, missed.stderr
    assert "nothing is stored under this request's key" in missed.stdout and "temperature 0.5 vs 0.7" in missed.stdout
    other_model = cli("cache", "explain", "-", "--cache", str(cache), cwd=tmp_path, stdin=json.dumps({**request, "temperature": 0.7}))
    assert other_model.returncode == 1 and "model identity differs: none vs 'm'" in other_model.stdout
    (tmp_path / "hit.json").write_text(json.dumps({**request, "temperature": 0.7, "namespace": "sweep-k9"}))
    hit = cli("cache", "explain", "@hit.json", "--model-id", "m", "--json", "--cache", str(cache), cwd=tmp_path)
    assert hit.returncode == 0 and json.loads(hit.stdout)["hit"] is True
    shown = json.loads(ok(cli("cache", "ls", "--json", "--grep", "Is 91", "--cache", str(cache), cwd=tmp_path)))[0]["request"]
    canonical = cli("cache", "explain", json.dumps({**shown, "n": 6, "request_id": "q91", "namespace": "sweep-k5"}),
                    "--cache", str(cache), cwd=tmp_path)
    assert canonical.returncode == 1 and "holds 5 samples and the request asks 6" in canonical.stdout
    one_line_error(cli("cache", "explain", "{not json", "--cache", str(cache), cwd=tmp_path), "not JSON")


@pytest.mark.parametrize(
    "argv, said",
    [
        (["cache", "stats", "--cache", "missing"], "there is no cache at 'missing'"),
        (["cache", "stats", "--cache", "empty"], "holds no cache"),
        (["cache", "stats", "--cache", "memcached://user:secret@localhost:1/0"], "no storage engine of this cachesaver opens memcached://"),
        (["cache", "stats"], "say which cache"),
        (["cache", "nope"], "invalid choice: 'nope'"),
        (["cache", "show", "--cache", "x"], "the following arguments are required: KEY"),
        (["cache", "prune", "--older-than", "soon", "--cache", "x"], "invalid float value"),
        (["cache", "import", "missing.csbundle", "--cache", "c"], "cannot open the bundle missing.csbundle"),
        (["run", "x.py:Task", "--out", "o"], "the following arguments are required: --namespace"),
    ],
)
def test_every_error_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], said: str) -> None:
    (tmp_path / "empty").mkdir()
    done = cli(*argv, cwd=tmp_path, env={"CACHESAVER_CACHE_DIR": ""})
    one_line_error(done, said)
    assert "secret" not in done.stderr
    assert not (tmp_path / "memcached:").exists() and not (tmp_path / "missing").exists()


def test_the_console_script_gives_the_one_line_error_and_exit_2_as_a_process(tmp_path: Path) -> None:
    done = subprocess.run([console_script(), "cache", "stats", "--cache", "missing"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, env={**os.environ, "CACHESAVER_CACHE_DIR": ""})
    one_line_error(done, "there is no cache at 'missing'")
    assert done.stdout == ""


def test_python_dash_m_runs_the_cache_commands_too(cache: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "cachesaver", "cache", "stats", "--cache", str(cache), "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and json.loads(done.stdout)["keys"] == 3


def test_output_into_a_closed_pipe_ends_quietly(cache: Path, tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([console_script(), "cache", "ls", "--cache", str(cache)], cwd=tmp_path, stdout=write,
                              stderr=subprocess.PIPE, timeout=30)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == b""
