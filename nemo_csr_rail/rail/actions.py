"""The NeMo Guardrails actions ``csr_check_input`` / ``csr_check_output`` and the agent actions
``csr_check_tool_calls`` / ``csr_check_tool_results`` / ``csr_check_retrieval`` (docs/agents.md).

NeMo Guardrails loads this file standalone from ``import_paths``; it only adapts NeMo's arguments to the core's
checks (:mod:`nemo_csr_rail.runtime`, :mod:`nemo_csr_rail.agent_checks`) and their decisions to ``RailOutcome``
(:mod:`nemo_csr_rail.rail.outcome`); all state lives in the runtime. ``is_system_action=True`` keeps the call (and
its result) out of the Colang history that dialog prompts see, and keeps it local when an actions server is
configured. Every action returns a ``RailOutcome``, as NeMo's catalog requires of a surface's action.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nemoguardrails.actions import action
from nemoguardrails.actions.rail_outcome import RailOutcome

from nemo_csr_rail import agent_checks
from nemo_csr_rail.coverage import deciding, has_output_side, judge_messages
from nemo_csr_rail.decision import Decision, SkipReason
from nemo_csr_rail.errors import ConfigError, CsrError
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.rail.history import history_from_events
from nemo_csr_rail.rail.outcome import (
    RetrievalOutcome,
    ToolCallsOutcome,
    retrieval_rail_outcome,
    to_rail_outcome,
    tool_calls_rail_outcome,
)
from nemo_csr_rail.rail.runtime import runtime_for
from nemo_csr_rail.rail.transcript_events import request_transcript, with_current

log = logging.getLogger("nemo_csr_rail")
#: context variables the agent flows set from their outcomes' kept items (flows.v1.co)
KEPT_TOOL_CALLS = "csr_tool_calls_kept"
KEPT_CHUNKS = "csr_relevant_chunks_kept"
TOOL_RESULTS_FLOW = Direction.TOOL_RESULT.spec.flow


def _policy_arg(policy: str | None, kwargs: dict[str, Any]) -> str | None:
    # The streaming output path calls the action directly and passes the flow parameter as `model_name`.
    if policy is None or str(policy).startswith("$"):
        return kwargs.get("model_name") or policy
    return policy


@action(name="csr_check_input", is_system_action=True)
async def csr_check_input(
    policy: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    text: str | None = None,
    events: list[Any] | None = None,
    user_message: str | None = None,
    **kwargs: Any,
) -> RailOutcome:
    """Check the user's message against ``policy``; block (with the reasoning) if the model finds it harmful.

    With ``coverage: all`` (the default) every message of the request on the input side — each user message,
    tool result, system/developer message — is judged (each once: the ``judged_messages`` cache), read from the
    request record in ``events`` (``transcript_events``); the current message is the one handed to the rail. Without
    a record (a path that does not go through ``generate_async(messages=…)``), the current message alone. A topic
    policy judges the current message with the conversation before it, read from ``events`` (both Colang versions
    pass them to an action that declares the parameter).

    The message: ``text``, else ``user_message`` (what the manifest's input surface binds: NeMo's catalog passes
    it by name and no ``context``), else the Colang context's."""
    user = text if text is not None else user_message if user_message is not None else \
        (context or {}).get("user_message")
    runtime = runtime_for(config)
    name = _policy_arg(policy, kwargs)
    if runtime.wants_history(name):
        # A topic policy asks whether *this* turn is on topic, with the conversation as context: an earlier
        # off-topic turn was refused in its own turn and must not block every later one (docs/agents.md).
        return await runtime.check(name, Direction.INPUT, user, history=history_from_events(events))
    return await _judge_request(runtime, name, Direction.INPUT, events, user,
                                lambda: runtime.check(name, Direction.INPUT, user),
                                also_output_side=_covers_whole_request(runtime, name))


