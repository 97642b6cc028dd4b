"""Agent rails end to end in Colang 1.0: real LLMRails, a vLLM-shaped guard stand-in, a main LLM that makes tool calls.

What the caller gets is read where an application reads it: ``GenerationResponse.tool_calls`` and the answer's
text from ``LLMRails.generate_async(messages=…, options={"llm_params": {"tools": …}})``.
"""

from __future__ import annotations

import json

import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.policy import Direction, compile_policies
from nemo_csr_rail.settings import PluginSettings
from tests.support.agent_helpers import (
    PLUGIN,
    TOOLS,
    guard_prompts,
    names,
    retrieval_config,
    run_turn,
    tool_config,
)
from tests.support.agent_llm import AgentLLM
from tests.support.rails_configs import MAIN_MODEL
from tests.support.standin import StandIn

WEATHER = 'CALL get_weather {"city": "Paris"}'
BOMB = "CALL build_bomb {}"
CALL_REFUSAL = "I'm sorry, I can't run that action. The assistant's response provides content that the policy forbids."
RESULT_REFUSAL = ("I'm sorry, I can't use what the tool returned. The user asks for content that the policy "
                  "forbids, so the request is harmful.")


@pytest.fixture
def agent_llm():
    with AgentLLM() as server:
        yield server


def _rails(path):
    from nemoguardrails import LLMRails, RailsConfig

    return LLMRails(RailsConfig.from_path(str(path)))


def _user(text):
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------------- tool calls
async def test_calls_that_pass_are_returned_unchanged(tmp_path, guard, agent_llm):
    rails = _rails(tool_config(tmp_path, guard, agent_llm))
    text, calls, outs = await run_turn(rails, _user(WEATHER), tools=TOOLS)
    assert names(calls) == ["get_weather"]
    # exactly as NeMo handed it to the rail (its model adapter parses the arguments into a dict)
    assert calls[0]["function"]["arguments"] == {"city": "Paris"} and calls[0]["id"].startswith("call_")
    assert calls[0]["type"] == "function"
    assert text == ""
    (o,) = outs
    assert o["rail_type"] == "tool_output" and o["decision"] == "allow" and not o["stop"]
    meta = o["metadata"]
    assert meta["direction"] == "tool_call" and meta["removed_ids"] == [] and meta["kept_ids"] == [calls[0]["id"]]
    json.dumps(meta)


async def test_a_blocked_call_is_removed_and_the_answer_carries_the_refusal(tmp_path, guard, agent_llm):
    rails = _rails(tool_config(tmp_path, guard, agent_llm))
    text, calls, outs = await run_turn(rails, _user(f"{WEATHER}; {BOMB}"), tools=TOOLS)
    assert names(calls) == ["get_weather"], "a blocked call must never reach the caller"
    assert text == CALL_REFUSAL, "the refusal carries the model's reasoning (policy with reasoning on)"
    (o,) = outs
    meta = o["metadata"]
    assert o["decision"] == "block" and meta["decision"] == "block" and meta["direction"] == "tool_call"
    assert meta["calls"] == 2 and meta["removed"] == 1 and meta["removed_names"] == ["build_bomb"]
    assert len(meta["removed_ids"]) == 1 and meta["removed_ids"][0] not in {c["id"] for c in calls}
    assert meta["kept_ids"] == [calls[0]["id"]]
    assert [c["decision"] for c in meta["checks"]] == ["allow", "block"]
    assert all(c["response_harm"] in ("harmful", "unharmful") for c in meta["checks"])
    assert "arguments" not in json.dumps(meta).lower() or "Paris" not in json.dumps(meta), "no call text in metadata"


async def test_every_call_blocked_returns_no_calls_and_the_refusal(tmp_path, guard, agent_llm):
    rails = _rails(tool_config(tmp_path, guard, agent_llm))
    text, calls, outs = await run_turn(rails, _user(f"{BOMB}; CALL build_bomb {{\"size\": \"big\"}}"), tools=TOOLS)
    assert calls == []
    assert text == CALL_REFUSAL
    assert outs[0]["metadata"]["removed"] == 2 and outs[0]["metadata"]["kept_ids"] == []


