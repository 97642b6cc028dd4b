"""The split output plan: a reasoning-off output check as two requests sent together, neither decoding a forced token.

The single-request output check would decode ``Prompt harm: X\\nResponse harm: Y`` and pay for the forced
``\\nResponse harm:`` tokens. Here the *prompt half* decodes the prompt verdict after the ``Prompt harm:`` prefill,
and the *response step*, sent at the same time, has the prompt verdict already in its prefill
(``Prompt harm: X\\nResponse harm:``) and decodes only the response verdict. ``X`` is a guess (``unharmful``: the
input rail let the prompt through); the response step is kept only if the model's own prompt verdict equals the
guess, else it is asked again with the right prefill (its prefix is cached by then). So the decision is always the
one the single full generation would give. Both halves are bare verdict words, so each may be decided by the
one-token plan where the engine supports it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from nemo_csr_rail.completion import Completion, Engine
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.plans import grammar
from nemo_csr_rail.plans.answers import read
from nemo_csr_rail.policy import Direction
from nemo_csr_rail.prompt import GuardPrompt
from nemo_csr_rail.verdict import Verdict

#: the prompt verdict the response step assumes while the prompt half is still being decided
GUESS = "unharmful"


def prompt_half(text: str, *, structured: bool, affinity: str = "") -> GuardPrompt:
    """The prompt-verdict half: the input check's request, marked as an output check that :func:`run` completes."""
    return GuardPrompt(text, Direction.OUTPUT, False, grammar.PREFILL,
                       grammar.TARGET[Direction.INPUT][len(grammar.PREFILL):] if structured else None,
                       grammar.NO_THINK_MAX_TOKENS, False, grammar.STOP_VALUE, True,
                       grammar.VERDICT_CHOICES if structured else (), affinity=affinity)


def response_step(gp: GuardPrompt, prompt_harm: str, *, logprobs: bool = DecodeOptions.logprobs) -> GuardPrompt:
    """The response half: the prompt verdict is prefilled, only the response one decoded."""
    if not gp.split_output:
        raise ValueError("response_step() needs the prompt half of a split output check")
    structured = gp.regex is not None
    return GuardPrompt(gp.text, Direction.OUTPUT, False, f"{grammar.PREFILL} {prompt_harm}{grammar.RESPONSE_PREFILL}",
                       f" {grammar.HARM}" if structured else None, grammar.NO_THINK_MAX_TOKENS, logprobs,
                       grammar.STOP_VALUE, verdict_choices=grammar.VERDICT_CHOICES if structured else (),
                       affinity=gp.affinity)


async def run(engine: Engine, gp: GuardPrompt, budget: float, *,
              logprobs: bool) -> tuple[Verdict, list[Completion], int]:
    """Both halves in parallel; the verdict, the completions used and the number of requests sent (2, or 3 after a
    wrong guess: the cancelled guess is not among the completions)."""
    deadline = time.monotonic() + budget

    async def complete_in_time(request: GuardPrompt) -> Completion:
        # A task starts a loop pass after it is created (later under load): its budget is what is left by then.
        return await engine.complete(request, timeout_s=max(0.001, deadline - time.monotonic()))

    first = asyncio.ensure_future(complete_in_time(gp))
    step = response_step(gp, GUESS, logprobs=logprobs)
    second = asyncio.ensure_future(complete_in_time(step))
    try:
        head = await first
        prompt_harm = read(gp, head).harm(Direction.INPUT)
        if prompt_harm != GUESS:
            second.cancel()
            step = response_step(gp, prompt_harm, logprobs=logprobs)
            second = asyncio.ensure_future(complete_in_time(step))
        tail = await second
    except BaseException:
        for t in (first, second):
            t.cancel()
        raise
    response = read(step, tail)
    raw = gp.prefill + head.text + grammar.RESPONSE_PREFILL + tail.text
    return replace(response, prompt_harm=prompt_harm, raw=raw), [head, tail], 2 if prompt_harm == GUESS else 3


__all__ = ["GUESS", "prompt_half", "response_step", "run"]
