"""SimulatedLLM: an embedded, deterministic model served by a simulated KV-cache cluster.

It needs no API key and no network, and answers like a sampling LLM: each prompt has a small
set of candidate answers (``num_candidates``) drawn with a Zipf-skewed distribution (weight of
the r-th candidate ``(r + 1) ** -(zipf_s / temperature)``), so repeated sampling repeats itself
the way real models repeat thoughts; temperature 0 always gives the most likely answer.
Every request is sent through a :class:`~cachesaver.kvcache.Cluster`, and a latency model turns
where the chat's KV cache was found into *modeled seconds*.

Determinism: the k-th sample ever drawn for a request (its prompt and decoding fields, not
``n``, ``request_id`` or ``namespace``) depends only on ``seed``, that request and k. So a fresh
instance with the same seed yields the same samples for the same sequence of calls, whatever
other prompts are interleaved or how they are batched.

The chat-id rule (what the KV cache is keyed by): a request's chat is its conversation's
*opening*, every message up to and including the first ``user`` message (a string prompt is a
single user message); the chat id is ``"chat-"`` plus 16 hex digits of the SHA-256 of that
opening. Hence:

* later turns of a multi-turn conversation (the same opening followed by assistant replies and
  further user messages, as a Tree-of-Thoughts run builds when a step extends the previous
  ones) map to the chat of their first turn and hit its KV cache while a server still holds it;
* independent prompts have different openings, so they are different chats and miss;
* sending the same prompt again is a hit (a server's prefix cache would reuse it too).

What a hit saves is the *reused prefix*: the messages the new prompt shares, from the start,
with the chat's cached context (the previous turn served for that chat, prompt plus its first
sample). Time to first token is then ``prefill(new tokens)`` for a VRAM hit,
``reload(reused tokens) + prefill(new tokens)`` for a RAM hit (the context comes back over
PCIe), and ``prefill(all tokens)`` for a miss; decoding adds ``decode_s_per_token`` per output
token of every sample, and every call (``request`` or ``batch_request``) adds
``overhead_s_per_call``. Tokens are estimated from text (``chars_per_token``, plus
``tokens_per_message`` per chat message). Modeled seconds are serial GPU-busy seconds: nothing
overlaps. ``time_scale=0`` never sleeps; ``time_scale=1`` sleeps the modeled time of each call.

Usage: ``Response.usage[i]`` is ``{"prompt_tokens": ..., "completion_tokens": ...}``; a call's
prompt is prefilled once, so its prompt tokens are reported on the first sample (0 on the
others) and the usage of a response sums to what the call cost.

>>> import anyio
>>> from cachesaver.typedefs import Request
>>> model = SimulatedLLM(seed=1)
>>> first = anyio.run(model.request, Request("Name a prime.", n=3))
>>> again = anyio.run(SimulatedLLM(seed=1).request, Request("Name a prime.", n=3))
>>> first.data == again.data, len(first.data)
(True, 3)
>>> stats = model.stats()
>>> stats.kv_misses, stats.completion_tokens == sum(u["completion_tokens"] for u in first.usage)
(1, True)
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import anyio
import anyio.lowlevel

from ..errors import ConfigurationError, InvalidRequestError, TransientBackendError
from ..keys import request_key
from ..kvcache import Cluster, Routing
from ..typedefs import Batch, Request, Response

__all__ = [
    "Conversation",
    "LatencyModel",
    "SimulatedLLM",
    "SimulatedStats",
    "chat_id_for",
    "conversation_of",
    "default_cluster",
    "default_compose",
]

Conversation = tuple[tuple[str, str], ...]
Compose = Callable[[str, int, random.Random], str]


@dataclass(frozen=True)
class LatencyModel:
    """Seconds per token for each kind of work, and how tokens are estimated from text.

    The defaults sketch a 70B-class model on one GPU: prefill 4,000 tokens/s, KV reload over
    PCIe ten times faster than recomputing it, decode about 65 tokens/s, 10 ms per call.
    """

    prefill_s_per_token: float = 2.5e-4
    reload_s_per_token: float = 2.5e-5
    decode_s_per_token: float = 0.015
    overhead_s_per_call: float = 0.01
    chars_per_token: float = 4.0
    tokens_per_message: int = 4

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigurationError(f"LatencyModel.{item.name} must be a finite number, got {value!r}")
            if value < 0:
                raise ConfigurationError(f"LatencyModel.{item.name} must be >= 0, got {value}")
        if self.chars_per_token <= 0:
            raise ConfigurationError("LatencyModel.chars_per_token must be > 0")

    def tokens(self, text: str) -> int:
        """Estimated tokens of ``text``: at least 1 for non-empty text, 0 for empty text."""
        return math.ceil(len(text) / self.chars_per_token) if text else 0

    def message_tokens(self, text: str) -> int:
        """Estimated tokens of one chat message with content ``text``."""
        return self.tokens(text) + self.tokens_per_message


@dataclass(frozen=True)
class SimulatedStats:
    """What a SimulatedLLM has done so far (a snapshot); ``since`` gives the difference.

    ``calls`` counts ``request`` and ``batch_request`` invocations, ``requests`` the requests in
    them (failed ones included), ``failed_requests`` those that got an error. Token counts and
    KV counters cover served requests; ``reused_prompt_tokens`` are prompt tokens found in a KV
    cache instead of being prefilled.
    """

    calls: int = 0
    requests: int = 0
    failed_requests: int = 0
    samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_prompt_tokens: int = 0
    modeled_seconds: float = 0.0
    kv_vram_hits: int = 0
    kv_ram_hits: int = 0
    kv_misses: int = 0

    @property
    def kv_hits(self) -> int:
        return self.kv_vram_hits + self.kv_ram_hits

    @property
    def kv_hit_rate(self) -> float:
        """KV-cache hits over served requests (0.0 when none was served)."""
        served = self.kv_hits + self.kv_misses
        return self.kv_hits / served if served else 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def since(self, earlier: "SimulatedStats") -> "SimulatedStats":
        """The activity between the snapshot ``earlier`` and this one."""
        return SimulatedStats(
            **{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in dataclasses.fields(self)}
        )


def default_cluster() -> Cluster:
    """Two servers, ``gpu-0`` and ``gpu-1``, each holding 8 chats in VRAM and 32 in RAM."""
    return Cluster.uniform(["gpu-0", "gpu-1"], max_vram_chats=8, max_ram_chats=32)


_WORDS = (
    "first consider the remaining numbers and combine the largest with the smallest then check "
    "whether the result reaches the target subtract multiply divide add two three four six eight "
    "ten twelve so we get a partial sum product difference quotient which leaves a valid step "
    "towards the answer try another order because this keeps more options open"
).split()


def default_compose(prompt: str, rank: int, rng: random.Random) -> str:
    """Candidate ``rank`` for a prompt: a pseudo-thought of 8 to 40 words.

    ``prompt`` is the text of the prompt's last message; ``rng`` is seeded by the model's seed,
    the whole prompt and ``rank``, so the text is the same in every process.
    """
    words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 40))]
    return f"Thought {rank + 1}: " + " ".join(words) + "."


def _finite_nonnegative(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()


def _seeded(*parts: str) -> random.Random:
    return random.Random(int.from_bytes(_digest(*parts)[:16], "big"))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        # multimodal content parts: keep the text parts
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return "" if content is None else str(content)


def conversation_of(request: Any) -> Conversation:
    """The request's prompt as ``((role, text), ...)``; raises InvalidRequestError if unusable."""
    prompt = getattr(request, "prompt", None)
    if isinstance(prompt, str):
        conversation: Conversation = (("user", prompt),)
    elif isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)) and prompt:
        messages = []
        for i, message in enumerate(prompt):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise InvalidRequestError(
                    f"prompt message {i} must be a mapping with a string 'role' and a 'content'"
                )
            messages.append((message["role"], _text(message.get("content"))))
        conversation = tuple(messages)
    else:
        raise InvalidRequestError(
            "SimulatedLLM needs a prompt: a non-empty string or a non-empty list of chat messages, "
            f"got {prompt!r}"
        )
    if not any(text.strip() for _, text in conversation):
        raise InvalidRequestError("the prompt is empty; give the model some text to answer")
    return conversation


