"""Bundles (cachesaver.artifacts.bundle): export, import into any engine, idempotence, and the
checks that keep a damaged or foreign file out."""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from _engines import ENGINES, DiskcacheDirectoryEngine, EngineFactory, make

from cachesaver.artifacts.bundle import FORMAT, export_bundle, import_bundle, read_manifest
from cachesaver.artifacts.catalog import entries, inspectable, read_samples
from cachesaver.errors import BatchRequestError, BundleError, CacheMissError
from cachesaver.keys import KEY_SCHEMA, store_key
from cachesaver.models import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.store.memory import MemoryStore
from cachesaver.store.protocol import Append, RecordId, RecordWrite, SampleStore
from cachesaver.typedefs import Batch, Request, Response


@dataclass(frozen=True)
class Hot(Request):
    temperature: float = 1.0


# A small sweep: two namespaces, ids, a key past the first 16 samples, one without ids.
SWEEP = {
    "run-1": [Hot("Is 7 prime?", n=3, request_id="q1"), Hot("Is 7 prime?", n=2, request_id="q2"),
              Hot("Name a prime.", n=20, request_id=7, temperature=0.7), Hot("No id", n=2)],
    "run-2": [Hot("Is 7 prime?", n=4, request_id="q1"), Hot("Name a prime.", n=1, request_id=7, temperature=0.7)],
}


def requests_of(namespace: str) -> list[Request]:
    return [dataclasses.replace(r, namespace=namespace) for r in SWEEP[namespace]]


async def run_sweep(cache: Any, model: Any, namespace: str, **options: Any) -> list[Response]:
    async with OnlineAPI(model, cache, batch_size=4, model_id="m", **options) as pipeline:
        return await pipeline.batch_request(Batch(requests_of(namespace)))


def _factory(request: pytest.FixtureRequest, folder: Path) -> Iterator[EngineFactory]:
    folder.mkdir(exist_ok=True)
    factory = make(ENGINES[request.param], folder, request)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(params=list(ENGINES))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineFactory]:
    """A store of each engine to export from."""
    yield from _factory(request, tmp_path / "source")


@pytest.fixture(params=list(ENGINES))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EngineFactory]:
    """An empty store of each engine to import into."""
    yield from _factory(request, tmp_path / "target")


def entry_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()[1:]


async def filled(engine: EngineFactory) -> tuple[SampleStore, dict[str, list[Response]]]:
    model = ScriptedModel(with_usage=True)
    first = {ns: await run_sweep(engine.pipeline_cache(), model, ns) for ns in SWEEP}
    return engine.open(), first


async def test_a_diskcache_export_imported_into_memory_exports_the_same_entries(tmp_path: Path) -> None:
    source = DiskcacheDirectoryEngine(tmp_path, tmp_path / "disk")
    try:
        store, first = await filled(source)
        exported = export_bundle(store, tmp_path / "a.csbundle")
        memory = MemoryStore()
        report = import_bundle(memory, tmp_path / "a.csbundle")
        again = export_bundle(memory, tmp_path / "b.csbundle")
    finally:
        source.close()
    assert entry_lines(tmp_path / "a.csbundle") == entry_lines(tmp_path / "b.csbundle")
    assert again.manifest.content_sha256 == exported.manifest.content_sha256
    assert again.manifest.counts == exported.manifest.counts == {"keys": 3, "samples": 27, "records": 5, "pickled_samples": 0}
    assert report.samples_added == 27 and report.records_added == 5  # run-2 reused run-1's samples
    # A replay of every exported namespace from the imported store: the same samples, no model call.
    for namespace, responses in first.items():
        replayed = await run_sweep(memory, ScriptedModel(), namespace, mode="replay")
        assert [r.data for r in replayed] == [r.data for r in responses]
        assert [r.usage for r in replayed] == [r.usage for r in responses]