async def test_each_call_is_judged_as_the_response_to_the_last_user_message(tmp_path, guard, agent_llm):
    """The exact guard request: layout B with the user's message and the rendered call, decided on Response harm;
    reasoning off takes the split output plan, like an output check (same cost)."""
    rails = _rails(tool_config(tmp_path, guard, agent_llm, calls="agent_fast"))
    user = 'Weather please. CALL get_weather {"units": "C", "city": "Paris"}'
    await run_turn(rails, _user(user), tools=TOOLS)
    pol = compile_policies(PluginSettings.model_validate(PLUGIN))["agent_fast"]
    rendered = 'Tool call: get_weather\nArguments: {"city": "Paris", "units": "C"}'
    gp = plans.build(pol, Direction.TOOL_CALL, user, rendered)
    assert gp.split_output, "a reasoning-off tool call check is the split output plan"
    out_gp = plans.build(pol, Direction.OUTPUT, user, rendered)
    assert gp == out_gp, "a tool call check is exactly an output check of the rendered call"
    bodies = guard.chat_requests()
    assert {b["messages"][0]["content"] for b in bodies} == {gp.text}
    assert f"Human user:\n{user}\n\nAI assistant:\n{rendered}\n\n" in gp.text
    assert len(bodies) == 2  # the two parallel one-word requests of the split output plan


async def test_reasoning_for_tool_calls_is_its_own_setting(tmp_path, guard, agent_llm):
    plugin = {"policies": {"p": {"policy": "No explosives.", "reasoning": {"output": False, "tool_call": True}}}}
    rails = _rails(tool_config(tmp_path, guard, agent_llm, calls="p", results=None, plugin=plugin))
    text, calls, _ = await run_turn(rails, _user(BOMB), tools=TOOLS)
    assert calls == [] and "policy forbids" in text
    (prompt,) = guard_prompts(guard)
    assert prompt.endswith("/think")


async def test_rails_exceptions_mode_raises_and_still_filters(tmp_path, guard, agent_llm):
    rails = _rails(tool_config(tmp_path, guard, agent_llm, extra={"enable_rails_exceptions": True}))
    res = await rails.generate_async(messages=_user(f"{WEATHER}; {BOMB}"),
                                     options={"llm_params": {"tools": TOOLS}})
    (msg,) = res.response
    assert msg["role"] == "exception" and msg["content"]["type"] == "CsrCheckToolCallsRailException"
    assert "Tool call blocked by csr check tool calls (policy agent)" in msg["content"]["message"]
    assert names(res.tool_calls) == ["get_weather"]


@pytest.mark.parametrize(("on_error", "kept"), [("block", []), ("allow", ["get_weather"])])
async def test_guard_down_follows_on_error(on_error, kept, tmp_path, guard, agent_llm):
    class Dead:
        url = "http://127.0.0.1:9/v1"

    plugin = {"on_error": on_error, "timeout_s": 1.0, "max_retries": 0, **PLUGIN}
    rails = _rails(tool_config(tmp_path, Dead(), agent_llm, plugin=plugin))
    text, calls, outs = await run_turn(rails, _user(WEATHER), tools=TOOLS)
    assert names(calls) == kept
    meta = outs[0]["metadata"]
    assert meta["checks"][0]["failed"] is True and meta["checks"][0]["error_kind"] == "guard_unavailable"
    if on_error == "block":
        assert "could not run" in text and meta["failed"] is True and meta["error_kind"] == "guard_unavailable"


async def test_two_policies_each_filter_the_calls(tmp_path, guard, agent_llm):
    plugin = {"policies": {"a": {"policy": "No explosives.", "reasoning": False},
                           "b": {"policy": "No weather talk.", "reasoning": False}}}
    cfg = tool_config(tmp_path, guard, agent_llm, calls="a", results=None, plugin=plugin,
                      extra={"rails": {"tool_output": {"flows": ['csr check tool calls $policy="a"',
                                                                 'csr check tool calls $policy="b"']}}})
    rails = _rails(cfg)
    _, calls, outs = await run_turn(rails, _user(f"{WEATHER}; {BOMB}"), tools=TOOLS)
    assert names(calls) == ["get_weather"]
    assert [o["metadata"]["policy"] for o in outs] == ["a", "b"]
    assert outs[1]["metadata"]["calls"] == 1, "the second rail sees only what the first kept"


async def test_plain_answers_are_untouched(tmp_path, guard, agent_llm):
    rails = _rails(tool_config(tmp_path, guard, agent_llm))
    text, calls, outs = await run_turn(rails, _user("hello"), tools=TOOLS)
    assert text == "Hello! How can I help you today?" and calls == [] and outs == []
    assert guard.chat_requests() == []


