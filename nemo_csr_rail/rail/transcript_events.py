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
from typing import Any

#: the inert event that records the request's messages (no flow starts on it)
REQUEST_MESSAGES = "CsrRequestMessages"


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


__all__ = ["REQUEST_MESSAGES", "mark_request", "request_messages"]
