"""The SDK providers cachesaver knows, in one table that every other place reads.

A provider is a chat-completions API with a Python SDK (together, OpenAI and every server that
speaks its API). Its :class:`Provider` entry in :data:`PROVIDERS` names its backend class (a
:class:`~cachesaver.models.chat_backend.ChatCompletionsModel` subclass), its SDK and the SDK's
client classes, the environment variable holding its API key and the experiment runner's
default model. From this table come:

* the experiment runner's backends (``cachesaver run --backend``, :mod:`cachesaver.tasks.backends`);
* ``TogetherModel`` / ``OpenAIModel`` in ``cachesaver`` and :mod:`cachesaver.models` (imported on
  first use, so the SDK is not imported before it is needed);
* the drop-in clients ``AsyncTogether`` / ``Together`` of :mod:`cachesaver.models.together` and
  ``AsyncOpenAI`` / ``OpenAI`` of :mod:`cachesaver.models.openai`, built on first use by
  :func:`cachesaver.dropin.client_class`. The backend module stays free of the pipeline: it
  imports neither :mod:`cachesaver.pipelines` nor :mod:`cachesaver.dropin`.

Reading the table imports nothing. To add a provider, write its backend module
``cachesaver/models/<name>.py`` (the model class, with ``kind = "<name>"``, its SDK's argument
mapping and error classes, and ``__getattr__ = dropin_getattr(__name__)`` for its drop-in
clients) and add one entry here.

>>> PROVIDERS["openai"].backend_class_name, PROVIDERS["openai"].backend_module
('OpenAIModel', 'cachesaver.models.openai')
>>> PROVIDERS["together"].dropin_clients
('AsyncTogether', 'Together')
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError

__all__ = ["DEFAULT_PROVIDER", "PROVIDERS", "Provider", "dropin_getattr", "provider"]


@dataclass(frozen=True)
class Provider:
    """One SDK provider.

    Attributes:
        name: the backend's name: ``cachesaver run --backend NAME`` and the ``kind`` of its
            backend class (so the ``backend`` field of its requests, part of the cache key).
        backend: ``"module:Class"`` of its ChatCompletionsModel subclass.
        sdk_module: the SDK's package; it has the two client classes below and the completion
            types ``types.chat.ChatCompletion`` / ``types.chat.ChatCompletionChunk``.
        async_client, sync_client: the SDK's client class names, which are also the names of
            the drop-in clients in the backend's module (``from together import AsyncTogether``
            becomes ``from cachesaver.models.together import AsyncTogether``).
        api_key_env: the environment variable the SDK reads its API key from.
        default_model: the model the experiment runner uses when none is given.
    """

    name: str
    backend: str
    sdk_module: str
    async_client: str
    sync_client: str
    api_key_env: str
    default_model: str

    @property
    def backend_module(self) -> str:
        """The module of the backend class (``cachesaver.models.together``)."""
        return self.backend.partition(":")[0]

    @property
    def backend_class_name(self) -> str:
        """The backend class's name (``TogetherModel``)."""
        return self.backend.partition(":")[2]

    @property
    def dropin_clients(self) -> tuple[str, str]:
        """The names of the drop-in clients: async first."""
        return (self.async_client, self.sync_client)

    def backend_class(self) -> type:
        """The backend class, importing its module (and so the SDK) now."""
        return getattr(importlib.import_module(self.backend_module), self.backend_class_name)

    def sdk(self) -> Any:
        """The SDK package, imported now (after the backend module, which says how to install it)."""
        importlib.import_module(self.backend_module)
        return importlib.import_module(self.sdk_module)


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            name="together",
            backend="cachesaver.models.together:TogetherModel",
            sdk_module="together",
            async_client="AsyncTogether",
            sync_client="Together",
            api_key_env="TOGETHER_API_KEY",
            default_model="meta-llama/Llama-3.3-70B-Instruct-Turbo",
        ),
        Provider(
            name="openai",
            backend="cachesaver.models.openai:OpenAIModel",
            sdk_module="openai",
            async_client="AsyncOpenAI",
            sync_client="OpenAI",
            api_key_env="OPENAI_API_KEY",
            default_model="gpt-4o-mini",
        ),
    )
}

#: The provider the experiment runner picks when its API key is set (else the simulated backend).
DEFAULT_PROVIDER = "together"


def provider(name: str) -> Provider:
    """The provider called ``name``; :class:`~cachesaver.errors.ConfigurationError` if none is."""
    try:
        return PROVIDERS[name]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown provider {name!r}; choose one of {', '.join(PROVIDERS)}"
        ) from None


def dropin_getattr(module_name: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a backend module: its drop-in client names resolve, on first
    use, to :func:`cachesaver.dropin.client_class` of the provider whose backend lives there
    (and are then cached in the module); any other name raises AttributeError."""

    def __getattr__(name: str) -> Any:
        for entry in PROVIDERS.values():
            if entry.backend_module == module_name and name in entry.dropin_clients:
                dropin = importlib.import_module("cachesaver.dropin")
                value = dropin.client_class(entry.name, name)
                setattr(sys.modules[module_name], name, value)
                return value
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__
