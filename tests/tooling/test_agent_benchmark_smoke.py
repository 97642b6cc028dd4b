"""``benchmarks/agent_rails.py`` end to end on the stand-in (nothing timed): every section runs, the same-run ratios
are printed, and the counts the docs rest on hold — a tool-call check sends exactly an output check's requests,
decode steps and prompt tokens, and N calls cost N single calls' worth of requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_agent_benchmark_runs_on_the_stand_in(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CSR_VLLM_PYTHON"}
    env.update(PYTHONPATH=str(ROOT), COLANGPATH=str(ROOT))
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.agent_rails", "--repeat", "4", "--n", "3",
                           "--json", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ratios (same run, same server)" in proc.stdout and "Traceback" not in proc.stderr
    res = json.loads(out.read_text())
    assert res["vllm"] is None
    s = res["standin"]
    ratio = s["ratios"]["tool_call_vs_output_check"]
    assert ratio["requests"] == ratio["decode_tokens"] == ratio["prompt_tokens"] == 1.0
    assert s["tool_call_1"]["requests"] == 2.0  # the split output plan
    assert s["tool_calls_3_concurrent"]["requests"] == 3 * s["tool_call_1"]["requests"]
    assert s["ratios"]["tool_call_cached_share"] == s["ratios"]["output_check_cached_share"] > 0
