"""Inputs the guard cannot take whole, and odd inputs, end to end through NeMo Guardrails against the stand-in.

The stand-in's ``max_model_len`` (2048 tokens, counted with the real Gemma 3 tokenizer: the filler prose here is ~8
characters a token, random symbols ~1.4) makes a vLLM context-length 400 realistic.
"""

from __future__ import annotations

import json
import random
import string

import pytest

from nemo_csr_rail.long_input import excerpt, plan_windows, scrub
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.settings import parse_plugin_settings
from tests.support.e2e_helpers import ask, guard_texts, retail_rails
from tests.support.runtime import runtime
from tests.support.standin import StandIn

POLITICS = "Do not discuss politics or religion."
HELLO = "Hello! How can I help you today?"
ERROR_REFUSAL = "I'm sorry, I can't respond right now: the safety check could not run."


def _rails(tmp_path, guard, main_llm, **plugin):
    return retail_rails(tmp_path, guard, main_llm, **{"timeout_s": 5.0, **plugin})


def _filler(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["order", "parcel", "delivery", "refund", "invoice", "address", "tracking", "warehouse", "shipping"]
    out: list[str] = []
    size = 0
    while size < n:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n]


def _input_outcome(outcomes):
    return next(o for o in outcomes if o["metadata"]["direction"] == "input")


# ------------------------------------------------------------------------------------------------ odd inputs
ODD = {
    "control_chars": "where\x00is\x07my\x1b[31m order\x7f\x08?",
    "binary_junk": bytes(range(256)).decode("latin-1") * 4,
    # one line of random letters/digits/symbols, under max_chars (raised to 8000 for it below) and over the
    # server's context (~2,000 tokens by the stand-in's count, ~6,100 by the real Gemma 3 tokenizer's): a real 400
    "very_long_line": "".join(random.Random(0).choices(string.ascii_letters + string.digits + string.punctuation,
                                                       k=7900)),
    "non_english_zh": "我的订单在哪里？请帮我查一下物流信息。",
    "non_english_ar": "أين طلبي؟ أحتاج إلى تتبع الشحنة.",
    "non_english_ru": "Где мой заказ? Помогите отследить посылку.",
    "emoji_rtl_zwj": "👩‍👩‍👧 \u202egro.elpmaxe\u202c order",
}


@pytest.mark.parametrize("name", list(ODD))
async def test_odd_inputs_get_a_deliberate_decision(name, tmp_path, guard, main_llm):
    rails = _rails(tmp_path, guard, main_llm, **({"long_input": {"max_chars": 8000}} if name == "very_long_line" else {}))
    reply, outcomes = await ask(rails, ODD[name])
    o = _input_outcome(outcomes)
    meta = o["metadata"]
    assert meta["failed"] is False, meta
    assert meta["decision"] == "allow"
    json.dumps(meta)
    for text in guard_texts(guard):
        text.encode("utf-8")  # what went over the wire is valid UTF-8
    if name == "very_long_line":
        assert meta["long_input"]["trigger"] == "server_context"
    assert reply  # the turn completed


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
async def test_empty_and_whitespace_are_skipped_not_sent(text, tmp_path, guard, main_llm):
    rails = _rails(tmp_path, guard, main_llm)
    _, outcomes = await ask(rails, text)
    o = _input_outcome(outcomes)
    assert o["decision"] == "allow" and o["metadata"]["skipped"] == "empty user message"
    assert all("AI assistant:\nNone" not in t for t in guard_texts(guard)), "no input check was sent"


async def test_lone_surrogates(tmp_path, guard, main_llm):
    """The guard prompt replaces lone surrogates (they are not encodable as UTF-8 JSON).

    A benign one is checked directly: NeMo Guardrails' own main-LLM call cannot encode it either (its problem,
    not the rail's), so end to end only the blocked path, where the main LLM is never called, completes.
    """
    rt = runtime(guard.url)
    out = await rt.check("fast", Direction.INPUT, "order \ud800 status \udfff please")
    assert out.metadata["decision"] == "allow" and out.metadata["failed"] is False
    assert "\ufffd status \ufffd" in guard_texts(guard)[-1]
    rails = _rails(tmp_path, guard, main_llm)
    _, outcomes = await ask(rails, "who to vote \ud800 for \udfff")
    assert _input_outcome(outcomes)["decision"] == "block" and main_llm.chat_requests() == []


