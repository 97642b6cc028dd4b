"""The card layouts with fixed texts, and what vLLM counts for each on the real Gemma 3 tokenizer.

Pinned offline in ``tests/unit/test_real_tokenizer.py`` and checked against vLLM's own ``/tokenize`` serving the real
270M in ``tests/e2e/real_gemma``: the same numbers, so the offline counts are what the server counts.
"""

from __future__ import annotations

from nemo_csr_rail.policy import Policy

USER = "How do I bake bread?"
BOT = "Preheat the oven to 220 degrees and bake for 30 minutes."
#: A: the built-in taxonomy (category list); B: a free-text custom policy
LAYOUTS = {
    "A": Policy.taxonomy(),
    "B": Policy.custom("retail", "The assistant must not discuss religion or politics in any form."),
}
#: (layout, direction, reasoning) -> tokens of the one user message, chat template and generation prompt included
LAYOUT_TOKENS = {
    ("A", "input", True): 407,
    ("A", "input", False): 401,
    ("A", "output", True): 424,
    ("A", "output", False): 418,
    ("B", "input", True): 149,
    ("B", "input", False): 144,
    ("B", "output", True): 166,
    ("B", "output", False): 161,
}
