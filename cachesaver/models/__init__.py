"""Model backends: anything with ``request`` / ``batch_request`` that a pipeline can wrap.

``ScriptedModel`` (a deterministic fake for tests) and ``ReplayOnlyModel`` (refuses every request,
for cache-only runs) are light; ``SimulatedLLM`` (the embedded default backend on a simulated
KV-cache cluster), ``TogetherModel`` and ``OpenAIModel`` are imported on first use. The SDK
backends are listed once, in :mod:`~cachesaver.models.registry`. Nothing here imports the
pipeline or the drop-in clients (:mod:`cachesaver.dropin`).
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import PROVIDERS
from .replay_only import ReplayOnlyModel
from .scripted import RecordedCall, ScriptedModel

# Imported on first use; the SDK backends (TogetherModel, OpenAIModel) come from the registry.
_LAZY = {
    "ChatCompletionsModel": "cachesaver.models.chat_backend",
    "ChatRequest": "cachesaver.models.chat_request",
    "SimulatedLLM": "cachesaver.models.simulated",
    **{p.backend_class_name: p.backend_module for p in PROVIDERS.values()},
}

__all__ = sorted(["RecordedCall", "ReplayOnlyModel", "ScriptedModel", *_LAZY])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cachesaver.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
