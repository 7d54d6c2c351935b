"""The chat-completions request and the mapping shared by the together and OpenAI backends.

:class:`ChatRequest` is the Request a chat-completions backend serves. Its fields are the cache
key (all but ``n``, ``request_id``, ``namespace`` and ``transport_options``), so they say
*which* model answered: ``backend`` (``"together"``, ``"openai"``), ``base_url`` and ``model``,
plus every decoding parameter that changes the samples. Credentials live on the backend; per-call
transport settings (time-out, extra headers, extra query parameters) ride in the unkeyed
``transport_options`` field, so they never split the cache.

The helpers here turn a request into SDK keyword arguments (only the parameters that are set),
split a large ``n`` into calls the provider accepts, and turn a completion into samples (the
text by default, the whole choice as a plain dict when ``sample_format="choice"``), with the
call's token usage shared out exactly over its samples.

>>> r = ChatRequest("2 + 2?", n=3, model="m", backend="openai", base_url="http://x/v1/", temperature=0.5)
>>> r.base_url
'http://x/v1'
>>> prompt_messages(r.prompt)
[{'role': 'user', 'content': '2 + 2?'}]
>>> split_n(300, 128)
[128, 128, 44]
>>> split_evenly(10, 3)
[4, 3, 3]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Union

from ..errors import InvalidRequestError
from ..typedefs import Prompt, Request

__all__ = [
    "SAMPLE_FORMATS",
    "TRANSPORT_OPTIONS",
    "ChatRequest",
    "decoding_parameters",
    "finish_arguments",
    "prompt_messages",
    "samples_from_completion",
    "split_evenly",
    "split_n",
    "transport_arguments",
]

SAMPLE_FORMATS = ("text", "choice")

# Per-call SDK arguments that change how a call travels, never what it returns: not keyed.
TRANSPORT_OPTIONS = ("timeout", "extra_headers", "extra_query")

# Arguments the backend sets itself; a request may not pass them through ``parameters``.
RESERVED_ARGUMENTS = frozenset({"messages", "model", "n", "stream", "extra_body", *TRANSPORT_OPTIONS})


@dataclass(frozen=True)
class ChatRequest(Request):
    """A chat-completions request; every field but n/request_id/namespace/transport_options
    keys the cache.

    Identity: ``model``, ``backend`` (the backend kind) and ``base_url`` (trailing slashes are
    removed on construction, so ``http://x/v1/`` and ``http://x/v1`` key the same). Backends
    build these for you: ``model.make_request(prompt, ...)``.

    Decoding fields (None means "not sent"): ``temperature``, ``top_p``, ``top_k``, ``min_p``,
    ``max_completion_tokens`` (sent as ``max_tokens`` to together), ``max_tokens``, ``stop``,
    ``seed``, ``logprobs`` (a bool, or together's int), ``top_logprobs``, ``presence_penalty``,
    ``frequency_penalty``, ``repetition_penalty``, ``logit_bias``, ``response_format``,
    ``tools``, ``tool_choice``, ``reasoning_effort``. ``parameters`` holds any other keyword
    argument of the SDK's ``chat.completions.create``, passed as given; ``extra_body`` holds
    extra JSON body fields, passed as the SDK's ``extra_body``.

    ``sample_format``: ``"text"`` (each sample is the choice's message content) or
    ``"choice"`` (each sample is the whole choice, a plain dict).

    ``transport_options``: a dict with any of ``timeout``, ``extra_headers``, ``extra_query``,
    passed as given to every SDK call made for this request (retries included). Not part of
    the cache key, of equality or of the repr: two requests that differ only here share their
    cache entry, and when the deduplicator merges them into one upstream call, that call
    carries the options of the first to arrive.
    """

    unkeyed_fields: ClassVar[tuple[str, ...]] = ("transport_options",)

    model: str
    backend: str
    base_url: str
    sample_format: str = "text"
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    max_completion_tokens: Optional[int] = None
    max_tokens: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = None
    logprobs: Optional[Union[bool, int]] = None
    top_logprobs: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    logit_bias: Optional[Dict[str, float]] = None
    response_format: Optional[Dict[str, Any]] = None
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    reasoning_effort: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    extra_body: Optional[Dict[str, Any]] = None
    transport_options: Optional[Dict[str, Any]] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.base_url, str):
            object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.transport_options is not None:
            object.__setattr__(self, "transport_options", transport_arguments(self) or None)
        for name in ("model", "backend", "base_url"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidRequestError(f"ChatRequest.{name} must be a non-empty string, got {value!r}")
        if self.sample_format not in SAMPLE_FORMATS:
            raise InvalidRequestError(
                f"ChatRequest.sample_format must be one of {SAMPLE_FORMATS}, got {self.sample_format!r}"
            )
        for name in ("parameters", "extra_body"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise InvalidRequestError(f"ChatRequest.{name} must be a dict, got {type(value).__name__}")
        reserved = sorted(RESERVED_ARGUMENTS.intersection(self.parameters or {}))
        if reserved:
            raise InvalidRequestError(
                f"ChatRequest.parameters may not set {reserved}: pass the prompt as the request's prompt, "
                "n as its n, extra_body as its extra_body, and timeout, extra_headers and extra_query "
                "as its transport_options"
            )


# Decoding fields every backend reads from a request, by attribute name. A Request subclass
# that defines any of them (or none) is served the same way.
DECODING_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "max_completion_tokens", "max_tokens", "stop", "seed",
    "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "logit_bias", "response_format", "tools", "tool_choice", "reasoning_effort",
)


def transport_arguments(request: Request) -> dict[str, Any]:
    """``request.transport_options`` as SDK keyword arguments (empty when it has none).

    Raises :class:`~cachesaver.errors.InvalidRequestError` when it is not a dict or names
    anything but ``timeout``, ``extra_headers`` and ``extra_query``.
    """
    options = request.transport_options
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidRequestError(
            f"Request.transport_options must be a dict, got {type(options).__name__}"
        )
    unknown = sorted(set(options).difference(TRANSPORT_OPTIONS))
    if unknown:
        raise InvalidRequestError(
            f"Request.transport_options may only hold {list(TRANSPORT_OPTIONS)}, got {unknown}; "
            "put decoding parameters in the request's fields or parameters, where they key the cache"
        )
    return dict(options)


def decoding_parameters(request: Request) -> dict[str, Any]:
    """The decoding fields ``request`` sets (not None), by name; unknown names read as None."""
    values = {}
    for name in DECODING_FIELDS:
        value = getattr(request, name)
        if value is not None:
            values[name] = value
    return values


def prompt_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """The chat messages of a prompt: a string becomes one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(message) for message in prompt]


def split_n(n: int, max_per_call: int) -> list[int]:
    """``n`` cut into calls of at most ``max_per_call`` samples each, largest first."""
    full, rest = divmod(n, max_per_call)
    return [max_per_call] * full + ([rest] if rest else [])


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` shared over ``parts`` integers that differ by at most one and sum to it."""
    if parts <= 0:
        return []
    base, extra = divmod(int(total), parts)
    return [base + 1 if i < extra else base for i in range(parts)]


def _choice_text(choice: Mapping[str, Any]) -> Any:
    message = choice.get("message")
    if isinstance(message, Mapping) and "content" in message:
        return message.get("content")
    return choice.get("text")


def _choice_index(choice: Mapping[str, Any]) -> int:
    index = choice.get("index")
    return index if isinstance(index, int) else 0


def samples_from_completion(
    completion: Mapping[str, Any], sample_format: str
) -> tuple[list[Any], Optional[list[dict[str, int]]]]:
    """The samples of one completion (a plain dict), in choice order, and their usage.

    The completion's prompt and completion tokens are shared out over its choices so that the
    per-sample usage adds up exactly to what the call cost.
    """
    choices = sorted(
        (c for c in completion.get("choices") or () if isinstance(c, Mapping)),
        key=_choice_index,
    )
    if sample_format == "choice":
        samples: list[Any] = [dict(c) for c in choices]
    else:
        samples = [_choice_text(c) for c in choices]
    usage = completion.get("usage")
    if not isinstance(usage, Mapping) or not samples:
        return samples, None
    prompts = split_evenly(int(usage.get("prompt_tokens") or 0), len(samples))
    completions = split_evenly(int(usage.get("completion_tokens") or 0), len(samples))
    return samples, [{"prompt_tokens": p, "completion_tokens": c} for p, c in zip(prompts, completions)]


def as_list(value: Union[str, Sequence[str]]) -> list[str]:
    """A stop sequence (or several) as a list."""
    return [value] if isinstance(value, str) else list(value)


def finish_arguments(
    arguments: dict[str, Any], request: Request, extra_body: Optional[Mapping[str, Any]] = None
) -> dict[str, Any]:
    """Add ``request.parameters`` and the extra body (``request.extra_body`` over ``extra_body``)
    to SDK ``arguments``; a parameter given twice raises InvalidRequestError."""
    parameters = request.parameters
    if parameters:
        clash = sorted(set(parameters).intersection(arguments))
        if clash:
            raise InvalidRequestError(
                f"{clash} given both as request fields and in request.parameters; give each once"
            )
        arguments.update(parameters)
    body = dict(extra_body or {})
    if request.extra_body:
        body.update(request.extra_body)
    if body:
        arguments["extra_body"] = body
    return arguments
