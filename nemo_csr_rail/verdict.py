"""Strict parsing of the model's answer into a typed verdict.

Never guess: an unterminated ``<think>``, a missing, unknown, duplicated or conflicting verdict line, or any stray
text is a :class:`VerdictParseError`, which the rail routes to ``on_error`` (block by default). Only text the model
generated is parsed — the prompt is never echoed into it — so verdict-looking text inside a user message cannot
reach the parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from nemo_csr_rail.errors import VerdictParseError
from nemo_csr_rail.policy import Direction

Harm = Literal["harmful", "unharmful"]
_LINE = re.compile(r"(prompt|response) harm\s*:\s*(\S+)", re.IGNORECASE)
_VALUES = {"harmful": "harmful", "unharmful": "unharmful", "none": None}


#: the keys of :meth:`Verdict.to_record`, for a record that has no verdict (a failed or skipped check)
RECORD_KEYS = ("prompt_harm", "response_harm", "reasoning", "confidence")


@dataclass(frozen=True)
class Verdict:
    """What the model decided. ``confidence`` is P(harmful) for the deciding field, from logprobs, if known."""

    prompt_harm: Harm | None
    response_harm: Harm | None
    reasoning: str | None = None
    confidence: float | None = None
    raw: str = field(default="", repr=False, compare=False)

    def harm(self, direction: Direction) -> Harm:
        """The verdict field ``direction`` is decided on (the agent directions: the side they are judged as)."""
        side = direction.judged_as
        value = self.prompt_harm if side is Direction.INPUT else self.response_harm
        if value is None:
            what = "prompt" if side is Direction.INPUT else "response"
            raise VerdictParseError(f"the model gave no {what} verdict")
        return value

    def is_harmful(self, direction: Direction, threshold: float | None = None) -> bool:
        harm = self.harm(direction)
        if threshold is not None and self.confidence is not None:
            return self.confidence >= threshold
        return harm == "harmful"

    def to_record(self) -> dict[str, Any]:
        """The JSON-safe fields (``raw``, the model's text, is not one): the keys of rail metadata, audit records,
        ``check --json`` and ``eval``'s ``rows.jsonl`` (:data:`RECORD_KEYS`; all null where no verdict exists)."""
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
