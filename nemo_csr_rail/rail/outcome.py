"""Verdicts and failures → ``RailOutcome``: the decision, the reason, and JSON-safe evidence.

This is the only place that decides allow/block. Metadata never carries the user's or bot's text, so it is safe to
return from ``nemoguardrails server``; it always says whether a block came from the policy or from a failed check.
"""

from __future__ import annotations

import re
from typing import Any

from nemoguardrails.actions.rail_outcome import RailOutcome

from nemo_csr_rail.client import CheckResult
from nemo_csr_rail.errors import CsrError
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.settings import FLOW_OF_DIRECTION

_SPACES = re.compile(r"[ \t]{2,}")


def render_refusal(template: str, reasoning: str | None, policy: str) -> str:
    """Fill a refusal template; an absent reasoning leaves no dangling space or empty brackets."""
    text = template.format(reasoning=reasoning or "", policy=policy)
    if not reasoning:
        text = text.replace("()", "").replace("[]", "")
    return _SPACES.sub(" ", text).strip()


_BLOCKED = {Direction.INPUT: "Input", Direction.OUTPUT: "Output", Direction.TOOL_CALL: "Tool call",
            Direction.TOOL_RESULT: "Tool result", Direction.RETRIEVAL: "Retrieved document"}


def _exception_message(policy: str, direction: Direction, reason: str) -> str:
    return f"{_BLOCKED[direction]} blocked by {FLOW_OF_DIRECTION[direction.value]} (policy {policy}): {reason}"


def from_result(policy: Policy, direction: Direction, result: CheckResult) -> RailOutcome:
    verdict = result.verdict
    threshold = policy.threshold
    if result.escalation is not None and not result.escalation.escalated:
        threshold = result.escalation.escalate_at  # the screen decided: below escalate_at the turn is allowed
    blocked = verdict.is_harmful(direction, threshold)
    meta: dict[str, Any] = {
        "policy": policy.name,
        "direction": direction.value,
        "decision": "block" if blocked else "allow",
        "prompt_harm": verdict.prompt_harm,
        "response_harm": verdict.response_harm,
        "reasoning": verdict.reasoning,
        "confidence": verdict.confidence,
        "threshold": policy.threshold,
        "reasoning_mode": policy.reasoning_mode(direction),
        "latency_ms": round(result.latency_ms, 2),
        "cached": result.cached,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cached_tokens": result.cached_tokens,
        "decode_plan": result.decode_plan or None,
        "failed": False,
    }
    if result.escalation is not None:  # reasoning: escalate — the screen, and whether the reasoned check decided
        e = result.escalation
        meta.update({"escalated": e.escalated, "screen_verdict": e.screen_verdict,
                     "screen_confidence": e.screen_confidence, "screen_decode_plan": e.screen_decode_plan,
                     "screen_completion_tokens": e.screen_completion_tokens, "escalate_at": e.escalate_at})
        if e.error is not None:
            meta["escalation_error"] = e.error
    if result.history_sent is not None:  # topic policies: counts only, never the messages themselves
        meta["history_messages"] = result.history_sent
        meta["history_dropped"] = result.history_dropped
    if not blocked:
        return RailOutcome.allow(reason=verdict.reasoning, metadata=meta)
    what = {Direction.INPUT: "prompt", Direction.OUTPUT: "response", Direction.TOOL_CALL: "tool call",
            Direction.TOOL_RESULT: "tool result", Direction.RETRIEVAL: "retrieved document"}[direction]
    reason = verdict.reasoning or f"The {what} violates policy '{policy.name}'."
    meta["refusal"] = render_refusal(policy.refusal(direction), verdict.reasoning, policy.name)
    meta["exception_message"] = _exception_message(policy.name, direction, reason)
    return RailOutcome.block(reason=reason, metadata=meta)


def from_error(policy_name: str, direction: Direction, error: CsrError, *, on_error: str, latency_ms: float,
               error_refusal: str) -> RailOutcome:
    reason = f"The safety check could not run ({error.kind}): {error.message}"
    meta: dict[str, Any] = {
        "policy": policy_name,
        "direction": direction.value,
        "decision": "allow" if on_error == "allow" else "block",
        "error_kind": error.kind,
        "error": error.message,
        "on_error": on_error,
        "latency_ms": round(latency_ms, 2),
        "failed": True,
    }
    if on_error == "allow":
        meta["failed_open"] = True
        return RailOutcome.allow(reason=reason, metadata=meta)
    meta["refusal"] = render_refusal(error_refusal, None, policy_name)
    meta["exception_message"] = _exception_message(policy_name, direction, reason)
    return RailOutcome.failure(reason=reason, metadata=meta)


def skipped(policy_name: str, direction: Direction, why: str) -> RailOutcome:
    return RailOutcome.allow(reason=None, metadata={"policy": policy_name, "direction": direction.value,
                                                    "decision": "allow", "skipped": why, "failed": False})


__all__ = ["from_error", "from_result", "render_refusal", "skipped"]
