"""Ready-made pipelines: the stages assembled for online APIs and for local batch models.

``OnlineAPI(model, cache, batch_size, timeout)`` is, from the caller inward::

    AsyncCacher -> AsyncDeduplicator -> AsyncBatcher -> AsyncDeduplicator -> RequestReorderer
                -> LedgerTap -> model

A request is answered from the cache when it can (never waiting for a batch window); what is
missing is merged with identical requests issued together, grouped into batches of
``batch_size`` (sent when full or ``timeout`` seconds after the batch started collecting),
merged again with identical requests that waited in the same batch window, put in canonical
order and sent to ``model``. ``model`` may implement ``request``, ``batch_request`` or both,
async or sync (a sync method runs in a worker thread; see :func:`~cachesaver.stages.base.call_model`).

``LocalAPI`` has the same stages and arguments for local batch models: ``model`` must implement
``batch_request`` and always receives whole batches.

Both are models themselves (``request`` / ``batch_request``), async context managers, and
expose their stages (``cacher``, ``deduplicator``, ``batcher``, ``window_deduplicator``,
``reorderer``) and a
``ledger`` that counts upstream calls, generated, cached and merged samples per namespace.
Closing (``aclose()``, ``cleanup()``, or leaving ``async with``) lets requests in flight finish
and stores their samples; later requests raise :class:`~cachesaver.errors.PipelineClosedError`.
The user's model is not closed.

``mode=`` (default ``$CACHESAVER_MODE``, else ``"record"``) is the cache stage's mode:
``"record"``, ``"replay"`` (no model call; a miss raises
:class:`~cachesaver.errors.CacheMissError` explaining it), ``"refresh"`` or ``"bypass"``
(see :mod:`cachesaver.modes`). ``await pipeline.explain_miss(request)`` says why a request is
not served from the cache.

``run_id="name"`` makes the pipeline a worker of shared run ``name``: every pipeline on the
store with that run id, in any process or host, is one run (see
:mod:`cachesaver.store.shared_runs`); without it the pipeline is its own run.

The cache keys include the model's identity: ``model_id="name"`` sets it, ``model_id=None``
adds none, and by default it is the model's ``cache_identity``, else its ``model`` or
``model_name`` string (see :func:`~cachesaver.keys.model_identity`); ``model_identity`` reads it.

>>> import anyio, tempfile
>>> from cachesaver.models import ScriptedModel
>>> from cachesaver.typedefs import Request
>>> async def demo():
...     async with OnlineAPI(ScriptedModel(), tempfile.mkdtemp(), batch_size=4) as pipeline:
...         return await pipeline.request(Request("hi", n=2, request_id="a"))
>>> anyio.run(demo)
Response(data=['hi#0', 'hi#1'], cached=[False, False], duplicated=[False, False])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .artifacts.explain import MissExplanation
from .errors import ConfigurationError
from .keys import DERIVE
from .ledger import Ledger
from .modes import Mode
from .stages.base import Settled, Stage, _check_model
from .stages.batching import AsyncBatcher
from .stages.caching import AsyncCacher
from .stages.deduplication import AsyncDeduplicator
from .stages.ledger_tap import LedgerTap
from .stages.reordering import RequestReorderer
from .store import CacheSpec
from .typedefs import Model, Request, Response

if TYPE_CHECKING:
    from .store.shared_runs import SharedRun

__all__ = ["LocalAPI", "OnlineAPI"]


class _Pipeline(Stage):
    def __init__(
        self,
        model: Model,
        cache: CacheSpec,
        batch_size: int,
        timeout: float = 0.01,
        *,
        ledger: Ledger | None = None,
        max_refetch: int = 2,
        model_id: Any = DERIVE,
        store_timeout_s: float = 30.0,
        mode: str | None = None,
        run_id: "str | SharedRun | None" = None,
    ) -> None:
        _check_model(model, type(self).__name__)
        self.ledger: Ledger = ledger if ledger is not None else Ledger()
        self.reorderer = RequestReorderer(LedgerTap(model, self.ledger))
        self.window_deduplicator = AsyncDeduplicator(self.reorderer, across_calls=False)
        self.batcher = AsyncBatcher(self.window_deduplicator, batch_size=batch_size, timeout=timeout)
        self.deduplicator = AsyncDeduplicator(self.batcher)
        self.deduplicator._whole_passes = True  # the cacher hands it one call per pass
        self.cacher = AsyncCacher(
            self.deduplicator, cache, max_refetch=max_refetch, model_id=model_id, store_timeout_s=store_timeout_s,
            mode=mode,
            run_id=run_id,
        )
        super().__init__(self.cacher)

    @property
    def cache(self) -> Any:
        """The diskcache holding the samples."""
        return self.cacher.cache

    @property
    def unstored_samples(self) -> int:
        """Samples the model returned that the store has not accepted yet; they are kept in
        memory, retried, and saved to a recovery file at close if the store never recovers."""
        return self.cacher.unstored_samples

    @property
    def model_identity(self) -> str | None:
        """The model identity in the cache keys (see :func:`~cachesaver.keys.model_identity`)."""
        return self.cacher.model_identity

    @property
    def mode(self) -> Mode:
        """The cache mode: ``"record"``, ``"replay"``, ``"refresh"`` or ``"bypass"``."""
        return self.cacher.mode

    async def explain_miss(self, request: Request) -> MissExplanation:
        """Why ``request`` would not be served from the cache now (``str()`` is a sentence; the
        message of every replay-mode CacheMissError); see
        :meth:`~cachesaver.stages.caching.AsyncCacher.explain_miss`."""
        return await self.cacher.explain_miss(request)

    async def request(self, request: Request) -> Response:
        """Samples for one request; raises its error if it failed."""
        result = await self.cacher.settle_one(self._admit(request))  # the cacher tracks it
        if isinstance(result, BaseException):
            raise result
        self.ledger.record_served(request, result)
        return result

    async def _settle(self, requests: Sequence[Request]) -> list[Settled]:
        results = await self.cacher.settle(requests)
        record = self.ledger.record_served
        for request, result in zip(requests, results):
            if isinstance(result, Response):
                record(request, result)
        return results


class OnlineAPI(_Pipeline):
    """Cache, deduplicate, batch and reorder requests for an online API model."""


class LocalAPI(_Pipeline):
    """Cache, deduplicate, batch and reorder requests for a local batch model."""

    def __init__(self, model: Model, cache: CacheSpec, batch_size: int, timeout: float = 0.01, **options: Any) -> None:
        _check_model(model, type(self).__name__)
        if not callable(getattr(model, "batch_request", None)):
            raise ConfigurationError(
                f"LocalAPI needs a model with a batch_request() method (async, or sync to run in a "
                f"worker thread); {type(model).__name__} has none. "
                "Use OnlineAPI for models that only implement request()."
            )
        super().__init__(model, cache, batch_size, timeout, **options)
