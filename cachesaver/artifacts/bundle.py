"""A cache as one portable file: export a store (or some of its namespaces), import it anywhere.

**Format** (``cachesaver-bundle/1``): one gzip file whose text is JSON Lines, UTF-8.

* Line 1, the manifest: ``format``, ``cachesaver_version``, ``key_schema``
  (:data:`cachesaver.keys.KEY_SCHEMA`), ``created_at`` (ISO 8601, UTC), ``namespaces`` (the
  names whose replay records it holds), ``counts`` (``keys``, ``samples``, ``records``,
  ``pickled_samples``) and ``content_sha256``: the SHA-256 of every byte after the manifest's
  line, that is of the entry lines exactly as stored.
* Then one line per key, sorted by key: ``{"key", "request", "samples", "records"}``. ``request``
  is the key's canonical request (:func:`cachesaver.keys.canonical_request`) or null when
  unknown. ``samples`` lists every sample of the key in index order, each ``{"data", "usage",
  "stored_at"}``, or ``{"pickle", "stored_at"}`` (base64 of the pickled ``(data, usage)`` pair)
  for a sample that is not plain JSON. ``records`` lists the replay records, each
  ``{"namespace", "request_id", "n", "use", "indices"}``.

Plain JSON means str, int, float (finite), bool, None, lists and dicts with string keys, all
the way down: what comes back from JSON exactly as it went in (a tuple would come back a list,
so it is not plain). A sample that is not is refused by :func:`export_bundle` with a
:class:`~cachesaver.errors.BundleError` naming its key, unless ``allow_pickle=True``; importing
such a bundle needs ``allow_pickle=True`` too, since unpickling runs code of whoever made the
file.

**Guarantees.**

* Exporting is read-only; the file is written to a temporary name and renamed, so a reader
  never sees half a bundle. The same store content gives the same entry lines (and checksum)
  on every engine: only ``created_at`` (and the version) of the manifest differ.
* With ``namespaces``, only the keys with replay records in those namespaces are exported, with
  every sample they hold (indices stay valid) and only those namespaces' records. Requests
  without a request_id leave no record, so keys only they used are not among them: export
  the whole store to keep those. Without it,
  every key and every record whose namespace name the store knows; records of namespaces whose
  name was never stored (written before names were kept) are left out and counted
  (``ExportReport.unnamed_records``): export them by naming their namespace.
* :func:`import_bundle` checks the whole file first (format, key schema, checksum, that each
  known request is the one its key was made from) and writes nothing if any check fails. It
  then commits each key atomically, with a commit token derived from the entry and what the
  store held, so importing twice, or into a store that already holds some of the entries,
  changes nothing more: a key whose stored samples are the bundle's first ones gets the rest
  appended; a key whose samples differ keeps them, at their indices (a stored sample is never
  renumbered), and gets the bundle's samples after them, its records pointing there. A replay
  record already stored for the same request keeps its samples (``ImportReport.records_kept``
  counts those that differ). Into an empty store, a replay of the exported namespaces returns
  exactly the samples the exported store returns, with no model call.

>>> import tempfile, os
>>> from cachesaver.store.memory import MemoryStore
>>> from cachesaver.store.protocol import Append, RecordId, RecordWrite
>>> source = MemoryStore()
>>> _ = source.commit([Append("k", (("4", None),))], [RecordWrite("k", RecordId("run-1", "q1", 1, 0), ((0, 1),))])
>>> path = os.path.join(tempfile.mkdtemp(), "run-1.csbundle")
>>> export_bundle(source, path).manifest.counts
{'keys': 1, 'samples': 1, 'records': 1, 'pickled_samples': 0}
>>> target = MemoryStore()
>>> import_bundle(target, path).samples_added, import_bundle(target, path).samples_added
(1, 0)
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import pickle
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

from ..errors import BundleError, ConfigurationError, StoreError
from ..keys import KEY_SCHEMA, key_of_canonical_request
from ..store.protocol import (
    Append,
    RecordId,
    RecordWrite,
    SampleStore,
    StoredSample,
    import_token_prefix,
    namespace_digest,
)
from .catalog import Entry, entries, inspectable, read_samples

__all__ = ["FORMAT", "BundleManifest", "ExportReport", "ImportReport", "export_bundle", "import_bundle", "read_manifest"]

FORMAT = "cachesaver-bundle/1"
_CHUNK = 256


def _version() -> str:
    try:
        return importlib.metadata.version("cachesaver")
    except importlib.metadata.PackageNotFoundError:
        from .. import __version__

        return str(__version__)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class BundleManifest:
    """The first line of a bundle (see the module docstring)."""

    cachesaver_version: str
    key_schema: str
    created_at: str
    namespaces: tuple[str, ...]
    counts: Mapping[str, int]
    content_sha256: str
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "cachesaver_version": self.cachesaver_version,
            "key_schema": self.key_schema,
            "created_at": self.created_at,
            "namespaces": list(self.namespaces),
            "counts": dict(self.counts),
            "content_sha256": self.content_sha256,
        }


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_bundle` wrote: the manifest, and how many records it left out
    because their namespace has no stored name."""

    path: str
    manifest: BundleManifest
    unnamed_records: int = 0


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_bundle` did: keys in the bundle, keys it changed, samples appended,
    records written, records already stored with other samples (kept), and keys whose commit
    token showed them already imported."""

    keys: int = 0
    keys_changed: int = 0
    samples_added: int = 0
    records_added: int = 0
    records_kept: int = 0
    already_applied: int = 0
    namespaces: tuple[str, ...] = field(default_factory=tuple)


# -- samples as JSON ------------------------------------------------------------------------


def is_plain_json(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` comes back from JSON exactly as it is (see the module docstring)."""
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth > 100:
        return False
    if kind is list:
        return all(is_plain_json(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and is_plain_json(v, depth + 1) for k, v in value.items())
    return False


def encode_sample(sample: StoredSample, stored_at: float | None, allow_pickle: bool, key: str, index: int) -> dict[str, Any]:
    """One sample as a bundle's JSON object; BundleError naming the key when it is not plain
    JSON and ``allow_pickle`` is false."""
    data, usage = sample
    if is_plain_json(data) and is_plain_json(usage):
        return {"data": data, "usage": usage, "stored_at": stored_at}
    if not allow_pickle:
        what = type(data).__name__ if not is_plain_json(data) else f"usage of type {type(usage).__name__}"
        raise BundleError(
            f"sample {index} of key {key} is a {what}, not plain JSON, so a bundle cannot hold it as "
            "JSON; nothing was exported. Pass --allow-pickle (allow_pickle=True) to keep such samples "
            "pickled (importing them then needs --allow-pickle too), or export other namespaces"
        )
    try:
        blob = pickle.dumps((data, usage), protocol=4)
    except Exception as exc:  # noqa: BLE001 - a sample that cannot be pickled
        raise BundleError(f"sample {index} of key {key} cannot be pickled: {exc}; nothing was exported") from exc
    return {"pickle": base64.b64encode(blob).decode("ascii"), "stored_at": stored_at}


def decode_sample(item: Any, allow_pickle: bool, key: str) -> tuple[StoredSample, float | None]:
    """A bundle's sample object back as ``((data, usage), stored_at)``."""
    if not isinstance(item, dict):
        raise BundleError(f"a sample of key {key} in the bundle is not an object; the file is damaged")
    stored_at = item.get("stored_at")
    if stored_at is not None and type(stored_at) not in (int, float):
        raise BundleError(f"a sample of key {key} has a stored_at that is not a number; the file is damaged")
    when = None if stored_at is None else float(stored_at)
    if "pickle" in item:
        if not allow_pickle:
            raise BundleError(
                f"key {key} holds pickled samples; unpickling runs code of whoever made the bundle, so it "
                "is refused unless you trust the file: pass --allow-pickle (allow_pickle=True)"
            )
        try:
            value = pickle.loads(base64.b64decode(item["pickle"]))
        except Exception as exc:  # noqa: BLE001 - a damaged pickle
            raise BundleError(f"a pickled sample of key {key} cannot be read: {exc}") from exc
        if type(value) is not tuple or len(value) != 2:
            raise BundleError(f"a pickled sample of key {key} is not a (data, usage) pair")
        return value, when
    if "data" not in item:
        raise BundleError(f"a sample of key {key} in the bundle has no data; the file is damaged")
    return (item["data"], item.get("usage")), when


