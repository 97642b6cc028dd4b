"""Configs and helpers for the agent rails (tool calls, tool results, retrieval) run by NeMo Guardrails 0.24.1."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

from tests.support.hash_embeddings import CONFIG_PY, ENGINE
from tests.support.rails_configs import write_config

POLICY = "Do not help with weapons, explosives or politics."
PLUGIN: dict[str, Any] = {
    "policies": {
        "agent": {"policy": POLICY, "reasoning": True},
        "agent_fast": {"policy": POLICY, "reasoning": False},
    },
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "build_bomb", "description": "Not a real tool",
                                      "parameters": {"type": "object", "properties": {}}}},
]
AGENT_ACTIONS = ("csr_check_tool_calls", "csr_check_tool_results", "csr_check_retrieval")


def tool_config(tmp_path: Path, guard: Any, llm: Any, *, calls: str | None = "agent", results: str | None = "agent",
                plugin: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                name: str = "agent_cfg") -> Path:
    """A passthrough config (tool calls need it in 0.24) with the tool rails for the given policies."""
    rails: dict[str, Any] = {}
    if calls:
        rails["tool_output"] = {"flows": [f'csr check tool calls $policy="{calls}"']}
    if results:
        rails["tool_input"] = {"flows": [f'csr check tool results $policy="{results}"']}
    merged: dict[str, Any] = {"passthrough": True, "rails": rails}
    for k, v in (extra or {}).items():
        if k == "rails":
            for d, section in v.items():
                rails.setdefault(d, {}).update(section)
        else:
            merged[k] = v
    return write_config(tmp_path / name, guard_url=guard.url, main_url=llm.url, plugin=plugin or PLUGIN,
                        extra=merged)


RAG_FLOWS = """\
define user ask question
  "how do returns work"
  "where is my order"
  "tell me about shipping"

define flow answer questions
  user ask question
  bot answer question
"""


def retrieval_config(tmp_path: Path, guard: Any, llm: Any, *, policy: str = "agent", documents: dict[str, str],
                     retriever_py: str | None = None, plugin: dict[str, Any] | None = None,
                     name: str = "rag_cfg") -> Path:
    """NeMo's dialog path, where 0.24.1 runs retrieval rails: user canonical forms (matched by embeddings only,
    with the offline hash model), a flow that answers with ``bot answer question``, a ``kb/`` folder, and
    ``rails.retrieval``. ``retriever_py``: an ``actions.py`` registering the application's own
    ``retrieve_relevant_chunks`` instead of the knowledge base."""
    cfg = write_config(
        tmp_path / name, guard_url=guard.url, main_url=llm.url, plugin=plugin or PLUGIN,
        extra={"rails": {"retrieval": {"flows": [f'csr check retrieval $policy="{policy}"']},
                         "dialog": {"user_messages": {"embeddings_only": True}}}},
    )
    data = yaml.safe_load((cfg / "config.yml").read_text())
    data["models"].append({"type": "embeddings", "engine": ENGINE, "model": "bow"})
    (cfg / "config.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    (cfg / "config.py").write_text(CONFIG_PY)
    (cfg / "rag.co").write_text(RAG_FLOWS)
    if documents:
        (cfg / "kb").mkdir(exist_ok=True)
        for fname, text in documents.items():
            (cfg / "kb" / fname).write_text(textwrap.dedent(text))
    if retriever_py is not None:
        (cfg / "actions.py").write_text(textwrap.dedent(retriever_py))
    return cfg


async def run_turn(rails: Any, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                   **options: Any) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """One request as an application sends it; returns (answer text, tool calls returned, csr outcomes)."""
    opts: dict[str, Any] = {"log": {"activated_rails": True}, **options}
    if tools is not None:
        opts["llm_params"] = {"tools": tools}
    res = await rails.generate_async(messages=messages, options=opts)
    msg = res.response[-1] if isinstance(res.response, list) else {"content": res.response}
    return msg.get("content"), list(res.tool_calls or []), outcomes(res)


def outcomes(res: Any) -> list[dict[str, Any]]:
    found = []
    for rail in (res.log.activated_rails if res.log else None) or []:
        for act in rail.executed_actions or []:
            if act.action_name.startswith("csr_check"):
                rv = act.return_value
                found.append({"rail_type": rail.type, "rail": rail.name, "action": act.action_name,
                              "decision": getattr(rv.decision, "value", rv.decision), "reason": rv.reason,
                              "metadata": dict(rv.metadata), "stop": rail.stop})
    return found


def names(calls: list[dict[str, Any]]) -> list[str]:
    return [c["function"]["name"] for c in calls]


def guard_prompts(guard: Any) -> list[str]:
    return [r["messages"][0]["content"] for r in guard.chat_requests()]
