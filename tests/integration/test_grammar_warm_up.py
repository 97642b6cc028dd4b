"""The plugin warms the slow reasoning grammars on a guard endpoint's first use, without delaying that first check.

vLLM compiles a ``structured_outputs`` regex on first sight and answers HTTP 500 when the compile outlives
``VLLM_REGEX_COMPILATION_TIMEOUT_S`` (5 s by default; the reasoning grammar takes ~13 s on the real Gemma 3
vocabulary on a small CPU, docs/real-engine.md). So the HTTP engine sends each reasoning grammar once per replica,
in the background, when it is first used.
"""

from __future__ import annotations

import asyncio

from nemo_csr_rail.plans import grammar
from nemo_csr_rail.policy import Direction
from tests.support.runtime import runtime
from tests.support.standin import StandIn


def _engine(rt):
    (client,) = rt.clients.values()
    return client.engine


async def test_first_use_warms_both_reasoning_grammars_on_every_replica() -> None:
    with StandIn() as a, StandIn() as b:
        rt = runtime([a.url, b.url])  # the test plugin has a reasoning-on policy ("think")
        out = await rt.check("fast", Direction.INPUT, "Where is my order?")
        assert not out.metadata["failed"]
        await asyncio.gather(*_engine(rt)._warming)
        for server in (a, b):
            assert sorted(w["structured_outputs"]["regex"] for w in server.warmups) == sorted(grammar.warm_up_regexes())
            assert all(w["max_tokens"] == 1 and w["model"] == server.model for w in server.warmups)
        await rt.check("think", Direction.INPUT, "Where is my order?")
        assert len(a.warmups) + len(b.warmups) == 4  # once per engine and event loop, not per check


async def test_the_first_check_does_not_wait_for_the_warm_up() -> None:
    with StandIn() as guard:
        guard.warmup_delay_s = 30.0  # a grammar that takes long to compile
        rt = runtime(guard.url, timeout_s=2.0)
        out = await rt.check("think", Direction.INPUT, "Who should I vote for?")
        assert out.metadata["decision"] == "block" and not out.metadata["failed"]
        assert any(not t.done() for t in _engine(rt)._warming), "the warm-up is still running in the background"
        await _engine(rt).aclose()  # closing cancels it
        assert all(t.cancelled() or t.done() for t in list(_engine(rt)._warming))


async def test_no_warm_up_without_a_reasoning_policy() -> None:
    with StandIn() as guard:
        rt = runtime(guard.url, policies={"fast": {"policy": "No politics.", "reasoning": False}})
        await rt.check("fast", Direction.INPUT, "Where is my order?")
        await asyncio.sleep(0.05)
        assert guard.warmups == []
