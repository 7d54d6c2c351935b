"""Moved to :mod:`cachesaver.stages.deduplication`; kept so old imports work."""

from .stages.deduplication import *  # noqa: F401,F403
from .stages.deduplication import __all__  # noqa: F401
