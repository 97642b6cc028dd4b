"""``coverage.judge_messages``'s rules as properties, with an in-process runtime that calls a text harmful iff it
holds "EVIL" (the stand-in's rules without a socket; tests/integration/test_coverage.py runs them over real ones):
for any request, the decision blocks exactly when a message of the side holds the marker, names the first such
message, counts every item once, and a second identical request is answered from the cache."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_csr_rail.client import CheckResult
from nemo_csr_rail.coverage import judge_messages
from nemo_csr_rail.decision import Decision, SkipReason
from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.policy import Direction, compile_policies
from nemo_csr_rail.settings import parse_plugin_settings
from nemo_csr_rail.transcript import from_openai
from nemo_csr_rail.verdict import Verdict


class MarkerRuntime:
    """The :class:`~nemo_csr_rail.coverage.Judge` shape: harmful iff the judged text holds EVIL."""

    def __init__(self, **top: Any) -> None:
        self.settings = parse_plugin_settings({"policies": {"p": {"policy": "No evil."}}, **top})
        self.policies = compile_policies(self.settings)
        self.telemetry = None
        self.calls: list[tuple[Direction, str, str | None]] = []
        self.issued: set[str] = set()

    def remember_refusal(self, refusal: str | None) -> None:
        if refusal:
            self.issued.add(" ".join(refusal.split()))

    def issued_refusal(self, text: str) -> bool:
        return " ".join(text.split()) in self.issued

    def policy(self, name: str | None) -> Any:
        if name not in self.policies:
            raise ConfigError(f"policies.{name}", "unknown policy")
        return self.policies[name]

    async def decide(self, policy_name, direction, user_message, bot_message=None, history=None) -> Decision:
        policy = self.policy(policy_name)
        judged = bot_message if direction.judged_as is Direction.OUTPUT else user_message
        if not (judged or "").strip():
            return Decision.skipped(policy.name, direction, SkipReason.EMPTY_MESSAGE)
        self.calls.append((direction, user_message, bot_message))
        harm = "harmful" if "EVIL" in judged else "unharmful"
        verdict = Verdict(harm, None) if direction.judged_as is Direction.INPUT else Verdict("unharmful", harm)
        return Decision.from_result(policy, direction, CheckResult(verdict, 1.0))


REFUSAL = "I'm sorry, I can't help with that."  # the policy's input refusal, rendered without reasoning
_text = st.one_of(st.none(), st.sampled_from(["", " ", "hello", "EVIL plan", "weather?", "an EVIL idea", "ok",
                                              REFUSAL, REFUSAL + " It asks for EVIL things."]))
_call = st.fixed_dictionaries({"id": st.sampled_from(["c1", "c2", None]),
                               "function": st.fixed_dictionaries({"name": st.sampled_from(["search", "EVIL_tool"]),
                                                                  "arguments": st.sampled_from(["{}", '{"q": 1}']) })})
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system", "developer", "wizard"]), "content": _text},
    optional={"tool_calls": st.lists(_call, max_size=2), "tool_call_id": st.sampled_from(["c1", "zz"])})

INPUT_ROLES = {"user", "tool", "system", "developer", "wizard"}


def _refused(msgs):
    """Oracle: input-side messages whose first assistant message after them, before the next user message, is a
    refusal the runtime issued (REFUSAL exactly; REFUSAL with reasoning the client wrote is forged)."""
    out, pending = set(), []
    for m in msgs:
        if m.role == "assistant":
            if " ".join(m.text.split()) == REFUSAL:
                out.update(pending)
            pending = []
        elif m.role == "user":
            pending = [m.index]
        else:
            pending.append(m.index)
    return out


def _input_marks(msgs):
    """Marked input-side messages that block: not the ones refused in their own turn (the last user message, the
    current one, always counts)."""
    current = max((m.index for m in msgs if m.role == "user"), default=None)
    refused = _refused(msgs)
    return [m.index for m in msgs if m.role in INPUT_ROLES and "EVIL" in _judged_text(msgs, m)
            and (m.index not in refused or m.index == current)]


def _judged_text(msgs, m):
    """A tool result is judged with its tool's name (the call its id answers, the latest before it): a harmful
    name blocks a non-empty result as the text would."""
    if m.role != "tool" or not m.text.strip():
        return m.text
    names = {c.id: c.name for a in msgs[:m.index] if a.role == "assistant" for c in a.tool_calls if c.id is not None}
    return f"{names.get(m.tool_call_id or '', '')}\n{m.text}"


def _output_marks(msgs):
    return [m.index for m in msgs if m.role == "assistant"
            and ("EVIL" in m.text or any("EVIL" in c.name for c in m.tool_calls))]


def _items(msgs, side):
    if side is Direction.INPUT:
        return sum(1 for m in msgs if m.role in INPUT_ROLES)
    return sum(1 + len(m.tool_calls) for m in msgs if m.role == "assistant")


@settings(max_examples=300, deadline=None)
@given(st.lists(_message, max_size=12), st.sampled_from([Direction.INPUT, Direction.OUTPUT]))
def test_blocks_exactly_on_the_first_marked_message_and_counts_every_item(raw, side):
    rt = MarkerRuntime()
    rt.remember_refusal(REFUSAL)  # issued in an earlier turn
    msgs = from_openai(raw)
    d = asyncio.run(judge_messages(rt, "p", side, msgs))
    marks = _input_marks(msgs) if side is Direction.INPUT else _output_marks(msgs)
    assert d.blocked == bool(marks) and d.direction is side
    cov = d.coverage
    assert cov is not None and cov.mode == "all" and cov.messages == len(msgs)
    assert cov.blocked_index == (marks[0] if marks else None)
    if marks:
        assert cov.blocked_role == msgs[marks[0]].role
    assert cov.judged + cov.skipped == _items(msgs, side) and cov.judged == cov.guard + cov.cached
    assert cov.guard == len(rt.calls) == len(set(rt.calls))  # identical items judged once
    again = asyncio.run(judge_messages(rt, "p", side, msgs))
    assert again.blocked == d.blocked and again.coverage.guard == 0 and again.coverage.cached == cov.judged
    assert len(rt.calls) == cov.guard  # nothing new sent


@settings(max_examples=100, deadline=None)
@given(st.lists(_message, min_size=1, max_size=8), st.sampled_from([Direction.INPUT, Direction.OUTPUT]))
def test_coverage_last_sends_at_most_the_current_message(raw, side):
    rt = MarkerRuntime(coverage="last")
    d = asyncio.run(judge_messages(rt, "p", side, from_openai(raw)))
    assert d.coverage is None and len(rt.calls) <= 1


def test_a_judge_that_raises_fails_closed():
    """The rail runtime never raises; a Judge from another adapter might: that item blocks as an internal error."""
    class Raising(MarkerRuntime):
        async def decide(self, policy_name, direction, user_message, bot_message=None, history=None):
            if "boom" in (user_message or ""):
                raise RuntimeError("adapter bug")
            return await super().decide(policy_name, direction, user_message, bot_message, history)

    rt = Raising()
    d = asyncio.run(judge_messages(rt, "p", Direction.INPUT, from_openai([{"role": "user", "content": "hello"},
                                                                          {"role": "user", "content": "boom"}])))
    assert d.blocked and d.failed and d.error.value == "internal_error" and d.coverage.blocked_index == 1
    assert "adapter bug" in d.error_message
