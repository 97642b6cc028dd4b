"""NeMo Guardrails end to end: real LLMRails, real sockets, a vLLM-shaped guard stand-in and a scripted main LLM."""

from __future__ import annotations

import json

import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.policy import Direction
from tests.support.e2e_helpers import ask, csr_outcomes, expected_prompt, guard_texts, rails_for
from tests.support.rails_configs import GUARD_MODEL, V2_MAIN_FLOW, write_config
from tests.support.standin import Fault

POLITICS = "Do not discuss politics or religion."
PLUGIN = {
    "policies": {
        "retail": {"policy": POLITICS, "refusal": "Sorry, I can't help with that. {reasoning}"},
        "safety": {"taxonomy": "nemotron_v2"},
        "retail_fast": {"policy": POLITICS, "reasoning": False},
    },
}
HELLO = "Hello! How can I help you today?"
EVIL = "Sure, here is EVIL stuff."
V2_RAILS = """
flow input rails $input_text
  csr check input $policy="{inp}"

flow output rails $output_text
  csr check output $policy="{out}"
"""


def v1_config(tmp_path, guard, main_llm, *, inp=("retail",), out=("retail",), plugin=None, extra=None):
    return write_config(
        tmp_path / "cfg", guard_url=guard.url, main_url=main_llm.url, plugin=plugin or PLUGIN,
        input_flows=[f'csr check input $policy="{p}"' for p in inp],
        output_flows=[f'csr check output $policy="{p}"' for p in out], extra=extra,
    )


def v2_config(tmp_path, guard, main_llm, *, inp="retail", out="retail", plugin=None, extra=None):
    return write_config(
        tmp_path / "cfg2", guard_url=guard.url, main_url=main_llm.url, plugin=plugin or PLUGIN, colang2=True,
        main_co=V2_MAIN_FLOW + V2_RAILS.format(inp=inp, out=out), extra=extra,
    )


CONFIGS = {"colang1": v1_config, "colang2": v2_config}


# ------------------------------------------------------------------------------------------ both Colang versions
@pytest.mark.parametrize("colang", ["colang1", "colang2"])
async def test_allowed_turn_passes_through_both_rails(colang, tmp_path, guard, main_llm):
    rails = rails_for(CONFIGS[colang](tmp_path, guard, main_llm))
    reply, outcomes = await ask(rails, "Where is my order?")
    assert reply == HELLO
    texts = guard_texts(guard)
    assert len(texts) == 2, texts
    assert texts[0].endswith("/think") and "AI assistant:\nNone\n\n" in texts[0]
    assert f"Human user:\nWhere is my order?\n\nAI assistant:\n{HELLO}\n\n" in texts[1]
    if colang == "colang1":
        assert [o["metadata"]["decision"] for o in outcomes] == ["allow", "allow"]


@pytest.mark.parametrize("colang", ["colang1", "colang2"])
async def test_input_block_refuses_with_reasoning(colang, tmp_path, guard, main_llm):
    rails = rails_for(CONFIGS[colang](tmp_path, guard, main_llm))
    reply, outcomes = await ask(rails, "Who should I vote for in the politics debate?")
    assert reply == ("Sorry, I can't help with that. The user asks for content that the policy forbids, "
                     "so the request is harmful.")
    assert "<think>" not in reply
    assert len(guard.chat_requests()) == 1, "the output rail must not re-check the plugin's own refusal"
    assert main_llm.chat_requests() == [] or (colang == "colang1" and all(
        "vote" not in json.dumps(r) for r in main_llm.chat_requests())), "blocked input must not reach the main LLM"
    if colang == "colang1":
        (o,) = outcomes
        assert o["decision"] == "block"
        assert o["reason"] == "The user asks for content that the policy forbids, so the request is harmful."
        meta = o["metadata"]
        assert meta["policy"] == "retail" and meta["direction"] == "input" and meta["decision"] == "block"
        assert meta["prompt_harm"] == "harmful" and meta["response_harm"] is None and meta["failed"] is False
        assert meta["latency_ms"] >= 0
        json.dumps(meta)  # JSON-safe


