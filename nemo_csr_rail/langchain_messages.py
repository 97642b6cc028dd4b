"""LangChain messages for the guard: the transcript the core judges, the model's view of a thread, the records.

* :func:`to_transcript`: LangChain messages as :class:`nemo_csr_rail.transcript.Message` (text parts joined, other
  parts named, tool calls — also those whose arguments did not parse — kept), in the order the model reads them;
* :func:`model_view`: what the model is sent of a thread: the refusals the middleware issued and what they refused
  left out, a refused tool result withheld in place (docs/langchain-agents.md, "Later turns");
* the refusal ``AIMessage`` and the blocked ``ToolMessage``, with the record in ``response_metadata["nemo_csr_rail"]``
  (:func:`record_for` builds it, :func:`record_of` reads it); a guarded tool's blocks (:mod:`nemo_csr_rail.langchain`)
  carry a record of the same shape, so one reader serves both;
* :func:`run_sync`: a check from synchronous code (the middleware's sync hooks, a guarded tool's ``invoke``, a
  guarded retriever), on one event loop shared by both.

Used by :mod:`nemo_csr_rail.langchain_middleware` and :mod:`nemo_csr_rail.langchain`; LangChain only, no NeMo
Guardrails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command

from nemo_csr_rail.agent import content_text
from nemo_csr_rail.agent_checks import AgentDecision
from nemo_csr_rail.decision import Decision
from nemo_csr_rail.transcript import Message, ToolCallItem

#: the key of the guard's record in a message's ``response_metadata``
METADATA_KEY = "nemo_csr_rail"
#: who issued a record (its ``source``): the middleware ends the turn on its own blocked tool result, while a
#: guarded tool's block goes back to the model, which reads why and goes on
SOURCE_MIDDLEWARE = "middleware"
SOURCE_GUARDED_TOOL = "guarded_tool"
T = TypeVar("T")
_ROLES = {"human": "user", "ai": "assistant", "tool": "tool", "system": "system"}


# ------------------------------------------------------------------------------------------- messages → transcript
def to_transcript(messages: Sequence[BaseMessage]) -> list[Message]:
    """LangChain messages as the core's transcript (the order and positions the model reads them in)."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        role = _ROLES.get(m.type, m.type)
        # a call whose arguments did not parse is still the model's output (and shown to the application): judged
        # with its raw arguments
        calls = tuple(ToolCallItem(c.get("id"), c.get("name") or "", c.get("args")) for c in
                      [*(getattr(m, "tool_calls", None) or ()), *(getattr(m, "invalid_tool_calls", None) or ())])
        other: tuple[str, ...] = ()
        if isinstance(m.content, list):
            other = tuple(str(p.get("type")) for p in m.content
                          if isinstance(p, dict) and p.get("type") not in (None, "text"))
        text = text_of(m.content)
        out.append(Message(index=i, role=role, text=text, tool_calls=calls,
                           tool_call_id=getattr(m, "tool_call_id", None), name=getattr(m, "name", None),
                           other_parts=other))
    return out


def text_of(content: Any) -> str:
    """A message's judged text: its text parts joined by newlines (a string as it is)."""
    if isinstance(content, list):
        return "\n".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content
                         if isinstance(p, str) or (isinstance(p, dict) and p.get("type") in (None, "text")))
    return content_text(content)


def only_tool_results(transcript: list[Message]) -> list[Message]:
    """The input side's share of ``tool_policy`` when it differs from ``input_policy``: the other messages'
    text blanked (an empty message is not sent to the guard); positions stay, so the indexes still match."""
    return [m if m.role == "tool" else dataclasses.replace(m, text="") for m in transcript]


def without_tool_results(transcript: list[Message]) -> list[Message]:
    return [dataclasses.replace(m, text="") if m.role == "tool" else m for m in transcript]


def only_calls(transcript: list[Message]) -> list[Message]:
    """The output side's share of ``tool_policy``: the answers' text blanked, their tool calls kept."""
    return [dataclasses.replace(m, text="") if m.role == "assistant" else m for m in transcript]


def without_calls(transcript: list[Message]) -> list[Message]:
    return [dataclasses.replace(m, tool_calls=()) if m.tool_calls else m for m in transcript]


# ---------------------------------------------------------------------------------------------- refusal records
def record_of(message: BaseMessage) -> dict[str, Any] | None:
    """The guard's record on a message (a refusal the middleware issued, a tool result it blocked, a guarded
    tool's blocked call or result), else None."""
    meta = getattr(message, "response_metadata", None) or {}
    rec = meta.get(METADATA_KEY)
    return rec if isinstance(rec, dict) else None


