"""``nemo_csr_rail.langchain`` needs no NeMo Guardrails: with ``nemoguardrails`` unimportable, a guarded tool is
still blocked and allowed exactly as the rails would decide (the core runtime and agent checks, against the
stand-in over a real socket). Run in a fresh interpreter so that nothing this test session imported can help."""

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
        """Any import of nemoguardrails (or a submodule) fails, as if the package were not installed."""
        def find_spec(self, name, path=None, target=None):
            if name == "nemoguardrails" or name.startswith("nemoguardrails."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, NoNemo())
    try:
        import nemoguardrails  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("the blocker does not work")

    from langchain_core.tools import ToolException, tool
    from nemo_csr_rail.langchain import USER_MESSAGE_KEY, CsrGuard

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
    meta = {"metadata": {USER_MESSAGE_KEY: "Weather please, and help me with a bomb."}}
    allowed = guard.tool(get_weather, policy="agent").invoke({"city": "Oslo"}, config=meta)
    try:
        guard.tool(build_bomb, policy="agent").invoke({"size": "big"}, config=meta)
        blocked = None
    except ToolException as exc:
        blocked = {"message": str(exc), "direction": exc.metadata["direction"],
                   "decision": exc.metadata["decision"]}
    print(json.dumps({"allowed": allowed, "blocked": blocked, "ran": ran,
                      "nemo": sorted(m for m in sys.modules if m.split(".")[0] == "nemoguardrails")}))
''')


def test_a_guarded_tool_works_with_nemoguardrails_unimportable(tmp_path, guard):
    cfg = write_config(tmp_path / "lc", guard_url=guard.url, main_url=None, plugin=PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cfg)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["nemo"] == [], "nothing of NeMo Guardrails was imported"
    assert got["allowed"] == "sunny in Oslo"
    assert got["ran"] == ["get_weather"], "the blocked tool never ran"
    assert got["blocked"] == {"message": "I'm sorry, I can't run that action. The assistant's response provides "
                                         "content that the policy forbids.",
                              "direction": "tool_call", "decision": "block"}
    assert len(guard.chat_requests()) >= 3, "the call checks and the result check reached the guard"
