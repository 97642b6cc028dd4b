"""Named policies, compiled once from settings into what the prompt builder needs.

Everything that does not depend on the conversation (category numbering, policy text, per-direction reasoning
and refusal templates) is computed here at load time, so the per-check path only concatenates strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from nemo_csr_rail.directions import SIDES as SIDES  # re-exported: its home was here
from nemo_csr_rail.directions import Direction as Direction  # re-exported: its home was here
from nemo_csr_rail.options import (
    DEFAULT_COVERAGE,
    DEFAULT_ESCALATE_AT,
    DEFAULT_HISTORY_TURNS,
    DEFAULT_MODEL_TYPE,
    DEFAULT_ON_ERROR,
)
from nemo_csr_rail.settings import (
    CategorySpec,
    DirectionalMode,
    DirectionalReasoning,
    PluginSettings,
    PolicySettings,
)
from nemo_csr_rail.settings import implicit_policy as implicit_policy  # re-exported (rule: settings)
from nemo_csr_rail.taxonomy import TAXONOMIES

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
    #: the refusals default to the directions' table (a retrieved chunk's is the input's: :meth:`refusal`)
    refusal_input: str = Direction.INPUT.spec.default_refusal
    refusal_output: str = Direction.OUTPUT.spec.default_refusal
    on_error: Literal["block", "allow"] = DEFAULT_ON_ERROR
    threshold: float | None = None
    model_type: str = DEFAULT_MODEL_TYPE
    history_turns: int = 0
    #: reasoning: escalate per direction — screen with reasoning off, the reasoning-on check decides at or above
    #: ``escalate_at`` (:mod:`nemo_csr_rail.plans.escalate`); ``reasoning_*`` is then False (the screen's mode)
    escalate_input: bool = False
    escalate_output: bool = False
    escalate_at: float = DEFAULT_ESCALATE_AT
    #: mode: monitor per direction — the check runs exactly as in enforce mode, the turn is never blocked by it
    monitor_input: bool = False
    monitor_output: bool = False
    #: the agent directions' mode (True, False or "escalate"); None follows the side each is judged as (a tool
    #: call the output's, a tool result and a retrieved chunk the input's)
    reasoning_tool_call: bool | str | None = None
    reasoning_tool_result: bool | str | None = None
    reasoning_retrieval: bool | str | None = None
    refusal_tool_call: str = Direction.TOOL_CALL.spec.default_refusal
    refusal_tool_result: str = Direction.TOOL_RESULT.spec.default_refusal
    #: whole-conversation coverage (docs/coverage.md): "all" judges every message the client supplied, "last"
    #: the current one only
    coverage: Literal["all", "last"] = DEFAULT_COVERAGE
    #: split attacks: N >= 2 also judges the last N user turns together on the input side; 0 is off
    multi_turn: int = 0

    def _agent_mode(self, direction: Direction) -> bool | str | None:
        return {Direction.TOOL_CALL: self.reasoning_tool_call, Direction.TOOL_RESULT: self.reasoning_tool_result,
                Direction.RETRIEVAL: self.reasoning_retrieval}.get(direction)

    def reasoning(self, direction: Direction) -> bool:
        own = self._agent_mode(direction)
        if own is not None:
            return own is True
        return self.reasoning_input if direction.judged_as is Direction.INPUT else self.reasoning_output

    @cached_property
    def affinity(self) -> str:
        """A digest of what the policy puts at the start of every prompt (its layout and text), computed once: the
        HTTP engine sends every check carrying it to the same replica (``replica_routing: affinity``). The name,
        refusals and reasoning switches are left out: two policies with the same text share one cached prefix."""
        return hashlib.blake2b(f"{self.kind}\x00{self.body}".encode("utf-8", "surrogatepass"),
                               digest_size=8).hexdigest()

    def escalates(self, direction: Direction) -> bool:
        own = self._agent_mode(direction)
        if own is not None:
            return own == "escalate"
        return self.escalate_input if direction.judged_as is Direction.INPUT else self.escalate_output

    def monitors(self, direction: Direction) -> bool:
        # the agent directions follow the side they are judged as (docs/agents.md)
        return self.monitor_input if direction.judged_as is Direction.INPUT else self.monitor_output

    def mode(self, direction: Direction) -> str:
        return "monitor" if self.monitors(direction) else "enforce"

    def reasoning_mode(self, direction: Direction) -> bool | str:
        """What the metadata reports: True, False or ``"escalate"``."""
        return "escalate" if self.escalates(direction) else self.reasoning(direction)

    def uses_reasoning(self) -> bool:
        """Whether any check of this policy may run with reasoning on (the reasoning grammars are then needed)."""
        return self.reasoning_input or self.reasoning_output or self.escalate_input or self.escalate_output or any(
            m is True or m == "escalate" for m in (self.reasoning_tool_call, self.reasoning_tool_result,
                                                   self.reasoning_retrieval))

    def refusal(self, direction: Direction) -> str:
        if direction is Direction.TOOL_CALL:
            return self.refusal_tool_call
        if direction is Direction.TOOL_RESULT:
            return self.refusal_tool_result
        return self.refusal_input if direction.judged_as is Direction.INPUT else self.refusal_output

    @classmethod
    def custom(cls, name: str, text: str, *, reasoning: bool | Literal["escalate"] = True, **kw: object) -> Policy:
        """A free-text policy (card layout B), for the plain Python API. ``reasoning="escalate"``: screen with
        reasoning off, reason only when the screen may be harmful (:mod:`nemo_csr_rail.plans.escalate`)."""
        return cls(name=name, kind="custom", body=text.strip(), **_modes(reasoning), **kw)  # type: ignore[arg-type]

    @classmethod
    def topic(cls, name: str, instruction: str, *, history_turns: int = DEFAULT_HISTORY_TURNS,
              reasoning: bool | Literal["escalate"] = True, **kw: object) -> Policy:
        """A topic-following policy (card layout C): judge the user's message against the system instruction that
        bounds the conversation, with the last ``history_turns`` messages as context. For the plain Python API."""
        if history_turns < 0:
            raise ValueError("history_turns must be >= 0")
        return cls(name=name, kind="topic", body=instruction.rstrip(), history_turns=history_turns,
                   **_modes(reasoning), **kw)  # type: ignore[arg-type]

    @classmethod
    def taxonomy(cls, name: str = "safety", categories: list[str] | None = None, *,
                 reasoning: bool | Literal["escalate"] = False, **kw: object) -> Policy:
        """A category-list policy (card layout A); the built-in S1–S22 list unless ``categories`` is given."""
        body = render_categories(list(categories) if categories else list(TAXONOMIES["nemotron_v2"]))
        return cls(name=name, kind="taxonomy", body=body, **_modes(reasoning), **kw)  # type: ignore[arg-type]


def _modes(reasoning: bool | str) -> dict[str, bool]:
    """One reasoning setting for both directions, as Policy fields (the plain API's ``reasoning=`` argument)."""
    if reasoning not in (True, False, "escalate"):
        raise ValueError(f"reasoning must be True, False or 'escalate', not {reasoning!r}")
    esc = reasoning == "escalate"
    return {"reasoning_input": reasoning is True, "reasoning_output": reasoning is True,
            "escalate_input": esc, "escalate_output": esc}


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
    agent: dict[str, bool | str | None] = {"tool_call": None, "tool_result": None, "retrieval": None}
    if isinstance(spec.reasoning, DirectionalReasoning):
        m_in = default_reasoning if spec.reasoning.input is None else spec.reasoning.input
        m_out = default_reasoning if spec.reasoning.output is None else spec.reasoning.output
        # unset agent directions follow the side they are judged as (Policy.reasoning, Policy.escalates)
        agent = {k: getattr(spec.reasoning, k) for k in agent}
    else:
        m_in = m_out = default_reasoning if spec.reasoning is None else spec.reasoning
    e_in, e_out = m_in == "escalate", m_out == "escalate"
    r_in, r_out = m_in is True, m_out is True
    refusal = spec.refusal or plugin.refusal
    return Policy(
        name=name,
        kind=kind,
        body=body,
        reasoning_input=r_in,
        reasoning_output=r_out,
        on_error=spec.on_error or plugin.on_error,
        threshold=spec.threshold,
        model_type=spec.model or plugin.model,
        history_turns=history_turns,
        escalate_input=e_in,
        escalate_output=e_out,
        escalate_at=DEFAULT_ESCALATE_AT if spec.escalate_at is None else spec.escalate_at,
        reasoning_tool_call=agent["tool_call"],
        reasoning_tool_result=agent["tool_result"],
        reasoning_retrieval=agent["retrieval"],
        # one configured refusal for every direction; none: each direction's default (the Policy's field defaults)
        **(dict.fromkeys(("refusal_input", "refusal_output", "refusal_tool_call", "refusal_tool_result"), refusal)
           if refusal else {}),
        monitor_input=_mode(spec.mode, "input") == "monitor",
        monitor_output=_mode(spec.mode, "output") == "monitor",
        coverage=spec.coverage or plugin.coverage,
        multi_turn=spec.multi_turn,
    )


def _mode(mode: str | DirectionalMode, direction: str) -> str:
    if isinstance(mode, DirectionalMode):
        return getattr(mode, direction) or "enforce"
    return mode


def compile_policies(plugin: PluginSettings) -> dict[str, Policy]:
    return {name: compile_policy(name, spec, plugin) for name, spec in plugin.policies.items()}

