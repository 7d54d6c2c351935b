"""Why a request is not served from the cache.

:func:`explain` looks a request up in a store, as its canonical request
(:func:`cachesaver.keys.canonical_request`), and says what it finds:

* the key holds enough samples not handed out yet: a hit;
* the key holds too few samples, or all it holds are already handed out in this run (in the
  request's namespace, samples are never handed out twice), and whether another namespace
  has a replay record of the same request_id, which is a hit there;
* nothing is stored under the key: the nearest stored requests, with the fields that differ
  (``temperature 0.7 vs 0.5``, ``model identity differs``, ``a system message was added``).

Nearest requests are searched among the first :data:`MAX_CATALOG` keys of the store whose
request is known (a key stored before requests were kept cannot be compared). The values are
frozen dataclasses; ``str()`` gives the sentence that :class:`~cachesaver.errors.CacheMissError`
carries.

>>> from cachesaver.store.memory import MemoryStore
>>> from cachesaver.store.protocol import Append
>>> from cachesaver.keys import canonical_request, canonical_request_text, store_key
>>> from cachesaver.typedefs import Request
>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Hot(Request):
...     temperature: float = 1.0
>>> store = MemoryStore()
>>> stored = Hot("Is 7 prime?", temperature=0.5)
>>> _ = store.commit([Append(store_key(stored, "m"), (("yes", None),), canonical_request_text(stored, "m"))])
>>> asked = Hot("Is 7 prime?", temperature=0.7, request_id="q1")
>>> print(explain(store, canonical_request(asked, "m"), namespace="default", request_id="q1", n=1))  # doctest: +ELLIPSIS
nothing is stored under this request's key ...; nearest stored: ... (1 sample): temperature 0.7 vs 0.5
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import StoreError
from ..keys import key_of_canonical_request
from ..store.protocol import InspectableStore, SampleStore, namespace_digest, parse_record_tag
from .catalog import decode_request, namespace_label, shorten

__all__ = [
    "MAX_CATALOG",
    "Catalog",
    "MissExplanation",
    "Nearby",
    "differences",
    "explain",
    "load_catalog",
    "miss_message",
]

MAX_CATALOG = 20_000
"""At most this many stored requests are compared when looking for the nearest ones."""
NEAREST = 3
_PREVIEW = 40


@dataclass(frozen=True)
class Nearby:
    """A stored request near the one explained: its key, sample count and what differs."""

    key: str
    count: int
    differences: tuple[str, ...]


@dataclass(frozen=True)
class Catalog:
    """The stored requests a search for the nearest ones compares: (key, canonical request,
    sample count), plus how many keys were left out (request unknown, or past the limit)."""

    items: tuple[tuple[str, Mapping[str, Any], int], ...] = ()
    unknown: int = 0
    skipped: int = 0
    by_prompt: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class MissExplanation:
    """What the cache holds for one request (see the module docstring).

    ``stored``: samples under its key; ``handed_out``: those already handed out in this run
    in its namespace, to other requests; ``elsewhere``: namespaces with a replay record of its
    request_id under this key, with how many samples that record holds; ``nearest``: when
    nothing is stored under the key, the stored requests nearest to it."""

    key: str
    namespace: str
    request_id: Any
    n: int
    stored: int
    handed_out: int = 0
    elsewhere: tuple[tuple[str, int], ...] = ()
    nearest: tuple[Nearby, ...] = ()
    catalog_size: int = 0
    unknown_requests: int = 0
    searched: bool = True

    @property
    def free(self) -> int:
        """Stored samples not handed out yet in this run and namespace."""
        return max(self.stored - self.handed_out, 0)

    @property
    def hit(self) -> bool:
        """Whether the request would be served from the cache now."""
        return self.free >= self.n

    def __str__(self) -> str:
        short = self.key[:12]
        if self.hit:
            text = (
                f"it would be served from the cache: key {short} holds {self.stored} sample(s), "
                f"{self.free} not handed out yet in namespace {self.namespace!r}"
            )
        elif self.stored == 0:
            text = f"nothing is stored under this request's key {short}"
            if self.nearest:
                near = "; ".join(
                    f"{item.key[:12]} ({_samples(item.count)}): {', '.join(item.differences) or 'the same fields'}"
                    for item in self.nearest
                )
                text += f"; nearest stored: {near}"
            elif not self.searched:
                text += " (nearest stored requests not searched: call explain_miss for them)"
            else:
                text += f"; the cache holds no other request to compare it with ({self.catalog_size} known"
                text += f", {self.unknown_requests} with request unknown)" if self.unknown_requests else ")"
        elif self.stored < self.n:
            text = f"key {short} holds {_samples(self.stored)} and the request asks {self.n}"
            if self.handed_out:
                text += f" ({self.handed_out} already handed out in this run)"
        elif self.free == 0:
            text = (
                f"all {_samples(self.stored)} stored under key {short} are already handed out in this "
                f"run (namespace {self.namespace!r}), and a sample is never handed out twice in a namespace"
            )
        else:
            text = (
                f"{self.handed_out} of the {_samples(self.stored)} stored under key {short} are already "
                f"handed out in this run (namespace {self.namespace!r}): {self.free} left, {self.n} asked"
            )
        if self.elsewhere and not self.hit:
            where = ", ".join(f"{name!r} with {_samples(count)}" for name, count in self.elsewhere)
            text += f"; it is a hit in another namespace: request_id {self.request_id!r} has a replay record in {where}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "namespace": self.namespace,
            "request_id": self.request_id,
            "n": self.n,
            "hit": self.hit,
            "stored": self.stored,
            "handed_out": self.handed_out,
            "elsewhere": [{"namespace": name, "samples": count} for name, count in self.elsewhere],
            "nearest": [
                {"key": item.key, "samples": item.count, "differences": list(item.differences)} for item in self.nearest
            ],
            "explanation": str(self),
        }


def miss_message(request: Any, key: str, needed: int, reason: MissExplanation | None) -> str:
    """The message of the CacheMissError a replay-mode pipeline raises for ``request``, whose
    key ``key`` is ``needed`` samples short: what it is, why (``reason``), what to do."""
    prompt = request.prompt
    text = prompt if isinstance(prompt, str) else str(prompt[-1].get("content")) if prompt else ""
    why = f": {reason}" if reason is not None else ""
    return (
        f"replay mode: the cache cannot serve request_id {request.request_id!r} in namespace "
        f"{request.namespace!r} ({needed} more needed, key {key[:12]}, prompt {shorten(text, 80)!r}){why}. "
        "Record it first (mode='record'), or use the cache the original run used"
    )


def _samples(count: int) -> str:
    return f"{count} sample" if count == 1 else f"{count} samples"


def load_catalog(store: SampleStore, limit: int = MAX_CATALOG) -> Catalog:
    """The stored requests of ``store`` (its first ``limit`` keys with a known request)."""
    if not isinstance(store, InspectableStore):
        return Catalog()
    items: list[tuple[str, Mapping[str, Any], int]] = []
    unknown = skipped = 0
    keys = list(store.iter_keys())
    for start in range(0, len(keys), 256):
        if len(items) >= limit:
            skipped += len(keys) - start
            break
        part = keys[start : start + 256]
        for key, value in store.inspect(part).items():
            if isinstance(value, StoreError) or value.count == 0:
                continue
            doc = decode_request(value.request)
            if doc is None or not isinstance(doc.get("fields"), Mapping):
                unknown += 1
            elif len(items) < limit:
                items.append((key, doc, value.count))
            else:
                skipped += 1
    by_prompt: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        by_prompt.setdefault(_prompt_text(item[1]), []).append(position)
    return Catalog(tuple(items), unknown, skipped, {k: tuple(v) for k, v in by_prompt.items()})


def explain(
    store: SampleStore,
    doc: Mapping[str, Any],
    *,
    namespace: str,
    request_id: Any,
    n: int,
    handed_out: int = 0,
    key: str | None = None,
    catalog: Catalog | None = None,
    search: bool = True,
) -> MissExplanation:
    """Explain how ``store`` serves the canonical request ``doc`` asked with ``namespace``,
    ``request_id`` and ``n`` (see the module docstring). ``handed_out``: samples of its key
    this run already gave to other requests of the namespace. ``key`` defaults to the one
    ``doc`` stands for. ``catalog`` (:func:`load_catalog`) is loaded when nothing is stored
    under the key and ``search`` is true. Blocks on the store: call it off the event loop."""
    if key is None:
        key = key_of_canonical_request(doc)
    view = store.view([key])[key]
    if isinstance(view, StoreError):
        raise view
    stored = view.count
    elsewhere: list[tuple[str, int]] = []
    if stored and request_id is not None and isinstance(store, InspectableStore):
        elsewhere = _elsewhere(store, key, namespace, request_id)
    nearest: tuple[Nearby, ...] = ()
    if stored == 0 and search:
        catalog = catalog if catalog is not None else load_catalog(store)
        nearest = _nearest(doc, catalog)
    size = len(catalog.items) if catalog is not None else 0
    unknown = catalog.unknown if catalog is not None else 0
    return MissExplanation(
        key, namespace, request_id, n, stored, min(handed_out, stored), tuple(elsewhere), nearest,
        size, unknown, search or stored > 0,
    )


def _elsewhere(store: InspectableStore, key: str, namespace: str, request_id: Any) -> list[tuple[str, int]]:
    described = store.inspect([key])[key]
    if isinstance(described, StoreError):
        return []
    names = store.namespace_names()
    own = namespace_digest(namespace)
    best: dict[str, int] = {}
    for tag, indices in described.records.items():
        parsed = parse_record_tag(tag)
        if parsed is None or parsed[0] == own or parsed[1] != request_id or type(parsed[1]) is not type(request_id):
            continue
        label = namespace_label(parsed[0], names)
        best[label] = max(best.get(label, 0), len(indices))
    return sorted(best.items())


# -- nearest requests ---------------------------------------------------------------------


def _prompt_text(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc.get("fields", {}).get("prompt"), sort_keys=True, ensure_ascii=False)


def _nearest(doc: Mapping[str, Any], catalog: Catalog) -> tuple[Nearby, ...]:
    if not catalog.items:
        return ()
    mine = _prompt_text(doc)
    same_prompt = catalog.by_prompt.get(mine, ())
    if same_prompt:
        positions: Sequence[int] = same_prompt
    else:
        # A cheap score first (fields that differ, shared prompt prefix), then a finer one on
        # the best few.
        scored = sorted(
            range(len(catalog.items)),
            key=lambda p: (_field_distance(doc, catalog.items[p][1]), -_shared_prefix(mine, _prompt_text(catalog.items[p][1]))),
        )
        positions = sorted(
            scored[:20],
            key=lambda p: (
                _field_distance(doc, catalog.items[p][1]),
                -difflib.SequenceMatcher(None, mine[:2000], _prompt_text(catalog.items[p][1])[:2000]).ratio(),
            ),
        )
    ranked = sorted(positions, key=lambda p: _field_distance(doc, catalog.items[p][1]))[:NEAREST]
    return tuple(
        Nearby(catalog.items[p][0], catalog.items[p][2], tuple(differences(doc, catalog.items[p][1]))) for p in ranked
    )


def _field_distance(mine: Mapping[str, Any], other: Mapping[str, Any]) -> int:
    a, b = mine.get("fields", {}), other.get("fields", {})
    distance = sum(1 for name in set(a) | set(b) if name != "prompt" and _json(a.get(name)) != _json(b.get(name)))
    distance += mine.get("model_identity") != other.get("model_identity")
    return distance


def _shared_prefix(a: str, b: str) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _show(value: Any) -> str:
    if value is None:
        return "absent"
    if isinstance(value, str):
        return repr(shorten(value, _PREVIEW))
    return shorten(_json(value), _PREVIEW)


def _identity(value: Any) -> str:
    return "none" if value is None else repr(value)


def differences(mine: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """What differs between two canonical requests, ``mine`` first, as short phrases:
    ``model identity differs: 'a' vs 'b'``, ``temperature 0.7 vs 0.5``, ``top_p 0.9 vs
    absent``, ``a system message was added``, ``1 message added at the end``, ``message 2
    (user) differs: ... vs ...``, ``prompt differs: ... vs ...``.

    >>> differences({"fields": {"prompt": "x", "temperature": 0.7}, "model_identity": "m"},
    ...             {"fields": {"prompt": "x", "temperature": 0.5}, "model_identity": None})
    ["model identity differs: 'm' vs none", 'temperature 0.7 vs 0.5']
    """
    out: list[str] = []
    if mine.get("model_identity") != other.get("model_identity"):
        out.append(
            f"model identity differs: {_identity(mine.get('model_identity'))} vs {_identity(other.get('model_identity'))}"
        )
    a, b = mine.get("fields", {}), other.get("fields", {})
    for name in sorted(set(a) | set(b)):
        if name == "prompt" or _json(a.get(name)) == _json(b.get(name)):
            continue
        out.append(f"{name} {_show(a.get(name))} vs {_show(b.get(name))}")
    out.extend(_prompt_differences(a.get("prompt"), b.get("prompt")))
    return out


def _prompt_differences(mine: Any, other: Any) -> list[str]:
    if _json(mine) == _json(other):
        return []
    if isinstance(mine, str) and isinstance(other, str):
        at = _shared_prefix(mine, other)
        return [f"prompt differs from character {at + 1}: {_show(mine[max(at - 10, 0):])} vs {_show(other[max(at - 10, 0):])}"]
    if not (isinstance(mine, list) and isinstance(other, list)):
        kinds = ("text" if isinstance(mine, str) else "a message list", "text" if isinstance(other, str) else "a message list")
        return [f"the prompt is {kinds[0]} vs {kinds[1]}"]
    out: list[str] = []
    system_a = [m for m in mine if isinstance(m, Mapping) and m.get("role") == "system"]
    system_b = [m for m in other if isinstance(m, Mapping) and m.get("role") == "system"]
    if system_a and not system_b:
        out.append("a system message was added")
    elif system_b and not system_a:
        out.append("the system message was removed")
    elif _json(system_a) != _json(system_b):
        out.append(f"the system message differs: {_show(_content(system_a[0]))} vs {_show(_content(system_b[0]))}")
    rest_a = [m for m in mine if m not in system_a]
    rest_b = [m for m in other if m not in system_b]
    if _json(rest_a) == _json(rest_b):
        return out
    shared = 0
    for x, y in zip(rest_a, rest_b):
        if _json(x) != _json(y):
            break
        shared += 1
    if shared == len(rest_b):
        extra = len(rest_a) - shared
        out.append(f"{extra} message{'s' if extra > 1 else ''} added at the end")
    elif shared == len(rest_a):
        gone = len(rest_b) - shared
        out.append(f"{gone} message{'s' if gone > 1 else ''} fewer at the end")
    else:
        x, y = rest_a[shared], rest_b[shared]
        role = x.get("role") if isinstance(x, Mapping) else "?"
        out.append(f"message {shared + 1} ({role}) differs: {_show(_content(x))} vs {_show(_content(y))}")
    return out


def _content(message: Any) -> Any:
    return message.get("content") if isinstance(message, Mapping) else message

