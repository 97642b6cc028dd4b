"""Texts the guard model cannot take whole: the ``windows`` plan, and scrubbing checked text out of messages.

A conversation longer than ``long_input.max_chars`` (or one the server rejects for its context length) is either
refused (``strategy: refuse``) or checked as overlapping windows (``strategy: windows``). When ``max_windows``
windows cover the whole text they tile it with a 10% overlap, so a phrase cut at a boundary is whole in one
window; beyond that the head, the tail and evenly spaced middle samples are checked and the metadata reports the
fraction covered. Any harmful window blocks the whole message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

ELLIPSIS = "\n[…]\n"


@dataclass(frozen=True)
class WindowPlan:
    windows: tuple[str, ...]
    coverage: float


def plan_windows(text: str, window_chars: int, max_windows: int) -> WindowPlan:
    n = len(text)
    if n <= window_chars:
        return WindowPlan((text,), 1.0)
    overlap = window_chars // 10
    step = window_chars - overlap
    needed = 1 + math.ceil((n - window_chars) / step)
    if needed <= max_windows:
        starts = [min(i * step, n - window_chars) for i in range(needed)]
        coverage = 1.0
    else:
        span = n - window_chars
        starts = sorted({round(i * span / (max_windows - 1)) for i in range(max_windows)})
        covered = 0
        end = 0
        for s in starts:
            covered += max(0, s + window_chars - max(s, end))
            end = s + window_chars
        coverage = covered / n
    return WindowPlan(tuple(text[s:s + window_chars] for s in starts), round(coverage, 4))


def excerpt(text: str, max_chars: int) -> str:
    """Head and tail of a context text (the user turn of an output check), marked as cut."""
    if len(text) <= max_chars:
        return text
    half = max(1, (max_chars - len(ELLIPSIS)) // 2)
    return text[:half] + ELLIPSIS + text[-half:]


def scrub(message: str, *texts: str | None) -> str:
    """Remove checked text that a server echoed into an error message (some 400s quote the input)."""
    for text in texts:
        if not text:
            continue
        t = text.strip()
        if len(t) < 12:
            continue
        # Servers quote input raw, JSON-escaped or as a Python repr (newlines as \n, non-ASCII as \uXXXX).
        forms = {t, json.dumps(t)[1:-1], json.dumps(t, ensure_ascii=False)[1:-1], repr(t)[1:-1]}
        probes = {p for f in forms for p in ((f[:40], f[-40:]) if len(f) > 40 else (f,))}
        if any(p in message for p in probes):
            return "[error message withheld: it quoted the checked text; log_user_text shows it at DEBUG]"
    return message
