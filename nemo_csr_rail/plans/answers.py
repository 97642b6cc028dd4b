"""Reading a completion into a verdict with the plan that decoded it.

The engine picks the plan per request (the one-token plan where the replica supports it, else the grammar plan it
falls back to) and says which in ``Completion.decode_plan``; the reader follows it, so a check never interprets a
completion by the rules of another plan.
"""

from __future__ import annotations

from nemo_csr_rail.completion import Completion
from nemo_csr_rail.plans import grammar, one_token
from nemo_csr_rail.prompt import GuardPrompt
from nemo_csr_rail.verdict import Verdict


def read(gp: GuardPrompt, completion: Completion) -> Verdict:
    if completion.decode_plan == one_token.ONE_TOKEN:
        return one_token.read(gp, completion)
    return grammar.read(gp, completion)


__all__ = ["read"]
