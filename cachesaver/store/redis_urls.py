"""Redis URLs as the Redis engine reads them (:mod:`cachesaver.store.redis`), and the store
locations it prints: the URL without its password.

>>> describe("redis://user:secret@cache.example:6380/2?prefix=team&socket_timeout=3")
'redis://user@cache.example:6380/2?prefix=team'
>>> parse_url("redis+cluster://node-1:7000?prefix=team").cluster
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from ..errors import ConfigurationError

__all__ = ["CONNECT_TIMEOUT_S", "SOCKET_TIMEOUT_S", "RedisUrl", "check_prefix", "describe", "is_redis_url", "parse_url"]

SOCKET_TIMEOUT_S = 10.0
"""Socket time-out of the connections a URL opens (unless it sets ``socket_timeout``)."""
CONNECT_TIMEOUT_S = 5.0
"""Connect time-out of the connections a URL opens (unless it sets ``socket_connect_timeout``)."""

_SCHEMES = ("redis", "rediss", "unix")


def is_redis_url(value: Any) -> bool:
    """Whether ``value`` is a string naming a Redis store (``redis://``, ``rediss://``,
    ``unix://``, ``redis+cluster://``, ``rediss+cluster://``)."""
    if not isinstance(value, str) or "://" not in value:
        return False
    scheme = value.split("://", 1)[0].lower()
    return scheme in _SCHEMES or scheme in ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True)
class RedisUrl:
    """A parsed store URL: ``client_url`` is what redis-py's ``from_url`` gets (cachesaver's own
    parameters removed, ``+cluster`` dropped from the scheme); ``prefix`` and ``retry_s`` are
    those parameters (None when absent); ``timeouts`` the socket time-outs to add, for those
    the URL does not set; ``names_client``: the URL gives redis-py's ``lib_name`` or
    ``lib_version`` itself (then the store's connections keep that name)."""

    client_url: str
    cluster: bool
    prefix: str | None
    retry_s: float | None
    timeouts: dict[str, float]
    names_client: bool = False


def parse_url(url: str) -> RedisUrl:
    """``url`` read, or ConfigurationError for a URL the engine cannot use (another scheme, a
    cluster URL with a database, ``decode_responses``, a bad ``retry_s`` or port)."""
    try:
        split = urlsplit(url)
        split.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigurationError(f"cannot read the Redis URL {describe(url)}: {exc}") from exc
    scheme = split.scheme.lower()
    cluster = scheme.endswith("+cluster")
    base = scheme.removesuffix("+cluster")
    if base not in _SCHEMES or (cluster and base == "unix"):
        raise ConfigurationError(
            f"{describe(url)} is not a Redis URL cachesaver reads: use redis://, rediss:// or unix:// "
            "for one server, redis+cluster:// or rediss+cluster:// for a Redis Cluster"
        )
    ours: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(split.query, keep_blank_values=True):
        if name in ("prefix", "retry_s"):
            ours[name] = value
        elif name == "decode_responses":
            raise ConfigurationError(
                f"{describe(url)} sets decode_responses, but cachesaver stores bytes (pickles); remove it"
            )
        else:
            rest.append((name, value))
    if cluster and split.path not in ("", "/", "/0") or cluster and any(n == "db" and v != "0" for n, v in rest):
        raise ConfigurationError(f"{describe(url)}: a Redis Cluster has only database 0; drop the database number")
    timeouts = {}
    names = {name for name, _ in rest}
    if "socket_timeout" not in names:
        timeouts["socket_timeout"] = SOCKET_TIMEOUT_S
    if "socket_connect_timeout" not in names:
        timeouts["socket_connect_timeout"] = CONNECT_TIMEOUT_S
    retry_s = None
    if "retry_s" in ours:
        try:
            retry_s = float(ours["retry_s"])
        except ValueError:
            raise ConfigurationError(f"retry_s in {describe(url)} must be a number of seconds, got {ours['retry_s']!r}") from None
    client_url = _unsplit(base, split.netloc, split.path, urlencode(rest))
    named = bool(names & {"lib_name", "lib_version"})
    return RedisUrl(client_url, cluster, ours.get("prefix"), retry_s, timeouts, named)


def describe(url: str, prefix: str | None = None) -> str:
    """``url`` as a store location: scheme, user, host and port (or socket path), database and
    ``prefix`` (given, else the URL's), never the password nor other parameters."""
    try:
        split = urlsplit(url)
        host, port, user = split.hostname, split.port, split.username
    except ValueError:
        return "<a Redis URL that cannot be read>"
    scheme = split.scheme.lower()
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    netloc = f"{quote(user, safe='')}@" if user else ""
    kept: list[tuple[str, str]] = []
    if scheme == "unix":
        path = split.path
        kept.append(("db", query.get("db") or "0"))
    else:
        host = host or "localhost"
        netloc += (f"[{host}]" if ":" in host else host) + f":{port or 6379}"
        path = "" if scheme.endswith("+cluster") else "/" + (query.get("db") or split.path.strip("/") or "0")
    chosen = prefix if prefix is not None else query.get("prefix")
    if chosen is not None:
        kept.append(("prefix", chosen))
    return _unsplit(scheme, netloc, path, urlencode(kept))


def _unsplit(scheme: str, netloc: str, path: str, query: str) -> str:
    """A URL from its parts, with ``//`` even when there is no host (``unix:///path``)."""
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def check_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"prefix must be a non-empty string without braces (they would change the cluster hash "
            f"slot of every key), got {prefix!r}"
        )
    return prefix
