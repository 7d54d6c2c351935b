"""How a drop-in client's SDK call becomes a cachesaver Request, and its Response an SDK
completion.

:func:`chat_request` turns the keyword arguments of one ``chat.completions.create`` into a
:class:`~cachesaver.models.chat_request.ChatRequest` (``sample_format="choice"``: each sample is
a whole choice), plus whether it streams; :func:`completion_payload` turns the Response into the
chat-completion JSON the SDK's completion type is built from (choices renumbered, with
``cached`` / ``duplicated`` flags, usage summed); :func:`stream_payloads`,
:class:`ReplayStream` and :class:`AsyncReplayStream` replay it as a stream of chunks.
"""

from __future__ import annotations

import math

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..errors import InvalidRequestError
from ..keys import request_key
from ..models.chat_request import DECODING_FIELDS, TRANSPORT_OPTIONS, ChatRequest
from ..typedefs import Response

__all__ = ["AsyncReplayStream", "ReplayStream", "chat_request", "completion_payload", "stream_payloads"]


def _is_not_given(value: Any) -> bool:
    return type(value).__name__ in ("NotGiven", "Omit")


def _message(message: Any) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return dict(message)
    dump = getattr(message, "model_dump", None)
    if callable(dump):
        return dump(mode="json", exclude_none=True)
    raise InvalidRequestError(f"a message must be a dict (role, content), got {type(message).__name__}")


def chat_request(kind: str, base_url: str, namespace: str, call: Mapping[str, Any]) -> tuple[ChatRequest, bool, Any]:
    """The ChatRequest for one ``create(**call)``, whether it streams, and its stream options."""
    arguments = {k: v for k, v in call.items() if not _is_not_given(v)}
    # Kept even when None: the SDK reads timeout=None as "no time-out".
    transport = {name: arguments.pop(name) for name in TRANSPORT_OPTIONS if name in arguments}
    timeout = transport.get("timeout")
    if isinstance(timeout, bool) or (
        isinstance(timeout, (int, float)) and not (math.isfinite(timeout) and timeout > 0)
    ):
        raise InvalidRequestError(
            f"chat.completions.create(timeout=...) must be a finite number of seconds > 0 (or None "
            f"for none), got {timeout!r}"
        )
    if "model" not in arguments or "messages" not in arguments:
        raise InvalidRequestError("chat.completions.create needs model= and messages=")
    model = arguments.pop("model")
    given = arguments.pop("messages")
    if isinstance(given, (str, bytes, Mapping)) or not isinstance(given, Iterable):
        raise InvalidRequestError(
            f"chat.completions.create(messages=...) must be a list of messages, got {type(given).__name__}; "
            "pass messages=[{'role': 'user', 'content': '...'}]"
        )
    messages = [_message(m) for m in given]
    n = arguments.pop("n", None)
    stream = bool(arguments.pop("stream", False))
    stream_options = arguments.pop("stream_options", None)
    request_id = arguments.pop("request_id", None)
    call_namespace = arguments.pop("namespace", None)
    fields = {name: arguments.pop(name) for name in DECODING_FIELDS if name in arguments}
    fields = {k: v for k, v in fields.items() if v is not None}
    extra_body = arguments.pop("extra_body", None)
    if extra_body is not None and not isinstance(extra_body, Mapping):
        raise InvalidRequestError(
            f"chat.completions.create(extra_body=...) must be a dict of extra JSON body fields, "
            f"got {type(extra_body).__name__}"
        )
    parameters = {k: v for k, v in arguments.items() if v is not None}
    request = ChatRequest(
        messages, n=1 if n is None else n, request_id=request_id,
        namespace=namespace if call_namespace is None else call_namespace,
        model=model, backend=kind, base_url=base_url, sample_format="choice",
        parameters=parameters or None, extra_body=dict(extra_body) if extra_body else None,
        transport_options=transport or None, **fields,
    )
    return request, stream, stream_options


def completion_payload(request: ChatRequest, response: Response) -> dict[str, Any]:
    """The chat-completion JSON for ``response``: its choices renumbered, with cachesaver's
    ``cached`` / ``duplicated`` flags on each, and the usage its samples carry, summed."""
    size = len(response.data)
    cached = response.cached or [False] * size
    duplicated = response.duplicated or [False] * size
    choices = []
    for i, sample in enumerate(response.data):
        if isinstance(sample, Mapping):
            choice = dict(sample)
        else:
            choice = {"message": {"role": "assistant", "content": sample}, "finish_reason": "stop"}
        choice["index"] = i
        choice["cached"] = bool(cached[i])
        choice["duplicated"] = bool(duplicated[i])
        choices.append(choice)
    payload: dict[str, Any] = {
        "id": f"chatcmpl-cachesaver-{request_key(request)[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": choices,
    }
    if response.usage is not None:
        prompt = sum(int((u or {}).get("prompt_tokens") or 0) for u in response.usage)
        completion = sum(int((u or {}).get("completion_tokens") or 0) for u in response.usage)
        payload["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return payload


def stream_payloads(payload: Mapping[str, Any], stream_options: Any) -> list[dict[str, Any]]:
    """The chunks that replay a completion: one per choice, then usage if asked for."""
    head = {"id": payload["id"], "object": "chat.completion.chunk", "created": payload["created"], "model": payload["model"]}
    chunks = []
    for choice in payload["choices"]:
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [dict(call, index=k) for k, call in enumerate(message["tool_calls"])]
        chunks.append({**head, "choices": [{
            "index": choice["index"], "delta": delta, "finish_reason": choice.get("finish_reason"),
            "cached": choice["cached"], "duplicated": choice["duplicated"],
        }]})
    if isinstance(stream_options, Mapping) and stream_options.get("include_usage") and "usage" in payload:
        chunks.append({**head, "choices": [], "usage": payload["usage"]})
    return chunks


class ReplayStream:
    """A finished completion replayed as a (sync) stream of chunks."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = iter(chunks)

    def __iter__(self) -> Iterator[Any]:
        return self._chunks

    def __next__(self) -> Any:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks = iter(())

    def __enter__(self) -> ReplayStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class AsyncReplayStream:
    """A finished completion replayed as an async stream of chunks."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> AsyncReplayStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        self._chunks = iter(())

    async def __aenter__(self) -> AsyncReplayStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
