"""Moved to the core: :mod:`nemo_csr_rail.agent_checks` (NeMo-free; it answers a folded
:class:`~nemo_csr_rail.agent_checks.AgentDecision`, which :func:`nemo_csr_rail.rail.outcome.agent_rail_outcome`
turns into NeMo's ``RailOutcome``). This name stays for code that imported it here."""

from nemo_csr_rail.agent_checks import (
    MAX_CONCURRENT_CHECKS,
    MAX_TOOL_CALLS,
    AgentDecision,
    check_documents,
    check_each,
    check_relevant_chunks,
    check_tool_calls,
    check_tool_results,
    skipped,
)

__all__ = ["MAX_CONCURRENT_CHECKS", "MAX_TOOL_CALLS", "AgentDecision", "check_documents", "check_each",
           "check_relevant_chunks", "check_tool_calls", "check_tool_results", "skipped"]
