"""Make NeMo Guardrails 0.24.1 run the rails on every turn shape of an agent conversation (docs/agents.md).

**The cause.** ``LLMRails._get_events_for_messages`` turns a request's messages into Colang 1.0 events. An earlier
assistant message with ``tool_calls`` becomes a ``BotToolCalls`` event, which starts NeMo's
``process bot tool call`` flow (``rails/llm/llm_flows.co``: a parallel extension flow, priority 100). Replayed from a
client's history, that flow never sees the events it would have produced next (``StartToolOutputRails`` …
``StartToolCallBotAction``), so it stays *pending* at an actionable step. At the next user message the pending step,
weighted 100 × 0.9, outranks ``process user input`` (priority 1): the turn's next step is the old tool call's, the
input rails never start (0 guard requests), ``$user_message`` is never updated, and with ``rails.tool_output``
configured the turn re-runs the old calls and ends with ``''`` without calling the model. ``check_async`` (NeMo's
LangChain middleware) takes the same path: input after a tool exchange passes unchecked, and output after one comes
back ``MODIFIED`` to ``''``. NeMo's own cache of events (``events_history_cache``) holds the complete sequence only
for a history this very process produced, so any other client (a server with several workers, a forged or edited
history, ``check_async`` with its per-call options) hits it.

**The workaround.** :func:`install` wraps the instance's ``_get_events_for_messages`` (from the plugin's load hook,
``hooks.init``): a ``BotToolCalls`` event that is already answered — any but the last event, and not followed by its
``StartToolCallBotAction`` — becomes an inert :data:`REPLAYED_TOOL_CALLS` event with the same calls (no flow starts
on it; the rails still read it). A call the request ends with (the last message, e.g. a tool-output check) keeps its
``BotToolCalls`` event and its flow.

Second, a request that ends with tool results (the model is about to read them) starts no input rail: NeMo emits
``UserToolMessages`` for the tool-input rails when they are configured, and otherwise a bare ``UserMessage`` that
skips ``process user input``; when tool-input rails are configured but the request's generation options switch them
off (``check_async`` runs one rail type per call, so NeMo's LangChain middleware checks input before the model
reads tool results this way), the ``UserToolMessages`` flow does nothing at all: no ``UserMessage``, the answer is
``''``. In both cases :func:`settle_events` emits the user's utterance again instead (``UtteranceUserActionFinished``
with the last user message, as NeMo emits for a request that ends with a user message), so ``process user input``
runs the input rails, which judge the new tool results with the whole request (docs/coverage.md), and the turn
goes on to the model. With tool-input rails configured and on, NeMo's own path is kept (``csr check tool results``
judges the results and hands the turn back).

Third, ``check_async``'s output check of an answer that calls tools (NeMo's ``GuardrailsMiddleware`` after each model
call) runs no rail: the request ends with the assistant's ``tool_calls``, NeMo's tool-output rails are switched off
by the options, the output rails need a ``BotMessage`` that never comes, and the result is ``PASSED`` while the
calls go on to run. :func:`settle_events` turns that last ``BotToolCalls`` inert and lets the output rails run on the
message's text as ``$bot_message``; ``csr check output`` judges its tool calls with the request (docs/coverage.md).

Last (not a bug fix): the request's messages are recorded in an inert event (``transcript_events.mark_request``) so
the rails judge the whole history, tool results and tool calls included, which NeMo's events drop.

**Versions.** Verified on :data:`VERIFIED_NEMO_VERSIONS`; ``tests/integration/test_turn_shapes.py`` runs plain NeMo
without the workaround and asserts the bug is still there, so the day NeMo fixes it the test fails and the workaround
is revisited. On any other version the workaround is still applied — it only touches event shapes that NeMo 0.24.1
misreads, and leaving them would let a turn through unchecked — and a warning says it was not verified there
(fail loudly, not open).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from nemo_csr_rail.rail.transcript_events import generation_options, mark_request

log = logging.getLogger("nemo_csr_rail")

#: NeMo Guardrails versions this workaround was verified on (tests/integration/test_turn_shapes.py)
VERIFIED_NEMO_VERSIONS = frozenset({"0.24.1"})
#: the inert event an answered, replayed ``BotToolCalls`` becomes
REPLAYED_TOOL_CALLS = "CsrReplayedBotToolCalls"
BOT_TOOL_CALLS = "BotToolCalls"
TOOL_CALL_ACTION = "StartToolCallBotAction"
USER_TOOL_MESSAGES = "UserToolMessages"
USER_UTTERANCE = "UtteranceUserActionFinished"
_INSTALLED = "_csr_events_for_messages"
_warned: set[str] = set()


def nemo_version() -> str:
    try:
        from importlib.metadata import version

        return version("nemoguardrails")
    except Exception:  # pragma: no cover - NeMo always has metadata when installed normally
        return "unknown"


def install(app: Any) -> bool:
    """Wrap ``app._get_events_for_messages`` (this ``LLMRails`` only). Idempotent; False if NeMo has no such method
    (then the rails see NeMo's events alone, and a warning says so)."""
    if getattr(app, _INSTALLED, None) is not None:
        return True
    original: Callable[..., list[dict[str, Any]]] | None = getattr(app, "_get_events_for_messages", None)
    version = nemo_version()
    if original is None:
        _warn_once(version, f"NeMo Guardrails {version} has no LLMRails._get_events_for_messages: the turn-shape "
                            "workaround and whole-history coverage are not installed (docs/agents.md)")
        return False
    if version not in VERIFIED_NEMO_VERSIONS:
        _warn_once(version, f"NeMo Guardrails {version} is not among the versions the turn-shape workaround was "
                            f"verified on ({', '.join(sorted(VERIFIED_NEMO_VERSIONS))}); it is applied anyway. Run "
                            "tests/integration/test_turn_shapes.py against this version (docs/agents.md)")
    config = getattr(app, "config", None)

    def events_for_messages(messages: list[dict[str, Any]], state: Any) -> list[dict[str, Any]]:
        events = original(messages, state)
        if getattr(config, "colang_version", "1.0") == "1.0":
            events = settle_events(events, messages, tool_input_configured=_tool_input_configured(config))
        mark_request(events, messages)
        return events

    app._get_events_for_messages = events_for_messages
    setattr(app, _INSTALLED, original)
    return True


def uninstall(app: Any) -> None:
    """Put NeMo's own method back (tests that show the bug)."""
    if getattr(app, _INSTALLED, None) is not None:
        del app._get_events_for_messages
        setattr(app, _INSTALLED, None)


def settle_events(events: list[dict[str, Any]], messages: list[dict[str, Any]], *,
                  tool_input_configured: bool) -> list[dict[str, Any]]:
    """The events with NeMo 0.24.1's misread shapes replaced (module docstring). Never mutates an event: the list
    and its dicts may be shared with NeMo's cache."""
    out = list(events)
    for i, event in enumerate(out):
        if not isinstance(event, Mapping):
            continue
        if event.get("type") == BOT_TOOL_CALLS and i < len(out) - 1 and not _answered(out, i):
            out[i] = {"type": REPLAYED_TOOL_CALLS, "tool_calls": event.get("tool_calls")}
    if out and _ends_with_tool_results(messages) and isinstance(out[-1], Mapping):
        last = out[-1].get("type")
        if (last == "UserMessage" and not tool_input_configured) or (
                last == USER_TOOL_MESSAGES and _tool_input_switched_off(messages)):
            user = _last_user_text(messages)
            if user is not None:
                out[-1] = {"type": USER_UTTERANCE, "final_transcript": user}
    if (out and isinstance(out[-1], Mapping) and out[-1].get("type") == BOT_TOOL_CALLS
            and _output_check_only(messages)):
        user = _last_user_text(messages)
        if user is not None:
            content = messages[-1].get("content") if isinstance(messages[-1], Mapping) else None
            out[-1:] = [{"type": REPLAYED_TOOL_CALLS, "tool_calls": out[-1].get("tool_calls")},
                        {"type": "ContextUpdate", "data": {"bot_message": content if isinstance(content, str) else ""}},
                        {"type": USER_UTTERANCE, "final_transcript": user}]
    return out


def _output_check_only(messages: list[dict[str, Any]]) -> bool:
    """Whether the request is ``check_async``'s output check (output rails on, dialog and tool-output rails off),
    the way NeMo's ``GuardrailsMiddleware`` checks a model answer that calls tools."""
    rails = _option_rails(messages)
    return (rails is not None and rails.get("output") is not False and rails.get("dialog") is False
            and rails.get("tool_output") is False)


def _ends_with_tool_results(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and isinstance(messages[-1], Mapping) and messages[-1].get("role") == "tool"


def _answered(events: list[Any], i: int) -> bool:
    """Whether the ``BotToolCalls`` at ``i`` is followed by its ``StartToolCallBotAction`` (a history this process
    produced and cached: NeMo's flow ran to its end), before the next user turn."""
    for event in events[i + 1:]:
        kind = event.get("type") if isinstance(event, Mapping) else None
        if kind == TOOL_CALL_ACTION:
            return True
        if kind in (USER_UTTERANCE, USER_TOOL_MESSAGES, BOT_TOOL_CALLS):
            return False
    return False


def _tool_input_configured(config: Any) -> bool:
    rails = getattr(config, "rails", None)
    return bool(getattr(getattr(rails, "tool_input", None), "flows", None))


def _option_rails(messages: list[dict[str, Any]]) -> Mapping[str, Any] | None:
    """The ``rails`` switches of the request's generation options (NeMo's leading ``role: context`` message)."""
    options = generation_options(messages)
    rails = options.get("rails") if options is not None else None
    return rails if isinstance(rails, Mapping) else None


def _tool_input_switched_off(messages: list[dict[str, Any]]) -> bool:
    """Whether the request's generation options switch tool-input rails off, as ``check_async`` does for every
    rail type it was not asked to run."""
    rails = _option_rails(messages)
    return rails is not None and rails.get("tool_input") is False


def _last_user_text(messages: list[dict[str, Any]]) -> Any:
    """The last user message's content as NeMo passes it on (its own no-tool-input branch does the same)."""
    for m in reversed(messages):
        if isinstance(m, Mapping) and m.get("role") == "user":
            return m.get("content")
    return None


def _warn_once(version: str, message: str) -> None:
    if version not in _warned:
        _warned.add(version)
        log.warning(message)


__all__ = ["REPLAYED_TOOL_CALLS", "VERIFIED_NEMO_VERSIONS", "install", "nemo_version", "settle_events", "uninstall"]
