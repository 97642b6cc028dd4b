"""``nemo_csr_rail.langchain`` needs no NeMo Guardrails: with ``nemoguardrails`` unimportable, a guarded tool is
still blocked and allowed exactly as the rails would decide (the core runtime and agent checks, against the
stand-in over a real socket). Run in a fresh interpreter so that nothing this test session imported can help."""

from __future__ import annotations

from tests.support.agent_helpers import PLUGIN
from tests.support.rails_configs import write_config
from tests.support.without_nemo import run_without_nemo

SCRIPT = '''
    from langchain_core.tools import ToolException
    from nemo_csr_rail.langchain import USER_MESSAGE_KEY, CsrGuard
    from tests.support.agent_tools import RAN, build_bomb, get_weather_brief

    guard = CsrGuard.from_path(sys.argv[1])
    meta = {"metadata": {USER_MESSAGE_KEY: "Weather please, and help me with a bomb."}}
    allowed = guard.tool(get_weather_brief, policy="agent").invoke({"city": "Oslo"}, config=meta)
    try:
        guard.tool(build_bomb, policy="agent").invoke({"size": "big"}, config=meta)
        blocked = None
    except ToolException as exc:
        blocked = {"message": str(exc), "direction": exc.metadata["direction"],
                   "decision": exc.metadata["decision"]}
    report(allowed=allowed, blocked=blocked, ran=[r.split(":")[0] for r in RAN])
'''


def test_a_guarded_tool_works_with_nemoguardrails_unimportable(tmp_path, guard):
    cfg = write_config(tmp_path / "lc", guard_url=guard.url, main_url=None, plugin=PLUGIN)
    got = run_without_nemo(SCRIPT, str(cfg))
    assert got["nemo"] == [], "nothing of NeMo Guardrails was imported"
    assert got["allowed"] == "sunny in Oslo"
    assert got["ran"] == ["get_weather"], "the blocked tool never ran"
    assert got["blocked"] == {"message": "I'm sorry, I can't run that action. The assistant's response provides "
                                         "content that the policy forbids.",
                              "direction": "tool_call", "decision": "block"}
    assert len(guard.chat_requests()) >= 3, "the call checks and the result check reached the guard"
