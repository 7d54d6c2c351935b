"""Drives this checkout's cachesaver through its own API. Runs in the project's interpreter.

Started by ``bench_pipeline.py`` as ``<python> _ours_worker.py '<json spec>'`` with
``PYTHONPATH`` set to the repository root, so the package measured is the one in this checkout.
See ``_workload.py`` for the specs and what is measured.

The append workload times ``DiskcacheStore(cache).append(key, [sample])``; the floor's key is
``cachesaver.keys.request_key``; the memory workload's model is ``ScriptedModel(keep_log=False)``,
which keeps no per-call history.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, List

import cachesaver
from cachesaver.keys import request_key
from cachesaver.models.scripted import ScriptedModel
from cachesaver.store.diskcache import DiskcacheStore
from cachesaver.typedefs import Request, Response

import _workload


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cachesaver")
    except Exception:  # not installed: measured from the checkout via PYTHONPATH
        return "checkout"


def _make_request(prompt: str, request_id: str, namespace: str) -> Any:
    return Request(prompt, n=1, request_id=request_id, namespace=namespace)


def _make_response(samples: List[Any]) -> Any:
    return Response(data=samples)


def _prompt_of(request: Any) -> str:
    return request.prompt


def _make_pipeline(model: Any, cache: Any, batch_size: int, timeout_s: float) -> Any:
    from cachesaver.pipelines import OnlineAPI  # imported late: the append mode does not need it

    return OnlineAPI(model, cache, batch_size, timeout=timeout_s)


async def _close(pipeline: Any) -> None:
    await pipeline.aclose()


def _make_appender(cache: Any) -> Callable[[str, Any], None]:
    store = DiskcacheStore(cache)

    def append(key: str, sample: Any) -> None:
        store.append(key, [sample])

    return append


if __name__ == "__main__":
    _workload.main(
        _workload.Library(
            name="cachesaver (this checkout)",
            version=_version(),
            location=os.path.dirname(os.path.abspath(cachesaver.__file__)),
            make_request=_make_request,
            make_response=_make_response,
            prompt_of=_prompt_of,
            make_pipeline=_make_pipeline,
            close=_close,
            make_appender=_make_appender,
            cache_options={"eviction_policy": "none"},  # what cachesaver.store.diskcache asks for
            key_of=request_key,
            make_lean_model=lambda: ScriptedModel(keep_log=False),
        ),
        sys.argv,
    )
