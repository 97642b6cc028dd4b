"""``benchmarks/coverage.py --quick`` end to end on the stand-in (nothing timed): both sections run, the same-run
ratios are printed, and the counts the docs rest on hold — with coverage: all a replayed conversation sends no more
guard requests per turn than coverage: last with the agent rails (the history comes from the cache), and a forged
history costs one request per message."""

from __future__ import annotations

from tests.support.benchmark_runs import run_benchmark


def test_coverage_benchmark_runs_on_the_stand_in(tmp_path):
    stdout, res = run_benchmark(tmp_path, "coverage", "--quick")
    assert "ratios after the first turn (same run, same server)" in stdout
    assert res["vllm"] is None
    replay, forged = res["standin"]["replay"], res["standin"]["forged"]
    assert len(replay["all"]["per_turn"]) == 4
    # turn 1: the system message is judged once more than the baselines judge
    assert replay["all"]["first_turn"]["requests"] == replay["last"]["first_turn"]["requests"] + 1
    after = {c: replay[c]["after_first"]["requests_per_turn"] for c in ("all", "last_agent", "last")}
    assert after["all"] <= after["last_agent"] and after["last"] < after["all"]
    assert forged["history"]["requests"] == forged["messages"] == 5 and forged["one"]["requests"] == 1
    assert forged["ratio_wall"] is not None
