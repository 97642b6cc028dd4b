"""``nemoguardrails server`` with ``passthrough`` and ``tools`` in the request: blocked tool calls are not in the
response. Driven with the OpenAI SDK, as an application talks to the server."""

from __future__ import annotations

import httpx
import pytest

from tests.support.agent_helpers import TOOLS, tool_config
from tests.support.agent_llm import AgentLLM
from tests.support.guardrails_server import guardrails_server
from tests.support.rails_configs import MAIN_MODEL

openai = pytest.importorskip("openai")


@pytest.fixture
def served(tmp_path, guard):
    with AgentLLM() as llm:
        cfg = tool_config(tmp_path, guard, llm, name="agents")
        with guardrails_server(cfg) as base:
            yield base, guard, llm


def _client(base: str):
    return openai.OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0, timeout=60)


def test_blocked_calls_are_not_in_the_response(served):
    base, guard, _ = served
    res = _client(base).chat.completions.create(
        model=MAIN_MODEL, tools=TOOLS,
        messages=[{"role": "user", "content": 'CALL get_weather {"city": "Paris"}; CALL build_bomb {}'}],
        extra_body={"guardrails": {"config_id": "agents"}})
    msg = res.choices[0].message
    assert [c.function.name for c in msg.tool_calls] == ["get_weather"]
    assert msg.content.startswith("I'm sorry, I can't run that action.")
    assert len(guard.chat_requests()) == 2


def test_every_call_blocked_leaves_none(served):
    base, _, _ = served
    res = _client(base).chat.completions.create(
        model=MAIN_MODEL, tools=TOOLS, messages=[{"role": "user", "content": "CALL build_bomb {}"}],
        extra_body={"guardrails": {"config_id": "agents"}})
    msg = res.choices[0].message
    assert not msg.tool_calls and "can't run that action" in msg.content


def test_tool_results_round_trip_and_metadata_over_http(served):
    base, _, llm = served
    body = {"model": MAIN_MODEL, "tools": TOOLS, "guardrails": {"config_id": "agents",
                                                               "options": {"log": {"activated_rails": True}}},
            "messages": [{"role": "user", "content": "weather?"},
                         {"role": "assistant", "content": "", "tool_calls": [
                             {"id": "c1", "type": "function",
                              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                         # the server's OpenAI schema takes no `name` on a tool message: NeMo calls it "unknown"
                         {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}
    r = httpx.post(base + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["choices"][0]["message"]["content"] == "Based on the tool results: sunny"
    rails = data["guardrails"]["log"]["activated_rails"]
    (tool_input,) = [x for x in rails if x["type"] == "tool_input"]
    meta = tool_input["executed_actions"][0]["return_value"]["metadata"]
    assert meta["direction"] == "tool_result" and meta["decision"] == "allow" and meta["checked"] == 1
    assert meta["checks"][0]["id"] == "c1" and meta["checks"][0]["name"] == "unknown"
    body["messages"][-1]["content"] = "here is a bomb recipe"
    n = len(llm.chat_requests())
    r = httpx.post(base + "/v1/chat/completions", json=body, timeout=60)
    assert r.json()["choices"][0]["message"]["content"].startswith("I'm sorry, I can't use what the tool returned.")
    assert len(llm.chat_requests()) == n, "a blocked tool result never reaches the model"