async def test_a_diskcache_export_imported_into_every_engine_replays_and_exports_the_same(
    target: EngineFactory, tmp_path: Path
) -> None:
    source = DiskcacheDirectoryEngine(tmp_path, tmp_path / "disk")
    try:
        store, first = await filled(source)
        export_bundle(store, tmp_path / "a.csbundle")
    finally:
        source.close()
    imported = target.open()
    report = import_bundle(imported, tmp_path / "a.csbundle")
    assert (report.samples_added, report.records_added) == (27, 5)
    export_bundle(imported, tmp_path / "b.csbundle")
    assert entry_lines(tmp_path / "a.csbundle") == entry_lines(tmp_path / "b.csbundle")  # times included
    for namespace, responses in first.items():
        model = ScriptedModel()
        replayed = await run_sweep(target.pipeline_cache(), model, namespace, mode="replay")
        assert [r.data for r in replayed] == [r.data for r in responses] and model.calls == 0


async def test_every_engine_exports_what_it_holds(engine: EngineFactory, tmp_path: Path) -> None:
    store, first = await filled(engine)
    export_bundle(store, tmp_path / "a.csbundle")
    memory = MemoryStore()
    import_bundle(memory, tmp_path / "a.csbundle")
    export_bundle(memory, tmp_path / "b.csbundle")
    assert entry_lines(tmp_path / "a.csbundle") == entry_lines(tmp_path / "b.csbundle")
    lines = [json.loads(line) for line in entry_lines(tmp_path / "a.csbundle")]
    assert all(line["request"]["model_identity"] == "m" for line in lines)
    assert all(isinstance(s["stored_at"], float) for line in lines for s in line["samples"])
    model = ScriptedModel()
    replayed = await run_sweep(memory, model, "run-1", mode="replay")
    assert [r.data for r in replayed] == [r.data for r in first["run-1"]] and model.calls == 0


async def test_the_manifest_says_what_the_bundle_holds(tmp_path: Path) -> None:
    store, _ = await filled(ENGINES["memory"](tmp_path))
    report = export_bundle(store, tmp_path / "a.csbundle")
    manifest = read_manifest(tmp_path / "a.csbundle")
    assert manifest == report.manifest
    assert manifest.format == FORMAT and manifest.key_schema == KEY_SCHEMA
    assert manifest.namespaces == ("run-1", "run-2")
    assert manifest.created_at.endswith("+00:00") and manifest.cachesaver_version
    import hashlib

    body = "".join(line + "\n" for line in entry_lines(tmp_path / "a.csbundle")).encode()
    assert hashlib.sha256(body).hexdigest() == manifest.content_sha256
    first = json.loads(entry_lines(tmp_path / "a.csbundle")[0])
    assert set(first) == {"key", "request", "samples", "records"}
    assert set(first["samples"][0]) == {"data", "usage", "stored_at"}


async def test_importing_twice_changes_nothing_more(target: EngineFactory, tmp_path: Path) -> None:
    store, _ = await filled(ENGINES["memory"](tmp_path))
    export_bundle(store, tmp_path / "a.csbundle")
    imported = target.open()
    first = import_bundle(imported, tmp_path / "a.csbundle")
    before = [(e.key, e.count, e.records) for e in entries(imported)]
    second = import_bundle(imported, tmp_path / "a.csbundle")
    assert (first.keys_changed, second.keys_changed, second.samples_added, second.records_added) == (3, 0, 0, 0)
    assert [(e.key, e.count, e.records) for e in entries(imported)] == before


async def test_a_store_holding_some_samples_gets_the_rest_and_never_renumbers(tmp_path: Path) -> None:
    source, first = await filled(ENGINES["memory"](tmp_path))
    export_bundle(source, tmp_path / "a.csbundle")
    key = store_key(Hot("Name a prime.", temperature=0.7), "m")
    held = read_samples(source, key, 20)
    same = MemoryStore()
    same.commit([Append(key, tuple(held[:5]))])  # the bundle's first 5: a prefix
    other = MemoryStore()
    other.commit([Append(key, (("mine-0", None), ("mine-1", None)))])  # samples of its own
    for store in (same, other):
        import_bundle(store, tmp_path / "a.csbundle")
    assert read_samples(same, key, 20) == held
    assert read_samples(other, key, 22)[:2] == [("mine-0", None), ("mine-1", None)]  # kept at 0 and 1
    assert read_samples(other, key, 22)[2:] == held
    for store in (same, other):  # and a replay still gets the exported samples
        replayed = await run_sweep(store, ScriptedModel(), "run-2", mode="replay")
        assert [r.data for r in replayed] == [r.data for r in first["run-2"]]


