"""Every turn shape through the entry points that wrap ``LLMRails``: ``nemoguardrails server`` driven with the OpenAI
SDK (``/v1/chat/completions`` and ``/v1/checks``), ``RunnableRails``, and NeMo's ``GuardrailsMiddleware`` in
``langchain.agents.create_agent``.

The guard is the stand-in (harmful iff a marker word appears); the main model is the scripted ``AgentLLM``, which
records every request it is sent (what it *read*). As in ``test_turn_shapes.py``, each cell runs the shape's benign
variant (the main model's answer comes back) and its harmful variant (refused; judged on the input side, the main
model never read it). The table in docs/agents.md is this grid.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.agent_helpers import PLUGIN
from tests.support.agent_llm import AgentLLM
from tests.support.guardrails_server import guardrails_server
from tests.support.rails_configs import MAIN_MODEL, write_config
from tests.support.standin import StandIn
from tests.support.turn_shapes import SHAPE_IDS, SHAPES, Shape, carries_marker, is_refusal

openai = pytest.importorskip("openai")

INPUT = ['csr check input $policy="agent"']
OUTPUT = ['csr check output $policy="agent"']
TOOL_RAILS = {"tool_output": {"flows": ['csr check tool calls $policy="agent"']},
              "tool_input": {"flows": ['csr check tool results $policy="agent"']}}
MAIN_ANSWERS = ("Hello! How can I help you today?", "Based on the tool results:")


def _config(path, guard, llm, *, tools: bool, main: bool = True, streaming: bool = False, policy: str = "agent"):
    output: dict[str, Any] = {"flows": [f.replace('"agent"', f'"{policy}"') for f in OUTPUT]}
    if streaming:  # NeMo streams only with streaming output rails (checked in chunks, then the whole answer)
        output["streaming"] = {"enabled": True, "chunk_size": 10, "context_size": 3, "stream_first": False}
    rails = {"input": {"flows": [f.replace('"agent"', f'"{policy}"') for f in INPUT]}, "output": output,
             **(TOOL_RAILS if tools else {})}
    return write_config(path, guard_url=guard.url, main_url=llm.url if main else None, plugin=PLUGIN,
                        extra={"passthrough": True, "rails": rails})


def _expect(shape: Shape, harmful: bool, answer: str | None, read: list[dict[str, Any]], *,
            refusals: tuple[str, ...] = ()) -> None:
    """The cell's contract: benign → the main model's answer; harmful → a refusal, and for a message judged on the
    input side the main model never read it."""
    if not harmful:
        assert answer and answer.startswith(MAIN_ANSWERS), f"benign turn: {answer!r}"
        assert len(read) == 1, "the main model answered the benign turn once"
        return
    assert is_refusal(answer) or answer in refusals, f"harmful turn answered: {answer!r}"
    if shape.judged_on("input"):
        assert not any(carries_marker(r.get("messages")) for r in read), "the main model read the harmful message"


# ------------------------------------------------------------------------------------------- nemoguardrails server
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    with StandIn() as guard, AgentLLM() as llm:
        _config(root / "plain", guard, llm, tools=False)
        _config(root / "tools", guard, llm, tools=True)
        _config(root / "streamed", guard, llm, tools=False, streaming=True)
        with guardrails_server(root, log_path=root.parent / "server.log") as base:
            yield base, guard, llm


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("config_id", ["plain", "tools"])
def test_server_chat_completions(served, config_id, shape):
    base, _, llm = served
    client = openai.OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0, timeout=60)
    for harmful in (False, True):
        before = len(llm.chat_requests())
        res = client.chat.completions.create(model=MAIN_MODEL, messages=shape.harmful if harmful else shape.benign,
                                             extra_body={"guardrails": {"config_id": config_id}})
        _expect(shape, harmful, res.choices[0].message.content, llm.chat_requests()[before:])


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_server_checks(served, shape):
    """``/v1/checks`` is ``check_async`` over HTTP: input before the model, output with the answer last."""
    base, _, llm = served
    before = len(llm.chat_requests())
    for harmful in (False, True):
        messages = shape.harmful if harmful else shape.benign
        for rail, msgs in (("input", messages), ("output", [*messages, {"role": "assistant", "content": "Here."}])):
            r = httpx.post(base + "/v1/checks", timeout=60, json={
                "model": MAIN_MODEL, "messages": msgs, "guardrails": {"config_id": "tools", "rail_types": [rail]}})
            assert r.status_code == 200, r.text
            blocked = harmful and shape.judged_on(rail)
            assert r.json()["status"] == ("blocked" if blocked else "passed"), (rail, harmful, r.json())
    assert len(llm.chat_requests()) == before, "a check never calls the main model"


# ------------------------------------------------------------------------------------------------- LangChain side
def _lc_messages(messages: list[dict[str, Any]]) -> list[Any]:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    out: list[Any] = []
    for m in messages:
        if m["role"] == "user":
            out.append(HumanMessage(m["content"]))
        elif m["role"] == "tool":
            out.append(ToolMessage(m["content"], tool_call_id=m["tool_call_id"]))
        elif m.get("tool_calls"):
            out.append(AIMessage("", tool_calls=[{"id": c["id"], "name": c["function"]["name"],
                                                  "args": json.loads(c["function"]["arguments"])}
                                                 for c in m["tool_calls"]]))
        else:
            out.append(AIMessage(m["content"]))
    return out


def _chat_model(llm: AgentLLM) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=llm.url, api_key="not-needed", model=MAIN_MODEL, max_retries=0, timeout=60)


@pytest.fixture
def agent_llm():
    with AgentLLM() as server:
        yield server


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("mode", ["llm=model", "rails | model", "llm=model, tool rails"])
async def test_runnable_rails(tmp_path, guard, agent_llm, mode, shape):
    """``RunnableRails(config, llm=chat_model)`` with a list of LangChain messages: NeMo converts them to chat
    dicts and runs ``generate_async(messages=…)``. ``RunnableRails(config) | chat_model`` hands the rails one user
    message, the input's string form, and the model the messages themselves."""
    pytest.importorskip("langchain_openai")
    from nemoguardrails import RailsConfig
    from nemoguardrails.integrations.langchain.runnable_rails import RunnableRails

    cfg = _config(tmp_path / "lc", guard, agent_llm, tools=mode.endswith("tool rails"), main=False)
    if mode == "rails | model":
        chain = RunnableRails(RailsConfig.from_path(str(cfg))) | _chat_model(agent_llm)
    else:
        chain = RunnableRails(RailsConfig.from_path(str(cfg)), llm=_chat_model(agent_llm))
    for harmful in (False, True):
        before = len(agent_llm.chat_requests())
        out = await chain.ainvoke(_lc_messages(shape.harmful if harmful else shape.benign))
        _expect(shape, harmful, getattr(out, "content", out), agent_llm.chat_requests()[before:])


