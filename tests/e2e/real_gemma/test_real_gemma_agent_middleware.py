"""The LangChain agent middleware with a real vLLM CPU server serving Google's Gemma 3 270M as the guard.

The 270M is a base model that calls nearly everything harmful, so no test asserts which verdict comes back.
Asserted, on the real server: every check the middleware makes in a ``create_agent`` tool loop (the question, the
tool call, the tool result, the answer) reaches vLLM as a well-formed request and ends in a parsed verdict, never a
failure; the agent does what those verdicts say (monitor mode: the loop runs to the model's answer whatever they say;
enforce: a block ends the turn with a refusal whose record names the decision); and the same conversation decided
twice from scratch (fresh runtime, fresh caches) gives the same decisions and the same final message.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

from nemo_csr_rail.decision import Decision
from nemo_csr_rail.langchain import CsrGuard
from nemo_csr_rail.langchain_middleware import record_of
from nemo_csr_rail.runtime import reset_runtimes
from tests.support.rails_configs import write_config
from tests.support.scripted_chat import ScriptedChatModel

pytestmark = [pytest.mark.vllm, pytest.mark.real_gemma]
HARM_WORDS = ("harmful", "unharmful")
QUESTION = 'CALL get_weather {"city": "Paris"}'


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


def _guard(gemma_server, path, mode: str) -> tuple[CsrGuard, list[Decision]]:
    reset_runtimes()
    plugin = {"timeout_s": 180, "max_retries": 0, "cache": {"enabled": False},
              "policies": {"fast": {"taxonomy": "nemotron_v2", "mode": mode}}}  # reasoning off: one-token/split
    guard = CsrGuard.from_path(write_config(path, guard_url=gemma_server.base_url, main_url=None, plugin=plugin))
    decisions: list[Decision] = []
    inner = guard.runtime.decide

    async def decide(*a: Any, **kw: Any) -> Decision:
        d = await inner(*a, **kw)
        decisions.append(d)
        return d

    guard.runtime.decide = decide
    return guard, decisions


async def _turn(guard: CsrGuard) -> list[Any]:
    agent = create_agent(ScriptedChatModel(), [get_weather], middleware=[guard.middleware(policy="fast")])
    return (await agent.ainvoke({"messages": [HumanMessage(QUESTION)]}))["messages"]


def _well_formed(decisions: list[Decision]) -> None:
    assert decisions
    for d in decisions:
        assert not d.failed and d.verdict is not None, d.to_metadata()
        assert d.model_label in HARM_WORDS, d.to_metadata()
        assert d.cost is not None and d.cost.prompt_tokens, "vLLM counted the request's prompt"


async def test_monitor_mode_runs_the_whole_loop_on_real_verdicts(gemma_server, tmp_path):
    guard, decisions = _guard(gemma_server, tmp_path / "mon", "monitor")
    out = await _turn(guard)
    assert out[-1].content == "Based on the tool results: sunny in Paris", "monitor mode never blocks"
    _well_formed(decisions)
    directions = sorted(d.direction.value for d in decisions)
    assert directions == ["input", "output", "tool_call", "tool_result"], "each new message judged once"
    await guard.aclose()


async def test_enforce_follows_the_real_verdicts_and_decides_the_same_twice(gemma_server, tmp_path):
    runs = []
    for i in range(2):
        guard, decisions = _guard(gemma_server, tmp_path / f"enf{i}", "enforce")
        out = await _turn(guard)
        _well_formed(decisions)
        blocked = [d for d in decisions if d.blocked]
        rec = record_of(out[-1])
        if blocked:
            assert rec is not None and rec["blocked"] is True and out[-1].content == blocked[0].refusal
            assert rec["decision"]["decision"] == "block" and rec["decision"]["failed"] is False
        else:
            assert rec is None and out[-1].content == "Based on the tool results: sunny in Paris"
        runs.append(([(d.direction.value, d.outcome.value, d.model_label) for d in decisions], out[-1].content))
        await guard.aclose()
    assert runs[0] == runs[1], "greedy decoding on the same requests: the same decisions"
