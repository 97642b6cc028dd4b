"""What telemetry adds to a guard check: the same checks with telemetry fully on and off, in one run.

    python -m benchmarks.telemetry_overhead [--checks 4000] [--rounds 10] [--engine inprocess|standin]

"On" is everything the ``telemetry`` section can turn on: the Prometheus endpoint (serving), the audit log with
``audit_include_text: true`` (records written by its thread while the checks run), and the ``csr.check`` span with
``traceparent`` — first through the OpenTelemetry API alone (no SDK: what an application without tracing pays),
then, as a separate row, with the OpenTelemetry SDK installed and recording every span (SimpleSpanProcessor into a
discarding exporter: span creation and attributes, no network).

Engines: ``inprocess`` (default) answers each request at once without a network, so the timing is the plugin's
own path and a few microseconds are visible; it reports to the telemetry hook exactly as the HTTP engine does per
request (trace headers, one attempt report). ``standin`` sends real HTTP to the vLLM-shaped stand-in in its own
process (noisier: the socket round trip is ~100x the telemetry cost). Off and on alternate in rounds, each round
starting with the other one, so drift (CPU frequency, other load) hits both alike. No timed assertions anywhere:
this prints figures for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nemo_csr_rail.completion import Attempt, Completion  # noqa: E402
from nemo_csr_rail.policy import Direction  # noqa: E402
from nemo_csr_rail.prompt import GuardPrompt  # noqa: E402
from nemo_csr_rail.rail import RailRuntime  # noqa: E402
from nemo_csr_rail.settings import resolve  # noqa: E402

GUARD_MODEL = "nvidia/Nemotron-Content-Safety-Reasoning-4B"
POLICY = "Only help with orders, returns, shipping and products of our shop. Do not discuss politics or religion."


class InProcessEngine:
    """Answers 'unharmful' at once (reasoning off, prefilled), calling the telemetry hook as the HTTP engine does."""

    name = "inprocess"

    def __init__(self) -> None:
        self.instrument: Any = None
        self.model = GUARD_MODEL

    async def complete(self, prompt: GuardPrompt, *, timeout_s: float) -> Completion:
        instrument = self.instrument
        if instrument is not None:
            instrument.request_headers()
        t0 = time.perf_counter()
        out = Completion(text=" unharmful", finish_reason="stop", prompt_tokens=180, completion_tokens=1,
                         cached_tokens=160, endpoint="inprocess")
        if instrument is not None:
            instrument.attempt(Attempt("inprocess", "200", time.perf_counter() - t0, False, "closed", "closed"))
        return out

    def breaker_states(self) -> dict[str, str]:
        return {"inprocess": "closed"}

    async def aclose(self) -> None:
        pass


def rails_config(url: str, telemetry: dict[str, Any] | None) -> Any:
    import yaml
    from nemoguardrails import RailsConfig

    plugin: dict[str, Any] = {"policies": {"shop": {"policy": POLICY, "reasoning": False}}}
    if telemetry is not None:
        plugin["telemetry"] = telemetry
    cfg = {"models": [{"type": "nemotron_csr", "engine": "vllm_openai", "model": GUARD_MODEL,
                       "parameters": {"base_url": url}}], "custom_data": {"nemo_csr_rail": plugin}}
    return RailsConfig.from_content(yaml_content=yaml.safe_dump(cfg))


def build(url: str, telemetry: dict[str, Any] | None, engine: str) -> RailRuntime:
    cfg = rails_config(url, telemetry)
    engines = {"nemotron_csr": InProcessEngine()} if engine == "inprocess" else None
    return RailRuntime(resolve(cfg), cfg, engines=engines)


async def timed(rt: RailRuntime, n: int, offset: int) -> list[float]:
    out = []
    for i in range(n):
        text = f"[{offset + i}] Where is my order? It was due on Monday."
        t0 = time.perf_counter()
        res = await rt.check("shop", Direction.INPUT, text)
        out.append(time.perf_counter() - t0)
        if res.metadata.get("failed"):
            raise RuntimeError(f"check failed: {res.metadata}")
    return out


async def compare(off: RailRuntime, on: RailRuntime, checks: int, rounds: int) -> tuple[list[float], list[float]]:
    await timed(off, 200, 0)  # warm-up: connections, caches, first-call imports
    await timed(on, 200, 0)
    lat_off: list[float] = []
    lat_on: list[float] = []
    per_round = max(1, checks // rounds)
    for r in range(rounds):
        order = [(off, lat_off), (on, lat_on)] if r % 2 == 0 else [(on, lat_on), (off, lat_off)]
        for rt, sink in order:
            gc.collect()
            sink += await timed(rt, per_round, r * per_round)
    return lat_off, lat_on


def row(label: str, off: list[float], on: list[float]) -> dict[str, Any]:
    p50_off, p50_on = statistics.median(off) * 1e6, statistics.median(on) * 1e6
    mean_off, mean_on = statistics.fmean(off) * 1e6, statistics.fmean(on) * 1e6
    return {"variant": label, "checks": len(on), "p50_off_us": round(p50_off, 1), "p50_on_us": round(p50_on, 1),
            "p50_added_us": round(p50_on - p50_off, 1), "p50_ratio": round(p50_on / p50_off, 3),
            "mean_added_us": round(mean_on - mean_off, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=4000, help="checks per variant (default 4000)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--engine", choices=["inprocess", "standin"], default="inprocess")
    args = ap.parse_args(argv)

    from tests.support.net import free_port

    server = None
    url = "http://127.0.0.1:9/v1"
    if args.engine == "standin":
        from benchmarks.servers import StandInProcess

        server = StandInProcess().start()
        url = server.url
    tmp = tempfile.mkdtemp(prefix="csr-telemetry-bench-")
    telemetry = {"prometheus_port": free_port(), "audit_log": os.path.join(tmp, "audit.jsonl"),
                 "audit_include_text": True}
    rows = []
    try:
        off = build(url, None, args.engine)
        on = build(url, telemetry, args.engine)
        rows.append(row("metrics + audit (with text) + spans, OTel API without SDK",
                        *asyncio.run(compare(off, on, args.checks, args.rounds))))

        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Discard()))
        trace.set_tracer_provider(provider)
        rows.append(row("the same + OTel SDK recording every span",
                        *asyncio.run(compare(off, on, args.checks, args.rounds))))
        assert on.telemetry.audit is not None and on.telemetry.audit.flush(30)
        audited = on.telemetry.audit.written
    finally:
        if server is not None:
            server.stop()
    print(f"engine: {args.engine}; {args.checks} checks per variant in {args.rounds} alternating rounds; "
          f"audit records written: {audited}; python {sys.version.split()[0]}")
    print(f"{'variant':60s} {'p50 off µs':>11s} {'p50 on µs':>10s} {'added µs':>9s} {'ratio':>6s} {'mean added':>10s}")
    for r in rows:
        print(f"{r['variant']:60s} {r['p50_off_us']:11.1f} {r['p50_on_us']:10.1f} {r['p50_added_us']:9.1f} "
              f"{r['p50_ratio']:6.3f} {r['mean_added_us']:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
