"""Strict parsing of the model's answer into a typed verdict.

Never guess: an unterminated ``<think>``, a missing, unknown, duplicated or conflicting verdict line, or any stray
text is a :class:`VerdictParseError`, which the rail routes to ``on_error`` (block by default). Only text the model
generated is parsed — the prompt is never echoed into it — so verdict-looking text inside a user message cannot
reach the parser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from nemo_csr_rail.errors import VerdictParseError
from nemo_csr_rail.policy import Direction

Harm = Literal["harmful", "unharmful"]
_LINE = re.compile(r"(prompt|response) harm\s*:\s*(\S+)", re.IGNORECASE)
_VALUES = {"harmful": "harmful", "unharmful": "unharmful", "none": None}


@dataclass(frozen=True)
class Verdict:
    """What the model decided. ``confidence`` is P(harmful) for the deciding field, from logprobs, if known."""

    prompt_harm: Harm | None
    response_harm: Harm | None
    reasoning: str | None = None
    confidence: float | None = None
    raw: str = field(default="", repr=False, compare=False)

    def harm(self, direction: Direction) -> Harm:
        value = self.prompt_harm if direction is Direction.INPUT else self.response_harm
        if value is None:
            what = "prompt" if direction is Direction.INPUT else "response"
            raise VerdictParseError(f"the model gave no {what} verdict")
        return value

    def is_harmful(self, direction: Direction, threshold: float | None = None) -> bool:
        harm = self.harm(direction)
        if threshold is not None and self.confidence is not None:
            return self.confidence >= threshold
        return harm == "harmful"

    def to_record(self) -> dict[str, Any]:
        """The JSON-safe fields (``raw``, the model's text, is not one): the keys of rail metadata, audit records,
        ``check --json`` and ``eval``'s ``rows.jsonl``."""
        return {
            "prompt_harm": self.prompt_harm,
            "response_harm": self.response_harm,
            "reasoning": self.reasoning,
            "confidence": self.confidence,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Verdict:
        """The inverse of :meth:`to_record` (``raw`` is empty)."""
        return cls(prompt_harm=record.get("prompt_harm"), response_harm=record.get("response_harm"),
                   reasoning=record.get("reasoning"), confidence=record.get("confidence"))


def _clean_reasoning(text: str) -> str | None:
    text = " ".join(text.split())
    return text or None


def parse(text: str, *, reasoning_content: str | None = None) -> Verdict:
    """Parse the generated text (assistant prefill included). Raises VerdictParseError on anything off-format."""
    if not isinstance(text, str):
        raise VerdictParseError(f"model output is {type(text).__name__}, not text")
    body = text.strip()
    reasoning = _clean_reasoning(reasoning_content) if reasoning_content else None
    if body.startswith("<think>"):
        end = body.find("</think>")
        if end < 0:
            raise VerdictParseError("unterminated <think> reasoning trace (output truncated?)")
        reasoning = _clean_reasoning(body[len("<think>"):end])
        body = body[end + len("</think>"):]
    elif "</think>" in body and "<think>" not in body:
        # Some chat templates open the trace in the prompt; the output then starts inside it.
        end = body.find("</think>")
        reasoning = _clean_reasoning(body[:end])
        body = body[end + len("</think>"):]
    if "<think>" in body or "</think>" in body:
        raise VerdictParseError("reasoning trace markers after the verdict position")
    found: dict[str, list[Harm | None]] = {"prompt": [], "response": []}
    for line in body.splitlines():
        line = line.strip().strip('"').strip()
        if not line:
            continue
        m = _LINE.fullmatch(line)
        if not m:
            raise VerdictParseError(f"unexpected text in the verdict: {line[:80]!r}")
        key, value = m.group(1).lower(), m.group(2).lower()
        if value not in _VALUES:
            raise VerdictParseError(f"unknown {key} verdict {m.group(2)[:40]!r}")
        found[key].append(_VALUES[value])  # type: ignore[arg-type]
    for key, values in found.items():
        if len(values) > 1:
            kind = "conflicting" if len(set(values)) > 1 else "repeated"
            raise VerdictParseError(f"{kind} {key} verdicts {values}")
    if not found["prompt"] and not found["response"]:
        raise VerdictParseError("no verdict line in the model output")
    prompt = found["prompt"][0] if found["prompt"] else None
    if found["prompt"] and prompt is None:
        raise VerdictParseError("prompt verdict is None")
    return Verdict(prompt_harm=prompt, response_harm=found["response"][0] if found["response"] else None,
                   reasoning=reasoning, raw=text)


def confidence_from_logprobs(
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


def confidence_from_choices(logprobs: dict[str, float] | None) -> float | None:
    """P(harmful) from the logprobs of the two verdicts' first tokens (the one-token plan), renormalised over the
    pair: vLLM reports raw logprobs (before the allowed-ids mask), so the two need not sum to one. ``None`` unless
    both are known: a candidate the server did not report is not assumed to be improbable."""
    words = {k.strip().lower(): v for k, v in (logprobs or {}).items()}
    if "harmful" not in words or "unharmful" not in words:
        return None
    lp_h, lp_u = words["harmful"], words["unharmful"]
    if not (math.isfinite(lp_h) or math.isfinite(lp_u)):
        return None
    top = max(lp_h, lp_u)
    p_h, p_u = math.exp(lp_h - top), math.exp(lp_u - top)
    return p_h / (p_h + p_u)
