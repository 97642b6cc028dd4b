"""What is checked, once: the directions and their one table (:data:`DIRECTIONS`).

Every place that names a direction reads it from here: the flow names and their parsing (:mod:`nemo_csr_rail.settings.
flows`), the action names and their import targets (``register()``, the NeMo manifest ``rail/rail.py``), the
manifest's surfaces and their context bindings, the decision's and the runtime's wording, the rail exception names,
the metric and ``eval`` labels. Adding a direction: add its :class:`Direction` member and its :class:`DirectionSpec`
row below, then what no row can say (the Colang flow bodies, the code that renders and judges the new item):
docs/architecture.md lists it, and ``tests/tooling/test_directions.py`` fails while a derived place lacks it.

A leaf: plain data, no pipeline imports (the defaults come from :mod:`nemo_csr_rail.options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nemo_csr_rail.options import (
    DEFAULT_INPUT_REFUSAL,
    DEFAULT_OUTPUT_REFUSAL,
    DEFAULT_TOOL_CALL_REFUSAL,
    DEFAULT_TOOL_RESULT_REFUSAL,
)


class Direction(str, Enum):
    """What is checked: the user's prompt (input rail), the bot's answer (output rail), or, for agents, a tool call
    the model wants to make (tool output rail), a tool's result (tool input rail) or a retrieved chunk (retrieval
    rail). The model card knows two: prompt and response; :attr:`judged_as` says which of them each is judged as
    (docs/agents.md). Each member's facts are its row of :data:`DIRECTIONS` (:attr:`spec`)."""

    INPUT = "input"
    OUTPUT = "output"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    RETRIEVAL = "retrieval"

    @property
    def spec(self) -> DirectionSpec:
        return _BY_DIRECTION[self]

    @property
    def judged_as(self) -> Direction:
        """The card's side this direction is judged on: a tool call is the assistant's response (Response harm);
        a tool result and a retrieved chunk are content entering the conversation (Prompt harm)."""
        return _BY_DIRECTION[self].judged_as


#: the card's two sides, which every direction is judged as (one prompt layout, grammar and decode plan each)
SIDES = (Direction.INPUT, Direction.OUTPUT)


@dataclass(frozen=True)
class DirectionSpec:
    """One direction's facts. The names of the flow (``csr check <flow_words>``), its action (the flow name in
    snake case), its action's import target, its rail exception and its metric label follow from the row."""

    direction: Direction
    #: the card's side it is judged as (prompt: INPUT, response: OUTPUT)
    judged_as: Direction
    #: the flow is ``csr check <flow_words>``
    flow_words: str
    #: the ``rails.<section>.flows`` list of config.yml that runs the flow
    rails_section: str
    #: NeMo's ``RailDirection`` value for the manifest's surface; None: NeMo has no direction for it (no surface)
    surface: str | None
    #: the surface's context bindings: (action parameter, context key, required)
    surface_context: tuple[tuple[str, str, bool], ...]
    #: whether flows.co defines a Colang 2.x flow (NeMo 0.24 runs agent rails in Colang 1.0 only)
    colang2: bool
    #: the refusal a policy uses when it sets none
    default_refusal: str
    #: the judged text in a decision's reason: "The <noun> violates policy …"
    noun: str
    #: the judged text in the runtime's messages ("cannot check <what>")
    what: str
    #: the judged text in a too-long message ("the <too_long> is too long for the safety check")
    too_long: str
    #: the rail exception message's first words ("<blocked> blocked by csr check …")
    blocked: str
    #: the plural the topic-policy message lists, or None for the user's message itself (a topic policy judges it)
    plural: str | None
    #: the name ``eval`` gives rows labelled for it (``<eval_label>_label``), its report sections and files
    eval_label: str

    @property
    def flow(self) -> str:
        return f"csr check {self.flow_words}"

    @property
    def action(self) -> str:
        return self.flow.replace(" ", "_")

    @property
    def action_target(self) -> str:
        """The importable ``module:attr`` of the NeMo action (resolved like NeMo's catalog resolves an ActionRef)."""
        return f"nemo_csr_rail.rail.actions:{self.action}"

    @property
    def exception(self) -> str:
        """The Colang event a block sends with ``enable_rails_exceptions`` (``CsrCheckInputRailException``)."""
        return "".join(w.capitalize() for w in self.flow.split()) + "RailException"

    def exception_message(self, policy: str, reason: str | None) -> str:
        """The message of the rail exception a block raises (``enable_rails_exceptions``), in one wording for every
        block of this direction (a judged item's, or an answer refused whole for too many tool calls)."""
        return f"{self.blocked} blocked by {self.flow} (policy {policy}): {reason}"

    @property
    def metric_label(self) -> str:
        """The ``direction`` label of every metric, span and audit record."""
        return self.direction.value


