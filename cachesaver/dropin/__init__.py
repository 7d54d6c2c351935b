"""Drop-in SDK clients that cache: ``from cachesaver.models.together import AsyncTogether``.

* :mod:`~cachesaver.dropin.clients`: ``CachedAsyncClient`` / ``CachedSyncClient``, an SDK client
  whose ``chat.completions.create`` goes through an :class:`~cachesaver.pipelines.OnlineAPI`
  (everything else is the real SDK client's), and their options;
* :mod:`~cachesaver.dropin.completions`: an SDK call turned into a Request, a Response into the
  SDK's completion (or a replayed stream).

:func:`client_class` builds each provider's two clients from its entry in
:mod:`cachesaver.models.registry`; the provider's backend module hands them out under the SDK's
names. This package imports the pipeline; :mod:`cachesaver.models` never imports this package.
"""

from __future__ import annotations

import functools
import importlib

from ..errors import ConfigurationError
from ..models.registry import Provider, provider
from .clients import CachedAsyncClient, CachedSyncClient, ClientOptions

__all__ = ["CachedAsyncClient", "CachedSyncClient", "ClientOptions", "client_class"]


def client_class(provider_name: str, name: str) -> type:
    """The drop-in client ``name`` of the provider ``provider_name`` (its async or its blocking
    client, named as in the SDK), built once per registry entry: the same class every time.

    >>> from cachesaver.models.together import AsyncTogether
    >>> client_class("together", "AsyncTogether") is AsyncTogether
    True

    Raises :class:`~cachesaver.errors.ConfigurationError` for an unknown provider or name.
    """
    return _build(provider(provider_name), name)


@functools.lru_cache(maxsize=None)
def _build(entry: Provider, name: str) -> type:
    sdk = f"{entry.sdk_module}.{name}"
    if name == entry.async_client:
        types = importlib.import_module(f"{entry.sdk().__name__}.types.chat")
        namespace = {
            "__doc__": f"""``{sdk}`` whose chat completions go through a cachesaver pipeline.

    Takes the SDK's constructor arguments plus cachesaver's (see
    :class:`cachesaver.dropin.clients.CachedAsyncClient`); everything but
    ``chat.completions.create`` is the real SDK client's.
    """,
            "model_class": entry.backend_class(),
            "completion_type": types.ChatCompletion,
            "chunk_type": types.ChatCompletionChunk,
        }
        base: type = CachedAsyncClient
    elif name == entry.sync_client:
        namespace = {
            "__doc__": f"""``{sdk}`` whose chat completions go through a cachesaver pipeline.

    Calls block; they run on a private event loop thread, so this works in plain scripts and
    inside a running event loop (Jupyter). Close it (``close()`` or ``with``) when done.
    """,
            "async_client_class": _build(entry, entry.async_client),
            "sdk_class": getattr(entry.sdk(), name),
        }
        base = CachedSyncClient
    else:
        raise ConfigurationError(
            f"the {entry.name} provider has no drop-in client {name!r}; "
            f"its clients are {entry.async_client} and {entry.sync_client}"
        )
    namespace.update(__module__=entry.backend_module, __qualname__=name)
    return type(name, (base,), namespace)
