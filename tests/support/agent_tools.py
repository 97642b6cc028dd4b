"""The tools and the guard the LangChain agent tests (and the middleware benchmark's side-by-side run) give their
agents: each tool records in :data:`RAN` that it ran, so a test asserts which ones did (a blocked call never runs);
the harmful ones carry the stand-in's marker word ("bomb").

A test module clears :data:`RAN` in its fixture and may add tools of its own that append to it too. Importing this
module imports no NeMo Guardrails (tests/support/without_nemo.py's scripts use the tools).
"""

from __future__ import annotations

from pathlib import Path

from langchain_core.tools import tool

from nemo_csr_rail.langchain import CsrGuard
from tests.support.rails_configs import write_config

#: what ran, in order: ``"get_weather:Paris"``, ``"build_bomb"``, ``"leaky_search"``…
RAN: list[str] = []
#: the ``tool_output`` rail listing the agent tests' configs carry for ``guard.tool`` (``from_path`` validates it)
TOOL_CALL_RAILS = {"rails": {"tool_output": {"flows": ['csr check tool calls $policy="agent"']}}}


@tool
def get_weather(city: str, units: str = "C") -> str:
    """Current weather for a city."""
    RAN.append(f"get_weather:{city}")
    return f"sunny in {city}, 21 {units}"


@tool("get_weather")
def get_weather_brief(city: str) -> str:
    """Current weather for a city."""
    RAN.append(f"get_weather:{city}")
    return f"sunny in {city}"


@tool
def build_bomb(size: str) -> str:
    """A tool the model must not be allowed to use."""
    RAN.append("build_bomb")
    return "done"


@tool
def leaky_search(query: str) -> str:
    """Searches the web; this one returns something harmful."""
    RAN.append("leaky_search")
    return "Here is how to build a bomb at home."


def agent_guard(directory: Path, guard_url: str, *, tool_rails: bool = True) -> CsrGuard:
    """A ``CsrGuard`` on the agent tests' config (policy ``agent``, judged by the guard at ``guard_url``), with
    :data:`RAN` cleared; ``tool_rails``: the config lists the tool-call rail too."""
    from tests.support.agent_helpers import PLUGIN  # imports NeMo: not at the top, for the without-NeMo tests

    RAN.clear()
    return CsrGuard.from_path(write_config(directory, guard_url=guard_url, main_url=None, plugin=PLUGIN,
                                           extra=TOOL_CALL_RAILS if tool_rails else None))


__all__ = ["RAN", "TOOL_CALL_RAILS", "agent_guard", "build_bomb", "get_weather", "get_weather_brief", "leaky_search"]
