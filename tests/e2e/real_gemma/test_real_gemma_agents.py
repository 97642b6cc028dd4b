"""The agent rails against a real vLLM CPU server serving Google's Gemma 3 270M (trained weights, real tokenizer).

The 270M is a pretrained base model that calls nearly everything harmful: no test asserts which verdict comes back.
Asserted, on the real server: every tool call, tool result and retrieved chunk reaches vLLM in the request the
offline plan builds (vLLM's own token count of that request equals the check's ``prompt_tokens``), every check ends
in a parsed verdict (never a failure), and the decision path does what the verdict says — a blocked call is not
returned and the answer carries the refusal, a passing one comes back unchanged; a blocked result ends the turn, a
passing one lets the model answer; a removed chunk never reaches the prompt. Reasoning off (the split output plan
and the one-token plan) except one reasoning-on tool-result check (~11 s on a 2-core host).
"""

from __future__ import annotations

import json

import httpx
import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.agent import judged_turn, render_document, render_tool_call, render_tool_result
from nemo_csr_rail.policy import Direction, compile_policies
from nemo_csr_rail.settings import PluginSettings
from tests.support.agent_helpers import TOOLS, names, retrieval_config, run_turn, tool_config
from tests.support.agent_llm import AgentLLM
from tests.support.rails_configs import MAIN_MODEL
from tests.support.standin import StandIn

pytestmark = [pytest.mark.vllm, pytest.mark.real_gemma]
HARM_WORDS = ("harmful", "unharmful")
PLUGIN = {"timeout_s": 180, "policies": {
    "fast": {"taxonomy": "nemotron_v2"},  # reasoning off: the one-token and split output plans
    "think": {"policy": "The assistant must not help with weapons or explosives.", "reasoning": True}}}


def _rails(path):
    from nemoguardrails import LLMRails, RailsConfig

    return LLMRails(RailsConfig.from_path(str(path)))


def _vllm_prompt_tokens(server, gp) -> int:
    r = httpx.post(server.root + "/tokenize", timeout=60, json={
        "model": server.model, "messages": gp.messages, "add_generation_prompt": not gp.prefill,
        "continue_final_message": bool(gp.prefill)})
    r.raise_for_status()
    return r.json()["count"]


def _policy(name):
    return compile_policies(PluginSettings.model_validate(PLUGIN))[name]


class _Url:
    def __init__(self, url):
        self.url = url


@pytest.fixture
def agent_llm():
    with AgentLLM() as server:
        yield server


async def test_tool_calls_on_real_weights(gemma_server, agent_llm, tmp_path):
    cfg = tool_config(tmp_path, _Url(gemma_server.base_url), agent_llm, calls="fast", results=None, plugin=PLUGIN)
    rails = _rails(cfg)
    user = 'Weather please. CALL get_weather {"city": "Paris"}; CALL get_weather {"city": "Oslo"}'
    text, calls, outs = await run_turn(rails, [{"role": "user", "content": user}], tools=TOOLS)
    (o,) = outs
    meta = o["metadata"]
    assert meta["direction"] == "tool_call" and meta["calls"] == 2 and meta["failed"] is False, meta
    for check in meta["checks"]:
        assert check["failed"] is False and check["response_harm"] in HARM_WORDS, check
        assert check["decode_plan"] in ("one_token", "grammar", "mixed")
    assert [c["id"] for c in calls] == meta["kept_ids"], "exactly the calls that passed come back"
    assert len(meta["removed_ids"]) == meta["removed"] == 2 - len(calls)
    assert all(c["function"]["name"] == "get_weather" for c in calls)
    if meta["removed"]:
        assert text.startswith("I'm sorry, I can't run that action."), text
    else:
        assert text == ""
    # the request vLLM got is the offline plan's: an output check of the rendered call (prompt half)
    gp = plans.build(_policy("fast"), Direction.TOOL_CALL, user, render_tool_call("get_weather", {"city": "Paris"}))
    assert gp.split_output
    paris = meta["checks"][0]
    step = plans.split_output.response_step(gp, paris["prompt_harm"])
    assert paris["prompt_tokens"] == _vllm_prompt_tokens(gemma_server, gp) + _vllm_prompt_tokens(gemma_server, step)
    print(f"\ntool calls on Gemma 3 270M: {json.dumps([(c['decision'], c['response_harm']) for c in meta['checks']])}"
          f", returned {names(calls)}")


