"""Moved to :mod:`cachesaver.stages.caching`; kept so old imports work."""

from .stages.caching import *  # noqa: F401,F403
from .stages.caching import __all__  # noqa: F401
