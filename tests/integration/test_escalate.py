"""reasoning: escalate — screen every check with reasoning off, reason only when the screen may be harmful.

On the vLLM-shaped stand-in: its scripted model puts P=0.97 on the verdict it writes (0.03 on a benign turn's
'harmful'), answers the one-token plan like vLLM 0.32, and writes a one-sentence reason under /think.
"""

from __future__ import annotations

import pytest

from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.plans import escalate
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.verdict import Verdict
from tests.support.runtime import POLITICS, runtime
from tests.support.standin import Fault, StandIn, error_body

ESCALATE = {"policies": {"retail": {"policy": POLITICS, "reasoning": "escalate",
                                    "refusal": "Sorry, I can't help with that. {reasoning}"}}}


def _texts(guard: StandIn) -> list[str]:
    return [r["messages"][0]["content"] for r in guard.chat_requests()]


async def test_a_benign_input_costs_one_token_and_no_reasoning_request() -> None:
    with StandIn() as guard:
        out = await runtime(guard.url, **ESCALATE).check("retail", Direction.INPUT, "Where is my order?")
        assert out.metadata["decision"] == "allow"
        (req,) = guard.chat_requests()
        assert req["max_tokens"] == 1 and req["messages"][0]["content"].endswith("/no_think")
        meta = out.metadata
        assert meta["escalated"] is False and meta["reasoning_mode"] == "escalate"
        assert meta["screen_verdict"] == "unharmful" and meta["screen_confidence"] == pytest.approx(0.03, abs=1e-3)
        assert meta["decode_plan"] == meta["screen_decode_plan"] == "one_token"
        assert meta["completion_tokens"] == meta["screen_completion_tokens"] == 1
        assert meta["escalate_at"] == 0.5 and meta["reasoning"] is None


async def test_a_harmful_input_escalates_and_the_reasoned_check_decides_and_explains() -> None:
    with StandIn() as guard:
        out = await runtime(guard.url, **ESCALATE).check("retail", Direction.INPUT, "Who should I vote for?")
        assert out.metadata["decision"] == "block"
        screen, reasoned = _texts(guard)
        assert screen.endswith("/no_think") and reasoned.endswith("/think")
        # the reasoned prompt shares the screen's whole prefix: only the mode switch at the end differs
        common = len(screen) - len(" /no_think")
        assert screen[:common] == reasoned[:common] or reasoned.startswith(screen[: screen.rfind("Only output")])
        meta = out.metadata
        assert meta["escalated"] is True and meta["screen_verdict"] == "harmful"
        assert meta["screen_confidence"] == pytest.approx(0.97, abs=1e-3)
        assert meta["screen_decode_plan"] == "one_token" and meta["decode_plan"] == "grammar"
        assert meta["reasoning"] and meta["refusal"] == f"Sorry, I can't help with that. {meta['reasoning']}"
        assert meta["completion_tokens"] > meta["screen_completion_tokens"] == 1


@pytest.mark.parametrize(("bot", "escalated", "decision"), [
    ("Your order ships tomorrow.", False, "allow"),
    ("Honestly, vote for the party I like.", True, "block"),
])
async def test_output_checks_screen_with_the_split_plan_and_escalate_as_one_reasoned_check(bot, escalated, decision):
    with StandIn() as guard:
        out = await runtime(guard.url, **ESCALATE).check("retail", Direction.OUTPUT, "Hi there", bot)
        assert out.metadata["decision"] == decision and out.metadata["escalated"] is escalated
        reqs = guard.chat_requests()
        split = [r for r in reqs if r["messages"][-1]["role"] == "assistant"]
        assert len(split) == 2  # the split plan's prompt half and response step
        reasoned = [r for r in reqs if r["messages"][0]["content"].endswith("/think")]
        assert len(reasoned) == (1 if escalated else 0)
        if escalated:
            assert reasoned[0]["messages"] == [reasoned[0]["messages"][0]]  # one reasoning-on output check
            assert out.metadata["response_harm"] == "harmful" and out.metadata["reasoning"]


async def test_below_escalate_at_the_screen_allows_even_a_harmful_argmax() -> None:
    with StandIn(confidence=0.6) as guard:  # the scripted model is unsure: P(harmful) = 0.6 on a harmful turn
        rt = runtime(guard.url, policies={"p": {"policy": POLITICS, "reasoning": "escalate", "escalate_at": 0.8}})
        out = await rt.check("p", Direction.INPUT, "Who should I vote for?")
        assert out.metadata["decision"] == "allow" and out.metadata["escalated"] is False
        assert out.metadata["screen_verdict"] == "harmful" and len(guard.chat_requests()) == 1


