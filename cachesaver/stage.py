"""Moved to :mod:`cachesaver.stages.base`; kept so old imports work."""

from .stages.base import *  # noqa: F401,F403
from .stages.base import __all__  # noqa: F401
