"""Quick start: the seed notebook's flow, on an in-process model (no API key, no network).

Run it twice: the first run asks the model, the second replays every sample from the cache.

    python examples/quickstart.py            # uses caches/quickstart next to this repo
    python examples/quickstart.py --fresh    # start from an empty cache
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from diskcache import Cache

from cachesaver.pipelines import OnlineAPI
from cachesaver.typedefs import Batch, BatchRequestModel, Request, Response, SingleRequestModel

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / "caches" / "quickstart"


class LocalLLM(SingleRequestModel, BatchRequestModel):
    """A stand-in for the seed's together-backed OnlineLLM: deterministic, distinct answers."""

    def __init__(self) -> None:
        self.calls = 0
        self._drawn: dict[str, int] = {}

    async def request(self, request: Request) -> Response:
        self.calls += 1
        start = self._drawn.get(request.prompt, 0)
        self._drawn[request.prompt] = start + request.n
        limit = request.max_completion_tokens or 8
        answers = []
        for k in range(start, start + request.n):
            words = f"answer {k} to '{request.prompt}' at temperature {request.temperature}".split()
            answers.append(" ".join(words[:limit]))
        return Response(data=answers)

    async def batch_request(self, batch: Batch) -> List[Response]:
        return list(await asyncio.gather(*(self.request(r) for r in batch.requests)))


@dataclass(frozen=True)
class DecodingRequest(Request):
    temperature: float = 1
    max_completion_tokens: Any = None


async def main(cache_dir: Path = DEFAULT_CACHE, fresh: bool = False) -> dict[str, Any]:
    if fresh:
        shutil.rmtree(cache_dir, ignore_errors=True)
    model = LocalLLM()
    request1 = DecodingRequest(
        prompt="What is the meaning of life?", n=2, request_id="sth1", namespace="sth", max_completion_tokens=10
    )
    request2 = DecodingRequest(
        prompt="Cats or dogs?", n=1, request_id="sth2", namespace="sth", max_completion_tokens=10
    )
    cache = Cache(str(cache_dir), eviction_policy="none")  # keep every sample
    pipeline = OnlineAPI(model=model, cache=cache, batch_size=2, timeout=1)
    single = await pipeline.request(request1)
    print(f"pipeline_request_response={single}\n")
    batched = await pipeline.batch_request(Batch(requests=[request1, request2]))
    print(f"pipeline_batch_response={batched}\n")
    await pipeline.aclose()
    cache.close()
    print(f"model calls this run: {model.calls}")
    return {"single": single, "batch": batched, "model_calls": model.calls}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--fresh", action="store_true", help="delete the cache first")
    args = parser.parse_args()
    asyncio.run(main(args.cache, args.fresh))
