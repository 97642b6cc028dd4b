"""Renders the single user message the model was fine-tuned on, and what to ask the server to decode.

The layouts are byte-for-byte those of the model card (``prompt-templates.md``): layout A for category lists,
layout B for free-text policies, the mode switch (``/think`` or ``/no_think``) as the last token. The policy comes
first and never varies between calls, so vLLM's prefix cache reuses it; the conversation comes after it. Layout C
(topic following, with conversation history) is rendered by :mod:`nemo_csr_rail.prompt_topic` and decoded as an
input check.

Decoding plan. The rail needs one word from the model. With reasoning off we prefill the assistant turn with
``Prompt harm:`` (``continue_final_message``) and constrain the continuation to the verdict grammar, so the real
model decodes one or two tokens; with reasoning on we constrain the output to one bounded ``<think>`` line and the
verdict, so it always parses and never rambles. Every plan carries ``stop`` strings that end the request on the
verdict's last token (vLLM would otherwise spend one more decode step sampling ``<eos>``).

One-token floor. Where the continuation is one bare verdict word (reasoning off, prefilled, structured: the input
check and both halves of the split output check) the prompt says so (``verdict_choices``), and an engine that can
restrict the first token to the two verdicts' first tokens decides from that token alone: one generated token, no
decode step (:mod:`nemo_csr_rail.engines.token_floor`). The grammar and stop strings stay in the prompt for engines
and servers that cannot.

The output rail with reasoning off is split in two requests sent together (``split_output``): the prompt verdict as
above, and a *response step* whose prefill already contains the prompt verdict (``Prompt harm: X\nResponse harm:``),
so neither decodes the forced ``\nResponse harm:`` tokens. ``X`` is a guess (``unharmful``: the input rail let the
prompt through); the client keeps the response step only if the model's own prompt verdict equals the guess, else it
re-asks with the right one, so the decision is always the one the single full generation would give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nemo_csr_rail import prompt_topic
from nemo_csr_rail.neutralize import WORD_JOINER as WORD_JOINER  # re-exported: callers predate the module
from nemo_csr_rail.neutralize import neutralize
from nemo_csr_rail.options import DecodeOptions
from nemo_csr_rail.policy import Direction, Policy

if TYPE_CHECKING:
    from nemo_csr_rail.conversation import Turn

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

PREFILL = "Prompt harm:"
HARM = "(harmful|unharmful)"
VERDICT_CHOICES = (" harmful", " unharmful")  # what HARM allows after a prefill that ends in "harm:"
# One trace line of at most 600 characters: the bound makes the grammar itself close the trace in time (so even a
# model that would ramble ends with a verdict rather than a truncation). Its cost: xgrammar needs ~13 s to compile
# the bounded line against Gemma 3's 262k-piece vocabulary (0.05 s unbounded), and vLLM 0.32 answers HTTP 500 while
# a compile takes over VLLM_REGEX_COMPILATION_TIMEOUT_S (5 s); compiles are cached, so only the first reasoning-on
# request per direction after a server start is exposed. `serve` raises that timeout; docs/real-engine.md.
THINK_REGEX = r"<think>\n[^\n<]{1,600}\n</think>\n\n"
_TARGET = {
    Direction.INPUT: f"Prompt harm: {HARM}",
    # The format line asks for "Response harm:"; the card's own example output writes "Response Harm:". Where the
    # model writes that line itself, the grammar accepts either spelling rather than force one on it.
    Direction.OUTPUT: f"Prompt harm: {HARM}\nResponse [hH]arm: {HARM}",
}
NO_THINK_MAX_TOKENS = 32
RESPONSE_PREFILL = "\nResponse harm:"
# Stop right after the verdict word: both answers end in "harmful". With reasoning on, the verdict line starts after a
# newline, which the one-line <think> body cannot contain, so the stop cannot fire inside the reasoning.
_STOP_VALUE = ("harmful",)
_STOP_LINE = {
    Direction.INPUT: ("\nPrompt harm: harmful", "\nPrompt harm: unharmful"),
    Direction.OUTPUT: ("\nResponse harm: harmful", "\nResponse harm: unharmful",
                       "\nResponse Harm: harmful", "\nResponse Harm: unharmful"),
}

def render(policy: Policy, user_message: str, bot_message: str | None, *, reasoning: bool) -> str:
    """The exact text of the one user message sent to the model."""
    convo = f"Human user:\n{neutralize(user_message)}\n\nAI assistant:\n{'None' if bot_message is None else neutralize(bot_message)}\n\n"
    if policy.kind == "taxonomy":
        return _TAXONOMY_HEAD + policy.body + "\n\n" + convo + _TAXONOMY_TAIL + (_TAXONOMY_THINK if reasoning else _TAXONOMY_NO_THINK)
    return _CUSTOM_HEAD + policy.body + "\n\n" + convo + _CUSTOM_TAIL + (_CUSTOM_THINK if reasoning else _CUSTOM_NO_THINK)


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
    #: an output check whose prompt verdict is decoded alone; the client adds the response step (module doc)
    split_output: bool = False
    #: the continuation is exactly one of these words (a bare verdict after the prefill), so an engine may decide
    #: it from the first token alone (:mod:`nemo_csr_rail.engines.token_floor`); empty: decode the grammar
    verdict_choices: tuple[str, ...] = ()

    @property
    def messages(self) -> list[dict[str, str]]:
        msgs = [{"role": "user", "content": self.text}]
        if self.prefill:
            msgs.append({"role": "assistant", "content": self.prefill})
        return msgs


def build(
    policy: Policy,
    direction: Direction,
    user_message: str,
    bot_message: str | None,
    *,
    reasoning: bool | None = None,
    structured: bool = DecodeOptions.structured_output,
    prefill: bool = DecodeOptions.assistant_prefill,
    logprobs: bool = DecodeOptions.logprobs,
    reasoning_max_tokens: int = DecodeOptions.reasoning_max_tokens,
    split_output: bool = DecodeOptions.split_output,
    history: Sequence[Turn] = (),
) -> GuardPrompt:
    """The plan of one check. ``history`` (earlier messages, oldest first) is used by topic policies only: the
    other layouts have no place for it."""
    if direction is Direction.OUTPUT and bot_message is None:
        raise ValueError("an output check needs the bot message")
    think = policy.reasoning(direction) if reasoning is None else reasoning
    if policy.kind == "topic":
        if direction is not Direction.INPUT:
            raise ValueError(f"policy {policy.name!r} is a topic policy: it judges user messages only")
        text = prompt_topic.render(policy, history, user_message, reasoning=think)
    else:
        text = render(policy, user_message, bot_message, reasoning=think)
    target = _TARGET[direction]
    if think:
        return GuardPrompt(text, direction, True, "", THINK_REGEX + target if structured else None,
                           reasoning_max_tokens, False, _STOP_LINE[direction])
    if prefill:
        if direction is Direction.OUTPUT and split_output:
            # the prompt-verdict half of the split plan; response_step() gives the other half
            return GuardPrompt(text, direction, False, PREFILL, _TARGET[Direction.INPUT][len(PREFILL):] if structured
                               else None, NO_THINK_MAX_TOKENS, False, _STOP_VALUE, True,
                               VERDICT_CHOICES if structured else ())
        stop = _STOP_VALUE if direction is Direction.INPUT else _STOP_LINE[direction]
        bare = structured and direction is Direction.INPUT  # the unsplit output plan decodes two lines
        return GuardPrompt(text, direction, False, PREFILL, target[len(PREFILL):] if structured else None,
                           NO_THINK_MAX_TOKENS, logprobs, stop, verdict_choices=VERDICT_CHOICES if bare else ())
    stop = _STOP_VALUE if direction is Direction.INPUT else _STOP_LINE[direction]
    return GuardPrompt(text, direction, False, "", target if structured else None, NO_THINK_MAX_TOKENS, logprobs, stop)


def response_step(gp: GuardPrompt, prompt_harm: str, *, logprobs: bool = DecodeOptions.logprobs) -> GuardPrompt:
    """The response half of a split output check: the prompt verdict is prefilled, only the response one decoded."""
    if not gp.split_output:
        raise ValueError("response_step() needs the prompt half of a split output check")
    structured = gp.regex is not None
    return GuardPrompt(gp.text, Direction.OUTPUT, False, f"{PREFILL} {prompt_harm}{RESPONSE_PREFILL}",
                       f" {HARM}" if structured else None, NO_THINK_MAX_TOKENS, logprobs, _STOP_VALUE,
                       verdict_choices=VERDICT_CHOICES if structured else ())
