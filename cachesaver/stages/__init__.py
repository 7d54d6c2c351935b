"""The pipeline stages, one module each, in the order a request meets them.

A stage is a model that wraps an inner model (see :mod:`~cachesaver.stages.base`: ``Stage``,
``call_model``, ``Settled``). :class:`~cachesaver.pipelines.OnlineAPI` stacks them as

* :mod:`~cachesaver.stages.caching` (``AsyncCacher``): the namespace-aware, replayable cache;
* :mod:`~cachesaver.stages.deduplication` (``AsyncDeduplicator``): identical requests in flight
  together cost one upstream call;
* :mod:`~cachesaver.stages.batching` (``AsyncBatcher``): requests grouped into batches;
* :mod:`~cachesaver.stages.reordering` (``RequestReorderer``): requests that share a prompt
  prefix sent next to each other;
* :mod:`~cachesaver.stages.ledger_tap` (``LedgerTap``): every upstream call reported to the
  ledger.

The names are imported from ``cachesaver`` itself (``from cachesaver import AsyncCacher``) or
from their module; this package exports nothing of its own.
"""
