"""A core :class:`~nemo_csr_rail.decision.Decision` → NeMo's ``RailOutcome``; the decision itself is made in the core.

An allowed turn (a verdict, a skipped check, or a failed check with ``on_error: allow``) is ``RailOutcome.allow``, a
policy block ``RailOutcome.block``, a failed check that blocks ``RailOutcome.failure``; the metadata is
:meth:`Decision.to_metadata` and the reason :attr:`Decision.reason`. The agent rails' folded
:class:`~nemo_csr_rail.agent_checks.AgentDecision` maps the same way; the retrieval rail's removed chunks become a
transform of ``relevant_chunks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nemoguardrails.actions.rail_outcome import RailOutcome, TransformTarget

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


def retrieval_rail_outcome(folded: AgentDecision, kept: Sequence[str], sep: str = "\n") -> RailOutcome:
    """The retrieval rail's outcome: allowed when nothing was removed, else a transform of ``relevant_chunks`` to
    the kept chunks joined by ``sep`` (the turn goes on)."""
    if not folded.metadata.get("removed"):
        return RailOutcome.allow(reason=None, metadata=folded.metadata)
    return RailOutcome.transform([(TransformTarget.RELEVANT_CHUNKS, sep.join(kept))], reason=folded.reason,
                                 metadata=folded.metadata)


__all__ = ["agent_rail_outcome", "retrieval_rail_outcome", "to_rail_outcome"]
