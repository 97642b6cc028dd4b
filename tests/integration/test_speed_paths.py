"""The fast paths: split output checks, stop strings, confidence and threshold, connection pooling, back-pressure,
and the verdict cache. Behaviour only: nothing here is timed (see benchmarks/ for figures)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from benchmarks.servers import LatencyStandIn
from nemo_csr_rail.client import CsrClient
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.rail import RailRuntime, runtime_for
from nemo_csr_rail.settings import resolve
from tests.support.rails_configs import GUARD_MODEL

SAFE_USER, SAFE_BOT = "How do I bake bread?", "Mix flour, water, salt and yeast."
EVIL_USER, EVIL_BOT = "Tell me something evil.", "Sure, here is EVIL stuff."


class CountingStandIn(LatencyStandIn):
    """Records the peak number of requests of any kind in flight at the server (the stand-in's own
    ``peak_in_flight`` counts chat requests only)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.dispatching = self.peak = 0

    async def _dispatch(self, method, path, headers, raw, writer):  # type: ignore[override]
        self.dispatching += 1
        self.peak = max(self.peak, self.dispatching)
        try:
            return await super()._dispatch(method, path, headers, raw, writer)
        finally:
            self.dispatching -= 1


@pytest.fixture
def server():
    with CountingStandIn() as s:
        yield s


def policy(reasoning: bool = False, **kw: Any) -> Policy:
    return Policy.custom("p", "No evil content.", reasoning=reasoning, **kw)


@pytest.mark.parametrize(("user", "bot", "expected"), [
    (SAFE_USER, SAFE_BOT, ("unharmful", "unharmful")),
    (SAFE_USER, EVIL_BOT, ("unharmful", "harmful")),
    (EVIL_USER, SAFE_BOT, ("harmful", "unharmful")),   # the guess 'unharmful' is wrong: a third request
    (EVIL_USER, EVIL_BOT, ("harmful", "harmful")),
])
async def test_split_output_check_decides_like_the_single_request(server, user, bot, expected):
    async with CsrClient(server.url) as split, CsrClient(server.url, split_output=False) as single:
        # the first check on an endpoint looks up its one-token plans (/tokenize, once per prefill); after that
        # both halves of a split check are always sent together
        await split.check(policy(), Direction.OUTPUT, EVIL_USER + " (warm-up)", SAFE_BOT)
        server.requests.clear()
        a = await split.check(policy(), Direction.OUTPUT, user, bot)
        b = await single.check(policy(), Direction.OUTPUT, user, bot)
    assert (a.verdict.prompt_harm, a.verdict.response_harm) == expected
    assert (b.verdict.prompt_harm, b.verdict.response_harm) == expected
    assert a.verdict.is_harmful(Direction.OUTPUT) == b.verdict.is_harmful(Direction.OUTPUT)
    assert b.calls == 1 and a.calls == (3 if expected[0] == "harmful" else 2)
    bodies = server.chat_requests()
    prefills = sorted(r["messages"][-1]["content"] for r in bodies[: len(bodies) - 1])
    want = ["Prompt harm:", "Prompt harm: unharmful\nResponse harm:"]  # sent together
    if expected[0] == "harmful":
        want.append("Prompt harm: harmful\nResponse harm:")  # asked again after the wrong guess
    assert prefills == sorted(want)
    # decoded tokens: the split plan never decodes the forced "\nResponse harm:" line, and each half is one token
    assert a.decode_plan == "one_token" and a.completion_tokens == 2
    assert b.decode_plan == "grammar" and b.completion_tokens is not None and b.completion_tokens > 2
    for body in bodies[: len(bodies) - 1]:
        assert body["max_tokens"] == 1 and len(body["allowed_token_ids"]) == 2 and "stop" not in body


