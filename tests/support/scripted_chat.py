"""Scripted LangChain chat models for agent tests: in-process, they emit tool calls and record what they read.

* :class:`ScriptedChatModel` reads its script from the last user message, like :mod:`tests.support.agent_llm`'s:
  ``CALL name {json}`` (several separated by ``;``) makes those tool calls (``CALLREV eman {json}`` calls ``name``
  spelled backwards, so a benign user message can make a harmful call); after tool results it answers ``Based on
  the tool results: …`` quoting them (so a test sees what the model read); otherwise it answers
  :func:`~tests.support.rails_configs.main_reply` (``EVILOUT`` in the message: a harmful answer). ``WITHTEXT`` gives
  tool calls that text too; ``CALLRAW name TXET`` makes a call whose arguments are not JSON (TEXT, spelled backwards
  in the message). ``ANSWER text`` answers ``text`` verbatim. ``_stream`` yields the answer word by word, so
  streaming tests see tokens.
* :class:`ReplayChatModel` answers with the next message of a fixed list (:func:`tool_call_answer` makes the
  tool-calling ones), whatever it reads.
* :class:`AnsweringChatModel` is what both share (also the benchmarks' models): ``bind_tools`` keeps the tools and
  returns the model itself, and each call is answered by :meth:`AnsweringChatModel.answer`.
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


class AnsweringChatModel(BaseChatModel):
    """A chat model answered by code (:meth:`answer`); ``bound``: the tools last bound, as given."""

    bound: list[Any] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> AnsweringChatModel:
        self.bound = list(tools)
        return self

    def answer(self, messages: list[BaseMessage]) -> AIMessage:
        raise NotImplementedError

    def _generate(self, messages: list[BaseMessage], stop: Any = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.answer(messages))])


class ScriptedChatModel(AnsweringChatModel):
    """``reads``: every message list the model was called with, in order."""

    reads: list[list[BaseMessage]] = Field(default_factory=list)

    def answer(self, messages: list[BaseMessage]) -> AIMessage:
        self.reads.append(list(messages))
        return scripted_answer(messages, len(self.reads))

    def _stream(self, messages: list[BaseMessage], stop: Any = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        answer = self.answer(messages)
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


class ReplayChatModel(AnsweringChatModel):
    """Answers with the next message of ``script`` and records every conversation it was asked to continue
    (``seen``)."""

    script: list[AIMessage]
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def answer(self, messages: list[BaseMessage]) -> AIMessage:
        self.seen.append(list(messages))
        return self.script[len(self.seen) - 1].model_copy()


def tool_call_answer(*calls: tuple[str, dict[str, Any]], text: str = "", ids: str = "call_{name}_{i}") -> AIMessage:
    """An answer making ``calls`` (``(name, arguments)``, in order); ``ids``: each call's id, from its name and
    position."""
    return AIMessage(content=text, tool_calls=[{"id": ids.format(name=n, i=i), "name": n, "args": a}
                                               for i, (n, a) in enumerate(calls)])


__all__ = ["AnsweringChatModel", "ReplayChatModel", "ScriptedChatModel", "scripted_answer", "tool_call_answer"]
