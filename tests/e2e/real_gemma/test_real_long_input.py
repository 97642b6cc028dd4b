"""The server's own context-length 400, from real vLLM serving Gemma 3 270M with a small ``--max-model-len``.

Text under ``long_input.max_chars`` that is denser than the defaults assume, or a server started with a smaller
context than ``serve``'s, is rejected by vLLM itself (400 "maximum context length"). That must still end in the
``windows`` plan (halving the windows until they fit) or, with ``strategy: refuse`` or when nothing fits, in a
clear refusal with ``error_kind: input_too_long`` — never an unexplained block or a pass.
"""

from __future__ import annotations

import random
import string

import pytest

from nemo_csr_rail.policy import Direction
from nemo_csr_rail.settings import LongInputSettings
from tests.support.real_gemma import TEST_MAX_MODEL_LEN as MAX_MODEL_LEN
from tests.support.runtime import runtime

pytestmark = [pytest.mark.vllm, pytest.mark.real_gemma]
POLICIES = {"fast": {"policy": "Do not discuss politics or religion.", "reasoning": False}}


def random_text(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters + string.digits + string.punctuation) for _ in range(n))


def _runtime(server, **overrides):
    return runtime(server.base_url, timeout_s=180, max_retries=0, policies=POLICIES, **overrides)


@pytest.mark.parametrize("direction", [Direction.INPUT, Direction.OUTPUT])
async def test_context_400_under_max_chars_ends_in_windows(gemma_server, direction):
    li = LongInputSettings()
    text = random_text(li.max_chars - 100, 0)  # under max_chars: only the server's 400 can trigger the plan
    rt = _runtime(gemma_server)
    if direction is Direction.INPUT:
        out = await rt.check("fast", direction, text)
    else:
        out = await rt.check("fast", direction, "Please summarise this.", text)
    meta = out.metadata
    assert meta["failed"] is False and "error_kind" not in meta, meta
    info = meta["long_input"]
    assert info["strategy"] == "windows" and info["trigger"] == "server_context", info
    # 3000 characters (~2,350 tokens) do not fit the 1536-token context; halved once, 1500 do: four windows cover
    # the 3,900 characters, neighbours overlapping by a quarter (375)
    assert info["window_chars"] == li.window_chars // 2 and info["windows"] == 4 and info["coverage"] == 1.0, info
    assert meta["prompt_harm"] in ("harmful", "unharmful")
    print(f"\n{direction.value}: {info}, decision {meta['decision']} (max-model-len {MAX_MODEL_LEN})")


async def test_context_400_with_refuse_is_a_clear_refusal(gemma_server):
    rt = _runtime(gemma_server, on_error="allow", long_input={"strategy": "refuse"})
    out = await rt.check("fast", Direction.INPUT, random_text(3900, 1))
    meta = out.metadata
    # even with on_error: allow — padding a message must never switch the guard off
    assert out.is_blocked and meta["error_kind"] == "input_too_long", meta
    assert meta["error"] == ("the message is too long for the safety check: "
                             "the guard server rejected it for its context length"), meta["error"]


async def test_a_policy_longer_than_the_context_is_a_clear_refusal(gemma_server):
    """Nothing fits (the policy alone exceeds the context): the windows shrink to their floor, then refuse."""
    policy = " ".join(f"Rule {i}: the assistant must not give advice about regulated topic number {i}."
                      for i in range(120))
    rt = runtime(gemma_server.base_url, timeout_s=180, max_retries=0,
                 policies={"huge": {"policy": policy, "reasoning": False}})
    out = await rt.check("huge", Direction.INPUT, "Where is my order?")
    meta = out.metadata
    assert out.is_blocked and meta["error_kind"] == "input_too_long", meta
    assert "maximum context length" in meta["error"] and str(MAX_MODEL_LEN) in meta["error"], meta["error"]


def _requests_served(server) -> float:
    import httpx

    text = httpx.get(server.root + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


async def test_a_long_tool_result_is_judged_in_every_window_by_the_real_server(gemma_server):
    """Every character of a 12,000-character tool result (prose, over ``max_chars``) is judged: one real request per
    window, all answered, coverage 1.0. The 270M base model's verdicts mean nothing (it calls most text harmful,
    which would stop at the first window); ``threshold: 1.0`` keeps any window from blocking, so all are judged, as
    for a benign item."""
    words = ["the", "parcel", "left", "our", "warehouse", "on", "Monday", "and", "tracking", "is", "attached"]
    rng = random.Random(3)
    text = " ".join(rng.choice(words) for _ in range(3000))[:12_000]
    rt = runtime(gemma_server.base_url, timeout_s=180, max_retries=0,
                 policies={"all": {"taxonomy": "nemotron_v2", "threshold": 1.0}})
    before = _requests_served(gemma_server)
    out = await rt.check("all", Direction.TOOL_RESULT, text)
    await rt.aclose()
    meta = out.metadata
    assert meta["failed"] is False and meta["decision"] == "allow", meta
    info = meta["long_input"]
    assert (info["strategy"], info["trigger"], info["windows"], info["coverage"]) == ("windows", "max_chars", 5, 1.0)
    assert _requests_served(gemma_server) - before == 5
    print(f"\ntool result: {info}, {meta['latency_ms']} ms, {meta['prompt_tokens']} prompt tokens")
