"""Cache modes, VCR style: what a cache stage does with stored samples and with the model.

* ``"record"`` (the default): serve what is stored, ask the model for what is missing and
  store it (README, "What the cache promises").
* ``"replay"``: serve what is stored; a request the cache cannot serve fails with
  :class:`~cachesaver.errors.CacheMissError`, whose message explains the miss
  (:meth:`cachesaver.pipelines.OnlineAPI.explain_miss`). The model is never called, so no
  network call is made; it works on a read-only cache. Replay records of served requests are
  still written when the store is writable (they cost no model call), never on a read-only one.
* ``"refresh"``: ignore stored samples: every request gets new samples from the model, stored
  after the old ones, and its replay record (when it has a request_id) now names the new ones,
  so a later replay of the run returns them. Requests without a request_id replay in stored
  order, old samples first.
* ``"bypass"``: call the model and store nothing (no samples, no records); every sample is
  ``cached=False``.

The default comes from the environment variable :data:`MODE_ENV` (``CACHESAVER_MODE``), read
when a pipeline, stage or client is built, so CI can enforce replay without code changes
(``CACHESAVER_MODE=replay pytest``); ``mode=`` overrides it.

>>> resolve_mode("replay")
'replay'
>>> resolve_mode("Replay")
Traceback (most recent call last):
...
cachesaver.errors.ConfigurationError: mode must be one of 'record', 'replay', 'refresh', 'bypass'; got 'Replay'
"""

from __future__ import annotations

import os
from typing import Literal

from .errors import ConfigurationError

__all__ = ["MODES", "MODE_ENV", "Mode", "resolve_mode"]

Mode = Literal["record", "replay", "refresh", "bypass"]
MODES: tuple[Mode, ...] = ("record", "replay", "refresh", "bypass")
MODE_ENV = "CACHESAVER_MODE"
"""The environment variable that sets the default mode."""


def resolve_mode(mode: str | None = None) -> Mode:
    """The mode to use: ``mode`` if given, else ``$CACHESAVER_MODE`` if set and not empty,
    else ``"record"``. Raises ConfigurationError for anything but the four modes (exact,
    lower-case names), saying where the bad value came from."""
    source = ""
    if mode is None:
        mode = os.environ.get(MODE_ENV) or "record"
        source = f" (from the environment variable {MODE_ENV})" if os.environ.get(MODE_ENV) else ""
    if mode not in MODES:
        raise ConfigurationError(
            f"mode must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}{source}"
        )
    return mode
