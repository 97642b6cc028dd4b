"""A main LLM stand-in that answers with OpenAI tool calls, for the agent rails (tool calls, tool results).

It is the vLLM-shaped :class:`~tests.support.standin.StandIn` with one addition: when the request offers ``tools``
and the last message is the user's, :func:`scripted_calls` may turn the answer into ``tool_calls`` (content
``None``, ``finish_reason: "tool_calls"``, as OpenAI-compatible servers answer). After tool results (the last
message has ``role: tool``) it answers in text that quotes every tool result it was given, so a test can see that
the model read them.

The script, in the user's message: ``CALL name {json}`` (one or more, separated by ``;``), e.g.
``"CALL get_weather {\\"city\\": \\"Paris\\"}; CALL build_bomb {}"``; ``CALLRAW name TEXT`` sends TEXT verbatim
as the arguments string (for arguments that are not JSON); ``CALLREV eman {json}`` calls ``name`` spelled backwards
(so a user message that passes the input rail can still make a harmful call); ``CALLMANY n name`` emits ``n`` calls
of ``name``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tests.support.rails_configs import MAIN_MODEL, main_reply
from tests.support.standin import StandIn

_CALL = re.compile(r"CALL(RAW|REV)?\s+([A-Za-z0-9_.-]*)\s*(.*)", re.DOTALL)
_MANY = re.compile(r"CALLMANY\s+(\d+)\s+([A-Za-z0-9_.-]+)")


def _last(messages: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    for m in reversed(messages):
        if m.get("role") == role:
            return m
    return None


def scripted_calls(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tool calls the scripted model makes for this request, or None for a text answer."""
    msgs = body.get("messages") or []
    if not body.get("tools") or not msgs or msgs[-1].get("role") != "user":
        return None
    text = msgs[-1].get("content") or ""
    many = _MANY.search(text)
    if many:
        n, name = int(many.group(1)), many.group(2)
        return [_call(name, json.dumps({"i": i})) for i in range(n)]
    calls = []
    for part in text.split(";"):
        m = _CALL.search(part)
        if m is None:
            continue
        mode, name, args = m.group(1), m.group(2), m.group(3).strip()
        if mode == "REV":
            name = name[::-1]
        calls.append(_call(name, args if mode == "RAW" else (args or "{}")))
    return calls or None


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "call_" + uuid.uuid4().hex[:12], "type": "function",
            "function": {"name": name, "arguments": arguments}}


def agent_reply(body: dict[str, Any]) -> str:
    msgs = body.get("messages") or []
    if msgs and msgs[-1].get("role") == "tool":
        results = [str(m.get("content")) for m in msgs if m.get("role") == "tool"]
        return "Based on the tool results: " + " | ".join(results)
    user = _last(msgs, "user")
    return main_reply((user or {}).get("content") or "")


class AgentLLM(StandIn):
    """``with AgentLLM() as llm:`` — point ``models: - type: main`` at ``llm.url``."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(model=MAIN_MODEL, responder=agent_reply, max_model_len=1_000_000, **kw)

    def _prompt_tokens(self, body: dict[str, Any], path: str) -> int:
        # an application model with a tool-aware template (Gemma 3's, which the guard stand-in renders, refuses
        # tool and consecutive assistant messages): count the text of every message
        msgs = body.get("messages") or []
        text = "\n".join(json.dumps(m.get("content")) if not isinstance(m.get("content"), str) else m["content"]
                         for m in msgs if isinstance(m, dict))
        return len(text.split()) + 4 * len(msgs)

    def _answer(self, body: dict[str, Any], path: str) -> tuple[dict[str, Any], int, int]:
        payload, n_prompt, n_out = super()._answer(body, path)
        calls = scripted_calls(body)
        if calls:
            choice = payload["choices"][0]
            choice["message"]["content"] = None
            choice["message"]["tool_calls"] = calls
            choice["finish_reason"] = "tool_calls"
        return payload, n_prompt, n_out


__all__ = ["AgentLLM", "agent_reply", "scripted_calls"]
