"""The together backend, and drop-in ``AsyncTogether`` / ``Together`` clients that cache.

:class:`TogetherModel` serves :class:`~cachesaver.models.chat_request.ChatRequest` s with
``together.AsyncTogether().chat.completions.create`` (see
:class:`~cachesaver.models.chat_backend.ChatCompletionsModel` for the guarantees)::

    model = TogetherModel("meta-llama/Llama-3.3-70B-Instruct-Turbo")
    async with OnlineAPI(model, "caches/demo", batch_size=8) as pipeline:
        response = await pipeline.request(model.make_request("2 + 2?", n=3, temperature=0.7))

Parameter mapping: ``max_completion_tokens`` (or ``max_tokens``) is sent as ``max_tokens``; a
single ``stop`` string becomes a list; ``logprobs`` is together's int (``True`` means 1,
``top_logprobs`` wins when set); every other decoding field is sent under its own name.

The drop-in clients take together's constructor arguments plus ``namespace=``, ``cache=`` and
``batch_size=`` (see :mod:`cachesaver.dropin.clients`; they are imported on first use, so importing
the backend alone does not import the pipeline)::

    from cachesaver.models.together import AsyncTogether    # was: from together import AsyncTogether
    client = AsyncTogether(namespace="run-1", cache="caches/demo")
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from .._runtime.checks import check_seconds
from ..ratelimit import RateLimiter, RateLimits
from ..retry import RetryPolicy
from ..typedefs import Request
from .chat_backend import ChatCompletionsModel, SdkErrors, given_options
from .chat_request import as_list, decoding_parameters, finish_arguments, prompt_messages
from .registry import dropin_getattr

try:
    import together as _together
except ImportError as exc:  # pragma: no cover - together is a core dependency
    raise ImportError(
        "cachesaver.models.together needs the together SDK: pip install 'together>=2'"
    ) from exc

__all__ = ["AsyncTogether", "Together", "TogetherModel", "together_arguments"]

_SAME_NAME = (
    "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "logit_bias", "response_format", "tools", "tool_choice", "reasoning_effort",
)


def together_arguments(request: Request) -> dict[str, Any]:
    """together ``chat.completions.create`` keyword arguments for ``request`` (all but ``n``)."""
    fields = decoding_parameters(request)
    arguments: dict[str, Any] = {"model": request.model, "messages": prompt_messages(request.prompt)}
    for name in _SAME_NAME:
        if name in fields:
            arguments[name] = fields[name]
    limit = fields.get("max_completion_tokens", fields.get("max_tokens"))
    if limit is not None:
        arguments["max_tokens"] = limit
    if "stop" in fields:
        arguments["stop"] = as_list(fields["stop"])
    top = fields.get("top_logprobs")
    logprobs = fields.get("logprobs")
    if top is not None:
        arguments["logprobs"] = top
    elif logprobs is True:
        arguments["logprobs"] = 1
    elif logprobs is not None and logprobs is not False and logprobs > 0:
        arguments["logprobs"] = logprobs
    return finish_arguments(arguments, request)


class TogetherModel(ChatCompletionsModel):
    """Chat completions from together (or any server speaking its API at ``base_url``).

    Parameters:
        model: the default model of :meth:`make_request`.
        api_key, base_url, timeout_s, default_headers: passed to ``together.AsyncTogether``
            (``api_key`` defaults to ``TOGETHER_API_KEY``). Never part of the cache key,
            except ``base_url``.
        client: an ``AsyncTogether`` to use instead (its retries are turned off for our calls;
            it is not closed by :meth:`aclose`).
        max_n_per_call: the largest ``n`` one call asks for; larger requests are split.
        retry: the :class:`~cachesaver.retry.RetryPolicy` for transient failures.
        limits: :class:`~cachesaver.ratelimit.RateLimits` (or a shared RateLimiter).
    """

    kind = "together"
    sdk_errors = SdkErrors(_together.TogetherError, _together.APIStatusError, _together.APIConnectionError)
    sdk_client_class = _together.AsyncTogether
    sdk_name = "together"
    sdk_key_hint = "pass api_key= or set TOGETHER_API_KEY"

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float | None = None,
        default_headers: Mapping[str, str] | None = None,
        client: Any = None,
        max_n_per_call: int = 128,
        retry: RetryPolicy | None = None,
        limits: RateLimits | RateLimiter | None = None,
        sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
    ) -> None:
        check_seconds("timeout_s", timeout_s, optional=True, positive=True)
        options: dict[str, Any] = {
            "api_key": api_key, "base_url": base_url,
            **given_options(timeout=timeout_s, default_headers=default_headers),
        }
        client, owns = self.open_sdk_client(client, options)
        super().__init__(
            client, model=model, owns_client=owns, max_n_per_call=max_n_per_call,
            retry=retry, limits=limits, sleep=sleep,
        )

    def sdk_arguments(self, request: Request) -> dict[str, Any]:
        return together_arguments(request)


# The drop-in clients AsyncTogether / Together: built on first use from this provider's entry in
# models/registry.py (they import the pipeline, which this module must not).
__getattr__ = dropin_getattr(__name__)
