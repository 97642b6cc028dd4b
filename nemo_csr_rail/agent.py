"""Agent content — tool calls, tool results, retrieved documents — as text the guard model can judge.

The model card knows two things to judge: a user's prompt (``Prompt harm``) and an assistant's response
(``Response harm``). It has no layout for tools, so each agent item is rendered by analogy (docs/agents.md):

* a **tool call** is the assistant's response to the last user message: ``Human user:`` holds that message (the
  card's ``None`` when there is none), ``AI assistant:`` holds the call rendered canonically by
  :func:`render_tool_call`, and the decision reads ``Response harm``;
* a **tool result** and a **retrieved document** are content entering the conversation: ``Human user:`` holds
  ``Tool result from NAME:\\n…`` or ``Retrieved document:\\n…``, ``AI assistant:`` is ``None``, and the decision
  reads ``Prompt harm``.

The rendered text then goes through the same prompt builder as any message, so it is neutralised there
(:mod:`nemo_csr_rail.neutralize`). This module only renders and parses: it knows nothing of NeMo, LangChain or
the guard endpoint, so the rails, the LangChain wrappers and the plain client all judge the same text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nemo_csr_rail.policy import Direction

#: what ``Human user:`` holds for a tool call made with no user message before it (the card's word for "absent")
NO_USER_MESSAGE = "None"
#: tool calls checked at once for one answer; the rest wait (an answer with hundreds of calls must not open
#: hundreds of guard requests at the same moment)
MAX_CONCURRENT_CHECKS = 32


@dataclass(frozen=True)
class ToolCall:
    """One call the model wants to make. ``arguments`` is kept as received (a JSON string from OpenAI-style
    messages, a mapping from LangChain); ``raw`` is the call object itself, returned unchanged when it passes."""

    id: str | None
    name: str
    arguments: Any
    raw: Any = None


def tool_call_from(raw: Any) -> ToolCall:
    """Read one call in any of the shapes in use: OpenAI's ``{id, type, function: {name, arguments}}``,
    LangChain's ``{id, name, args}``, or an object with those attributes. Missing parts become ``None``/``""``
    (they are judged as they are, never guessed)."""
    get = raw.get if isinstance(raw, Mapping) else (lambda k, d=None: getattr(raw, k, d))
    fn = get("function")
    fget = fn.get if isinstance(fn, Mapping) else (lambda k, d=None: getattr(fn, k, d))
    name = (fget("name") if fn is not None else None) or get("name") or ""
    if fn is not None and fget("arguments") is not None:
        args = fget("arguments")
    else:
        args = get("args") if get("args") is not None else get("arguments")
    call_id = get("id")
    return ToolCall(id=None if call_id in (None, "") else str(call_id), name=str(name), arguments=args, raw=raw)


def tool_calls_from(raw: Iterable[Any] | None) -> list[ToolCall]:
    return [tool_call_from(c) for c in raw or ()]


def canonical_arguments(arguments: Any) -> tuple[str, bool]:
    """``(text, is_json)``: JSON with sorted keys on one line (non-ASCII kept, so nothing hides behind escapes);
    no arguments at all is ``{}``; a string that does not parse as JSON is returned verbatim with ``False``."""
    if arguments is None:
        return "{}", True
    if isinstance(arguments, (bytes, bytearray)):
        arguments = bytes(arguments).decode("utf-8", "replace")
    if isinstance(arguments, str):
        if not arguments.strip():
            return "{}", True
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return arguments, False
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False, default=str), True


def render_tool_call(name: str, arguments: Any) -> str:
    """``Tool call: NAME\\nArguments: {canonical JSON}`` (``Arguments (not valid JSON): …`` when they are not)."""
    text, is_json = canonical_arguments(arguments)
    head = f"Tool call: {name.strip() if name and name.strip() else '(no name)'}"
    return f"{head}\nArguments: {text}" if is_json else f"{head}\nArguments (not valid JSON): {text}"


def content_text(content: Any) -> str:
    """A message's content as text: strings as they are, OpenAI content parts joined, anything else as JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)) and all(isinstance(p, (Mapping, str)) for p in content):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                parts.append(json.dumps(p, sort_keys=True, ensure_ascii=False, default=str))
        return "\n".join(parts)
    return json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)


def render_tool_result(name: str | None, content: Any) -> str:
    """``Tool result from NAME:\\n…`` (``Tool result:`` when the message names no tool)."""
    label = f"Tool result from {name.strip()}:" if name and str(name).strip() else "Tool result:"
    return f"{label}\n{content_text(content)}"


def render_document(document: Any) -> str:
    return f"Retrieved document:\n{content_text(document)}"


def judged_turn(direction: Direction, user_message: str | None, subject: str) -> tuple[str, str | None]:
    """``(user, bot)`` to put in the card's layout for an agent item rendered as ``subject``."""
    if direction is Direction.TOOL_CALL:
        user = user_message if isinstance(user_message, str) and user_message.strip() else NO_USER_MESSAGE
        return user, subject
    if direction in (Direction.TOOL_RESULT, Direction.RETRIEVAL):
        return subject, None
    raise ValueError(f"{direction.value} is not an agent direction")


__all__ = [
    "MAX_CONCURRENT_CHECKS",
    "NO_USER_MESSAGE",
    "ToolCall",
    "canonical_arguments",
    "content_text",
    "judged_turn",
    "render_document",
    "render_tool_call",
    "render_tool_result",
    "tool_call_from",
    "tool_calls_from",
]
