"""Canonical cache keys for requests.

A request's key is the SHA-256 of a canonical JSON encoding of every dataclass field except
``n``, ``request_id`` and ``namespace`` (:data:`NON_KEY_FIELDS`), tagged with :data:`KEY_SCHEMA`.
A Request class may leave more of its fields out of the key by naming them in a class attribute
``unkeyed_fields`` (a tuple or frozenset of field names; for settings that do not change the
samples, such as a per-call time-out); such fields may hold any value. Guarantees:

* Stable across processes, machines and Python runs (no ``hash()``, no pickles).
* List order and repetition matter; dict key order does not.
* ``1`` and ``1.0`` key the same (an integral float is keyed as the int); ``True`` and ``1`` differ.
* A field whose value is None counts as absent, so a Request subclass that declares
  ``stop: list | None = None`` keys like a class without ``stop``, and a field whose default
  equals an explicitly passed value keys the same as passing it (only values are keyed, never
  the class).
* Tuples key like lists; enums key like their value.
* Anything without a canonical encoding (sets, NaN or infinities, dicts with non-string keys,
  arbitrary objects, text holding a lone surrogate such as ``"\\ud800"``, which is not valid
  Unicode and has no UTF-8 form, a list or dict that contains itself, or lists and dicts nested
  more than :data:`MAX_DEPTH` levels deep) raises
  :class:`~cachesaver.errors.UnserializableParameterError` naming the field, rather than
  risking a silent collision or a ``RecursionError``.

The key is computed once per request object and remembered on it.

**The model is part of a sample's identity.** A cache stage stores samples under
:func:`store_key`: the request's key when its model has no identity, else the SHA-256 of that
key and the identity. :func:`model_identity` says which identity a model gets; shipped
backends declare none because their requests already name the model (``ChatRequest`` keys
backend, base_url and model), so their keys are exactly :func:`request_key`.

>>> from cachesaver.typedefs import Request
>>> request_key(Request("hi")) == request_key(Request("hi", n=5, namespace="other"))
True
>>> len(request_key(Request("hi")))
64
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError, UnserializableParameterError
from .stages.base import Stage

__all__ = [
    "KEY_SCHEMA",
    "NON_KEY_FIELDS",
    "canonical_request",
    "canonical_request_text",
    "canonical_value",
    "key_of_canonical_request",
    "model_identity",
    "request_key",
    "store_key",
]

logger = logging.getLogger(__name__)

KEY_SCHEMA = "cachesaver-key/1"
NON_KEY_FIELDS = frozenset({"n", "request_id", "namespace"})
MAX_DEPTH = 100
"""How deeply lists and dicts may nest inside one field (a chat prompt uses 2 or 3 levels);
deeper values, and values that contain themselves, are refused."""

_MEMO = "_cachesaver_key"
_fields_by_class: dict[type, tuple[str, ...]] = {}
_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _c_encoder() -> Any:
    """The same encoding as ``_encoder.encode``, built once (``JSONEncoder.encode`` builds its
    C encoder anew on every call), or None: no C accelerator, or one whose interface or output
    differs (checked here, at import). No cycle markers: canonical values are fresh, acyclic
    lists and dicts."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encode = make(None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", True, False, False)
        sample = [KEY_SCHEMA, {"b": [1, -0.5, 1e300, None, True, "\u00e9\u2028\"\\\n\U0001f600"], "a": {"y": 2, "x": ""}}]
        if "".join(encode(sample, 0)) != _encoder.encode(sample):
            return None
    except Exception:  # noqa: BLE001 - another interface: the standard encoder is used
        return None
    return encode


_c_encode = _c_encoder()


