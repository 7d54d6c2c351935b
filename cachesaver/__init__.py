"""cachesaver: cheaper, faster, reproducible LLM requests.

Wrap any model (an object with ``async request`` / ``batch_request``) in a pipeline of async
stages: a namespace-aware, replayable disk cache, a deduplicator, a batcher and a reorderer.

>>> import cachesaver
>>> sorted(cachesaver.__all__) == cachesaver.__all__
True

Backends that pull in an SDK (``TogetherModel``, ``OpenAIModel``, ``SimulatedLLM``) are imported
on first use, so ``import cachesaver`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .batching import AsyncBatcher
from .caching import AsyncCacher
from .deduplication import AsyncDeduplicator
from .errors import (
    BackendError,
    BatchRequestError,
    CacheMissError,
    CacheSaverError,
    ConfigurationError,
    ContextLengthError,
    CorruptStoreError,
    IncompleteResponseError,
    InvalidRequestError,
    PermanentBackendError,
    PipelineClosedError,
    StoreError,
    TransientBackendError,
    UnserializableParameterError,
)
from .keys import KEY_SCHEMA, request_key
from .ledger import Ledger, LedgerEntry, Price, PriceTable
from .metering import LedgerTap
from .models.scripted import ScriptedModel
from .pipelines import LocalAPI, OnlineAPI
from .reordering import RequestReorderer
from .stage import Stage
from .storage import SampleStore
from .typedefs import Batch, BatchRequestModel, Request, Response, SingleRequestModel

_LAZY = {
    "ChatRequest": "cachesaver.models.chat_completions",
    "OpenAIModel": "cachesaver.models.openai",
    "RateLimiter": "cachesaver.ratelimit",
    "RateLimits": "cachesaver.ratelimit",
    "RetryPolicy": "cachesaver.retry",
    "ReplayOnlyModel": "cachesaver.models.replay_only",
    "SimulatedLLM": "cachesaver.models.simulated",
    "TogetherModel": "cachesaver.models.together",
}

__all__ = [
    "AsyncBatcher",
    "AsyncCacher",
    "AsyncDeduplicator",
    "BackendError",
    "Batch",
    "BatchRequestError",
    "BatchRequestModel",
    "CacheMissError",
    "CacheSaverError",
    "ChatRequest",
    "ConfigurationError",
    "ContextLengthError",
    "CorruptStoreError",
    "IncompleteResponseError",
    "InvalidRequestError",
    "KEY_SCHEMA",
    "Ledger",
    "LedgerEntry",
    "LedgerTap",
    "LocalAPI",
    "OnlineAPI",
    "OpenAIModel",
    "PermanentBackendError",
    "PipelineClosedError",
    "Price",
    "PriceTable",
    "RateLimiter",
    "RateLimits",
    "ReplayOnlyModel",
    "Request",
    "RequestReorderer",
    "Response",
    "RetryPolicy",
    "SampleStore",
    "ScriptedModel",
    "SimulatedLLM",
    "SingleRequestModel",
    "Stage",
    "StoreError",
    "TogetherModel",
    "TransientBackendError",
    "UnserializableParameterError",
    "request_key",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cachesaver' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
