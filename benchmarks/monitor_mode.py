"""mode: monitor vs enforce: a monitored check must not delay the turn more than an enforced one.

    python -m benchmarks.monitor_mode [--n 400] [--rounds 3]

The same policy twice in one config, one `mode: monitor`, one enforced, checked through the rails' runtime
(``RailRuntime.check``, the per-message check the actions run for each judged message) against the vLLM-shaped stand-in in its own process (assumed GPU-like
serving costs, benchmarks/run.py), on a 95% benign / 5% harmful input mix, alternating the two modes request by
request so drift hits both alike. Prints p50/p95/mean per mode and monitor/enforce ratios, per round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.escalate import POLICY, STANDIN_MODEL, pct, rows  # noqa: E402
from benchmarks.servers import StandInProcess  # noqa: E402
from nemo_csr_rail.policy import Direction  # noqa: E402
from nemo_csr_rail.rail import reset_runtimes  # noqa: E402
from tests.support.runtime import runtime  # noqa: E402


async def one_round(url: str, n: int) -> dict[str, list[float]]:
    reset_runtimes()
    rt = runtime(url, timeout_s=10, policies={"enforced": {"policy": POLICY, "reasoning": False},
                                              "monitored": {"policy": POLICY, "reasoning": False,
                                                            "mode": "monitor"}})
    await rt.check("enforced", Direction.INPUT, "warm-up")
    await rt.check("monitored", Direction.INPUT, "warm-up")
    times: dict[str, list[float]] = {"enforced": [], "monitored": []}
    for user, _, _ in rows(n):
        for name in ("enforced", "monitored") if len(times["enforced"]) % 2 == 0 else ("monitored", "enforced"):
            t0 = time.perf_counter()
            out = await rt.check(name, Direction.INPUT, user)
            times[name].append((time.perf_counter() - t0) * 1000)
            assert not out.metadata["failed"], out.metadata
    await rt.aclose()
    return times


async def main_async(n: int, rounds: int) -> None:
    with StandInProcess(**STANDIN_MODEL) as standin:
        print(f"{n} input checks per mode and round, alternating; stand-in with assumed GPU-like costs")
        print(f"{'round':>5} {'enforce p50':>11} {'monitor p50':>11} {'ratio':>6} {'enforce p95':>11} "
              f"{'monitor p95':>11} {'ratio':>6} {'mean ratio':>10}")
        for r in range(rounds):
            t = await one_round(standin.url, n)
            e, m = t["enforced"], t["monitored"]
            print(f"{r + 1:5d} {pct(e, .5):11.2f} {pct(m, .5):11.2f} {pct(m, .5) / pct(e, .5):6.3f} "
                  f"{pct(e, .95):11.2f} {pct(m, .95):11.2f} {pct(m, .95) / pct(e, .95):6.3f} "
                  f"{statistics.fmean(m) / statistics.fmean(e):10.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    asyncio.run(main_async(a.n, a.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
