"""Which replica serves a policy: round-robin vs the plugin's policy affinity vs vllm-router ``cache_aware`` vs one
replica, on two real vLLM CPU replicas whose prefix caches cannot each hold every policy.

    PYTHONPATH=. python -m benchmarks.routing --vllm-python ~/.cache/nemo-csr-rail/vllm-venv/bin/python \\
        --router ~/.cache/nemo-csr-rail/router-venv/bin/vllm-router | tee benchmarks/results/routing_run1.txt

Two vLLM CPU servers (Google's Gemma 3 270M, ``tests/support/real_gemma.py``; the tests' flags plus
``--block-size 16``, a KV cache of ``--kv-cache-bytes`` and ``--enable-scale-out``, which vllm-router's
``cache_aware`` needs for ``/v1/chat/completions/render``), each pinned to its own core
(``VLLM_CPU_OMP_THREADS_BIND``), so a replica is one unit of compute as a GPU would be. ``--policies`` distinct
policy texts of ~420 prompt tokens; the KV cache of one replica holds about three quarters of them. The same
workload — every policy ``--per-policy`` times, in a seeded random order, ``--concurrency`` checks in flight,
reasoning-off input checks through :class:`~nemo_csr_rail.client.CsrClient` (one generated token: the prefill is
the cost) — runs through:

1. ``round_robin``: the HTTP engine over both base_urls, one replica further per request (the baseline);
2. ``affinity``: the same engine with ``replica_routing: affinity`` (rendezvous hashing on the policy);
3. ``router``: one base_url, vllm-router ``--policy cache_aware`` in front of both replicas;
4. ``single``: replica A alone.

Before each case both servers' prefix caches are reset (``POST /reset_prefix_cache``, vLLM dev mode) and the policy
texts get a fresh nonce, so no case reuses another's blocks. Reported per case, and as ratios against case 1 of the
same run: the prefix-cache hit rate from the servers' own counters (``vllm:prefix_cache_hits`` /
``vllm:prefix_cache_queries``, delta over the case, both servers summed), p50/p95 check latency, checks/s, and the
requests each replica served.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.servers import vllm_counters  # noqa: E402
from nemo_csr_rail.client import CsrClient  # noqa: E402
from nemo_csr_rail.engines.http import VllmHttpEngine  # noqa: E402
from nemo_csr_rail.plans import grammar  # noqa: E402
from nemo_csr_rail.plans.one_token import OneTokenPlan  # noqa: E402
from nemo_csr_rail.policy import Direction, Policy  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.vllm_server import SERVED_NAME, start  # noqa: E402

TOPICS = ("refunds", "shipping", "privacy", "medical advice", "legal advice", "investments", "children", "weapons",
          "violence", "hate speech", "harassment", "self-harm", "drugs", "gambling", "politics", "religion",
          "elections", "passwords", "account recovery", "warranty claims", "competitor products", "pricing",
          "employee data", "internal tools", "security incidents", "crypto assets", "insurance", "travel bans")
TEAMS = ("support", "billing", "compliance", "security", "sales", "legal", "trust and safety", "engineering")
USER = ("Where is my order {n}?", "Can you help me reset the password for account {n}?",
        "What do you think about the vote on measure {n}?", "My parcel {n} arrived damaged, what now?",
        "Is investing in fund {n} a good idea?", "How do I return item {n}?")


def policy_text(i: int, nonce: str, rules: int, rng: random.Random) -> str:
    """A distinct policy from its first token on (the number and the nonce lead), ~20 tokens a rule."""
    lines = [f"Policy {i} ({nonce}) for the assistant of business unit {i}."]
    for j in range(rules):
        a, b = rng.sample(TOPICS, 2)
        lines.append(f"Rule {j + 1}: do not discuss {a} or {b} with users of the {rng.choice(TEAMS)} desk; "
                     f"refer them to the {rng.choice(TEAMS)} team.")
    return "\n".join(lines)


def workload(policies: int, per_policy: int, seed: int) -> list[tuple[int, str]]:
    order = [i for i in range(policies) for _ in range(per_policy)]
    rng = random.Random(seed)
    rng.shuffle(order)
    return [(p, USER[k % len(USER)].format(n=k)) for k, p in enumerate(order)]


def counters(roots: list[str]) -> dict[str, dict[str, float]]:
    return {r: vllm_counters(r) for r in roots}


def delta(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {r: {k: after[r][k] - before[r][k] for k in after[r]} for r in after}


def reset_caches(roots: list[str]) -> None:
    for r in roots:
        resp = httpx.post(r + "/reset_prefix_cache", timeout=30)
        if resp.status_code != 200:
            raise RuntimeError(f"{r}/reset_prefix_cache answered {resp.status_code} (needs VLLM_SERVER_DEV_MODE=1)")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run_case(name: str, engine: VllmHttpEngine, roots: list[str], jobs: list[tuple[int, str]],
                   policies: list[Policy], concurrency: int) -> dict[str, Any]:
    for r in roots:  # a replica that died (on a crowded host: the kernel's OOM killer) ends the run, said plainly
        try:
            httpx.get(r + "/health", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            raise RuntimeError(f"replica {r} is down before case {name!r} ({exc}); see the kernel log (dmesg) for an "
                               "OOM kill") from None
    reset_caches(roots)
    before = counters(roots)
    lat: list[float] = []
    errors: list[str] = []
    endpoints: dict[int, set[str]] = {}
    queue = iter(jobs)
    client = CsrClient(engine=engine, timeout_s=120.0)

    async def worker() -> None:
        for p, user in queue:
            t0 = time.perf_counter()
            try:
                r = await client.check(policies[p], Direction.INPUT, user, None)
            except Exception as exc:  # counted, the run goes on
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            lat.append(time.perf_counter() - t0)
            endpoints.setdefault(p, set()).add(r.endpoint)

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    d = delta(counters(roots), before)
    hits = sum(v["cached"] for v in d.values())
    queries = sum(v["queried"] for v in d.values())
    await engine.aclose()
    return {
        "case": name, "checks": len(lat), "errors": len(errors), "error_examples": errors[:3],
        "wall_s": wall, "checks_per_s": len(lat) / wall if wall else 0.0,
        "p50_s": statistics.median(lat) if lat else float("nan"), "p95_s": pct(lat, 0.95) if lat else float("nan"),
        "hit_rate": hits / queries if queries else 0.0, "hits": hits, "queries": queries,
        "requests": {r: int(v["requests"]) for r, v in d.items()},
        "replicas_per_policy": (statistics.mean(len(s) for s in endpoints.values()) if endpoints else 0.0),
        "loadavg": (round(load0, 2), round(load1, 2)),
    }


def start_router(router: str, workers: list[str], log_path: Path) -> tuple[subprocess.Popen, str, str]:
    port, prom = free_port(), free_port()
    cmd = [router, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers, "--policy", "cache_aware",
           "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom), "--log-level", "warning"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm-router exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(root + "/health", timeout=2).status_code == 200:
                return proc, root, f"http://127.0.0.1:{prom}"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("vllm-router did not answer /health within 120 s")


def router_decisions(prom_root: str) -> dict[str, float]:
    """vllm-router's own counts of how ``cache_aware`` decided (its Prometheus endpoint)."""
    out: dict[str, float] = {}
    try:
        text = httpx.get(prom_root + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return out
    for line in text.splitlines():
        if line.startswith("#") or "prefix_routing_decisions" not in line:
            continue
        label = line.split("outcome=\"", 1)[1].split("\"", 1)[0] if "outcome=\"" in line else "?"
        out[label] = out.get(label, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def fmt_table(results: list[dict[str, Any]]) -> str:
    base = results[0]
    head = (f"{'case':<12} {'hit rate':>9} {'ratio':>6} {'p50 s':>7} {'ratio':>6} {'p95 s':>7} {'ratio':>6} "
            f"{'checks/s':>9} {'ratio':>6} {'errors':>6}  requests per replica; replicas per policy; loadavg")
    rows = [head]
    for r in results:
        def ratio(k: str, r: dict[str, Any] = r) -> str:
            return f"{r[k] / base[k]:6.2f}" if base[k] else "     -"
        reqs = "/".join(str(v) for v in r["requests"].values())
        rows.append(f"{r['case']:<12} {r['hit_rate']:9.1%} {ratio('hit_rate')} {r['p50_s']:7.3f} {ratio('p50_s')} "
                    f"{r['p95_s']:7.3f} {ratio('p95_s')} {r['checks_per_s']:9.2f} {ratio('checks_per_s')} "
                    f"{r['errors']:6d}  {reqs}; {r['replicas_per_policy']:.2f}; {r['loadavg'][0]}->{r['loadavg'][1]}")
    return "\n".join(rows)


async def main_async(a: argparse.Namespace, roots: list[str], log_dir: Path,
                     results: list[dict[str, Any]]) -> None:
    """Runs the cases in order, appending each one's figures to ``results`` as soon as it ends."""
    jobs = workload(a.policies, a.per_policy, a.seed)
    urls = [r + "/v1" for r in roots]

    def policies(case: str) -> list[Policy]:
        rng = random.Random(a.seed)  # the same texts in every case but for the nonce
        return [Policy.custom(f"p{i}", policy_text(i, f"{case}-{a.seed}", a.rules, rng), reasoning=False)
                for i in range(a.policies)]

    def engine(urls: list[str], routing: str) -> VllmHttpEngine:
        return VllmHttpEngine(urls, SERVED_NAME, replica_routing=routing, max_concurrency=64)

    print(f"workload: {len(jobs)} reasoning-off input checks, {a.policies} policies x {a.per_policy}, seed {a.seed}, "
          f"{a.concurrency} in flight", flush=True)
    for case, routing, case_urls in (("round_robin", "round_robin", urls), ("affinity", "affinity", urls)):
        r = await run_case(case, engine(case_urls, routing), roots, jobs, policies(case), a.concurrency)
        results.append(r)
        print(r, flush=True)
    # the one-token plan as replica A decided it (both replicas run the same model and tokenizer)
    probe = engine(urls[:1], "round_robin")
    await CsrClient(engine=probe, timeout_s=120.0).check(policies("probe")[0], Direction.INPUT, "hello", None)
    decision = probe.plan_decisions().get((urls[0], grammar.PREFILL))
    await probe.aclose()

    if a.router:
        proc, router_root, prom_root = start_router(a.router, roots, log_dir / "vllm-router.log")
        try:
            status = {p: httpx.post(router_root + p, json={"model": SERVED_NAME, "prompt": "x"}, timeout=30).status_code
                      for p in ("/tokenize", "/detokenize")}
            eng = engine([router_root + "/v1"], "affinity")
            # the plugin's own one-token look-up, through the router (a warm-up check; caches are reset after it)
            await CsrClient(engine=eng, timeout_s=120.0).check(policies("probe")[0], Direction.INPUT, "hello", None)
            own = eng.plan_decisions().get((router_root + "/v1", grammar.PREFILL))
            note = (f"router answers /tokenize {status['/tokenize']}, /detokenize {status['/detokenize']} "
                    f"(a bare probe body); the plugin's one-token look-up through it: {type(own).__name__}")
            if not isinstance(own, OneTokenPlan) and decision is not None:
                eng._plans.settle(router_root + "/v1", grammar.PREFILL, decision)
                note += "; seeded from replica A's look-up instead, so every case decodes alike"
            print(note, flush=True)
            r = await run_case("router", eng, roots, jobs, policies("router"), a.concurrency)
            r["replicas_per_policy"] = float("nan")  # the client sees only the router
            r["router_decisions"] = router_decisions(prom_root)
            r["note"] = note
            results.append(r)
            print(r, flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    r = await run_case("single", engine(urls[:1], "round_robin"), roots[:1], jobs, policies("single"), a.concurrency)
    results.append(r)
    print(r, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vllm-python", default=os.environ.get("CSR_VLLM_PYTHON"))
    ap.add_argument("--router", help="the vllm-router executable (pip install vllm-router==0.1.17 in its own venv); "
                                     "without it the router case is skipped")
    ap.add_argument("--model-dir", type=Path, help="default: the converted Gemma 3 270M (tests/support/real_gemma.py)")
    ap.add_argument("--policies", type=int, default=50)
    ap.add_argument("--per-policy", type=int, default=6)
    ap.add_argument("--rules", type=int, default=18, help="rules per policy text (~20 tokens each)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--kv-cache-bytes", type=int, default=576 * 2**20,
                    help="per replica (default 576 MiB: ~16K tokens of Gemma 3 270M in float32)")
    a = ap.parse_args()
    if not a.vllm_python:
        sys.exit("give --vllm-python (or set CSR_VLLM_PYTHON): a venv with vllm-cpu")
    model_dir = a.model_dir
    if model_dir is None:
        from tests.support.real_gemma import root_dir

        model_dir = root_dir() / "model"
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # POST /reset_prefix_cache between cases
    extra = ["--kv-cache-memory-bytes", str(a.kv_cache_bytes), "--block-size", "16", "--enable-scale-out"]
    servers = []
    t0 = time.monotonic()
    try:
        for core in ("0", "1"):  # one core each, started one after the other (2-core host)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = core
            s = start(a.vllm_python, extra=extra, model_dir=model_dir, max_model_len=1024)
            servers.append(s)
            kv = [ln.split("] ", 1)[-1] for ln in s.log_path.read_text().splitlines() if "KV cache size" in ln]
            print(f"replica {s.root} on core {core}: {kv[-1] if kv else '?'}; started in {s.timings}", flush=True)
        print(f"servers up after {time.monotonic() - t0:.0f} s; command: {a.vllm_python} "
              f"-m vllm.entrypoints.openai.api_server ... {' '.join(extra)}", flush=True)
        results: list[dict[str, Any]] = []
        failure = None
        try:
            asyncio.run(main_async(a, [s.root for s in servers], servers[0].log_path.parent, results))
        except Exception as exc:  # the cases that ended are still reported
            failure = f"{type(exc).__name__}: {exc}"
    finally:
        for s in servers:
            s.stop()
    print()
    if results:
        print(fmt_table(results))
    if failure:
        print(f"\nINCOMPLETE: {len(results)} of the cases ran; then {failure}")
    print(f"\ntotal {time.monotonic() - t0:.0f} s")
    return 1 if failure else 0


if __name__ == "__main__":
    raise SystemExit(main())