def chat_id_for(conversation: Conversation) -> str:
    """The KV-cache chat id: a hash of every message up to and including the first user message."""
    end = next((i for i, (role, _) in enumerate(conversation) if role == "user"), len(conversation) - 1)
    opening = json.dumps(conversation[: end + 1], ensure_ascii=False, separators=(",", ":"))
    return "chat-" + hashlib.sha256(opening.encode("utf-8")).hexdigest()[:16]


def _check_n(request: Any) -> int:
    n = getattr(request, "n", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidRequestError(f"n must be an int >= 1, got {n!r}; ask for at least one sample")
    return n


def _temperature(request: Any) -> float:
    value = getattr(request, "temperature", None)
    if value is None:
        return 1.0
    if not _finite_nonnegative(value):
        raise InvalidRequestError(f"temperature must be a finite number >= 0, got {value!r}")
    return float(value)


def _max_tokens(request: Any) -> Optional[int]:
    value = getattr(request, "max_tokens", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"max_tokens must be an int >= 1, got {value!r}")
    return value


def _common_prefix(a: Conversation, b: Conversation) -> int:
    count = 0
    for left, right in zip(a, b):
        if left != right:
            break
        count += 1
    return count


class SimulatedLLM:
    """A deterministic sampling model behind a simulated KV-cache cluster.

    Implements :class:`~cachesaver.typedefs.SingleRequestModel` and
    :class:`~cachesaver.typedefs.BatchRequestModel`. Every served request gets exactly ``n``
    string samples with usage. A bad request (n < 1, empty prompt, negative temperature)
    raises :class:`~cachesaver.errors.InvalidRequestError` from ``request`` and is an exception
    entry in ``batch_request``'s list, leaving its neighbours served; so is a request that
    finds every server offline (:class:`~cachesaver.errors.TransientBackendError`, status 503).

    Parameters:
        seed: selects the candidate answers and the draws; same seed, same samples.
        num_candidates: distinct answers per prompt (>= 1).
        zipf_s: skew of the answer distribution (>= 0; 0 is uniform).
        cluster: the serving cluster (default: :func:`default_cluster`).
        latency: the :class:`LatencyModel`.
        time_scale: real seconds slept per modeled second (0 never sleeps).
        compose: ``(last message text, rank, rng) -> str`` writes candidate answers
            (default :func:`default_compose`); use it to give answers a task's shape.
    """

    cache_identity = None
    """Its requests are the whole of what it answers: no model identity is added to keys."""

    def __init__(
        self,
        seed: int = 0,
        *,
        num_candidates: int = 6,
        zipf_s: float = 1.1,
        cluster: Optional[Cluster] = None,
        latency: Optional[LatencyModel] = None,
        time_scale: float = 0.0,
        compose: Optional[Compose] = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigurationError(f"seed must be an int, got {seed!r}")
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
            raise ConfigurationError(f"num_candidates must be an int >= 1, got {num_candidates!r}")
        for name, value in (("zipf_s", zipf_s), ("time_scale", time_scale)):
            if not _finite_nonnegative(value):
                raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}")
        if cluster is not None and not isinstance(cluster, Cluster):
            raise ConfigurationError(
                f"cluster must be a cachesaver.kvcache.Cluster, got {type(cluster).__name__}"
            )
        self.seed = seed
        self.num_candidates = num_candidates
        self.zipf_s = float(zipf_s)
        self.cluster = cluster if cluster is not None else default_cluster()
        self.latency = latency if latency is not None else LatencyModel()
        self.time_scale = float(time_scale)
        self.compose: Compose = compose if compose is not None else default_compose
        self._stats = SimulatedStats()
        self._draws: dict[str, int] = {}  # per request key: samples drawn so far
        self._contexts: dict[str, Conversation] = {}  # per chat: the context its KV cache holds
        self._clock = 0

    def __repr__(self) -> str:
        return f"SimulatedLLM(seed={self.seed}, num_candidates={self.num_candidates}, zipf_s={self.zipf_s})"

    def stats(self) -> SimulatedStats:
        """A snapshot of the counters (see :class:`SimulatedStats`)."""
        return self._stats

    async def request(self, request: Request) -> Response:
        """Exactly ``request.n`` samples for ``request``; raises on a bad or unservable request."""
        outcome, seconds = self._serve(request)
        self._count(calls=1, modeled_seconds=self.latency.overhead_s_per_call)
        await self._wait(self.latency.overhead_s_per_call + seconds)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def batch_request(self, batch: Batch) -> list[Response]:
        """One entry per request of ``batch``, in order: a Response, or the exception it got."""
        results: list[Any] = []
        total = self.latency.overhead_s_per_call
        for item in batch.requests:
            outcome, seconds = self._serve(item)
            results.append(outcome)
            total += seconds
        self._count(calls=1, modeled_seconds=self.latency.overhead_s_per_call)
        await self._wait(total)
        return results

    async def _wait(self, modeled_seconds: float) -> None:
        if self.time_scale > 0 and modeled_seconds > 0:
            await anyio.sleep(modeled_seconds * self.time_scale)
        else:
            await anyio.lowlevel.checkpoint()

    def _count(self, **deltas: Any) -> None:
        stats = self._stats
        self._stats = dataclasses.replace(
            stats, **{name: getattr(stats, name) + delta for name, delta in deltas.items()}
        )

    def _serve(self, request: Any) -> tuple[Response | BaseException, float]:
        """Answer one request synchronously: (Response or exception, modeled seconds)."""
        self._count(requests=1)
        try:
            n = _check_n(request)
            conversation = conversation_of(request)
            temperature = _temperature(request)
            max_tokens = _max_tokens(request)
            stream = request_key(request)
        except InvalidRequestError as error:
            self._count(failed_requests=1)
            return error, 0.0
        chat_id = chat_id_for(conversation)
        self._clock += 1
        routing = self.cluster.route(chat_id, self._clock, conversation[-1][1])
        if not routing.response.success:
            self._count(failed_requests=1)
            offline = TransientBackendError(
                "every simulated server is offline; add or restart a server in the cluster",
                status=503,
                request_id=getattr(request, "request_id", None),
            )
            return offline, 0.0
        samples = self._draw(stream, conversation, n, temperature, max_tokens)
        prompt_tokens = sum(self.latency.message_tokens(text) for _, text in conversation)
        reused = self._reused_tokens(routing, chat_id, conversation)
        self._contexts[chat_id] = conversation + (("assistant", samples[0]),)
        self._forget_dropped_chats()
        completion = [self.latency.tokens(sample) for sample in samples]
        seconds = self._modeled_seconds(routing, prompt_tokens, reused, sum(completion))
        usage = [
            {"prompt_tokens": prompt_tokens if i == 0 else 0, "completion_tokens": tokens}
            for i, tokens in enumerate(completion)
        ]
        self._count(
            samples=n,
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(completion),
            reused_prompt_tokens=reused,
            modeled_seconds=seconds,
            kv_vram_hits=int(routing.found_in == "vram"),
            kv_ram_hits=int(routing.found_in == "ram"),
            kv_misses=int(routing.found_in is None),
        )
        return Response(data=samples, usage=usage), seconds

    def _draw(
        self, stream: str, conversation: Conversation, n: int, temperature: float, max_tokens: Optional[int]
    ) -> list[str]:
        start = self._draws.get(stream, 0)
        self._draws[stream] = start + n
        prompt_digest = _digest(json.dumps(conversation, ensure_ascii=False)).hex()
        cumulative = self._cumulative_weights(temperature)
        samples = []
        for k in range(start, start + n):
            if cumulative is None:
                rank = 0
            else:
                u = _seeded(str(self.seed), "draw", stream, str(k)).random() * cumulative[-1]
                rank = min(bisect.bisect_right(cumulative, u), self.num_candidates - 1)
            rng = _seeded(str(self.seed), "candidate", prompt_digest, str(rank))
            text = self.compose(conversation[-1][1], rank, rng)
            if max_tokens is not None:
                text = text[: max(1, int(max_tokens * self.latency.chars_per_token))]
            samples.append(text)
        return samples

    def _cumulative_weights(self, temperature: float) -> Optional[list[float]]:
        if temperature == 0:
            return None
        exponent = self.zipf_s / temperature
        total, cumulative = 0.0, []
        for rank in range(self.num_candidates):
            total += (rank + 1) ** -exponent
            cumulative.append(total)
        return cumulative

    def _reused_tokens(self, routing: Routing, chat_id: str, conversation: Conversation) -> int:
        if routing.found_in is None:
            return 0
        cached = self._contexts.get(chat_id, ())
        shared = conversation[: _common_prefix(cached, conversation)]
        return sum(self.latency.message_tokens(text) for _, text in shared)

    def _modeled_seconds(
        self, routing: Routing, prompt_tokens: int, reused: int, completion_tokens: int
    ) -> float:
        latency = self.latency
        new_tokens = prompt_tokens - reused
        seconds = new_tokens * latency.prefill_s_per_token
        if routing.found_in == "ram":
            seconds += reused * latency.reload_s_per_token
        return seconds + completion_tokens * latency.decode_s_per_token

    def _forget_dropped_chats(self) -> None:
        capacity = sum(s.max_vram_chats + s.max_ram_chats for s in self.cluster.servers.values())
        if len(self._contexts) > 2 * capacity + 16:
            self._contexts = {c: ctx for c, ctx in self._contexts.items() if self.cluster.has_chat(c)}