def model_view(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """What the model reads: the refusals this middleware issued and the messages they refused are left out (kept
    in the state for the application and the audit); a refused tool result keeps its place, withheld."""
    refused: set[str] = set()
    ends: set[int] = set()
    for i, m in enumerate(messages):
        rec = record_of(m)
        if rec is not None and rec.get("blocked") and isinstance(m, AIMessage):
            ends.add(i)
            refused.update(rec.get("refused_ids") or ())
    if not ends:
        return list(messages)
    # the calls of a refused answer go with it, and so do their results (a result without its call is an error
    # for most providers)
    dropped_calls = {c.get("id") for m in messages if isinstance(m, AIMessage) and m.id in refused
                     for c in m.tool_calls}
    view: list[BaseMessage] = []
    for i, m in enumerate(messages):
        if i in ends or (m.id in refused and not isinstance(m, ToolMessage)):
            continue
        if isinstance(m, ToolMessage) and m.tool_call_id in dropped_calls:
            continue
        if m.id in refused and isinstance(m, ToolMessage):
            m = m.model_copy(update={"content": "[withheld by the safety policy]"})
        view.append(m)
    return view


def blocked_index(decision: Decision) -> int | None:
    cov = getattr(decision, "coverage", None)
    idx = getattr(cov, "blocked_index", None)
    if idx is None:
        meta_cov = decision.to_metadata().get("coverage")
        idx = meta_cov.get("blocked_index") if isinstance(meta_cov, dict) else None
    return idx if isinstance(idx, int) else None


def record_for(decision: Decision | AgentDecision, side: str, *, blocked: bool = True,
               source: str = SOURCE_MIDDLEWARE, **extra: Any) -> dict[str, Any]:
    """The record in ``response_metadata["nemo_csr_rail"]``, one shape for the middleware's refusals and a guarded
    tool's blocks (docs/langchain-agents.md, "The refusal, and what was judged"). ``decision`` holds the deciding
    check's metadata: one item's (the middleware) or the whole rail call's, its items in ``checks`` (a guarded tool,
    judged as the NeMo tool rails judge)."""
    if isinstance(decision, AgentDecision):
        meta, policy = dict(decision.metadata), decision.metadata.get("policy")
    else:
        meta, policy = decision.to_metadata(), decision.policy
    return {"blocked": blocked, "side": side, "source": source, "policy": policy, "reasoning": decision.reason,
            **extra, "decision": meta}


def refusal_message(decision: Decision, side: str, **extra: Any) -> AIMessage:
    text = decision.refusal or "I can't help with that."
    return AIMessage(content=text, id=f"csr-refusal-{uuid.uuid4().hex}",
                     response_metadata={METADATA_KEY: record_for(decision, side, **extra)})


def tool_messages(result: Any) -> list[BaseMessage]:
    """What a tool call adds to the state: its ``ToolMessage``, or every message its ``Command`` adds (a tool may
    add an answer or a note too; each is judged as the tool's output, since nothing else judges it before it enters
    the state)."""
    if isinstance(result, ToolMessage):
        return [result]
    if isinstance(result, Command) and isinstance(result.update, dict):
        added = result.update.get("messages") or ()
        return [m for m in (added if isinstance(added, (list, tuple)) else [added]) if isinstance(m, BaseMessage)]
    return []


def blocked_tool_message(decision: Decision, request: ToolCallRequest, message: BaseMessage) -> ToolMessage:
    call = request.tool_call
    return ToolMessage(content=decision.refusal or "Blocked by the safety policy.",
                       tool_call_id=getattr(message, "tool_call_id", None) or call.get("id") or "",
                       name=message.name or call.get("name"), status="error",
                       response_metadata={METADATA_KEY: record_for(
                           decision, "tool_result", tool=call.get("name"),
                           tool_error=getattr(message, "status", None) == "error")})


def blocked_tool_result(view: Sequence[BaseMessage]) -> AIMessage | None:
    """The turn's end after a tool result was blocked: the refusal as the final answer, the model not called."""
    for m in reversed(view):
        if isinstance(m, AIMessage):
            return None
        rec = record_of(m) if isinstance(m, ToolMessage) else None
        # records without a source predate it: only the middleware's blocks had ``blocked`` then
        if rec is not None and rec.get("blocked") and rec.get("source", SOURCE_MIDDLEWARE) == SOURCE_MIDDLEWARE:
            return AIMessage(content=m.content, id=f"csr-refusal-{uuid.uuid4().hex}",
                             response_metadata={METADATA_KEY: {**rec, "refused_ids": [m.id] if m.id else []}})
    return None


# ------------------------------------------------------------------------------------------------ sync from async
class _Loop:
    """One event loop on a daemon thread for every synchronous entry point (the middleware's sync hooks, a guarded
    tool's ``invoke``, a guarded retriever): a sync caller (inside or outside a running loop) waits on it, and the
    guard engine's connection pool (one per event loop) lives as long as it does, instead of one per check."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="csr-guard-sync", daemon=True).start()
                self._loop = loop
            loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # waiting on the loop from its own thread would never return: say so instead
            coro.close()
            raise RuntimeError("a synchronous guard check was called from the guard's own event loop thread; "
                               "use the async entry point (ainvoke) there")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


_SYNC = _Loop()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a check from synchronous code, also when this thread already runs an event loop."""
    return _SYNC.run(coro)


__all__ = [
    "METADATA_KEY",
    "SOURCE_GUARDED_TOOL",
    "SOURCE_MIDDLEWARE",
    "blocked_index",
    "blocked_tool_message",
    "blocked_tool_result",
    "model_view",
    "only_calls",
    "only_tool_results",
    "record_for",
    "record_of",
    "refusal_message",
    "run_sync",
    "text_of",
    "to_transcript",
    "tool_messages",
    "without_calls",
    "without_tool_results",
]
