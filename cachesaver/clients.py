"""Moved to :mod:`cachesaver.dropin.clients` (the streams to :mod:`cachesaver.dropin.completions`);
kept so old imports work."""

from .dropin.clients import CachedAsyncClient, CachedSyncClient, ClientOptions
from .dropin.completions import AsyncReplayStream, ReplayStream

__all__ = ["AsyncReplayStream", "CachedAsyncClient", "CachedSyncClient", "ClientOptions", "ReplayStream"]
