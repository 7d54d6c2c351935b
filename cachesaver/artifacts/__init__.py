"""The cache as an artifact: read it, explain its misses, ship it as a bundle.

* :mod:`~cachesaver.artifacts.catalog`: a store read as entries (request, samples, times,
  replay records by namespace name), on any engine implementing
  :class:`~cachesaver.store.protocol.InspectableStore`.
* :mod:`~cachesaver.artifacts.explain`: why a request is not served from the cache (the
  message of every replay-mode :class:`~cachesaver.errors.CacheMissError`).
* :mod:`~cachesaver.artifacts.bundle`: export a store (or some of its namespaces) to one
  portable file and import it into any engine, idempotently.

The ``cachesaver cache`` commands (:mod:`cachesaver.cli.cache`) are built on these.
"""

from __future__ import annotations

from .bundle import BundleManifest, ExportReport, ImportReport, export_bundle, import_bundle, read_manifest
from .catalog import Entry, Record, entries
from .explain import MissExplanation, Nearby, explain

__all__ = [
    "BundleManifest",
    "Entry",
    "ExportReport",
    "ImportReport",
    "MissExplanation",
    "Nearby",
    "Record",
    "entries",
    "explain",
    "export_bundle",
    "import_bundle",
    "read_manifest",
]
