"""``benchmarks/streaming.py --quick`` end to end on the stand-ins, so the streaming benchmark cannot rot between
measurement runs. Nothing here is timed: every variant streams its answers without error, the report prints the
same-run ratios, and the check counts follow from the chunk settings (the figures docs/performance.md quotes come
from the real-vLLM run, never from here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_streaming_benchmark_runs_every_variant(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CSR_VLLM_PYTHON"}
    env.update(PYTHONPATH=str(ROOT), COLANGPATH=str(ROOT))
    out, js = tmp_path / "report.txt", tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--quick", "--out", str(out), "--json",
                           str(js)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    report = out.read_text()
    assert "ratios (x) against the no-rail baseline of the same run" in report
    assert "reasoning off vs on" in report
    res = json.loads(js.read_text())
    summary = res["summary"]
    assert list(summary) == ["no_rail", "chunk8_first_false", "chunk8_first_true", "chunk16_first_false",
                             "chunk16_first_true"]
    assert all(r["n"] == 1 and r["errors"] == 0 and r["chunks"] == 40 for r in summary.values()), summary
    assert all(r["text"] for r in res["runs"])
    # 40 tokens, context 2: chunk 8 releases 8, then 6 per check (8+6*5=38, +2) = 7; chunk 16: 16, 14, 10 = 3
    assert [summary[f"chunk{c}_first_{f}"]["chunk_checks_per_request"] for c in (8, 16)
            for f in ("false", "true")] == [7, 7, 3, 3]
    assert all(summary[n]["whole_answer_checks_per_request"] == 1 for n in summary if n != "no_rail")
    assert res["reasoning"]["off"]["completion_tokens"] != res["reasoning"]["on"]["completion_tokens"]


def test_without_vllm_and_without_quick_it_says_what_is_missing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CSR_VLLM_PYTHON"}
    env.update(PYTHONPATH=str(ROOT), COLANGPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.streaming"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--vllm-python" in proc.stderr
