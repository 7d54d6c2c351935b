"""Drives the reference, ``cachesaver==0.0.6``, through its own API. Runs inside the reference venv.

Started by ``bench_pipeline.py`` as ``<ref venv python> _reference_worker.py '<json spec>'`` with
a working directory outside the repository, so ``import cachesaver`` finds the PyPI release
(refused otherwise). See ``_workload.py`` for the specs and what is measured.

The append workload reproduces what 0.0.6's ``AsyncCacher`` does on a miss: read the key's
whole sample list, extend it, write the whole list back.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, List

from _reference_check import EXPECTED_VERSION, check_reference

import _workload

REFERENCE_LOCATION = check_reference("_reference_worker.py", "bench_pipeline.py")  # before the rest of cachesaver

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
