"""Build the model behind an experiment from a backend name, importing backends lazily.

``simulated`` is the embedded :class:`~cachesaver.models.simulated.SimulatedLLM` (no key, no
network); the others are the SDK providers of :mod:`cachesaver.models.registry` (``together``,
``openai``), each needing its API key (``TOGETHER_API_KEY`` / ``OPENAI_API_KEY``).
:func:`default_backend` picks the registry's default provider (``together``) when its key is set
and ``simulated`` otherwise.

The model name is part of every request (and so of the cache key): runs that should replay
each other must use the same backend name and model.

>>> default_model("simulated")
'simulated'
>>> backend_names()
('simulated', 'together', 'openai')
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

from ..errors import ConfigurationError
from ..models.registry import DEFAULT_PROVIDER, PROVIDERS

__all__ = ["BACKENDS", "backend_names", "default_backend", "default_model", "make_model", "request_factory"]

SIMULATED = "simulated"


def backend_names() -> tuple[str, ...]:
    """``"simulated"`` and every provider of the registry, read now."""
    return (SIMULATED, *PROVIDERS)


#: The backend names when this module was imported (:func:`backend_names` reads the registry).
BACKENDS = backend_names()


def _check(backend: str) -> None:
    names = backend_names()
    if backend not in names:
        raise ConfigurationError(f"unknown backend {backend!r}; choose one of {', '.join(names)}")


def default_backend(environ: Optional[Mapping[str, str]] = None) -> str:
    """The registry's default provider when its API key is set, else ``"simulated"``."""
    env = os.environ if environ is None else environ
    return DEFAULT_PROVIDER if env.get(PROVIDERS[DEFAULT_PROVIDER].api_key_env) else SIMULATED


def default_model(backend: str) -> str:
    """The model used when none is given for ``backend``."""
    _check(backend)
    return SIMULATED if backend == SIMULATED else PROVIDERS[backend].default_model


def make_model(
    backend: str,
    model: Optional[str] = None,
    *,
    seed: int = 0,
    time_scale: float = 0.0,
    compose: Optional[Callable[..., str]] = None,
    requests_only: bool = False,
) -> Any:
    """A new model object for ``backend``.

    ``seed``, ``time_scale`` and ``compose`` only apply to ``simulated``. An SDK backend
    without its API key in the environment raises ConfigurationError saying which variable to
    set, unless ``requests_only``: then it is built with a placeholder key, to be used only for
    ``make_request`` (a replay-only run must build the same requests, and so the same cache
    keys, as the run it replays; it never calls the model). SDK backends hold a client: close
    them with ``await model.aclose()``. Use :func:`request_factory` to build their requests.
    """
    _check(backend)
    name = model or default_model(backend)
    if backend == SIMULATED:
        from ..models.simulated import SimulatedLLM

        options: dict[str, Any] = {"seed": seed, "time_scale": time_scale}
        if compose is not None:
            options["compose"] = compose
        return SimulatedLLM(**options)
    provider = PROVIDERS[backend]
    variable = provider.api_key_env
    key = os.environ.get(variable)
    if not key and requests_only:
        key = "unused-replay-only"
    if not key:
        raise ConfigurationError(
            f"the {backend} backend needs an API key: set {variable}, or use --backend simulated "
            "(or --replay-only to serve an earlier run from the cache without any model)"
        )
    return provider.backend_class()(model=name, api_key=key)


def request_factory(model: Any) -> Optional[Callable[..., Any]]:
    """The model's own request builder (``make_request``: SDK backends need requests that name
    the backend, base URL and model), or None when any Request will do."""
    factory = getattr(model, "make_request", None)
    return factory if callable(factory) else None