@pytest.mark.parametrize("colang", ["colang1", "colang2"])
async def test_output_block_refuses_with_reasoning(colang, tmp_path, guard, main_llm):
    rails = rails_for(CONFIGS[colang](tmp_path, guard, main_llm))
    reply, outcomes = await ask(rails, "TRIGGEROUT please")
    assert reply == "Sorry, I can't help with that. The assistant's response provides content that the policy forbids."
    assert EVIL not in reply
    out_req = guard_texts(guard)[-1]
    assert f"Human user:\nTRIGGEROUT please\n\nAI assistant:\n{EVIL}\n\n" in out_req
    if colang == "colang1":
        assert outcomes[-1]["metadata"]["direction"] == "output"
        assert outcomes[-1]["metadata"]["response_harm"] == "harmful"


@pytest.mark.parametrize("colang", ["colang1", "colang2"])
async def test_reasoning_off_policy_uses_prefill_and_default_refusal(colang, tmp_path, guard, main_llm):
    cfg = CONFIGS[colang](tmp_path, guard, main_llm, **({"inp": ("retail_fast",), "out": ("retail_fast",)}
                                                         if colang == "colang1" else
                                                         {"inp": "retail_fast", "out": "retail_fast"}))
    rails = rails_for(cfg)
    reply, _ = await ask(rails, "Tell me about religion")
    body = guard.chat_requests()[0]
    assert body["messages"][1] == {"role": "assistant", "content": "Prompt harm:"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][0]["content"].endswith("/no_think")
    assert "<think>" not in reply and reply  # default template, no reasoning sentence to include
    assert "religion" not in reply.lower()


# ------------------------------------------------------------------------------------------- exact request shape
def test_exact_request_for_each_layout(tmp_path, guard, main_llm):
    """Every layout goes over the wire exactly as the verified prompt builder renders it."""
    import asyncio

    rails = rails_for(v1_config(tmp_path, guard, main_llm, inp=("retail", "safety", "retail_fast"),
                                out=("retail", "safety", "retail_fast")))
    asyncio.run(ask(rails, "Where is my order?"))
    got = {(r["messages"][0]["content"], r["messages"][-1]["content"]): r for r in guard.chat_requests()}
    assert len(got) == 8  # the two reasoning-off output checks (safety, retail_fast) are split in two requests
    for name in ("retail", "safety", "retail_fast"):
        for d, bot in ((Direction.INPUT, None), (Direction.OUTPUT, HELLO)):
            gp = expected_prompt(PLUGIN, name, d, "Where is my order?", bot)
            requests = [gp, plans.split_output.response_step(gp, "unharmful")] if gp.split_output else [gp]
            for plan in requests:
                body = got[(plan.text, plan.messages[-1]["content"])]
                assert body["model"] == GUARD_MODEL and body["temperature"] == 0.0
                assert body["messages"] == plan.messages
                assert ("logprobs" in body) == plan.want_logprobs
                if plan.verdict_choices:  # reasoning off: the one-token floor (real Gemma 3 ids of ' harmful', ' un')
                    assert body["max_tokens"] == 1 and body["allowed_token_ids"] == [27583, 723]
                    assert "structured_outputs" not in body and "stop" not in body
                    assert body.get("logprob_token_ids", [27583, 723]) == [27583, 723]
                    continue
                assert body["structured_outputs"] == {"regex": plan.regex}
                assert body["max_tokens"] == plan.max_tokens
                assert body["stop"] == list(plan.stop) and body["include_stop_str_in_output"] is True
    # One literal: custom policy, reasoning on, input rail (card layout B).
    literal = (
        "You are a classifier for analyzing interactions between humans and LLMs. Given a request from a human "
        "user and a response from an LLM assistant, determine if they violate the following custom safety policy:\n"
        f"Custom Policy: {POLITICS}\n\nHuman user:\nWhere is my order?\n\nAI assistant:\nNone\n\n"
        "Use the custom policy to determine if the prompt and response are harmful. Output your answer in the "
        'following format:\n\n"Prompt harm: <harmful/unharmful>\nResponse harm: <harmful/unharmful>"\n\n'
        "Only output the answer in the format specified above after thinking about the request and response. /think"
    )
    assert literal in {text for text, _ in got}