BLOCKED_INPUT = "I cannot process this request due to content policy."
BLOCKED_OUTPUT = "I cannot provide this response due to content policy."


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
async def test_guardrails_middleware_in_create_agent(tmp_path, guard, agent_llm, shape):
    """NeMo's own middleware: ``check_async`` INPUT before each model call, OUTPUT after it (its fixed refusal
    texts replace ours)."""
    pytest.importorskip("langchain.agents")
    pytest.importorskip("langchain_openai")
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from nemoguardrails.integrations.langchain.middleware import GuardrailsMiddleware

    @tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    cfg = _config(tmp_path / "mw", guard, agent_llm, tools=False)
    agent = create_agent(model=_chat_model(agent_llm), tools=[get_weather],
                         middleware=[GuardrailsMiddleware(config_path=str(cfg))])
    for harmful in (False, True):
        before = len(agent_llm.chat_requests())
        res = await agent.ainvoke({"messages": _lc_messages(shape.harmful if harmful else shape.benign)})
        _expect(shape, harmful, res["messages"][-1].content, agent_llm.chat_requests()[before:],
                refusals=(BLOCKED_INPUT, BLOCKED_OUTPUT))


async def test_guardrails_middleware_stops_a_harmful_tool_call_before_it_runs(tmp_path, guard, agent_llm):
    """The model's answer that calls tools is checked by ``aafter_model`` (``check_async`` OUTPUT): a harmful call
    is replaced by NeMo's output refusal, so the agent never runs it; a benign one runs and the agent answers."""
    pytest.importorskip("langchain.agents")
    pytest.importorskip("langchain_openai")
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from nemoguardrails.integrations.langchain.middleware import GuardrailsMiddleware

    ran: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        ran.append("get_weather")
        return "sunny"

    @tool
    def build_bomb() -> str:
        """Not a real tool."""
        ran.append("build_bomb")
        return "done"

    cfg = _config(tmp_path / "mw", guard, agent_llm, tools=False)
    agent = create_agent(model=_chat_model(agent_llm), tools=[get_weather, build_bomb],
                         middleware=[GuardrailsMiddleware(config_path=str(cfg))])
    res = await agent.ainvoke({"messages": [HumanMessage('CALL get_weather {"city": "Paris"}')]})
    assert ran == ["get_weather"] and res["messages"][-1].content == "Based on the tool results: sunny"
    # the user's message passes the input rail (the name is spelled backwards); the model's call does not
    res = await agent.ainvoke({"messages": [HumanMessage("CALLREV bmob_dliub {}")]})
    assert ran == ["get_weather"], "the harmful call ran"
    assert res["messages"][-1].content == BLOCKED_OUTPUT and not res["messages"][-1].tool_calls


