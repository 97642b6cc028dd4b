"""A check's decision as a typed value: allow or block, why, on which verdict, at what cost.

This is the only place that decides allow/block, and :class:`Decision` is the core's one description of a decision.
Every consumer reads it: the NeMo adapter turns it into a ``RailOutcome`` (:meth:`Decision.to_metadata` is that
outcome's metadata), telemetry counts, traces and audits it, and ``check --json`` and ``eval``'s ``rows.jsonl``
write its :meth:`Decision.to_record`. No NeMo Guardrails or LangChain here (``tests/tooling/test_layering.py``).

Nothing here carries the user's or bot's text, so the metadata and the record are safe to return from
``nemoguardrails server``; they always say whether a block came from the policy or from a failed check.

Directions are :class:`~nemo_csr_rail.policy.Direction` values, ``input`` / ``output`` and the agent rails'
``tool_call`` / ``tool_result`` / ``retrieval`` (docs/agents.md), in every serialisation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from nemo_csr_rail.errors import ConfigError, CsrError, ErrorKind, InputTooLong
from nemo_csr_rail.plans.escalate import Escalation
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.verdict import RECORD_KEYS as VERDICT_KEYS
from nemo_csr_rail.verdict import Verdict

if TYPE_CHECKING:
    from nemo_csr_rail.client import CheckResult

__all__ = ["Cost", "Coverage", "Decision", "ErrorKind", "LongInputInfo", "Outcome", "SkipReason", "on_error_for",
           "render_refusal"]


class _Value(str, Enum):
    """A ``str`` enum that prints, formats and serialises as its value on every Python version."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return str(self.value).__format__(spec)


class Outcome(_Value):
    """What the rail does with the turn. A failed check has one too: the one its ``on_error`` chose."""

    ALLOW = "allow"
    BLOCK = "block"


class SkipReason(_Value):
    """Why a turn was allowed without asking the guard: the ``reason`` label of ``csr_checks_skipped_total``."""

    #: nothing to judge: an empty or whitespace-only message
    EMPTY_MESSAGE = "empty_message"
    #: the bot message is (a streamed chunk of) a refusal this runtime issued
    OWN_REFUSAL = "own_refusal"
    #: agent rails (docs/agents.md): the answer makes no tool calls
    NO_TOOL_CALLS = "no_tool_calls"
    #: agent rails: the request has no tool messages
    NO_TOOL_MESSAGES = "no_tool_messages"
    #: agent rails: the retrieval returned no chunks
    NO_RETRIEVED_CHUNKS = "no_retrieved_chunks"
    #: agent rails: the turn's tool messages were all checked by the first run of the tool-results rail
    CHECKED_THIS_TURN = "checked_this_turn"

    def describe(self, direction: Direction) -> str:
        """The metadata's ``skipped`` text, a public value kept as it always was."""
        if self is SkipReason.EMPTY_MESSAGE:
            return "empty bot message" if direction is Direction.OUTPUT else "empty user message"
        return _SKIP_TEXT[self]


_SKIP_TEXT = {SkipReason.OWN_REFUSAL: "the plugin's own refusal", SkipReason.NO_TOOL_CALLS: "no tool calls",
              SkipReason.NO_TOOL_MESSAGES: "no tool messages", SkipReason.NO_RETRIEVED_CHUNKS: "no retrieved chunks",
              SkipReason.CHECKED_THIS_TURN: "checked with the turn's first tool message"}


