"""A store read as entries people can read: one :class:`Entry` per key.

Works on any engine implementing :class:`~cachesaver.store.protocol.InspectableStore`
(:func:`inspectable` says which do not). An entry holds the key's canonical request (decoded;
None: "request unknown", for keys stored before requests were kept), its sample count and
times, and its replay records with their namespace names (a namespace whose name the store
never kept shows as ``?`` plus the start of its digest). Samples themselves are read with the
store's ``read`` (:func:`read_samples`).

>>> from cachesaver.store.memory import MemoryStore
>>> from cachesaver.store.protocol import Append, RecordId, RecordWrite
>>> store = MemoryStore()
>>> _ = store.commit([Append("k", (("4", None),), '{"fields":{"prompt":"2+2?"},"key_schema":"cachesaver-key/1","model_identity":null}')],
...                  [RecordWrite("k", RecordId("run-1", "q1", 1, 0), ((0, 1),))])
>>> [entry] = entries(store)
>>> entry.count, entry.preview(), entry.uses()
(1, '2+2?', {'run-1': 1})
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..errors import ConfigurationError, StoreError
from ..store.protocol import InspectableStore, KeyEntry, SampleStore, StoredSample, parse_record_tag

__all__ = ["Entry", "Record", "entries", "inspectable", "namespace_label", "read_samples"]

UNKNOWN_REQUEST = "request unknown"


def inspectable(store: SampleStore) -> InspectableStore:
    """``store`` as an InspectableStore; ConfigurationError naming the engine when it is not."""
    if not isinstance(store, InspectableStore):
        raise ConfigurationError(
            f"the store at {store.location} ({type(store).__name__}) cannot be listed: its engine does not "
            "implement cachesaver.store.protocol.InspectableStore"
        )
    return store


def namespace_label(digest: str, names: Mapping[str, str]) -> str:
    """The name of the namespace with ``digest``, or ``?`` and its first 8 digits."""
    return names.get(digest) or f"?{digest[:8]}"


@dataclass(frozen=True)
class Record:
    """One replay record: the ``use``-th request with ``request_id`` asking ``n`` samples in
    the namespace got the samples at ``indices``. ``namespace`` is None when its name is not
    stored (``digest`` always is)."""

    digest: str
    namespace: str | None
    request_id: Any
    n: int
    use: int
    indices: tuple[int, ...]
    tag: str

    @property
    def label(self) -> str:
        return self.namespace if self.namespace is not None else f"?{self.digest[:8]}"


@dataclass(frozen=True)
class Entry:
    """What a store holds for one key, decoded. ``error`` is set (and the rest empty) for a
    key the store could not read."""

    key: str
    count: int
    request: dict[str, Any] | None
    stored_at: tuple[float | None, ...]
    records: tuple[Record, ...]
    error: str | None = None

    @property
    def newest(self) -> float | None:
        known = [t for t in self.stored_at if t is not None]
        return max(known) if known else None

    @property
    def oldest(self) -> float | None:
        known = [t for t in self.stored_at if t is not None]
        return min(known) if known else None

    def uses(self) -> dict[str, int]:
        """How many replay records the key has per namespace (label -> count), by name."""
        out: dict[str, int] = {}
        for record in self.records:
            out[record.label] = out.get(record.label, 0) + 1
        return dict(sorted(out.items()))

    def preview(self, width: int = 60) -> str:
        """The prompt on one line (a message list: its last message), at most ``width``
        characters; ``request unknown`` when the request was not kept."""
        if self.request is None:
            return UNKNOWN_REQUEST
        return shorten(prompt_text(self.request.get("fields", {}).get("prompt")), width)


def prompt_text(prompt: Any) -> str:
    """A prompt as one line of text (a message list: ``[k messages] role: content`` of the last)."""
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and isinstance(prompt[-1], Mapping):
        last = prompt[-1]
        text = f"{last.get('role')}: {last.get('content')}"
        if len(prompt) > 1:
            text = f"[{len(prompt)} messages] {text}"
    else:
        text = json.dumps(prompt, ensure_ascii=False)
    return " ".join(str(text).split())


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def decode_request(text: str | None) -> dict[str, Any] | None:
    """A stored canonical request decoded, None when unknown or not JSON."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def to_entry(described: KeyEntry, names: Mapping[str, str]) -> Entry:
    records = []
    for tag, indices in described.records.items():
        parsed = parse_record_tag(tag)
        if parsed is None:
            continue
        digest, request_id, n, use = parsed
        records.append(Record(digest, names.get(digest), request_id, n, use, tuple(indices), tag))
    records.sort(key=lambda r: (r.label, type(r.request_id).__name__, str(r.request_id), r.n, r.use))
    return Entry(described.key, described.count, decode_request(described.request), tuple(described.stored_at), tuple(records))


def entries(
    store: SampleStore, keys: Iterable[str] | None = None, *, chunk: int = 256
) -> Iterator[Entry]:
    """The entry of each of ``keys`` (default: every key, sorted), described ``chunk`` keys
    at a time. A key the store cannot read is an Entry with ``error`` set."""
    browsable = inspectable(store)
    names = browsable.namespace_names()
    wanted = sorted(browsable.iter_keys()) if keys is None else list(keys)
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        described = browsable.inspect(part)
        for key in part:
            value = described[key]
            if isinstance(value, StoreError):
                yield Entry(key, 0, None, (), (), error=str(value))
            else:
                yield to_entry(value, names)


def read_samples(store: SampleStore, key: str, count: int) -> list[StoredSample]:
    """Every sample of ``key`` (``count`` of them), in index order; StoreError if unreadable."""
    if count == 0:
        return []
    got = store.read({key: list(range(count))})[key]
    if isinstance(got, StoreError):
        raise got
    return list(got)


def find_key(store: SampleStore, prefix: str, keys: Sequence[str] | None = None) -> str:
    """The one key starting with ``prefix`` (at least 4 characters); ConfigurationError when
    none or several do."""
    if len(prefix) < 4:
        raise ConfigurationError(f"give at least 4 characters of the key, got {prefix!r}")
    candidates = [k for k in (inspectable(store).iter_keys() if keys is None else keys) if k.startswith(prefix)]
    if not candidates:
        raise ConfigurationError(f"no key starting with {prefix!r} in {store.location}")
    if len(candidates) > 1:
        raise ConfigurationError(
            f"{len(candidates)} keys start with {prefix!r} in {store.location}; give more characters"
        )
    return candidates[0]
