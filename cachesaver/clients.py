"""Drop-in SDK clients whose chat completions go through a cachesaver pipeline.

``cachesaver.models.together.AsyncTogether`` / ``Together`` and ``cachesaver.models.openai.
AsyncOpenAI`` / ``OpenAI`` are built on the two classes here. They take the SDK's constructor
arguments plus these (all keyword-only):

* ``namespace`` (default ``"default"``): the namespace of every call that does not pass one.
* ``cache``: a directory path or a ``diskcache.Cache`` (default: ``$CACHESAVER_CACHE_DIR``, else
  ``.cachesaver`` in the working directory).
* ``batch_size`` (default 32) and ``batch_timeout_s`` (default 0.01): the pipeline's batching.
* ``retry`` (a :class:`~cachesaver.retry.RetryPolicy`; by default the SDK's ``max_retries``
  plus one attempts), ``limits`` (:class:`~cachesaver.ratelimit.RateLimits`),
  ``max_n_per_call``, ``prices`` (a price table for the ledger) or ``ledger``.
* Blocking clients only: ``async_http_client``, an ``httpx.AsyncClient`` for the chat calls
  (see below).

Guarantees:

* ``await client.chat.completions.create(model=..., messages=..., n=...)`` returns the SDK's own
  completion type with ``n`` choices, served by :class:`~cachesaver.pipelines.OnlineAPI`: the
  client is one *run* (fresh samples within a namespace), a new client on the same cache
  replays stored choices per ``(request, request_id)``. Per call it also accepts
  ``namespace=`` and ``request_id=``. Each choice has ``cached`` and ``duplicated`` flags.
* The cache key is the call's model, messages and every sampling argument, plus the backend
  kind and base_url; credentials, time-outs and headers are not part of it. Per-call transport
  options (``timeout``, ``extra_headers``, ``extra_query``) apply to the upstream calls made
  for that ``create`` (retries included) and are not part of the key either: a call with them
  and one without share the cache entry. When identical calls with different transport options
  are merged by the deduplicator, the one upstream call carries the options of the first to
  arrive; a call served from the cache makes no upstream call, so its options are unused.
* ``stream=True`` replays the completion as a stream of the SDK's chunk type, one chunk per
  choice (plus a usage chunk when ``stream_options={"include_usage": True}``).
* Every other attribute (``client.models``, ``client.files``, ``client.chat.completions.
  with_raw_response``, ...) is the real SDK client's, untouched and uncached.
* ``aclose()`` / ``close()`` / leaving ``async with`` finishes calls in flight, stores their
  samples, closes the pipeline and the SDK client. The sync clients run on a private event loop
  thread (:class:`~cachesaver._runtime.loop_thread.LoopThread`), so they also work where an event loop
  is already running (Jupyter), and are closed at the latest when garbage-collected or at exit.
* A blocking client (``OpenAI``, ``Together``) holds two SDK clients. A real blocking SDK
  client built with exactly the arguments given (``http_client=httpx.Client(...)`` included)
  serves every attribute but chat completions, so ``client.models.list()`` and
  ``client.files.list()`` block and return the SDK's results as ``openai.OpenAI`` would. The
  chat calls run through an async SDK client on the loop thread, built with the same
  arguments except two that only fit a blocking client: ``http_client`` is replaced by
  ``async_http_client`` when given, else by the SDK's default async HTTP client (which honours
  the SDK's ``timeout``, ``default_headers`` and the proxy environment variables, but not what
  was configured on the ``httpx.Client`` itself: for a custom proxy, TLS or transport, pass an
  ``httpx.AsyncClient`` set up the same way as ``async_http_client``); and a callable
  ``api_key`` is called in a worker thread. Arguments either SDK client refuses raise
  :class:`~cachesaver.errors.ConfigurationError`.
* ``client.ledger`` is the pipeline's :class:`~cachesaver.ledger.Ledger`.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio

from ._runtime.checks import MAX_WAIT_S, check_seconds
from .errors import ConfigurationError, InvalidRequestError
from .keys import request_key
from .ledger import Ledger, PriceTable
from ._runtime.loop_thread import LoopThread
from .models.chat_request import DECODING_FIELDS, TRANSPORT_OPTIONS, ChatRequest
from .models.chat_backend import ChatCompletionsModel
from .pipelines import OnlineAPI
from .ratelimit import RateLimiter, RateLimits
from .retry import RetryPolicy
from .typedefs import Response

__all__ = ["AsyncReplayStream", "CachedAsyncClient", "CachedSyncClient", "ClientOptions", "ReplayStream"]

DEFAULT_CACHE_DIR = ".cachesaver"


def _default_cache() -> str:
    return os.environ.get("CACHESAVER_CACHE_DIR") or DEFAULT_CACHE_DIR


@dataclass(frozen=True)
class ClientOptions:
    """cachesaver's own constructor arguments of a drop-in client, split from the SDK's."""

    namespace: str = "default"
    cache: Any = None
    batch_size: int = 32
    batch_timeout_s: float = 0.01
    retry: RetryPolicy | None = None
    limits: RateLimits | RateLimiter | None = None
    max_n_per_call: int = 128
    prices: PriceTable | None = None
    ledger: Ledger | None = None
    sleep: Callable[[float], Any] = anyio.sleep
    async_http_client: Any = None
    sdk_kwargs: dict[str, Any] = field(default_factory=dict)

    OWN: ClassVar[frozenset[str]] = frozenset(
        {"namespace", "cache", "batch_size", "batch_timeout_s", "retry", "limits", "max_n_per_call",
         "prices", "ledger", "sleep", "async_http_client"}
    )

    @classmethod
    def split(cls, kwargs: Mapping[str, Any]) -> ClientOptions:
        own = {k: v for k, v in kwargs.items() if k in cls.OWN}
        sdk = {k: v for k, v in kwargs.items() if k not in cls.OWN}
        if own.get("cache") is None:
            own["cache"] = _default_cache()
        if not isinstance(own.get("namespace", "default"), str):
            raise ConfigurationError(f"namespace must be a str, got {type(own['namespace']).__name__}")
        if "batch_timeout_s" in own:
            check_seconds("batch_timeout_s", own["batch_timeout_s"], maximum=MAX_WAIT_S)
        if own.get("retry") is None and isinstance(sdk.get("max_retries"), int):
            own["retry"] = RetryPolicy(max_attempts=max(0, sdk["max_retries"]) + 1)
        return cls(**own, sdk_kwargs=sdk)


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


class _Completions:
    def __init__(self, client: CachedAsyncClient) -> None:
        self._client = client

    async def create(self, **call: Any) -> Any:
        """Like the SDK's ``create``, served through the pipeline; see the module docstring."""
        completion, chunks = await self._client._complete(call)
        return AsyncReplayStream(chunks) if chunks is not None else completion

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client._sdk.chat.completions, name)