async def test_a_replay_record_already_stored_keeps_its_samples(tmp_path: Path) -> None:
    source = MemoryStore()
    source.commit([Append("k", (("a", None), ("b", None)))], [RecordWrite("k", RecordId("ns", "q", 1, 0), (1,))])
    export_bundle(source, tmp_path / "a.csbundle")
    target = MemoryStore()
    target.commit([Append("k", (("a", None), ("b", None)))], [RecordWrite("k", RecordId("ns", "q", 1, 0), (0,))])
    report = import_bundle(target, tmp_path / "a.csbundle")
    assert report.records_kept == 1 and report.records_added == 0
    [entry] = entries(target)
    assert [r.indices for r in entry.records] == [(0,)]


def test_samples_that_are_not_json_are_refused_unless_pickles_are_allowed(tmp_path: Path) -> None:
    source = MemoryStore()
    source.commit([Append("fine", (("text", {"tokens": 1}),)), Append("tuple-key", ((("a", 1), None),))])
    with pytest.raises(BundleError, match="sample 0 of key tuple-key is a tuple, not plain JSON.*--allow-pickle"):
        export_bundle(source, tmp_path / "a.csbundle")
    assert not (tmp_path / "a.csbundle").exists()
    report = export_bundle(source, tmp_path / "a.csbundle", allow_pickle=True)
    assert report.manifest.counts["pickled_samples"] == 1
    target = MemoryStore()
    with pytest.raises(BundleError, match="1 pickled sample.*--allow-pickle"):
        import_bundle(target, tmp_path / "a.csbundle")
    assert list(inspectable(target).iter_keys()) == []  # nothing written
    import_bundle(target, tmp_path / "a.csbundle", allow_pickle=True)
    assert read_samples(target, "tuple-key", 1) == [(("a", 1), None)]  # a tuple again


@pytest.mark.parametrize("usage", [{1: "int key"}, float("nan"), ("t",)])
def test_usage_must_be_plain_json_too(tmp_path: Path, usage: Any) -> None:
    source = MemoryStore()
    source.commit([Append("k", (("x", usage),))])
    with pytest.raises(BundleError, match="key k"):
        export_bundle(source, tmp_path / "a.csbundle")


async def test_namespaces_pick_their_keys_and_records_only(tmp_path: Path) -> None:
    store, _ = await filled(ENGINES["memory"](tmp_path))
    report = export_bundle(store, tmp_path / "a.csbundle", namespaces=["run-2"])
    assert report.manifest.namespaces == ("run-2",)
    assert report.manifest.counts["keys"] == 2 and report.manifest.counts["records"] == 2
    lines = [json.loads(line) for line in entry_lines(tmp_path / "a.csbundle")]
    assert {r["namespace"] for line in lines for r in line["records"]} == {"run-2"}
    assert sum(len(line["samples"]) for line in lines) == 25  # every sample of those keys: 5 and 20


def test_records_of_a_namespace_with_no_stored_name_are_counted_and_exported_once_named(tmp_path: Path) -> None:
    from cachesaver.store.diskcache import DiskcacheStore
    import diskcache

    directory = tmp_path / "old"
    cache = diskcache.Cache(str(directory), eviction_policy="none")
    cache.set("cachesaver/1/head/k", ((("a", None),), {RecordId("paper", "q", 1, 0).tag: (0,)}))
    cache.close()
    store = DiskcacheStore(directory)
    try:
        report = export_bundle(store, tmp_path / "all.csbundle")
        assert report.unnamed_records == 1 and report.manifest.counts["records"] == 0
        named = export_bundle(store, tmp_path / "paper.csbundle", namespaces=["paper"])
        assert named.unnamed_records == 0 and named.manifest.counts["records"] == 1
        [line] = [json.loads(x) for x in entry_lines(tmp_path / "paper.csbundle")]
        assert line["request"] is None and line["records"][0]["namespace"] == "paper"
    finally:
        store.close()


