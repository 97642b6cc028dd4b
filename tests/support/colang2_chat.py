"""A Colang 2.x application that keeps the conversation ``State`` between turns, as ``nemoguardrails chat`` does.

This is the only way NeMo Guardrails 0.24 lets a 2.x rail see earlier turns: ``generate_async`` refuses assistant
messages and rejects a dict state for 2.x, and the server refuses ``thread_id``.
"""

from __future__ import annotations

from typing import Any


class V2Chat:
    def __init__(self, rails: Any) -> None:
        self.rails, self.state, self.pending = rails, None, []

    async def say(self, text: str) -> str:
        """One user turn; returns what the bot said (its utterances joined)."""
        from nemoguardrails.utils import new_event_dict, new_uuid

        events = [*self.pending, new_event_dict("UtteranceUserActionFinished", final_transcript=text,
                                                action_uid=new_uuid(), is_success=True)]
        out, self.state = await self.rails.process_events_async(events, self.state)
        said = [e for e in out if e["type"] == "StartUtteranceBotAction"]
        # the application reports each utterance as finished, with the next user turn
        self.pending = [new_event_dict("UtteranceBotActionFinished", action_uid=e["action_uid"], is_success=True,
                                       final_script=e["script"]) for e in said]
        return " ".join(e["script"] for e in said)