class _Chat:
    def __init__(self, completions: Any, sdk_chat: Callable[[], Any]) -> None:
        self.completions = completions
        self._sdk_chat = sdk_chat

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sdk_chat(), name)


class CachedAsyncClient:
    """An async SDK client whose ``chat.completions.create`` is cached (see the module doc).

    Subclasses set ``model_class`` (the :class:`~cachesaver.models.chat_backend.ChatCompletionsModel`
    subclass that serves the calls; its ``sdk_client_class`` is the SDK client built here) and
    ``completion_type`` / ``chunk_type`` (the SDK's pydantic models).
    """

    model_class: ClassVar[type[ChatCompletionsModel]]
    completion_type: ClassVar[Any]
    chunk_type: ClassVar[Any]

    def __init__(self, **kwargs: Any) -> None:
        """Takes the SDK client's constructor arguments plus cachesaver's (see :class:`ClientOptions`).

        Raises :class:`~cachesaver.errors.ConfigurationError` when the SDK refuses its arguments
        (a missing API key, ...) or cachesaver's are invalid.
        """
        options = ClientOptions.split(kwargs)
        if options.async_http_client is not None:
            raise ConfigurationError(
                f"{type(self).__name__} takes its httpx.AsyncClient as http_client=; "
                "async_http_client= is only for the blocking clients (OpenAI, Together)"
            )
        model_class = self.model_class
        sdk = model_class.make_sdk_client(model_class.sdk_client_class, options.sdk_kwargs)
        model = model_class(
            client=sdk, max_n_per_call=options.max_n_per_call, retry=options.retry, limits=options.limits,
            sleep=options.sleep,
        )
        self._sdk = sdk
        self.backend = model
        self.namespace = options.namespace
        self.ledger = options.ledger if options.ledger is not None else Ledger(options.prices)
        self.pipeline = OnlineAPI(model, options.cache, options.batch_size, options.batch_timeout_s, ledger=self.ledger)
        self.chat = _Chat(_Completions(self), lambda: sdk.chat)
        self._closed = False

    def __getattr__(self, name: str) -> Any:
        sdk = self.__dict__.get("_sdk")
        if sdk is None:
            raise AttributeError(name)
        return getattr(sdk, name)

    async def _complete(self, call: Mapping[str, Any]) -> tuple[Any, list[Any] | None]:
        request, stream, stream_options = chat_request(self.backend.kind, self.backend.base_url, self.namespace, call)
        response = await self.pipeline.request(request)
        payload = completion_payload(request, response)
        completion = self.completion_type.construct(**payload)
        if not stream:
            return completion, None
        return completion, [self.chunk_type.construct(**c) for c in stream_payloads(payload, stream_options)]

    async def aclose(self) -> None:
        """Finish calls in flight, store their samples, close the pipeline and the SDK client."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.pipeline.aclose()
            await self.backend.aclose()
        finally:
            await self._sdk.close()

    async def close(self) -> None:
        """Alias of :meth:`aclose` (the SDK's name); never a chat call."""
        await self.aclose()

    async def __aenter__(self) -> CachedAsyncClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


class _SyncCompletions:
    def __init__(self, client: CachedSyncClient) -> None:
        self._client = client

    def create(self, **call: Any) -> Any:
        """Like the SDK's ``create``, served through the pipeline; blocks until done."""
        owner = self._client
        completion, chunks = owner._loop.call(functools.partial(owner._async._complete, call))
        return ReplayStream(chunks) if chunks is not None else completion

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client._sdk.chat.completions, name)