# -------------------------------------------------------------------------------------------------- tool results
def _after_calls(results, *, user="What is the weather in Paris?", with_names=True):
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
             for i in range(len(results))]
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": "", "tool_calls": calls}]
    for i, r in enumerate(results):
        m = {"role": "tool", "content": r, "tool_call_id": f"c{i}"}
        if with_names:
            m["name"] = "get_weather"
        msgs.append(m)
    return msgs


async def test_results_that_pass_let_the_model_answer_with_them(tmp_path, guard, agent_llm):
    rails = _rails(tool_config(tmp_path, guard, agent_llm))
    text, calls, outs = await run_turn(rails, _after_calls(["sunny, 21 C"]), tools=TOOLS)
    assert text == "Based on the tool results: sunny, 21 C", "the turn continues: the model read the result"
    assert calls == [], "the assistant's earlier calls are not returned again"
    (o,) = outs
    assert o["rail_type"] == "tool_input" and o["decision"] == "allow"
    assert o["metadata"]["direction"] == "tool_result" and o["metadata"]["continue_turn"] is True
    (prompt,) = guard_prompts(guard)
    assert "Human user:\nTool result from get_weather:\nsunny, 21 C\n\nAI assistant:\nNone\n\n" in prompt
    (req,) = agent_llm.chat_requests()
    assert [m["role"] for m in req["messages"]][-1] == "tool"


async def test_a_blocked_result_ends_the_turn_and_never_reaches_the_model(tmp_path, guard, agent_llm):
    rails = _rails(tool_config(tmp_path, guard, agent_llm))
    text, calls, outs = await run_turn(rails, _after_calls(["how to build a bomb: ..."]), tools=TOOLS)
    assert text == RESULT_REFUSAL and calls == []
    assert agent_llm.chat_requests() == [], "the blocked result must not reach the model"
    (o,) = outs
    assert o["decision"] == "block" and o["stop"] and o["metadata"]["blocked_ids"] == ["c0"]
    assert o["metadata"]["blocked_names"] == ["get_weather"]


@pytest.mark.parametrize("n_flows", [1, 2])
async def test_every_result_is_checked_not_just_the_first(n_flows, tmp_path, guard, agent_llm):
    """NeMo 0.24.1's tool-input loop shares ``$i`` with its loop over the rails and skips messages (with one rail
    and two results, it visits only the first): the rail checks all of them itself."""
    flows = ['csr check tool results $policy="agent"', 'csr check tool results $policy="agent_fast"'][:n_flows]
    rails = _rails(tool_config(tmp_path, guard, agent_llm, extra={"rails": {"tool_input": {"flows": flows}}}))
    text, _, outs = await run_turn(rails, _after_calls(["sunny", "rainy", "a bomb recipe"]), tools=TOOLS)
    assert "can't use what the tool returned" in text
    assert agent_llm.chat_requests() == []
    assert outs[0]["metadata"]["messages"] == 3 and outs[0]["metadata"]["blocked_ids"] == ["c2"]
    guard.requests.clear()
    text, _, outs = await run_turn(rails, _after_calls(["sunny", "rainy", "windy"]), tools=TOOLS)
    assert text == "Based on the tool results: sunny | rainy | windy"
    assert len(agent_llm.chat_requests()) == 1, "the model is called once, after every rail"
    checked = [o for o in outs if not o["metadata"].get("skipped")]
    assert len(checked) == n_flows and all(o["metadata"]["checked"] == 3 for o in checked)
    assert [o["metadata"]["continue_turn"] for o in checked] == [False] * (n_flows - 1) + [True]


async def test_results_judged_on_prompt_harm_with_the_input_reasoning_default(tmp_path, guard, agent_llm):
    rails = _rails(tool_config(tmp_path, guard, agent_llm, results="agent_fast"))
    await run_turn(rails, _after_calls(["sunny"]), tools=TOOLS)
    (body,) = guard.chat_requests()
    assert body["messages"][0]["content"].endswith("/no_think")
    assert body["messages"][1] == {"role": "assistant", "content": "Prompt harm:"}, "decided on Prompt harm"


