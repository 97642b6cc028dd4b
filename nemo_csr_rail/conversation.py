"""The conversation before the message being judged, as plain data, and how much of it a check may send.

Topic-following policies (card layout C) judge the current user message *in the light of* the conversation before
it. Every entry point (the plain client, the rails in Colang 1.0 and 2.x, ``eval``) turns whatever its caller
keeps into a sequence of :class:`Turn` first, so the prompt builder and the budget below never see NeMo events or
OpenAI message dicts. Nothing here imports NeMo Guardrails or any other part of the pipeline.

Budget. The history is context, the current message is what is judged: the history is cut oldest-first, first to
the policy's ``history_turns`` most recent messages, then to what fits ``long_input.max_chars`` together with the
current message, and the current message is never cut here (a current message too long on its own goes to the
``long_input`` plan without history). Blank messages carry no context and are not sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["user", "bot"]
#: OpenAI / NeMo ``messages`` roles → history roles; other roles (system, context, tool) are not conversation turns
_ROLES: Mapping[str, Role] = {"user": "user", "assistant": "bot", "bot": "bot"}
#: what a history line costs besides its text: "user: " / "bot: " and the line break
LINE_OVERHEAD = len("user: \n")


@dataclass(frozen=True)
class Turn:
    """One earlier message: who said it and what. ``bot`` is the assistant being moderated (the card's word)."""

    role: Role
    text: str

    def __post_init__(self) -> None:
        if self.role not in ("user", "bot"):
            raise ValueError(f"a turn's role is 'user' or 'bot', got {self.role!r}")
        if not isinstance(self.text, str):
            raise TypeError(f"a turn's text must be a string, got {type(self.text).__name__}")


def as_turns(history: Iterable[Turn | Mapping[str, Any]] | None) -> list[Turn]:
    """Turns from :class:`Turn` objects or OpenAI-style ``{"role", "content"}`` dicts (``assistant`` = bot).

    Messages of other roles (system, context, tool) are skipped: they are not what the user and bot said. A dict
    whose content is not text (e.g. a list of content parts) keeps only its text parts.
    """
    out: list[Turn] = []
    for item in history or ():
        if isinstance(item, Turn):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise TypeError(f"a history item is a Turn or a {{role, content}} mapping, got {type(item).__name__}")
        role = _ROLES.get(str(item.get("role", "")))
        if role is None:
            continue
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
        out.append(Turn(role, "" if content is None else str(content)))
    return out


@dataclass(frozen=True)
class HistoryPlan:
    """What a check sends: ``turns`` (oldest first) and how many earlier messages were left out."""

    turns: tuple[Turn, ...]
    dropped: int

    @property
    def sent(self) -> int:
        return len(self.turns)


def fit_history(history: Sequence[Turn], *, max_turns: int, max_chars: int | None, current: str) -> HistoryPlan:
    """The most recent non-blank messages, at most ``max_turns``, that fit ``max_chars`` with ``current``.

    ``dropped`` counts the non-blank messages not sent (by the turn limit or the budget); the current message is
    always kept whole, so when it alone exceeds ``max_chars`` no history is sent at all.
    """
    usable = [t for t in history if t.text.strip()]
    kept: list[Turn] = []
    room = None if max_chars is None else max_chars - len(current)
    for turn in reversed(usable[max(0, len(usable) - max_turns):]):
        cost = len(turn.text) + LINE_OVERHEAD
        if room is not None:
            if cost > room:
                break
            room -= cost
        kept.append(turn)
    kept.reverse()
    return HistoryPlan(tuple(kept), len(usable) - len(kept))


__all__ = ["LINE_OVERHEAD", "HistoryPlan", "Role", "Turn", "as_turns", "fit_history"]