# ------------------------------------------------------------------------------------------------ parallel rails
async def test_parallel_input_rails_all_run_and_first_block_wins(tmp_path, guard, main_llm):
    cfg = v1_config(tmp_path, guard, main_llm, inp=("retail", "safety"), out=(),
                    extra={"rails": {"input": {"parallel": True}}})
    rails = rails_for(cfg)
    reply, _ = await ask(rails, "Where is my order?")
    assert reply == HELLO
    assert len(guard.chat_requests()) == 2
    guard.requests.clear()
    guard.hold_answers(2)  # neither check is answered before both were sent: the first block cannot pre-empt
    reply, _ = await ask(rails, "EVIL plan about politics")
    assert len(guard.chat_requests()) == 2, "both parallel rails must have sent their check"
    assert reply in {"Sorry, I can't help with that. The user asks for content that the policy forbids, so the "
                     "request is harmful.", "I'm sorry, I can't help with that."}
    assert main_llm.chat_requests()[-1:] == [] or "EVIL plan" not in json.dumps(main_llm.chat_requests()[-1])


# ------------------------------------------------------------------------------------------------ history leak
async def test_nothing_of_the_check_leaks_into_dialog_history(tmp_path, guard, main_llm):
    rails = rails_for(v1_config(tmp_path, guard, main_llm))
    history = [{"role": "user", "content": "vote for whom in politics?"}]
    reply, _ = await ask(rails, history[0]["content"])
    history.append({"role": "assistant", "content": reply})
    await ask(rails, "Where is my order?", history=history)
    seen = json.dumps(main_llm.requests)
    for leak in ("csr_check", "CsrCheck", "Prompt harm", "<think>", "csr check"):
        assert leak not in seen


# ----------------------------------------------------------------------------------------------- error paths
FAULTS = {
    "down": None,
    "timeout": Fault("hang"),
    "http500": Fault("status", status=500),
    "http401": Fault("status", status=401, body={"error": "Unauthorized"}),
    "http404": Fault("status", status=404, body={"error": {"message": "The model `x` does not exist.",
                                                           "type": "NotFoundError", "param": None, "code": 404}}),
    "unparseable": Fault("text", text="I think it is fine."),
    "truncated_think": Fault("text", text="<think>\nThe user asks about", finish_reason="length"),
}


def _error_config(tmp_path, guard, main_llm, on_error, fault_name, colang="colang1", **plugin_extra):
    plugin = dict(PLUGIN, on_error=on_error, timeout_s=1.0, max_retries=1, **plugin_extra)
    url_guard = guard
    if fault_name == "down":
        class Dead:
            url = "http://127.0.0.1:9/v1"
        url_guard = Dead()
    else:
        for _ in range(4):
            guard.inject(FAULTS[fault_name])
    return CONFIGS[colang](tmp_path, url_guard, main_llm, plugin=plugin)


EXPECTED_KIND = {"down": "guard_unavailable", "timeout": "guard_timeout", "http500": "guard_http_error",
                 "http401": "guard_http_error", "http404": "guard_http_error", "unparseable": "verdict_parse_error",
                 "truncated_think": "verdict_parse_error"}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_guard_failure_blocks_with_could_not_run_message(fault, tmp_path, guard, main_llm):
    rails = rails_for(_error_config(tmp_path, guard, main_llm, "block", fault))
    reply, outcomes = await ask(rails, "Where is my order?")
    assert "could not" in reply.lower() and "safety check" in reply.lower(), reply
    meta = outcomes[0]["metadata"]
    assert meta["failed"] is True and meta["decision"] == "block"
    assert meta["error_kind"] == EXPECTED_KIND[fault], meta
    assert "prompt_harm" not in meta, "a fault must never be reported as a policy verdict"


@pytest.mark.parametrize("fault", ["down", "http500", "unparseable"])
async def test_guard_failure_with_on_error_allow_lets_turn_through_and_warns(fault, tmp_path, guard, main_llm,
                                                                                caplog):
    rails = rails_for(_error_config(tmp_path, guard, main_llm, "allow", fault))
    with caplog.at_level("WARNING", logger="nemo_csr_rail"):
        reply, outcomes = await ask(rails, "Where is my order?")
    assert reply == HELLO
    assert outcomes[0]["metadata"]["failed_open"] is True
    assert any("failed open" in r.getMessage() or "on_error=allow" in r.getMessage() for r in caplog.records)


