"""Moved to :mod:`cachesaver.stages.batching`; kept so old imports work."""

from .stages.batching import *  # noqa: F401,F403
from .stages.batching import __all__  # noqa: F401