def rewrite(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


async def test_a_damaged_edited_or_foreign_file_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    store, _ = await filled(ENGINES["memory"](tmp_path))
    path = tmp_path / "a.csbundle"
    export_bundle(store, path)
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        manifest, *lines = handle.read().splitlines()
    edited = json.loads(lines[0])
    edited["samples"][0]["data"] = "forged"
    cases = {
        "checksum": [manifest, json.dumps(edited, sort_keys=True, separators=(",", ":")), *lines[1:]],
        "format": [json.dumps({**json.loads(manifest), "format": "other/9"}), *lines],
        "schema": [json.dumps({**json.loads(manifest), "key_schema": "cachesaver-key/0"}), *lines],
    }
    forged_request = json.loads(lines[0])
    forged_request["request"]["fields"]["prompt"] = "something else"
    body = [json.dumps(forged_request, sort_keys=True, separators=(",", ":")), *lines[1:]]
    import hashlib

    digest = hashlib.sha256("".join(b + "\n" for b in body).encode()).hexdigest()
    cases["request"] = [json.dumps({**json.loads(manifest), "content_sha256": digest}), *body]
    said = {"checksum": "does not match its checksum", "format": "is not a cachesaver-bundle/1 bundle",
            "schema": "was keyed with 'cachesaver-key/0'", "request": "makes key"}
    for name, content in cases.items():
        bad = tmp_path / f"{name}.csbundle"
        rewrite(bad, content)
        target = MemoryStore()
        with pytest.raises(BundleError, match=said[name]):
            import_bundle(target, bad)
        assert list(inspectable(target).iter_keys()) == []
    (tmp_path / "plain.txt").write_text("not gzip\n")
    for bad in (tmp_path / "plain.txt", tmp_path / "missing.csbundle"):
        with pytest.raises(BundleError):
            import_bundle(MemoryStore(), bad)
    cut = tmp_path / "cut.csbundle"
    cut.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(BundleError, match="damaged"):
        import_bundle(MemoryStore(), cut)


async def test_a_forgotten_key_imports_again(tmp_path: Path) -> None:
    store, _ = await filled(ENGINES["memory"](tmp_path))
    export_bundle(store, tmp_path / "a.csbundle")
    target = MemoryStore()
    import_bundle(target, tmp_path / "a.csbundle")
    key = sorted(target.iter_keys())[0]
    count = target.forget(key)
    report = import_bundle(target, tmp_path / "a.csbundle")
    assert report.keys_changed == 1 and report.samples_added == count


async def test_an_exported_store_is_unchanged_and_two_exports_differ_only_in_the_manifest(tmp_path: Path) -> None:
    store, _ = await filled(ENGINES["memory"](tmp_path))
    before = [(e.key, e.count, e.records, e.stored_at) for e in entries(store)]
    export_bundle(store, tmp_path / "a.csbundle")
    export_bundle(store, tmp_path / "b.csbundle")
    assert [(e.key, e.count, e.records, e.stored_at) for e in entries(store)] == before
    assert entry_lines(tmp_path / "a.csbundle") == entry_lines(tmp_path / "b.csbundle")


async def test_a_replay_of_a_namespace_not_exported_misses(tmp_path: Path) -> None:
    store, _ = await filled(ENGINES["memory"](tmp_path))
    export_bundle(store, tmp_path / "a.csbundle", namespaces=["run-2"])
    target = MemoryStore()
    import_bundle(target, tmp_path / "a.csbundle")
    with pytest.raises(BatchRequestError) as caught:
        await run_sweep(target, ScriptedModel(), "run-1", mode="replay")
    # Its keys shared with run-2 are there; the one only run-1 used is not.
    assert [type(r) for r in caught.value.results] == [Response, Response, Response, CacheMissError]