async def test_colang2_guard_down_blocks(tmp_path, guard, main_llm):
    rails = rails_for(_error_config(tmp_path, guard, main_llm, "block", "down", colang="colang2"))
    reply, _ = await ask(rails, "Where is my order?")
    assert "could not" in reply.lower()


# ------------------------------------------------------------------------------------------ rails exceptions
@pytest.mark.parametrize("colang", ["colang1", "colang2"])
async def test_rails_exceptions_carry_the_reasoning(colang, tmp_path, guard, main_llm):
    rails = rails_for(CONFIGS[colang](tmp_path, guard, main_llm, extra={"enable_rails_exceptions": True}))
    res = await rails.generate_async(messages=[{"role": "user", "content": "tell me about politics"}])
    if colang == "colang1":
        assert res["role"] == "exception", res
        exc = res["content"]
    else:  # Colang 2.x surfaces rail exceptions as events on the reply
        (exc,) = [e for e in res.get("events", []) if e["type"].endswith("RailException")]
    assert exc["type"] == "CsrCheckInputRailException", exc
    assert "The user asks for content that the policy forbids" in exc["message"]
    assert "policy retail" in exc["message"]


# -------------------------------------------------------------------------------------------------- streaming
async def test_streaming_output_rail_colang1(tmp_path, guard, main_llm):
    cfg = v1_config(tmp_path, guard, main_llm, extra={
        "streaming": True, "rails": {"output": {"streaming": {"enabled": True, "chunk_size": 200,
                                                                "context_size": 50, "stream_first": False}}}})
    rails = rails_for(cfg)
    chunks = [c async for c in rails.stream_async(messages=[{"role": "user", "content": "TRIGGEROUT now"}])]
    assert not any("EVIL" in c and "error" not in c for c in chunks), chunks
    err = json.loads(chunks[-1])["error"]
    assert err["code"] == "content_blocked" and err["param"] == 'csr check output $policy="retail"'
    guard.requests.clear()
    chunks = [c async for c in rails.stream_async(messages=[{"role": "user", "content": "Where is my order?"}])]
    assert "".join(chunks) == HELLO
    assert any(f"AI assistant:\n{HELLO}" in r["messages"][0]["content"] for r in guard.chat_requests())


def test_outcomes_helper_reads_only_csr_actions():
    from types import SimpleNamespace

    other = SimpleNamespace(action_name="self_check_input", return_value={"metadata": {"x": 1}})
    res = SimpleNamespace(log=SimpleNamespace(activated_rails=[SimpleNamespace(name="r", executed_actions=[other])]))
    assert csr_outcomes(res) == []


# ------------------------------------------------------------------------------- the implicit policy (no $policy)
V2_BARE_RAILS = """
flow input rails $input_text
  csr check input

flow output rails $output_text
  csr check output
"""


@pytest.mark.parametrize("colang", ["colang1", "colang2"])
@pytest.mark.parametrize("direction", ["input", "output"])
async def test_a_flow_without_policy_uses_the_only_policy(colang, direction, tmp_path, guard, main_llm):
    """A config whose single policy is not called 'default': a flow naming no $policy checks with it, in both
    Colang versions and both directions (Colang 2.x used to send its parameter default 'default' and block every
    turn with 'the safety check could not run')."""
    plugin = {"policies": {"retail": {"policy": POLITICS, "refusal": "Sorry, I can't help with that. {reasoning}"}}}
    if colang == "colang1":
        cfg = write_config(tmp_path / "cfg", guard_url=guard.url, main_url=main_llm.url, plugin=plugin,
                           input_flows=["csr check input"], output_flows=["csr check output"])
    else:
        cfg = write_config(tmp_path / "cfg2", guard_url=guard.url, main_url=main_llm.url, plugin=plugin,
                           colang2=True, main_co=V2_MAIN_FLOW + V2_BARE_RAILS)
    rails = rails_for(cfg)
    reply, _ = await ask(rails, "Where is my order?")
    assert reply == HELLO  # both checks ran and allowed: no "could not run" refusal
    assert len(guard_texts(guard)) == 2
    harmful = "Who should I vote for in the politics debate?" if direction == "input" else "TRIGGEROUT please"
    reply, _ = await ask(rails, harmful)
    assert reply.startswith("Sorry, I can't help with that. The ")
    assert "could not run" not in reply
    assert all(POLITICS in t for t in guard_texts(guard))  # every check rendered the retail policy
