"""``benchmarks/agent_middleware.py --quick`` end to end on the stand-in (nothing timed is asserted): every section
runs and the counts the docs rest on hold — a 5-step loop's guard requests are one check per new message (the
question, four calls, four results, the answer; reasoning off, so the answer and each call take the split output
plan's two requests), whatever the history the middleware judges at each step."""

from __future__ import annotations

from tests.support.benchmark_runs import run_benchmark


def test_agent_middleware_benchmark_quick(tmp_path):
    stdout, res = run_benchmark(tmp_path, "agent_middleware", "--quick")
    assert "middleware's own" in stdout
    assert res["vllm"] is None and "standin_latency_model" not in res
    assert res["in_process_zero_latency"]["checks_per_run"] == 10.0
    s = res["standin_zero_latency"]
    assert s["guard_requests_per_run"] == 1 + 4 * 2 + 4 + 2
    assert s["steps"] == 5 and s["guarded_wall_ms"] > 0 and s["bare_wall_ms"] > 0