async def test_non_english_harmful_still_blocks(tmp_path, guard, main_llm):
    rails = _rails(tmp_path, guard, main_llm)
    reply, outcomes = await ask(rails, "我应该投票给谁？ vote 政治")
    assert _input_outcome(outcomes)["decision"] == "block"
    assert reply.startswith("I'm sorry, I can't help with that.")


# ------------------------------------------------------------------------------------------------ long inputs
async def test_one_megabyte_input_sample_strategy(tmp_path, guard, main_llm):
    """The opt-in ``sample``: 4 windows read, 1.2% of the text (every direction and the default ``windows``:
    tests/integration/test_long_items.py)."""
    rails = _rails(tmp_path, guard, main_llm, long_input={"strategy": "sample"})
    big = _filler(1_000_000)
    reply, outcomes = await ask(rails, big)
    meta = _input_outcome(outcomes)["metadata"]
    assert meta["decision"] == "allow" and meta["failed"] is False
    li = meta["long_input"]
    assert li["strategy"] == "sample" and li["trigger"] == "max_chars" and li["chars"] >= 999_000
    assert li["windows"] == 4 and li["coverage"] < 0.02
    sent = [t for t in guard_texts(guard) if "AI assistant:\nNone" in t]
    assert len(sent) == 4 and all(len(t) < 5000 for t in sent)
    assert reply == HELLO