def _json(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, no spaces, UTF-8 text as is, no NaN."""
    if _c_encode is None:
        return _encoder.encode(value)
    return "".join(_c_encode(value, 0))


def _key_fields(cls: type) -> tuple[str, ...]:
    names = _fields_by_class.get(cls)
    if names is None:
        unkeyed = getattr(cls, "unkeyed_fields", None) or ()
        if not isinstance(unkeyed, (tuple, list, frozenset, set)) or not all(isinstance(x, str) for x in unkeyed):
            raise ConfigurationError(
                f"{cls.__name__}.unkeyed_fields must be a tuple of field names, got {unkeyed!r}"
            )
        skipped = NON_KEY_FIELDS.union(unkeyed)
        names = tuple(f.name for f in dataclasses.fields(cls) if f.name not in skipped)
        _fields_by_class[cls] = names
    return names


class _TooDeep(Exception):
    """Internal: a value nested more than MAX_DEPTH levels (or containing itself)."""


def canonical_value(value: Any, path: str = "value") -> Any:
    """The canonical JSON-ready form of ``value``; raises UnserializableParameterError if none."""
    try:
        return _canonical(value, path, 0)
    except _TooDeep:
        if _contains_itself(value):
            raise UnserializableParameterError(
                f"{path} contains itself (a list or dict that holds a reference to itself or to one "
                "of its parents), which has no finite form for the cache key; pass a copy without the cycle"
            ) from None
        raise UnserializableParameterError(
            f"{path} nests lists and dicts more than {MAX_DEPTH} levels deep, more than a cache key "
            "accepts; flatten it, or pass the deep part as a JSON string"
        ) from None


def _canonical(value: Any, path: str, depth: int) -> Any:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value
    if kind is float:
        if value.is_integer():
            return int(value)
        if math.isfinite(value):
            return value
        raise UnserializableParameterError(
            f"{path} is {value!r}; NaN and infinities have no canonical cache key, pass a finite number"
        )
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise _TooDeep
        return [_canonical(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            raise _TooDeep
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise UnserializableParameterError(
                    f"{path} has a {type(k).__name__} key {k!r}; only string keys can be keyed "
                    "canonically (JSON would silently turn 1 and '1' into the same key)"
                )
            out[k] = _canonical(v, f"{path}[{k!r}]", depth + 1)
        return out
    if isinstance(value, enum.Enum):
        return _canonical(value.value, path, depth)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _canonical(float(value), path, depth)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise _TooDeep
        return [_canonical(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        raise UnserializableParameterError(
            f"{path} is a {kind.__name__}, which has no order; pass a sorted list instead"
        )
    raise UnserializableParameterError(
        f"{path} is a {kind.__name__}, which has no canonical form for the cache key; "
        "use str, int, float, bool, None, lists and string-keyed dicts"
    )


def _children(value: Any) -> list[Any]:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Mapping):
        return list(value.values())
    if isinstance(value, (list, tuple)):
        return list(value)
    return []


def _contains_itself(value: Any) -> bool:
    """Whether a list or dict inside ``value`` holds one of its own parents (an iterative
    depth-first search, visiting each container once)."""
    on_path: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[Any, Any]] = [(value, None)]
    while stack:
        item, children = stack[-1]
        if children is None:
            on_path.add(id(item))
            children = iter(_children(item))
            stack[-1] = (item, children)
        child = next(children, _END)
        if child is _END:
            stack.pop()
            on_path.discard(id(item))
            done.add(id(item))
            continue
        if not _children(child) or id(child) in done:
            continue
        if id(child) in on_path:
            return True
        stack.append((child, None))
    return False


_END = object()


def _utf8(text: str, payload: Mapping[str, Any]) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = next(
            (found for name, value in payload.items() if (found := _surrogate_at(value, f"Request.{name}"))),
            "the request",
        )
        char = exc.object[exc.start:exc.end]
        raise UnserializableParameterError(
            f"{where} holds the lone surrogate {char!r}, which is not valid Unicode text and has no "
            "UTF-8 form for the cache key; fix the text where it came from (for example decode bytes "
            "with errors='replace')"
        ) from None


def _surrogate_at(value: Any, path: str) -> str | None:
    """The path of the first string in canonical ``value`` that cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, list):
        return next((p for i, v in enumerate(value) if (p := _surrogate_at(v, f"{path}[{i}]"))), None)
    if isinstance(value, dict):
        for k, v in value.items():
            found = _surrogate_at(k, f"{path} (a key)") or _surrogate_at(v, f"{path}[{k!r}]")
            if found:
                return found
    return None


