"""The agent rails' decisions: many items per rail call, each judged on its own, folded into one
:class:`AgentDecision`.

One answer can carry many tool calls, one turn many tool results, one retrieval many chunks. Each item is rendered
by :mod:`nemo_csr_rail.agent` and checked through :meth:`CheckRuntime.decide` exactly like a message (same policies,
decode plans, ``long_input``, ``on_error``, telemetry: one metric/audit/span per item, labelled with the item's
direction). Identical items are checked once; at most :data:`~nemo_csr_rail.agent.MAX_CONCURRENT_CHECKS` run at a
time. The folded metadata names what was removed (call ids, tool names, chunk positions) and never carries the
items' text.

Shared by the NeMo actions (:mod:`nemo_csr_rail.rail.actions`, which turn the folded decision into a
``RailOutcome`` with :func:`nemo_csr_rail.rail.outcome.agent_rail_outcome`) and the LangChain wrappers
(:mod:`nemo_csr_rail.langchain`), so both decide the same way. No NeMo here: a LangChain user never imports it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nemo_csr_rail.agent import (
    MAX_CONCURRENT_CHECKS,
    content_text,
    judged_turn,
    render_document,
    render_tool_call,
    render_tool_result,
    tool_calls_from,
)
from nemo_csr_rail.decision import Decision, Outcome, SkipReason, render_refusal
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.runtime import CheckRuntime

#: more calls than this in one answer are all removed unchecked (a deliberate block, not hundreds of thousands of
#: guard requests); hundreds are checked, MAX_CONCURRENT_CHECKS at a time
MAX_TOOL_CALLS = 1024
#: per-item metadata kept in the folded outcome (no text, no raw model output)
_ITEM_KEYS = ("decision", "prompt_harm", "response_harm", "reasoning", "confidence", "reasoning_mode", "latency_ms",
              "cached", "decode_plan", "prompt_tokens", "completion_tokens", "cached_tokens", "failed", "error_kind",
              "skipped", "long_input", "escalated", "screen_verdict", "screen_confidence", "mode", "would_block")


@dataclass(frozen=True)
class AgentDecision:
    """The items of one rail call folded into one decision: blocked with the first blocked item's reason and refusal
    (every item is in ``metadata["checks"]``). ``failed``: that first blocked item's check could not run (the block
    is ``on_error``'s). ``metadata`` is the rail's public, JSON-safe metadata (no item text); ``decisions`` the
    items' own decisions, in the order checked (equal items once)."""

    outcome: Outcome
    metadata: dict[str, Any]
    reason: str | None = None
    failed: bool = False
    decisions: tuple[Decision, ...] = field(default=(), compare=False)

    @property
    def blocked(self) -> bool:
        return self.outcome is Outcome.BLOCK

    @property
    def is_blocked(self) -> bool:
        """:attr:`blocked`, under the name NeMo's ``RailOutcome`` gives it (code written against either reads it)."""
        return self.blocked


async def check_each(runtime: CheckRuntime, policy: str | None, direction: Direction,
                     turns: Sequence[tuple[str, str | None]]) -> list[Decision]:
    """One decision per ``(user, bot)`` turn, in order; equal turns are checked once, a bounded number at a time."""
    distinct = list(dict.fromkeys(turns))
    gate = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)

    async def one(turn: tuple[str, str | None]) -> Decision:
        async with gate:
            return await runtime.decide(policy, direction, turn[0], turn[1])

    results = await asyncio.gather(*(one(t) for t in distinct))
    by_turn = dict(zip(distinct, results, strict=True))
    return [by_turn[t] for t in turns]


def skipped(runtime: CheckRuntime, policy: str | None, direction: Direction, reason: SkipReason) -> AgentDecision:
    """Allowed without asking the guard: nothing of this kind in the rail call, or already checked in this turn;
    counted in ``csr_checks_skipped_total`` like the runtime's own skips."""
    decision = Decision.skipped(runtime.policy_label(policy), direction, reason)
    runtime.record_skip(decision)
    return AgentDecision(Outcome.ALLOW, decision.to_metadata(), decisions=(decision,))


def _skipped_as(runtime: CheckRuntime, policy: str, direction: Direction, reason: SkipReason) -> str:
    """Count an empty rail call that still reports its full metadata; returns the metadata's ``skipped`` text."""
    runtime.record_skip(Decision.skipped(policy, direction, reason))
    return reason.describe(direction)


