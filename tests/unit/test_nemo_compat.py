"""The turn-shape workaround's event rewriting and the request record, on NeMo's event shapes (no server)."""

from __future__ import annotations

import logging

from nemo_csr_rail.rail import nemo_compat
from nemo_csr_rail.rail.nemo_compat import REPLAYED_TOOL_CALLS, settle_events
from nemo_csr_rail.rail.transcript_events import (
    REQUEST_MESSAGES,
    mark_request,
    request_messages,
    request_transcript,
    with_current,
)

CALLS = [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]
UAF = "UtteranceUserActionFinished"


def _user(text):
    return {"role": "user", "content": text}


def _options(**rails):
    return {"role": "context", "content": {"generation_options": {"rails": rails}}}


def test_an_answered_replayed_tool_call_becomes_inert_and_the_original_is_untouched():
    bot_calls = {"type": "BotToolCalls", "tool_calls": CALLS}
    events = [{"type": UAF, "final_transcript": "hi"}, bot_calls, {"type": UAF, "final_transcript": "next"}]
    out = settle_events(events, [_user("hi"), {"role": "assistant", "tool_calls": CALLS}, _user("next")],
                        tool_input_configured=False)
    assert out[1] == {"type": REPLAYED_TOOL_CALLS, "tool_calls": CALLS}
    assert events[1] is bot_calls and bot_calls["type"] == "BotToolCalls", "NeMo's cached events are not mutated"


def test_a_tool_call_the_request_ends_with_keeps_its_flow():
    events = [{"type": UAF, "final_transcript": "hi"}, {"type": "BotToolCalls", "tool_calls": CALLS}]
    assert settle_events(events, [], tool_input_configured=False) == events


def test_a_tool_call_this_process_already_answered_is_kept():
    events = [{"type": "BotToolCalls", "tool_calls": CALLS}, {"type": "StartToolOutputRails"},
              {"type": "StartToolCallBotAction", "tool_calls": CALLS}, {"type": UAF, "final_transcript": "x"}]
    assert settle_events(events, [], tool_input_configured=True) == events


def test_tool_results_last_run_the_input_rails():
    msgs = [_user("weather?"), {"role": "assistant", "tool_calls": CALLS}, {"role": "tool", "content": "sunny"}]
    plain = [{"type": UAF, "final_transcript": "weather?"}, {"type": "UserMessage", "text": "weather?"},
             {"type": "BotToolCalls", "tool_calls": CALLS}, {"type": "UserMessage", "text": "weather?"}]
    out = settle_events(plain, msgs, tool_input_configured=False)
    assert out[-1] == {"type": UAF, "final_transcript": "weather?"} and out[2]["type"] == REPLAYED_TOOL_CALLS

    grouped = [*plain[:3], {"type": "UserToolMessages", "tool_messages": []}]
    kept = settle_events(grouped, msgs, tool_input_configured=True)
    assert kept[-1]["type"] == "UserToolMessages", "tool-input rails on: NeMo's own path"
    switched_off = settle_events(grouped, [_options(tool_input=False), *msgs], tool_input_configured=True)
    assert switched_off[-1] == {"type": UAF, "final_transcript": "weather?"}


def test_the_request_record_replaces_older_ones_and_numbers_the_callers_messages():
    events = [{"type": REQUEST_MESSAGES, "messages": [_user("old")]}, {"type": UAF, "final_transcript": "old"}]
    msgs = [_options(output=False), _user("a"), {"role": "context", "content": {"x": 1}}, _user("b")]
    mark_request(events, msgs)
    assert [e["type"] for e in events] == [REQUEST_MESSAGES, UAF]
    assert request_messages(events) == msgs
    transcript = request_transcript(events)
    assert [(m.index, m.role, m.text) for m in transcript] == [(0, "user", "a"), (2, "user", "b")]
    changed, current = with_current(transcript, "user", "b (masked)")
    assert current == 2 and changed[-1].text == "b (masked)" and transcript[-1].text == "b"
    answered, index = with_current(transcript, "assistant", "Sure.")
    assert index == 3 and answered[-1].role == "assistant" and answered[-1].text == "Sure."
    assert request_transcript([{"type": UAF}]) is None


def test_an_unverified_nemo_gets_the_workaround_and_a_warning(monkeypatch, caplog):
    class App:
        config = None

        def _get_events_for_messages(self, messages, state):
            return [{"type": UAF, "final_transcript": messages[-1]["content"]}]

    monkeypatch.setattr(nemo_compat, "nemo_version", lambda: "9.9.9")
    monkeypatch.setattr(nemo_compat, "_warned", set())
    app = App()
    with caplog.at_level(logging.WARNING, logger="nemo_csr_rail"):
        assert nemo_compat.install(app) and nemo_compat.install(app)
    assert [r.message for r in caplog.records if "9.9.9" in r.message and "not among" in r.message]
    assert len(caplog.records) == 1, "warned once"
    events = app._get_events_for_messages([_user("hi")], None)
    assert events[0]["type"] == REQUEST_MESSAGES and events[1]["type"] == UAF
    nemo_compat.uninstall(app)
    assert app._get_events_for_messages([_user("hi")], None) == [{"type": UAF, "final_transcript": "hi"}]


# ------------------------------------------------------------------------------------------------------- fuzzing
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TYPES = st.sampled_from(["BotToolCalls", "StartToolCallBotAction", UAF, "UserMessage", "UserToolMessages",
                          "ContextUpdate", REQUEST_MESSAGES, "Other"])
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=8)
_EVENT = st.one_of(st.fixed_dictionaries({"type": _TYPES}, optional={"tool_calls": _JSON, "text": _JSON}), _JSON)
_MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", "context", "system", "x"])},
                          optional={"content": _JSON, "tool_calls": _JSON, "tool_call_id": _JSON}),
    _JSON)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_EVENT, max_size=8), messages=st.lists(_MESSAGE, max_size=6), configured=st.booleans())
def test_settling_any_events_never_raises_nor_mutates(events, messages, configured):
    import copy

    before = copy.deepcopy(events)
    out = settle_events(events, messages, tool_input_configured=configured)
    assert events == before and isinstance(out, list)
    for i, e in enumerate(out):  # a BotToolCalls left in place is the request's last event, or already answered
        if isinstance(e, dict) and e.get("type") == "BotToolCalls":
            assert i == len(out) - 1 or nemo_compat._answered(out, i)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_EVENT, max_size=6), messages=st.lists(_MESSAGE, max_size=6))
def test_any_request_record_reads_back_without_raising(events, messages):
    events = list(events)
    mark_request(events, messages)
    transcript = request_transcript(events)
    assert transcript is not None and all(m.role not in ("context", "event") for m in transcript)
    assert sum(1 for e in events if isinstance(e, dict) and e.get("type") == REQUEST_MESSAGES) == 1
