"""Task and Session: history keeping, agent statuses, cancellation, remembered cache misses."""

import anyio
import pytest

from cachesaver.errors import BackendError, CacheMissError, ContextLengthError
from cachesaver.tasks import (
    AgentOutput,
    AgentOutputStatus,
    ChatHistoryItem,
    EchoAgent,
    Session,
    Task,
    TaskDefinitionError,
    Turn,
)


class RecordingAgent:
    """Answers 'reply <turn>' and records every Turn it was given."""

    def __init__(self):
        self.turns: list[Turn] = []

    async def act(self, turn: Turn) -> AgentOutput:
        self.turns.append(turn)
        return AgentOutput(content=f"reply {turn.turn}")


class RaisingAgent:
    def __init__(self, error: BaseException):
        self.error = error

    async def act(self, turn: Turn) -> AgentOutput:
        raise self.error


class BlockingAgent:
    """Never answers until cancelled; ``entered`` is set once a call is pending."""

    def __init__(self):
        self.entered = anyio.Event()
        self.calls = 0

    async def act(self, turn: Turn) -> AgentOutput:
        self.calls += 1
        self.entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def test_task_base_keeps_the_seed_constructor():
    task = Task("t", 3, "extra", option=True)
    assert (task.name, task.concurrency) == ("t", 3)
    assert Task("t").concurrency == 1
    with pytest.raises(NotImplementedError):
        task.get_indices()
    task.release()  # the default does nothing


async def test_action_injects_every_form_and_appends_the_reply():
    agent = RecordingAgent()
    session = Session(agent, task_name="t", index=4)
    session.inject({"role": "user", "content": "a"})
    session.inject([ChatHistoryItem("agent", "b"), {"role": "user", "content": "c"}])
    output = await session.action({"role": "user", "content": "d"}, [{"role": "user", "content": "e"}])
    assert output == AgentOutput(AgentOutputStatus.NORMAL, "reply 0")
    assert [h.content for h in session.history] == ["a", "b", "c", "d", "e", "reply 0"]
    assert session.history[-1].role == "agent"
    await session.action()
    assert [t.turn for t in agent.turns] == [0, 1]
    assert agent.turns[1].history[-1] == ChatHistoryItem("agent", "reply 0")
    assert (agent.turns[0].task, agent.turns[0].index) == ("t", 4)
    assert session.turns == 2


async def test_bad_history_item_raises_before_calling_the_agent():
    agent = RecordingAgent()
    session = Session(agent, task_name="t", index=0)
    with pytest.raises(TaskDefinitionError):
        await session.action({"role": "system", "content": "x"})
    assert agent.turns == []


async def test_context_length_error_becomes_a_status_not_history():
    session = Session(RaisingAgent(ContextLengthError("too long")), task_name="t", index=0)
    output = await session.action({"role": "user", "content": "x"})
    assert output == AgentOutput(AgentOutputStatus.AGENT_CONTEXT_LIMIT, None)
    assert len(session.history) == 1


async def test_other_agent_errors_reach_the_task_and_a_miss_is_remembered():
    session = Session(RaisingAgent(BackendError("down")), task_name="t", index=0)
    with pytest.raises(BackendError):
        await session.action()
    assert session.cache_miss is None
    miss = CacheMissError("no sample for request_id x")
    session = Session(RaisingAgent(miss), task_name="t", index=0)
    with pytest.raises(CacheMissError):
        await session.action()
    assert session.cache_miss is miss


async def test_cancel_ends_the_pending_action_and_every_later_one():
    agent = BlockingAgent()
    session = Session(agent, task_name="t", index=0)
    outputs = []

    async def act():
        outputs.append(await session.action({"role": "user", "content": "x"}))

    async with anyio.create_task_group() as group:
        group.start_soon(act)
        await agent.entered.wait()
        session.cancel()
    assert outputs == [AgentOutput(AgentOutputStatus.CANCELLED)]
    assert session.cancelled
    assert await session.action() == AgentOutput(AgentOutputStatus.CANCELLED)
    assert agent.calls == 1  # the later action did not reach the agent
    assert [h.role for h in session.history] == ["user"]


async def test_an_agent_must_return_an_agent_output():
    class Wrong:
        async def act(self, turn):
            return "text"

    with pytest.raises(TaskDefinitionError, match="must return an AgentOutput"):
        await Session(Wrong(), task_name="t", index=0).action()


async def test_a_normal_reply_without_content_is_recorded_as_empty():
    class Silent:
        async def act(self, turn):
            return AgentOutput()

    session = Session(Silent(), task_name="t", index=0)
    await session.action()
    assert session.history == [ChatHistoryItem("agent", "")]


async def test_echo_agent_repeats_the_last_user_message():
    session = Session(EchoAgent(), task_name="t", index=0)
    assert (await session.action()).content == ""
    session.inject({"role": "user", "content": "ping"})
    assert (await session.action()).content == "ping"
