"""Reading a layout C (topic-following) guard prompt back, the way the stand-in 'model' and the tests need it.

Written from the card's layout (``prompt-templates.md``), not from the plugin's renderer, so a renderer that
drifted from the card would not parse here.
"""

from __future__ import annotations

from dataclasses import dataclass

MARK = "You are a classifier for analyzing interactions between humans and LLMs. Given a system instruction that\n"
TAXONOMY = "\n   \nTaxonomy:\n"
HISTORY = "\n\nConversation history:\n"
CURRENT = "\n\nCurrent user message:\n"
TAIL = "\n\nUse the rules specified in the system instruction to determine whether the current user message"


@dataclass(frozen=True)
class TopicPrompt:
    instruction: str
    history: list[tuple[str, str]]  # (role, text) per history line, oldest first
    current: str
    think: bool
    history_block: str


def split_topic_prompt(text: str) -> TopicPrompt | None:
    """The parts of a layout C prompt, or None for another layout.

    History messages are single lines (no blank line inside), so the first ``Current user message`` header after
    the history header is the prompt's own; the current message may contain anything, so the tail is the last one.
    """
    if not text.startswith(MARK):
        return None
    tax = text.find(TAXONOMY)
    hist_end = text.find(CURRENT)
    if tax < 0 or hist_end < 0:
        return None
    hist_start = text.rfind(HISTORY, 0, hist_end)
    tail = text.rfind(TAIL)
    if hist_start < 0 or tail < hist_end:
        return None
    block = text[hist_start + len(HISTORY):hist_end]
    history: list[tuple[str, str]] = []
    if block != "None":
        for line in block.split("\n"):
            role, sep, said = line.partition(": ")
            history.append((role, said) if sep and role in ("user", "bot") else ("?", line))
    return TopicPrompt(text[tax + len(TAXONOMY):hist_start], history, text[hist_end + len(CURRENT):tail],
                       text.rstrip().endswith("/think"), block)


#: the stand-in 'model' for topic tests: the current message is off topic iff it names one of these (with
#: ``standin.verdict_responder(OFF_TOPIC_MARKERS)``); it never reads the history
OFF_TOPIC_MARKERS = ("evil", "bomb", "politic", "religio", "vote", "firewall", "ssn", "kill",
                     "stock", "invest", "competitor", "recipe")
