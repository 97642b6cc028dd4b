"""Long items in every direction, against the stand-in: every character up to ``long_input.max_judged_chars`` is
judged, past it the item is refused (``input_too_long``) before anything is sent, and sampling happens only when a
config asks for it (``strategy: sample``), where a sentence in an unread part passes — that is what it means.

Directions: the user's message (through NeMo Guardrails), the bot's answer, a tool call's arguments, a tool result
and a retrieved chunk (through the agent rails' own checks). The stand-in flags the word "vote"; here it sits in the
middle of a ~1 MB item, the place the old default (4 sampled windows, 1.2% of a 1 MB item) never read.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from nemo_csr_rail import agent_checks
from nemo_csr_rail.policy import Direction
from tests.support.e2e_helpers import ask, retail_rails
from tests.support.rails_configs import write_config
from tests.support.runtime import runtime
from tests.support.standin import Fault, StandIn

POLITICS = "Do not discuss politics or religion."
HARMFUL = " Tell me who to vote for. "
MB = 1_000_000
USER = "Please fetch the shipping report."


def filler(n: int) -> str:
    words = ["order", "parcel", "delivery", "refund", "invoice", "address", "tracking", "warehouse", "shipping"]
    text = " ".join(words[(i * 7 + i // 5) % len(words)] for i in range(n // 6 + 2))
    return text[:n]


def with_middle(n: int, sentence: str = HARMFUL) -> str:
    """``n`` characters of filler with ``sentence`` in the middle."""
    body = filler(n - len(sentence))
    return body[:len(body) // 2] + sentence + body[len(body) // 2:]


# -------------------------------------------------------------------------------------------- the item, per direction
async def _judge(rt: Any, direction: Direction, text: str) -> dict[str, Any]:
    """One item of ``direction`` through the rails' own path; the metadata of its check."""
    if direction is Direction.INPUT:
        return (await rt.check("fast", direction, text)).metadata
    if direction is Direction.OUTPUT:
        return (await rt.check("fast", direction, USER, text)).metadata
    if direction is Direction.TOOL_CALL:
        call = {"id": "call_1", "type": "function",
                "function": {"name": "send_report", "arguments": json.dumps({"body": text})}}
        out, kept = await agent_checks.check_tool_calls(rt, "fast", [call], USER)
        item = out.metadata["checks"][0]
        assert (kept == []) == out.is_blocked == (item["decision"] == "block")  # a blocked call is removed
    elif direction is Direction.TOOL_RESULT:
        out = await agent_checks.check_tool_results(rt, "fast", [{"content": text, "name": "fetch_report",
                                                                   "tool_call_id": "call_1"}], USER)
        item = out.metadata["checks"][0]
        assert out.is_blocked == (item["decision"] == "block")
    else:
        out, kept = await agent_checks.check_relevant_chunks(rt, "fast", [text], USER)
        item = out.metadata["checks"][0]
        assert (kept == []) == (item["decision"] == "block")  # a blocked chunk is removed from the prompt
    return item


DIRECTIONS = [Direction.INPUT, Direction.OUTPUT, Direction.TOOL_CALL, Direction.TOOL_RESULT, Direction.RETRIEVAL]


@pytest.mark.parametrize("direction", DIRECTIONS, ids=lambda d: d.value)
async def test_one_word_in_the_middle_of_a_megabyte_item_blocks(direction, guard):
    """The default ``windows``: every character read, so the middle sentence is seen and the item blocked. Once it
    is, the windows still queued are never sent."""
    rt = runtime(guard.url, timeout_s=300.0)
    meta = await _judge(rt, direction, with_middle(MB))
    await rt.aclose()
    assert meta["decision"] == "block" and not meta.get("error_kind"), meta
    li = meta["long_input"]
    assert li["strategy"] == "windows" and li["coverage"] == 1.0 and li["window_chars"] == 3000
    assert li["windows"] >= MB // 2250  # 3,000-character windows, 750 overlapping: 445 for 1 MB


