"""Drives the reference, ``cachesaver==0.0.6``, through its own API. Runs inside the reference venv.

Started by ``bench_pipeline.py`` as ``<ref venv python> _reference_worker.py '<json spec>'`` with
a working directory outside the repository, so ``import cachesaver`` finds the PyPI release
(refused otherwise). See ``_workload.py`` for the specs and what is measured.

The append workload reproduces what 0.0.6's ``AsyncCacher`` does on a miss: read the key's
whole sample list, extend it, write the whole list back.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import Any, Callable, List

import cachesaver

import _workload

EXPECTED_VERSION = "0.0.6"


def _check_reference() -> str:
    try:
        version = importlib.metadata.version("cachesaver")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    location = os.path.dirname(os.path.abspath(cachesaver.__file__))
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if version != EXPECTED_VERSION or location.startswith(repository + os.sep + "cachesaver"):
        raise SystemExit(
            f"_reference_worker.py needs cachesaver=={EXPECTED_VERSION} from PyPI, but imported "
            f"version {version} from {location}; run it with the reference venv's python "
            "(bench_pipeline.py does) from a directory outside the repository"
        )
    return location


REFERENCE_LOCATION = _check_reference()  # before importing the rest: a wrong cachesaver must not run

from cachesaver.pipelines import OnlineAPI  # noqa: E402
from cachesaver.typedefs import Request, Response  # noqa: E402


def _make_request(prompt: str, request_id: str, namespace: str) -> Any:
    return Request(args=(), kwargs={"prompt": prompt}, n=1, request_id=request_id, namespace=namespace)


def _make_response(samples: List[Any]) -> Any:
    return Response(data=samples)


def _prompt_of(request: Any) -> str:
    return request.kwargs["prompt"]


def _make_pipeline(model: Any, cache: Any, batch_size: int, timeout_s: float) -> Any:
    return OnlineAPI(model=model, cache=cache, batch_size=batch_size, timeout=timeout_s)


async def _close(pipeline: Any) -> None:
    await pipeline.cleanup()


def _make_appender(cache: Any) -> Callable[[str, Any], None]:
    def append(key: str, sample: Any) -> None:
        entries = cache.get(key, [])
        entries.extend([sample])
        cache.set(key, entries)

    return append


if __name__ == "__main__":
    _workload.main(
        _workload.Library(
            name="cachesaver (reference)",
            version=EXPECTED_VERSION,
            location=REFERENCE_LOCATION,
            make_request=_make_request,
            make_response=_make_response,
            prompt_of=_prompt_of,
            make_pipeline=_make_pipeline,
            close=_close,
            make_appender=_make_appender,
            cache_options={},  # diskcache.Cache(directory), as 0.0.6's examples do
        ),
        sys.argv,
    )
