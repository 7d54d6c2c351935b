"""Moved to :mod:`cachesaver.store.diskcache`; kept so old imports work."""

from .store.diskcache import *  # noqa: F401,F403
from .store.diskcache import __all__  # noqa: F401
