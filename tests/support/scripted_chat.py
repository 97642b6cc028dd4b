"""A scripted LangChain chat model for agent tests: it emits tool calls on command and records what it reads.

The script is in the last user message, like :mod:`tests.support.agent_llm`'s: ``CALL name {json}`` (several
separated by ``;``) makes those tool calls (``CALLREV eman {json}``
calls ``name`` spelled backwards, so a benign user message can make a harmful call); after tool results it answers ``Based on the tool results: …`` quoting
them (so a test sees what the model read); otherwise it answers :func:`~tests.support.rails_configs.main_reply`
(``EVILOUT`` in the message: a harmful answer). ``WITHTEXT`` gives tool calls that text too; ``CALLRAW name TXET`` makes a call whose arguments are not JSON (TEXT, spelled backwards in the message). ``ANSWER text`` answers ``text`` verbatim. ``_stream`` yields the
answer word by word, so streaming tests see tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from tests.support.rails_configs import main_reply

_CALL = re.compile(r"CALL(REV)?\s+([A-Za-z0-9_.-]+)\s*(.*)", re.DOTALL)


def scripted_answer(messages: list[BaseMessage], step: int) -> AIMessage:
    """What the scripted model answers to ``messages`` (``step``: this model's call count, for unique ids)."""
    last = messages[-1] if messages else None
    if isinstance(last, ToolMessage):
        since = []
        for m in reversed(messages):
            if not isinstance(m, ToolMessage):
                break
            since.append(str(m.content))
        return AIMessage("Based on the tool results: " + " | ".join(reversed(since)))
    text = str(last.content) if isinstance(last, HumanMessage) else ""
    if text.startswith("ANSWER "):
        return AIMessage(text.removeprefix("ANSWER "))
    if text.startswith("CALLRAW "):  # a call whose arguments are not JSON: LangChain keeps it as an invalid call
        name, _, raw = text.removeprefix("CALLRAW ").partition(" ")
        return AIMessage("", invalid_tool_calls=[{"id": f"call_{step}_0", "name": name, "args": raw[::-1],
                                                  "error": "not JSON", "type": "invalid_tool_call"}])
    calls = []
    for i, part in enumerate(text.split(";")):
        m = _CALL.search(part)
        if m:
            name = m.group(2)[::-1] if m.group(1) else m.group(2)
            calls.append({"id": f"call_{step}_{i}", "name": name, "args": json.loads(m.group(3) or "{}"),
                          "type": "tool_call"})
    if calls:
        return AIMessage(main_reply(text) if "WITHTEXT" in text else "", tool_calls=calls)
    return AIMessage(main_reply(text))


class ScriptedChatModel(BaseChatModel):
    """``reads``: every message list the model was called with, in order; ``bound``: the tool names bound."""

    reads: list[list[BaseMessage]] = Field(default_factory=list)
    bound: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        self.bound = [getattr(t, "name", None) or t["function"]["name"] for t in tools]
        return self

    def _answer(self, messages: list[BaseMessage]) -> AIMessage:
        self.reads.append(list(messages))
        return scripted_answer(messages, len(self.reads))

    def _generate(self, messages: list[BaseMessage], stop: Any = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._answer(messages))])

    def _stream(self, messages: list[BaseMessage], stop: Any = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        answer = self._answer(messages)
        if answer.tool_calls:
            chunk = ChatGenerationChunk(message=AIMessageChunk(
                content="", tool_call_chunks=[{"id": c["id"], "name": c["name"], "args": json.dumps(c["args"]),
                                               "index": i} for i, c in enumerate(answer.tool_calls)]))
            if run_manager:
                run_manager.on_llm_new_token("", chunk=chunk)
            yield chunk
            return
        words = str(answer.content).split(" ")
        for i, w in enumerate(words):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=w if i == 0 else " " + w))
            if run_manager:
                run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)  # type: ignore[arg-type]
            yield chunk


__all__ = ["ScriptedChatModel", "scripted_answer"]
