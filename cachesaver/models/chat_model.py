"""Moved to :mod:`cachesaver.models.chat_backend`; kept so old imports work."""

from .chat_backend import *  # noqa: F401,F403
from .chat_backend import __all__  # noqa: F401
