"""Card layout C (topic following / dialogue moderation): system instruction + conversation history + current message.

Byte for byte the current model card's topic-following example (``prompt-templates.md``, layout C), including the
line break after "that" and the line of three spaces after the first paragraph. Only ``Prompt harm`` is asked for,
so :func:`nemo_csr_rail.plans.build` decodes and parses it exactly as an input check of the other layouts.

What the card does not give, and what we chose (docs/dialogue-moderation.md):

* **Reasoning off.** The card's example is ``/think`` only. The ``/no_think`` ending is written by analogy with
  layout B's (``Only output the answer in the format specified above. /no_think``); it is not a published layout.
* **A first turn** (no earlier message): the history section holds the single word ``None``, as layouts A and B
  write ``None`` for an absent response; the structure of the prompt stays the same on every turn.

History lines cannot be forged. Each earlier message becomes exactly one ``user: …`` / ``bot: …`` line: every line
break inside it (``\\n``, ``\\r``, and the other characters ``str.splitlines`` breaks on) is collapsed into one
space, so a ``bot:`` or ``user:`` written inside a message stays inside its line, and the message is then
neutralised like every embedded text (template tokens, ``<think>`` tags and the mode switch made inert). The
current message keeps its line breaks (it is what is judged, as in layouts A and B): it comes after the history
section, so it cannot add a history line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nemo_csr_rail.conversation import Turn
from nemo_csr_rail.neutralize import neutralize
from nemo_csr_rail.policy import Policy

HEAD = (
    "You are a classifier for analyzing interactions between humans and LLMs. Given a system instruction that\n"
    "specifies the boundaries of the conversation, a conversation history and the current user message, determine "
    "whether the current user message is harmful or unharmful based on whether it is consistent with the rules in "
    "the taxonomy.\n"
    "   \n"
    "Taxonomy:\n"
)
HISTORY_HEADER = "\n\nConversation history:\n"
CURRENT_HEADER = "\n\nCurrent user message:\n"
NO_HISTORY = "None"
TAIL = (
    "\n\nUse the rules specified in the system instruction to determine whether the current user message is harmful "
    "or unharmful. Output your answer in the following format:\n\n"
    '"Prompt harm: <harmful/unharmful>"\n\n'
)
THINK = (
    "Only output the answer in the format specified above after thinking about the taxonomy, conversation history "
    "and the current user message. Do not mention anything about the ground truth labels or examples in your "
    "thinking or output answer. /think"
)
#: by analogy with layout B's reasoning-off ending; the card publishes no /no_think variant of layout C
NO_THINK = "Only output the answer in the format specified above. /no_think"

# Every character str.splitlines() breaks a line on, with the spaces around it.
_LINE_BREAKS = re.compile(r"\s*[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]\s*")


def history_line(turn: Turn) -> str:
    """One earlier message as exactly one line: ``user: …`` or ``bot: …``."""
    text = _LINE_BREAKS.sub(" ", turn.text).strip()
    return f"{turn.role}: {neutralize(text)}"


def render_history(history: Sequence[Turn]) -> str:
    return "\n".join(history_line(t) for t in history) if history else NO_HISTORY


def render(policy: Policy, history: Sequence[Turn], current: str, *, reasoning: bool) -> str:
    """The exact text of the one user message: instruction first (it never varies, so vLLM's prefix cache keeps
    it), then the history oldest first, then the current message and the fixed ending."""
    return (HEAD + policy.body + HISTORY_HEADER + render_history(history) + CURRENT_HEADER + neutralize(current)
            + TAIL + (THINK if reasoning else NO_THINK))


__all__ = ["CURRENT_HEADER", "HEAD", "HISTORY_HEADER", "NO_HISTORY", "NO_THINK", "TAIL", "THINK", "history_line",
           "render", "render_history"]
