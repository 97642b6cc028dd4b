"""The plugin's background grammar warm-up, against the real vLLM it is for: vLLM answers it and counts it done."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from nemo_csr_rail import plans
from nemo_csr_rail.engines.http import VllmHttpEngine
from nemo_csr_rail.plans import grammar
from nemo_csr_rail.policy import Direction, Policy

pytestmark = [pytest.mark.vllm, pytest.mark.real_gemma]


def _successes(root: str) -> float:
    text = httpx.get(root + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


async def test_the_warm_up_requests_are_answered_by_real_vllm(gemma_server):
    engine = VllmHttpEngine([gemma_server.base_url], gemma_server.model, warm_regexes=grammar.warm_up_regexes())
    before = _successes(gemma_server.root)
    gp = plans.build(Policy.custom("p", "No politics.", reasoning=False), Direction.INPUT, "Where is my order?", None)
    await engine.complete(gp, timeout_s=120)
    warming = list(engine._warming)
    assert warming, "the first check started the warm-up"
    await asyncio.wait_for(asyncio.gather(*warming), 300)
    # the check, and one warm-up per reasoning grammar: each a real completed request (the grammars are warm
    # already on this server, compiled at start by the fixture, so vLLM answers at once)
    assert _successes(gemma_server.root) - before >= 1 + len(grammar.warm_up_regexes())
    await engine.aclose()
