"""The grammar plan: the verdict decoded under a regular expression, with stop strings that end on its last token.

Reasoning on: one bounded ``<think>`` line and the verdict, so the output always parses and never rambles. Reasoning
off: the assistant turn is prefilled with ``Prompt harm:`` (``continue_final_message``) and only the verdict word is
decoded (one or two tokens on the real model). Every request carries ``stop`` strings that end it on the verdict's
last token (vLLM would otherwise spend one more decode step sampling ``<eos>``).

A request whose continuation is one bare verdict word (reasoning off, prefilled, structured) says so in
``verdict_choices``: an engine that can restricts the first token instead (:mod:`nemo_csr_rail.plans.one_token`),
and falls back to this plan where it cannot. Reading a grammar completion: strict parse, truncation reported as
such, and ``confidence`` from the logprobs at the deciding verdict word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from nemo_csr_rail.completion import Completion
from nemo_csr_rail.errors import VerdictParseError
from nemo_csr_rail.policy import SIDES, Direction
from nemo_csr_rail.prompt import GuardPrompt
from nemo_csr_rail.verdict import Verdict, parse

GRAMMAR = "grammar"
PREFILL = "Prompt harm:"
HARM = "(harmful|unharmful)"
VERDICT_CHOICES = (" harmful", " unharmful")  # what HARM allows after a prefill that ends in "harm:"
# One trace line of at most 600 characters: the bound makes the grammar itself close the trace in time (so even a
# model that would ramble ends with a verdict rather than a truncation). Its cost: xgrammar needs ~13 s to compile
# the bounded line against Gemma 3's 262k-piece vocabulary (0.05 s unbounded), and vLLM 0.32 answers HTTP 500 while
# a compile takes over VLLM_REGEX_COMPILATION_TIMEOUT_S (5 s); compiles are cached, so only the first reasoning-on
# request per direction after a server start is exposed. `serve` raises that timeout; docs/real-engine.md.
THINK_REGEX = r"<think>\n[^\n<]{1,600}\n</think>\n\n"
TARGET = {
    Direction.INPUT: f"Prompt harm: {HARM}",
    # The format line asks for "Response harm:"; the card's own example output writes "Response Harm:". Where the
    # model writes that line itself, the grammar accepts either spelling rather than force one on it.
    Direction.OUTPUT: f"Prompt harm: {HARM}\nResponse [hH]arm: {HARM}",
}
NO_THINK_MAX_TOKENS = 32
RESPONSE_PREFILL = "\nResponse harm:"
# Stop right after the verdict word: both answers end in "harmful". With reasoning on, the verdict line starts after a
# newline, which the one-line <think> body cannot contain, so the stop cannot fire inside the reasoning.
STOP_VALUE = ("harmful",)
STOP_LINE = {
    Direction.INPUT: ("\nPrompt harm: harmful", "\nPrompt harm: unharmful"),
    Direction.OUTPUT: ("\nResponse harm: harmful", "\nResponse harm: unharmful",
                       "\nResponse Harm: harmful", "\nResponse Harm: unharmful"),
}


def reasoning_request(text: str, direction: Direction, *, structured: bool, max_tokens: int,
                      affinity: str = "") -> GuardPrompt:
    """Reasoning on: the trace line and the verdict (both lines for an output check) under one grammar."""
    return GuardPrompt(text, direction, True, "", THINK_REGEX + TARGET[direction] if structured else None,
                       max_tokens, False, STOP_LINE[direction], affinity=affinity)


def prefilled_request(text: str, direction: Direction, *, structured: bool, logprobs: bool,
                      affinity: str = "") -> GuardPrompt:
    """Reasoning off, ``Prompt harm:`` prefilled: the input check decodes one bare verdict word (one-token eligible);
    the unsplit output check decodes the rest of both lines."""
    stop = STOP_VALUE if direction is Direction.INPUT else STOP_LINE[direction]
    bare = structured and direction is Direction.INPUT
    return GuardPrompt(text, direction, False, PREFILL, TARGET[direction][len(PREFILL):] if structured else None,
                       NO_THINK_MAX_TOKENS, logprobs, stop, verdict_choices=VERDICT_CHOICES if bare else (),
                       affinity=affinity)


def unprefilled_request(text: str, direction: Direction, *, structured: bool, logprobs: bool,
                        affinity: str = "") -> GuardPrompt:
    """Reasoning off without the prefill (``assistant_prefill: false``): the whole verdict line(s) decoded."""
    stop = STOP_VALUE if direction is Direction.INPUT else STOP_LINE[direction]
    return GuardPrompt(text, direction, False, "", TARGET[direction] if structured else None, NO_THINK_MAX_TOKENS,
                       logprobs, stop, affinity=affinity)


def warm_up_regexes() -> tuple[str, ...]:
    """The reasoning-on grammars, one per direction. These are the slow ones to compile (the bounded trace line:
    ~13 s against Gemma 3's real vocabulary on a small CPU, and vLLM answers HTTP 500 after
    ``VLLM_REGEX_COMPILATION_TIMEOUT_S``, 5 s by default); the reasoning-off ones are finite sets that compile in
    milliseconds. vLLM caches a compiled grammar by its text, and a compile that outlives the timeout still lands in
    the cache, so asking for each once — early, off the check's path — spares the checks that need it later."""
    return tuple(THINK_REGEX + TARGET[d] for d in SIDES)


