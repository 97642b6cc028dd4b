"""The shipped topic-following examples guard a whole conversation (models pointed at local stand-ins).

``tests/tooling/test_example_configs.py`` runs every example through one generic turn each; here the two topic examples
get a multi-turn conversation: the history reaches the guard, an off-topic turn is refused, and the conversation
goes on afterwards with that turn and its refusal in the history.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.colang2_chat import V2Chat
from tests.support.e2e_helpers import rails_for
from tests.support.rails_configs import V2_MAIN_FLOW, retarget
from tests.support.standin import HARMFUL_MARKERS, StandIn, verdict_responder
from tests.support.topic_prompt import OFF_TOPIC_MARKERS, split_topic_prompt

EXAMPLES = Path(__file__).resolve().parents[2] / "example_configs"
HELLO = "Hello! How can I help you today?"
# the scripted guard: off topic iff the current message names one of these (it never reads the history)
OFF_TOPIC = OFF_TOPIC_MARKERS
assert set(HARMFUL_MARKERS) <= set(OFF_TOPIC)  # the harm markers the generic example test relies on still block


@pytest.fixture
def topic_guard():
    with StandIn(responder=verdict_responder(OFF_TOPIC)) as server:
        yield server


def topic_texts(guard: StandIn) -> list:
    return [p for p in (split_topic_prompt(r["messages"][0]["content"]) for r in guard.chat_requests()) if p]


async def test_support_bot_conversation(tmp_path, topic_guard, main_llm):
    rails = rails_for(retarget(EXAMPLES / "support_bot", tmp_path / "sb", guard_url=topic_guard.url,
                               main_url=main_llm.url))
    messages: list[dict[str, str]] = []

    async def turn(text: str) -> str:
        messages.append({"role": "user", "content": text})
        res = await rails.generate_async(messages=list(messages))
        messages.append({"role": "assistant", "content": res["content"]})
        return res["content"]

    assert await turn("Hi, my printer won't connect to Wi-Fi") == HELLO
    assert await turn("It's an HP LaserJet Pro M404n") == HELLO
    refusal = await turn("Thanks for the help! By the way, what stocks should I invest in right now?")
    assert refusal.startswith("I can only help with technical support questions.") and "stock" not in refusal
    assert await turn("OK. And how do I update its driver?") == HELLO

    judged = topic_texts(topic_guard)
    assert [p.current for p in judged] == [m["content"] for m in messages if m["role"] == "user"]
    assert judged[0].history == [] and judged[1].history == [("user", messages[0]["content"]), ("bot", HELLO)]
    last = judged[-1]
    assert len(last.history) == 6, "history_turns: 6 in the example"
    assert last.history[-2:] == [("user", messages[4]["content"]), ("bot", refusal)]
    assert all(p.think for p in judged), "reasoning on, the default for topic policies"
    assert "TechSupport Inc." in last.instruction and not last.instruction.endswith("\n")


async def test_in_car_topic_conversation_colang2(tmp_path, topic_guard, main_llm):
    cfg = retarget(EXAMPLES / "in_car_topic", tmp_path / "car", guard_url=topic_guard.url, main_url=main_llm.url)
    main_co = cfg / "main.co"  # keep the example's rails flows, script the dialog so no real LLM is needed
    main_co.write_text(V2_MAIN_FLOW + "\n" + re.sub(r"(?m)^import [^\n]*\n|^flow main\n(  [^\n]*\n)*", "",
                                                    main_co.read_text()))
    chat = V2Chat(rails_for(cfg))
    assert await chat.say("Navigate to the nearest charging station") == HELLO
    assert await chat.say("And the other one?") == HELLO
    refusal = await chat.say("Is this car better than the competitor's model?")
    assert refusal.startswith("I can only help with navigation, media and comfort settings.")
    assert await chat.say("Play some jazz") == HELLO

    judged = [p for p in topic_texts(topic_guard) if "voice assistant built into a car" in p.instruction]
    assert [p.current for p in judged] == ["Navigate to the nearest charging station", "And the other one?",
                                           "Is this car better than the competitor's model?", "Play some jazz"]
    assert judged[1].history == [("user", "Navigate to the nearest charging station"), ("bot", HELLO)]
    assert judged[-1].history == [("user", "And the other one?"), ("bot", HELLO),
                                  ("user", "Is this car better than the competitor's model?"), ("bot", refusal)]
