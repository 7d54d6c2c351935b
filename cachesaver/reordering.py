"""Moved to :mod:`cachesaver.stages.reordering`; kept so old imports work."""

from .stages.reordering import *  # noqa: F401,F403
from .stages.reordering import __all__  # noqa: F401
