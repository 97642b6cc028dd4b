"""Decode plans: how one check is asked of the model, and how the answers are read back.

A plan owns both ends of its requests, so a reader finds each in one module:

* :mod:`~nemo_csr_rail.plans.grammar` — the verdict decoded under a regular expression (reasoning on: one bounded
  ``<think>`` line first); the fallback of every other plan.
* :mod:`~nemo_csr_rail.plans.one_token` — a bare-verdict request decided by one generated token restricted to the
  two verdicts' first tokens, where the server supports it.
* :mod:`~nemo_csr_rail.plans.split_output` — a reasoning-off output check as two parallel one-word requests.

:func:`build` picks the plan for a check from the policy, the direction and the decode options; engines only carry
the requests (:mod:`nemo_csr_rail.engines`); :func:`read` reads a completion with the plan that decoded it.
"""

from __future__ import annotations

from collections.abc import Sequence

from nemo_csr_rail import prompt_topic
from nemo_csr_rail.conversation import Turn
from nemo_csr_rail.directions import TOPIC_ONLY
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.plans import grammar
from nemo_csr_rail.plans import split_output as split_plan
from nemo_csr_rail.plans.answers import read
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.prompt import GuardPrompt, render

DEFAULTS = DecodeOptions()


def build(
    policy: Policy,
    direction: Direction,
    user_message: str,
    bot_message: str | None,
    *,
    reasoning: bool | None = None,
    decode: DecodeOptions = DEFAULTS,
    history: Sequence[Turn] = (),
) -> GuardPrompt:
    """The first request of one check, as ``decode`` says. ``history`` (earlier messages, oldest first) is used by
    topic policies only: the other layouts have no place for it. An agent direction (tool call, tool result,
    retrieved chunk) is decoded as the side it is judged as, with its own reasoning mode (docs/agents.md)."""
    think = policy.reasoning(direction) if reasoning is None else reasoning
    if policy.kind == "topic" and direction is not Direction.INPUT:
        raise ValueError(f"policy {policy.name!r} {TOPIC_ONLY}")
    direction = direction.judged_as
    if direction is Direction.OUTPUT and bot_message is None:
        raise ValueError("an output check needs the bot message")
    if policy.kind == "topic":
        if direction is not Direction.INPUT:
            raise ValueError(f"policy {policy.name!r} {TOPIC_ONLY}")
        text = prompt_topic.render(policy, history, user_message, reasoning=think)
    else:
        text = render(policy, user_message, bot_message, reasoning=think)
    structured, logprobs = decode.structured_output, decode.logprobs
    affinity = policy.affinity  # every request of a check goes where its policy is cached
    if think:
        return grammar.reasoning_request(text, direction, structured=structured,
                                         max_tokens=decode.reasoning_max_tokens, affinity=affinity)
    if decode.assistant_prefill and direction is Direction.OUTPUT and decode.split_output:
        return split_plan.prompt_half(text, structured=structured, affinity=affinity)
    if decode.assistant_prefill:
        return grammar.prefilled_request(text, direction, structured=structured, logprobs=logprobs, affinity=affinity)
    return grammar.unprefilled_request(text, direction, structured=structured, logprobs=logprobs, affinity=affinity)


__all__ = ["build", "read"]
