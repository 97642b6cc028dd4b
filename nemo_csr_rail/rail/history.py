"""The conversation before the current user message, read from NeMo Guardrails' event list (the adapter side).

Both Colang runtimes pass a rail action its ``events`` when the action declares the parameter. Conversation turns
are in them as plain dicts, whichever entry point fed the conversation in:

* Colang 1.0: ``generate``/``generate_async(messages=[…])``, ``nemoguardrails server`` (``/v1/chat/completions``,
  ``/v1/checks``) and ``RunnableRails`` turn every user message into ``UtteranceUserActionFinished``
  (``final_transcript``) and every assistant message into ``StartUtteranceBotAction`` (``script``); the current
  user message is the last user event, since the bot has not answered it yet.
* Colang 2.x: only when the application carries the ``State`` between calls (``process_events_async``); there each
  bot utterance appears twice with the same ``action_uid``, so bot events are de-duplicated by it. NeMo Guardrails
  0.24 refuses assistant messages in ``messages`` for Colang 2.x, and its server refuses ``thread_id``, so on those
  paths a 2.x rail sees the current turn only (docs/dialogue-moderation.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nemo_csr_rail.conversation import Turn

USER_EVENT = "UtteranceUserActionFinished"
BOT_EVENT = "StartUtteranceBotAction"


def history_from_events(events: Iterable[Any] | None) -> list[Turn]:
    """Earlier user and bot messages, oldest first, without the current user message."""
    turns: list[Turn] = []
    seen_bot: set[str] = set()
    for event in events or ():
        if not isinstance(event, Mapping):
            continue
        kind = event.get("type")
        if kind == USER_EVENT:
            turns.append(Turn("user", _text(event.get("final_transcript"))))
        elif kind == BOT_EVENT:
            uid = event.get("action_uid")
            if uid is not None:
                if uid in seen_bot:
                    continue
                seen_bot.add(uid)
            turns.append(Turn("bot", _text(event.get("script"))))
    if turns and turns[-1].role == "user":
        turns.pop()  # the message being judged: it has no answer yet, so it is the last user event
    return turns


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


__all__ = ["BOT_EVENT", "USER_EVENT", "history_from_events"]
