"""``examples/langchain_agent.py`` runs as a user would run it (a subprocess, the guard stand-in on a socket) and
shows each case the docs promise: the benign loop answered, the harmful question, call and result refused with the
guard's reason, and the streamed answer released whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_langchain_agent_example_runs(guard, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "langchain_agent.py"), "--guard-url", guard.url],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = {s.split("\n", 1)[0]: s for s in proc.stdout.split("\n== ")[1:]}
    assert "final answer: Here is what I found: sunny in Lisbon, 21 C" in sections["a benign tool loop"]
    assert "blocked: True  side: input" in sections["a harmful question"]
    assert "blocked: True  side: tool_call" in sections[
        "a harmful tool call (the model misbehaves on a benign request)"]
    assert "blocked: True  side: tool_result" in sections["a harmful tool result"]
    assert "guard's reason: The user asks for content that the policy forbids" in sections["a harmful question"]
    assert sections["streaming (stream='hold': the answer is released once judged)"].strip().endswith(
        "[model] AIMessage: Happy to help with your trip planning.")
    assert "pipe bomb at home" not in proc.stdout
