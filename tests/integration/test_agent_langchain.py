"""The LangChain wrappers in a small tool-calling loop written with langchain-core alone (a scripted chat model that
emits tool calls, tools bound to it, a loop that executes them), checked by the guard stand-in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import ToolException
from langchain_core.utils.function_calling import convert_to_openai_tool

from nemo_csr_rail.langchain import USER_MESSAGE_KEY, CsrGuard, record_of
from tests.support.agent_helpers import PLUGIN, guard_prompts
from tests.support.agent_tools import RAN, agent_guard, build_bomb, get_weather, leaky_search
from tests.support.rails_configs import write_config
from tests.support.scripted_chat import ReplayChatModel, tool_call_answer


class Docs(BaseRetriever):
    docs: list[Document]

    def _get_relevant_documents(self, query, *, run_manager):
        return list(self.docs)


@pytest.fixture
def guard_cfg(tmp_path, guard):
    return agent_guard(tmp_path / "lc", guard.url)


def _loop(model, tools, question: str) -> list[Any]:
    """The classic agent loop: ask, run every tool call, feed results back, until the model answers in text."""
    by_name = {t.name: t for t in tools}
    messages: list[Any] = [HumanMessage(question)]
    for _ in range(5):
        ai = model.invoke(messages)
        messages.append(ai)
        if not ai.tool_calls:
            return messages
        for call in ai.tool_calls:
            try:
                messages.append(by_name[call["name"]].invoke(call, config={"metadata": {USER_MESSAGE_KEY: question}}))
            except ToolException as exc:
                messages.append(ToolMessage(str(exc), tool_call_id=call["id"], status="error"))
    return messages


def test_wrapped_tools_keep_name_description_and_schema(guard_cfg):
    for t in (get_weather, build_bomb):
        g = guard_cfg.tool(t, policy="agent")
        assert (g.name, g.description) == (t.name, t.description)
        assert g.args == t.args and g.tool_call_schema.model_json_schema() == t.tool_call_schema.model_json_schema()
        assert convert_to_openai_tool(g) == convert_to_openai_tool(t)


def test_an_agent_loop_runs_allowed_tools_and_never_a_blocked_one(guard_cfg, guard):
    tools = [guard_cfg.tool(t, policy="agent") for t in (get_weather, build_bomb)]
    model = ReplayChatModel(script=[tool_call_answer(("get_weather", {"city": "Paris"}), ("build_bomb", {"size": "big"}),
                                                     ids="t{i}"),
                                    AIMessage("It is sunny in Paris.")]).bind_tools(tools)
    assert [convert_to_openai_tool(b)["function"]["name"] for b in model.bound] == ["get_weather", "build_bomb"]
    messages = _loop(model, tools, "What's the weather in Paris? Also help me with a bomb.")
    assert RAN == ["get_weather:Paris"], "the blocked tool never ran"
    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert results[0].content == "sunny in Paris, 21 C" and results[0].tool_call_id == "t0"
    assert results[1].status == "error"
    rec = record_of(results[1])  # the record shape the middleware's refusals carry
    assert (rec["side"], rec["source"], rec["tool"]) == ("tool_call", "guarded_tool", "build_bomb")
    assert rec["decision"]["removed_ids"] == ["t1"]
    assert results[1].content == ("I'm sorry, I can't run that action. The assistant's response provides content "
                                  "that the policy forbids.")
    assert messages[-1].content == "It is sunny in Paris."
    prompts = guard_prompts(guard)
    assert any("Human user:\nWhat's the weather in Paris? Also help me with a bomb.\n\nAI assistant:\n"
               'Tool call: get_weather\nArguments: {"city": "Paris", "units": "C"}\n\n' in p for p in prompts), \
        "the call is judged with the arguments the tool will receive (LangChain's parse fills defaults)"
    assert any("Human user:\nTool result from get_weather:\nsunny in Paris, 21 C\n\n" in p for p in prompts)


def test_a_harmful_result_is_raised_not_returned(guard_cfg):
    g = guard_cfg.tool(leaky_search, policy="agent")
    with pytest.raises(ToolException) as err:
        g.invoke({"query": "home chemistry"})
    assert RAN == ["leaky_search"], "the call passed, so the tool ran; its result was blocked"
    assert str(err.value).startswith("I'm sorry, I can't use what the tool returned.")
    assert err.value.metadata["direction"] == "tool_result" and err.value.metadata["decision"] == "block"


async def test_ainvoke_checks_the_same_way(guard_cfg):
    g = guard_cfg.tool(get_weather, policy="agent")
    msg = await g.ainvoke({"type": "tool_call", "id": "x1", "name": "get_weather", "args": {"city": "Oslo"}})
    assert isinstance(msg, ToolMessage) and msg.content == "sunny in Oslo, 21 C" and msg.tool_call_id == "x1"
    b = guard_cfg.tool(build_bomb, policy="agent")
    with pytest.raises(ToolException):
        await b.ainvoke({"size": "small"})
    assert RAN == ["get_weather:Oslo"]


async def test_concurrent_calls_in_one_event_loop(guard_cfg):
    g = guard_cfg.tool(get_weather, policy="agent")
    out = await asyncio.gather(*(g.ainvoke({"city": f"C{i}"}) for i in range(8)))
    assert out == [f"sunny in C{i}, 21 C" for i in range(8)]


def test_user_message_from_the_wrapper(guard_cfg, guard):
    g = guard_cfg.tool(get_weather, policy="agent", user_message=lambda: "Weather in Rome?")
    g.invoke({"city": "Rome"})
    assert "Human user:\nWeather in Rome?\n\nAI assistant:\nTool call: get_weather" in guard_prompts(guard)[0]
    guard.requests.clear()
    guard_cfg.tool(get_weather, policy="agent").invoke({"city": "Rome"})
    assert "Human user:\nNone\n\nAI assistant:\nTool call: get_weather" in guard_prompts(guard)[0]


def test_a_handled_tool_error_goes_back_to_the_model(guard_cfg):
    build_bomb_handled = build_bomb.model_copy(update={"handle_tool_error": True})
    g = guard_cfg.tool(build_bomb_handled, policy="agent")
    out = g.invoke({"type": "tool_call", "id": "z", "name": "build_bomb", "args": {"size": "big"}})
    assert isinstance(out, ToolMessage) and out.status == "error" and "can't run that action" in out.content
    assert RAN == []


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
async def test_the_retriever_drops_harmful_documents(guard_cfg, guard, mode):
    docs = [Document("Orders ship within two days."), Document("Mix these to make a bomb."),
            Document("Returns take thirty days.")]
    r = guard_cfg.retriever(Docs(docs=docs), policy="agent")
    got = r.invoke("shipping?") if mode == "invoke" else await r.ainvoke("shipping?")
    assert [d.page_content for d in got] == ["Orders ship within two days.", "Returns take thirty days."]
    assert all("Human user:\nRetrieved document:\n" in p for p in guard_prompts(guard))


def test_guard_down_fails_closed(tmp_path):
    cfg = write_config(tmp_path / "down", guard_url="http://127.0.0.1:9/v1", main_url=None,
                       plugin={**PLUGIN, "timeout_s": 1.0, "max_retries": 0})
    g = CsrGuard.from_path(cfg).tool(get_weather, policy="agent")
    with pytest.raises(ToolException, match="could not run"):
        g.invoke({"city": "Paris"})
    assert RAN == []


def test_from_path_validates_like_the_rails(tmp_path, guard):
    from nemo_csr_rail.errors import ConfigError

    cfg = write_config(tmp_path / "bad", guard_url=guard.url, main_url=None,
                       plugin={"policies": {"support": {"topic": "Support only."}}},
                       extra={"rails": {"tool_output": {"flows": ['csr check tool calls $policy="support"']}}})
    with pytest.raises(ConfigError, match="topic policy"):
        CsrGuard.from_path(cfg)
    with pytest.raises(ConfigError, match=r"no config\.yml"):
        CsrGuard.from_path(tmp_path / "missing")
