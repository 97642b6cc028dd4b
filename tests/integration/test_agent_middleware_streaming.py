"""What a caller streaming a ``create_agent`` run receives, with the guard middleware in ``stream="hold"`` (the
default), in ``stream="live"``, and without it: every stream surface LangGraph offers, a harmful answer
(``TRIGGEROUT``: the scripted model answers "Sure, here is EVIL stuff.") and a harmful tool call.

Measured here, and stated in docs/langchain-agents.md: the model's tokens reach ``stream_mode="messages"``,
``astream_events`` and ``stream_events(version="v3")`` while the model generates, before any after-model hook
runs; ``"updates"``, ``"values"``, ``"debug"`` and ``"tasks"`` carry node outputs only. ``hold`` keeps the model's
tokens from every streaming handler until the answer is judged, then releases the judged answer (or the refusal)
whole; ``live`` streams tokens unjudged, and only the node outputs are guaranteed judged.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage

from nemo_csr_rail.langchain import CsrGuard
from tests.support.agent_tools import agent_guard, build_bomb
from tests.support.scripted_chat import ScriptedChatModel

HARMFUL = {"messages": [HumanMessage("Please TRIGGEROUT now")]}
BENIGN = {"messages": [HumanMessage("hi there")]}
HARMFUL_CALL = {"messages": [HumanMessage('CALLREV bmob_dliub {"size": "big"}')]}
REFUSAL = "I'm sorry, I can't share that answer. The assistant's response provides content that the policy forbids."
NODE_MODES = ["updates", "values", "debug", "tasks"]


@pytest.fixture
def csr(tmp_path, guard):
    return agent_guard(tmp_path / "st", guard.url, tool_rails=False)


def _agent(csr: CsrGuard, stream: str | None):
    middleware = [] if stream is None else [csr.middleware(policy="agent", stream=stream)]
    return create_agent(ScriptedChatModel(), [build_bomb], middleware=middleware)


async def _surface(agent, payload, surface: str) -> list[Any]:
    """Everything the caller receives from one run on one stream surface."""
    if surface == "astream_events":
        return [e async for e in agent.astream_events(payload, version="v2")]
    if surface == "stream_events_v3":
        return list(agent.stream_events(payload, version="v3"))
    sync, mode = surface.split(":")
    if sync == "sync":
        return list(agent.stream(payload, stream_mode=mode))
    return [x async for x in agent.astream(payload, stream_mode=mode)]


SURFACES = [f"{s}:{m}" for s in ("sync", "async") for m in ["messages", *NODE_MODES]] + [
    "astream_events", "stream_events_v3"]
TOKEN_SURFACES = {"sync:messages", "async:messages", "astream_events", "stream_events_v3"}


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
@pytest.mark.parametrize("surface", SURFACES)
async def test_hold_never_streams_a_harmful_answer_or_call(csr, surface):
    for payload, marker in ((HARMFUL, "EVIL"), (HARMFUL_CALL, "build_bomb")):
        received = await _surface(_agent(csr, "hold"), payload, surface)
        assert received, "the run streamed something"
        assert marker not in repr(received), f"{surface}: unjudged model output reached the caller"


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
@pytest.mark.parametrize("surface", SURFACES)
async def test_without_the_middleware_every_surface_carries_it(csr, surface):
    """The control: the same runs unguarded deliver the harmful answer everywhere (so the test above can fail)."""
    for payload, marker in ((HARMFUL, "EVIL"), (HARMFUL_CALL, "build_bomb")):
        received = await _surface(_agent(csr, None), payload, surface)
        assert marker in repr(received)


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
@pytest.mark.parametrize("surface", SURFACES)
async def test_live_streams_tokens_unjudged_but_node_outputs_are_judged(csr, surface):
    received = await _surface(_agent(csr, "live"), HARMFUL, surface)
    assert ("EVIL" in repr(received)) is (surface in TOKEN_SURFACES)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_live_messages_mode_sends_the_refusal_after_the_tokens_under_a_new_id(csr, mode):
    agent = _agent(csr, "live")
    got = (list(agent.stream(HARMFUL, stream_mode="messages")) if mode == "sync"
           else [x async for x in agent.astream(HARMFUL, stream_mode="messages")])
    tokens = [m for m, _ in got if m.content and "EVIL" in m.content]
    final = got[-1][0]
    assert tokens and isinstance(final, AIMessage) and final.content == REFUSAL
    assert final.id != tokens[0].id, "a UI keyed on message ids shows the refusal as a new message, not merged"
    assert final.response_metadata["nemo_csr_rail"]["replaced_id"] == tokens[0].id, "… and can tell what it replaces"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_hold_releases_a_benign_answer_whole_after_the_check(csr, guard, mode):
    agent = _agent(csr, "hold")
    got = (list(agent.stream(BENIGN, stream_mode="messages")) if mode == "sync"
           else [x async for x in agent.astream(BENIGN, stream_mode="messages")])
    assert [(type(m).__name__, m.content, meta["langgraph_node"]) for m, meta in got] == [
        ("AIMessage", "Hello! How can I help you today?", "model")]
    assert any("AI assistant:\nHello! How can I help you today?" in r["messages"][0]["content"]
               for r in guard.chat_requests()), "released after its check"


class _Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_chat_model_start(self, serialized, messages, **kw):
        self.events.append("start")

    def on_llm_new_token(self, token, **kw):
        self.events.append("token")

    def on_llm_end(self, response, **kw):
        self.events.append("end")


def test_hold_keeps_the_model_run_visible_to_tracers(csr):
    """Only streaming handlers are kept from the model's tokens; a tracer (LangSmith's is a plain handler) still
    records the model run."""
    rec = _Recorder()
    list(_agent(csr, "hold").stream(BENIGN, {"callbacks": [rec]}, stream_mode="messages"))
    assert rec.events[0] == "start" and rec.events[-1] == "end"


async def test_hold_in_astream_events_sends_no_model_events_and_the_judged_answer_once_judged(csr):
    events = [e async for e in _agent(csr, "hold").astream_events(BENIGN, version="v2")]
    assert not [e for e in events if e["event"].startswith("on_chat_model")], "the held call is not streamed"
    ends = [e for e in events if e["event"] == "on_chain_end" and e["name"] == "model"]
    assert ends and "Hello! How can I help you today?" in repr(ends[-1]["data"]["output"])