def _item(d: Decision, **ids: Any) -> dict[str, Any]:
    meta = d.to_metadata()
    return {**ids, **{k: meta[k] for k in _ITEM_KEYS if k in meta}}


def _policy_label(outs: Iterable[Decision], fallback: str | None) -> str:
    for o in outs:
        if o.policy:
            return o.policy
    return fallback or "?"


def _fold(blocked: list[Decision], meta: dict[str, Any], decisions: Sequence[Decision] = ()) -> AgentDecision:
    """Block with the first blocked item's reason and refusal (all of them are in ``meta['checks']``)."""
    meta["failed"] = any(o.failed for o in blocked)
    if not blocked:
        meta["decision"] = "allow"
        return AgentDecision(Outcome.ALLOW, meta, decisions=tuple(decisions))
    first = blocked[0]
    meta["decision"] = "block"
    first_meta = first.to_metadata()
    meta["reasoning"] = first_meta.get("reasoning")
    meta["refusal"] = first_meta.get("refusal")
    meta["exception_message"] = first_meta.get("exception_message")
    if first.failed:
        meta["error_kind"] = first_meta.get("error_kind")
    return AgentDecision(Outcome.BLOCK, meta, reason=first.reason, failed=first.failed, decisions=tuple(decisions))


# ------------------------------------------------------------------------------------------------------ tool calls
async def check_tool_calls(runtime: CheckRuntime, policy: str | None, raw_calls: Iterable[Any] | None,
                           user_message: str | None) -> tuple[AgentDecision, list[Any]]:
    """Judge every call of one answer as the assistant's response to ``user_message``; returns the folded
    outcome and the calls that pass, unchanged and in order (a blocked call is never among them)."""
    start = time.perf_counter()
    raw = list(raw_calls or [])
    calls = tool_calls_from(raw)
    if not calls:
        return skipped(runtime, policy, Direction.TOOL_CALL, SkipReason.NO_TOOL_CALLS), raw
    meta: dict[str, Any] = {"direction": Direction.TOOL_CALL.value, "calls": len(calls)}
    if len(calls) > MAX_TOOL_CALLS:
        label = runtime.policy_label(policy)
        reason = f"The answer makes {len(calls)} tool calls, more than the {MAX_TOOL_CALLS} one answer may make."
        refusal = render_refusal(runtime.refusal_template(policy, Direction.TOOL_CALL), reason, label)
        meta.update(policy=label, decision="block", checked=0, removed=len(calls),
                    removed_ids=[c.id for c in calls], removed_names=sorted({c.name for c in calls}), kept_ids=[],
                    reasoning=reason, refusal=refusal, failed=False, too_many=True,
                    exception_message=Direction.TOOL_CALL.spec.exception_message(label, reason),
                    latency_ms=round((time.perf_counter() - start) * 1000, 2), checks=[])
        return AgentDecision(Outcome.BLOCK, meta, reason=reason), []
    turns = [judged_turn(Direction.TOOL_CALL, user_message, render_tool_call(c.name, c.arguments)) for c in calls]
    outs = await check_each(runtime, policy, Direction.TOOL_CALL, turns)
    blocked = [o for o in outs if o.blocked]
    meta.update(
        policy=_policy_label(outs, policy),
        checked=len(set(turns)),
        removed=len(blocked),
        removed_ids=[c.id for c, o in zip(calls, outs, strict=True) if o.blocked],
        removed_names=[c.name for c, o in zip(calls, outs, strict=True) if o.blocked],
        kept_ids=[c.id for c, o in zip(calls, outs, strict=True) if not o.blocked],
        no_user_message=not (isinstance(user_message, str) and user_message.strip()),
        latency_ms=round((time.perf_counter() - start) * 1000, 2),
        checks=[_item(o, id=c.id, name=c.name) for c, o in zip(calls, outs, strict=True)],
    )
    kept = [c.raw for c, o in zip(calls, outs, strict=True) if not o.blocked]
    return _fold(blocked, meta, outs), kept


# ---------------------------------------------------------------------------------------------------- tool results
def _message_parts(message: Any) -> tuple[Any, str | None, str | None]:
    get = message.get if isinstance(message, Mapping) else (lambda k, d=None: getattr(message, k, d))
    name = get("name")
    call_id = get("tool_call_id")
    return get("content"), (None if name in (None, "") else str(name)), (None if call_id in (None, "") else str(call_id))