async def test_every_reasoning_off_request_ends_on_the_verdict_token(server):
    async with CsrClient(server.url) as guard:
        await guard.check(policy(), Direction.INPUT, SAFE_USER, None)
        await guard.check(policy(), Direction.OUTPUT, SAFE_USER, SAFE_BOT)
        await guard.check(policy(reasoning=True), Direction.OUTPUT, SAFE_USER, SAFE_BOT)
    *fast, think = server.chat_requests()
    assert len(fast) == 3
    for body in fast:  # reasoning off: one token among the two verdicts' first tokens, nothing to stop
        assert body["max_tokens"] == 1 and body["allowed_token_ids"] == [27583, 723] and "stop" not in body
    assert think["stop"] and think["include_stop_str_in_output"] is True
    # the stand-in charges an <eos> step when no stop string ended the request, as vLLM does: none was charged
    # 1 (input) + 1 + 1 (split output, ' unharmful' decided at ' un') + the reasoning answer, no <eos> step
    assert server.counters()["generated"] == 3 + _think_tokens(server)


def _think_tokens(server: LatencyStandIn) -> int:
    from tests.support.standin import tokenize

    body = server.chat_requests()[-1]
    text = server.responder(body)
    return len(tokenize(text))


@pytest.mark.parametrize("direction", [Direction.INPUT, Direction.OUTPUT])
async def test_confidence_and_threshold_end_to_end(direction):
    # The stand-in's logprobs give the chosen verdict probability 0.6.
    with LatencyStandIn(confidence=0.6) as s:
        async with CsrClient(s.url) as guard:
            bot = EVIL_BOT if direction is Direction.OUTPUT else None
            res = await guard.check(policy(), direction, EVIL_USER, bot)
    v = res.verdict
    assert v.harm(direction) == "harmful" and v.confidence == pytest.approx(0.6, abs=1e-6)
    assert v.is_harmful(direction) and v.is_harmful(direction, threshold=0.5)
    assert not v.is_harmful(direction, threshold=0.9)  # 'harmful', but not confident enough to block


async def test_threshold_decides_the_rail_outcome(tmp_path):
    from nemoguardrails import RailsConfig

    from tests.support.rails_configs import write_config

    with LatencyStandIn(confidence=0.6) as s:
        plugin = {"policies": {"strict": {"policy": "No evil content.", "reasoning": False, "threshold": 0.5},
                               "lenient": {"policy": "No evil content.", "reasoning": False, "threshold": 0.9}}}
        cfg = RailsConfig.from_path(str(write_config(tmp_path, guard_url=s.url, main_url=None, plugin=plugin)))
        rt = runtime_for(cfg)
        for d, bot in ((Direction.INPUT, None), (Direction.OUTPUT, EVIL_BOT)):
            strict = await rt.check("strict", d, EVIL_USER, bot)
            lenient = await rt.check("lenient", d, EVIL_USER, bot)
            assert strict.is_blocked and not lenient.is_blocked
            for out, thr in ((strict, 0.5), (lenient, 0.9)):
                assert out.metadata["confidence"] == pytest.approx(0.6, abs=1e-6)
                assert out.metadata["threshold"] == thr
        await rt.aclose()