def read(gp: GuardPrompt, completion: Completion) -> Verdict:
    """Completion → Verdict, with truncation reported as such rather than as a malformed answer."""
    try:
        verdict = parse(gp.prefill + completion.text, reasoning_content=completion.reasoning_content)
    except VerdictParseError as exc:
        if completion.finish_reason == "length":
            raise VerdictParseError(f"model output truncated at max_tokens={gp.max_tokens}: {exc.message}") from None
        raise
    if gp.want_logprobs and completion.logprobs:
        value_first = gp.prefill.lower().endswith("response harm:" if gp.direction is Direction.OUTPUT
                                                  else "prompt harm:")
        conf = confidence(completion.text, completion.logprobs, gp.direction, value_first=value_first)
        if conf is not None:
            verdict = replace(verdict, confidence=round(conf, 6))
    return verdict


def confidence(
    generated: str, entries: Sequence[dict[str, Any]] | None, direction: Direction, *, value_first: bool = False
) -> float | None:
    """P(harmful) at the token where the deciding verdict word starts, renormalised over the two answers.

    ``generated`` is the text the server returned (without prefill); ``entries`` are vLLM's
    ``choices[0].logprobs.content``. Tokens that could begin either answer (e.g. a bare space) are ignored.
    ``value_first``: the prefill ended with the deciding key, so the generated text starts with the value.
    """
    if not entries:
        return None
    key = "prompt harm:" if direction is Direction.INPUT else "response harm:"
    low = generated.lower()
    at = -1 if value_first else low.rfind(key)
    if at < 0:
        # With the assistant prefill the key is not part of the generated text; the value starts it.
        if direction is not Direction.INPUT and not value_first:
            return None
        start = 0
    else:
        start = at + len(key)
    while start < len(generated) and generated[start] == " ":
        start += 1
    pos = 0
    for entry in entries:
        token = entry.get("token") or ""
        if pos + len(token) > start:
            prefix = generated[pos:start]
            cand_h, cand_u = prefix + "harmful", prefix + "unharmful"
            p_h = p_u = 0.0
            for alt in entry.get("top_logprobs") or [{"token": token, "logprob": entry.get("logprob", 0.0)}]:
                t, lp = alt.get("token") or "", alt.get("logprob")
                if lp is None or not t:
                    continue
                is_h = cand_h.startswith(t) or t.startswith(cand_h)
                is_u = cand_u.startswith(t) or t.startswith(cand_u)
                if is_h and not is_u:
                    p_h += math.exp(lp)
                elif is_u and not is_h:
                    p_u += math.exp(lp)
            return p_h / (p_h + p_u) if p_h + p_u > 0 else None
        pos += len(token)
    return None


__all__ = ["GRAMMAR", "HARM", "NO_THINK_MAX_TOKENS", "PREFILL", "RESPONSE_PREFILL", "THINK_REGEX", "VERDICT_CHOICES",
           "confidence", "prefilled_request", "read", "reasoning_request", "unprefilled_request", "warm_up_regexes"]
