"""benchmarks/escalate.py runs, and on the stand-in escalate costs what the issue asks (token counts, not timing)."""

from __future__ import annotations

import asyncio

from benchmarks import escalate
from benchmarks.servers import StandInProcess


def test_escalate_benchmark_on_the_standin() -> None:
    with StandInProcess(**escalate.STANDIN_MODEL) as standin:
        res = asyncio.run(escalate.section("smoke", standin.url, 20, reasoning_max_tokens=384, timeout_s=30))
    for direction, per_request in (("input", 1), ("output", 2)):  # the split output plan: two one-token requests
        r = res[direction]
        assert all(m["errors"] == 0 and m["checks"] == 20 for m in r.values())
        assert r["escalate"]["benign_max_tokens"] == per_request == r["reasoning off"]["benign_max_tokens"]
        assert r["escalate"]["escalation_rate"] == r["escalate"]["harmful_rate"] == 0.05
        assert r["escalate"]["mean_tokens"] <= 0.15 * r["reasoning on"]["mean_tokens"]
        assert r["reasoning on"]["escalation_rate"] == 0
