"""Drop-in SDK clients whose chat completions go through a cachesaver pipeline.

``cachesaver.models.together.AsyncTogether`` / ``Together`` and ``cachesaver.models.openai.
AsyncOpenAI`` / ``OpenAI`` are subclasses of the two classes here, built from the provider
table (:mod:`cachesaver.models.registry`) by :func:`cachesaver.dropin.client_class`. They take
the SDK's constructor arguments plus these (all keyword-only):

* ``namespace`` (default ``"default"``): the namespace of every call that does not pass one.
* ``cache``: a directory path or a ``diskcache.Cache`` (default: ``$CACHESAVER_CACHE_DIR``, else
  ``.cachesaver`` in the working directory).
* ``batch_size`` (default 32) and ``batch_timeout_s`` (default 0.01): the pipeline's batching.
* ``mode`` (default ``$CACHESAVER_MODE``, else ``"record"``): the cache mode
  (:mod:`cachesaver.modes`). With ``"replay"`` no call reaches the provider, a call the cache
  cannot serve raises :class:`~cachesaver.errors.CacheMissError`, and no API key is needed
  (a placeholder is used when none is given or set in the environment).
* ``run_id`` (default None: the client is its own run): make the client a worker of that shared
  run (see :mod:`cachesaver.store.shared_runs`), with every pipeline and client on the cache
  that names it.
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
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio

from .._runtime.checks import MAX_WAIT_S, check_seconds
from .._runtime.loop_thread import LoopThread
from ..errors import ConfigurationError
from ..ledger import Ledger, PriceTable
from ..modes import Mode, resolve_mode
from ..models.chat_backend import ChatCompletionsModel
from ..models.registry import PROVIDERS
from ..pipelines import OnlineAPI
from ..ratelimit import RateLimiter, RateLimits
from ..retry import RetryPolicy
from .completions import AsyncReplayStream, ReplayStream, chat_request, completion_payload, stream_payloads

__all__ = ["CachedAsyncClient", "CachedSyncClient", "ClientOptions"]

DEFAULT_CACHE_DIR = ".cachesaver"
REPLAY_API_KEY = "unused-in-replay-mode"
"""The API key a replay-mode client is built with when none is given: it never calls out."""


def _blocking_clients() -> list[str]:
    return [provider.sync_client for provider in PROVIDERS.values()]


def _default_cache() -> str:
    return os.environ.get("CACHESAVER_CACHE_DIR") or DEFAULT_CACHE_DIR


@dataclass(frozen=True)
class ClientOptions:
    """cachesaver's own constructor arguments of a drop-in client, split from the SDK's."""

    namespace: str = "default"
    cache: Any = None
    mode: Mode = "record"
    batch_size: int = 32
    batch_timeout_s: float = 0.01
    retry: RetryPolicy | None = None
    limits: RateLimits | RateLimiter | None = None
    max_n_per_call: int = 128
    prices: PriceTable | None = None
    ledger: Ledger | None = None
    sleep: Callable[[float], Any] = anyio.sleep
    async_http_client: Any = None
    run_id: Any = None
    sdk_kwargs: dict[str, Any] = field(default_factory=dict)

    OWN: ClassVar[frozenset[str]] = frozenset(
        {"namespace", "cache", "mode", "batch_size", "batch_timeout_s", "retry", "limits", "max_n_per_call",
         "prices", "ledger", "sleep", "async_http_client", "run_id"}
    )

    @classmethod
    def split(cls, kwargs: Mapping[str, Any], kind: str | None = None) -> ClientOptions:
        """cachesaver's arguments and the SDK's (``sdk_kwargs``), checked; ``kind`` is the
        provider's, whose API key environment variable a replay-mode client does without."""
        own = {k: v for k, v in kwargs.items() if k in cls.OWN}
        sdk = {k: v for k, v in kwargs.items() if k not in cls.OWN}
        if own.get("cache") is None:
            own["cache"] = _default_cache()
        own["mode"] = resolve_mode(own.get("mode"))
        provider = PROVIDERS.get(kind) if kind is not None else None
        if own["mode"] == "replay" and sdk.get("api_key") is None and provider is not None:
            if not os.environ.get(provider.api_key_env):
                sdk["api_key"] = REPLAY_API_KEY
        if not isinstance(own.get("namespace", "default"), str):
            raise ConfigurationError(f"namespace must be a str, got {type(own['namespace']).__name__}")
        if "batch_timeout_s" in own:
            check_seconds("batch_timeout_s", own["batch_timeout_s"], maximum=MAX_WAIT_S)
        if own.get("retry") is None and isinstance(sdk.get("max_retries"), int):
            own["retry"] = RetryPolicy(max_attempts=max(0, sdk["max_retries"]) + 1)
        return cls(**own, sdk_kwargs=sdk)


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
        options = ClientOptions.split(kwargs, self.model_class.kind)
        if options.async_http_client is not None:
            raise ConfigurationError(
                f"{type(self).__name__} takes its httpx.AsyncClient as http_client=; "
                f"async_http_client= is only for the blocking clients ({', '.join(_blocking_clients())})"
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
        self.pipeline = OnlineAPI(
            model, options.cache, options.batch_size, options.batch_timeout_s, ledger=self.ledger, mode=options.mode,
            run_id=options.run_id,
        )
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
        options = ClientOptions.split(kwargs, self.async_client_class.model_class.kind)
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
