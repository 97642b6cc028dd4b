#!/usr/bin/env python3
"""Soak: many checks, many in flight, random injected faults. Every check must end in a decision.

Runs the plugin's NeMo action (``csr_check_input`` / ``csr_check_output``, with a real ``RailsConfig``) against the
vLLM-shaped stand-in, which runs in a *separate process* so that file descriptors, tasks and RSS measured here are
the plugin's alone. Reports decisions by kind, escaped exceptions (must be 0), per-check latency against the
deadline, open file descriptors and asyncio tasks before/after, RSS over the run, and glibc's own count of heap
bytes in use vs free-but-held (which tells a leak from fragmentation).

    PYTHONPATH=. COLANGPATH=. python benchmarks/soak.py --n 10000 --concurrency 256 --fault-rate 0.05
    # the same soak with httpx's default backend (baseline) and the plugin's buffered transport, with ratios
    PYTHONPATH=. COLANGPATH=. python benchmarks/soak.py --n 100000 --compare
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import ctypes
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_kb() -> tuple[int, int]:
    """glibc's own view of the heap: (bytes in use, bytes free but still held), in KB; (-1, -1) off glibc.

    RSS alone cannot tell a leak (in-use grows) from fragmentation (free-but-held grows), which is the question
    the soak has to answer.
    """
    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return -1, -1
    fn.restype = _MallInfo2
    mi = fn()
    return (mi.uordblks + mi.hblkhd) // 1024, mi.fordblks // 1024


def malloc_trim() -> bool:
    """Ask glibc to hand free-but-held heap pages back to the OS; what RSS drops by was never live memory."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


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
                   samples: int = 200, transport: str = "buffered") -> dict[str, Any]:
    import yaml
    from nemoguardrails import RailsConfig

    from nemo_csr_rail.actions import csr_check_input, csr_check_output
    from nemo_csr_rail.rail import reset_runtimes, runtime_for

    config = RailsConfig.from_content(yaml_content=yaml.safe_dump({
        "models": [{"type": "nemotron_csr", "engine": "vllm_openai",
                    "model": "nvidia/Nemotron-Content-Safety-Reasoning-4B", "parameters": {"base_url": url}}],
        "custom_data": {"nemo_csr_rail": {
            "timeout_s": timeout_s, "on_error": on_error, "max_concurrency": concurrency,
            "http_transport": transport,
            "policies": {"think": {"policy": "Do not discuss politics or religion.", "reasoning": True},
                         "fast": {"policy": "Do not discuss politics or religion.", "reasoning": False}}}},
    }))
    runtime_for(config)  # build (validate) before measuring
    gc.collect()
    fds_before, tasks_before = fd_count(), len(asyncio.all_tasks())
    # Everything the harness keeps is allocated up front, so that any growth measured is the plugin's.
    sample_every = max(1, n // samples)
    rss: list[int] = []
    heap: list[tuple[int, int]] = []
    blocks: list[int] = []  # live Python objects' memory blocks: flat unless Python objects accumulate
    decisions: collections.Counter[str] = collections.Counter()
    over: collections.Counter[str] = collections.Counter()  # decisions of the checks that took longer than timeout_s
    latencies = array.array("d", bytes(8 * n))
    done = 0
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
            nonlocal done
            took = latencies[done] = time.monotonic() - t0
            done += 1
            m = out.metadata
            key = f"{m.get('decision')}:" + (str(m.get("error_kind")) if m.get("failed") else "verdict")
            decisions[key] += 1
            if took > timeout_s:
                over[key] += 1
            if done % sample_every == 0:
                rss.append(rss_kb())
                heap.append(malloc_kb())
                blocks.append(sys.getallocatedblocks())

    t0, cpu0 = time.monotonic(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    await runtime_for(config).aclose()
    reset_runtimes()
    await asyncio.sleep(0.2)
    gc.collect()
    fds_after, tasks_after = fd_count(), len(asyncio.all_tasks())
    rss_end, heap_end = rss_kb(), malloc_kb()
    trimmed = malloc_trim()
    rss_trimmed, heap_trimmed = rss_kb(), malloc_kb()
    k = max(1, len(rss) // 10)
    lat = sorted(latencies[:done])
    return {
        "n": n, "concurrency": concurrency, "http_transport": transport, "timeout_s": timeout_s, "wall_s": round(wall, 2), "client_cpu_s": round(cpu, 2),
        "checks_per_s": round(n / wall, 1),
        "decided": sum(decisions.values()), "escaped": len(escaped), "escaped_examples": escaped[:3],
        "decisions": dict(sorted(decisions.items())),
        "latency_s": {"p50": round(lat[len(lat) // 2], 4), "p99": round(lat[int(len(lat) * 0.99)], 4),
                      "p99.9": round(lat[min(len(lat) - 1, int(len(lat) * 0.999))], 4),
                      "max": round(lat[-1], 4)} if lat else {},
        # the deadline promise: every check ends within timeout_s, whatever the load
        "over_timeout": sum(1 for x in lat if x > timeout_s),
        "over_timeout_worst_s": round(max(0.0, lat[-1] - timeout_s), 4) if lat else 0.0,
        "over_timeout_decisions": dict(sorted(over.items())),
        "fds_before": fds_before, "fds_after": fds_after,
        "tasks_before": tasks_before, "tasks_after": tasks_after,
        "rss_kb_first": round(statistics.mean(rss[:k])) if rss else None,
        "rss_kb_last": round(statistics.mean(rss[-k:])) if rss else None,
        # warm-up (pools filling, caches, first allocations) is over after the first tenth
        "rss_kb_second_tenth": round(statistics.mean(rss[k:2 * k])) if len(rss) >= 2 * k else None,
        "rss_window_checks": k * sample_every,
        # at 0%, 10%, ..., 100% of the run
        "rss_kb_deciles": _deciles(rss),
        "heap_in_use_kb_deciles": _deciles([h[0] for h in heap]),
        "heap_free_held_kb_deciles": _deciles([h[1] for h in heap]),
        "python_blocks_deciles": _deciles(blocks),
        "end": {"rss_kb": rss_end, "heap_in_use_kb": heap_end[0], "heap_free_held_kb": heap_end[1]},
        "after_malloc_trim": {"trimmed": trimmed, "rss_kb": rss_trimmed, "heap_in_use_kb": heap_trimmed[0],
                              "heap_free_held_kb": heap_trimmed[1]},
    }


def _deciles(samples: list[int]) -> list[int]:
    return [samples[min(len(samples) - 1, q * len(samples) // 10)] for q in range(11)] if samples else []


def compare(args: list[str]) -> int:
    """Baseline (httpx's own backend) and the plugin's buffered transport, each soaked in a fresh process.

    A fresh process each, because heap fragmentation left by one run would count against the next. Prints both
    results and the ratios buffered / baseline.
    """
    runs: dict[str, dict[str, Any]] = {}
    for transport in ("httpx", "buffered"):
        out = subprocess.run([sys.executable, __file__, *args, "--transport", transport], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        runs[transport] = json.loads(out.stdout)
        runs[transport]["exit_code"] = out.returncode
    base, buf = runs["httpx"], runs["buffered"]

    def growth(r: dict[str, Any]) -> float:  # MB, mean RSS of the last tenth minus that of the second tenth
        return (r["rss_kb_last"] - r["rss_kb_second_tenth"]) / 1024

    rows = [
        ("checks/s", base["checks_per_s"], buf["checks_per_s"]),
        ("client CPU ms per check", 1000 * base["client_cpu_s"] / base["n"], 1000 * buf["client_cpu_s"] / buf["n"]),
        ("latency p50 s", base["latency_s"]["p50"], buf["latency_s"]["p50"]),
        ("latency p99 s", base["latency_s"]["p99"], buf["latency_s"]["p99"]),
        ("latency p99.9 s", base["latency_s"]["p99.9"], buf["latency_s"]["p99.9"]),
        ("latency max s", base["latency_s"]["max"], buf["latency_s"]["max"]),
        ("checks over timeout_s", base["over_timeout"], buf["over_timeout"]),
        ("RSS growth after warm-up, MB", growth(base), growth(buf)),
        ("heap free-but-held at end, MB", base["end"]["heap_free_held_kb"] / 1024, buf["end"]["heap_free_held_kb"] / 1024),
    ]
    print(json.dumps(runs, indent=2))
    print(f"\n{'':32} {'httpx (baseline)':>17} {'buffered':>10} {'ratio':>7}")
    for name, b, v in rows:
        ratio = f"{v / b:7.2f}" if b else "      -"
        print(f"{name:32} {b:17.3f} {v:10.3f} {ratio}")
    return max(r["exit_code"] for r in runs.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--fault-rate", type=float, default=0.05)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--on-error", choices=["block", "allow"], default="block")
    ap.add_argument("--transport", choices=["buffered", "httpx"], default="buffered",
                    help="the plugin's http_transport setting (httpx = httpx's default backend, the baseline)")
    ap.add_argument("--compare", action="store_true",
                    help="soak both transports, each in a fresh process, and print ratios buffered / httpx")
    a = ap.parse_args()
    if a.compare:
        argv = [x for x in sys.argv[1:] if x != "--compare"]
        sys.exit(compare(argv))
    proc, url = start_server(a.fault_rate)
    try:
        res = asyncio.run(run_soak(url, n=a.n, concurrency=a.concurrency, timeout_s=a.timeout, on_error=a.on_error,
                                   transport=a.transport))
    finally:
        proc.terminate()
        proc.wait(10)
    res["fault_rate"] = a.fault_rate
    print(json.dumps(res, indent=2))
    lat = res["latency_s"]
    print(f"check duration vs timeout_s={a.timeout:g}: p99 {lat.get('p99')} s, p99.9 {lat.get('p99.9')} s, "
          f"max {lat.get('max')} s; {res['over_timeout']} of {res['decided']} checks over timeout_s "
          f"(worst by {res['over_timeout_worst_s']} s)", file=sys.stderr)
    ok = (res["escaped"] == 0 and res["decided"] == a.n and res["fds_after"] <= res["fds_before"] + 2
          and res["tasks_after"] <= res["tasks_before"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