def fingerprint(sample: StoredSample) -> str:
    """A text that is equal for equal samples: their JSON, else their pickle (for comparing
    what a store holds with what a bundle holds)."""
    data, usage = sample
    if is_plain_json(data) and is_plain_json(usage):
        return "j" + _dumps([data, usage])
    try:
        return "p" + base64.b64encode(pickle.dumps((data, usage), protocol=4)).decode("ascii")
    except Exception:  # noqa: BLE001 - never equal to anything
        return f"x{id(sample)}"


# -- export -----------------------------------------------------------------------------------


def export_bundle(
    store: SampleStore,
    path: str | os.PathLike[str],
    *,
    namespaces: Sequence[str] | None = None,
    allow_pickle: bool = False,
) -> ExportReport:
    """Write ``store`` (only the keys and records of ``namespaces``, when given) to a bundle at
    ``path``; see the module docstring. Raises BundleError (nothing written at ``path``) for a
    sample that is not plain JSON without ``allow_pickle``, ConfigurationError for an engine
    that cannot be listed, StoreError when the store cannot be read."""
    browsable = inspectable(store)
    names = browsable.namespace_names()
    selected = None if namespaces is None else {namespace_digest(ns): ns for ns in namespaces}
    known = dict(names)
    if selected is not None:
        known.update(selected)
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    digest = hashlib.sha256()
    counts = {"keys": 0, "samples": 0, "records": 0, "pickled_samples": 0}
    found_namespaces: set[str] = set()
    unnamed = 0
    with tempfile.TemporaryFile("w+b") as body:
        for entry in entries(store):
            if entry.error is not None:
                raise StoreError(f"key {entry.key} cannot be read: {entry.error}; nothing was exported")
            records = []
            for record in entry.records:
                if selected is not None and record.digest not in selected:
                    continue
                name = known.get(record.digest)
                if name is None:
                    unnamed += 1
                    continue
                records.append({"namespace": name, "request_id": record.request_id, "n": record.n,
                                "use": record.use, "indices": list(record.indices)})
                found_namespaces.add(name)
            if selected is not None and not records:
                continue
            line = _entry_line(store, entry, records, allow_pickle)
            counts["keys"] += 1
            counts["samples"] += entry.count
            counts["records"] += len(records)
            counts["pickled_samples"] += line.count(b'"pickle":')
            digest.update(line)
            body.write(line)
        manifest = BundleManifest(
            cachesaver_version=_version(),
            key_schema=KEY_SCHEMA,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            namespaces=tuple(sorted(found_namespaces)),
            counts=counts,
            content_sha256=digest.hexdigest(),
        )
        body.seek(0)
        handle, partial = tempfile.mkstemp(prefix=".cachesaver-bundle-", dir=folder)
        try:
            with os.fdopen(handle, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
                out.write((_dumps(manifest.to_dict()) + "\n").encode("utf-8"))
                while chunk := body.read(1 << 20):
                    out.write(chunk)
            os.replace(partial, target)
        except BaseException:
            try:
                os.remove(partial)
            except OSError:
                pass
            raise
    return ExportReport(target, manifest, unnamed)


def _entry_line(store: SampleStore, entry: Entry, records: list[dict[str, Any]], allow_pickle: bool) -> bytes:
    samples = read_samples(store, entry.key, entry.count)
    stamps = list(entry.stored_at) + [None] * (len(samples) - len(entry.stored_at))
    encoded = [encode_sample(s, t, allow_pickle, entry.key, i) for i, (s, t) in enumerate(zip(samples, stamps))]
    records.sort(key=lambda r: (r["namespace"], type(r["request_id"]).__name__, str(r["request_id"]), r["n"], r["use"]))
    line = {"key": entry.key, "request": entry.request, "samples": encoded, "records": records}
    try:
        return (_dumps(line) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:  # a request that is not JSON: cannot happen for ours
        raise BundleError(f"key {entry.key} cannot be written as JSON: {exc}; nothing was exported") from exc


# -- reading ----------------------------------------------------------------------------------


def _open(path: str) -> gzip.GzipFile:
    try:
        return gzip.GzipFile(path, "rb")
    except OSError as exc:
        raise BundleError(f"cannot open the bundle {path}: {exc}") from exc


def read_manifest(path: str | os.PathLike[str]) -> BundleManifest:
    """The manifest of the bundle at ``path``; BundleError when it is not a bundle of this
    format or key schema."""
    with _open(os.fspath(path)) as handle:
        return _manifest(handle, os.fspath(path))


def _manifest(handle: gzip.GzipFile, path: str) -> BundleManifest:
    try:
        first = handle.readline()
        value = json.loads(first)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise BundleError(f"{path} is not a cachesaver bundle (a gzip file of JSON lines): {exc}") from exc
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        got = value.get("format") if isinstance(value, dict) else None
        raise BundleError(f"{path} is not a {FORMAT} bundle (its format is {got!r})")
    if value.get("key_schema") != KEY_SCHEMA:
        raise BundleError(
            f"{path} was keyed with {value.get('key_schema')!r} and this cachesaver keys with {KEY_SCHEMA!r}; "
            "its samples would never be found. Import it with the cachesaver version that wrote it"
        )
    try:
        return BundleManifest(
            cachesaver_version=str(value["cachesaver_version"]),
            key_schema=value["key_schema"],
            created_at=str(value["created_at"]),
            namespaces=tuple(value["namespaces"]),
            counts={str(k): int(v) for k, v in value["counts"].items()},
            content_sha256=str(value["content_sha256"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"the manifest of {path} is incomplete ({exc}); the file is damaged") from exc


@dataclass(frozen=True)
class _BundleEntry:
    key: str
    request: dict[str, Any] | None
    samples: tuple[StoredSample, ...]
    stamps: tuple[float | None, ...]
    records: tuple[tuple[RecordId, tuple[int, ...]], ...]
    line_sha256: str


def _entries(path: str, allow_pickle: bool) -> Iterator[_BundleEntry]:
    """Every entry of the bundle, checked (the checksum is checked by :func:`_verify`)."""
    with _open(path) as handle:
        _manifest(handle, path)
        try:
            for line in handle:
                yield _entry(line, allow_pickle)
        except (OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"{path} is damaged (cut short?): {exc}") from exc


def _entry(line: bytes, allow_pickle: bool) -> _BundleEntry:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise BundleError(f"a line of the bundle is not JSON: {exc}; the file is damaged") from exc
    if not isinstance(value, dict) or not isinstance(value.get("key"), str):
        raise BundleError("a line of the bundle is not an entry (no key); the file is damaged")
    key = value["key"]
    request = value.get("request")
    if request is not None:
        try:
            made = key_of_canonical_request(request)
        except ConfigurationError as exc:
            raise BundleError(f"the request of key {key} in the bundle is not a canonical request: {exc}") from exc
        if made != key:
            raise BundleError(
                f"the request stored with key {key} in the bundle makes key {made}: the bundle was edited "
                "or is damaged; nothing was imported"
            )
    decoded = [decode_sample(item, allow_pickle, key) for item in value.get("samples") or ()]
    records = []
    for item in value.get("records") or ():
        try:
            rid = RecordId(item["namespace"], item["request_id"], int(item["n"]), int(item["use"]))
            indices = tuple(int(i) for i in item["indices"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"a replay record of key {key} in the bundle is malformed ({exc})") from exc
        if (
            not isinstance(rid.namespace, str)
            or isinstance(rid.request_id, bool)
            or not isinstance(rid.request_id, (str, int))
            or any(i < 0 or i >= len(decoded) for i in indices)
        ):
            raise BundleError(f"a replay record of key {key} in the bundle names no sample of it; the file is damaged")
        records.append((rid, indices))
    return _BundleEntry(
        key, request, tuple(s for s, _ in decoded), tuple(t for _, t in decoded), tuple(records),
        hashlib.sha256(line).hexdigest(),
    )


def _verify(path: str, allow_pickle: bool) -> BundleManifest:
    """Read the whole bundle once: its manifest, its checksum and every entry; nothing else."""
    with _open(path) as handle:
        manifest = _manifest(handle, path)
        if manifest.counts.get("pickled_samples", 0) and not allow_pickle:
            raise BundleError(
                f"{path} holds {manifest.counts['pickled_samples']} pickled sample(s); unpickling runs code of "
                "whoever made the bundle, so it is refused unless you trust the file: pass --allow-pickle "
                "(allow_pickle=True). Nothing was imported"
            )
        digest = hashlib.sha256()
        try:
            for line in handle:
                digest.update(line)
                _entry(line, allow_pickle)
        except (OSError, EOFError, zlib.error) as exc:
            raise BundleError(f"{path} is damaged (cut short?): {exc}; nothing was imported") from exc
    if digest.hexdigest() != manifest.content_sha256:
        raise BundleError(
            f"{path} does not match its checksum (content sha256 {digest.hexdigest()[:16]}..., manifest "
            f"{manifest.content_sha256[:16]}...): it is damaged or was edited; nothing was imported"
        )
    return manifest


# -- import -----------------------------------------------------------------------------------


def import_bundle(store: SampleStore, path: str | os.PathLike[str], *, allow_pickle: bool = False) -> ImportReport:
    """Import the bundle at ``path`` into ``store``, idempotently; see the module docstring.

    Raises BundleError (nothing written) when the file fails a check, StoreError when the store
    refuses a write (the keys committed before it stay, and importing again completes the rest)."""
    where = os.fspath(path)
    manifest = _verify(where, allow_pickle)
    if not store.writable:
        raise StoreError(f"the store at {store.location} is read-only; import into a writable one")
    report = dict(keys=0, keys_changed=0, samples_added=0, records_added=0, records_kept=0, already_applied=0)
    batch: list[_BundleEntry] = []
    for entry in _entries(where, allow_pickle):
        batch.append(entry)
        if len(batch) >= _CHUNK:
            _import_batch(store, batch, report)
            batch = []
    if batch:
        _import_batch(store, batch, report)
    return ImportReport(**report, namespaces=manifest.namespaces)


def _import_batch(store: SampleStore, batch: list[_BundleEntry], report: dict[str, int]) -> None:
    keys = [entry.key for entry in batch]
    views = store.view(keys, [(e.key, rid.tag) for e in batch for rid, _ in e.records])
    for entry in batch:
        report["keys"] += 1
        view = views[entry.key]
        if isinstance(view, StoreError):
            raise view
        held = read_samples(store, entry.key, view.count) if view.count else []
        prefix = 0
        for mine, theirs in zip(held, entry.samples):
            if fingerprint(mine) != fingerprint(theirs):
                break
            prefix += 1
        # Bundle samples past the shared prefix are appended, one append each so that a record
        # can name any of them (appends to one key in one commit get consecutive indices).
        fresh = entry.samples[prefix:]  # none when the store already holds all of them
        text = _dumps(entry.request) if entry.request is not None else None
        appends = [
            Append(entry.key, (sample,), text if i == 0 else None, entry.stamps[prefix + i])
            for i, sample in enumerate(fresh)
        ]
        writes = []
        for rid, indices in entry.records:
            parts: tuple[int | tuple[int, int], ...] = tuple(
                i if i < prefix else (i - prefix, 1) for i in indices
            )
            stored = view.found.get(rid.tag)
            if stored is not None:
                if any(isinstance(p, tuple) for p in parts) or tuple(parts) != stored:
                    report["records_kept"] += 1
                continue
            writes.append(RecordWrite(entry.key, rid, parts))
        if not appends and not writes:
            continue
        token = f"{import_token_prefix(entry.key)}{entry.line_sha256}/{view.count}/{prefix}"
        if store.commit(appends, writes, token=token) is None:
            report["already_applied"] += 1
            continue
        report["keys_changed"] += 1
        report["samples_added"] += len(appends)
        report["records_added"] += len(writes)
