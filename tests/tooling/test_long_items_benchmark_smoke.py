"""``benchmarks/long_items.py --quick`` end to end on the stand-in (nothing timed): every section runs, the same-run
ratios are printed, and the counts the docs rest on hold — a 1 MB tool result is 445 windows, each judged once
whatever ``max_in_flight`` is; a harmful sentence in its middle blocks under ``windows`` and stops the windows after
it, passes under the opt-in ``sample`` (4 windows, 1.2% read); past ``max_judged_chars`` nothing is sent."""

from __future__ import annotations

from tests.support.benchmark_runs import run_benchmark


def test_long_items_benchmark_runs_on_the_stand_in(tmp_path):
    stdout, res = run_benchmark(tmp_path, "long_items", "--quick", timeout=900)
    assert "ratios against one 3,000-character check (same run, same server)" in stdout
    assert res["vllm"] is None
    s = res["standin"]
    assert s["one_check_3000"]["requests"] == 1.0
    for n in (4, 16):
        m = s[f"1MB_in_flight_{n}"]
        assert (m["decision"], m["windows"], m["requests"], m["coverage"]) == ("allow", 445, 445.0, 1.0)
    assert s["size_65536"]["requests"] == s["size_65536"]["windows"] == 29
    harmful = s["harmful_middle_windows"]
    assert harmful["decision"] == "block" and harmful["requests"] < harmful["windows"] == 445
    sampled = s["harmful_middle_sample"]
    assert (sampled["decision"], sampled["windows"], sampled["requests"], sampled["coverage"]) == (
        "allow", 4, 4.0, 0.012)
    capped = s["past_the_cap"]
    assert (capped["decision"], capped["error_kind"], capped["requests"]) == ("block", "input_too_long", 0.0)
    assert s["ratios"]["1MB_in_flight_16"]["requests"] == 445.0