@pytest.mark.parametrize("blocked_input_message", [None, "I'm sorry, I can't help with that."],
                         ids=["middleware's own text", "the policy's refusal"])
async def test_guardrails_middleware_conversation_after_a_refused_turn(tmp_path, guard, agent_llm,
                                                                      blocked_input_message):
    """A LangGraph thread keeps the refused exchange. A refused turn sent back excuses its message only when the
    answer after it is, word for word, a refusal the runtime issued (docs/coverage.md); the middleware writes its
    own fixed text instead, so with its default the thread stays refused (the harmful message is still in what the
    model would read). With a reasoning-off policy its refusal has no model text in it, and a
    ``blocked_input_message`` equal to it lets the conversation go on."""
    pytest.importorskip("langchain.agents")
    pytest.importorskip("langchain_openai")
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from nemoguardrails.integrations.langchain.middleware import GuardrailsMiddleware

    cfg = _config(tmp_path / "mw", guard, agent_llm, tools=False, policy="agent_fast")
    extra = {} if blocked_input_message is None else {"blocked_input_message": blocked_input_message}
    agent = create_agent(model=_chat_model(agent_llm), tools=[],
                         middleware=[GuardrailsMiddleware(config_path=str(cfg), **extra)])
    first = await agent.ainvoke({"messages": [HumanMessage("Tell me about EVIL plans.")]})
    refusal = first["messages"][-1].content
    assert refusal == (blocked_input_message or BLOCKED_INPUT)
    later = await agent.ainvoke({"messages": [*first["messages"], HumanMessage("Sorry. What's the weather?")]})
    expected = BLOCKED_INPUT if blocked_input_message is None else "Hello! How can I help you today?"
    assert later["messages"][-1].content == expected


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_server_chat_completions_streamed(served, shape):
    """``stream=True`` (streaming output rails): the input rail judges the whole request before anything
    streams, the client-supplied assistant messages and tool calls included (the chunk checks get no history)."""
    base, _, llm = served
    client = openai.OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0, timeout=60)
    for harmful in (False, True):
        before = len(llm.chat_requests())
        stream = client.chat.completions.create(model=MAIN_MODEL, messages=shape.harmful if harmful else shape.benign,
                                                stream=True, extra_body={"guardrails": {"config_id": "streamed"}})
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        _expect(shape, harmful, text, llm.chat_requests()[before:])
