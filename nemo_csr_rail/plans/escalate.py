"""The escalation plan (``reasoning: escalate``): explained blocks at the one-token price.

Every check is first *screened* with reasoning off (the one-token plan where the server supports it, the split
output plan for output checks). Only a screen whose P(harmful) reaches ``escalate_at`` — or, when the server gave
no confidence, a screen that says ``harmful`` — pays for the *reasoned* check: the same prompt with reasoning on,
whose verdict decides and whose sentence explains the block. A benign turn therefore costs what a reasoning-off
check costs, and a blocked one carries the model's reason.

The reasoned prompt differs from the screen's only in its last line (``/think`` for ``/no_think``), so it shares
the screen's whole policy-and-conversation prefix in vLLM's prefix cache.

A failed escalation (timeout, server error, unparsable trace) never lets a screened-harmful turn through and does
not consult ``on_error``: the screen's verdict decides, without a reason, and the failure is reported in the
result (``escalation_error``). Only a screen that said ``unharmful`` yet reached ``escalate_at`` (possible when it is
set below 0.5) is then allowed — exactly what the screen alone would decide.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from nemo_csr_rail.completion import Completion, total
from nemo_csr_rail.errors import CsrError, GuardTimeout
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.prompt import GuardPrompt
from nemo_csr_rail.verdict import Verdict

#: runs one plan (single request or split output) within a budget: the verdict, completions used, requests sent
RunPlan = Callable[[GuardPrompt, float], Awaitable[tuple[Verdict, list[Completion], int]]]

#: the least time worth starting a reasoned check with; below it the screen decides at once
MIN_ESCALATION_BUDGET_S = 0.05


@dataclass(frozen=True)
class Escalation:
    """What the screen found and whether the reasoned check ran (it decided when ``escalated`` and no error)."""

    escalated: bool
    screen_verdict: str
    screen_confidence: float | None
    screen_decode_plan: str
    screen_completion_tokens: int | None
    escalate_at: float
    #: the failure kind of a reasoned check that could not decide (the screen's verdict decided instead)
    error: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The metadata and record keys: every field by its name, ``error`` as ``escalation_error`` (only when
        set)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "error"}
        if self.error is not None:
            out["escalation_error"] = self.error
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Escalation:
        """The inverse of :meth:`to_record` (other keys of ``record`` are ignored)."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name != "error"},
                   error=record.get("escalation_error"))


def should_escalate(screen: Verdict, direction: Direction, escalate_at: float) -> bool:
    """P(harmful) at or above ``escalate_at``; with no confidence, a ``harmful`` screen verdict."""
    if screen.confidence is None:
        return screen.harm(direction) == "harmful"
    return screen.confidence >= escalate_at


async def run(run_plan: RunPlan, screen: GuardPrompt, reasoned: GuardPrompt, budget: float, *, escalate_at: float,
              decode_plan: Callable[[list[Completion]], str]
              ) -> tuple[Verdict, list[Completion], list[Completion], int, Escalation]:
    """Screen, then escalate if needed: the deciding verdict, the screen's completions, the reasoned check's (empty
    when it did not run or failed), the requests sent, and the record."""
    deadline = time.monotonic() + budget
    verdict, completions, calls = await run_plan(screen, budget)
    direction = screen.direction
    record = Escalation(
        escalated=False, screen_verdict=verdict.harm(direction), screen_confidence=verdict.confidence,
        screen_decode_plan=decode_plan(completions),
        screen_completion_tokens=total(c.completion_tokens for c in completions), escalate_at=escalate_at)
    if not should_escalate(verdict, direction, escalate_at):
        return verdict, completions, [], calls, record
    remaining = deadline - time.monotonic()
    try:
        if remaining < MIN_ESCALATION_BUDGET_S:
            raise GuardTimeout(f"no time left for the reasoned check ({max(remaining, 0.0) * 1000:.0f} ms)")
        reasoned_verdict, more, extra = await run_plan(reasoned, remaining)
        reasoned_verdict.harm(direction)  # the deciding field must be present
    except CsrError as exc:
        return verdict, completions, [], calls, replace(record, escalated=True, error=exc.kind)
    return reasoned_verdict, completions, more, calls + extra, replace(record, escalated=True)



__all__ = ["MIN_ESCALATION_BUDGET_S", "Escalation", "run", "should_escalate"]
