"""``benchmarks/agent_middleware.py --quick`` end to end on the stand-in (nothing timed is asserted): every section
runs and the counts the docs rest on hold — a 5-step loop's guard requests are one check per new message (the
question, four calls, four results, the answer; reasoning off, so the answer and each call take the split output
plan's two requests), whatever the history the middleware judges at each step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_agent_middleware_benchmark_quick(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CSR_VLLM_PYTHON"}
    env.update(PYTHONPATH=str(ROOT))
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.agent_middleware", "--quick", "--json", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "middleware's own" in proc.stdout and "Traceback" not in proc.stderr
    res = json.loads(out.read_text())
    assert res["vllm"] is None and "standin_latency_model" not in res
    assert res["in_process_zero_latency"]["checks_per_run"] == 10.0
    s = res["standin_zero_latency"]
    assert s["guard_requests_per_run"] == 1 + 4 * 2 + 4 + 2
    assert s["steps"] == 5 and s["guarded_wall_ms"] > 0 and s["bare_wall_ms"] > 0
