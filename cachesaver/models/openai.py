"""The OpenAI backend (also vLLM, llama.cpp server, Ollama, ... through ``base_url``), and
drop-in ``AsyncOpenAI`` / ``OpenAI`` clients that cache. Needs the extra: ``pip install
'cachesaver[openai]'``.

:class:`OpenAIModel` serves :class:`~cachesaver.models.chat_request.ChatRequest` s with
``openai.AsyncOpenAI().chat.completions.create`` (see
:class:`~cachesaver.models.chat_backend.ChatCompletionsModel` for the guarantees)::

    model = OpenAIModel("qwen2.5-7b", base_url="http://127.0.0.1:8000/v1", api_key="none")
    async with OnlineAPI(model, "caches/demo", batch_size=8) as pipeline:
        response = await pipeline.request(model.make_request("2 + 2?", n=3, temperature=0.7))

Parameter mapping: decoding fields the OpenAI API defines are sent under their own names
(``max_completion_tokens`` and ``max_tokens`` as given: older servers know only
``max_tokens``); ``logprobs`` is sent as a bool, an int ``logprobs`` also sets
``top_logprobs``; ``top_k``, ``min_p`` and ``repetition_penalty``, which only
OpenAI-compatible servers accept, go in the JSON body (``extra_body``).
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
from .chat_request import decoding_parameters, finish_arguments, prompt_messages
from .registry import dropin_getattr

try:
    import openai as _openai
except ImportError as exc:
    raise ImportError(
        "cachesaver.models.openai needs the OpenAI SDK: pip install 'cachesaver[openai]'"
    ) from exc

__all__ = ["AsyncOpenAI", "OpenAI", "OpenAIModel", "openai_arguments"]

_SAME_NAME = (
    "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias",
    "response_format", "tools", "tool_choice", "reasoning_effort", "max_completion_tokens",
    "max_tokens", "stop", "top_logprobs",
)
_BODY_ONLY = ("top_k", "min_p", "repetition_penalty")


def openai_arguments(request: Request) -> dict[str, Any]:
    """OpenAI ``chat.completions.create`` keyword arguments for ``request`` (all but ``n``)."""
    fields = decoding_parameters(request)
    arguments: dict[str, Any] = {"model": request.model, "messages": prompt_messages(request.prompt)}
    for name in _SAME_NAME:
        if name in fields:
            arguments[name] = fields[name]
    logprobs = fields.get("logprobs")
    if isinstance(logprobs, bool):
        arguments["logprobs"] = logprobs
    elif logprobs is not None:
        arguments["logprobs"] = logprobs > 0
        if logprobs > 0:
            arguments.setdefault("top_logprobs", logprobs)
    body = {name: fields[name] for name in _BODY_ONLY if name in fields}
    return finish_arguments(arguments, request, body)


class OpenAIModel(ChatCompletionsModel):
    """Chat completions from OpenAI or an OpenAI-compatible server at ``base_url``.

    Parameters:
        model: the default model of :meth:`make_request`.
        api_key, base_url, organization, project, timeout_s, default_headers: passed to
            ``openai.AsyncOpenAI`` (``api_key`` defaults to ``OPENAI_API_KEY``). Never part of
            the cache key, except ``base_url``.
        client: an ``AsyncOpenAI`` to use instead (its retries are turned off for our calls;
            it is not closed by :meth:`aclose`).
        max_n_per_call: the largest ``n`` one call asks for; larger requests are split (set 1
            for servers without ``n`` support).
        retry: the :class:`~cachesaver.retry.RetryPolicy` for transient failures.
        limits: :class:`~cachesaver.ratelimit.RateLimits` (or a shared RateLimiter).
    """

    kind = "openai"
    sdk_errors = SdkErrors(_openai.OpenAIError, _openai.APIStatusError, _openai.APIConnectionError)
    sdk_client_class = _openai.AsyncOpenAI
    sdk_name = "OpenAI"
    sdk_key_hint = (
        "pass api_key= or set OPENAI_API_KEY; local servers accept any key, e.g. api_key='none'"
    )

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
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
            "api_key": api_key,
            **given_options(
                base_url=base_url, organization=organization, project=project, timeout=timeout_s,
                default_headers=default_headers,
            ),
        }
        client, owns = self.open_sdk_client(client, options)
        super().__init__(
            client, model=model, owns_client=owns, max_n_per_call=max_n_per_call,
            retry=retry, limits=limits, sleep=sleep,
        )

    def sdk_arguments(self, request: Request) -> dict[str, Any]:
        return openai_arguments(request)


# The drop-in clients AsyncOpenAI / OpenAI: built on first use from this provider's entry in
# models/registry.py (they import the pipeline, which this module must not).
__getattr__ = dropin_getattr(__name__)
