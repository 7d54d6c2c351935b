"""Every error cachesaver raises on purpose.

The hierarchy, rooted at :class:`CacheSaverError`::

    CacheSaverError
    +-- ConfigurationError            bad arguments to a stage, pipeline or backend   (also ValueError)
    +-- InvalidRequestError           a Request that cannot be served                 (also ValueError)
    |   +-- UnserializableParameterError   a parameter with no canonical form for the cache key
    +-- PipelineClosedError           a request reached a stage after aclose()        (also RuntimeError)
    +-- BatchRequestError             some requests of a batch failed; carries every result
    +-- BackgroundJobError            a pipeline's background job crashed (raised at close)
    +-- BackendError                  the model behind the pipeline failed
    |   +-- IncompleteResponseError   the model returned fewer samples than asked
    |   +-- TransientBackendError     worth retrying (429, 5xx, timeouts); may carry retry_after_s
    |   +-- PermanentBackendError     retrying cannot help (400, 401, 404, ...)
    |       +-- ContextLengthError    the prompt does not fit the model's context window
    +-- CacheMissError                replay mode met a request the cache cannot serve
    +-- BundleError                   a cache bundle cannot be written or read
    +-- StoreError                    the sample store could not be read or written
        +-- CorruptStoreError         the store holds something cachesaver did not write
        +-- StoreLockedError          another process held the store's write lock too long
        +-- StoreUnavailableError     the store's server could not be reached (retried, then this)
        +-- StoreFullError            the store's server is full and refused the write
        +-- UnstoredSamplesError      a pipeline closed with samples the store refused

Backends translate their SDK's exceptions into these at one edge, chaining the original
(``raise ... from exc``), so callers can catch one family whatever the provider.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = [
    "BackendError",
    "BackgroundJobError",
    "BatchRequestError",
    "BundleError",
    "CacheMissError",
    "CacheSaverError",
    "ConfigurationError",
    "ContextLengthError",
    "CorruptStoreError",
    "IncompleteResponseError",
    "InvalidRequestError",
    "PermanentBackendError",
    "PipelineClosedError",
    "StoreError",
    "StoreFullError",
    "StoreLockedError",
    "StoreUnavailableError",
    "TransientBackendError",
    "UnserializableParameterError",
    "UnstoredSamplesError",
]


class CacheSaverError(Exception):
    """Raised for every failure cachesaver reports on purpose; catch this to catch them all."""


class ConfigurationError(CacheSaverError, ValueError):
    """Raised when a stage, pipeline or backend is built with arguments it cannot work with."""


class InvalidRequestError(CacheSaverError, ValueError):
    """Raised when a Request is malformed: n < 1, a prompt that is neither text nor messages, ..."""


class UnserializableParameterError(InvalidRequestError):
    """Raised when a request parameter has no canonical serialisation, so it cannot key the cache.

    Keys must never collide silently, so values such as sets, NaN, arbitrary objects or
    dictionaries with non-string keys are refused instead of being approximated.
    """


class PipelineClosedError(CacheSaverError, RuntimeError):
    """Raised when a request reaches a stage or pipeline that has been closed."""


class BatchRequestError(CacheSaverError):
    """Raised by ``batch_request`` when at least one request of the batch failed.

    Nothing is lost: ``results`` holds, in batch order, the :class:`~cachesaver.typedefs.Response`
    of every request that succeeded and the exception of every request that failed. Pass
    ``return_exceptions=True`` to ``batch_request`` to receive that list directly instead.
    """

    def __init__(self, results: Sequence[Any]) -> None:
        self.results = list(results)
        self.exceptions = [r for r in self.results if isinstance(r, BaseException)]
        first = self.exceptions[0] if self.exceptions else None
        super().__init__(
            f"{len(self.exceptions)} of {len(self.results)} requests in the batch failed "
            f"(first: {type(first).__name__}: {first}); the others succeeded and are in .results"
        )


class BackendError(CacheSaverError):
    """Raised when the model behind a pipeline fails to serve a request.

    ``status`` is the provider's HTTP status when there is one, ``request_id`` the
    cachesaver request id of the failed request, and ``provider_request_id`` the provider's own
    id for the failed call (its ``x-request-id`` header, what its support asks for), or None
    when the provider gave none (no answer at all, or a backend without one).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: Any = None,
        provider_request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id
        self.provider_request_id = provider_request_id


class IncompleteResponseError(BackendError):
    """Raised when a model keeps returning fewer samples than it was asked for.

    The samples it did return are stored; only the request that came up short fails.
    """


class TransientBackendError(BackendError):
    """Raised when a backend failure may succeed on retry (rate limit, overload, time-out)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: Any = None,
        retry_after_s: float | None = None,
        provider_request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id, provider_request_id=provider_request_id)
        self.retry_after_s = retry_after_s


class PermanentBackendError(BackendError):
    """Raised when a backend rejects a request in a way retrying cannot fix (400, 401, 404)."""


class ContextLengthError(PermanentBackendError):
    """Raised when the prompt (plus the requested completion) exceeds the model's context."""


class CacheMissError(CacheSaverError):
    """Raised in replay mode (``mode="replay"``, or a ReplayOnlyModel) when a request needs
    samples the cache does not hold; the message explains the miss."""


class BundleError(CacheSaverError):
    """Raised when a cache bundle cannot be written or read: a sample that is not JSON exported
    without ``allow_pickle``, a file that is not a bundle of this format, one whose content does
    not match its checksum, or pickled samples imported without ``allow_pickle``. Nothing was
    written to the store."""


class StoreError(CacheSaverError):
    """Raised when the sample store cannot be read or written."""


class CorruptStoreError(StoreError):
    """Raised when the store holds data cachesaver did not write, or a sample it wrote is gone
    (for example evicted by a ``diskcache.Cache`` whose eviction policy is not ``'none'``)."""


class StoreLockedError(StoreError):
    """Raised when the store's write lock (SQLite's) stayed held by another connection for
    longer than the store's ``store_timeout_s``, typically by a stopped or hung process sharing
    the cache directory. Nothing was written; samples already stored can still be read."""


class StoreUnavailableError(StoreError):
    """Raised when a store's server (Redis) could not be reached: the connection was refused or
    dropped, it timed out, or the server was restarting, for longer than the engine's retry
    bound (``retry_s``). Nothing is lost: a refused write is kept by the cache stage and
    retried; samples already stored are on the server."""


class StoreFullError(StoreError):
    """Raised when a store's server (Redis, ``maxmemory`` with ``noeviction``) is full and refused
    a write whole. The cache stage keeps the new samples and stores them once memory frees."""


class UnstoredSamplesError(StoreError):
    """Raised by ``aclose()`` when samples the model returned could not be stored before the
    pipeline closed.

    ``unstored`` is how many samples; ``path`` is the recovery file holding them (and their
    replay records), or None if none could be written. The next pipeline opened on the same
    cache stores the file's contents before its first write.
    """

    def __init__(self, message: str, *, unstored: int, path: str | None) -> None:
        super().__init__(message)
        self.unstored = unstored
        self.path = path


class BackgroundJobError(CacheSaverError):
    """Raised by ``aclose()`` when a background job of the pipeline crashed with an unexpected
    error (a bug, not a request's own failure): the requests it was serving already got that
    error. ``errors`` holds every crash, the first is also the cause. Report it as a bug."""

    def __init__(self, message: str, errors: Sequence[BaseException]) -> None:
        super().__init__(message)
        self.errors = list(errors)