def _shutdown(loop: LoopThread, async_client: CachedAsyncClient, sdk: Any) -> None:
    try:
        if loop.running:
            loop.call(async_client.aclose)
    finally:
        try:
            loop.stop()
        finally:
            sdk.close()


def _is_async_http_client(value: Any) -> bool:
    """Whether ``value`` is an async HTTP client (httpx's, or a look-alike with ``aclose``)."""
    return value is not None and inspect.iscoroutinefunction(getattr(value, "aclose", None))


def _in_worker_thread(provider: Callable[[], Any]) -> Callable[[], Any]:
    """An async API-key provider that runs the blocking ``provider`` in a worker thread."""

    async def api_key() -> Any:
        return await anyio.to_thread.run_sync(provider)

    return api_key


def _async_arguments(kwargs: Mapping[str, Any], options: ClientOptions) -> dict[str, Any]:
    """The arguments of the async client behind a blocking one built with ``kwargs`` (see the
    module doc): ``http_client`` replaced by ``async_http_client`` (or dropped), a blocking
    ``api_key`` callable wrapped to run in a worker thread."""
    arguments = {k: v for k, v in kwargs.items() if k not in ("http_client", "async_http_client")}
    if options.async_http_client is not None:
        arguments["http_client"] = options.async_http_client
    api_key = arguments.get("api_key")
    if callable(api_key) and not inspect.iscoroutinefunction(api_key):
        arguments["api_key"] = _in_worker_thread(api_key)
    return arguments


class CachedSyncClient:
    """A blocking SDK client whose ``chat.completions.create`` is cached (see the module doc).

    Subclasses set ``sdk_class`` (the SDK's blocking client, built with the user's arguments,
    for everything but chat calls) and ``async_client_class`` (the matching
    :class:`CachedAsyncClient`, built on a private event loop thread from the same arguments,
    adapted as the module doc says, which serves the chat calls).
    """

    async_client_class: ClassVar[type[CachedAsyncClient]]
    sdk_class: ClassVar[type]

    def __init__(self, **kwargs: Any) -> None:
        """Takes the blocking SDK client's constructor arguments plus cachesaver's (see
        :class:`ClientOptions`), including ``async_http_client``. Raises
        :class:`~cachesaver.errors.ConfigurationError` when either SDK client refuses them; if
        building the async client fails, the loop thread and the blocking SDK client are closed
        first."""
        options = ClientOptions.split(kwargs)
        name = type(self).__name__
        if _is_async_http_client(options.sdk_kwargs.get("http_client")):
            raise ConfigurationError(
                f"{name}(http_client=...) needs an httpx.Client (it serves the blocking SDK calls); pass "
                "an httpx.AsyncClient as async_http_client= to use it for the chat calls, or use the async client"
            )
        if options.async_http_client is not None and not _is_async_http_client(options.async_http_client):
            raise ConfigurationError(
                f"{name}(async_http_client=...) needs an httpx.AsyncClient (it serves the chat calls on "
                f"cachesaver's event loop), got {type(options.async_http_client).__name__}; pass an "
                "httpx.Client as http_client="
            )
        async_class = self.async_client_class
        sdk = async_class.model_class.make_sdk_client(self.sdk_class, options.sdk_kwargs)
        self._sdk = sdk
        self._loop = LoopThread(name=f"cachesaver-{type(self).__name__}")
        try:
            build = functools.partial(async_class, **_async_arguments(kwargs, options))
            self._async: CachedAsyncClient = self._loop.call(build)
        except BaseException:
            self._loop.stop()
            sdk.close()
            raise
        self.chat = _Chat(_SyncCompletions(self), lambda: sdk.chat)
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._async, sdk)

    def __getattr__(self, name: str) -> Any:
        sdk = self.__dict__.get("_sdk")
        if sdk is None:
            raise AttributeError(name)
        return getattr(sdk, name)

    @property
    def ledger(self) -> Ledger:
        return self._async.ledger

    @property
    def pipeline(self) -> OnlineAPI:
        return self._async.pipeline

    @property
    def backend(self) -> Any:
        return self._async.backend

    @property
    def namespace(self) -> str:
        return self._async.namespace

    def close(self) -> None:
        """Finish calls in flight, store their samples, close the pipeline, the SDK clients and
        the private loop (idempotent); never a chat call."""
        self._finalizer()

    def __enter__(self) -> CachedSyncClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
