"""The model core shared by the chat-completions backends (together, OpenAI-compatible).

:class:`ChatCompletionsModel` implements both model protocols over an SDK client's
``chat.completions.create``. A subclass says which SDK it drives: its ``kind``, how a request
maps onto the SDK's keyword arguments, and which SDK exceptions mean what. Guarantees:

* A request must name this backend: ``request.backend == model.kind``, ``request.base_url ==
  model.base_url`` and a ``request.model``; otherwise :class:`~cachesaver.errors.InvalidRequestError`
  (the cache key would not tell models apart). ``make_request`` builds such requests.
* Exactly ``request.n`` samples are asked for, in calls of at most ``max_n_per_call``; one
  sample per returned choice, in choice order, with per-sample token usage that adds up to
  what the calls cost. If some calls of a split request fail and others succeed, the samples
  obtained are returned (a short answer the cache stage stores and asks again for the rest);
  if all fail, the first error is raised.
* The request's ``transport_options`` (per-call ``timeout``, ``extra_headers``,
  ``extra_query``; not part of the cache key) are passed to every SDK call made for it.
* Every upstream HTTP call runs inside a :class:`~cachesaver.ratelimit.RateLimiter` slot, and
  transient failures are retried per :class:`~cachesaver.retry.RetryPolicy` (the SDK's own
  retries are disabled). Errors are translated here into ``TransientBackendError``,
  ``PermanentBackendError`` or ``ContextLengthError``, chained to the SDK's exception, carrying
  the HTTP status, the request's ``request_id`` and the provider's request id
  (``provider_request_id``, from the ``x-request-id`` response header; None when unknown).
  A 200 reply whose body is cut off or is not JSON (an HTML page from a proxy) is a
  ``TransientBackendError`` too, retried like a 503.
* ``batch_request`` serves the requests of a batch concurrently; a failed request becomes an
  exception entry, never failing its neighbours. Cancellation is re-raised.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import anyio

from ..errors import (
    BackendError,
    ConfigurationError,
    PipelineClosedError,
    ContextLengthError,
    InvalidRequestError,
    PermanentBackendError,
    TransientBackendError,
)
from ..ratelimit import RateLimiter, RateLimits, estimate_tokens
from ..retry import RetryPolicy, retry_call
from ..typedefs import Batch, Request, Response
from .chat_request import ChatRequest, samples_from_completion, split_n, transport_arguments

__all__ = ["ChatCompletionsModel", "SdkErrors", "backend_error", "given_options", "parse_retry_after"]

_CONTEXT_HINTS = (
    "context length", "context_length", "context window", "maximum context", "too many tokens",
    "prompt is too long", "input is too long", "reduce the length",
)
_TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
_HINTS = {
    401: "check the api_key (or the provider's API-key environment variable)",
    403: "check that this API key may use this model",
    404: "check the model name and the base_url",
}


class SdkErrors:
    """The exception classes of one SDK, by role (all Stainless-generated SDKs share them).

    ``status`` is the SDK's HTTP-status error, whose instances carry an int ``status_code``.
    """

    def __init__(
        self, base: type[Exception], status: type[Exception], connection: type[Exception]
    ) -> None:
        self.base = base
        self.status = status
        self.connection = connection


def given_options(**options: Any) -> dict[str, Any]:
    """``options`` without the entries whose value is None (constructor options left unset)."""
    return {name: value for name, value in options.items() if value is not None}


def _with_article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backend_error(
    kind: str,
    status: int | None,
    message: str,
    *,
    request_id: Any = None,
    retry_after_s: float | None = None,
    provider_request_id: str | None = None,
) -> BackendError:
    """The cachesaver error for an HTTP failure of backend ``kind`` (status None: no answer).

    The message names the provider's request id when there is one, for support tickets.
    """
    where = f"{kind} request {request_id!r}" if request_id is not None else f"{kind} request"
    if provider_request_id is not None:
        where = f"{where} (provider request id {provider_request_id})"
    ids = {"request_id": request_id, "provider_request_id": provider_request_id}
    if status is None:
        return TransientBackendError(f"{where} got no answer ({message}); it will be retried", **ids)
    text = f"{where} failed with HTTP {status}: {message}"
    if status in _TRANSIENT_STATUSES or status >= 500:
        return TransientBackendError(text, status=status, retry_after_s=retry_after_s, **ids)
    lowered = message.lower()
    if status in (400, 413, 422) and any(h in lowered for h in _CONTEXT_HINTS):
        return ContextLengthError(f"{text}; shorten the prompt or lower max_completion_tokens", status=status, **ids)
    hint = _HINTS.get(status)
    return PermanentBackendError(f"{text}; {hint}" if hint else text, status=status, **ids)


def _provider_request_id(exc: Any, headers: Any) -> str | None:
    """The provider's id for the failed call: the SDK's ``request_id``, else ``x-request-id``."""
    value = getattr(exc, "request_id", None)
    if value is None and headers is not None:
        try:
            value = headers.get("x-request-id")
        except AttributeError:
            value = None
    return value if isinstance(value, str) and value else None


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", None) or exc)


class ChatCompletionsModel:
    """A chat-completions backend over an async Stainless SDK client (see the module docstring).

    Subclasses set ``kind``, ``sdk_errors`` and :meth:`sdk_arguments`; SDK-backed subclasses
    also set ``sdk_client_class``, ``sdk_name`` and ``sdk_key_hint`` and build their client with
    :meth:`open_sdk_client`.
    """

    kind: ClassVar[str] = "chat"
    #: No model identity in the cache keys: a ChatRequest's key already names backend, base_url
    #: and model (and ``self.model`` is only make_request's default), so keys stay as they were.
    cache_identity: ClassVar[None] = None
    sdk_errors: ClassVar[SdkErrors]
    #: The SDK's async client class (``together.AsyncTogether``, ``openai.AsyncOpenAI``).
    sdk_client_class: ClassVar[type[Any]]
    #: How error messages name the SDK ("together", "OpenAI").
    sdk_name: ClassVar[str] = "chat"
    #: How to supply credentials, appended to the error when the SDK client cannot be built.
    sdk_key_hint: ClassVar[str] = "pass api_key="

    @classmethod
    def make_sdk_client(cls, factory: Callable[..., Any], options: Mapping[str, Any]) -> Any:
        """``factory(**options)`` (an SDK client class, async or blocking).

        Raises :class:`~cachesaver.errors.ConfigurationError`, chained to the SDK's exception,
        when the SDK refuses the options: a missing API key (the message ends with
        ``sdk_key_hint``), an unknown argument or one of the wrong type (an ``httpx.Client``
        given to an async client, ...).
        """
        try:
            return factory(**options)
        except cls.sdk_errors.base as exc:
            raise ConfigurationError(
                f"could not create {_with_article(cls.sdk_name)} client: {exc} ({cls.sdk_key_hint})"
            ) from exc
        except TypeError as exc:
            name = f"{factory.__module__.partition('.')[0]}.{getattr(factory, '__name__', factory)}"
            raise ConfigurationError(
                f"could not create {_with_article(cls.sdk_name)} client: {name} refused its arguments: {exc}; "
                "pass the arguments that client's constructor accepts"
            ) from exc

    @classmethod
    def open_sdk_client(cls, client: Any, options: Mapping[str, Any]) -> tuple[Any, bool]:
        """``(sdk_client, owns_client)`` for a subclass constructor; the SDK's retries are off.

        With ``client`` None, a new ``sdk_client_class(**options, max_retries=0)`` that the
        backend owns (see :meth:`make_sdk_client` for its errors). Otherwise ``client``, which
        must be a ``sdk_client_class`` (else :class:`~cachesaver.errors.ConfigurationError`),
        as ``client.with_options(max_retries=0)``, not owned: the caller closes it.
        """
        sdk_class = cls.sdk_client_class
        if client is None:
            return cls.make_sdk_client(sdk_class, {**options, "max_retries": 0}), True
        if not isinstance(client, sdk_class):
            wanted = f"{sdk_class.__module__.partition('.')[0]}.{sdk_class.__name__}"
            raise ConfigurationError(
                f"{cls.__name__}(client=...) needs {_with_article(wanted)}, got {type(client).__name__}"
            )
        return client.with_options(max_retries=0), False

    def __init__(
        self,
        client: Any,
        *,
        model: str | None = None,
        owns_client: bool = True,
        max_n_per_call: int = 128,
        retry: RetryPolicy | None = None,
        limits: RateLimits | RateLimiter | None = None,
        sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
        default_completion_tokens: int = 256,
    ) -> None:
        if isinstance(max_n_per_call, bool) or not isinstance(max_n_per_call, int) or max_n_per_call < 1:
            raise ConfigurationError(f"max_n_per_call must be an int >= 1, got {max_n_per_call!r}")
        if model is not None and (not isinstance(model, str) or not model):
            raise ConfigurationError(f"model must be a non-empty string or None, got {model!r}")
        self.client = client
        self.model = model
        self.owns_client = owns_client
        self.max_n_per_call = max_n_per_call
        self.retry = retry if retry is not None else RetryPolicy()
        self.limiter = limits if isinstance(limits, RateLimiter) else RateLimiter(limits)
        self.default_completion_tokens = default_completion_tokens
        self._sleep = sleep
        self.base_url = str(client.base_url).rstrip("/")
        self.http_calls = 0
        self.retries = 0
        self._closed = False

    # -- requests --------------------------------------------------------------------------
    def make_request(
        self,
        prompt: Any,
        *,
        n: int = 1,
        request_id: str | int | None = None,
        namespace: str = "default",
        model: str | None = None,
        **fields: Any,
    ) -> ChatRequest:
        """A :class:`ChatRequest` for this backend (``model`` defaults to the backend's)."""
        chosen = model if model is not None else self.model
        if chosen is None:
            raise ConfigurationError(
                f"no model given: pass model= here or to {type(self).__name__}(model=...)"
            )
        return ChatRequest(
            prompt, n=n, request_id=request_id, namespace=namespace,
            model=chosen, backend=self.kind, base_url=self.base_url, **fields,
        )

    def _check_identity(self, request: Request) -> None:
        backend, base_url, model = request.backend, request.base_url, request.model
        if backend == self.kind and isinstance(base_url, str) and base_url.rstrip("/") == self.base_url:
            if isinstance(model, str) and model:
                return
        raise InvalidRequestError(
            f"{type(self).__name__} serves requests that name it (backend={self.kind!r}, "
            f"base_url={self.base_url!r}) and a model, so the cache key tells models apart; got "
            f"backend={backend!r}, base_url={base_url!r}, model={model!r}. Build requests with "
            "model.make_request(prompt, ...)"
        )

    def sdk_arguments(self, request: Request) -> dict[str, Any]:
        """The ``chat.completions.create`` keyword arguments for ``request`` (all but ``n``)."""
        raise NotImplementedError

    async def request(self, request: Request) -> Response:
        """``request.n`` samples (fewer only if the provider returned fewer); see the module doc."""
        self._check_identity(request)
        arguments = self.sdk_arguments(request)
        arguments.update(transport_arguments(request))
        chunks = split_n(request.n, self.max_n_per_call)
        results: list[Any] = [None] * len(chunks)

        async def one(i: int, k: int) -> None:
            try:
                results[i] = await self._call(request, arguments, k)
            except Exception as exc:  # noqa: BLE001 - reported below, per chunk
                results[i] = exc

        if len(chunks) == 1:
            await one(0, chunks[0])
        else:
            async with anyio.create_task_group() as group:
                for i, k in enumerate(chunks):
                    group.start_soon(one, i, k)
        data: list[Any] = []
        usage: list[Any] = []
        has_usage = False
        for result in results:
            if isinstance(result, BaseException):
                continue
            samples, sample_usage = result
            data.extend(samples)
            has_usage = has_usage or sample_usage is not None
            usage.extend(sample_usage if sample_usage is not None else [None] * len(samples))
        if not data:
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        return Response(data=data, usage=usage if has_usage else None)

    async def batch_request(self, batch: Batch) -> list[Any]:
        """One Response (or the exception it failed with) per request, in batch order."""
        requests = list(batch.requests)
        results: list[Any] = [None] * len(requests)

        async def one(i: int, request: Request) -> None:
            try:
                results[i] = await self.request(request)
            except Exception as exc:  # noqa: BLE001 - that request's own failure
                results[i] = exc

        async with anyio.create_task_group() as group:
            for i, request in enumerate(requests):
                group.start_soon(one, i, request)
        return results

    # -- one upstream call -----------------------------------------------------------------
    async def _call(self, request: Request, arguments: dict[str, Any], n: int) -> tuple[list[Any], Any]:
        messages = arguments["messages"]
        limit = arguments.get("max_tokens") or arguments.get("max_completion_tokens")
        estimate = estimate_tokens(
            messages, n=n, max_completion_tokens=limit if isinstance(limit, int) else None,
            default_completion_tokens=self.default_completion_tokens,
        )
        sample_format = request.sample_format or "text"

        async def attempt() -> tuple[list[Any], Any]:
            async with self.limiter.slot(estimate) as slot:
                self.http_calls += 1
                completion = await self._create(request, {**arguments, "n": n} if n != 1 else arguments)
                usage = completion.get("usage") if isinstance(completion, Mapping) else None
                if isinstance(usage, Mapping):
                    slot.settle(int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0))
            return samples_from_completion(completion, sample_format)

        def count_retry(*_: Any) -> None:
            self.retries += 1

        return await retry_call(attempt, self.retry, sleep=self._sleep, on_retry=count_retry)

    async def _create(self, request: Request, arguments: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise PipelineClosedError(f"{type(self).__name__} is closed; create a new backend to make more requests")
        errors = self.sdk_errors
        try:
            completion = await self.client.chat.completions.create(**arguments)
        except errors.status as exc:
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None)
            # SdkErrors.status is an SDK's APIStatusError, which has status_code (Exception does not).
            status: int = exc.status_code  # type: ignore[attr-defined]
            raise backend_error(
                self.kind, status, _status_message(exc),
                request_id=request.request_id, retry_after_s=parse_retry_after(headers),
                provider_request_id=_provider_request_id(exc, headers),
            ) from exc
        except errors.connection as exc:
            raise backend_error(self.kind, None, str(exc), request_id=request.request_id) from exc
        except json.JSONDecodeError as exc:  # a 200 whose JSON body was cut off or garbled
            raise TransientBackendError(
                f"{self.kind} request {request.request_id!r} got a reply that is not valid JSON ({exc}); "
                "it will be retried",
                status=200, request_id=request.request_id,
            ) from exc
        except errors.base as exc:
            raise PermanentBackendError(
                f"{self.kind} request {request.request_id!r} failed: {exc}", request_id=request.request_id
            ) from exc
        except TypeError as exc:  # an unknown keyword in request.parameters
            raise InvalidRequestError(
                f"{self.kind} chat.completions.create rejected the request's arguments: {exc}; "
                "check ChatRequest.parameters"
            ) from exc
        if hasattr(completion, "to_dict"):
            return completion.to_dict(mode="json")
        if isinstance(completion, Mapping):
            return dict(completion)
        if isinstance(completion, (str, bytes)):  # the SDK hands back a non-JSON body as text
            head = completion[:80] if isinstance(completion, str) else completion[:80].decode("utf-8", "replace")
            raise TransientBackendError(
                f"{self.kind} request {request.request_id!r} got a reply that is not JSON "
                f"(starting {head!r}, a proxy or gateway page?); it will be retried",
                status=200, request_id=request.request_id,
            )
        raise PermanentBackendError(
            f"{self.kind} returned {type(completion).__name__}, not a chat completion; "
            "streaming is not served by this backend",
            request_id=request.request_id,
        )

    # -- closing ---------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the SDK client if this backend created it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.owns_client:
            await self.client.close()

    async def __aenter__(self) -> ChatCompletionsModel:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"