def request_key(request: Any) -> str:
    """The cache key of ``request`` (64 hex characters), computed once and remembered."""
    state = getattr(request, "__dict__", None)
    memo = state.get(_MEMO) if state is not None else None
    if memo is not None:
        return memo
    payload: dict[str, Any] = {}
    for name in _key_fields(type(request)):
        value = getattr(request, name)
        if value is None:
            continue
        # A str is its own canonical form (a lone surrogate is caught by _utf8 below).
        payload[name] = value if type(value) is str else canonical_value(value, f"Request.{name}")
    text = _json([KEY_SCHEMA, payload])
    key = hashlib.sha256(_utf8(text, payload)).hexdigest()
    if state is not None:
        state[_MEMO] = key
    return key


def with_n(request: Any, n: int) -> Any:
    """A copy of ``request`` asking for ``n`` samples (an int >= 1), keeping its remembered key."""
    state = getattr(request, "__dict__", None)
    if state is None or type(n) is not int or n < 1:
        return dataclasses.replace(request, n=n)  # validates
    copy = object.__new__(type(request))
    copy.__dict__.update(state)
    copy.__dict__["n"] = n
    return copy


class _Derive:
    """The default of ``model_id=``: derive the identity from the model (see :func:`model_identity`)."""

    def __repr__(self) -> str:
        return "<derived from the model>"


DERIVE = _Derive()
_MISSING = object()


def _checked(identity: Any, what: str) -> str:
    if not isinstance(identity, str) or not identity:
        raise ConfigurationError(
            f"{what} must be a non-empty string naming the model, or None for no model identity; "
            f"got {identity!r}"
        )
    try:
        identity.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(
            f"{what} {identity!r} is not valid text (it holds a lone surrogate); pass a plain string"
        ) from None
    return str(identity)


def model_identity(model: Any, model_id: Any = DERIVE) -> str | None:
    """The identity a cache stage over ``model`` adds to its keys, or None for none.

    ``model_id`` is the pipeline's override: a non-empty string is the identity, None means no
    identity (keys are :func:`request_key`, as before identities existed). By default the
    identity is derived from the innermost model, found by following ``.model`` through
    :class:`~cachesaver.stages.base.Stage` objects to the first object that is not a Stage:

    1. its ``cache_identity`` attribute, when it has one: a non-empty string, or None for
       "my requests' keys already cover the model";
    2. else its ``model`` attribute, else its ``model_name`` attribute, when that is a
       non-empty string;
    3. else None.

    Only those values count, never the class, so renaming a wrapper class keeps its keys.
    Anything else (a ``cache_identity`` that is not a string or None, a ``model_id`` of another
    type, a chain of stages that loops) raises :class:`~cachesaver.errors.ConfigurationError`.

    >>> class OnlineLLM:
    ...     def __init__(self, model): self.model = model
    ...     async def request(self, request): ...
    >>> model_identity(OnlineLLM("llama-3-70b"))
    'llama-3-70b'
    >>> model_identity(OnlineLLM("llama-3-70b"), model_id=None) is None
    True
    """
    if model_id is not DERIVE:
        return None if model_id is None else _checked(model_id, "model_id")
    seen: set[int] = set()
    while isinstance(model, Stage):
        if id(model) in seen:
            raise ConfigurationError(
                f"the stages above {type(model).__name__} loop back to it; a pipeline's stages must end in a model"
            )
        seen.add(id(model))
        model = model.model
    declared = getattr(model, "cache_identity", _MISSING)
    if declared is not _MISSING:
        return None if declared is None else _checked(declared, f"{type(model).__name__}.cache_identity")
    for name in ("model", "model_name"):
        value = getattr(model, name, None)
        if isinstance(value, str) and value:
            return _checked(value, f"{type(model).__name__}.{name}")
    kind = type(model)
    if kind not in _warned_anonymous and len(_warned_anonymous) < 256:
        _warned_anonymous.add(kind)
        logger.warning(
            "cachesaver cannot tell which model %s serves (no cache_identity, and no model or "
            "model_name string): its samples are keyed by the request alone, so another model on "
            "the same cache would share them. Pass model_id='...' to the pipeline, or declare "
            "cache_identity = None on the class if its requests already name the model.",
            kind.__name__,
        )
    return None