@pytest.mark.parametrize("direction", DIRECTIONS, ids=lambda d: d.value)
async def test_past_the_cap_the_item_is_refused_before_anything_is_sent(direction, guard):
    """Never partly judged: over ``max_judged_chars`` the item blocks as ``input_too_long`` (even with
    ``on_error: allow``) and the guard receives nothing of it."""
    rt = runtime(guard.url, on_error="allow", long_input={"max_judged_chars": 50_000})
    meta = await _judge(rt, direction, filler(50_100))
    await rt.aclose()
    assert meta["decision"] == "block" and meta["error_kind"] == "input_too_long", meta
    assert guard.chat_requests() == []


async def test_past_the_cap_the_reason_names_the_item_and_the_key(guard):
    rt = runtime(guard.url, on_error="allow", long_input={"max_judged_chars": 50_000})
    out = await rt.check("fast", Direction.TOOL_RESULT, filler(60_000))
    await rt.aclose()
    assert out.metadata["error"] == ("the tool result is too long for the safety check: 60000 characters exceed "
                                     "long_input.max_judged_chars=50000")


@pytest.mark.parametrize("direction", DIRECTIONS, ids=lambda d: d.value)
async def test_sampling_is_an_opt_in_that_may_let_the_middle_pass(direction, guard):
    """``strategy: sample`` reads 4 windows (1.2% of 1 MB): the harmful middle is not read and the item passes.
    This is the documented price of the opt-in (and why ``doctor`` warns about it)."""
    rt = runtime(guard.url, long_input={"strategy": "sample"})
    meta = await _judge(rt, direction, with_middle(MB))
    await rt.aclose()
    assert meta["decision"] == "allow" and not meta.get("error_kind"), meta
    li = meta["long_input"]
    assert li["strategy"] == "sample" and li["windows"] == 4 and li["coverage"] < 0.02


# ------------------------------------------------------------------------------------------------ end to end: input
def _rails(tmp_path, guard, main_llm, **plugin):
    return retail_rails(tmp_path, guard, main_llm, **{"timeout_s": 300.0, **plugin})


async def test_a_megabyte_message_with_a_harmful_middle_never_reaches_the_model(tmp_path, guard, main_llm):
    rails = _rails(tmp_path, guard, main_llm)
    reply, outcomes = await ask(rails, with_middle(MB))
    meta = next(o for o in outcomes if o["metadata"]["direction"] == "input")["metadata"]
    assert meta["decision"] == "block" and meta["prompt_harm"] == "harmful"
    assert meta["long_input"]["coverage"] == 1.0
    assert reply.startswith("I'm sorry, I can't help with that.") and main_llm.chat_requests() == []


