"""Texts the guard model cannot take whole: the ``sample`` plan, a context excerpt, and scrubbing checked text out of
error messages.

``strategy: sample`` (an explicit opt-in; the default ``windows`` judges every character, see
:mod:`nemo_csr_rail.long_items`) checks at most ``max_windows`` windows: when they cover the whole text they tile it
with a 10% overlap; beyond that the head, the tail and evenly spaced middle samples are checked and the metadata
reports the fraction covered. Text in the parts not read is not judged.
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
    """``strategy: sample``: at most ``max_windows`` windows of ``text`` (:func:`sample_starts`)."""
    starts, coverage = sample_starts(len(text), window_chars, max_windows)
    return WindowPlan(tuple(text[s:s + window_chars] for s in starts), coverage)


def sample_starts(length: int, window_chars: int, max_windows: int) -> tuple[tuple[int, ...], float]:
    """Start offsets of at most ``max_windows`` windows over ``length`` characters, and the share they read: a
    tiling with a 10% overlap when that many windows cover the text, else the head, the tail and evenly spaced
    middle samples."""
    n = length
    if n <= window_chars:
        return (0,), 1.0
    overlap = window_chars // 10
    step = window_chars - overlap
    needed = 1 + math.ceil((n - window_chars) / step)
    if needed <= max_windows:
        return tuple(min(i * step, n - window_chars) for i in range(needed)), 1.0
    span = n - window_chars
    starts = sorted({round(i * span / (max_windows - 1)) for i in range(max_windows)})
    covered = 0
    end = 0
    for s in starts:
        covered += max(0, s + window_chars - max(s, end))
        end = s + window_chars
    return tuple(starts), round(covered / n, 4)


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