async def check_tool_results(runtime: CheckRuntime, policy: str | None, messages: Iterable[Any],
                             user_message: str | None, **extra: Any) -> AgentDecision:
    """Judge every tool message (``{content, name?, tool_call_id?}``) as content entering the conversation; block
    if any is harmful. ``extra`` goes into the metadata. An empty result is not sent to the guard (nothing to
    judge); a message without a name is rendered ``Tool result:``, one without an id is reported with id None."""
    del user_message  # not part of the prompt: the result is judged on its own (docs/agents.md)
    start = time.perf_counter()
    parts = [_message_parts(m) for m in messages or ()]
    checked = [(i, p) for i, p in enumerate(parts) if content_text(p[0]).strip()]
    turns = [judged_turn(Direction.TOOL_RESULT, None, render_tool_result(p[1], p[0])) for _, p in checked]
    outs = await check_each(runtime, policy, Direction.TOOL_RESULT, turns)
    blocked = [(i, o) for (i, _), o in zip(checked, outs, strict=True) if o.blocked]
    meta: dict[str, Any] = {
        "direction": Direction.TOOL_RESULT.value,
        "policy": _policy_label(outs, runtime.policy_label(policy)),
        "messages": len(parts),
        "checked": len(set(turns)),
        "empty": len(parts) - len(checked),
        "blocked_ids": [parts[i][2] for i, _ in blocked],
        "blocked_names": [parts[i][1] for i, _ in blocked],
        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        "checks": [_item(o, index=i, id=p[2], name=p[1]) for (i, p), o in zip(checked, outs, strict=True)],
        **extra,
    }
    if not parts:
        meta["skipped"] = _skipped_as(runtime, meta["policy"], Direction.TOOL_RESULT, SkipReason.NO_TOOL_MESSAGES)
    return _fold([o for _, o in blocked], meta, outs)


# ------------------------------------------------------------------------------------------------------- retrieval
async def check_documents(runtime: CheckRuntime, policy: str | None, documents: Sequence[Any],
                          user_message: str | None) -> tuple[list[bool], dict[str, Any]]:
    """Judge each retrieved document; returns which to keep (a harmful one, or one whose check failed with
    ``on_error: block``, is dropped; an empty one is kept unchecked) and the JSON-safe metadata."""
    del user_message
    start = time.perf_counter()
    checked = [i for i, d in enumerate(documents) if content_text(d).strip()]
    turns = [judged_turn(Direction.RETRIEVAL, None, render_document(documents[i])) for i in checked]
    outs = await check_each(runtime, policy, Direction.RETRIEVAL, turns)
    keep = [True] * len(documents)
    for i, o in zip(checked, outs, strict=True):
        keep[i] = not o.blocked
    removed = [i for i in range(len(documents)) if not keep[i]]
    meta: dict[str, Any] = {
        "direction": Direction.RETRIEVAL.value,
        "policy": _policy_label(outs, runtime.policy_label(policy)),
        "decision": "transform" if removed else "allow",
        "chunks": len(documents),
        "checked": len(set(turns)),
        "removed": len(removed),
        "removed_indices": removed,
        "failed": sum(1 for o in outs if o.failed),
        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        "checks": [_item(o, index=i) for i, o in zip(checked, outs, strict=True)],
    }
    if not documents:
        meta["skipped"] = _skipped_as(runtime, meta["policy"], Direction.RETRIEVAL, SkipReason.NO_RETRIEVED_CHUNKS)
    return keep, meta


async def check_relevant_chunks(runtime: CheckRuntime, policy: str | None, chunks: Sequence[str],
                                user_message: str | None) -> tuple[AgentDecision, list[str]]:
    """The retrieval rail: harmful chunks are removed from what the prompt receives (a transform of
    ``relevant_chunks``, not a block); the turn goes on. Returns the folded decision (allowed; ``metadata
    ["removed"]`` says whether anything was dropped, the reason says how much) and the chunks kept."""
    keep, meta = await check_documents(runtime, policy, chunks, user_message)
    kept = [c for c, k in zip(chunks, keep, strict=True) if k]
    if not meta["removed"]:
        return AgentDecision(Outcome.ALLOW, meta), kept
    reason = f"{meta['removed']} of {meta['chunks']} retrieved chunks removed by policy '{meta['policy']}'."
    return AgentDecision(Outcome.ALLOW, meta, reason=reason), kept


__all__ = [
    "MAX_TOOL_CALLS",
    "AgentDecision",
    "check_documents",
    "check_each",
    "check_relevant_chunks",
    "check_tool_calls",
    "check_tool_results",
    "skipped",
]
