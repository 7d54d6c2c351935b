"""Agents: what turns a sample's history into the next :class:`AgentOutput`.

An agent is anything with ``async act(turn: Turn) -> AgentOutput`` (the :class:`Agent`
protocol). ``Turn`` carries the history plus where it comes from (task, sample index, turn
number), which is what :class:`PipelineAgent` needs to give every model call a deterministic
``request_id``: the same task, index and turn always send the same request with the same id,
so a new pipeline over the same cache replays the run exactly.

>>> import anyio
>>> turn = Turn("t", 0, 0, (ChatHistoryItem("user", "ping"),))
>>> anyio.run(EchoAgent().act, turn)
AgentOutput(status=<AgentOutputStatus.NORMAL: 'normal'>, content='ping')
>>> request_id_for(turn)
'["t", 0, 0]'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from ..errors import ConfigurationError
from ..typedefs import Request, Response
from .types import AgentOutput, ChatHistoryItem, SampleIndex

__all__ = [
    "Agent",
    "AgentRequest",
    "CacheCounts",
    "EchoAgent",
    "PipelineAgent",
    "Turn",
    "request_id_for",
]

_ROLE_TO_CHAT = {"user": "user", "agent": "assistant"}


@dataclass(frozen=True)
class Turn:
    """One agent turn: the sample it belongs to and the history so far (oldest first).

    ``turn`` counts the sample's ``Session.action`` calls from 0, so it is the same in every
    run of a deterministic task.
    """

    task: str
    index: SampleIndex
    turn: int
    history: Tuple[ChatHistoryItem, ...]


@runtime_checkable
class Agent(Protocol):
    """Produces the agent's reply to a history.

    Raise :class:`~cachesaver.errors.ContextLengthError` when the history does not fit: the
    session turns it into ``AgentOutputStatus.AGENT_CONTEXT_LIMIT``. Any other exception
    reaches the task code that called ``Session.action``.
    """

    async def act(self, turn: Turn) -> AgentOutput:
        """The agent's output for ``turn``."""
        ...


@runtime_checkable
class CacheCounts(Protocol):
    """An agent that counts the samples it was served and how many came from the cache."""

    @property
    def samples_served(self) -> int: ...

    @property
    def samples_cached(self) -> int: ...


def request_id_for(turn: Turn) -> str:
    """The request id of ``turn``: the JSON array ``[task, index, turn]`` (unambiguous for any
    int or str index, stable across processes)."""
    return json.dumps([turn.task, turn.index, turn.turn], ensure_ascii=False)


class EchoAgent:
    """Answers every turn with the content of the last user message (or ``""``)."""

    async def act(self, turn: Turn) -> AgentOutput:
        for item in reversed(turn.history):
            if item.role == "user":
                return AgentOutput(content=item.content)
        return AgentOutput(content="")


@dataclass(frozen=True)
class AgentRequest(Request):
    """The request a :class:`PipelineAgent` sends: a chat prompt plus decoding settings.

    Fields left at None are absent from the cache key, so they key like not being set.
    """

    model: Optional[str] = None
    temperature: Optional[float] = None
    max_tokens: Optional[int] = None
    stop: Optional[List[str]] = None


def _sample_text(sample: Any) -> str:
    if isinstance(sample, str):
        return sample
    if isinstance(sample, dict):
        for key in ("content", "text"):
            if isinstance(sample.get(key), str):
                return sample[key]
        message = sample.get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return message["content"]
    return str(sample)


class PipelineAgent:
    """Sends the history as a chat prompt through a cachesaver pipeline, one sample per turn.

    Guarantees:

    * History roles map to chat roles (``user`` -> ``user``, ``agent`` -> ``assistant``),
      after ``system_prompt`` when one is given.
    * Every request is in ``namespace`` with ``request_id`` :func:`request_id_for` ``(turn)``,
      so re-running the same task against a new pipeline over the same cache replays the
      same samples, and running it in another namespace reuses what is stored.
    * ``samples_served`` / ``samples_cached`` count the samples received and those the
      pipeline marked as served from storage (the cache hit rate the progress bar shows).

    Parameters:
        pipeline: anything with ``async request(Request) -> Response`` (normally an
            :class:`~cachesaver.pipelines.OnlineAPI`); its lifetime is the caller's.
        namespace: the run's namespace.
        model, temperature, max_tokens, stop: decoding settings, part of the cache key.
        system_prompt: an optional first message with role ``system``.
        request_factory: builds the request, called as ``factory(messages, n=1, request_id=...,
            namespace=..., **settings)`` with only the settings that are not None; default
            :class:`AgentRequest`. Pass an SDK backend's ``make_request`` (see
            :func:`cachesaver.tasks.backends.request_factory`).
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        namespace: str = "default",
        model: Optional[str] = None,
        temperature: Optional[float] = None,
        max_tokens: Optional[int] = None,
        stop: Optional[Sequence[str]] = None,
        system_prompt: Optional[str] = None,
        request_factory: Optional[Callable[..., Request]] = None,
    ) -> None:
        if not callable(getattr(pipeline, "request", None)):
            raise ConfigurationError(
                f"PipelineAgent needs a pipeline with an async request() method, got "
                f"{type(pipeline).__name__}; pass an OnlineAPI or LocalAPI"
            )
        if not isinstance(namespace, str):
            raise ConfigurationError(f"namespace must be a str, got {type(namespace).__name__}")
        self.pipeline = pipeline
        self.namespace = namespace
        self._settings: Dict[str, Any] = {
            "model": model,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "stop": None if stop is None else list(stop),
        }
        self.system_prompt = system_prompt
        self.request_factory: Callable[..., Request] = request_factory or AgentRequest
        self._served = 0
        self._cached = 0

    @property
    def samples_served(self) -> int:
        return self._served

    @property
    def samples_cached(self) -> int:
        return self._cached

    def build_request(self, turn: Turn) -> Request:
        """The request sent for ``turn`` (exposed so tests and tools can predict keys)."""
        messages: List[Dict[str, str]] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.extend({"role": _ROLE_TO_CHAT[h.role], "content": h.content} for h in turn.history)
        if not messages:
            messages.append({"role": "user", "content": ""})
        settings = {name: value for name, value in self._settings.items() if value is not None}
        return self.request_factory(
            messages, n=1, request_id=request_id_for(turn), namespace=self.namespace, **settings
        )

    async def act(self, turn: Turn) -> AgentOutput:
        response: Response = await self.pipeline.request(self.build_request(turn))
        self._served += len(response.data)
        self._cached += sum(1 for c in response.cached or () if c)
        if not response.data:
            return AgentOutput(content="")
        return AgentOutput(content=_sample_text(response.data[0]))