def _covers_whole_request(runtime: Any, name: str | None) -> bool:
    """Whether the input rail also judges the request's assistant messages and tool calls: with ``coverage: all``
    it does, so that a forged or edited one is judged *before* the model reads it — in a config with no output rail
    as well, and when the output rails stream (their chunk checks get no events from NeMo 0.24.1). An answer the
    output rail already judged comes from the ``judged_messages`` cache (docs/coverage.md)."""
    try:
        return runtime.policy(name).coverage == "all"
    except ConfigError:
        return False  # judge_messages reports the unknown policy


@action(name="csr_check_output", is_system_action=True)
async def csr_check_output(
    policy: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    text: str | None = None,
    user_message: str | None = None,
    bot_message: str | None = None,
    events: list[Any] | None = None,
    **kwargs: Any,
) -> RailOutcome:
    """Check the bot's answer (with the user's message as context) against ``policy``. Each text: the explicit
    argument (``text`` for the answer; ``user_message`` / ``bot_message`` as the manifest's output surface binds
    them), else the Colang context's.

    With ``coverage: all`` (the default) also every assistant message and tool call the client supplied in the
    request (a forged history), each with the user message it answers, each once (the ``judged_messages`` cache)."""
    ctx = context or {}
    bot = text if text is not None else bot_message if bot_message is not None else ctx.get("bot_message")
    user = user_message if user_message is not None else ctx.get("user_message")
    runtime = runtime_for(config)
    name = _policy_arg(policy, kwargs)
    return await _judge_request(runtime, name, Direction.OUTPUT, events, bot,
                                lambda: runtime.check(name, Direction.OUTPUT, user, bot))


async def _judge_request(runtime: Any, name: str | None, side: Direction, events: list[Any] | None, text: Any,
                         current_only: Callable[[], Awaitable[RailOutcome]], *,
                         also_output_side: bool = False) -> RailOutcome:
    """Judge the request's messages on ``side`` (whole-conversation coverage), the rail's own message as current;
    without a request record in ``events``, the current message alone. ``also_output_side``: an input rail also
    judges the request's assistant messages and tool calls (concurrently; the input side's block decides first).
    Never raises: a bug here blocks."""
    try:
        transcript = request_transcript(events)
        if transcript is None:
            return await current_only()
        messages, current = with_current(transcript, "user" if side is Direction.INPUT else "assistant", text)
        if not (also_output_side and has_output_side(messages)):
            return to_rail_outcome(await judge_messages(runtime, name, side, messages, current=current))
        decisions = await asyncio.gather(judge_messages(runtime, name, side, messages, current=current),
                                         judge_messages(runtime, name, Direction.OUTPUT, messages))
        return to_rail_outcome(deciding(decisions) or decisions[0])  # coverage's own fold order, input side first
    except Exception as exc:  # judge_messages never raises; this is the adapter's own code failing
        log.exception("csr %s: reading the request's messages failed", side.value)
        err = CsrError(f"internal error: {type(exc).__name__} while reading the request's messages")
        return to_rail_outcome(Decision.from_error(runtime.policy_label(name), side, err, on_error="block",
                                                   latency_ms=None, error_refusal=runtime.settings.error_refusal))


# ------------------------------------------------------------------------------------------------------ agent rails
@action(name="csr_check_tool_calls", is_system_action=True)
async def csr_check_tool_calls(
    policy: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    tool_calls: list[Any] | None = None,
    **kwargs: Any,
) -> ToolCallsOutcome:
    """Check each tool call of the bot's answer (``$tool_calls``) as its response to the user's message.

    Returns the folded outcome with the calls that pass (unchanged, in order) as ``kept_tool_calls``: the flow
    sets ``$csr_tool_calls_kept`` from it and puts them back into ``$tool_calls``, which is what NeMo returns to the
    caller."""
    ctx = context or {}
    calls = tool_calls if tool_calls is not None else ctx.get("tool_calls")
    user = ctx.get("user_message") or ctx.get("last_user_message")
    out, kept = await agent_checks.check_tool_calls(runtime_for(config), _policy_arg(policy, kwargs), calls, user)
    return tool_calls_rail_outcome(out, kept)


