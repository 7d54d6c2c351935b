"""The seed notebook's flow runs unchanged: its own together-backed OnlineLLM (with only
``top_logprobs`` dropped, which together>=2 rejects), the real ``together`` SDK talking HTTP to a
fake chat-completions server on 127.0.0.1, a ``diskcache.Cache`` and ``OnlineAPI``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, List

from diskcache import Cache
from fake_chat_server import FakeChatServer
from together import AsyncTogether

from cachesaver.pipelines import OnlineAPI
from cachesaver.typedefs import Batch, BatchRequestModel, Request, Response, SingleRequestModel


class OnlineLLM(SingleRequestModel, BatchRequestModel):  # the seed's class, as written
    def __init__(self, client: Any, model: str):
        self.client = client
        self.model = model

    async def request(self, request: Request) -> Response:
        completion = await self.client.chat.completions.create(
            messages=[{"role": "user", "content": request.prompt}],
            model=self.model,
            n=request.n,
            max_tokens=request.max_completion_tokens or None,
            temperature=request.temperature or 1,
            stop=request.stop or None,
            top_p=request.top_p or 1,
            seed=request.seed or None,
            logprobs=request.logprobs or False,
        )
        return Response(data=[choice.message.content for choice in completion.choices])

    async def batch_request(self, batch: Batch) -> List[Response]:
        requests = [self.request(request) for request in batch.requests]
        return await asyncio.gather(*requests)


@dataclass(frozen=True)
class DecodingRequest(Request):
    temperature: float = 1
    max_completion_tokens: int = None


async def test_seed_flow_with_the_real_together_sdk(tmp_path):
    with FakeChatServer() as server:
        client = AsyncTogether(api_key="not-a-real-key", base_url=server.together_base_url, max_retries=0)
        model = OnlineLLM(client, model="meta-llama/Llama-3.3-70B-Instruct-Turbo-Free")

        # Direct use, without a pipeline, as the notebook starts.
        direct = await model.request(Request(prompt="What is the meaning of life?", n=1, request_id="sth1", namespace="sth"))
        assert direct.data == ["What is the meaning of life?#0"] and direct.cached is None

        request1 = DecodingRequest(prompt="What is the meaning of life?", n=2, request_id="sth1", namespace="sth", max_completion_tokens=10)
        request2 = DecodingRequest(prompt="Cats or dogs?", n=1, request_id="sth2", namespace="sth", max_completion_tokens=10)
        batch = Batch(requests=[request1, request2])

        cache = Cache(str(tmp_path / "developping"))
        pipeline = OnlineAPI(model=model, cache=cache, batch_size=2, timeout=1)
        single = await pipeline.request(request1)
        batched = await pipeline.batch_request(batch)
        calls_first_run = server.calls
        await pipeline.aclose()

        assert single.cached == [False, False] and len(single.data) == 2
        assert [len(r.data) for r in batched] == [2, 1]
        assert set(single.data).isdisjoint(batched[0].data)  # same id twice: fresh samples
        sent = server.requests[1]
        assert sent["max_tokens"] == 10 and sent["n"] == 2 and sent["temperature"] == 1

        replay = OnlineAPI(model=model, cache=cache, batch_size=2, timeout=1)
        single_again = await replay.request(request1)
        batched_again = await replay.batch_request(batch)
        await replay.cleanup()
        assert server.calls == calls_first_run  # zero upstream calls
        assert single_again.data == single.data and single_again.cached == [True, True]
        assert [r.data for r in batched_again] == [r.data for r in batched]
        assert repr(single_again).startswith("Response(data=[") and "cached=[True, True], duplicated=[False, False])" in repr(single_again)
        cache.close()
        await client.close()
