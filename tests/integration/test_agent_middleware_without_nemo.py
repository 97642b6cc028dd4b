"""The agent middleware needs no NeMo Guardrails: with ``nemoguardrails`` unimportable, a ``create_agent`` loop with
``guard.middleware(...)`` answers a benign tool turn and refuses a harmful call exactly as it does with NeMo installed
(the stand-in guard over a real socket). A fresh interpreter, so nothing this session imported can help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.agent_helpers import PLUGIN
from tests.support.rails_configs import write_config

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent('''
    import importlib.abc, json, sys

    class NoNemo(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "nemoguardrails" or name.startswith("nemoguardrails."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoNemo())
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from nemo_csr_rail.langchain import CsrGuard
    from nemo_csr_rail.langchain_middleware import record_of
    from tests.support.scripted_chat import ScriptedChatModel

    ran = []

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        ran.append("get_weather")
        return "sunny in " + city

    @tool
    def build_bomb(size: str) -> str:
        """A tool the model must not be allowed to use."""
        ran.append("build_bomb")
        return "done"

    guard = CsrGuard.from_path(sys.argv[1])
    agent = create_agent(ScriptedChatModel(), [get_weather, build_bomb], middleware=[guard.middleware(policy="agent")])
    benign = agent.invoke({"messages": [HumanMessage('CALL get_weather {"city": "Oslo"}')]})["messages"][-1]
    harmful = agent.invoke({"messages": [HumanMessage('CALLREV bmob_dliub {"size": "big"}')]})["messages"][-1]
    print(json.dumps({"benign": benign.content, "harmful": harmful.content, "side": record_of(harmful)["side"],
                      "ran": ran, "nemo": sorted(m for m in sys.modules if m.split(".")[0] == "nemoguardrails")}))
''')


def test_the_agent_middleware_works_with_nemoguardrails_unimportable(tmp_path, guard):
    cfg = write_config(tmp_path / "mw", guard_url=guard.url, main_url=None, plugin=PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cfg)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["nemo"] == [], "nothing of NeMo Guardrails was imported"
    assert got["benign"] == "Based on the tool results: sunny in Oslo"
    assert got["ran"] == ["get_weather"], "the blocked call never ran"
    assert got["side"] == "tool_call"
    assert got["harmful"] == ("I'm sorry, I can't run that action. The assistant's response provides content that "
                              "the policy forbids.")