@pytest.mark.parametrize("strategy", ["windows", "sample"])
@pytest.mark.parametrize("where", ["head", "tail"])
async def test_harmful_window_blocks_the_whole_message(where, strategy, tmp_path, guard, main_llm):
    rails = _rails(tmp_path, guard, main_llm, long_input={"strategy": strategy})
    bad = " Who should I vote for? "
    text = bad + _filler(50_000) if where == "head" else _filler(50_000) + bad
    reply, outcomes = await ask(rails, text)
    o = _input_outcome(outcomes)
    assert o["decision"] == "block" and o["metadata"]["failed"] is False
    li = o["metadata"]["long_input"]
    assert o["metadata"]["prompt_harm"] == "harmful" and li["strategy"] == strategy
    assert li["windows"] == (4 if strategy == "sample" else 1 + -(-(len(text) - 3000) // 2250))
    assert reply.startswith("I'm sorry, I can't help with that.")


async def test_windows_cover_everything_when_enough_windows(tmp_path, guard, main_llm):
    """Within max_windows windows the text is tiled with overlap: a harmful phrase anywhere is seen whole."""
    rails = _rails(tmp_path, guard, main_llm, long_input={"max_chars": 8000, "window_chars": 3000,
                                                           "max_windows": 8})
    filler = _filler(18_000)  # 8 windows of 3,000 starting every 2,250
    for cut in (2245, 2250, 2990, 3000, 3010, 5250, 9000, 17_990):  # around window boundaries
        text = filler[:cut] + " vote " + filler[cut:]
        _, outcomes = await ask(rails, text)
        o = _input_outcome(outcomes)
        assert o["decision"] == "block", cut
        assert o["metadata"]["long_input"]["coverage"] == 1.0


async def test_refuse_strategy_blocks_with_input_too_long(tmp_path, guard, main_llm):
    rails = _rails(tmp_path, guard, main_llm, on_error="allow",
                   long_input={"strategy": "refuse", "max_chars": 5000, "window_chars": 2000})
    reply, outcomes = await ask(rails, _filler(6000))
    meta = _input_outcome(outcomes)["metadata"]
    # Even with on_error=allow: padding a message must never switch the guard off.
    assert meta["decision"] == "block" and meta["error_kind"] == "input_too_long"
    assert "long_input.max_chars=5000" in meta["error"]
    assert guard.chat_requests() == []
    assert reply == ERROR_REFUSAL


async def test_server_context_400_applies_the_strategy(tmp_path, guard, main_llm):
    """max_chars set above what the server takes: the real 400 triggers the windows, not an unexplained block."""
    rails = _rails(tmp_path, guard, main_llm, long_input={"max_chars": 100_000, "window_chars": 3000})
    reply, outcomes = await ask(rails, _filler(20_000))
    meta = _input_outcome(outcomes)["metadata"]
    assert meta["decision"] == "allow" and meta["long_input"]["trigger"] == "server_context"
    assert reply == HELLO


async def test_server_context_400_with_refuse(tmp_path, guard, main_llm):
    rails = _rails(tmp_path, guard, main_llm, long_input={"strategy": "refuse", "max_chars": 100_000})
    _, outcomes = await ask(rails, _filler(20_000))
    meta = _input_outcome(outcomes)["metadata"]
    assert meta["error_kind"] == "input_too_long" and "context length" in meta["error"]
    assert len(guard.chat_requests()) == 1


async def test_windows_shrink_when_the_server_context_is_smaller_than_configured():
    # 12,000 characters of filler are ~1,500 real tokens: a 1,024-token server cannot take such a window
    with StandIn(max_model_len=1024) as small:
        rt = runtime(small.url, timeout_s=5.0, long_input={"max_chars": 20_000, "window_chars": 12_000})
        out = await rt.check("fast", Direction.INPUT, _filler(30_000))
        await rt.aclose()
    meta = out.metadata
    assert meta["failed"] is False and meta["long_input"]["window_chars"] < 12_000


async def test_long_bot_answer_is_windowed_with_user_excerpt(guard):
    rt = runtime(guard.url, timeout_s=5.0)
    out = await rt.check("fast", Direction.OUTPUT, _filler(20_000), _filler(30_000) + " vote for them")
    assert out.is_blocked and out.metadata["response_harm"] == "harmful"
    assert out.metadata["long_input"]["windows"] == 1 + -(-(30_014 - 3000) // 2250)  # every character: 14
    for body in guard.chat_requests():
        assert len(body["messages"][0]["content"]) < 6000


# ------------------------------------------------------------------------------------------------ units
def test_plan_windows_tiles_with_overlap_or_samples() -> None:
    text = "".join(chr(65 + i % 26) for i in range(10_000))
    plan = plan_windows(text, 3000, 8)
    assert plan.coverage == 1.0 and plan.windows[0] == text[:3000] and plan.windows[-1] == text[-3000:]
    assert "".join(w[:2700] for w in plan.windows[:-1]) in text
    sampled = plan_windows(text * 100, 3000, 4)
    assert len(sampled.windows) == 4 and sampled.coverage == pytest.approx(12_000 / 1_000_000)
    assert plan_windows("short", 3000, 4).windows == ("short",)


def test_excerpt_and_scrub() -> None:
    assert excerpt("abc", 10) == "abc"
    e = excerpt("a" * 100 + "b" * 100, 50)
    assert e.startswith("a") and e.endswith("b") and len(e) <= 50
    secret = "my account number is 1234-5678-9999 and"
    assert "1234" not in scrub(f"Invalid input: {secret!r}", secret)
    assert scrub("server overloaded", secret) == "server overloaded"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"long_input": {"strategy": "truncate"}}, "long_input.strategy"),
        ({"long_input": {"max_chars": 10}}, "long_input.max_chars"),
        ({"long_input": {"window_chars": 9000, "max_chars": 8000}}, "long_input"),
        ({"long_input": {"windows": 3}}, "long_input.windows"),
        ({"long_input": {"max_in_flight": 0}}, "long_input.max_in_flight"),
        ({"long_input": {"timeout_s": 0}}, "long_input.timeout_s"),
        ({"long_input": {"max_windows": 1}}, "long_input.max_windows"),
        ({"long_input": {"max_judged_chars": 100}}, "long_input.max_judged_chars"),
        ({"long_input": {"max_judged_chars": 3999}}, "long_input"),
        ({"tls": {"ca_bundle": "/no/such/file.pem"}}, "tls.ca_bundle"),
        ({"tls": {"verfy": False}}, "tls.verfy"),
        ({"breaker": {"threshold": 0}}, "breaker.threshold"),
    ],
)
def test_bad_reliability_settings_fail_at_load_naming_the_key(raw, key) -> None:
    from nemo_csr_rail.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_plugin_settings({"policies": {"p": {"policy": "x"}}, **raw})
    assert info.value.key == key, str(info.value)