_warned_anonymous: set[type] = set()


def store_key(request: Any, identity: str | None) -> str:
    """The key a cache stage stores ``request``'s samples under when its model is ``identity``.

    With ``identity`` None it is exactly :func:`request_key` (so caches written before model
    identities existed replay unchanged); else the SHA-256 of the schema, the identity and
    that key, so one request under two identities never shares samples.

    >>> from cachesaver.typedefs import Request
    >>> store_key(Request("hi"), None) == request_key(Request("hi"))
    True
    >>> store_key(Request("hi"), "model-a") != store_key(Request("hi"), "model-b")
    True
    """
    key = request_key(request)
    if identity is None:
        return key
    if type(identity) is not str:
        raise ConfigurationError(f"a model identity must be a string or None, got {identity!r}")
    text = _json([KEY_SCHEMA, "model", identity, key])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_request(request: Any, identity: str | None) -> dict[str, Any]:
    """What the store key of ``request`` under model ``identity`` is made from, as plain JSON.

    ``{"key_schema": KEY_SCHEMA, "model_identity": identity, "fields": {...}}``, where
    ``fields`` holds every keyed field (the prompt included) in its canonical form, fields that
    are None left out: exactly what :func:`request_key` hashes. So
    ``key_of_canonical_request(canonical_request(r, i)) == store_key(r, i)``, and a stored
    canonical request says, readably, which request and model its samples answer. Raises
    :class:`~cachesaver.errors.UnserializableParameterError` as :func:`request_key` does.

    >>> from cachesaver.typedefs import Request
    >>> canonical_request(Request("hi", n=3, request_id="q"), "m")
    {'key_schema': 'cachesaver-key/1', 'model_identity': 'm', 'fields': {'prompt': 'hi'}}
    """
    payload: dict[str, Any] = {}
    for name in _key_fields(type(request)):
        value = getattr(request, name)
        if value is not None:
            payload[name] = canonical_value(value, f"Request.{name}")
    return {"key_schema": KEY_SCHEMA, "model_identity": identity, "fields": payload}


def canonical_request_text(request: Any, identity: str | None) -> str:
    """:func:`canonical_request` as canonical JSON text (sorted keys, no spaces): what a cache
    stage hands the store with a key's first samples."""
    doc = canonical_request(request, identity)
    return _utf8(_json(doc), doc["fields"]).decode("utf-8")


def key_of_canonical_request(doc: Mapping[str, Any]) -> str:
    """The store key a canonical request (:func:`canonical_request`, or its JSON decoded)
    stands for; lets a reader check that a stored or imported request is the one its key was
    made from.

    Raises ConfigurationError when ``doc`` is not a canonical request of this key schema
    (another ``key_schema``, fields that are not canonical, a model identity that is not a
    string or None)."""
    if not isinstance(doc, Mapping) or doc.get("key_schema") != KEY_SCHEMA:
        schema = doc.get("key_schema") if isinstance(doc, Mapping) else None
        raise ConfigurationError(
            f"not a canonical request of key schema {KEY_SCHEMA!r} (got key_schema {schema!r}); "
            "it was written by a cachesaver that keys requests differently"
        )
    fields = doc.get("fields")
    identity = doc.get("model_identity")
    if not isinstance(fields, Mapping) or (identity is not None and not isinstance(identity, str)):
        raise ConfigurationError("a canonical request needs a 'fields' object and a 'model_identity' string or null")
    try:
        payload = {name: canonical_value(value, f"fields.{name}") for name, value in fields.items() if value is not None}
    except UnserializableParameterError as exc:
        raise ConfigurationError(f"a canonical request holds a value with no canonical form: {exc}") from exc
    text = _json([KEY_SCHEMA, payload])
    key = hashlib.sha256(_utf8(text, payload)).hexdigest()
    if identity is None:
        return key
    return hashlib.sha256(_json([KEY_SCHEMA, "model", identity, key]).encode("utf-8")).hexdigest()
