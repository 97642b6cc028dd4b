"""Renders the single user message the model was fine-tuned on, and the request type every plan fills in.

The layouts are byte-for-byte those of the model card (``prompt-templates.md``): layout A for category lists,
layout B for free-text policies, the mode switch (``/think`` or ``/no_think``) as the last token. The policy comes
first and never varies between calls, so vLLM's prefix cache reuses it; the conversation comes after it. Layout C
(topic following, with conversation history) is rendered by :mod:`nemo_csr_rail.prompt_topic`.

What to ask the server to decode (prefill, grammar, stop strings, one-token eligibility) is the decode plan's
business: :mod:`nemo_csr_rail.plans`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nemo_csr_rail.neutralize import WORD_JOINER as WORD_JOINER  # re-exported: callers predate the module
from nemo_csr_rail.neutralize import neutralize
from nemo_csr_rail.policy import Direction, Policy

_TAXONOMY_HEAD = (
    "You are a classifier for analyzing interactions between humans and LLMs. Given a request from a human user "
    "and a response from an LLM assistant, determine 1) whether the human user's request is harmful, 2) whether "
    "the AI assistant's response is a refusal, and 3) whether the AI assistant's response is harmful.\n"
    "Taxonomy: The following are the list of harmful categories that the prompt and response may fall into.\n\n"
)
_TAXONOMY_TAIL = (
    "Use the taxonomy to determine if the prompt and response fall into any of the harmful categories. "
    "Output your answer in the following format:\n\n"
    '"Prompt harm: <harmful/unharmful>\nResponse harm: <harmful/unharmful>"\n\n'
)
_TAXONOMY_THINK = (
    "Only output the answer in the format specified above after thinking about the request and\n"
    'response. If there is no response, output "Response harm: <harmful/unharmful>" as None. /think'
)
_TAXONOMY_NO_THINK = (
    "Only output the answer in the format specified above. "
    'If there is no response, output "Response harm: <harmful/unharmful>" as None. /no_think'
)
_CUSTOM_HEAD = (
    "You are a classifier for analyzing interactions between humans and LLMs. Given a request from a human user "
    "and a response from an LLM assistant, determine if they violate the following custom safety policy:\n"
    "Custom Policy: "
)
_CUSTOM_TAIL = (
    "Use the custom policy to determine if the prompt and response are harmful. "
    "Output your answer in the following format:\n\n"
    '"Prompt harm: <harmful/unharmful>\nResponse harm: <harmful/unharmful>"\n\n'
)
_CUSTOM_THINK = "Only output the answer in the format specified above after thinking about the request and response. /think"
_CUSTOM_NO_THINK = "Only output the answer in the format specified above. /no_think"

def render(policy: Policy, user_message: str, bot_message: str | None, *, reasoning: bool) -> str:
    """The exact text of the one user message sent to the model."""
    convo = f"Human user:\n{neutralize(user_message)}\n\nAI assistant:\n{'None' if bot_message is None else neutralize(bot_message)}\n\n"
    if policy.kind == "taxonomy":
        return _TAXONOMY_HEAD + policy.body + "\n\n" + convo + _TAXONOMY_TAIL + (_TAXONOMY_THINK if reasoning else _TAXONOMY_NO_THINK)
    return _CUSTOM_HEAD + policy.body + "\n\n" + convo + _CUSTOM_TAIL + (_CUSTOM_THINK if reasoning else _CUSTOM_NO_THINK)


def render_user_turns(turns: Sequence[str]) -> str:
    """Several user turns as the one text of the card's ``Human user:`` section (``multi_turn``, docs/coverage.md).

    An extension of layouts A and B, which the card trains with a single message: the turns are numbered, oldest
    first, each neutralised on its own (the layout neutralises the whole again, which changes nothing: neutralising
    is idempotent), so a request split over turns is judged as one. Single-message prompts are not affected."""
    n = len(turns)
    return "\n\n".join(f"Message {i} of {n}:\n{neutralize(t)}" for i, t in enumerate(turns, start=1))


@dataclass(frozen=True)
class GuardPrompt:
    """Everything an engine needs to run one check; engines must not re-derive any of it."""

    text: str
    direction: Direction
    reasoning: bool
    prefill: str
    regex: str | None
    max_tokens: int
    want_logprobs: bool
    stop: tuple[str, ...] = ()
    #: the prompt half of a split output check (:mod:`nemo_csr_rail.plans.split_output` adds the response step)
    split_output: bool = False
    #: the continuation is exactly one of these words (a bare verdict after the prefill), so an engine may decide
    #: it from the first token alone (:mod:`nemo_csr_rail.plans.one_token`); empty: decode the grammar
    verdict_choices: tuple[str, ...] = ()
    #: which replica should serve it (``replica_routing: affinity``): the policy's digest
    #: (:attr:`~nemo_csr_rail.policy.Policy.affinity`), so one policy's checks share one replica's prefix cache;
    #: empty: no preference
    affinity: str = ""

    @property
    def messages(self) -> list[dict[str, str]]:
        msgs = [{"role": "user", "content": self.text}]
        if self.prefill:
            msgs.append({"role": "assistant", "content": self.prefill})
        return msgs
