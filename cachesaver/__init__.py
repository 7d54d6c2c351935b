"""cachesaver: cheaper, faster, reproducible LLM requests.

Wrap any model (an object with ``async request`` / ``batch_request``) in a pipeline of async
stages: a namespace-aware, replayable disk cache, a deduplicator, a batcher and a reorderer.

>>> import cachesaver
>>> sorted(cachesaver.__all__) == cachesaver.__all__
True

What is public, and so exported here (``tests/test_package.py`` checks it):

* Every name in the ``__all__`` of the modules a pipeline user writes code against:
  :mod:`~cachesaver.typedefs`, :mod:`~cachesaver.errors`, :mod:`~cachesaver.pipelines`, the
  stage modules of :mod:`cachesaver.stages` (``base``, ``caching``, ``deduplication``,
  ``batching``, ``reordering``, ``ledger_tap``), :mod:`~cachesaver.keys`,
  :mod:`~cachesaver.ledger` and :mod:`cachesaver.models`. A name added to one of those
  ``__all__`` must be added here (an SDK backend is added once, in
  :mod:`cachesaver.models.registry`, and appears here and in :mod:`cachesaver.models`).
* From the plumbing modules, only what a user configures a pipeline or backend with:
  the store protocols ``SampleStore`` and ``InspectableStore``, its engines ``DiskcacheStore`` and ``MemoryStore`` and
  ``open_store`` with ``CacheSpec``, the type of what ``cache=`` accepts
  (:mod:`cachesaver.store`), ``Mode`` and ``MODES`` (what ``mode=`` accepts,
  :mod:`~cachesaver.modes`), ``SharedRun``, the settings of ``run_id=``
  (:mod:`cachesaver.store.shared_runs`), ``RetryPolicy`` (:mod:`~cachesaver.retry`),
  ``RateLimiter`` and ``RateLimits`` (:mod:`~cachesaver.ratelimit`). Their other names, and
  those of the store's internals (:mod:`cachesaver.store`), the cache stage's single-flight
  (:mod:`cachesaver.stages.single_flight`), the drop-in clients (:mod:`cachesaver.dropin`) and
  the command line (:mod:`cachesaver.cli`), are for use from their module;
  :mod:`cachesaver._runtime` (background jobs, the one-pass collector, the loop thread) is
  private.
* The simulated KV-cache cluster, the experiment runner and the cache as an artifact (listing,
  miss explanations, bundles) are public subpackages that keep their own namespace (``from
  cachesaver.tasks import Task``, ``from cachesaver.kvcache import Cluster``, ``from
  cachesaver.artifacts import export_bundle``): their names (``Server``, ``Session``, ``Turn``, ...) would be ambiguous
  here, and neither is needed to use a pipeline.
* Old module paths (``cachesaver.caching``, ``cachesaver.stage``, ``cachesaver.metering``,
  ``cachesaver.clients``, ...) are one-line re-exports of where their names moved, kept so
  old imports work.

The pipeline and its stages, and the backends that pull in an SDK (``TogetherModel``,
``OpenAIModel``, ``SimulatedLLM``), are imported on first use, so ``import cachesaver`` (and
importing a backend) stays light.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from .errors import (
    BackendError,
    BackgroundJobError,
    BatchRequestError,
    BundleError,
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
    StoreFullError,
    StoreLockedError,
    StoreUnavailableError,
    TransientBackendError,
    UnserializableParameterError,
    UnstoredSamplesError,
)
from .keys import (
    KEY_SCHEMA,
    NON_KEY_FIELDS,
    canonical_request,
    canonical_request_text,
    canonical_value,
    key_of_canonical_request,
    model_identity,
    request_key,
    store_key,
)
from .ledger import Ledger, LedgerEntry, LedgerHooks, Price, PriceTable
from .models.registry import PROVIDERS
from .modes import MODES, Mode
from .models.scripted import RecordedCall, ScriptedModel
from .stages.base import Settled, Stage, call_model
from .store import CacheSpec, open_store
from .store.diskcache import DiskcacheStore
from .store.memory import MemoryStore
from .store.protocol import InspectableStore, SampleStore
from .typedefs import (
    Batch,
    BatchMethodModel,
    BatchRequestModel,
    Message,
    Model,
    Prompt,
    Request,
    RequestMethodModel,
    Response,
    SingleRequestModel,
)

if TYPE_CHECKING:
    from .models.chat_backend import ChatCompletionsModel
    from .models.chat_request import ChatRequest
    from .models.replay_only import ReplayOnlyModel
    from .models.simulated import SimulatedLLM
    from .pipelines import LocalAPI, OnlineAPI
    from .ratelimit import RateLimiter, RateLimits
    from .retry import RetryPolicy
    from .stages.batching import AsyncBatcher
    from .store.shared_runs import SharedRun
    from .stages.caching import AsyncCacher
    from .stages.deduplication import AsyncDeduplicator
    from .stages.ledger_tap import LedgerTap
    from .stages.reordering import RequestReorderer

# Imported on first use (the pipeline and its stages, the SDK backends of the registry).
_LAZY = {
    "AsyncBatcher": "cachesaver.stages.batching",
    "AsyncCacher": "cachesaver.stages.caching",
    "AsyncDeduplicator": "cachesaver.stages.deduplication",
    "ChatCompletionsModel": "cachesaver.models.chat_backend",
    "ChatRequest": "cachesaver.models.chat_request",
    "LedgerTap": "cachesaver.stages.ledger_tap",
    "LocalAPI": "cachesaver.pipelines",
    "OnlineAPI": "cachesaver.pipelines",
    "RateLimiter": "cachesaver.ratelimit",
    "RateLimits": "cachesaver.ratelimit",
    "ReplayOnlyModel": "cachesaver.models.replay_only",
    "RequestReorderer": "cachesaver.stages.reordering",
    "RetryPolicy": "cachesaver.retry",
    "SharedRun": "cachesaver.store.shared_runs",
    "SimulatedLLM": "cachesaver.models.simulated",
    **{p.backend_class_name: p.backend_module for p in PROVIDERS.values()},
}

__all__ = [
    "AsyncBatcher",
    "AsyncCacher",
    "AsyncDeduplicator",
    "BackendError",
    "Batch",
    "BackgroundJobError",
    "BatchMethodModel",
    "BatchRequestError",
    "BatchRequestModel",
    "BundleError",
    "CacheMissError",
    "CacheSaverError",
    "CacheSpec",
    "ChatCompletionsModel",
    "ChatRequest",
    "ConfigurationError",
    "ContextLengthError",
    "CorruptStoreError",
    "DiskcacheStore",
    "IncompleteResponseError",
    "InspectableStore",
    "InvalidRequestError",
    "KEY_SCHEMA",
    "Ledger",
    "LedgerEntry",
    "LedgerHooks",
    "LedgerTap",
    "LocalAPI",
    "MODES",
    "MemoryStore",
    "Message",
    "Mode",
    "Model",
    "NON_KEY_FIELDS",
    "OnlineAPI",
    "PermanentBackendError",
    "PipelineClosedError",
    "Price",
    "PriceTable",
    "Prompt",
    "RateLimiter",
    "RateLimits",
    "RecordedCall",
    "ReplayOnlyModel",
    "Request",
    "RequestMethodModel",
    "RequestReorderer",
    "Response",
    "RetryPolicy",
    "SampleStore",
    "ScriptedModel",
    "Settled",
    "SharedRun",
    "SimulatedLLM",
    "SingleRequestModel",
    "Stage",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "StoreUnavailableError",
    "TransientBackendError",
    "UnserializableParameterError",
    "UnstoredSamplesError",
    "call_model",
    "canonical_request",
    "canonical_request_text",
    "canonical_value",
    "key_of_canonical_request",
    "model_identity",
    "open_store",
    "request_key",
    "store_key",
]
__all__ = sorted(__all__ + [p.backend_class_name for p in PROVIDERS.values()])
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # ``import cachesaver; cachesaver.pipelines.OnlineAPI``: a submodule not imported yet.
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'cachesaver' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