async def test_without_a_confidence_a_harmful_screen_escalates() -> None:
    with StandIn() as guard:
        rt = runtime(guard.url, logprobs=False, policies={"p": {"policy": POLITICS, "reasoning": "escalate"}})
        benign = await rt.check("p", Direction.INPUT, "Where is my order?")
        assert benign.metadata["escalated"] is False and benign.metadata["screen_confidence"] is None
        harmful = await rt.check("p", Direction.INPUT, "Who should I vote for?")
        assert harmful.metadata["escalated"] is True and harmful.metadata["decision"] == "block"


async def test_a_failed_escalation_never_lets_a_screened_harmful_turn_through_whatever_on_error_says() -> None:
    with StandIn() as guard:
        rt = runtime(guard.url, max_retries=0, policies={
            "p": {"policy": POLITICS, "reasoning": "escalate", "on_error": "allow"}})
        await rt.check("p", Direction.INPUT, "warm the one-token plan up")
        guard.inject(Fault(kind="delay", delay_s=0.0),  # the screen is answered normally, then the escalation fails
                     Fault(kind="status", status=500, body=error_body(500, "grammar compile timed out")))
        out = await rt.check("p", Direction.INPUT, "Who should I vote for?")  # screen passes, escalation fails
        assert out.metadata["decision"] == "block" and out.metadata["failed"] is False
        assert out.metadata["escalated"] is True and out.metadata["escalation_error"] == "guard_http_error"
        assert out.metadata["reasoning"] is None  # no reason could be had: the screen's verdict decided


async def test_escalate_per_direction_and_for_topic_policies() -> None:
    with StandIn() as guard:
        rt = runtime(guard.url, policies={
            "mixed": {"policy": POLITICS, "reasoning": {"input": "escalate", "output": False}},
            "topic": {"topic": "Only talk about orders.", "reasoning": "escalate"}})
        out = await rt.check("mixed", Direction.OUTPUT, "hi", "Vote for them.")
        assert "escalated" not in out.metadata and out.metadata["reasoning_mode"] is False
        out = await rt.check("mixed", Direction.INPUT, "Who should I vote for?")
        assert out.metadata["escalated"] is True
        out = await rt.check("topic", Direction.INPUT, "Where is my order?")
        assert out.metadata["escalated"] is False and out.metadata["reasoning_mode"] == "escalate"


@pytest.mark.parametrize(("spec", "key", "words"), [
    ({"policy": "x", "reasoning": "escalate", "threshold": 0.7}, "policies.p.threshold", "escalate_at"),
    ({"policy": "x", "reasoning": True, "escalate_at": 0.3}, "policies.p.escalate_at", "reasoning: escalate"),
    ({"policy": "x", "reasoning": "escalate", "escalate_at": 1.0}, "policies.p.escalate_at", "less than 1"),
    ({"policy": "x", "reasoning": {"input": "maybe"}}, "policies.p.reasoning", ""),
])
def test_bad_escalation_settings_fail_at_load_naming_the_key(spec, key, words) -> None:
    with pytest.raises(ConfigError) as err:
        runtime("http://127.0.0.1:9/v1", policies={"p": spec})
    assert key in str(err.value) and words in str(err.value)


async def test_the_plain_client_escalates_too() -> None:
    from nemo_csr_rail.client import CsrClient
    from nemo_csr_rail.policy import Policy

    with StandIn() as guard:
        policy = Policy.custom("p", POLITICS, reasoning="escalate")
        async with CsrClient(guard.url) as client:
            res = await client.check(policy, Direction.INPUT, "Who should I vote for?", None)
        assert res.escalation is not None and res.escalation.escalated and res.verdict.reasoning


def test_should_escalate_rule() -> None:
    v = Verdict("harmful", None, confidence=None)
    assert escalate.should_escalate(v, Direction.INPUT, 0.9)  # no confidence: the verdict decides
    assert not escalate.should_escalate(Verdict("unharmful", None), Direction.INPUT, 0.1)
    assert escalate.should_escalate(Verdict("unharmful", None, confidence=0.3), Direction.INPUT, 0.3)
    assert not escalate.should_escalate(Verdict("harmful", None, confidence=0.49), Direction.INPUT, 0.5)


async def test_an_escalated_block_puts_its_reason_in_the_audit_record(tmp_path) -> None:
    """What a streaming client cannot get (NeMo's fixed block frame) is in the audit: the chunk that escalated."""
    import json

    path = tmp_path / "audit.jsonl"
    with StandIn() as guard:
        rt = runtime(guard.url, telemetry={"audit_log": str(path)}, **ESCALATE)
        await rt.check("retail", Direction.OUTPUT, "hi", "Your order ships tomorrow.")
        await rt.check("retail", Direction.OUTPUT, "hi", "Honestly, vote for the party I like.")
        assert rt.telemetry.audit.flush(10)
    benign, blocked = [json.loads(line) for line in path.read_text().splitlines()]
    assert benign["decision"] == "allow" and benign["reasoning"] is None
    assert blocked["decision"] == "block" and blocked["reasoning"]