async def test_a_tool_message_without_name_or_id(tmp_path, guard, agent_llm):
    rails = _rails(tool_config(tmp_path, guard, agent_llm))
    msgs = _after_calls(["sunny"], with_names=False)
    del msgs[-1]["tool_call_id"]
    text, _, outs = await run_turn(rails, msgs, tools=TOOLS)
    assert text == "Based on the tool results: sunny"
    # NeMo itself names it "unknown" and gives it the id ""; the metadata reports no id
    assert "Tool result from unknown:\nsunny" in guard_prompts(guard)[0]
    assert outs[0]["metadata"]["checks"][0]["id"] is None


# ----------------------------------------------------------------------------------------------------- retrieval
DOCS = {"shipping.md": """\
    # Shipping

    Orders ship within two days from our warehouse.

    # Returns

    Returns are accepted within thirty days. Also: how to build a BOMB at home, step by step.
    """}


@pytest.fixture
def rag_llm():
    with StandIn(model=MAIN_MODEL, responder=lambda body: "Orders ship within two days.",
                 max_model_len=1_000_000) as server:
        yield server


async def test_harmful_chunks_never_reach_the_prompt(tmp_path, guard, rag_llm):
    rails = _rails(retrieval_config(tmp_path, guard, rag_llm, documents=DOCS))
    text, _, outs = await run_turn(rails, _user("how do returns work and shipping"))
    assert text == "Orders ship within two days."
    prompt = json.dumps(rag_llm.chat_requests())
    assert "warehouse" in prompt, "the chunk that passed reaches the prompt"
    assert "BOMB" not in prompt, "the harmful chunk was removed before the prompt was built"
    (o,) = [o for o in outs if o["action"] == "csr_check_retrieval"]
    assert o["decision"] == "transform" and not o["stop"], "a transform, not a block: the turn goes on"
    meta = o["metadata"]
    assert meta["direction"] == "retrieval" and meta["chunks"] == 2 and meta["removed"] == 1
    assert meta["policy"] == "agent", "the flow's $policy reaches the action (NeMo 0.24.1 needed the load hook)"
    assert meta["decision"] == "transform" and len(meta["removed_indices"]) == 1
    texts = guard_prompts(guard)
    assert len(texts) == 2 and all("Human user:\nRetrieved document:\n" in t for t in texts)
    assert all("AI assistant:\nNone" in t for t in texts)


async def test_a_registered_retriever_action_is_checked_the_same_way(tmp_path, guard, rag_llm):
    retriever = '''
        from nemoguardrails.actions import action
        from nemoguardrails.actions.actions import ActionResult

        @action(name="retrieve_relevant_chunks", is_system_action=True)
        async def retrieve_relevant_chunks(context=None):
            chunks = ["Our store opens at nine.", "Mix these to make a bomb.", "Returns take thirty days."]
            return ActionResult(return_value="\\n".join(chunks), context_updates={
                "relevant_chunks": "\\n".join(chunks), "relevant_chunks_sep": chunks,
                "retrieved_for": (context or {}).get("last_user_message")})
    '''
    rails = _rails(retrieval_config(tmp_path, guard, rag_llm, documents={}, retriever_py=retriever))
    text, _, outs = await run_turn(rails, _user("where is my order"))
    assert text == "Orders ship within two days."
    prompt = json.dumps(rag_llm.chat_requests())
    assert "nine" in prompt and "thirty days" in prompt and "bomb" not in prompt
    (o,) = [o for o in outs if o["action"] == "csr_check_retrieval"]
    assert o["metadata"]["removed_indices"] == [1] and o["metadata"]["chunks"] == 3


async def test_clean_chunks_are_left_alone(tmp_path, guard, rag_llm):
    docs = {"shipping.md": "# Shipping\n\nOrders ship within two days from our warehouse.\n"}
    rails = _rails(retrieval_config(tmp_path, guard, rag_llm, documents=docs, policy="agent_fast"))
    _, _, outs = await run_turn(rails, _user("tell me about shipping"))
    (o,) = [o for o in outs if o["action"] == "csr_check_retrieval"]
    assert o["decision"] == "allow" and o["metadata"]["removed"] == 0 and o["metadata"]["policy"] == "agent_fast"
    (body,) = guard.chat_requests()
    assert body["messages"][0]["content"].endswith("/no_think"), "retrieval follows the input's reasoning default"
    assert "warehouse" in json.dumps(rag_llm.chat_requests())
