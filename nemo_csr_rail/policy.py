"""Named policies, compiled once from settings into what the prompt builder needs.

Everything that does not depend on the conversation (category numbering, policy text, per-direction reasoning
and refusal templates) is computed here at load time, so the per-check path only concatenates strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from nemo_csr_rail.settings import (
    DEFAULT_HISTORY_TURNS,
    DEFAULT_INPUT_REFUSAL,
    DEFAULT_OUTPUT_REFUSAL,
    DEFAULT_TOOL_CALL_REFUSAL,
    DEFAULT_TOOL_RESULT_REFUSAL,
    CategorySpec,
    PluginSettings,
    PolicySettings,
)
from nemo_csr_rail.taxonomy import TAXONOMIES


class Direction(str, Enum):
    """What is checked: the user's prompt (input rail), the bot's answer (output rail), or, for agents, a tool call
    the model wants to make (tool output rail), a tool's result (tool input rail) or a retrieved chunk (retrieval
    rail). The model card knows two: prompt and response; :attr:`judged_as` says which of them each is judged as
    (docs/agents.md)."""

    INPUT = "input"
    OUTPUT = "output"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    RETRIEVAL = "retrieval"

    @property
    def judged_as(self) -> Direction:
        """The card's side this direction is judged on: a tool call is the assistant's response (Response harm);
        a tool result and a retrieved chunk are content entering the conversation (Prompt harm)."""
        return Direction.OUTPUT if self in (Direction.OUTPUT, Direction.TOOL_CALL) else Direction.INPUT


PolicyKind = Literal["taxonomy", "custom", "topic"]


@dataclass(frozen=True)
class Policy:
    """A policy ready to be rendered. ``body`` is the taxonomy block (layout A), the policy text (layout B) or the
    topic-following system instruction (layout C, with ``history_turns`` earlier messages)."""

    name: str
    kind: PolicyKind
    body: str
    reasoning_input: bool
    reasoning_output: bool
    refusal_input: str = DEFAULT_INPUT_REFUSAL
    refusal_output: str = DEFAULT_OUTPUT_REFUSAL
    on_error: Literal["block", "allow"] = "block"
    threshold: float | None = None
    model_type: str = "nemotron_csr"
    history_turns: int = 0
    #: the agent directions; None follows the side each is judged as (tool call: output; the others: input)
    reasoning_tool_call: bool | None = None
    reasoning_tool_result: bool | None = None
    reasoning_retrieval: bool | None = None
    refusal_tool_call: str = DEFAULT_TOOL_CALL_REFUSAL
    refusal_tool_result: str = DEFAULT_TOOL_RESULT_REFUSAL

    def reasoning(self, direction: Direction) -> bool:
        own = {Direction.TOOL_CALL: self.reasoning_tool_call, Direction.TOOL_RESULT: self.reasoning_tool_result,
               Direction.RETRIEVAL: self.reasoning_retrieval}.get(direction)
        if own is not None:
            return own
        return self.reasoning_input if direction.judged_as is Direction.INPUT else self.reasoning_output

    def refusal(self, direction: Direction) -> str:
        if direction is Direction.TOOL_CALL:
            return self.refusal_tool_call
        if direction is Direction.TOOL_RESULT:
            return self.refusal_tool_result
        return self.refusal_input if direction.judged_as is Direction.INPUT else self.refusal_output

    @classmethod
    def custom(cls, name: str, text: str, *, reasoning: bool = True, **kw: object) -> Policy:
        """A free-text policy (card layout B), for the plain Python API."""
        return cls(name=name, kind="custom", body=text.strip(), reasoning_input=reasoning,
                   reasoning_output=reasoning, **kw)  # type: ignore[arg-type]

    @classmethod
    def topic(cls, name: str, instruction: str, *, history_turns: int = DEFAULT_HISTORY_TURNS, reasoning: bool = True,
              **kw: object) -> Policy:
        """A topic-following policy (card layout C): judge the user's message against the system instruction that
        bounds the conversation, with the last ``history_turns`` messages as context. For the plain Python API."""
        if history_turns < 0:
            raise ValueError("history_turns must be >= 0")
        return cls(name=name, kind="topic", body=instruction.rstrip(), reasoning_input=reasoning,
                   reasoning_output=reasoning, history_turns=history_turns, **kw)  # type: ignore[arg-type]

    @classmethod
    def taxonomy(cls, name: str = "safety", categories: list[str] | None = None, *, reasoning: bool = False,
                 **kw: object) -> Policy:
        """A category-list policy (card layout A); the built-in S1–S22 list unless ``categories`` is given."""
        body = render_categories(list(categories) if categories else list(TAXONOMIES["nemotron_v2"]))
        return cls(name=name, kind="taxonomy", body=body, reasoning_input=reasoning,
                   reasoning_output=reasoning, **kw)  # type: ignore[arg-type]


def _category_lines(index: int, cat: str | CategorySpec) -> str:
    spec = cat if isinstance(cat, CategorySpec) else CategorySpec(name=cat)
    name = spec.name.strip()
    line = f"S{index}: {name}" + ("" if name.endswith(".") else ".")
    if spec.description:
        line += "\n" + spec.description.strip()
    return line


def render_categories(categories: list[str | CategorySpec]) -> str:
    """The ``S1: Violence.`` block exactly as the card writes it; extra categories continue the numbering."""
    return "\n".join(_category_lines(i, c) for i, c in enumerate(categories, start=1))


def compile_policy(name: str, spec: PolicySettings, plugin: PluginSettings) -> Policy:
    history_turns = 0
    if spec.policy is not None:
        kind: PolicyKind = "custom"
        body = spec.policy.strip()
    elif spec.topic is not None:
        kind = "topic"
        body = spec.topic.rstrip()  # layout C: the instruction as written, trailing whitespace stripped
        history_turns = DEFAULT_HISTORY_TURNS if spec.history_turns is None else spec.history_turns
    else:
        kind = "taxonomy"
        base: list[str | CategorySpec] = (
            list(spec.categories) if spec.categories is not None else list(TAXONOMIES[spec.taxonomy or "nemotron_v2"])
        )
        base += list(spec.extra_categories or [])
        body = render_categories(base)
    # The card: reasoning helps custom policies, not the generic taxonomy; its topic-following example is /think.
    default_reasoning = kind in ("custom", "topic")
    agent: dict[str, bool | None] = {"tool_call": None, "tool_result": None, "retrieval": None}
    if isinstance(spec.reasoning, bool) or spec.reasoning is None:
        r_in = r_out = default_reasoning if spec.reasoning is None else spec.reasoning
    else:
        r_in = default_reasoning if spec.reasoning.input is None else spec.reasoning.input
        r_out = default_reasoning if spec.reasoning.output is None else spec.reasoning.output
        # unset agent directions follow the side they are judged as (Policy.reasoning): a tool call the output's
        # mode, a tool result and a retrieved chunk the input's
        agent = {k: getattr(spec.reasoning, k) for k in agent}
    refusal = spec.refusal or plugin.refusal
    return Policy(
        name=name,
        kind=kind,
        body=body,
        reasoning_input=r_in,
        reasoning_output=r_out,
        refusal_input=refusal or DEFAULT_INPUT_REFUSAL,
        refusal_output=refusal or DEFAULT_OUTPUT_REFUSAL,
        on_error=spec.on_error or plugin.on_error,
        threshold=spec.threshold,
        model_type=spec.model or plugin.model,
        history_turns=history_turns,
        reasoning_tool_call=agent["tool_call"],
        reasoning_tool_result=agent["tool_result"],
        reasoning_retrieval=agent["retrieval"],
        refusal_tool_call=refusal or DEFAULT_TOOL_CALL_REFUSAL,
        refusal_tool_result=refusal or DEFAULT_TOOL_RESULT_REFUSAL,
    )


def compile_policies(plugin: PluginSettings) -> dict[str, Policy]:
    return {name: compile_policy(name, spec, plugin) for name, spec in plugin.policies.items()}


def implicit_policy(names: Iterable[str]) -> str | None:
    """The policy used when none is named: the only one, else the one called 'default', else none."""
    names = list(names)
    if len(names) == 1:
        return names[0]
    return "default" if "default" in names else None
