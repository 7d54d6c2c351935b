"""The values that flow through a pipeline and the two model contracts.

``Request`` goes in, ``Response`` comes out, ``Batch`` groups requests. A *model* is anything
with ``async request(Request) -> Response`` (:class:`SingleRequestModel`) and/or
``async batch_request(Batch) -> list[Response]`` (:class:`BatchRequestModel`); a plain (sync)
method is accepted too and run in a worker thread (see :func:`cachesaver.stages.base.call_model`).
:data:`Model` is the static type of what a stage or pipeline accepts as ``model``: either
method, async or sync. Every cachesaver stage is such a model wrapping another one, so stages
compose freely.

>>> r = Request(prompt="What is 2 + 2?", n=2, request_id="q1", namespace="run-a")
>>> (r.n, r.namespace, r.temperature)
(2, 'run-a', None)
>>> Response(data=["4", "four"], cached=[True, False], duplicated=[False, False])
Response(data=['4', 'four'], cached=[True, False], duplicated=[False, False])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Awaitable, List, Optional, Protocol, Union, runtime_checkable

from .errors import InvalidRequestError

__all__ = [
    "Batch",
    "BatchMethodModel",
    "BatchRequestModel",
    "Message",
    "Model",
    "Prompt",
    "Request",
    "RequestMethodModel",
    "Response",
    "SingleRequestModel",
]

Message = Mapping[str, Any]
Prompt = Union[str, Sequence[Message]]

_KW_ONLY_NAMES = ("KW_ONLY", "dataclasses.KW_ONLY")


def _is_kw_only_marker(annotation: Any) -> bool:
    return annotation is KW_ONLY or (isinstance(annotation, str) and annotation in _KW_ONLY_NAMES)


@dataclass(frozen=True)
class Request:
    """One question to a model, asking for ``n`` samples.

    Guarantees:

    * ``prompt`` is a string or a list of chat messages, each a mapping with a string ``role``
      and a ``content``; anything else raises :class:`~cachesaver.errors.InvalidRequestError`.
    * ``n`` is an int >= 1; ``request_id`` is None, a str or an int; ``namespace`` is a str.
      Strings must be valid Unicode text (no lone surrogates such as ``"\\ud800"``); in the
      prompt and other keyed fields that is checked when the cache key is computed
      (:class:`~cachesaver.errors.UnserializableParameterError`).
    * Every field after ``prompt`` is keyword-only, in this class and in every subclass, so a
      subclass may add fields with or without defaults in any order::

          @dataclass(frozen=True)
          class ModelRequest(Request):
              model: str                      # no default: a required keyword

    * Reading a public attribute the class does not define (``request.top_p``) gives ``None``,
      so one backend can serve many Request subclasses. Names starting with ``_`` raise
      AttributeError as usual.
    * The cache key covers every field except ``n``, ``request_id`` and ``namespace``; a field
      whose value is ``None`` counts as absent (see :mod:`cachesaver.keys`).
    """

    prompt: Prompt
    _: KW_ONLY
    n: int = 1
    request_id: Optional[Union[str, int]] = None
    namespace: str = "default"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Make the subclass's own fields keyword-only, so a field without a default may follow
        # inherited fields that have one. Runs before @dataclass processes the class.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__annotations__")
        if own and not any(_is_kw_only_marker(a) for a in own.values()):
            cls.__annotations__ = {"_cachesaver_kw_only_": KW_ONLY, **own}

    def __post_init__(self) -> None:
        _validate_request(self)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes that do not exist.
        if name.startswith("_"):
            raise AttributeError(name)
        return None


def _validate_request(request: Request) -> None:
    n, rid, namespace, prompt = request.n, request.request_id, request.namespace, request.prompt
    if (  # the common case, checked in one go: an ASCII str prompt, namespace and id, an int n
        type(n) is int and n >= 1 and type(namespace) is str and namespace.isascii()
        and type(prompt) is str and (rid is None or type(rid) is int or (type(rid) is str and rid.isascii()))
    ):
        return
    if type(n) is not int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise InvalidRequestError(f"Request.n must be an int >= 1, got {n!r} ({type(n).__name__})")
    if n < 1:
        raise InvalidRequestError(f"Request.n must be >= 1, got {n}; ask for at least one sample")
    rid = request.request_id
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise InvalidRequestError(
            f"Request.request_id must be None, a str or an int, got {type(rid).__name__}"
        )
    if isinstance(rid, str) and not _is_text(rid):
        raise InvalidRequestError(_surrogate_message("Request.request_id", rid))
    if not isinstance(request.namespace, str):
        raise InvalidRequestError(
            f"Request.namespace must be a str, got {type(request.namespace).__name__}"
        )
    if not _is_text(request.namespace):
        raise InvalidRequestError(_surrogate_message("Request.namespace", request.namespace))
    prompt = request.prompt
    if isinstance(prompt, str):
        return
    if isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Sequence):
        raise InvalidRequestError(
            "Request.prompt must be a string or a list of chat messages "
            f"({{'role': ..., 'content': ...}}), got {type(prompt).__name__}"
        )
    if len(prompt) == 0:
        raise InvalidRequestError("Request.prompt is an empty message list; give at least one message")
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(
                f"Request.prompt[{i}] must be a mapping with 'role' and 'content', "
                f"got {type(message).__name__}"
            )
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequestError(f"Request.prompt[{i}] needs a non-empty string 'role', got {role!r}")
        if "content" not in message:
            raise InvalidRequestError(f"Request.prompt[{i}] (role {role!r}) has no 'content'")


def _is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text (has a UTF-8 form: no lone surrogates)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_message(what: str, value: str) -> str:
    return (
        f"{what} {value!r} holds a lone surrogate, which is not valid Unicode text and cannot be "
        "stored; use a name made of valid text (for example decode bytes with errors='replace')"
    )


@dataclass(frozen=True)
class Batch:
    """Several requests handed to a model at once; responses come back in the same order.

    ``requests`` is a list (any other sequence, such as a tuple, is turned into one); anything
    else raises :class:`~cachesaver.errors.InvalidRequestError`. The requests themselves are
    checked by the stage that serves the batch, each on its own.
    """

    requests: List[Request]

    def __post_init__(self) -> None:
        requests = self.requests
        if not isinstance(requests, list):
            if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Sequence):
                raise InvalidRequestError(
                    f"Batch.requests must be a list of Requests, got {type(requests).__name__}; "
                    "pass Batch(requests=[Request(...), ...])"
                )
            object.__setattr__(self, "requests", list(requests))


@dataclass(frozen=True)
class Response:
    """The samples produced for one request, in order, with one flag per sample.

    * ``cached[i]`` is True when sample *i* was already stored before the request asked for it
      (no upstream call was made for it); None when no cache stage was involved.
    * ``duplicated[i]`` is True when sample *i* came from an upstream call that was issued for
      another, identical request merged with this one; None when no deduplicator was involved.
    * ``usage[i]`` is the token usage the backend reported for sample *i* (a mapping), or None.
      It is stored with the sample, so a cached sample still says what it cost. Not shown in
      the repr.

    Flag lists, when given, have exactly one entry per sample; anything else raises
    :class:`~cachesaver.errors.InvalidRequestError`.
    """

    data: List[Any]
    cached: Optional[List[bool]] = None
    duplicated: Optional[List[bool]] = None
    usage: Optional[List[Any]] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = self.data
        if not isinstance(data, list):
            if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Sequence):
                raise InvalidRequestError(
                    f"Response.data must be a list of samples, got {type(data).__name__}"
                )
            object.__setattr__(self, "data", list(data))
        size = len(self.data)
        for name in ("cached", "duplicated", "usage"):
            values = getattr(self, name)
            if values is not None and len(values) != size:
                raise InvalidRequestError(
                    f"Response.{name} has {len(values)} entries for {size} samples; give one per sample"
                )

    @classmethod
    def _trusted(cls, data: list, cached: Optional[list], duplicated: Optional[list], usage: Optional[list]) -> "Response":
        # For cachesaver's own stages, whose lists are built to match: skips the checks.
        response = object.__new__(cls)
        response.__dict__.update(data=data, cached=cached, duplicated=duplicated, usage=usage)
        return response

    def replace(self, **changes: Any) -> "Response":
        """A copy with the given fields changed."""
        return dataclasses.replace(self, **changes)


@runtime_checkable
class SingleRequestModel(Protocol):
    """A model that answers one request at a time with ``request.n`` samples."""

    async def request(self, request: Request) -> Response:
        """Return exactly ``request.n`` samples for ``request``."""
        ...


@runtime_checkable
class BatchRequestModel(Protocol):
    """A model that answers a batch of requests at once, one Response per request, in order.

    An entry of the returned list may be an exception instance instead of a Response: that
    request alone failed, its neighbours did not.
    """

    async def batch_request(self, batch: Batch) -> List[Response]:
        """Return one Response per request of ``batch``, in the same order."""
        ...


BatchAnswer = Sequence[Union[Response, BaseException]]
"""What a ``batch_request`` returns: one Response (or the exception that request alone failed
with) per request, in order."""


class RequestMethodModel(Protocol):
    """Statically, a model with a ``request`` method, async or sync (a sync one runs in a worker
    thread). :class:`SingleRequestModel` is its async-only form."""

    def request(self, request: Request, /) -> Union[Response, Awaitable[Response]]:
        """Exactly ``request.n`` samples for ``request`` (or an awaitable of them)."""
        ...


class BatchMethodModel(Protocol):
    """Statically, a model with a ``batch_request`` method, async or sync (a sync one runs in a
    worker thread). :class:`BatchRequestModel` is its async-only form."""

    def batch_request(self, batch: Batch, /) -> Union[BatchAnswer, Awaitable[BatchAnswer]]:
        """One Response (or exception) per request of ``batch``, in order (or an awaitable)."""
        ...


Model = Union[RequestMethodModel, BatchMethodModel]
"""What a stage or pipeline accepts as ``model``: an object with ``request`` and/or
``batch_request``, each async or sync. Checked statically only; at run time the stage checks
that one of the two methods exists (:class:`~cachesaver.errors.ConfigurationError` if not)."""
