"""A core :class:`~nemo_csr_rail.decision.Decision` → NeMo's ``RailOutcome``; the decision itself is made in the core.

An allowed turn (a verdict, a skipped check, or a failed check with ``on_error: allow``) is ``RailOutcome.allow``, a
policy block ``RailOutcome.block``, a failed check that blocks ``RailOutcome.failure``; the metadata is
:meth:`Decision.to_metadata` and the reason :attr:`Decision.reason`.
"""

from __future__ import annotations

from nemoguardrails.actions.rail_outcome import RailOutcome

from nemo_csr_rail.decision import Decision


def to_rail_outcome(decision: Decision) -> RailOutcome:
    meta = decision.to_metadata()
    if not decision.blocked:
        return RailOutcome.allow(reason=decision.reason, metadata=meta)
    if decision.failed:
        return RailOutcome.failure(reason=decision.reason, metadata=meta)
    return RailOutcome.block(reason=decision.reason, metadata=meta)


__all__ = ["to_rail_outcome"]
