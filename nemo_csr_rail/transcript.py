"""The request's messages as the main model will read them, from whatever shape the caller holds.

Whole-conversation coverage (:mod:`nemo_csr_rail.coverage`, docs/coverage.md) judges every message of a request,
so it needs one plain description of a message whatever the entry point: OpenAI chat dicts (``nemoguardrails
server``, ``check_async``), NeMo events (converted in ``rail/``), LangChain messages (converted by the middleware).
:func:`from_openai` reads the first; the adapters build :class:`Message` values themselves.

Tolerant on purpose: a request the main model accepts must never crash the guard, and nothing in it may be
silently dropped. So every item becomes a :class:`Message` at its own index, whatever it holds:

* ``content`` may be a string, ``None``/missing (``text`` is ``""``), a list of OpenAI content parts, or anything
  else (written as JSON, so it is still judged). Of the parts, text parts (``{"type": "text", "text": …}``, a bare
  string, or any part carrying a string ``text``) are joined with ``"\\n"`` and judged; the types of the others
  (``image_url``, ``input_audio``, ``file`` …) are listed in :attr:`Message.other_parts` and **not judged**: the
  guard model reads text only. A part that is neither (no type, not a mapping) is judged as JSON.
* an unknown role is kept as written (``role`` is ``""`` when missing); coverage decides what to do with it.
* ``tool_calls`` in the OpenAI shape ``{id, type, function: {name, arguments}}``, LangChain's ``{id, name, args}``
  or the legacy ``function_call`` become :class:`ToolCallItem` values, arguments as given.

Nothing here imports the rest of the pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Message", "ToolCallItem", "from_openai"]


@dataclass(frozen=True)
class ToolCallItem:
    """One call an assistant message makes; ``arguments`` as given (a JSON string, a mapping, or None)."""

    id: str | None
    name: str
    arguments: Any


@dataclass(frozen=True)
class Message:
    """One message of the request. ``index`` is its position in the request's message list (0-based)."""

    index: int
    #: 'user' | 'assistant' | 'tool' | 'system' | 'developer' | anything else (kept as written)
    role: str
    #: the text content; text parts joined with "\n"; "" if none
    text: str
    tool_calls: tuple[ToolCallItem, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    #: types of non-text content parts (e.g. 'image_url'): listed, not judged
    other_parts: tuple[str, ...] = ()


def _as_json(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):  # keys that do not sort, cycles: still judged, as repr
        return repr(value)


def _content(content: Any) -> tuple[str, tuple[str, ...]]:
    """(judged text, types of the parts not judged)."""
    if content is None:
        return "", ()
    if isinstance(content, str):
        return content, ()
    if isinstance(content, (bytes, bytearray)):
        return bytes(content).decode("utf-8", "replace"), ()
    if isinstance(content, (list, tuple)):
        texts: list[str] = []
        others: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, Mapping) and isinstance(part.get("type"), str) and part["type"] != "text":
                others.append(part["type"])  # an image, audio or file part: the guard reads text only
            elif part is not None:
                texts.append(_as_json(part))  # a part of no known shape is judged as written
        return "\n".join(texts), tuple(others)
    return _as_json(content), ()


def _opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _tool_call(raw: Any) -> ToolCallItem:
    if not isinstance(raw, Mapping):
        return ToolCallItem(id=None, name="", arguments=raw)
    fn = raw.get("function")
    fn = fn if isinstance(fn, Mapping) else {}
    name = fn.get("name") or raw.get("name") or ""
    if fn.get("arguments") is not None:
        args = fn.get("arguments")
    else:
        args = raw.get("args") if raw.get("args") is not None else raw.get("arguments")
    return ToolCallItem(id=_opt_str(raw.get("id")), name=str(name), arguments=args)


def _tool_calls(item: Mapping[str, Any]) -> tuple[ToolCallItem, ...]:
    raw = item.get("tool_calls")
    calls: list[ToolCallItem] = []
    if isinstance(raw, (list, tuple)):
        calls.extend(_tool_call(c) for c in raw)
    elif isinstance(raw, Mapping):
        calls.append(_tool_call(raw))
    elif raw is not None:
        calls.append(ToolCallItem(id=None, name="", arguments=raw))
    legacy = item.get("function_call")  # OpenAI's pre-tools shape
    if isinstance(legacy, Mapping):
        calls.append(ToolCallItem(id=None, name=str(legacy.get("name") or ""), arguments=legacy.get("arguments")))
    return tuple(calls)


def from_openai(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """OpenAI chat messages → :class:`Message` values, one per item and at its index; never raises.

    An item that is not a mapping (a bare string, a number) becomes a message of role ``""`` whose text is the item
    (as JSON if it is not a string), so it is judged rather than dropped."""
    out: list[Message] = []
    for index, item in enumerate(messages or ()):
        if not isinstance(item, Mapping):
            out.append(Message(index=index, role="", text=item if isinstance(item, str) else _as_json(item)))
            continue
        role = item.get("role")
        text, others = _content(item.get("content"))
        out.append(Message(
            index=index,
            role="" if role is None else str(role),
            text=text,
            tool_calls=_tool_calls(item),
            tool_call_id=_opt_str(item.get("tool_call_id")),
            name=_opt_str(item.get("name")),
            other_parts=others,
        ))
    return out
