"""Untrusted text made safe to embed in a guard prompt, whichever layout embeds it.

Every layout (A, B and the topic-following C) puts user and bot text inside one user message that the server
renders through the chat template and tokenizes with special tokens enabled. Text that spells a chat-structure
piece or the mode switch would then change the prompt's structure instead of being judged, so every embedded text
goes through :func:`neutralize` first. Its own module because every layout needs it and none owns it.
"""

from __future__ import annotations

import re

# Chat-structure pieces of Gemma 3: every control piece (<pad> <eos> <bos> <unk> <mask> <start_of_turn>
# <end_of_turn> <unusedN>) and the multimodal ones ([multimodal] <start_of_image> <end_of_image>
# <image_soft_token>). vLLM renders the template to text and tokenizes it with special tokens enabled, so these
# strings inside a message would become real turn boundaries. A word joiner after the opening '<' or '[' keeps the
# text readable to the model but makes it ordinary text to the tokenizer. The HTML-like pieces of the vocabulary
# (<table>, <b>, ...) are left alone: ordinary text to the model (docs/reliability.md). Proven against all 6,414
# control and user-defined pieces of the real vocabulary in tests/unit/test_real_tokenizer.py.
_SPECIAL = re.compile(
    r"<(?=/?(?:start_of_turn|end_of_turn|bos|eos|pad|unk|mask|start_of_image|end_of_image|image_soft_token"
    r"|unused\d+|think)>)"
    r"|\[(?=/?multimodal\])",
    re.IGNORECASE,
)
# The mode switch is the prompt's last token; the same switch inside untrusted text is made inert the same way.
_MODE = re.compile(r"/(?=(?:no_)?think)", re.IGNORECASE)
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
WORD_JOINER = "\u2060"


def neutralize(text: str) -> str:
    """Make untrusted text safe to embed: no chat-structure pieces, no ``<think>``/``</think>`` tags, no
    ``/think``/``/no_think`` switch, no lone surrogates (which break JSON/UTF-8). A word joiner (U+2060) after the
    ``<``, ``[`` or ``/`` keeps the text readable to the model while making it ordinary text to the tokenizer."""
    if "<" in text or "[" in text:
        text = _SPECIAL.sub(lambda m: m.group() + WORD_JOINER, text)
    if "/" in text:
        text = _MODE.sub("/" + WORD_JOINER, text)
    return _LONE_SURROGATE.sub("\ufffd", text)


__all__ = ["WORD_JOINER", "neutralize"]
