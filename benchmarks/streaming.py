"""Streaming output rails: what the chunk checks cost a stream, and whether they keep up with generation.

    python -m benchmarks.streaming [--vllm-python PY] [--n 3] [--max-tokens 192] [--chunk-sizes 32,128]
        [--context-size 8] [--out benchmarks/results/streaming_runN.txt] [--json FILE]
    python -m benchmarks.streaming --quick      # smoke run on the stand-ins: no vLLM, the figures mean nothing

Real mode starts two vLLM CPU servers (tests/support/vllm_server.py), both serving Google's Gemma 3 270M
(tests/support/real_gemma.py: real tokenizer, trained weights): the MAIN model, which streams the answers, bound to
core 0, and the GUARD, bound to core 1, so a check and the generation it races run side by side as they would on
two accelerators. The main model is the 270M rather than the tiny random Gemma-3 because the question is how fast
checks run *relative to generation*: the tiny model writes tokens far faster than any real model, the 270M at the
speed of a real (small) model on this host. Every answer is ``--max-tokens`` tokens long (``min_tokens`` on the main
model masks its end-of-turn tokens until then), so every variant streams about the same amount of text.

All requests go through one ``nemoguardrails server`` process (the path users stream through, with the OpenAI SDK
and ``stream=True``), one config folder per variant:

* baseline: no rails (measured in the same run, request by request interleaved with the others);
* the csr output rail with ``rails.output.streaming`` on, for ``stream_first`` false and true and each chunk size.

The output policy has reasoning off (docs/streaming.md) and ``threshold: 1.0``: the base model's verdicts mean
nothing, and a block would end a stream early and make the timings incomparable, so no verdict blocks; each check
sends and decodes exactly what it would otherwise. Per request: time to the first token (TTFT) and to the end of
the stream, at the client. Per check: latency and judged text from the plugin's audit log. "Keeps up" compares a
chunk check's latency with the time the main model takes to write the chunk_size - context_size new deltas a check
releases (the baseline's time between stream deltas, same run; NeMo counts a chunk in deltas, one token each
unless vLLM's API server falls behind its engine and merges several). A last section times single output checks with reasoning
off and on, directly against the guard server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("COLANGPATH", str(ROOT))  # import_paths: [nemo_csr_rail] from this checkout
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import openai  # noqa: E402
import yaml  # noqa: E402

from tests.support.guardrails_server import guardrails_server  # noqa: E402
from tests.support.standin import StandIn, tokenize  # noqa: E402

GUARD_MODEL = "nvidia/Nemotron-Content-Safety-Reasoning-4B"
MAIN_MODEL = "main-llm"
POLICY = ("You are guarding the assistant of an online electronics store. The assistant must not discuss religion "
          "or politics in any form. Questions about products, orders, shipping, returns and store policies are "
          "allowed.")
TOPICS = ("birthday dinner", "hiking trip", "team offsite", "garden makeover", "book club", "weekend in Lisbon",
          "science fair project", "kitchen renovation", "charity run", "family reunion", "piano recital")
# NeMo's general prompt stops the main model at "User:", and the base model, echoing its prompt, writes that after
# ~60 tokens (NeMo then drops the rest of the stream while vLLM, held by min_tokens, goes on): a request's `stop`
# replaces NeMo's, for every variant alike
NEVER = "<<no stop string>>"
# nemoguardrails server logs every event at INFO (~15 KB a turn); the config's config.py turns that down, as
# docs/operations.md recommends, so the log does not cost the measured server CPU
QUIET = 'import logging\n\nlogging.getLogger("nemoguardrails").setLevel(logging.WARNING)\n'


def user_msg(i: int) -> str:
    t = TOPICS[i % len(TOPICS)]
    return f"[{i}] Could you help me plan a {t} for {3 + i % 9} people next month? Please describe the plan."


# ------------------------------------------------------------------------------------------------- configs
def variants(chunk_sizes: list[int]) -> list[tuple[str, dict[str, Any] | None]]:
    out: list[tuple[str, dict[str, Any] | None]] = [("no_rail", None)]
    for size in chunk_sizes:
        for first in (False, True):
            out.append((f"chunk{size}_first_{str(first).lower()}", {"chunk_size": size, "stream_first": first}))
    return out


def write_config(path: Path, *, main_url: str, guard_url: str, streaming: dict[str, Any] | None,
                 max_tokens: int, audit: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    main = {"type": "main", "engine": "openai", "model": MAIN_MODEL,
            "parameters": {"base_url": main_url, "api_key": "x", "max_retries": 0, "temperature": 0,
                           # forwarded to vLLM as a sampling parameter: no end-of-turn before max_tokens tokens
                           # (ignore_eos would let it write invisible <eos> tokens instead)
                           "min_tokens": max_tokens}}
    cfg: dict[str, Any] = {"models": [main]}
    if streaming is not None:
        cfg["import_paths"] = ["nemo_csr_rail"]
        cfg["models"].append({"type": "nemotron_csr", "engine": "vllm_openai", "model": GUARD_MODEL,
                              "parameters": {"base_url": guard_url}})
        cfg["custom_data"] = {"nemo_csr_rail": {
            "timeout_s": 120, "max_retries": 0,
            "policies": {"retail": {"policy": POLICY, "reasoning": False, "threshold": 1.0}},
            "telemetry": {"audit_log": str(audit), "audit_include_text": True}}}
        cfg["rails"] = {"output": {"flows": ['csr check output $policy="retail"'],
                                   "streaming": {"enabled": True, **streaming}}}
    (path / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (path / "config.py").write_text(QUIET)
    return path


# ------------------------------------------------------------------------------------------------- servers
class PacedStandIn(StandIn):
    """The scripted main model streaming at ``per_token_s`` a token, from the first token on (the base stand-in
    also waits for the whole answer's decode time before it starts a stream)."""

    def _answer(self, body: dict[str, Any], path: str) -> tuple[dict[str, Any], int, int]:
        payload, n_prompt, n_out = super()._answer(body, path)
        return payload, n_prompt, 0 if body.get("stream") else n_out


def standin_answer(max_tokens: int) -> Any:
    """An answer of exactly ``max_tokens`` tokens (what min_tokens makes the real model write)."""
    sentence = " Pick a date early, book a quiet venue, plan two simple dishes and keep a small reserve."
    toks = tokenize((sentence * (max_tokens // 4 + 1)).strip())[:max_tokens]
    return lambda body: "".join(toks)


@contextlib.contextmanager
def standin_servers(max_tokens: int) -> Iterator[dict[str, Any]]:
    with StandIn(latency_s=0.02) as guard, \
            PacedStandIn(model=MAIN_MODEL, responder=standin_answer(max_tokens), max_model_len=1_000_000,
                         per_token_s=0.004) as main:
        yield {"main_url": main.url, "guard_url": guard.url, "label": "stand-ins (main 4 ms/token, guard 20 ms "
               "per request; smoke run, not a measurement)", "commands": []}


@contextlib.contextmanager
def bound_to(core: str) -> Iterator[None]:
    """vLLM CPU binds its worker threads to ``VLLM_CPU_OMP_THREADS_BIND`` (default: core 0 on this 2-core host,
    for every server): give each server its own core."""
    old = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = core
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = old


@contextlib.contextmanager
def vllm_servers(python: str) -> Iterator[dict[str, Any]]:
    from tests.support import real_gemma
    from tests.support.vllm_server import start, vllm_argv

    model = real_gemma.model_dir()
    servers = []
    try:
        with bound_to("0"):  # the main model: also answers as "main-llm" (nargs="+": the last flag wins)
            main = start(python, model_dir=model, max_model_len=2048,
                         extra=["--served-model-name", GUARD_MODEL, MAIN_MODEL])
        servers.append(main)
        with bound_to("1"):
            guard = start(python, model_dir=model, max_model_len=4096)
        servers.append(guard)
        cmds = [f"VLLM_CPU_OMP_THREADS_BIND=0 {python} " + " ".join(vllm_argv(
                    str(model), int(main.root.rsplit(':', 1)[1]), max_model_len=2048,
                    extra=["--served-model-name", GUARD_MODEL, MAIN_MODEL])),
                f"VLLM_CPU_OMP_THREADS_BIND=1 {python} " + " ".join(vllm_argv(
                    str(model), int(guard.root.rsplit(':', 1)[1]), max_model_len=4096))]
        yield {"main_url": main.base_url, "guard_url": guard.base_url, "commands": cmds,
               "label": "real vLLM 0.32 CPU (vllm-cpu), Google Gemma 3 270M fp32 as main model (core 0) and as "
                        "guard (core 1), 2-core host"}
    finally:
        for s in reversed(servers):
            s.stop()


# ------------------------------------------------------------------------------------------------- measuring
def stream_once(client: openai.OpenAI, config_id: str, text: str, max_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    first = last = None
    parts: list[str] = []
    error = None
    try:
        for chunk in client.chat.completions.create(
                model=MAIN_MODEL, messages=[{"role": "user", "content": text}], stream=True, max_tokens=max_tokens,
                temperature=0, stop=[NEVER], extra_body={"guardrails": {"config_id": config_id}}):
            content = chunk.choices[0].delta.content if chunk.choices else None
            if content:
                last = time.perf_counter() - t0
                if first is None:
                    first = last
                parts.append(content)
    except openai.APIError as exc:
        error = f"{type(exc).__name__}: {exc.message}"
    total = time.perf_counter() - t0
    return {"config": config_id, "user": text, "ttft_s": first, "last_token_s": last, "total_s": total,
            "chunks": len(parts), "tokens": len(tokenize("".join(parts))),
            "text": "".join(parts), "error": error}


def audit_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def p50(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}x" if b and a == a and b == b else "  n/a"


def summarise(runs: list[dict[str, Any]], records: list[dict[str, Any]], names: list[tuple[str, Any]],
              context_size: int) -> dict[str, Any]:
    by_user: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("direction") == "output":
            by_user.setdefault(r.get("user_text") or "", []).append(r)
    out: dict[str, Any] = {}
    for name, st in names:
        rs = [r for r in runs if r["config"] == name]
        ok = [r for r in rs if r["error"] is None and r["ttft_s"] is not None]
        row: dict[str, Any] = {"n": len(rs), "errors": len(rs) - len(ok),
                               "ttft_s": p50([r["ttft_s"] for r in ok]), "total_s": p50([r["total_s"] for r in ok]),
                               "chunks": p50([r["chunks"] for r in ok]), "tokens": p50([r["tokens"] for r in ok]),
                               # from the last token to the end of the stream (`data: [DONE]`)
                               "tail_s": p50([r["total_s"] - r["last_token_s"] for r in ok])}
        # time between deltas once streaming: (last - first) / (deltas - 1)
        row["stream_ms_per_delta"] = p50([(r["last_token_s"] - r["ttft_s"]) / max(1, r["chunks"] - 1) * 1000
                                          for r in ok])
        if st is not None:
            chunk_lat, whole_lat, per_req = [], [], []
            for r in ok:
                recs = by_user.get(r["user"], [])
                # one check of the whole answer is NeMo's output-rail flow; a second one with the same text is
                # a last chunk that spans the whole answer (an answer shorter than chunk_size)
                whole = [x for x in recs if (x.get("bot_text") or "").strip() == r["text"].strip()]
                chunk = [x for x in recs if x not in whole] + whole[1:]
                chunk_lat += [x["latency_ms"] for x in chunk]
                whole_lat += [x["latency_ms"] for x in whole[:1]]
                per_req.append(len(chunk))
            row.update(chunk_size=st["chunk_size"], stream_first=st["stream_first"],
                       new_deltas_per_check=st["chunk_size"] - context_size,
                       chunk_checks_per_request=p50(per_req), check_ms_p50=p50(chunk_lat),
                       check_ms_max=max(chunk_lat) if chunk_lat else float("nan"),
                       whole_answer_checks_per_request=len(whole_lat) / max(1, len(ok)),
                       whole_check_ms_p50=p50(whole_lat))
        out[name] = row
    return out


def fmt(summary: dict[str, Any], label: str, max_tokens: int, context_size: int) -> str:
    base = summary["no_rail"]
    tok_ms = base["stream_ms_per_delta"]
    lines = [f"\n== {label} ==",
             f"answers: max_tokens {max_tokens}, {base['tokens']:.0f} tokens in {base['chunks']:.0f} stream deltas "
             f"(baseline medians); baseline streams {1000 / tok_ms:.1f} deltas/s ({tok_ms:.1f} ms/delta) after its "
             f"first; context_size {context_size}; NeMo's chunk_size counts deltas",
             f"{'variant':24} {'n':>2} {'err':>3} {'deltas':>6} {'TTFT s':>7} {'TTFT x':>7} {'total s':>8} {'total x':>7} "
             f"{'tail s':>6} "
             f"{'chunk checks':>12} {'check ms p50':>12} {'max':>6} {'gen ms/chunk':>12} {'check/gen':>9} "
             f"{'keeps up':>8}"]
    for name, r in summary.items():
        if "chunk_size" in r:
            gen_ms = r["new_deltas_per_check"] * tok_ms
            cg = r["check_ms_p50"] / gen_ms if gen_ms else float("nan")
            extra = (f"{r['chunk_checks_per_request']:12.0f} {r['check_ms_p50']:12.0f} {r['check_ms_max']:6.0f} "
                     f"{gen_ms:12.0f} {cg:9.2f} {'yes' if cg < 1 else 'NO':>8}")
        else:
            extra = f"{'-':>12} {'-':>12} {'-':>6} {'-':>12} {'-':>9} {'-':>8}"
        lines.append(f"{name:24} {r['n']:2d} {r['errors']:3d} {r['chunks']:6.0f} {r['ttft_s']:7.2f} "
                     f"{ratio(r['ttft_s'], base['ttft_s']):>7} "
                     f"{r['total_s']:8.2f} {ratio(r['total_s'], base['total_s']):>7} {r['tail_s']:6.2f} {extra}")
    lines.append("ratios (x) against the no-rail baseline of the same run; medians over the requests; tail: from "
                 "the last token to the end of the stream")
    for name, r in summary.items():
        if "chunk_size" in r:
            lines.append(f"  {name:24} TTFT {r['ttft_s'] - base['ttft_s']:+6.2f} s, total "
                         f"{r['total_s'] - base['total_s']:+6.2f} s vs baseline; and {r['whole_answer_checks_per_request']:g} "
                         f"whole-answer check per request (NeMo's output-rail flow, {r['whole_check_ms_p50']:.0f} "
                         "ms p50)")
    return "\n".join(lines)


async def reasoning_cost(guard_url: str, tmp: Path, n_off: int, n_on: int, chunk_text: str) -> dict[str, Any]:
    """One output chunk checked with reasoning off and on, through the plugin's runtime (no NeMo, no stream)."""
    from nemoguardrails import RailsConfig

    from nemo_csr_rail.policy import Direction
    from nemo_csr_rail.rail import reset_runtimes, runtime_for

    out: dict[str, Any] = {}
    for mode, n in (("off", n_off), ("on", n_on)):
        reset_runtimes()
        path = tmp / f"reasoning_{mode}"
        path.mkdir(parents=True, exist_ok=True)
        cfg = {"import_paths": ["nemo_csr_rail"],
               "models": [{"type": "nemotron_csr", "engine": "vllm_openai", "model": GUARD_MODEL,
                           "parameters": {"base_url": guard_url}}],
               "custom_data": {"nemo_csr_rail": {"timeout_s": 300, "max_retries": 0, "policies": {
                   "retail": {"policy": POLICY, "reasoning": mode == "on"}}}}}
        (path / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        rt = runtime_for(RailsConfig.from_path(str(path)))
        await rt.check("retail", Direction.OUTPUT, user_msg(899), chunk_text)  # warm-up: connection, plan probe
        lat, tokens = [], []
        for i in range(n):
            t = time.perf_counter()
            res = await rt.check("retail", Direction.OUTPUT, user_msg(900 + i), f"{chunk_text} ({i})")
            lat.append((time.perf_counter() - t) * 1000)
            tokens.append(res.metadata.get("completion_tokens"))
        await rt.aclose()
        out[mode] = {"n": n, "ms_p50": p50(lat), "ms": lat, "completion_tokens": tokens}
    reset_runtimes()
    return out


def fmt_reasoning(res: dict[str, Any]) -> str:
    off, on = res["off"], res["on"]
    return "\n".join([
        "\n== one output check of a chunk, reasoning off vs on (plugin runtime -> guard server) ==",
        f"reasoning off: n={off['n']} p50 {off['ms_p50']:.0f} ms, completion tokens {off['completion_tokens']}",
        f"reasoning on:  n={on['n']} p50 {on['ms_p50']:.0f} ms, completion tokens {on['completion_tokens']}",
        f"  on / off: {ratio(on['ms_p50'], off['ms_p50'])}"])


def run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    sizes = [int(s) for s in args.chunk_sizes.split(",")]
    names = variants(sizes)
    report: list[str] = []
    results: dict[str, Any] = {"args": vars(args), "load_start": os.getloadavg()}

    def say(text: str) -> None:
        print(text, flush=True)
        report.append(text)

    servers = standin_servers(args.max_tokens) if args.quick else vllm_servers(args.vllm_python)
    with servers as srv, tempfile.TemporaryDirectory(prefix="csr-stream-") as tmp_dir:
        tmp = Path(tmp_dir)
        audit = tmp / "audit.jsonl"
        for name, st in names:
            write_config(tmp / "configs" / name, main_url=srv["main_url"], guard_url=srv["guard_url"],
                         streaming=None if st is None else {**st, "context_size": args.context_size},
                         max_tokens=args.max_tokens, audit=audit)
        results["servers"] = srv["commands"]
        with guardrails_server(tmp / "configs", log_path=tmp / "nemoguardrails-server.log") as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=600)
            for k, (name, _) in enumerate(names):  # warm-up: connections, prefix caches, first-call costs
                stream_once(client, name, user_msg(10_000 + k), args.max_tokens)
            runs = []
            i = 0
            for rnd in range(args.n):  # interleaved, rotating order: drift on a shared host hits all alike
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                for name, _ in order:
                    r = stream_once(client, name, user_msg(i), args.max_tokens)
                    i += 1
                    runs.append(r)
                    print(f"  {name:24} ttft {r['ttft_s'] or float('nan'):6.2f} s total {r['total_s']:6.2f} s "
                          f"{r['chunks']:4d} chunks{'  ERROR ' + r['error'] if r['error'] else ''}", flush=True)
            time.sleep(1.5)  # the audit writer thread appends in batches
        results["runs"] = runs
        results["summary"] = summary = summarise(runs, audit_records(audit), names, args.context_size)
        say(fmt(summary, srv["label"], args.max_tokens, args.context_size))
        chunk_text = " ".join(["Pick a date early, book a quiet venue and keep a small reserve."] * 2)
        results["reasoning"] = asyncio.run(reasoning_cost(srv["guard_url"], tmp, 1 if args.quick else 3,
                                                          1, chunk_text))
        say(fmt_reasoning(results["reasoning"]))
    results["load_end"] = os.getloadavg()
    say(f"\nhost load average: start {results['load_start'][0]:.2f}, end {results['load_end'][0]:.2f} "
        f"({os.cpu_count()} CPUs)")
    for cmd in srv["commands"]:
        say(f"server: {cmd}")
    return "\n".join(report) + "\n", results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", default=os.environ.get("CSR_VLLM_PYTHON"),
                    help="python of a venv with vllm-cpu (default: $CSR_VLLM_PYTHON)")
    ap.add_argument("--quick", action="store_true", help="smoke run on the stand-ins (no vLLM; not a measurement)")
    ap.add_argument("--n", type=int, default=None, help="timed requests per variant (default 3; --quick 1)")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per answer (default 192; --quick 40)")
    ap.add_argument("--chunk-sizes", default=None, help="comma-separated (default 32,128; --quick 8,16)")
    ap.add_argument("--context-size", type=int, default=None, help="default 8 (--quick 2)")
    ap.add_argument("--out", help="also write the report here")
    ap.add_argument("--json", help="write every request's figures here")
    args = ap.parse_args(argv)
    q = args.quick
    args.n = args.n or (1 if q else 3)
    args.max_tokens = args.max_tokens or (40 if q else 192)
    args.chunk_sizes = args.chunk_sizes or ("8,16" if q else "32,128")
    args.context_size = args.context_size if args.context_size is not None else (2 if q else 8)
    if not q and not (args.vllm_python and Path(args.vllm_python).exists()):
        print("no vLLM python: pass --vllm-python PATH or set CSR_VLLM_PYTHON (or use --quick)", file=sys.stderr)
        return 2
    report, results = run(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