def _agent_row(direction: Direction, judged_as: Direction, flow_words: str, rails_section: str, surface: str | None,
               surface_context: tuple[tuple[str, str, bool], ...], default_refusal: str, noun: str) -> DirectionSpec:
    """An agent direction's row: its item is worded by one noun everywhere ("a tool call", "the tool call is too
    long", "Tool call blocked", "tool calls"); only the two sides word theirs case by case."""
    return DirectionSpec(direction, judged_as, flow_words, rails_section, surface, surface_context, colang2=False,
                         default_refusal=default_refusal, noun=noun, what=f"a {noun}", too_long=noun,
                         blocked=noun.capitalize(), plural=f"{noun}s", eval_label=direction.value)


_I, _O = Direction.INPUT, Direction.OUTPUT
DIRECTIONS: tuple[DirectionSpec, ...] = (
    DirectionSpec(Direction.INPUT, _I, "input", "input", "input", (("user_message", "user_message", True),),
                  colang2=True, default_refusal=DEFAULT_INPUT_REFUSAL, noun="prompt", what="the user's message",
                  too_long="message", blocked="Input", plural=None, eval_label="prompt"),
    DirectionSpec(Direction.OUTPUT, _O, "output", "output", "output",
                  (("user_message", "user_message", False), ("bot_message", "bot_message", True)),
                  colang2=True, default_refusal=DEFAULT_OUTPUT_REFUSAL, noun="response", what="the bot's answer",
                  too_long="answer", blocked="Output", plural="the bot's answers", eval_label="response"),
    _agent_row(Direction.TOOL_CALL, _O, "tool calls", "tool_output", None, (), DEFAULT_TOOL_CALL_REFUSAL, "tool call"),
    _agent_row(Direction.TOOL_RESULT, _I, "tool results", "tool_input", None, (), DEFAULT_TOOL_RESULT_REFUSAL,
               "tool result"),
    _agent_row(Direction.RETRIEVAL, _I, "retrieval", "retrieval", "retrieval", (("text", "relevant_chunks", True),),
               DEFAULT_INPUT_REFUSAL, "retrieved document"),
)
_BY_DIRECTION = {s.direction: s for s in DIRECTIONS}

# -- the topic policy's one rule, in the words every refusal of it uses -------------------------------------------
#: a topic policy (layout C) judges the user's message only; the two grammatical forms the messages use
TOPIC_ONLY = "is a topic policy: it judges user messages only"
TOPIC_ONLY_CLAUSE = "is a topic policy, which judges user messages only"


def topic_not_for() -> str:
    """What a topic policy cannot check, as a list ("the bot's answers, tool calls, tool results and retrieved
    documents")."""
    items = [s.plural for s in DIRECTIONS if s.plural is not None]
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def checks_other_than_input() -> str:
    """The checks after ``csr check output`` as a config message names them ("tool calls, tool results,
    retrieval")."""
    return ", ".join(s.flow_words for s in DIRECTIONS if s.direction not in SIDES)


__all__ = ["DIRECTIONS", "SIDES", "TOPIC_ONLY", "TOPIC_ONLY_CLAUSE", "Direction", "DirectionSpec",
           "checks_other_than_input", "topic_not_for"]