async def test_one_connection_pool_per_endpoint_no_client_per_check(server, tmp_path, monkeypatch):
    from nemoguardrails import RailsConfig

    from tests.support.rails_configs import write_config

    made = []
    real_init = httpx.AsyncClient.__init__

    def counting_init(self, *a, **kw):
        made.append(1)
        real_init(self, *a, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", counting_init)
    cfgs = []
    for name in ("a", "b"):  # two configs (different policies) pointing at the same server
        plugin = {"policies": {name: {"policy": f"No evil content ({name}).", "reasoning": False}}}
        cfgs.append(RailsConfig.from_path(str(write_config(tmp_path / name, guard_url=server.url, main_url=None,
                                                           plugin=plugin))))
    rts = [runtime_for(c) for c in cfgs]
    assert rts[0] is not rts[1]
    assert rts[0].clients["nemotron_csr"].engine is rts[1].clients["nemotron_csr"].engine
    for i in range(30):
        for rt, name in zip(rts, ("a", "b"), strict=True):
            await rt.check(name, Direction.INPUT, f"{SAFE_USER} {i}")
            await rt.check(name, Direction.OUTPUT, f"{SAFE_USER} {i}", SAFE_BOT)
    from nemo_csr_rail.engines.http import POOL_SHARD

    # 120 checks, 180 requests: one sharded pool, built once (max_concurrency 256 / POOL_SHARD connections each)
    assert len(made) == -(-256 // POOL_SHARD)
    await rts[0].aclose()


async def test_bounded_concurrency_applies_back_pressure():
    with CountingStandIn(fixed_s=0.05) as s:
        async with CsrClient(s.url, max_concurrency=4, timeout_s=30) as guard:
            res = await asyncio.gather(*(guard.check(policy(), Direction.INPUT, f"{SAFE_USER} {i}", None)
                                         for i in range(24)))
        assert all(r.verdict.prompt_harm == "unharmful" for r in res)
        assert s.peak == 4


async def test_many_in_flight_shards_the_pool_and_completes_without_errors():
    with CountingStandIn(fixed_s=0.05) as s:
        async with CsrClient(s.url, max_concurrency=64, timeout_s=60) as guard:
            res = await asyncio.gather(*(guard.check(policy(), Direction.INPUT, f"{SAFE_USER} {i}", None)
                                         for i in range(200)))
            pool = next(iter(guard.engine._per_loop.values()))  # type: ignore[attr-defined]
            from nemo_csr_rail.engines.http import POOL_SHARD

            assert len(pool.clients) == -(-64 // POOL_SHARD) and all(n == 0 for n in pool.inflight)
        assert len(res) == 200 and s.peak <= 64


async def test_cache_keeps_the_reasoning_and_respects_models_cache(server, tmp_path):
    from nemoguardrails import RailsConfig

    from tests.support.rails_configs import write_config

    plugin = {"policies": {"p": {"policy": "No evil content.", "reasoning": True}}}
    path = write_config(tmp_path, guard_url=server.url, main_url=None, plugin=plugin)
    import yaml

    cfg = yaml.safe_load((path / "config.yml").read_text())
    cfg["models"][-1]["cache"] = {"enabled": True, "maxsize": 100}
    (path / "config.yml").write_text(yaml.safe_dump(cfg))
    rt = RailRuntime(resolve(RailsConfig.from_path(str(path))), RailsConfig.from_path(str(path)))
    assert rt.cache is not None and rt.cache.maxsize == 100
    first = await rt.check("p", Direction.INPUT, EVIL_USER)
    second = await rt.check("p", Direction.INPUT, EVIL_USER)
    assert first.is_blocked and second.is_blocked
    assert second.metadata["cached"] is True and first.metadata["cached"] is False
    assert second.metadata["reasoning"] == first.metadata["reasoning"] and second.metadata["reasoning"]
    assert len(server.chat_requests()) == 1
    await rt.aclose()


def test_stand_in_model_name_matches():
    assert GUARD_MODEL == "nvidia/Nemotron-Content-Safety-Reasoning-4B"


async def test_own_refusals_are_recognised_whole_or_chunked_and_only_while_remembered(guard):
    """The output rail skips the plugin's own refusal (also streamed chunks of it), never text spanning two."""
    from tests.support.runtime import runtime as make_runtime

    rt = make_runtime(guard.url, policies={
        "one": {"policy": "Do not discuss politics.", "reasoning": False, "refusal": "Refused by the first rule."},
        "two": {"policy": "Do not discuss politics.", "reasoning": False, "refusal": "Declined under rule two."},
    })
    try:
        first = await rt.check("one", Direction.INPUT, "politics 1")
        second = await rt.check("two", Direction.INPUT, "politics 2")
        assert first.is_blocked and second.is_blocked
        r1, r2 = first.metadata["refusal"], second.metadata["refusal"]
        assert (r1, r2) == ("Refused by the first rule.", "Declined under rule two.")
        sent = len(guard.chat_requests())

        async def output(bot: str) -> str:
            return (await rt.check("one", Direction.OUTPUT, "hi", bot)).metadata.get("skipped", "")

        assert await output(r1) == "the plugin's own refusal"
        assert await output("  " + r2[:10] + "\n") == "the plugin's own refusal", "a streamed chunk"
        assert len(guard.chat_requests()) == sent, "a refusal must not be sent to the guard again"
        assert await output(r1[-5:] + r2[:5]) == "", "text spanning two refusals is checked"
        assert await output("Your parcel ships today.") == ""
        # 256 newer refusals push the first one out of memory: then it is checked like any bot message.
        await asyncio.gather(*(rt.check("two", Direction.INPUT, f"politics {i}") for i in range(256)))
        assert await output(r1) == ""
        assert await output(r2) == "the plugin's own refusal"
    finally:
        await rt.aclose()
