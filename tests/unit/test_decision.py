"""The typed decision (``nemo_csr_rail/decision.py``): its RailOutcome metadata is exactly the metadata the rails
returned before the type existed (the expected dicts are written out literally), its enums cover every error kind,
and its record is JSON-safe and reads back."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_csr_rail import errors
from nemo_csr_rail.client import CheckResult
from nemo_csr_rail.decision import Cost, Decision, ErrorKind, LongInputInfo, Outcome, SkipReason, on_error_for
from nemo_csr_rail.errors import CsrError
from nemo_csr_rail.eval.runner import check_decision, check_record, legacy_record
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.verdict import Verdict

HR = Policy.custom("hr", "No talk about salaries.", refusal_input="Sorry ({reasoning}) [{policy}]",
                   refusal_output="Blocked ({reasoning}) by {policy}.")


def result(verdict: Verdict, latency_ms: float = 12.3456, **kw) -> CheckResult:
    kw = {"prompt_tokens": 100, "completion_tokens": 3, "cached_tokens": 64, "endpoint": "http://g/v1", "calls": 1,
          "decode_plan": "one_token", **kw}
    return CheckResult(verdict, latency_ms, **kw)


def outcome(d: Decision):
    pytest.importorskip("nemoguardrails")
    from nemo_csr_rail.rail.outcome import to_rail_outcome

    return to_rail_outcome(d)


# -- metadata: the RailOutcome contract, key for key -------------------------------------------------------------
def test_allow_on_a_verdict():
    d = Decision.from_result(HR, Direction.INPUT, result(Verdict("unharmful", None, "Fine.", 0.12)))
    assert d.to_metadata() == {
        "policy": "hr", "direction": "input", "decision": "allow", "prompt_harm": "unharmful", "response_harm": None,
        "reasoning": "Fine.", "confidence": 0.12, "threshold": None, "reasoning_mode": True, "latency_ms": 12.35,
        "cached": False, "prompt_tokens": 100, "completion_tokens": 3, "cached_tokens": 64,
        "decode_plan": "one_token", "failed": False}
    out = outcome(d)
    assert not out.is_blocked and not out.failed and out.reason == "Fine." and out.metadata == d.to_metadata()


def test_block_on_a_verdict_with_reasoning():
    d = Decision.from_result(HR, Direction.INPUT, result(Verdict("harmful", None, "It asks about salaries.")))
    assert d.to_metadata() == {
        "policy": "hr", "direction": "input", "decision": "block", "prompt_harm": "harmful", "response_harm": None,
        "reasoning": "It asks about salaries.", "confidence": None, "threshold": None, "reasoning_mode": True,
        "latency_ms": 12.35, "cached": False, "prompt_tokens": 100, "completion_tokens": 3, "cached_tokens": 64,
        "decode_plan": "one_token", "failed": False, "refusal": "Sorry (It asks about salaries.) [hr]",
        "exception_message": "Input blocked by csr check input (policy hr): It asks about salaries."}
    out = outcome(d)
    assert out.is_blocked and not out.failed and out.reason == "It asks about salaries."


def test_block_of_a_cached_output_verdict_without_reasoning():
    v = Verdict("unharmful", "harmful", None, 0.9)
    d = Decision.from_result(HR, Direction.OUTPUT, CheckResult(v, 0.5, cached=True, calls=0), reasoning=False)
    assert d.to_metadata() == {
        "policy": "hr", "direction": "output", "decision": "block", "prompt_harm": "unharmful",
        "response_harm": "harmful", "reasoning": None, "confidence": 0.9, "threshold": None, "reasoning_mode": False,
        "latency_ms": 0.5, "cached": True, "prompt_tokens": None, "completion_tokens": None, "cached_tokens": None,
        "decode_plan": None, "failed": False, "refusal": "Blocked by hr.",
        "exception_message": "Output blocked by csr check output (policy hr): The response violates policy 'hr'."}
    assert outcome(d).reason == "The response violates policy 'hr'."


def test_threshold_decides_on_the_confidence_and_topic_history_counts():
    topic = Policy.topic("desk", "Only talk about the help desk.", history_turns=4, threshold=0.5)
    r = result(Verdict("harmful", None, None, 0.4), latency_ms=1.0, history_sent=3, history_dropped=1)
    d = Decision.from_result(topic, Direction.INPUT, r)
    assert d.outcome is Outcome.ALLOW and d.model_label == "harmful" and d.harmful is False
    assert d.to_metadata() == {
        "policy": "desk", "direction": "input", "decision": "allow", "prompt_harm": "harmful", "response_harm": None,
        "reasoning": None, "confidence": 0.4, "threshold": 0.5, "reasoning_mode": True, "latency_ms": 1.0,
        "cached": False, "prompt_tokens": 100, "completion_tokens": 3, "cached_tokens": 64,
        "decode_plan": "one_token", "failed": False, "history_messages": 3, "history_dropped": 1}


def test_long_input_windows_are_added_last():
    info = LongInputInfo(strategy="windows", trigger="max_chars", chars=9000, windows=3, window_chars=4000,
                         coverage=1.0)
    d = Decision.from_result(HR, Direction.INPUT, result(Verdict("harmful", None, None))).with_long_input(info)
    meta = d.to_metadata()
    assert list(meta)[-3:] == ["refusal", "exception_message", "long_input"]
    assert meta["long_input"] == {"strategy": "windows", "trigger": "max_chars", "chars": 9000, "windows": 3,
                                  "window_chars": 4000, "coverage": 1.0}
    assert meta["refusal"] == "Sorry [hr]"


def test_failed_check_that_blocks():
    d = Decision.from_error("hr", Direction.INPUT, errors.GuardTimeout("guard check exceeded 5s"), on_error="block",
                            latency_ms=5001.234, error_refusal="Sorry, {policy} check down ({reasoning})")
    assert d.to_metadata() == {
        "policy": "hr", "direction": "input", "decision": "block", "error_kind": "guard_timeout",
        "error": "guard check exceeded 5s", "on_error": "block", "latency_ms": 5001.23, "failed": True,
        "refusal": "Sorry, hr check down",
        "exception_message": "Input blocked by csr check input (policy hr): The safety check could not run "
                             "(guard_timeout): guard check exceeded 5s"}
    out = outcome(d)
    assert out.is_blocked and out.failed
    assert out.reason == "The safety check could not run (guard_timeout): guard check exceeded 5s"


def test_failed_check_that_fails_open():
    d = Decision.from_error("hr", Direction.OUTPUT, errors.GuardUnavailable("connection refused"), on_error="allow",
                            latency_ms=3.0, error_refusal="unused")
    assert d.failed and d.failed_open and d.refusal is None
    assert d.to_metadata() == {
        "policy": "hr", "direction": "output", "decision": "allow", "error_kind": "guard_unavailable",
        "error": "connection refused", "on_error": "allow", "latency_ms": 3.0, "failed": True, "failed_open": True}
    out = outcome(d)
    assert not out.is_blocked and not out.failed
    assert out.reason == "The safety check could not run (guard_unavailable): connection refused"


def test_a_bug_is_an_internal_error():
    d = Decision.from_error("?", Direction.INPUT, CsrError("internal error: KeyError: 'x'"), on_error="block",
                            latency_ms=0.1, error_refusal="Sorry.")
    assert d.error is ErrorKind.INTERNAL_ERROR and d.to_metadata()["error_kind"] == "internal_error"


@pytest.mark.parametrize(("direction", "reason", "text"), [
    (Direction.INPUT, SkipReason.EMPTY_MESSAGE, "empty user message"),
    (Direction.OUTPUT, SkipReason.EMPTY_MESSAGE, "empty bot message"),
    (Direction.OUTPUT, SkipReason.OWN_REFUSAL, "the plugin's own refusal"),
])
def test_skips_keep_their_public_text_and_name_the_metric_label(direction, reason, text):
    d = Decision.skipped("hr", direction, reason)
    assert d.to_metadata() == {"policy": "hr", "direction": direction.value, "decision": "allow", "skipped": text,
                               "failed": False}
    assert d.to_record()["skipped"] == reason.value in ("empty_message", "own_refusal")
    out = outcome(d)
    assert not out.is_blocked and out.reason is None


# -- enums -------------------------------------------------------------------------------------------------------
def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def test_error_kinds_are_exactly_the_kinds_of_the_error_classes():
    assert {k.value for k in ErrorKind} == {
        "config_error", "guard_unavailable", "guard_tls_error", "guard_timeout", "guard_http_error",
        "guard_protocol_error", "verdict_parse_error", "input_too_long", "engine_unavailable", "internal_error"}
    classes = [CsrError, *(c for c in _subclasses(CsrError) if c.__module__ == errors.__name__)]
    kinds = [c.kind for c in classes]
    assert all(isinstance(k, ErrorKind) for k in kinds), kinds
    assert sorted(kinds) == sorted(ErrorKind), "one error class per kind, and a kind for every class"
    assert CsrError.kind is ErrorKind.INTERNAL_ERROR


def test_enums_read_as_their_values():
    k = errors.GuardTimeout("x").kind
    assert k == "guard_timeout" and str(k) == "guard_timeout" and f"{k}" == "guard_timeout"
    assert f"{k:>14}" == " guard_timeout" and json.dumps({k: k}) == '{"guard_timeout": "guard_timeout"}'
    assert "%s" % k == "guard_timeout"  # noqa: UP031 -- what logging does with it
    assert str(Outcome.BLOCK) == "block" and f"{SkipReason.OWN_REFUSAL}" == "own_refusal"


def test_too_long_or_misconfigured_always_blocks():
    assert on_error_for(errors.InputTooLong("x"), "allow") == "block"
    assert on_error_for(errors.ConfigError("k", "x"), "allow") == "block"
    assert on_error_for(errors.GuardTimeout("x"), "allow") == "allow"


def test_a_decision_is_exactly_one_of_verdict_skip_error():
    with pytest.raises(ValueError):
        Decision("p", Direction.INPUT, Outcome.ALLOW)
    with pytest.raises(ValueError):
        Decision("p", Direction.INPUT, Outcome.BLOCK, skip=SkipReason.EMPTY_MESSAGE, refusal="r")
    with pytest.raises(ValueError):  # a block always says what the bot says instead
        Decision("p", Direction.INPUT, Outcome.BLOCK, verdict=Verdict("harmful", None), cost=Cost(1.0))


# -- records -----------------------------------------------------------------------------------------------------
def test_record_keys_are_fixed_and_it_reads_back():
    decisions = [
        Decision.from_result(HR, Direction.INPUT, result(Verdict("harmful", None, "r é \u2028", 0.75))),
        Decision.from_error("hr", Direction.OUTPUT, errors.VerdictParseError("odd"), on_error="allow", latency_ms=2,
                            error_refusal="x"),
        Decision.skipped("hr", Direction.OUTPUT, SkipReason.OWN_REFUSAL),
        Decision.from_result(HR, Direction.OUTPUT, result(Verdict("harmful", "unharmful"))).with_long_input(
            LongInputInfo("windows", "server_context", 10, 2, 5, 0.5)),
    ]
    keys = {tuple(d.to_record()) for d in decisions}
    assert len(keys) == 1
    for d in decisions:
        line = d.to_json()
        assert "\n" not in line and json.loads(line) == d.to_record()
        back = Decision.from_record(json.loads(line))
        assert back.to_record() == d.to_record() and back.to_metadata() == d.to_metadata()


def test_check_and_eval_records_use_input_output_and_keep_the_old_name():
    d = check_decision(HR, Direction.OUTPUT, None, result(Verdict("unharmful", "harmful", None, 0.97)))
    rec = check_record(d)
    assert rec["direction"] == "output" and rec["judged"] == "response" and rec["predicted"] == "harmful"
    assert rec["outcome"] == "block" and rec["model_label"] == "harmful" and rec["error"] is None
    failed = check_record(check_decision(HR, Direction.INPUT, None, error=RuntimeError("boom"), latency_ms=1.23456))
    assert failed["predicted"] is None and failed["error"] == {"kind": "internal_error", "message": "RuntimeError: boom"}
    assert failed["latency_ms"] == 1.235 and failed["reasoning_mode"] is True and failed["direction"] == "input"
    assert Decision.from_record(failed).to_record() == {k: v for k, v in failed.items() if k not in ("predicted",
                                                                                                    "judged")}
    old = {"run": "a", "id": "1", "direction": "prompt", "label": "harmful", "predicted": "harmful"}
    assert legacy_record(old) == {**old, "direction": "input", "judged": "prompt"}
    assert legacy_record(rec) is rec


# -- properties --------------------------------------------------------------------------------------------------
texts = st.one_of(st.none(), st.text(max_size=40))
harms = st.sampled_from(["harmful", "unharmful"])
finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)
counts = st.one_of(st.none(), st.integers(min_value=0, max_value=10**6))


@st.composite
def decisions(draw) -> Decision:
    direction = draw(st.sampled_from(list(Direction)))
    name = draw(st.text(min_size=1, max_size=12))
    kind = draw(st.sampled_from(["verdict", "error", "skip"]))
    if kind == "skip":
        return Decision.skipped(name, direction, draw(st.sampled_from(list(SkipReason))))
    if kind == "error":
        cls = draw(st.sampled_from([c for c in _subclasses(CsrError) if c.__init__ is CsrError.__init__]))
        return Decision.from_error(name, direction, cls(draw(st.text(max_size=40))),
                                   on_error=draw(st.sampled_from(["block", "allow"])), latency_ms=draw(finite),
                                   error_refusal=draw(st.sampled_from(["Sorry ({reasoning}).", "{policy} is down"])))
    policy = Policy.custom(name, "x", reasoning=draw(st.booleans()),
                           threshold=draw(st.one_of(st.none(), st.floats(0, 1))),
                           refusal_input=draw(st.text(max_size=20)).replace("{", "").replace("}", "") + "{reasoning}")
    verdict = Verdict(draw(harms), draw(harms) if direction.judged_as is Direction.OUTPUT else None, draw(texts),
                      draw(st.one_of(st.none(), st.floats(0, 1))))
    sent = draw(counts)
    r = CheckResult(verdict, draw(finite), cached=draw(st.booleans()), prompt_tokens=draw(counts),
                    completion_tokens=draw(counts), cached_tokens=draw(counts), calls=draw(st.integers(0, 3)),
                    endpoint=draw(st.sampled_from(["", "http://a/v1"])), history_sent=sent,
                    history_dropped=None if sent is None else draw(st.integers(0, 50)),
                    decode_plan=draw(st.sampled_from(["", "one_token", "grammar", "mixed"])))
    d = Decision.from_result(policy, direction, r)
    if draw(st.booleans()):
        d = d.with_long_input(LongInputInfo("windows", draw(st.sampled_from(["max_chars", "server_context"])),
                                            draw(st.integers(0, 10**6)), draw(st.integers(1, 64)),
                                            draw(st.integers(128, 10**5)), draw(st.floats(0, 1))))
    return d


@settings(max_examples=300, deadline=None)
@given(decisions())
def test_metadata_and_record_are_always_strict_json(d: Decision):
    meta = d.to_metadata()
    assert json.loads(json.dumps(meta, allow_nan=False)) == meta
    assert all(type(v) in (str, int, float, bool, dict, type(None)) for v in meta.values())  # no enum leaks out
    assert meta["decision"] == d.outcome.value and meta["failed"] is d.failed
    assert ("refusal" in meta) is d.blocked and ("exception_message" in meta) is d.blocked
    rec = d.to_record()
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec
    assert Decision.from_record(json.loads(d.to_json())).to_record() == rec
    if d.cost is not None:
        assert math.isclose(meta["latency_ms"], d.cost.latency_ms, abs_tol=0.005 + 1e-9)
