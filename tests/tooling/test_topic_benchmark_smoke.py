"""``benchmarks/topic_prefix_cache.py`` end to end on the stand-in, so the script cannot rot between measurements.

Nothing is timed and the stand-in's cache model does not know layout C: this checks the conversation the script
sends (a growing history, a sliding window, the no-shared-history baseline) and that it reads the usage counters.
"""

from __future__ import annotations

import asyncio

from benchmarks.topic_prefix_cache import main_async
from tests.support.topic_prompt import split_topic_prompt


def test_prefix_cache_benchmark_sends_the_conversation(guard, capsys):
    res = asyncio.run(main_async(guard.url, guard.model, turns=6, reasoning=False))
    growing, sliding, baseline = res["cases"]
    assert [t["history_sent"] for t in growing["per_turn"]] == [0, 2, 4, 6, 8, 10]
    assert [t["history_sent"] for t in sliding["per_turn"]] == [0, 2, 4, 6, 6, 6]
    assert all(t["prompt_tokens"] > 0 for c in res["cases"] for t in c["per_turn"])
    assert "baseline" in baseline["name"] and "vs baseline" in capsys.readouterr().out
    texts = [split_topic_prompt(r["messages"][0]["content"]) for r in guard.chat_requests()]
    assert len(texts) == 19 and texts[6].history[0] == ("user", "Hi, my printer won't connect to Wi-Fi.")
    assert texts[-1].history[0][1].startswith("[turn 5] "), "the baseline shares no history between turns"
