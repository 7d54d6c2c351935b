"""Model backends: anything with ``request`` / ``batch_request`` that a pipeline can wrap.

``ScriptedModel`` (a deterministic fake for tests) and ``ReplayOnlyModel`` (refuses every request,
for cache-only runs) are light; ``SimulatedLLM`` (the embedded default backend on a simulated
KV-cache cluster), ``TogetherModel`` and ``OpenAIModel`` are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .replay_only import ReplayOnlyModel
from .scripted import RecordedCall, ScriptedModel

_LAZY = {
    "ChatCompletionsModel": "cachesaver.models.chat_backend",
    "ChatRequest": "cachesaver.models.chat_request",
    "OpenAIModel": "cachesaver.models.openai",
    "SimulatedLLM": "cachesaver.models.simulated",
    "TogetherModel": "cachesaver.models.together",
}

__all__ = [
    "ChatCompletionsModel",
    "ChatRequest",
    "OpenAIModel",
    "RecordedCall",
    "ReplayOnlyModel",
    "ScriptedModel",
    "SimulatedLLM",
    "TogetherModel",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cachesaver.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
