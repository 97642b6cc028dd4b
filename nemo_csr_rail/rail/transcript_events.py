"""The request's messages, carried to the rail actions in NeMo Guardrails' event list.

NeMo 0.24.1 converts a request's messages into Colang events lossily: a ``role: tool`` message that is not the last
one becomes no event at all, and an assistant message's tool calls survive only as a ``BotToolCalls`` event. The
rails judge every message the main model will read (docs/coverage.md), so the plugin's wrapper of
``LLMRails._get_events_for_messages`` (:mod:`nemo_csr_rail.rail.nemo_compat`) records the request's messages
themselves in one inert event, :data:`REQUEST_MESSAGES`, at the head of the events it returns. The actions receive
the event list (NeMo passes ``events`` to an action that declares it) and read the most recent record.

Every entry point that takes messages goes through that method in Colang 1.0: ``generate``/``generate_async``,
``check_async`` (and NeMo's LangChain ``GuardrailsMiddleware`` on top of it), ``nemoguardrails server`` and
``RunnableRails``. NeMo caches the events of a turn keyed by its messages and hands them back as the prefix of the
next turn's events; the wrapper removes any older record, so there is exactly one, the current request's. With an
explicit Colang 1.0 ``state`` the earlier turns' events come first and the record covers the messages of this call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from nemo_csr_rail.transcript import Message, from_openai

#: the inert event that records the request's messages (no flow starts on it)
REQUEST_MESSAGES = "CsrRequestMessages"
#: NeMo's own control messages: they set context variables or inject events, the main model never reads them
CONTROL_ROLES = frozenset({"context", "event"})


def mark_request(events: list[Any], messages: Iterable[Any]) -> None:
    """Record ``messages`` (shallow copies) at the head of ``events``, replacing any older record, in place."""
    events[:] = [e for e in events if not (isinstance(e, Mapping) and e.get("type") == REQUEST_MESSAGES)]
    copied = [dict(m) if isinstance(m, Mapping) else m for m in messages or ()]
    events.insert(0, {"type": REQUEST_MESSAGES, "messages": copied})


def request_messages(events: Iterable[Any] | None) -> list[Any] | None:
    """The messages of the request these events belong to, as the caller sent them (NeMo's leading generation
    options message included); None when no record is there (a path that bypasses the wrapper)."""
    found = None
    for event in events or ():
        if isinstance(event, Mapping) and event.get("type") == REQUEST_MESSAGES:
            found = event.get("messages")
    return list(found) if isinstance(found, list) else None


def request_transcript(events: Iterable[Any] | None) -> list[Message] | None:
    """The request's messages as :class:`~nemo_csr_rail.transcript.Message` values, each at its index in the
    caller's list; None when the events carry no record (the rails then judge the current message alone).

    NeMo's own ``role: context`` message of generation options (prepended by ``generate_async``, so not the
    caller's) is left out of the numbering; ``role: context`` / ``event`` messages are NeMo controls, not text the
    model reads, and are left out. An answer ``check_async`` moved into ``$bot_message`` is not in the record: the
    output rail appends it as the message it is about (:func:`with_current`)."""
    raw = request_messages(events)
    if raw is None:
        return None
    if generation_options(raw) is not None:
        raw = raw[1:]
    return [m for m in from_openai(raw) if m.role not in CONTROL_ROLES]


def with_current(messages: list[Message], role: str, text: str | None) -> tuple[list[Message], int]:
    """The transcript with the message a rail is about: for ``user``, the last user message, its text replaced by
    the one the rail was handed (an earlier input rail may have changed it: that is what the model reads), or
    appended if the request has none; for ``assistant``, the answer appended after the request's messages (the
    model's answer, or the one ``check_async`` was given), or, when the rail was handed no text and the request
    ends with an assistant message that calls tools (``check_async`` of such an answer), that message. Returns
    (messages, index of that message)."""
    text = "" if text is None else text if isinstance(text, str) else str(text)
    if role == "user":
        for pos in range(len(messages) - 1, -1, -1):
            m = messages[pos]
            if m.role == "user":
                if m.text != text:
                    messages = [*messages[:pos], replace(m, text=text), *messages[pos + 1:]]
                return messages, m.index
    if role == "assistant" and not text and messages and messages[-1].role == "assistant" and messages[-1].tool_calls:
        return messages, messages[-1].index  # the request ends with the answer itself: calls to judge, no text
    index = messages[-1].index + 1 if messages else 0
    return [*messages, Message(index=index, role=role, text=text)], index


def generation_options(messages: list[Any]) -> Mapping[str, Any] | None:
    """The generation options NeMo's ``generate_async`` puts in a leading ``role: context`` message (not the
    caller's), None when the messages do not start with one. Read here and by the turn-shape workaround."""
    first = messages[0] if messages else None
    if not isinstance(first, Mapping) or first.get("role") != "context":
        return None
    content = first.get("content")
    options = content.get("generation_options") if isinstance(content, Mapping) else None
    return options if isinstance(options, Mapping) else None


__all__ = ["CONTROL_ROLES", "REQUEST_MESSAGES", "generation_options", "mark_request", "request_messages",
           "request_transcript", "with_current"]