@action(name="csr_check_tool_results", is_system_action=True)
async def csr_check_tool_results(
    policy: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    events: list[Any] | None = None,
    **kwargs: Any,
) -> RailOutcome:
    """Check every ``role: tool`` message of the request (``$tool_messages``), all at once, concurrently.

    NeMo 0.24.1 calls tool input rails once per tool message, but its loop shares ``$i`` with the loop over the
    rails, so it skips messages (with one rail and two results, only the first is ever visited): a check of the
    current ``$tool_message`` alone would let the others through unchecked. So the first call of this flow in a
    turn checks them all, and later calls in the same turn are skipped. ``metadata["continue_turn"]`` tells the
    flow to hand the turn back to the model (NeMo ends it otherwise): on that first call, when nothing was blocked
    and this is the last ``csr check tool results`` flow of ``rails.tool_input``."""
    ctx = context or {}
    runtime = runtime_for(config)
    name = _policy_arg(policy, kwargs)
    triggered = ctx.get("triggered_tool_input_rail")
    if not _first_tool_input_round(events, triggered):
        out = agent_checks.skipped(runtime, name, Direction.TOOL_RESULT, SkipReason.CHECKED_THIS_TURN)
        return RailOutcome.allow(reason=None, metadata={**out.metadata, "continue_turn": False})
    messages = ctx.get("tool_messages")
    if messages is None:  # called outside NeMo's tool-input loop: the current message only
        messages = [{"content": ctx.get("tool_message"), "name": ctx.get("tool_name"),
                     "tool_call_id": ctx.get("tool_call_id")}]
    csr_flows = [str(f) for f in ctx.get("tool_input_flows") or () if TOOL_RESULTS_FLOW in str(f)]
    last = not csr_flows or triggered is None or str(triggered) == csr_flows[-1]
    out = await agent_checks.check_tool_results(runtime, name, messages, ctx.get("last_user_message"))
    meta = {**out.metadata, "continue_turn": bool(last and not out.blocked)}
    if out.blocked:
        return (RailOutcome.failure if meta.get("failed") else RailOutcome.block)(reason=out.reason, metadata=meta)
    return RailOutcome.allow(reason=out.reason, metadata=meta)


def _first_tool_input_round(events: list[Any] | None, flow_id: Any) -> bool:
    """Whether this is the first run of ``flow_id`` since the turn's ``UserToolMessages`` event."""
    if not events:
        return True
    runs = 0
    for event in reversed(events):
        if not isinstance(event, dict):
            continue
        if event.get("type") == "UserToolMessages":
            break
        if event.get("type") == "StartToolInputRail" and event.get("flow_id") == flow_id:
            runs += 1
    return runs <= 1


@action(name="csr_check_retrieval", is_system_action=True)
async def csr_check_retrieval(
    policy: str | None = None,
    context: dict[str, Any] | None = None,
    config: Any = None,
    text: str | None = None,
    **kwargs: Any,
) -> RetrievalOutcome:
    """Check each retrieved chunk (``$relevant_chunks_sep``); harmful ones are removed from ``$relevant_chunks``
    (a transform, the turn goes on). The chunks that pass are the outcome's ``kept_chunks``: the flow sets
    ``$csr_relevant_chunks_kept`` and, after a transform, ``$relevant_chunks_sep`` from them."""
    ctx = context or {}
    chunks = [str(c) for c in ctx.get("relevant_chunks_sep") or ()]
    whole = text if text is not None else ctx.get("relevant_chunks")
    if text is not None:
        chunks = []  # the joined text was passed explicitly (a catalog surface binds it): judge that
    if not chunks and isinstance(whole, str) and whole.strip():
        chunks = [whole.strip()]  # a retriever that sets only the joined text: judge it as one document
    user = ctx.get("retrieved_for") or ctx.get("last_user_message") or ctx.get("user_message")
    out, kept = await agent_checks.check_relevant_chunks(runtime_for(config), _policy_arg(policy, kwargs), chunks,
                                                         user)
    return retrieval_rail_outcome(out, kept)
