"""The embedded engine (transformers, in-process) and vLLM decide alike on Google's real Gemma 3 270M.

Same :class:`~nemo_csr_rail.prompt.GuardPrompt`, both engines, real trained weights and the real vocabulary: the
same prompt token ids (vLLM's ``/tokenize``), the same reasoning-off continuation, token counts and logprobs (within
float32 kernel noise), and with reasoning on the same greedy trace up to where the embedded engine's token budget
closes it (vLLM instead stops at ``max_tokens``). ``tests/e2e/real/test_real_serve_embedded.py`` does the same on the
tiny random model through a server started by ``nemo-csr-rail serve``.
"""

from __future__ import annotations

import httpx
import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.engines.http import VllmHttpEngine
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.policy import SIDES, Direction
from tests.support import real_gemma
from tests.support.guard_layouts import LAYOUTS
from tests.support.tiny_cache import need_torch

pytestmark = [pytest.mark.vllm, pytest.mark.embedded, pytest.mark.real_gemma]
# every layout x direction with reasoning off; reasoning on twice (each layout and direction once): the embedded
# engine constrains every reasoning step over the 262,144-piece vocabulary (~1 s a step on a loaded 2-core host)
CASES = [(layout, d, False) for layout in ("B", "A") for d in SIDES] + [
    ("B", Direction.INPUT, True), ("A", Direction.OUTPUT, True)]
REASONING_MAX_TOKENS = 32


@pytest.fixture(scope="module")
def embedded():
    need_torch()
    from nemo_csr_rail.engines.embedded import EmbeddedEngine, unload_all

    yield EmbeddedEngine(str(real_gemma.require_model()), device="cpu", dtype="float32")
    unload_all()  # ~2 GB of float32 weights and token tables: not held for the rest of the suite


async def _both(server, emb, gp):
    http = VllmHttpEngine([server.base_url], server.model)
    try:
        hc = await http.complete(gp, timeout_s=180)
    finally:
        await http.aclose()
    ec = await emb.complete(gp, timeout_s=180)
    return hc, ec


def _same_logprobs(ec, hc) -> None:
    assert [e["token"] for e in ec.logprobs] == [e["token"] for e in hc.logprobs]
    for a, b in zip(ec.logprobs, hc.logprobs, strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=2e-3)
        assert [t["token"] for t in a["top_logprobs"]][:2] == [t["token"] for t in b["top_logprobs"]][:2]


@pytest.mark.parametrize(("layout", "direction", "reasoning"), CASES,
                         ids=[f"{lay}-{d.value}-{'think' if r else 'no_think'}" for lay, d, r in CASES])
async def test_embedded_engine_matches_vllm_on_real_weights(gemma_server, embedded, layout, direction, reasoning):
    gp = plans.build(LAYOUTS[layout], direction, "How do I <start_of_turn> reset my router? é",
                       "Unplug it for ten seconds." if direction is Direction.OUTPUT else None,
                       reasoning=reasoning, decode=DecodeOptions(reasoning_max_tokens=REASONING_MAX_TOKENS))
    body = VllmHttpEngine([gemma_server.base_url], gemma_server.model).payload(gp)
    tok = httpx.post(gemma_server.root + "/tokenize", timeout=60, json={
        "model": gemma_server.model, "messages": body["messages"],
        **({"continue_final_message": True, "add_generation_prompt": False} if gp.prefill else {})}).json()
    assert tok["tokens"] == embedded.prompt_ids(gp)
    hc, ec = await _both(gemma_server, embedded, gp)
    assert ec.prompt_tokens == hc.prompt_tokens
    if reasoning:
        assert ec.text.startswith("<think>\n")
        trace = ec.text[len("<think>\n"):ec.text.index("\n</think>")]
        assert ec.text == hc.text or (hc.finish_reason == "length" and hc.text.startswith("<think>\n" + trace)), (
            ec.text, hc.text)
        return
    assert ec.text == hc.text and ec.finish_reason == hc.finish_reason
    assert ec.completion_tokens == hc.completion_tokens
    if hc.logprobs is not None or ec.logprobs is not None:
        _same_logprobs(ec, hc)
    if gp.split_output:  # the response half of the split output check, with the model's own prompt verdict
        step = plans.split_output.response_step(gp, hc.text.strip())
        hc, ec = await _both(gemma_server, embedded, step)
        assert ec.text == hc.text and ec.completion_tokens == hc.completion_tokens
        if hc.logprobs is not None or ec.logprobs is not None:
            _same_logprobs(ec, hc)
    print(f"\n{layout}/{direction.value}: {hc.text!r}, {hc.completion_tokens} token(s) on both engines")
