"""``benchmarks/agent_rails.py`` end to end on the stand-in (nothing timed): every section runs, the same-run ratios
are printed, and the counts the docs rest on hold — a tool-call check sends exactly an output check's requests,
decode steps and prompt tokens, and N calls cost N single calls' worth of requests."""

from __future__ import annotations

from tests.support.benchmark_runs import run_benchmark


def test_agent_benchmark_runs_on_the_stand_in(tmp_path):
    stdout, res = run_benchmark(tmp_path, "agent_rails", "--repeat", "4", "--n", "3")
    assert "ratios (same run, same server)" in stdout
    assert res["vllm"] is None
    s = res["standin"]
    ratio = s["ratios"]["tool_call_vs_output_check"]
    assert ratio["requests"] == ratio["decode_tokens"] == ratio["prompt_tokens"] == 1.0
    assert s["tool_call_1"]["requests"] == 2.0  # the split output plan
    assert s["tool_calls_3_concurrent"]["requests"] == 3 * s["tool_call_1"]["requests"]
    assert s["ratios"]["tool_call_cached_share"] == s["ratios"]["output_check_cached_share"] > 0
