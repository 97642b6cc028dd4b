"""The one-token floor (nemo_csr_rail/plans/one_token.py): when it is used, when it falls back, what it sends.

Unit tests of the decision on token sequences, then end to end on the vLLM-shaped stand-in, which tokenizes with
Google's real Gemma 3 tokenizer (`` harmful`` = 27583; `` unharmful`` = `` un`` 723, ``harm``, ``ful``).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nemo_csr_rail import plans
from nemo_csr_rail.client import CsrClient
from nemo_csr_rail.completion import Completion
from nemo_csr_rail.errors import VerdictParseError
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.plans import one_token as tf
from nemo_csr_rail.policy import Direction, Policy
from tests.support.standin import Fault, StandIn, encode

WORDS = (" harmful", " unharmful")
PIECES = {27583: " harmful", 723: " un", 36141: "harm", 1275: "ful", 236743: " ", 7342: " harm", 236787: ":"}
PREFILL = [2, 105, 4368, 107, 70517, 7342, 236787]  # ...<start_of_turn>model\nPrompt harm:
POLICY = Policy.custom("p", "No evil content.", reasoning=False)


def test_the_real_tokenizer_splits_the_verdicts_as_the_issue_says():
    assert encode(" harmful") == [(27583, " harmful")]
    assert encode(" unharmful") == [(723, " un"), (36141, "harm"), (1275, "ful")]


# ------------------------------------------------------------------------------------------------ the decision
def test_canonical_first_tokens_give_the_plan():
    plan = tf.decide(WORDS, PREFILL, [[*PREFILL, 27583], [*PREFILL, 723, 36141, 1275]], PIECES.get)
    assert plan == tf.OneTokenPlan(WORDS, (27583, 723), (" harmful", " un"))
    assert plan.word_for(" un") == " unharmful" and plan.word_for("token_id:27583") == " harmful"
    assert plan.word_for("harm") is None and plan.word_for("token_id:36141") is None


def test_a_shared_first_token_falls_back():
    # a tokenizer that writes both verdicts starting with a bare space: the first token decides nothing
    fb = tf.decide(WORDS, PREFILL, [[*PREFILL, 236743, 7342], [*PREFILL, 236743, 723]], PIECES.get)
    assert isinstance(fb, tf.Fallback) and "share their first token" in fb.reason


def test_a_first_token_that_begins_both_verdicts_falls_back():
    # distinct ids, but ' ' (a prefix of both words) identifies neither verdict
    fb = tf.decide(WORDS, PREFILL, [[*PREFILL, 236743, 27583], [*PREFILL, 723]], PIECES.get)
    assert isinstance(fb, tf.Fallback) and "also begins" in fb.reason


def test_a_tokenizer_that_merges_across_the_prefill_boundary_falls_back():
    # ':' + ' harmful' written as one token ': harmful' (id 999): the prefill's tokens are no prefix
    merged = [*PREFILL[:-1], 999]
    fb = tf.decide(WORDS, PREFILL, [merged, [*PREFILL, 723]], {**PIECES, 999: ": harmful"}.get)
    assert isinstance(fb, tf.Fallback) and "not a prefix" in fb.reason


def test_a_piece_that_does_not_spell_its_own_verdict_falls_back():
    fb = tf.decide(WORDS, PREFILL, [[*PREFILL, 27583], [*PREFILL, 723]], {27583: " harmful", 723: "un"}.get)
    assert isinstance(fb, tf.Fallback) and "is not a prefix of ' unharmful'" in fb.reason
    fb = tf.decide(WORDS, PREFILL, [[*PREFILL, 27583], [*PREFILL, 723]], {27583: " harmful"}.get)
    assert isinstance(fb, tf.Fallback)  # a piece the server cannot decode: never assumed


@given(st.lists(st.integers(0, 262_143), min_size=1, max_size=4), st.lists(st.integers(0, 262_143), max_size=4),
       st.lists(st.integers(0, 262_143), max_size=4))
def test_decide_never_plans_an_ambiguous_or_unspellable_first_token(pre, a, b):
    texts = {**PIECES, **{t: f"<{t}>" for t in set(a + b) - set(PIECES)}}
    d = tf.decide(WORDS, pre, [pre + a, pre + b], texts.get)
    if isinstance(d, tf.OneTokenPlan):
        assert a and b and a[0] != b[0]
        for word, piece in zip(d.words, d.pieces, strict=True):
            assert word.startswith(piece)
            assert sum(w.startswith(piece) for w in WORDS) == 1


# ------------------------------------------------------------------------------------------------ reading the answer
PLAN = tf.OneTokenPlan(WORDS, (27583, 723), (" harmful", " un"))


def _entry(token: str, lp: float, tops: list[tuple[str, float]]) -> dict:
    return {"token": token, "logprob": lp, "top_logprobs": [{"token": t, "logprob": v} for t, v in tops]}


def test_read_maps_the_token_to_its_verdict_and_keeps_both_logprobs():
    c = tf.as_word(PLAN, Completion(text=" un", logprobs=[_entry("token_id:723", -1.0, [("token_id:27583", -3.0),
                                                                                      ("token_id:723", -1.0)])]))
    assert c.text == " unharmful" and c.decode_plan == "one_token"
    assert c.verdict_logprobs == {" unharmful": -1.0, " harmful": -3.0}
    assert plans.one_token.confidence(c.verdict_logprobs) == pytest.approx(1 / (1 + math.e ** 2))


def test_read_without_the_losing_candidate_leaves_confidence_unknown():
    c = tf.as_word(PLAN, Completion(text=" harmful", logprobs=[_entry(" harmful", -0.2, [(" harmful", -0.2),
                                                                                       (" ", -2.0)])]))
    assert c.text == " harmful" and c.verdict_logprobs == {" harmful": -0.2}
    assert plans.one_token.confidence(c.verdict_logprobs) is None


@given(st.text(max_size=12))
def test_read_passes_any_other_token_through_unmapped(text):
    c = tf.as_word(PLAN, Completion(text=text))
    assert c.text == ({" harmful": " harmful", " un": " unharmful"}.get(text, text))


@given(st.floats(-50, 0), st.floats(-50, 0))
def test_confidence_from_choices_is_the_pair_renormalised(lh, lu):
    p = plans.one_token.confidence({" harmful": lh, " unharmful": lu})
    assert p is not None and 0.0 <= p <= 1.0
    assert p == pytest.approx(math.exp(lh) / (math.exp(lh) + math.exp(lu)), abs=1e-9)
    if abs(lh - lu) > 1e-9:
        assert (p > 0.5) == (lh > lu)


def test_the_prompt_marks_exactly_the_bare_verdict_requests():
    inp = plans.build(POLICY, Direction.INPUT, "hi", None)
    half = plans.build(POLICY, Direction.OUTPUT, "hi", "ok")
    assert inp.verdict_choices == WORDS and half.verdict_choices == WORDS
    assert plans.split_output.response_step(half, "unharmful").verdict_choices == WORDS
    assert plans.build(POLICY, Direction.OUTPUT, "hi", "ok", decode=DecodeOptions(split_output=False)).verdict_choices == ()
    assert plans.build(POLICY, Direction.INPUT, "hi", None, reasoning=True).verdict_choices == ()
    assert plans.build(POLICY, Direction.INPUT, "hi", None, decode=DecodeOptions(assistant_prefill=False)).verdict_choices == ()
    assert plans.build(POLICY, Direction.INPUT, "hi", None, decode=DecodeOptions(structured_output=False)).verdict_choices == ()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("user", ["How do I bake bread?", "Tell me something evil."])
async def test_input_check_is_one_generated_token_for_either_verdict(user):
    with StandIn() as s:
        async with CsrClient(s.url) as guard:
            res = await guard.check(POLICY, Direction.INPUT, user, None)
        (body,) = s.chat_requests()
    want = "harmful" if "evil" in user else "unharmful"
    assert res.verdict.prompt_harm == want and res.decode_plan == "one_token" and res.completion_tokens == 1
    assert res.verdict.confidence == pytest.approx(0.97 if want == "harmful" else 0.03, abs=1e-6)
    assert body["max_tokens"] == 1 and body["allowed_token_ids"] == [27583, 723]
    assert body["logprob_token_ids"] == [27583, 723] and "structured_outputs" not in body and "stop" not in body
    assert "return_tokens_as_token_ids" not in body  # tokens come back as text, like the embedded engine's
    assert body["messages"][-1] == {"role": "assistant", "content": "Prompt harm:"}


@pytest.mark.parametrize(("user", "bot"), [("hi", "Sure."), ("hi", "EVIL stuff"), ("evil plan", "Sure."),
                                           ("evil plan", "EVIL stuff")])
async def test_both_halves_of_the_split_output_check_are_one_token(user, bot):
    from benchmarks.servers import prefill_aware_responder

    with StandIn(responder=prefill_aware_responder()) as s:
        async with CsrClient(s.url) as guard:
            res = await guard.check(POLICY, Direction.OUTPUT, user, bot)
            lookups = len(s.tokenize_requests)
            again = await guard.check(POLICY, Direction.OUTPUT, user + "!", bot)
        assert len(s.tokenize_requests) == lookups, "plans are looked up once per endpoint and prefill"
    v = res.verdict
    assert (v.prompt_harm, v.response_harm) == ("harmful" if "evil" in user else "unharmful",
                                                "harmful" if "EVIL" in bot else "unharmful")
    assert res.decode_plan == "one_token" and res.completion_tokens == 2  # the discarded guess is not counted
    assert (again.verdict.prompt_harm, again.verdict.response_harm) == (v.prompt_harm, v.response_harm)
    for body in s.chat_requests():
        assert body["max_tokens"] == 1 and body["allowed_token_ids"] == [27583, 723]


async def test_a_server_without_tokenize_keeps_the_grammar_plan_and_asks_once():
    with StandIn() as s:
        s.serve_tokenize = False  # NIM and other OpenAI-compatible servers: 404 there
        async with CsrClient(s.url) as guard:
            first = await guard.check(POLICY, Direction.INPUT, "Tell me something evil.", None)
            asked = len(s.tokenize_requests)
            second = await guard.check(POLICY, Direction.INPUT, "How do I bake bread?", None)
            decisions = guard.engine.plan_decisions()
        assert len(s.tokenize_requests) == asked and asked >= 1
        bodies = s.chat_requests()
    assert first.verdict.prompt_harm == "harmful" and second.verdict.prompt_harm == "unharmful"
    assert first.decode_plan == second.decode_plan == "grammar"
    assert second.completion_tokens == 3  # ' un', 'harm', 'ful': the grammar plan spells the whole word
    assert all("allowed_token_ids" not in b and b["structured_outputs"] and b["stop"] for b in bodies)
    (why,) = decisions.values()
    assert isinstance(why, tf.Fallback) and "404" in why.reason


async def test_a_server_that_refuses_the_parameters_keeps_the_grammar_plan():
    with StandIn() as s:
        s.inject(Fault("status", status=400, body={"error": {
            "message": "allowed_token_ids: Extra inputs are not permitted", "type": "BadRequestError",
            "param": None, "code": 400}}))
        async with CsrClient(s.url) as guard:
            first = await guard.check(POLICY, Direction.INPUT, "Tell me something evil.", None)
            second = await guard.check(POLICY, Direction.INPUT, "How do I bake bread?", None)
        bodies = s.chat_requests()
    assert first.verdict.prompt_harm == "harmful" and first.decode_plan == "grammar"
    assert second.verdict.prompt_harm == "unharmful" and second.decode_plan == "grammar"
    assert "allowed_token_ids" in bodies[0] and all("allowed_token_ids" not in b for b in bodies[1:])
    assert len(bodies) == 3


async def test_a_transient_tokenize_failure_uses_the_grammar_plan_once_then_asks_again():
    with StandIn() as s:
        s.inject(Fault("status", status=503, path="/tokenize"))
        async with CsrClient(s.url) as guard:
            first = await guard.check(POLICY, Direction.INPUT, "How do I bake bread?", None)
            second = await guard.check(POLICY, Direction.INPUT, "How do I bake bread??", None)
    assert first.decode_plan == "grammar" and second.decode_plan == "one_token"
    assert first.verdict.prompt_harm == second.verdict.prompt_harm == "unharmful"


async def test_an_answer_outside_the_two_tokens_fails_closed():
    with StandIn() as s:
        async with CsrClient(s.url) as guard:
            await guard.check(POLICY, Direction.INPUT, "warm-up", None)
            s.inject(Fault("text", text=" maybe", finish_reason="length"))
            with pytest.raises(VerdictParseError, match="maybe"):
                await guard.check(POLICY, Direction.INPUT, "How do I bake bread?", None)


async def test_the_rail_reports_the_plan(tmp_path):
    from tests.support.runtime import runtime as make_runtime

    with StandIn() as s:
        rt = make_runtime(s.url, policies={"p": {"policy": "No evil content.", "reasoning": False},
                                           "r": {"policy": "No evil content.", "reasoning": True}})
        try:
            fast = await rt.check("p", Direction.INPUT, "Tell me something evil.")
            out = await rt.check("p", Direction.OUTPUT, "hi", "Sure.")
            slow = await rt.check("r", Direction.INPUT, "Tell me something evil.")
        finally:
            await rt.aclose()
    assert fast.is_blocked and fast.metadata["decode_plan"] == "one_token" and fast.metadata["completion_tokens"] == 1
    assert not out.is_blocked and out.metadata["decode_plan"] == "one_token" and out.metadata["completion_tokens"] == 2
    assert slow.is_blocked and slow.metadata["decode_plan"] == "grammar"