@dataclass(frozen=True)
class Cost:
    """What a check cost. ``cached``: answered from the verdict cache (no model call). ``calls``: model requests
    sent; ``decode_plan``: "one_token", "grammar" or "mixed" (None when cached or unknown). A failed check knows
    only its latency."""

    latency_ms: float
    cached: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    calls: int | None = None
    decode_plan: str | None = None
    endpoint: str | None = None

    @classmethod
    def of(cls, result: CheckResult) -> Cost:
        return cls(latency_ms=result.latency_ms, cached=result.cached, prompt_tokens=result.prompt_tokens,
                   completion_tokens=result.completion_tokens, cached_tokens=result.cached_tokens,
                   calls=result.calls, decode_plan=result.decode_plan or None, endpoint=result.endpoint or None)

    def to_record(self) -> dict[str, Any]:
        return {"latency_ms": round(self.latency_ms, 3), "cached": self.cached, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens,
                "calls": self.calls, "decode_plan": self.decode_plan, "endpoint": self.endpoint}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Cost:
        return cls(**{f.name: record[f.name] for f in fields(cls) if record.get(f.name) is not None})


@dataclass(frozen=True)
class LongInputInfo:
    """How ``long_input`` handled an item too long for one check: ``strategy`` "windows" (every character, ``coverage``
    1.0) or "sample" (the opt-in; ``coverage`` the share read); ``windows`` is the plan's count."""

    strategy: str
    trigger: str  # "max_chars" (the settings) or "server_context" (the guard server said it does not fit)
    chars: int
    windows: int
    window_chars: int
    coverage: float

    def to_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Coverage:
    """Which messages of the request one rail call judged (whole-conversation coverage, docs/coverage.md).

    Items are messages' texts and assistant tool calls (an assistant message with text and two calls is three).
    ``judged`` = ``guard`` + ``cached``: every item was judged, by a guard request in this call or by the verdict of
    an identical item (the ``judged_messages`` cache, or the same item earlier in this request). ``skipped``: items
    not sent to the guard because there is nothing to judge (no text) or they are the plugin's own refusal.
    ``blocked_index`` / ``blocked_role``: the message whose item decided a block (the first in message order), None
    when nothing blocked. ``multi_turn``: the user turns judged together (split attacks), None when the policy does
    not ask for it or the request has fewer than two user turns. ``refused``: harmful input-side messages already
    refused in their own turn, which do not block this one (docs/coverage.md)."""

    mode: str  # "all" | "last"
    messages: int
    judged: int
    guard: int
    cached: int
    skipped: int = 0
    blocked_index: int | None = None
    blocked_role: str | None = None
    multi_turn: int | None = None
    #: input-side messages judged harmful that the conversation shows refused in their own turn (the next assistant
    #: message is the policy's refusal): judged, counted, and not blocking this turn
    refused: int = 0

    def to_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Coverage:
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


_SPACES = re.compile(r"[ \t]{2,}")


def render_refusal(template: str, reasoning: str | None, policy: str) -> str:
    """Fill a refusal template; an absent reasoning leaves no dangling space or empty brackets."""
    text = template.format(reasoning=reasoning or "", policy=policy)
    if not reasoning:
        text = text.replace("()", "").replace("[]", "")
    return _SPACES.sub(" ", text).strip()


def on_error_for(error: CsrError, configured: str) -> str:
    """The ``on_error`` that applies to ``error``: a broken config, or a text too long to check, always blocks
    (padding a message must not switch the guard off); every other failure follows the configured choice."""
    return "block" if isinstance(error, (ConfigError, InputTooLong)) else configured


def _error_kind(error: CsrError) -> ErrorKind:
    try:
        return ErrorKind(error.kind)
    except ValueError:  # a kind this package does not define (a third-party subclass): not a known failure
        return ErrorKind.INTERNAL_ERROR


