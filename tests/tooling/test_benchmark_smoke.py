"""``benchmarks/run.py --quick`` end to end on the stand-in, so the benchmark cannot rot between measurement runs.

Nothing here is timed: it checks that every section runs, nothing errors, the same-run ratios are printed, and the
decoding plans the figures rest on hold (the server's own counters: one decoded token per reasoning-off input check,
two one-token requests per split output check, fewer decode steps than NeMo's built-in).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_runs_every_stand_in_section(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CSR_VLLM_PYTHON"}  # the real-vLLM section: not here
    env.update(PYTHONPATH=str(ROOT), COLANGPATH=str(ROOT))
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out_json),
                           "--plot", str(out_png)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("ratios (plugin / other, same run, same server)") == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads(out_json.read_text())
    assert res["vllm"] is None
    for section in ("standin", "standin_zero"):
        checks = res[section]["checks"]
        assert set(checks) == {f"{s}_{d}" for s in ("plugin", "raw", "builtin_documented")
                               for d in ("input", "output")}
        assert all(c["errors"] == 0 and c["n"] > 0 for c in checks.values()), checks
        assert checks["plugin_input"]["decode_tokens"] == 1.0 and checks["plugin_input"]["requests"] == 1.0
        assert checks["plugin_output"]["decode_tokens"] == 2.0 and checks["plugin_output"]["requests"] == 2.0
        for d in ("input", "output"):
            assert checks[f"plugin_{d}"]["decode_tokens"] < checks[f"builtin_documented_{d}"]["decode_tokens"]
        e2e = res[section]["e2e"]
        assert all(r["errors"] == 0 and r["answered"] == r["n"] for r in e2e.values()), e2e
        assert {n: sorted(p) for n, p in res[section]["policies"].items()} == {
            "1": ["safety"], "5": ["p4", "safety"], "20": ["p19", "safety"]}
    conc = res["standin"]["concurrency"]
    for system in ("plugin", "builtin"):
        assert [r["in_flight"] for r in conc[system]] == [1, 8, 64, 256]
        assert all(r["errors"] == 0 and r["checks_per_s"] > 0 for r in conc[system]), conc[system]
