#!/usr/bin/env python3
"""Soak: many checks, many in flight, random injected faults. Every check must end in a decision.

Runs the plugin's NeMo action (``csr_check_input`` / ``csr_check_output``, with a real ``RailsConfig``) against the
vLLM-shaped stand-in, which runs in a *separate process* so that file descriptors, tasks and RSS measured here are
the plugin's alone. Reports decisions by kind, escaped exceptions (must be 0), per-check latency against the
deadline, open file descriptors and asyncio tasks before/after, and RSS over the first vs the last 1000 checks.

    PYTHONPATH=. COLANGPATH=. python benchmarks/soak.py --n 10000 --concurrency 256 --fault-rate 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SERVER = r"""
import sys, time
from tests.support.standin import StandIn, Fault, error_body
rate = float(sys.argv[1])
s = StandIn(latency_s=0.002, per_token_s=0.0002)
s.fault_rate = rate
s.fault_pool = [
    Fault(kind="hang"),
    Fault(kind="trickle", delay_s=0.05),
    Fault(kind="reset"),
    Fault(kind="close"),
    Fault(kind="status", status=500),
    Fault(kind="status", status=502),
    Fault(kind="status", status=503, body=error_body(503, "overloaded")),
    Fault(kind="status", status=429, headers={"Retry-After": "0.1"}, body=error_body(429, "slow down")),
    Fault(kind="status", status=400, body=error_body(400, "bad request")),
    Fault(kind="raw", body=b'{"choices": [ {"message": '),
    Fault(kind="raw", body={"id": "x", "object": "chat.completion", "choices": []}),
    Fault(kind="text", text="<think>\nThe user asks", finish_reason="length"),
    Fault(kind="text", text="Prompt harm: harmful\nPrompt harm: unharmful"),
    Fault(kind="delay", delay_s=0.5),
]
s.start()
print(s.url, flush=True)
while True:
    time.sleep(1)
    s.requests.clear(); s.headers_seen.clear()
"""


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def start_server(fault_rate: float) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(fault_rate)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if not url:
        raise RuntimeError("stand-in did not start")
    return proc, url


async def run_soak(url: str, *, n: int, concurrency: int, timeout_s: float, on_error: str = "block",
                   sample_every: int = 1) -> dict[str, Any]:
    import yaml
    from nemoguardrails import RailsConfig

    from nemo_csr_rail.actions import csr_check_input, csr_check_output
    from nemo_csr_rail.rail import reset_runtimes, runtime_for

    config = RailsConfig.from_content(yaml_content=yaml.safe_dump({
        "models": [{"type": "nemotron_csr", "engine": "vllm_openai",
                    "model": "nvidia/Nemotron-Content-Safety-Reasoning-4B", "parameters": {"base_url": url}}],
        "custom_data": {"nemo_csr_rail": {
            "timeout_s": timeout_s, "on_error": on_error, "max_concurrency": concurrency,
            "policies": {"think": {"policy": "Do not discuss politics or religion.", "reasoning": True},
                         "fast": {"policy": "Do not discuss politics or religion.", "reasoning": False}}}},
    }))
    runtime_for(config)  # build (validate) before measuring
    gc.collect()
    fds_before, tasks_before = fd_count(), len(asyncio.all_tasks())
    rss: list[int] = []
    decisions: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    escaped: list[str] = []
    counter = iter(range(n))

    async def worker() -> None:
        # A fixed pool of `concurrency` workers (no n tasks created up front, which would dominate the RSS).
        for i in counter:
            await one(i)

    async def one(i: int) -> None:
        if True:
            user = f"Request {i}: " + ("Who should I vote for?" if i % 7 == 0 else "Where is my order?")
            t0 = time.monotonic()
            try:
                if i % 3 == 2:
                    out = await csr_check_output(policy="fast" if i % 2 else "think", config=config,
                                                 context={"user_message": user,
                                                          "bot_message": "Your parcel ships today."})
                else:
                    out = await csr_check_input(policy="fast" if i % 2 else "think", config=config,
                                                context={"user_message": user})
            except BaseException as exc:  # counting what escapes is the point
                escaped.append(f"{type(exc).__name__}: {exc}")
                return
            latencies.append(time.monotonic() - t0)
            m = out.metadata
            key = f"{m.get('decision')}:" + (str(m.get("error_kind")) if m.get("failed") else "verdict")
            decisions[key] += 1
            if len(latencies) % sample_every == 0:
                rss.append(rss_kb())

    t0, cpu0 = time.monotonic(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    await runtime_for(config).aclose()
    reset_runtimes()
    await asyncio.sleep(0.2)
    gc.collect()
    fds_after, tasks_after = fd_count(), len(asyncio.all_tasks())
    k = min(1000, max(1, len(rss) // 4))
    lat = sorted(latencies)
    return {
        "n": n, "concurrency": concurrency, "timeout_s": timeout_s, "wall_s": round(wall, 2), "client_cpu_s": round(cpu, 2),
        "checks_per_s": round(n / wall, 1),
        "decided": sum(decisions.values()), "escaped": len(escaped), "escaped_examples": escaped[:3],
        "decisions": dict(sorted(decisions.items())),
        "latency_s": {"p50": round(lat[len(lat) // 2], 4), "p99": round(lat[int(len(lat) * 0.99)], 4),
                      "max": round(lat[-1], 4)} if lat else {},
        "fds_before": fds_before, "fds_after": fds_after,
        "tasks_before": tasks_before, "tasks_after": tasks_after,
        "rss_kb_first": round(statistics.mean(rss[:k])) if rss else None,
        "rss_kb_last": round(statistics.mean(rss[-k:])) if rss else None,
        "rss_window": k,
        "rss_kb_quartiles": [rss[min(len(rss) - 1, q * len(rss) // 4)] for q in range(5)] if rss else [],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--fault-rate", type=float, default=0.05)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--on-error", choices=["block", "allow"], default="block")
    a = ap.parse_args()
    proc, url = start_server(a.fault_rate)
    try:
        res = asyncio.run(run_soak(url, n=a.n, concurrency=a.concurrency, timeout_s=a.timeout, on_error=a.on_error))
    finally:
        proc.terminate()
        proc.wait(10)
    res["fault_rate"] = a.fault_rate
    print(json.dumps(res, indent=2))
    ok = (res["escaped"] == 0 and res["decided"] == a.n and res["fds_after"] <= res["fds_before"] + 2
          and res["tasks_after"] <= res["tasks_before"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