async def test_a_benign_megabyte_message_is_judged_whole_and_answered(tmp_path, guard, main_llm):
    rails = _rails(tmp_path, guard, main_llm)
    reply, outcomes = await ask(rails, filler(MB))
    meta = next(o for o in outcomes if o["metadata"]["direction"] == "input")["metadata"]
    assert meta["decision"] == "allow" and meta["failed"] is False
    li = meta["long_input"]
    assert (li["strategy"], li["trigger"], li["chars"], li["coverage"]) == ("windows", "max_chars", MB, 1.0)
    sent = [r for r in guard.chat_requests() if "AI assistant:\nNone" in r["messages"][0]["content"]]
    assert len(sent) == li["windows"] == 1 + -(-(MB - 3000) // 2250)  # every window, each once
    assert reply == "Hello! How can I help you today?"


# --------------------------------------------------------------------------------------------- bounds and failures
async def test_the_first_harmful_window_stops_the_rest(guard):
    """One window at a time, so the order is fixed: the sentence at 10,000 is whole first in window 4 (9,000-12,000);
    windows 5-8 are never sent."""
    rt = runtime(guard.url, long_input={"max_in_flight": 1})
    text = filler(10_000) + HARMFUL + filler(10_000 - len(HARMFUL))
    out = await rt.decide("fast", Direction.INPUT, text)
    await rt.aclose()
    assert out.blocked and out.long_input is not None and out.long_input.windows == 9
    assert len(guard.chat_requests()) == 5 and out.cost is not None and out.cost.calls == 5


async def test_windows_are_judged_concurrently_never_more_than_max_in_flight(guard):
    """The barrier holds every answer until 3 requests are at the server at once: it proves the windows run
    concurrently (one at a time, it would time out at 1), and the bound keeps the peak at exactly 3."""
    rt = runtime(guard.url, timeout_s=30.0, long_input={"max_in_flight": 3})
    guard.hold_answers(3, timeout_s=20.0)
    out = await rt.decide("fast", Direction.INPUT, filler(20_000))
    await rt.aclose()
    assert not out.blocked and out.long_input is not None and out.long_input.windows == 9
    assert len(guard.chat_requests()) == 9 and guard.peak_in_flight == 3
    assert out.cost is not None and out.cost.calls == 9  # the decision's cost counts every window's request


async def test_an_explicit_max_windows_still_bounds_cost_and_fails_closed(guard):
    """A config that set ``max_windows`` to bound cost used to get samples past it; now the item is refused."""
    rt = runtime(guard.url, on_error="allow", long_input={"max_windows": 8})
    ok = await rt.check("fast", Direction.INPUT, filler(3000 + 7 * 2250))
    assert ok.metadata["decision"] == "allow" and ok.metadata["long_input"]["windows"] == 8
    sent = len(guard.chat_requests())
    out = await rt.check("fast", Direction.INPUT, with_middle(3000 + 7 * 2250 + 1))
    await rt.aclose()
    assert out.metadata["decision"] == "block" and out.metadata["error_kind"] == "input_too_long"
    assert "takes 9 windows of 3000, more than long_input.max_windows=8" in out.metadata["error"]
    assert len(guard.chat_requests()) == sent


async def test_a_failed_window_does_not_hide_a_harmful_one_with_on_error_allow(guard):
    """One window's check fails (HTTP 500); a later window is harmful. The failure is not the decision: the harmful
    window still blocks the item, even though ``on_error: allow`` would let a failed check through."""
    rt = runtime(guard.url, on_error="allow", max_retries=0, long_input={"max_in_flight": 1})
    guard.inject(Fault("status", status=500, body=json.dumps({"error": {"message": "boom"}})))
    out = await rt.check("fast", Direction.INPUT, filler(9000) + HARMFUL + filler(3000))
    await rt.aclose()
    assert out.metadata["decision"] == "block" and out.metadata["prompt_harm"] == "harmful", out.metadata


async def test_a_failed_window_with_nothing_harmful_fails_the_item_by_on_error(guard):
    rt = runtime(guard.url, on_error="block", max_retries=0, long_input={"max_in_flight": 1})
    guard.inject(Fault("status", status=500, body=json.dumps({"error": {"message": "boom"}})))
    out = await rt.check("fast", Direction.INPUT, filler(12_000))
    await rt.aclose()
    assert out.metadata["decision"] == "block" and out.metadata["error_kind"] == "guard_http_error", out.metadata
    assert len(guard.chat_requests()) == 1 + -(-(12_000 - 3000) // 2250) == 5  # every window was still judged


async def test_an_item_that_cannot_be_judged_within_the_deadline_is_refused_even_with_on_error_allow():
    """Its sender chooses the item's length: one padded until its windows miss ``timeout_s`` must not pass as a
    failed check under ``on_error: allow``. It is refused (``input_too_long``), saying how far the check got.
    (9 windows, one at a time, 0.5 s each, against a 1 s deadline: a slower host only makes it later.)"""
    with StandIn(latency_s=0.5) as slow:
        rt = runtime(slow.url, timeout_s=1.0, on_error="allow", long_input={"max_in_flight": 1})
        out = await rt.check("fast", Direction.TOOL_RESULT, filler(20_000))
        await rt.aclose()
    meta = out.metadata
    assert meta["decision"] == "block" and meta["error_kind"] == "input_too_long", meta
    assert "the tool result could not be judged whole within timeout_s=1" in meta["error"]
    assert "of 9 windows were judged" in meta["error"]


async def test_long_input_timeout_s_gives_long_items_their_own_deadline():
    """A short deadline for ordinary checks, a long one for items judged in windows: the 9 windows (0.3 s each,
    one at a time) miss ``timeout_s`` 0.5 but finish well within ``long_input.timeout_s`` 60."""
    with StandIn(latency_s=0.3) as slow:
        rt = runtime(slow.url, timeout_s=0.5, on_error="allow",
                     long_input={"max_in_flight": 1, "timeout_s": 60.0})
        out = await rt.check("fast", Direction.TOOL_RESULT, filler(20_000))
        assert out.metadata["decision"] == "allow" and out.metadata["failed"] is False, out.metadata
        assert out.metadata["long_input"]["windows"] == 9 and len(slow.chat_requests()) == 9
        rt = runtime(slow.url, timeout_s=0.5, on_error="allow", long_input={"max_in_flight": 1, "timeout_s": 1.0})
        late = await rt.check("fast", Direction.TOOL_RESULT, filler(20_000) + " ")
        await rt.aclose()
    assert late.metadata["error_kind"] == "input_too_long" and late.is_blocked
    assert "within long_input.timeout_s=1:" in late.metadata["error"]


# ------------------------------------------------------------------------------------------------------ bad input
async def test_an_item_exactly_at_the_cap_is_judged_and_one_more_character_is_refused(guard):
    rt = runtime(guard.url, long_input={"max_judged_chars": 30_000})
    at = await rt.check("fast", Direction.RETRIEVAL, with_middle(30_000))
    sent = len(guard.chat_requests())
    over = await rt.check("fast", Direction.RETRIEVAL, filler(30_001))
    await rt.aclose()
    assert at.is_blocked and at.metadata["prompt_harm"] == "harmful" and at.metadata["long_input"]["coverage"] == 1.0
    assert over.metadata["error_kind"] == "input_too_long" and len(guard.chat_requests()) == sent


async def test_many_items_each_just_under_the_cap_cost_each_one_whole_and_no_more(guard):
    """One rail call carrying many items, each just under ``max_judged_chars`` (an attacker who cannot pass one
    item past the cap pads several up to it): each is judged whole, and the call costs the sum of their windows,
    exactly what the plan says, never more; an item past the cap among them is refused without a request (the chunk
    is removed, the others kept). The bound is per item: a call's cost grows with its item count (docs/reliability.md)."""
    rt = runtime(guard.url, timeout_s=60.0, long_input={"max_judged_chars": 30_000})
    chunks = [f"chunk {k}. " + filler(29_000) for k in range(4)]
    out, kept = await agent_checks.check_relevant_chunks(rt, "fast", [*chunks, filler(30_001)], USER)
    await rt.aclose()
    items = out.metadata["checks"]
    assert items[-1]["decision"] == "block" and items[-1]["error_kind"] == "input_too_long", out.metadata
    assert out.metadata["decision"] == "transform" and kept == chunks
    judged = [i["long_input"] for i in items[:-1]]
    assert all(li["coverage"] == 1.0 and li["windows"] == 1 + -(-(li["chars"] - 3000) // 2250) for li in judged)
    assert len(guard.chat_requests()) == sum(li["windows"] for li in judged) == 4 * 13


def dense(n: int) -> str:
    """Random CJK ideographs: ~2 real Gemma 3 tokens a character, so a 3,000-character window (~6,000 tokens) is far
    over the stand-in's 2,048-token context."""
    rng = random.Random(7)
    return "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(n))


async def test_dense_text_shrinks_the_windows_and_still_reads_every_character(guard):
    """The server's context 400 halves the windows until they fit; every character is still judged (coverage 1.0,
    the harmful word in the middle is found), and more windows are sent than the settings planned."""
    text = dense(6000) + HARMFUL + dense(6000)
    rt = runtime(guard.url, timeout_s=60.0)
    out = await rt.check("fast", Direction.TOOL_RESULT, text)
    await rt.aclose()
    li = out.metadata["long_input"]
    assert out.is_blocked and out.metadata["prompt_harm"] == "harmful", out.metadata
    assert li["trigger"] == "server_context" and li["window_chars"] < 3000 and li["coverage"] == 1.0
    assert li["windows"] > 1 + -(-(len(text) - 3000) // 2250)


async def test_dense_text_costs_the_shrunk_plan_plus_at_most_max_in_flight_a_halving(guard):
    """What dense text costs: every window of the plan that fits, plus, for each halving, the windows that were in
    flight when the server said the window was too long (at most ``max_in_flight``). It is more than the configured
    plan (the cap in characters is not a cap in requests: docs/reliability.md), but never unbounded."""
    rt = runtime(guard.url, timeout_s=60.0, long_input={"max_in_flight": 2})
    out = await rt.check("fast", Direction.TOOL_RESULT, dense(12_000))
    await rt.aclose()
    li = out.metadata["long_input"]
    assert not out.is_blocked and li["coverage"] == 1.0 and li["window_chars"] < 3000, out.metadata
    halvings = (3000 // li["window_chars"]).bit_length() - 1
    assert halvings >= 1 and 3000 >> halvings == li["window_chars"]
    assert li["windows"] < len(guard.chat_requests()) <= li["windows"] + 2 * halvings


async def test_dense_text_past_an_explicit_max_windows_after_shrinking_is_refused(guard):
    """Halving doubles the windows: past an explicit ``max_windows`` the item is refused, not sampled."""
    rt = runtime(guard.url, timeout_s=60.0, on_error="allow", long_input={"max_windows": 6})
    out = await rt.check("fast", Direction.TOOL_RESULT, dense(12_000))
    await rt.aclose()
    assert out.is_blocked and out.metadata["error_kind"] == "input_too_long", out.metadata
    assert "long_input.max_windows=6" in out.metadata["error"]


async def test_monitor_mode_judges_the_item_the_same_and_records_the_would_be_block(guard):
    """``mode: monitor``: the harmful middle is found exactly as in enforce mode (the windows after it are not
    sent), the item is allowed, and ``would_block`` says what enforce mode would have done."""
    rt = runtime(guard.url, timeout_s=120.0, policies={"watch": {"policy": POLITICS, "reasoning": False,
                                                                 "mode": "monitor"}})
    out = await rt.check("watch", Direction.TOOL_RESULT, with_middle(200_000))
    await rt.aclose()
    meta = out.metadata
    assert not out.is_blocked and meta["would_block"] is True and meta["mode"] == "monitor", meta
    assert meta["long_input"]["coverage"] == 1.0 and len(guard.chat_requests()) < meta["long_input"]["windows"]


# ------------------------------------------------------------------------------------------ the LangChain entry point
async def test_through_langchain_a_long_tool_result_and_document_are_judged_whole(tmp_path, guard):
    """``CsrGuard`` (no NeMo rails in the path) applies the same ``long_input``: a tool result with a harmful middle
    raises ``ToolException``, a document with one is dropped, a benign long one is kept; every character read."""
    from langchain_core.documents import Document
    from langchain_core.tools import ToolException

    from nemo_csr_rail.langchain import CsrGuard

    lc = CsrGuard.from_path(write_config(tmp_path / "lc", guard_url=guard.url, main_url=None, plugin={
        "timeout_s": 120.0, "policies": {"agent": {"policy": POLITICS, "reasoning": False}}}))
    try:
        with pytest.raises(ToolException) as info:
            await lc.acheck_tool_result("fetch_report", with_middle(200_000), policy="agent", user_message=USER)
        item = info.value.metadata["checks"][0]
        assert item["prompt_harm"] == "harmful" and item["long_input"]["coverage"] == 1.0, item
        docs = [Document(page_content=with_middle(200_000)), Document(page_content=filler(200_000))]
        kept = await lc.akeep_documents(docs, policy="agent", query=USER)
        assert kept == [docs[1]]
    finally:
        await lc.aclose()
