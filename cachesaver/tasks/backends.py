"""Build the model behind an experiment from a backend name, importing backends lazily.

``simulated`` is the embedded :class:`~cachesaver.models.simulated.SimulatedLLM` (no key, no
network); ``together`` and ``openai`` are the SDK backends and need their API key
(``TOGETHER_API_KEY`` / ``OPENAI_API_KEY``). :func:`default_backend` picks ``together`` when
its key is set and ``simulated`` otherwise.

The model name is part of every request (and so of the cache key): runs that should replay
each other must use the same backend name and model.

>>> default_model("simulated")
'simulated'
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

from ..errors import ConfigurationError

__all__ = ["BACKENDS", "default_backend", "default_model", "make_model", "request_factory"]

BACKENDS = ("simulated", "together", "openai")

_DEFAULT_MODELS: Mapping[str, str] = {
    "simulated": "simulated",
    "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "openai": "gpt-4o-mini",
}
_KEYS: Mapping[str, str] = {"together": "TOGETHER_API_KEY", "openai": "OPENAI_API_KEY"}


def _check(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigurationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def default_backend(environ: Optional[Mapping[str, str]] = None) -> str:
    """``"together"`` when ``TOGETHER_API_KEY`` is set, else ``"simulated"``."""
    env = os.environ if environ is None else environ
    return "together" if env.get("TOGETHER_API_KEY") else "simulated"


def default_model(backend: str) -> str:
    """The model used when none is given for ``backend``."""
    _check(backend)
    return _DEFAULT_MODELS[backend]


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
    if backend == "simulated":
        from ..models.simulated import SimulatedLLM

        options: dict[str, Any] = {"seed": seed, "time_scale": time_scale}
        if compose is not None:
            options["compose"] = compose
        return SimulatedLLM(**options)
    variable = _KEYS[backend]
    key = os.environ.get(variable)
    if not key and requests_only:
        key = "unused-replay-only"
    if not key:
        raise ConfigurationError(
            f"the {backend} backend needs an API key: set {variable}, or use --backend simulated "
            "(or --replay-only to serve an earlier run from the cache without any model)"
        )
    if backend == "together":
        from ..models.together import TogetherModel

        return TogetherModel(model=name, api_key=key)
    from ..models.openai import OpenAIModel

    return OpenAIModel(model=name, api_key=key)


def request_factory(model: Any) -> Optional[Callable[..., Any]]:
    """The model's own request builder (``make_request``: SDK backends need requests that name
    the backend, base URL and model), or None when any Request will do."""
    factory = getattr(model, "make_request", None)
    return factory if callable(factory) else None