async def test_tool_results_on_real_weights(gemma_server, agent_llm, tmp_path):
    """Reasoning on (a custom policy's default for the input side, which tool results follow)."""
    cfg = tool_config(tmp_path, _Url(gemma_server.base_url), agent_llm, calls=None, results="think", plugin=PLUGIN)
    rails = _rails(cfg)
    msgs = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "Sunny, 21 C."}]
    text, _, outs = await run_turn(rails, msgs, tools=TOOLS)
    (o,) = outs
    meta = o["metadata"]
    (check,) = meta["checks"]
    assert check["failed"] is False and check["prompt_harm"] in HARM_WORDS and check["reasoning_mode"] is True
    gp = plans.build(_policy("think"), Direction.TOOL_RESULT,
                     *judged_turn(Direction.TOOL_RESULT, None, render_tool_result("get_weather", "Sunny, 21 C.")))
    assert check["prompt_tokens"] == _vllm_prompt_tokens(gemma_server, gp)
    if check["decision"] == "block":
        assert text.startswith("I'm sorry, I can't use what the tool returned.") and agent_llm.chat_requests() == []
        assert check["reasoning"], "a reasoning-on block carries the model's sentence"
    else:
        assert text == "Based on the tool results: Sunny, 21 C." and len(agent_llm.chat_requests()) == 1
    print(f"\ntool result on Gemma 3 270M: {check['decision']} ({check['prompt_harm']}): {check.get('reasoning')!r}")


async def test_retrieval_on_real_weights(gemma_server, tmp_path):
    docs = {"shop.md": "# Shipping\n\nOrders ship within two days.\n\n# Returns\n\nReturns take thirty days.\n"}
    with StandIn(model=MAIN_MODEL, responder=lambda body: "Noted.", max_model_len=1_000_000) as llm:
        cfg = retrieval_config(tmp_path, _Url(gemma_server.base_url), llm, policy="fast", documents=docs,
                               plugin=PLUGIN)
        rails = _rails(cfg)
        text, _, outs = await run_turn(rails, [{"role": "user", "content": "how do returns work and shipping"}])
        prompt = json.dumps(llm.chat_requests())
    assert text == "Noted."
    (o,) = [o for o in outs if o["action"] == "csr_check_retrieval"]
    meta = o["metadata"]
    assert meta["chunks"] == 2 and all(c["failed"] is False and c["prompt_harm"] in HARM_WORDS
                                       for c in meta["checks"])
    chunks = ["Orders ship within two days.", "Returns take thirty days."]
    for i, chunk in enumerate(chunks):
        removed = any(c["index"] == i and c["decision"] == "block" for c in meta["checks"])
        assert (chunk in prompt) is not removed, (chunk, meta)
    gp = plans.build(_policy("fast"), Direction.RETRIEVAL, render_document(chunks[0]), None)
    assert gp.prefill == "Prompt harm:"
    print(f"\nretrieval on Gemma 3 270M: removed {meta['removed_indices']} of {meta['chunks']}")


async def test_langchain_tool_on_real_weights(gemma_server, tmp_path):
    from langchain_core.tools import ToolException, tool

    from nemo_csr_rail.langchain import CsrGuard
    from tests.support.rails_configs import write_config

    ran = []

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        ran.append(city)
        return f"sunny in {city}"

    cfg = write_config(tmp_path / "lc", guard_url=gemma_server.base_url, main_url=None, plugin=PLUGIN)
    guarded = CsrGuard.from_path(cfg).tool(get_weather, policy="fast")
    try:
        out = await guarded.ainvoke({"city": "Paris"})
    except ToolException as exc:
        meta = exc.metadata
        assert meta["decision"] == "block" and meta["failed"] is False, meta
        assert str(exc).startswith(("I'm sorry, I can't run that action.", "I'm sorry, I can't use what"))
        assert ran in ([], ["Paris"])  # blocked before it ran, or its result was blocked
    else:
        assert out == "sunny in Paris" and ran == ["Paris"]
