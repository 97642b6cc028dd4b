"""Prefix caching across the turns of one conversation, for topic-following checks (card layout C).

    python -m benchmarks.topic_prefix_cache [--vllm-python PY | --url http://127.0.0.1:PORT/v1] [--turns 10]
        [--json benchmarks/results/topic_prefix_cache.json]

Layout C puts the instruction first and the history after it, oldest first, so the prompt of turn N+1 starts with
turn N's prompt up to the end of its history lines: vLLM's automatic prefix cache serves that part, until the
``history_turns`` window starts to slide (the oldest message leaves and everything after the instruction shifts).
This sends a 10-turn support conversation through :class:`~nemo_csr_rail.client.CsrClient` (the rails' own
client) to a real vLLM server and reads ``usage.prompt_tokens_details.cached_tokens`` per check, for:

* ``history_turns=20``: the history only grows over 10 turns (no window slide);
* ``history_turns=6``: the default; the window slides from turn 5 on;
* baseline, measured in the same run on the same server: the same conversation with a per-turn marker written at
  the start of every history message, so no turn can reuse anything after the instruction (what a layout with
  the history anywhere but at the end of a stable prefix would get).

Without ``--url`` it starts the tiny random Gemma-3 (tests/support/vllm_server.py) on vLLM CPU: random weights,
so verdicts are arbitrary; prompt and cache accounting are real. vLLM caches whole KV blocks, so the cached share
is rounded down to the block size; the tiny checkpoint's tokenizer is not Gemma's, so token counts are not the
production model's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nemo_csr_rail.client import CsrClient  # noqa: E402
from nemo_csr_rail.conversation import Turn  # noqa: E402
from nemo_csr_rail.policy import Direction, Policy  # noqa: E402

INSTRUCTION = (
    "You are a customer support chatbot for TechSupport Inc. You help customers with technical issues related to "
    "their computers, printers, routers and software products.\nYou should NOT provide assistance with:\n"
    "- Financial advice or investment recommendations\n- Medical or legal advice\n"
    "If a user asks about topics outside your designated support area, politely redirect them back to technical "
    "support matters."
)
USER = [
    "Hi, my printer won't connect to Wi-Fi.", "It's an HP LaserJet Pro M404n.", "Yes, the light is blinking blue.",
    "I pressed it for five seconds, now it's solid.", "The laptop still doesn't see it.",
    "Windows 11, updated last week.", "OK, the driver is installing now.", "It printed a test page!",
    "One more thing: the scanner button does nothing.", "Thanks! And how do I scan to PDF?",
]
BOT = [
    "I'd be happy to help. Which printer model is it?", "Great. Is the wireless light on the printer blinking?",
    "Press and hold the wireless button until it stops blinking.", "Now open the printer list on your laptop.",
    "Which operating system does the laptop run?", "Please install the latest driver from the HP site.",
    "Once it's done, print a test page.", "Glad to hear it works.", "Install HP Smart; the scan button needs it.",
]


def conversation(marker: bool) -> list[tuple[list[Turn], str]]:
    """(history, current message) per turn; ``marker`` writes the turn number in front of every history message."""
    out = []
    for n, current in enumerate(USER):
        history: list[Turn] = []
        for i in range(n):
            for role, text in (("user", USER[i]), ("bot", BOT[i])):
                history.append(Turn(role, f"[turn {n}] {text}" if marker else text))  # type: ignore[arg-type]
        out.append((history, current))
    return out


async def run_case(url: str, model: str, name: str, history_turns: int, marker: bool, reasoning: bool,
                   turns: int, nonce: str) -> dict[str, Any]:
    # A distinct instruction per case and run (name and nonce in front) keeps one case's blocks, or an earlier
    # run's, from serving another; only the layout's fixed head before the instruction is shared, as in production.
    policy = Policy.topic("topic", f"[{name} {nonce}] {INSTRUCTION}", history_turns=history_turns,
                          reasoning=reasoning)
    per_turn = []
    async with CsrClient(url, model, timeout_s=120.0) as client:
        for n, (history, current) in enumerate(conversation(marker)[:turns], start=1):
            r = await client.check(policy, Direction.INPUT, current, None, history=history)
            per_turn.append({"turn": n, "history_sent": r.history_sent, "prompt_tokens": r.prompt_tokens,
                             "cached_tokens": r.cached_tokens or 0})
    prompt = sum(t["prompt_tokens"] or 0 for t in per_turn)
    cached = sum(t["cached_tokens"] for t in per_turn)
    later = per_turn[1:]  # turn 1 has nothing earlier to reuse
    later_share = (sum(t["cached_tokens"] for t in later) / sum(t["prompt_tokens"] or 0 for t in later)) if later else 0
    return {"name": name, "history_turns": history_turns, "marker": marker, "per_turn": per_turn,
            "prompt_tokens": prompt, "cached_tokens": cached, "cached_share": cached / prompt if prompt else 0.0,
            "cached_share_turns_2_on": later_share}


def fmt(case: dict[str, Any]) -> str:
    rows = " ".join(f"{t['cached_tokens']}/{t['prompt_tokens']}" for t in case["per_turn"])
    return (f"{case['name']:<28} cached/prompt per turn: {rows}\n{'':<28} total {case['cached_tokens']}/"
            f"{case['prompt_tokens']} = {case['cached_share']:.1%} (turns 2+: {case['cached_share_turns_2_on']:.1%})")


async def main_async(url: str, model: str, turns: int, reasoning: bool) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:8]
    # warm-up: puts the layout's fixed head in the cache, so every case's first turn starts alike
    await run_case(url, model, "warm-up", 0, False, reasoning, 1, nonce)
    cases = [await run_case(url, model, "growing (history_turns=20)", 20, False, reasoning, turns, nonce),
             await run_case(url, model, "sliding (history_turns=6)", 6, False, reasoning, turns, nonce),
             await run_case(url, model, "baseline (no shared history)", 20, True, reasoning, turns, nonce)]
    # Turn 1 has nothing of its own conversation to reuse: the shares of turns 2+ are the ones compared.
    base = cases[2]["cached_share_turns_2_on"]
    for c in cases:
        print(fmt(c))
    for c in cases[:2]:
        ratio = c["cached_share_turns_2_on"] / base if base else float("inf")
        print(f"{c['name']}: cached share of turns 2+ {c['cached_share_turns_2_on']:.1%} vs baseline {base:.1%} "
              f"({ratio:.2f}x); uncached prompt tokens (all turns) {c['prompt_tokens'] - c['cached_tokens']} vs "
              f"baseline {cases[2]['prompt_tokens'] - cases[2]['cached_tokens']}")
    return {"turns": turns, "reasoning": reasoning, "nonce": nonce, "cases": cases}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an already running vLLM /v1 URL (default: start the tiny model on vLLM CPU)")
    ap.add_argument("--model", default="nvidia/Nemotron-Content-Safety-Reasoning-4B")
    ap.add_argument("--vllm-python", default=os.environ.get("CSR_VLLM_PYTHON"))
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--reasoning", action=argparse.BooleanOptionalAction, default=False,
                    help="reasoning on decodes a <think> line per check (slow on CPU); the prompts differ only in "
                         "their last sentence (default: off)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    server = None
    url = args.url
    if url is None:
        if not args.vllm_python:
            sys.exit("give --url or --vllm-python (or set CSR_VLLM_PYTHON)")
        from tests.support.vllm_server import start

        server = start(args.vllm_python)
        url = server.base_url
        print(f"real vLLM CPU, tiny random Gemma-3 (log {server.log_path}), start {server.timings}", flush=True)
    try:
        results = asyncio.run(main_async(url, args.model, args.turns, args.reasoning))
    finally:
        if server is not None:
            server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
