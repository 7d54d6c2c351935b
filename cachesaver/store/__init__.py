"""Where samples live: the store protocol, its engines, and the allocation logic over them.

* :mod:`~cachesaver.store.protocol`: the :class:`~cachesaver.store.protocol.SampleStore`
  contract every engine implements, and the values it exchanges.
* Engines: :mod:`~cachesaver.store.diskcache` (embedded, the default; an existing cache
  directory is read as before), :mod:`~cachesaver.store.redis` (a Redis server or Redis
  Cluster, shared by processes and hosts; needs ``cachesaver[redis]``; its URLs are read by
  :mod:`~cachesaver.store.redis_urls`, its scripts are :mod:`~cachesaver.store.redis_script`, how a
  view is asked and read is :mod:`~cachesaver.store.redis_views`) and
  :mod:`~cachesaver.store.memory` (the reference engine, and the fake for tests).
* :mod:`~cachesaver.store.allocation`: which stored sample each request gets (claims, replay
  records, lookup rounds), through the protocol only; :mod:`~cachesaver.store.claims` holds a
  run's claims, :mod:`~cachesaver.store.recovery` the files of samples a closing pipeline could
  not store, :mod:`~cachesaver.store.threads` the threads store calls run on.

:func:`open_store` turns what a user passes as ``cache=`` (a :data:`CacheSpec`) into an engine. Adding an engine is a
module here plus one branch in :func:`open_store` (and one parameter of the contract suite,
``tests/test_store_contract.py``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Protocol, Union

from ..errors import ConfigurationError
from .protocol import SampleStore

__all__ = ["CacheSpec", "DiskcacheLike", "RedisClientLike", "open_store", "store_url_scheme"]


class DiskcacheLike(Protocol):
    """A ``diskcache.Cache`` or ``FanoutCache``: what :func:`open_store` recognises as one (an
    object with ``get``, ``set`` and ``transact``). diskcache ships no types, so this is its
    static stand-in."""

    def get(self, *args: Any, **kwargs: Any) -> Any: ...

    def set(self, *args: Any, **kwargs: Any) -> Any: ...

    def transact(self, *args: Any, **kwargs: Any) -> Any: ...


class RedisClientLike(Protocol):
    """A redis-py client (``redis.Redis``, ``redis.cluster.RedisCluster``): what
    :func:`open_store` takes as one, statically (it checks the class when called)."""

    def pipeline(self, *args: Any, **kwargs: Any) -> Any: ...

    def evalsha(self, *args: Any, **kwargs: Any) -> Any: ...


CacheSpec = Union[str, "os.PathLike[str]", DiskcacheLike, RedisClientLike, SampleStore]
"""What ``cache=`` accepts on every pipeline, stage and drop-in client (see :func:`open_store`)."""


def open_store(cache: CacheSpec, *, store_timeout_s: float | None = None) -> tuple[SampleStore, bool]:
    """The engine for ``cache`` and whether the caller owns it (must close it).

    ``cache`` is one of:

    * a Redis URL (``redis://``, ``rediss://``, ``unix://``, or ``redis+cluster://`` /
      ``rediss+cluster://`` for a Redis Cluster; see :mod:`cachesaver.store.redis`): a
      :class:`~cachesaver.store.redis.RedisStore` opened (and later closed) by cachesaver;
    * a redis-py client (``redis.Redis``, ``redis.cluster.RedisCluster``): a RedisStore on it
      with the default prefix, closed by cachesaver, the client never;
    * a directory path (``str`` or ``os.PathLike``): a diskcache there, opened (and later
      closed) by cachesaver;
    * any other store URL (a string ``scheme://...``): a ConfigurationError saying no engine
      opens that scheme, never a directory of that name;
    * a ``diskcache.Cache`` or ``FanoutCache``: used as is, never closed by cachesaver;
    * any object implementing :class:`~cachesaver.store.protocol.SampleStore` (a
      :class:`~cachesaver.store.memory.MemoryStore`, your own engine): used as is, never closed.

    ``store_timeout_s`` bounds how long a write waits for another process's lock (engines that
    take one; for Redis, another thread's commit through the same store). Raises
    ConfigurationError for anything else (and for a Redis URL when redis-py is not installed).
    """
    from .diskcache import STORE_TIMEOUT_S, DiskcacheStore
    from .redis import RedisStore, is_redis_client, is_redis_url

    timeout = STORE_TIMEOUT_S if store_timeout_s is None else store_timeout_s
    if is_redis_url(cache) or is_redis_client(cache):
        return RedisStore(cache, store_timeout_s=timeout), True
    scheme = store_url_scheme(cache)
    if scheme is not None:
        # A URL none of the engines above opens (they claim their schemes first).
        raise ConfigurationError(
            f"no storage engine of this cachesaver opens {scheme}:// store URLs (got "
            f"{re.sub(r'//[^/@]*@', '//***@', str(cache))!r}); pass a "
            "directory path, or install the cachesaver version whose engine opens them"
        )
    if isinstance(cache, (str, os.PathLike)):
        return DiskcacheStore(cache, store_timeout_s=timeout), True
    if isinstance(cache, SampleStore) and not _is_diskcache(cache):
        return cache, False
    if _is_diskcache(cache):
        return DiskcacheStore(cache, store_timeout_s=timeout), True
    raise ConfigurationError(
        f"cache must be a directory path, a Redis URL (redis://, rediss://, unix://, "
        f"redis+cluster://), a diskcache.Cache (or FanoutCache), a redis-py client or a store "
        f"implementing cachesaver.store.protocol.SampleStore, got {type(cache).__name__}"
    )


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def store_url_scheme(cache: Any) -> str | None:
    """The scheme of ``cache`` when it is a store URL (a string ``scheme://...``), else None."""
    if not isinstance(cache, str):
        return None
    match = _URL.match(cache)
    return match.group(1).lower() if match else None


def _is_diskcache(cache: Any) -> bool:
    return all(callable(getattr(cache, method, None)) for method in ("get", "set", "transact"))
