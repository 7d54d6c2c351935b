"""Model backends: anything with ``request`` / ``batch_request`` that a pipeline can wrap."""

from .scripted import RecordedCall, ScriptedModel

__all__ = ["RecordedCall", "ScriptedModel"]
