"""Moved to :mod:`cachesaver.models.chat_request`; kept so old imports work."""

from .chat_request import *  # noqa: F401,F403
from .chat_request import __all__  # noqa: F401
