"""The agent middleware needs no NeMo Guardrails: with ``nemoguardrails`` unimportable, a ``create_agent`` loop with
``guard.middleware(...)`` answers a benign tool turn and refuses a harmful call exactly as it does with NeMo installed
(the stand-in guard over a real socket). A fresh interpreter, so nothing this session imported can help."""

from __future__ import annotations

from tests.support.agent_helpers import PLUGIN
from tests.support.rails_configs import write_config
from tests.support.without_nemo import run_without_nemo

SCRIPT = '''
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from nemo_csr_rail.langchain import CsrGuard
    from nemo_csr_rail.langchain_middleware import record_of
    from tests.support.agent_tools import RAN, build_bomb, get_weather_brief
    from tests.support.scripted_chat import ScriptedChatModel

    guard = CsrGuard.from_path(sys.argv[1])
    agent = create_agent(ScriptedChatModel(), [get_weather_brief, build_bomb],
                         middleware=[guard.middleware(policy="agent")])
    benign = agent.invoke({"messages": [HumanMessage('CALL get_weather {"city": "Oslo"}')]})["messages"][-1]
    harmful = agent.invoke({"messages": [HumanMessage('CALLREV bmob_dliub {"size": "big"}')]})["messages"][-1]
    report(benign=benign.content, harmful=harmful.content, side=record_of(harmful)["side"],
           ran=[r.split(":")[0] for r in RAN])
'''


def test_the_agent_middleware_works_with_nemoguardrails_unimportable(tmp_path, guard):
    cfg = write_config(tmp_path / "mw", guard_url=guard.url, main_url=None, plugin=PLUGIN)
    got = run_without_nemo(SCRIPT, str(cfg))
    assert got["nemo"] == [], "nothing of NeMo Guardrails was imported"
    assert got["benign"] == "Based on the tool results: sunny in Oslo"
    assert got["ran"] == ["get_weather"], "the blocked call never ran"
    assert got["side"] == "tool_call"
    assert got["harmful"] == ("I'm sorry, I can't run that action. The assistant's response provides content that "
                              "the policy forbids.")
