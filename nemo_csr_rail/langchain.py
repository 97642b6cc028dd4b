"""Agent rails for LangChain (``pip install 'nemo-csr-rail[langchain]'``; langchain-core only).

    from nemo_csr_rail.langchain import CsrGuard

    guard = CsrGuard.from_path("config")              # the same custom_data.nemo_csr_rail and guard model
    search = guard.tool(search, policy="agent")       # same name, description and argument schema
    docs = guard.retriever(retriever, policy="agent")

A guarded tool checks the call before running it (blocked: the tool does not run and a ``ToolException`` carries
the refusal) and its result afterwards (blocked: ``ToolException``). A guarded retriever drops the documents the
policy finds harmful. ``invoke`` and ``ainvoke`` both work. Every check goes through the core runtime the NeMo
rails use too (:class:`~nemo_csr_rail.runtime.CheckRuntime`, via :mod:`nemo_csr_rail.agent_checks`), so prompts,
decode plans, ``on_error``, ``long_input`` and telemetry are the rails' own; the config directory is read without
building an ``LLMRails``, and NeMo Guardrails is never imported. docs/agents.md.

The user's message, against which a tool call is judged (a call is the assistant's response to it), comes from
the invocation's ``config={"metadata": {"csr_user_message": …}}``, else from ``guard.tool(…, user_message=…)`` (a
string or a function returning one), else the call is judged with no user message (the card's ``None``).

An integration outside the core chain: it imports LangChain and the core's runtime (not NeMo), and nothing in the
core imports it (tests/tooling/test_layering.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import yaml
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from pydantic import ConfigDict, Field

from nemo_csr_rail import agent_checks
from nemo_csr_rail.agent import content_text
from nemo_csr_rail.errors import ConfigError
from nemo_csr_rail.runtime import CheckRuntime, runtime_for
from nemo_csr_rail.settings.flows import RAILS_SECTIONS

T = TypeVar("T")
#: per-invocation user message: ``tool.invoke(args, config={"metadata": {USER_MESSAGE_KEY: "…"}})``
USER_MESSAGE_KEY = "csr_user_message"


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
             user_message: str | Callable[[], str | None] | None = None) -> BaseTool:
        """``tool`` guarded: same name, description and argument schema; the call is checked before it runs and
        the result before it is returned."""
        return GuardedTool(name=tool.name, description=tool.description, args_schema=tool.args_schema,
                           return_direct=tool.return_direct, handle_tool_error=tool.handle_tool_error,
                           handle_validation_error=tool.handle_validation_error, tags=tool.tags,
                           metadata=tool.metadata, inner=tool, guard=self, policy=policy, user_message=user_message)

    def retriever(self, retriever: BaseRetriever, policy: str | None = None) -> BaseRetriever:
        """``retriever`` guarded: the documents the policy finds harmful are dropped (order kept)."""
        return GuardedRetriever(inner=retriever, guard=self, policy=policy, tags=retriever.tags,
                                metadata=retriever.metadata)

    # ---------------------------------------------------------------------------------------------- checks
    async def acheck_tool_call(self, name: str, arguments: Any, *, policy: str | None = None,
                               user_message: str | None = None) -> None:
        """Raise ``ToolException`` (the refusal; ``.metadata`` the decision) if the call is blocked."""
        call = {"id": None, "name": name, "args": arguments}
        out, _ = await agent_checks.check_tool_calls(self.runtime, policy, [call], user_message)
        _raise_if_blocked(out)

    async def acheck_tool_result(self, name: str, content: Any, *, policy: str | None = None,
                                 user_message: str | None = None) -> None:
        """Raise ``ToolException`` if what the tool returned is blocked."""
        out = await agent_checks.check_tool_results(self.runtime, policy, [{"content": content, "name": name}],
                                                    user_message)
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
        raise exc


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a check from synchronous code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _user_message(config: RunnableConfig | None, default: Any) -> str | None:
    meta = (config or {}).get("metadata") or {}
    value = meta.get(USER_MESSAGE_KEY)
    if value is None:
        value = default() if callable(default) else default
    return None if value is None else str(value)


def _call_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """What to invoke the wrapped tool with: the single string of a one-input tool, else the parsed arguments."""
    return args[0] if len(args) == 1 and not kwargs else kwargs


def _arguments(tool_input: Any) -> Any:
    """The call's arguments as judged: a one-input tool's string is shown as ``{"input": …}``."""
    return {"input": tool_input} if isinstance(tool_input, str) else tool_input


def _result_content(result: Any) -> Any:
    return getattr(result, "content", result)


class GuardedTool(BaseTool):
    """A tool whose calls and results are checked (made by :meth:`CsrGuard.tool`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseTool = Field(exclude=True)
    guard: Any = Field(exclude=True)
    policy: str | None = None
    user_message: Any = Field(default=None, exclude=True)

    def _run(self, *args: Any, config: RunnableConfig, run_manager: Any = None, **kwargs: Any) -> Any:
        tool_input = _call_input(args, kwargs)
        user = _user_message(config, self.user_message)
        _run_sync(self.guard.acheck_tool_call(self.name, _arguments(tool_input), policy=self.policy, user_message=user))
        result = self.inner.invoke(tool_input, config=_child(config, run_manager))
        _run_sync(self.guard.acheck_tool_result(self.name, content_text(_result_content(result)),
                                                policy=self.policy, user_message=user))
        return result

    async def _arun(self, *args: Any, config: RunnableConfig, run_manager: Any = None, **kwargs: Any) -> Any:
        tool_input = _call_input(args, kwargs)
        user = _user_message(config, self.user_message)
        await self.guard.acheck_tool_call(self.name, _arguments(tool_input), policy=self.policy, user_message=user)
        result = await self.inner.ainvoke(tool_input, config=_child(config, run_manager))
        await self.guard.acheck_tool_result(self.name, content_text(_result_content(result)), policy=self.policy,
                                            user_message=user)
        return result


def _child(config: RunnableConfig | None, run_manager: Any) -> RunnableConfig:
    child: RunnableConfig = {"metadata": dict((config or {}).get("metadata") or {})}
    if run_manager is not None:
        child["callbacks"] = run_manager.get_child()
    return child


class GuardedRetriever(BaseRetriever):
    """A retriever that drops harmful documents (made by :meth:`CsrGuard.retriever`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseRetriever = Field(exclude=True)
    guard: Any = Field(exclude=True)
    policy: str | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        docs = self.inner.invoke(query, config={"callbacks": run_manager.get_child()})
        return _run_sync(self.guard.akeep_documents(docs, policy=self.policy, query=query))

    async def _aget_relevant_documents(self, query: str, *,
                                       run_manager: AsyncCallbackManagerForRetrieverRun) -> list[Document]:
        docs = await self.inner.ainvoke(query, config={"callbacks": run_manager.get_child()})
        return await self.guard.akeep_documents(docs, policy=self.policy, query=query)


__all__ = ["USER_MESSAGE_KEY", "CsrGuard", "GuardedRetriever", "GuardedTool"]
