"""The pipeline's one-way data flow, enforced: config → policy → prompt → engine → verdict → client → decision → NeMo adapter.

A reader follows a check from ``config.yml`` to the refusal without back-tracking only while no module imports one
later in that chain. Every import counts, including the lazy ones inside functions (a lazy import is still a
dependency; it only hides it). The command line, ``eval`` and the package root are consumers of the whole pipeline
and sit outside the chain.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "nemo_csr_rail"

# Position in the chain; a module may import only modules at the same or an earlier position.
RANK: dict[str, int] = {
    # leaves: plain data and helpers that know nothing of the pipeline
    "errors": 0, "taxonomy": 0, "cache": 0, "weights": 0, "long_input": 0, "conversation": 0, "neutralize": 0,
    "transcript": 0,  # the request's messages as plain data (whole-conversation coverage)
    "_version": 0,  # the installed distribution's version, read once from its metadata
    "options": 0,  # every default, once: read by the schema, the client, the engines and the prompt builder
    "directions": 0,  # the directions and their one table (flow, action, wording, labels), read by everything
    "settings.probe": 1, "settings.schema": 1, "settings.endpoints": 1, "settings.flows": 1, "settings.resolve": 1,
    "settings": 1,
    "policy": 2,
    "prompt_topic": 3, "agent": 3,
    "prompt": 4,
    "verdict": 5,
    # what an engine returns and the protocols it implements: the plans read completions, the engines make them
    "completion": 6,
    # decode plans: each builds its requests and reads its completions
    "plans.grammar": 7, "plans.one_token": 7, "plans.answers": 8, "plans.split_output": 9, "plans.escalate": 9,
    "plans": 10,
    # engines carry the plans' requests
    "engines.constrain": 11, "engines.transport": 11, "engines.deadline": 11, "engines.replicas": 11,
    "engines.http": 12, "engines.embedded": 12,
    "engines.factory": 13,
    "client": 14,
    "decision": 15,
    "coverage": 15,  # which messages a check judges, folded into one decision (calls the runtime it is given)
    "long_items": 15,  # judges an item too long for one check: windows of it through the client, one decision
    "telemetry.metrics": 16, "telemetry.audit": 16, "telemetry.tracing": 16, "telemetry.facade": 17,
    "telemetry": 17,
    # the check runtime (one per config: policies, clients, skips, long inputs, on_error) and the agent items
    # folded into one decision; NeMo-free, shared by the NeMo adapter and the LangChain integration
    "runtime": 18,
    "agent_checks": 19,
    # the NeMo adapter (nemo_csr_rail/rail/, laid out like a NeMo library rail): the only package that imports NeMo
    "rail.outcome": 20, "rail.history": 20, "rail.transcript_events": 20, "rail.rail_config": 20, "rail.rail": 20,
    "rail.runtime": 21, "rail.agent_checks": 21, "rail.nemo_compat": 21,
    "rail": 22, "rail.actions": 22, "rail.hooks": 22,
    # the files NeMo loads from import_paths: one-line re-exports of the adapter
    "actions": 23, "config": 23,
    # optional framework integrations: consumers of the core runtime, imported by nothing in the package
    "langchain": 24, "langchain_messages": 24, "langchain_middleware": 24,
}
OUTSIDE = ("cli", "eval")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``nemo_csr_rail`` module this file imports, at any depth of its code."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "nemo_csr_rail":
                out.update(alias.name for alias in node.names)  # from nemo_csr_rail import prompt
            elif node.module.startswith("nemo_csr_rail."):
                base = node.module.removeprefix("nemo_csr_rail.")
                for alias in node.names:  # from nemo_csr_rail.plans import grammar: the module plans.grammar
                    sub = PKG.joinpath(*base.split("."), alias.name)
                    out.add(f"{base}.{alias.name}" if sub.with_suffix(".py").is_file() or sub.is_dir() else base)
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("nemo_csr_rail.") for a in node.names if a.name.startswith("nemo_csr_rail."))
    return out


def _rank(name: str) -> int | None:
    while name:
        if name in RANK:
            return RANK[name]
        name = name.rpartition(".")[0]
    return None


MODULES = sorted(p for p in PKG.rglob("*.py") if not _module_name(p).startswith(OUTSIDE) and _module_name(p))


def test_every_pipeline_module_has_a_place_in_the_chain():
    unplaced = [_module_name(p) for p in MODULES if _rank(_module_name(p)) is None]
    assert not unplaced, f"add these modules to RANK (where in the chain do they sit?): {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_no_import_runs_back_up_the_chain(path: Path):
    me = _module_name(path)
    mine = _rank(me)
    assert mine is not None
    back = sorted(f"{dep} (position {_rank(dep)})" for dep in _imports(path)
                  if (_rank(dep) or 0) > mine)
    assert not back, f"{me} (position {mine}) imports later modules: {back}"


def test_the_engines_sit_wholly_above_the_plans():
    """The plans build the requests and read the completions; the engines carry them. An engine module ranked at or
    below a plan (a helper a plan could import) would put the engines folder on both sides of the plans again."""
    engines = {m: r for m, r in RANK.items() if m.startswith("engines.")}
    decode_plans = {m: r for m, r in RANK.items() if m == "plans" or m.startswith("plans.")}
    low = sorted(m for m, r in engines.items() if r <= max(decode_plans.values()))
    assert not low, f"these engine modules rank at or below the plans (position {max(decode_plans.values())}): {low}"


ADAPTER = "rail"
#: top-level packages the core never imports; each also covers its ``_``-suffixed family (langchain_core,
#: langchain_openai, langgraph_sdk, …)
FOREIGN = ("nemoguardrails", "langchain", "langgraph")


def _is_foreign(module: str) -> bool:
    top = module.split(".")[0]
    return any(top == f or top.startswith(f + "_") for f in FOREIGN)


def _foreign_imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        out.update(n for n in names if _is_foreign(n))
    return out


# Exempt from the check below, explicitly: nemo_csr_rail/langchain.py, langchain_middleware.py and
# langchain_messages.py are the optional LangChain integration (the `langchain` extra). They import LangChain by design and judge through the core runtime
# so that their checks decide exactly as the rails do; their RANK (last) keeps every other module from importing them.
INTEGRATIONS = ("langchain", "langchain_messages", "langchain_middleware")
CORE = [p for p in MODULES if not (_module_name(p) == ADAPTER or _module_name(p).startswith(ADAPTER + "."))
        and _module_name(p) not in ("actions", "config") and _module_name(p) not in INTEGRATIONS]


@pytest.mark.parametrize("path", CORE, ids=_module_name)
def test_the_core_imports_neither_nemo_nor_langchain(path: Path):
    """NeMo Guardrails is reached through nemo_csr_rail/rail/ alone (and the shims NeMo loads), so following NeMo
    to a new engine touches one package; LangChain only through optional integrations outside the core."""
    assert not _foreign_imports(path), f"{_module_name(path)} imports {sorted(_foreign_imports(path))}"


def test_the_foreign_check_covers_langchain_and_langgraph():
    """``import langgraph.prebuilt`` or ``from langchain_openai import …`` in the core would fail the check above."""
    for name in ("nemoguardrails.rails", "langchain", "langchain.agents", "langchain_core.tools", "langchain_openai",
                 "langgraph", "langgraph.prebuilt", "langgraph_sdk"):
        assert _is_foreign(name), name
    for name in ("nemo_csr_rail.agent", "langchainish", "yaml", "httpx"):
        assert not _is_foreign(name), name


def test_the_langchain_integration_imports_no_nemo():
    """A LangChain user does not pay NeMo's import: the integration reaches the checks through the core runtime
    (tests/integration/test_langchain_without_nemo.py runs it with nemoguardrails unimportable)."""
    path = PKG / "langchain.py"
    assert not {n for n in _foreign_imports(path) if n.split(".")[0] == "nemoguardrails"}
    assert not {d for d in _imports(path) if d == ADAPTER or d.startswith(ADAPTER + ".")}, \
        "langchain.py imports the NeMo adapter"


@pytest.mark.parametrize("name", ["langchain_middleware.py", "langchain_messages.py"])
def test_the_agent_middleware_imports_no_nemo(name):
    """The LangChain agent middleware is LangChain only: an agent built with it never loads NeMo Guardrails."""
    path = PKG / name
    assert not {n for n in _foreign_imports(path) if n.split(".")[0] == "nemoguardrails"}
    assert not {d for d in _imports(path) if d == ADAPTER or d.startswith(ADAPTER + ".")}, \
        f"{name} imports the NeMo adapter"
