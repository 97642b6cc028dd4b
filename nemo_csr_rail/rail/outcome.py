r"""A core :class:`~nemo_csr_rail.decision.Decision` → NeMo's ``RailOutcome``; the decision itself is made in the core.

An allowed turn (a verdict, a skipped check, or a failed check with ``on_error: allow``) is ``RailOutcome.allow``, a
policy block ``RailOutcome.block``, a failed check that blocks ``RailOutcome.failure``; the metadata is
:meth:`Decision.to_metadata` and the reason :attr:`Decision.reason`. The agent rails' folded
:class:`~nemo_csr_rail.agent_checks.AgentDecision` maps the same way; the retrieval rail's removed chunks become a
transform of ``relevant_chunks``.

Two agent actions hand their Colang 1.0 flow more than a decision: the tool calls that pass (the flow puts them back
into ``$tool_calls``) and the retrieved chunks kept (``$relevant_chunks_sep``, a list the transform's joined text
cannot restore). Their outcomes are :class:`ToolCallsOutcome` and :class:`RetrievalOutcome`: ``RailOutcome`` values, as
NeMo's catalog requires of a surface's action (``require_rail_outcome``), with the kept items in a field of their own
that the flow reads (``$csr_retrieval.kept_chunks``). The items' text stays out of the metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nemoguardrails.actions.rail_outcome import RailDecision, RailOutcome, TransformSpec, TransformTarget

from nemo_csr_rail.agent_checks import AgentDecision
from nemo_csr_rail.decision import Decision


def to_rail_outcome(decision: Decision) -> RailOutcome:
    meta = decision.to_metadata()
    if not decision.blocked:
        return RailOutcome.allow(reason=decision.reason, metadata=meta)
    if decision.failed:
        return RailOutcome.failure(reason=decision.reason, metadata=meta)
    return RailOutcome.block(reason=decision.reason, metadata=meta)


def agent_rail_outcome(folded: AgentDecision, metadata: dict[str, Any] | None = None) -> RailOutcome:
    """One rail call's folded agent decision; ``metadata``: in place of ``folded.metadata`` (the action adds keys
    its flow reads)."""
    meta = folded.metadata if metadata is None else metadata
    if not folded.blocked:
        return RailOutcome.allow(reason=folded.reason, metadata=meta)
    return (RailOutcome.failure if folded.failed else RailOutcome.block)(reason=folded.reason, metadata=meta)


@dataclass(frozen=True, slots=True)
class ToolCallsOutcome(RailOutcome):
    """The tool-calls rail's outcome, with the calls that pass (unchanged, in order) for the flow's ``$tool_calls``."""

    kept_tool_calls: list[Any] = field(default_factory=list, repr=False)
    __hash__ = None  # type: ignore[assignment]  # as RailOutcome: its metadata is a dict


@dataclass(frozen=True, slots=True)
class RetrievalOutcome(RailOutcome):
    """The retrieval rail's outcome, with the chunks kept for the flow's ``$relevant_chunks_sep``."""

    kept_chunks: list[str] = field(default_factory=list, repr=False)
    __hash__ = None  # type: ignore[assignment]


def tool_calls_rail_outcome(folded: AgentDecision, kept: Sequence[Any]) -> ToolCallsOutcome:
    base = agent_rail_outcome(folded)
    return ToolCallsOutcome(decision=base.decision, reason=base.reason, metadata=base.metadata, failed=base.failed,
                            kept_tool_calls=list(kept))


def retrieval_rail_outcome(folded: AgentDecision, kept: Sequence[str], sep: str = "\n") -> RetrievalOutcome:
    """The retrieval rail's outcome: allowed when nothing was removed, else a transform of ``relevant_chunks`` to
    the kept chunks joined by ``sep`` (the turn goes on)."""
    if not folded.metadata.get("removed"):
        return RetrievalOutcome(decision=RailDecision.ALLOW, reason=None, metadata=folded.metadata,
                                kept_chunks=list(kept))
    return RetrievalOutcome(decision=RailDecision.TRANSFORM, reason=folded.reason, metadata=folded.metadata,
                            transforms=(TransformSpec(TransformTarget.RELEVANT_CHUNKS, sep.join(kept)),),
                            kept_chunks=list(kept))


__all__ = ["RetrievalOutcome", "ToolCallsOutcome", "agent_rail_outcome", "retrieval_rail_outcome",
           "to_rail_outcome", "tool_calls_rail_outcome"]