@dataclass(frozen=True)
class Decision:
    """One check's decision. Exactly one of ``verdict`` (the guard judged), ``error`` (the check failed; ``outcome``
    is what ``on_error`` chose) and ``skip`` (nothing was sent to the guard) is set."""

    policy: str
    direction: Direction
    outcome: Outcome
    verdict: Verdict | None = None
    skip: SkipReason | None = None
    error: ErrorKind | None = None
    error_message: str | None = None
    on_error: str | None = None
    cost: Cost | None = None
    threshold: float | None = None
    #: True, False, or "escalate"
    reasoning_mode: bool | str | None = None
    #: mode: monitor — the check ran as in enforce mode but the turn is never blocked; whether it would have been
    would_block: bool | None = None
    #: reasoning: escalate — what the screen found and whether the reasoned check decided
    escalation: Escalation | None = None
    #: topic policies: earlier messages sent as history, and those left out; None for the other layouts
    history_messages: int | None = None
    history_dropped: int | None = None
    long_input: LongInputInfo | None = None
    #: what the bot says instead (blocks only)
    refusal: str | None = None
    #: whole-conversation coverage: which messages the rail call judged (None: one message, coverage: last)
    coverage: Coverage | None = None

    def __post_init__(self) -> None:
        # on the check's path: coerce plain strings only (the constructors below pass the enums themselves)
        if type(self.direction) is not Direction:
            object.__setattr__(self, "direction", Direction(self.direction))
        if type(self.outcome) is not Outcome:
            object.__setattr__(self, "outcome", Outcome(self.outcome))
        if self.skip is not None and type(self.skip) is not SkipReason:
            object.__setattr__(self, "skip", SkipReason(self.skip))
        if self.error is not None and type(self.error) is not ErrorKind:
            object.__setattr__(self, "error", ErrorKind(self.error))
        if (self.verdict is not None) + (self.skip is not None) + (self.error is not None) != 1:
            raise ValueError("a Decision has exactly one of verdict, skip and error")
        if self.skip is not None and self.outcome is not Outcome.ALLOW:
            raise ValueError("a skipped check is allowed")
        if self.verdict is not None and self.cost is None:
            raise ValueError("a judged Decision has a cost")
        if (self.refusal is not None) != (self.outcome is Outcome.BLOCK):
            raise ValueError("a block has a refusal, and only a block")

    # -- the decide step: the only code that chooses allow or block ---------------------------------------------
    @classmethod
    def from_result(cls, policy: Policy, direction: Direction, result: CheckResult, *,
                    reasoning: bool | None = None) -> Decision:
        """The policy's decision on a verdict (``threshold`` applies to the confidence when both exist).
        ``reasoning``: the mode the check was forced to (``check`` / ``eval``); default the policy's own."""
        verdict = result.verdict
        threshold = policy.threshold
        escalation = result.escalation
        if escalation is not None and not escalation.escalated:
            threshold = escalation.escalate_at  # the screen decided: below escalate_at the turn is allowed
        harmful = verdict.is_harmful(direction, threshold)
        monitor = policy.monitors(direction)
        blocked = harmful and not monitor  # monitor mode: judged exactly the same, never blocks
        return cls(
            policy=policy.name, direction=direction, outcome=Outcome.BLOCK if blocked else Outcome.ALLOW,
            verdict=verdict, cost=Cost.of(result), threshold=policy.threshold,
            reasoning_mode=policy.reasoning_mode(direction) if reasoning is None else reasoning,
            would_block=harmful if monitor else None, escalation=escalation,
            history_messages=result.history_sent,
            history_dropped=result.history_dropped if result.history_sent is not None else None,
            refusal=render_refusal(policy.refusal(direction), verdict.reasoning, policy.name) if blocked else None)

    @classmethod
    def from_error(cls, policy_name: str, direction: Direction, error: CsrError, *, on_error: str,
                   latency_ms: float | None, error_refusal: str, threshold: float | None = None,
                   reasoning_mode: bool | str | None = None, monitor: bool = False) -> Decision:
        """A failed check, decided by ``on_error`` ("allow": fail open; anything else blocks). In monitor mode it
        never blocks, whatever ``on_error`` says; ``would_block`` records what enforce mode would have done."""
        allowed = on_error == "allow" or monitor
        return cls(
            policy=policy_name, direction=direction, outcome=Outcome.ALLOW if allowed else Outcome.BLOCK,
            error=_error_kind(error), error_message=error.message, on_error=on_error,
            cost=None if latency_ms is None else Cost(latency_ms), threshold=threshold,
            reasoning_mode=reasoning_mode, would_block=on_error != "allow" if monitor else None,
            refusal=None if allowed else render_refusal(error_refusal, None, policy_name))

    @classmethod
    def skipped(cls, policy_name: str, direction: Direction, reason: SkipReason) -> Decision:
        """Allowed without a check: nothing to judge, the plugin's own refusal, or (agent rails) nothing of the
        rail's kind in the call, or already checked this turn."""
        return cls(policy=policy_name, direction=direction, outcome=Outcome.ALLOW, skip=reason)

    def with_long_input(self, info: LongInputInfo) -> Decision:
        return replace(self, long_input=info)

    def with_coverage(self, coverage: Coverage) -> Decision:
        return replace(self, coverage=coverage)

    # -- derived ------------------------------------------------------------------------------------------------
    @property
    def blocked(self) -> bool:
        return self.outcome is Outcome.BLOCK

    @property
    def failed(self) -> bool:
        """The check could not run (``outcome`` is ``on_error``'s choice, not the guard's)."""
        return self.error is not None

    @property
    def failed_open(self) -> bool:
        return self.failed and self.outcome is Outcome.ALLOW

    @property
    def monitored(self) -> bool:
        """A monitor-mode check: it never blocks; ``would_block`` says what enforce mode would have done."""
        return self.would_block is not None

    @property
    def model_label(self) -> str | None:
        """The model's own label for the judged field (before any threshold)."""
        if self.verdict is None:
            return None
        # the agent directions: the field of the side they are judged as (a tool call: the response)
        return self.verdict.prompt_harm if self.direction.judged_as is Direction.INPUT else self.verdict.response_harm

    @property
    def harmful(self) -> bool | None:
        """The policy's answer to "is it harmful?": None when the guard did not judge (failed or skipped)."""
        return None if self.verdict is None else self.blocked or bool(self.would_block)  # monitor: would-be blocks

    @property
    def reason(self) -> str | None:
        """The ``RailOutcome``'s reason: the model's reasoning, or why the check failed; None for a skip."""
        if self.error is not None:
            return f"The safety check could not run ({self.error.value}): {self.error_message}"
        if self.verdict is None:
            return None
        if not self.blocked:
            return self.verdict.reasoning
        return self.verdict.reasoning or f"The {self.direction.spec.noun} violates policy '{self.policy}'."

    @property
    def exception_message(self) -> str | None:
        """The message of the rail exception a block raises (``enable_rails_exceptions``)."""
        if not self.blocked:
            return None
        return self.direction.spec.exception_message(self.policy, self.reason)

    # -- serialisations -----------------------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        """The ``RailOutcome`` metadata: a public contract (flows read ``refusal`` and ``exception_message``,
        applications the rest), kept key for key and value for value as it was before this type existed."""
        meta: dict[str, Any] = {"policy": self.policy, "direction": self.direction.value,
                                "decision": self.outcome.value}
        if self.skip is not None:
            meta["skipped"] = self.skip.describe(self.direction)
            meta["failed"] = False
            if self.coverage is not None:
                meta["coverage"] = self.coverage.to_record()
            return meta
        cost = self.cost
        if self.error is not None:
            meta.update(error_kind=self.error.value, error=self.error_message, on_error=self.on_error,
                        latency_ms=None if cost is None else round(cost.latency_ms, 2), failed=True)
            if not self.blocked:
                meta["failed_open"] = True
        else:
            assert self.verdict is not None and cost is not None
            meta.update(self.verdict.to_record())
            meta.update(threshold=self.threshold, reasoning_mode=self.reasoning_mode,
                        latency_ms=round(cost.latency_ms, 2), cached=cost.cached, prompt_tokens=cost.prompt_tokens,
                        completion_tokens=cost.completion_tokens, cached_tokens=cost.cached_tokens,
                        decode_plan=cost.decode_plan or None, failed=False)
            if self.escalation is not None:  # reasoning: escalate — the screen, and whether reasoning decided
                meta.update(self.escalation.to_record())
            if self.history_messages is not None:  # topic policies: counts only, never the messages themselves
                meta["history_messages"] = self.history_messages
                meta["history_dropped"] = self.history_dropped
        if self.monitored:
            meta["mode"] = "monitor"
            meta["would_block"] = self.would_block
        if self.blocked:
            meta["refusal"] = self.refusal
            meta["exception_message"] = self.exception_message
        if self.long_input is not None:
            meta["long_input"] = self.long_input.to_record()
        if self.coverage is not None:  # coverage: all — counts, index and role only, never the messages
            meta["coverage"] = self.coverage.to_record()
        return meta

    def to_record(self) -> dict[str, Any]:
        """The complete decision as one flat, JSON-safe object with a fixed set of keys (null when not applicable):
        the record ``check --json`` prints and ``eval`` appends to ``rows.jsonl``. :meth:`from_record` reads it back.
        ``direction`` is ``input`` / ``output``; ``error`` is null or ``{kind, message}``; ``skipped`` is a
        :class:`SkipReason` name."""
        verdict = self.verdict.to_record() if self.verdict is not None else dict.fromkeys(VERDICT_KEYS)
        cost = self.cost.to_record() if self.cost is not None else dict.fromkeys(_COST_KEYS)
        return {
            "policy": self.policy,
            "direction": self.direction.value,
            "outcome": self.outcome.value,
            "failed": self.failed,
            "failed_open": self.failed_open,
            "skipped": None if self.skip is None else self.skip.value,
            "error": None if self.error is None else {"kind": self.error.value, "message": self.error_message},
            "on_error": self.on_error,
            "model_label": self.model_label,
            **verdict,
            "threshold": self.threshold,
            "reasoning_mode": self.reasoning_mode,
            "mode": "monitor" if self.monitored else "enforce",
            "would_block": self.would_block,
            "escalation": None if self.escalation is None else self.escalation.to_record(),
            **cost,
            "history_messages": self.history_messages,
            "history_dropped": self.history_dropped,
            "long_input": None if self.long_input is None else self.long_input.to_record(),
            "refusal": self.refusal,
            "exception_message": self.exception_message,
            "coverage": None if self.coverage is None else self.coverage.to_record(),
        }

    def to_json(self) -> str:
        """:meth:`to_record` as one line of JSON (UTF-8 text, not ASCII-escaped)."""
        return json.dumps(self.to_record(), ensure_ascii=False)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Decision:
        """Read a :meth:`to_record` object back (extra keys, such as ``eval``'s ``run`` and ``label``, are
        ignored). The latency comes back at the record's precision (microseconds)."""
        skip = SkipReason(record["skipped"]) if record.get("skipped") else None
        err = record.get("error")
        judged = skip is None and not err
        long_input = record.get("long_input")
        coverage = record.get("coverage")
        return cls(
            policy=record["policy"], direction=Direction(record["direction"]), outcome=Outcome(record["outcome"]),
            verdict=Verdict.from_record(record) if judged else None, skip=skip,
            error=ErrorKind(err["kind"]) if err else None, error_message=err["message"] if err else None,
            on_error=record.get("on_error"),
            cost=Cost.from_record(record) if record.get("latency_ms") is not None else None,
            threshold=record.get("threshold"), reasoning_mode=record.get("reasoning_mode"),
            would_block=record.get("would_block"),
            escalation=Escalation.from_record(record["escalation"]) if record.get("escalation") else None,
            history_messages=record.get("history_messages"), history_dropped=record.get("history_dropped"),
            long_input=LongInputInfo(**long_input) if long_input else None, refusal=record.get("refusal"),
            coverage=Coverage.from_record(coverage) if coverage else None)


_COST_KEYS = tuple(f.name for f in fields(Cost))
