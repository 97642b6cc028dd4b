"""Agent rails for LangChain and LangGraph (the ``langchain`` extra: docs/configuration.md#installing).

    from nemo_csr_rail.langchain import CsrGuard

    guard = CsrGuard.from_path("config")              # the same custom_data.nemo_csr_rail and guard model
    search = guard.tool(search, policy="agent")       # same name, description and argument schema
    docs = guard.retriever(retriever, policy="agent")
    agent = create_agent(model, [search])             # or create_react_agent, or any ToolNode

A guarded tool checks the call before running it, and what comes back (its result, or the text of the error it
raised) before the model reads it. Invoked with a model ``ToolCall`` (as LangGraph's ``ToolNode`` does), a block
comes back as a ``ToolMessage`` with ``status="error"`` and the refusal, so the agent loop goes on and the model
reads why; the tool never ran (blocked call) or its output is dropped (blocked result or error). The message's
``response_metadata["nemo_csr_rail"]`` is the record the middleware's refusals carry (:func:`record_of` reads both).
``guard.tool(…, on_block="raise")`` raises a ``ToolException`` instead, as does any block of a call invoked with
plain arguments. A guarded retriever drops the documents the policy finds harmful. ``invoke`` and ``ainvoke`` both
work. Every check goes through the core runtime the NeMo rails use too
(:class:`~nemo_csr_rail.runtime.CheckRuntime`, via :mod:`nemo_csr_rail.agent_checks`), so prompts, decode plans,
``on_error``, ``long_input`` and telemetry are the rails' own; the config directory is read without building an
``LLMRails``, and NeMo Guardrails is never imported. docs/agents.md.

The user's message, against which a tool call is judged (a call is the assistant's response to it), is the last
user message before the call in the LangGraph state (which ``ToolNode`` injects), else the invocation's
``config={"metadata": {"csr_user_message": …}}``, else ``guard.tool(…, user_message=…)`` (a string or a function
returning one), else the call is judged with no user message (the card's ``None``).

An integration outside the core chain: it imports LangChain and the core's runtime (not NeMo), and nothing in the
core imports it (tests/tooling/test_layering.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import yaml
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from langgraph.errors import GraphBubbleUp
from langgraph.prebuilt import InjectedState
from langgraph.types import Command
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from nemo_csr_rail import agent_checks
from nemo_csr_rail.agent import content_text
from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.langchain_messages import (
    METADATA_KEY,
    SOURCE_GUARDED_TOOL,
    record_for,
    record_of,
    run_sync,
)
from nemo_csr_rail.runtime import CheckRuntime, runtime_for
from nemo_csr_rail.settings.flows import RAILS_SECTIONS

#: per-invocation user message: ``tool.invoke(args, config={"metadata": {USER_MESSAGE_KEY: "…"}})``
USER_MESSAGE_KEY = "csr_user_message"
#: what a guarded tool invoked with a model ``ToolCall`` does on a block (:meth:`CsrGuard.tool`)
OnBlock = Literal["message", "raise"]
ON_BLOCK: tuple[str, ...] = ("message", "raise")


class CsrGuard:
    """The agent rails of one Guardrails config, for LangChain tools and retrievers."""

    def __init__(self, runtime: CheckRuntime) -> None:
        self.runtime = runtime

    @classmethod
    def from_path(cls, config_dir: str | os.PathLike[str]) -> CsrGuard:
        """Read ``custom_data.nemo_csr_rail`` and the guard model entry from the directory's YAML files (merged
        the way NeMo Guardrails merges them), validated exactly as the rails validate them."""
        root = Path(config_dir)
        files = sorted(p for p in root.glob("*.y*ml") if p.suffix in (".yml", ".yaml")) if root.is_dir() else []
        if not files:
            raise ConfigError("", f"no config.yml in {str(root)!r}")
        merged: dict[str, Any] = {"models": [], "custom_data": {}, "rails": {}}
        for path in files:
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, Mapping):
                raise ConfigError("", f"{path.name} is not a YAML mapping")
            merged["models"].extend(data.get("models") or [])
            merged["custom_data"].update(data.get("custom_data") or {})
            for section, value in (data.get("rails") or {}).items():
                merged["rails"][section] = value
        rails = SimpleNamespace(**{s: SimpleNamespace(flows=list((merged["rails"].get(s) or {}).get("flows") or []))
                                   for s in RAILS_SECTIONS})
        config = SimpleNamespace(models=merged["models"], custom_data=merged["custom_data"], rails=rails,
                                 config_path=str(root))
        return cls(runtime_for(config))

    # -------------------------------------------------------------------------------------------- wrappers
    def tool(self, tool: BaseTool, policy: str | None = None, *,
             user_message: str | Callable[[], str | None] | None = None,
             on_block: OnBlock = "message") -> BaseTool:
        """``tool`` guarded: same name, description and argument schema (as the model sees it); the call is
        checked before it runs, and what comes back (its result, or the text of the error it raised) before the
        model reads it.

        ``on_block`` says what a block looks like to whoever invoked the tool with a model ``ToolCall`` (LangGraph's
        ``ToolNode``, ``create_agent``, ``create_react_agent``): ``"message"`` (default) returns a ``ToolMessage``
        with ``status="error"`` and the refusal, so the agent loop goes on and the model reads why; ``"raise"``
        raises a ``ToolException`` with the refusal (``.metadata`` the decision), which LangGraph's default error
        handling turns into a failed run. Invoked with plain arguments (no call id, so no ``ToolMessage`` to
        return) a block always raises. Where a block raises, the tool's own ``handle_tool_error`` applies to it
        as to any ``ToolException`` of the tool."""
        if on_block not in ON_BLOCK:
            raise ValueError(f"on_block must be one of {', '.join(map(repr, ON_BLOCK))}, not {on_block!r}")
        return GuardedTool(name=tool.name, description=tool.description, args_schema=_with_state_slot(tool),
                           return_direct=tool.return_direct, handle_tool_error=tool.handle_tool_error,
                           handle_validation_error=tool.handle_validation_error, tags=tool.tags,
                           metadata=tool.metadata, inner=tool, guard=self, policy=policy, user_message=user_message,
                           on_block=on_block)

    def retriever(self, retriever: BaseRetriever, policy: str | None = None) -> BaseRetriever:
        """``retriever`` guarded: the documents the policy finds harmful are dropped (order kept)."""
        return GuardedRetriever(inner=retriever, guard=self, policy=policy, tags=retriever.tags,
                                metadata=retriever.metadata)

    def middleware(self, policy: str | None = None, *, input_policy: str | None = None,
                   output_policy: str | None = None, tool_policy: str | None = None, stream: str = "hold",
                   name: str | None = None) -> Any:
        """A ``create_agent`` middleware judging every message the model reads, every answer and tool call, and
        every tool result and tool error (the ``langchain`` extra; docs/langchain-agents.md)."""
        from nemo_csr_rail.langchain_middleware import CsrGuardMiddleware

        return CsrGuardMiddleware(self.runtime, policy, input_policy=input_policy, output_policy=output_policy,
                                  tool_policy=tool_policy, stream=stream, name=name)  # type: ignore[arg-type]

    # ---------------------------------------------------------------------------------------------- checks
    async def acheck_tool_call(self, name: str, arguments: Any, *, policy: str | None = None,
                               user_message: str | None = None, call_id: str | None = None) -> None:
        """Raise ``ToolException`` (the refusal; ``.metadata`` the decision) if the call is blocked."""
        call = {"id": call_id, "name": name, "args": arguments}
        out, _ = await agent_checks.check_tool_calls(self.runtime, policy, [call], user_message)
        _raise_if_blocked(out)

    async def acheck_tool_result(self, name: str, content: Any, *, policy: str | None = None,
                                 user_message: str | None = None, call_id: str | None = None) -> None:
        """Raise ``ToolException`` if what the tool returned is blocked."""
        message = {"content": content, "name": name, "tool_call_id": call_id}
        out = await agent_checks.check_tool_results(self.runtime, policy, [message], user_message)
        _raise_if_blocked(out)

    async def akeep_documents(self, documents: Sequence[Document], *, policy: str | None = None,
                              query: str | None = None) -> list[Document]:
        keep, _ = await agent_checks.check_documents(self.runtime, policy, [d.page_content for d in documents],
                                                     query)
        return [d for d, k in zip(documents, keep, strict=True) if k]

    async def aclose(self) -> None:
        await self.runtime.aclose()


def _raise_if_blocked(out: agent_checks.AgentDecision) -> None:
    if out.blocked:
        exc = ToolException(out.metadata.get("refusal") or out.reason or "Blocked by the safety policy.")
        exc.metadata = dict(out.metadata)  # type: ignore[attr-defined]
        exc.outcome = out  # type: ignore[attr-defined]  # the record of a returned block is built from it
        raise exc


# ------------------------------------------------------------------------------------------------ guarded tools
#: the argument through which LangGraph's ToolNode hands a guarded tool the graph state (``InjectedState``: never in
#: the schema the model sees, and ToolNode overwrites whatever a model puts there); it is removed before the wrapped
#: tool runs
STATE_SLOT = "csr_graph_state"


def _with_state_slot(tool: BaseTool) -> Any:
    """The tool's argument schema plus :data:`STATE_SLOT`, so that a ToolNode injects the graph state (the user
    message a call answers is read from it). A JSON-schema or pydantic-v1 schema is kept as it is (no slot: the
    user message then comes from the run config)."""
    schema = tool.args_schema if tool.args_schema is not None else tool.get_input_schema()
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)) or STATE_SLOT in schema.model_fields:
        return tool.args_schema
    return create_model(schema.__name__, __base__=schema,
                        **{STATE_SLOT: (Annotated[Any, InjectedState], Field(default=None, exclude=True))})


def _user_message(config: RunnableConfig | None, default: Any) -> str | None:
    meta = (config or {}).get("metadata") or {}
    value = meta.get(USER_MESSAGE_KEY)
    if value is None:
        value = default() if callable(default) else default
    return None if value is None else str(value)


def _is_user_message(message: Any) -> bool:
    if isinstance(message, Mapping):
        return message.get("role") in ("user", "human") or message.get("type") == "human"
    return isinstance(message, HumanMessage)


def _calls_of(message: Any) -> list[Any]:
    calls = message.get("tool_calls") if isinstance(message, Mapping) else getattr(message, "tool_calls", None)
    return list(calls or [])


def _call_id_of(call: Any) -> Any:
    return call.get("id") if isinstance(call, Mapping) else getattr(call, "id", None)


def user_message_in_state(state: Any, call_id: str | None) -> str | None:
    """The last user message before the assistant message that made call ``call_id`` (before the end of the
    conversation when no message made it) in a LangGraph state: a mapping or object with ``messages``, or a list
    of messages. ``None`` when there is none."""
    messages = state if isinstance(state, list) else (
        state.get("messages") if isinstance(state, Mapping) else getattr(state, "messages", None))
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return None
    end = len(messages)
    if call_id is not None:
        end = next((i for i in range(len(messages) - 1, -1, -1)
                    if any(_call_id_of(c) == call_id for c in _calls_of(messages[i]))), end)
    for message in reversed(messages[:end]):
        if _is_user_message(message):
            content = message.get("content") if isinstance(message, Mapping) else message.content
            return content_text(content)
    return None


def _result_messages(result: Any, name: str, call_id: str | None) -> list[dict[str, Any]]:
    """What the model will read of a tool's return value: a ``ToolMessage``'s content, the messages a
    ``Command`` adds to the state, each of a list of them, else the value itself."""
    items = result if isinstance(result, list) and result and all(
        isinstance(r, (BaseMessage, Command)) for r in result) else [result]
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Command):
            update = item.update
            added = update.get("messages") if isinstance(update, Mapping) else getattr(update, "messages", None)
            added = added if isinstance(added, list) else [] if added is None else [added]
            out.extend({"content": getattr(m, "content", m.get("content") if isinstance(m, Mapping) else m),
                        "name": name, "tool_call_id": call_id} for m in added)
        elif isinstance(item, BaseMessage):
            out.append({"content": item.content, "name": name, "tool_call_id": call_id})
        else:
            out.append({"content": content_text(item), "name": name, "tool_call_id": call_id})
    return out


async def _refusal_of(check: Coroutine[Any, Any, None]) -> ToolException | None:
    """The refusal a check raised, or ``None`` if it passed."""
    try:
        await check
    except ToolException as exc:
        return exc
    return None


def _handled(flag: Any, exc: ToolException) -> Any:
    """A ``ToolException`` as LangChain's ``handle_tool_error`` would turn it into the tool's output."""
    if isinstance(flag, str):
        return flag
    if callable(flag):
        return flag(exc)
    return exc.args[0] if exc.args else "Tool execution error"


class GuardedTool(BaseTool):
    """A tool whose calls, results and errors are checked (made by :meth:`CsrGuard.tool`).

    It runs the wrapped tool with the same input LangChain gave it (a model ``ToolCall`` stays a ``ToolCall``), so
    ``InjectedToolCallId``, ``InjectedState``, ``InjectedStore``, ``ToolRuntime``, ``content_and_artifact``,
    ``Command`` returns and the tool's own error handling behave exactly as without the guard."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseTool = Field(exclude=True)
    guard: Any = Field(exclude=True)
    policy: str | None = None
    user_message: Any = Field(default=None, exclude=True)
    on_block: OnBlock = "message"

    # LangChain calls run/arun for invoke, ainvoke and the legacy entry points alike; they wrap the inner tool's
    # run/arun (which does the parsing, injection, callbacks and output formatting), so _run/_arun are never used.
    def _run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("GuardedTool runs through run()")

    def run(self, tool_input: str | dict[str, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        call_id, forwarded, arguments, user = self._prepare(tool_input, kwargs)
        refusal = run_sync(_refusal_of(self.guard.acheck_tool_call(
            self.name, arguments, policy=self.policy, user_message=user, call_id=call_id)))
        if refusal is not None:
            return self._refuse(refusal, call_id, "tool_call")
        try:
            result = self.inner.run(forwarded, *args, **kwargs)
        except GraphBubbleUp:
            raise  # a LangGraph interrupt or parent command: control flow, not an error text
        except Exception as exc:
            refusal = run_sync(self._ajudge([{"content": str(exc), "name": self.name, "tool_call_id": call_id}]))
            if refusal is None:
                raise
            return self._refuse(refusal, call_id, "tool_result", cause=exc)
        refusal = run_sync(self._ajudge(_result_messages(result, self.name, call_id)))
        return result if refusal is None else self._refuse(refusal, call_id, "tool_result")

    async def arun(self, tool_input: str | dict[str, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        call_id, forwarded, arguments, user = self._prepare(tool_input, kwargs)
        refusal = await _refusal_of(self.guard.acheck_tool_call(
            self.name, arguments, policy=self.policy, user_message=user, call_id=call_id))
        if refusal is not None:
            return self._refuse(refusal, call_id, "tool_call")
        try:
            result = await self.inner.arun(forwarded, *args, **kwargs)
        except GraphBubbleUp:
            raise
        except Exception as exc:
            refusal = await self._ajudge([{"content": str(exc), "name": self.name, "tool_call_id": call_id}])
            if refusal is None:
                raise
            return self._refuse(refusal, call_id, "tool_result", cause=exc)
        refusal = await self._ajudge(_result_messages(result, self.name, call_id))
        return result if refusal is None else self._refuse(refusal, call_id, "tool_result")

    # ------------------------------------------------------------------------------------------------ helpers
    def _prepare(self, tool_input: str | dict[str, Any],
                 kwargs: dict[str, Any]) -> tuple[str | None, Any, Any, str | None]:
        """The call id, the input for the wrapped tool (state slot removed), the arguments as judged and the user
        message the call answers (graph state, else ``config`` metadata, else the wrapper's ``user_message``)."""
        call_id = kwargs.get("tool_call_id")
        if isinstance(tool_input, str):
            return call_id, tool_input, {"input": tool_input}, _user_message(kwargs.get("config"), self.user_message)
        forwarded = {k: v for k, v in tool_input.items() if k != STATE_SLOT}
        user = user_message_in_state(tool_input.get(STATE_SLOT), call_id) if STATE_SLOT in tool_input else None
        if user is None:
            user = _user_message(kwargs.get("config"), self.user_message)
        return call_id, forwarded, self._judged_arguments(forwarded), user

    def _judged_arguments(self, tool_input: dict[str, Any]) -> Any:
        """The model's arguments as the tool will receive them (defaults filled in by the schema the model
        sees; injected values left out). Arguments that do not validate are judged as given."""
        schema = self.inner.tool_call_schema
        if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            return tool_input
        given = {k: v for k, v in tool_input.items() if k in schema.model_fields}
        try:
            return schema.model_validate(given).model_dump(mode="json")
        except (ValidationError, ValueError, TypeError):
            return given

    async def _ajudge(self, messages: list[dict[str, Any]]) -> ToolException | None:
        """The first refusal among what the tool gave back (each message judged as a tool result)."""
        refusals = await asyncio.gather(*(_refusal_of(self.guard.acheck_tool_result(
            m["name"], m["content"], policy=self.policy, call_id=m["tool_call_id"])) for m in messages))
        return next((r for r in refusals if r is not None), None)

    def _refuse(self, refusal: ToolException, call_id: str | None, side: str,
                cause: BaseException | None = None) -> Any:
        """What the caller gets for a block (see :meth:`CsrGuard.tool`): a message carries the record the
        middleware's refusals carry (``response_metadata["nemo_csr_rail"]``, ``side`` ``tool_call`` or
        ``tool_result``, the decision under ``decision``); an exception the decision as ``.metadata``."""
        if self.on_block == "message" and call_id is not None:
            return self._refusal_message(str(refusal), refusal, call_id, side, cause)
        if self.handle_tool_error:
            content = _handled(self.handle_tool_error, refusal)
            if call_id is None:
                return content
            return self._refusal_message(content, refusal, call_id, side, cause)
        raise refusal from cause

    def _refusal_message(self, content: Any, refusal: ToolException, call_id: str, side: str,
                         cause: BaseException | None) -> ToolMessage:
        extra = {"tool_error": cause is not None} if side == "tool_result" else {}
        record = record_for(refusal.outcome, side, source=SOURCE_GUARDED_TOOL,  # type: ignore[attr-defined]
                            tool=self.name, **extra)
        return ToolMessage(content, tool_call_id=call_id, name=self.name, status="error",
                           response_metadata={METADATA_KEY: record})


class GuardedRetriever(BaseRetriever):
    """A retriever that drops harmful documents (made by :meth:`CsrGuard.retriever`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseRetriever = Field(exclude=True)
    guard: Any = Field(exclude=True)
    policy: str | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        docs = self.inner.invoke(query, config={"callbacks": run_manager.get_child()})
        return run_sync(self.guard.akeep_documents(docs, policy=self.policy, query=query))

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        docs = await self.inner.ainvoke(query, config={"callbacks": run_manager.get_child()})
        return await self.guard.akeep_documents(docs, policy=self.policy, query=query)


__all__ = ["METADATA_KEY", "ON_BLOCK", "STATE_SLOT", "USER_MESSAGE_KEY", "CsrGuard", "GuardedRetriever", "GuardedTool",
           "OnBlock", "record_of", "user_message_in_state"]
