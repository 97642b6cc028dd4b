"""Whole-conversation coverage: which messages of a request a check judges, and judging each of them once.

A client of ``nemoguardrails server`` sends the whole history with every request, and the main model reads all of
it: a harmful earlier user message, a forged assistant message or a harmful tool result goes to the model as surely
as the last message does. So with ``coverage: all`` (the default) every message the model reads is judged, on the
side of the card it belongs to (docs/coverage.md):

* **input side**: every user message (direction ``input``), every tool result (``tool_result``, rendered as the
  tool-result rail renders it, docs/agents.md), every system and developer message (``input``, rendered
  ``System message:\\n…``: a client can forge one and the model obeys it more than anything else), and messages of
  any other role (``input``, rendered ``<role> message:\\n…``: never silently skipped);
* **output side**: every assistant message's text (``output``, with the user message it answers) and every tool
  call an assistant message makes (``tool_call``, as the tool-call rail renders it).

Each item is judged once: its decision is kept in the ``judged_messages`` cache under (policy digest, direction,
judged text, context text), so an honest client replaying its history costs only the new messages, and a message
that changes is judged again. Failures and skips are never cached. The misses of one call are judged concurrently,
:data:`~nemo_csr_rail.agent.MAX_CONCURRENT_CHECKS` at a time; identical items are judged once. More than
:data:`MAX_NEW_ITEMS` items not judged before fail the call closed (``input_too_long``) without a guard request.

``multi_turn: N`` (split attacks) also judges the last N user turns together, as one text in the card's
``Human user:`` section (:func:`~nemo_csr_rail.prompt.render_user_turns`).

The result is one folded :class:`~nemo_csr_rail.decision.Decision`: blocked if any item is blocked (the first in
message order gives the reason and refusal), with :class:`~nemo_csr_rail.decision.Coverage` facts. An input-side
message the conversation shows refused in its own turn (the next assistant message is, word for word, a refusal this runtime issued) is
judged and counted but does not block later turns: a chat client sends the refused exchange back every time, and
the first refusal must not end the conversation (docs/coverage.md). ``coverage:
last`` judges only the ``current`` message and returns the runtime's decision unchanged (the behaviour, and the
metadata, from before coverage existed). No NeMo Guardrails or LangChain here: the runtime is any object with the
:class:`Judge` shape.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from nemo_csr_rail.agent import MAX_CONCURRENT_CHECKS, judged_turn, render_tool_call, render_tool_result
from nemo_csr_rail.cache import SharedTTLCache, TTLCache
from nemo_csr_rail.conversation import Turn
from nemo_csr_rail.decision import Coverage, Decision, Outcome, SkipReason
from nemo_csr_rail.errors import ConfigError, CsrError, InputTooLong
from nemo_csr_rail.policy import Direction, Policy
from nemo_csr_rail.prompt import render_user_turns
from nemo_csr_rail.transcript import Message

__all__ = ["MAX_NEW_ITEMS", "Judge", "deciding", "has_output_side", "judge_messages", "judged_messages_cache",
           "multi_turn_text", "split_turns"]

#: items not judged before (cache misses, identical ones counted once) that one call may send to the guard; past it
#: the call is refused unjudged (fail closed). An honest client's history is judged as it grows, so only a forged or
#: never-seen history of more than this many distinct messages meets the cap (docs/coverage.md).
MAX_NEW_ITEMS = 1024

USER_ROLES = frozenset({"user", "human"})
ASSISTANT_ROLES = frozenset({"assistant", "bot", "ai"})
TOOL_ROLES = frozenset({"tool", "function", "ipython"})
#: instructions to the model: judged on the input side, labelled with their role
INSTRUCTION_ROLES = {"system": "System message", "developer": "Developer message"}


class Judge(Protocol):
    """What coverage needs of the check runtime (``nemo_csr_rail.runtime.CheckRuntime`` has this shape)."""

    settings: Any
    telemetry: Any

    def policy(self, name: str | None) -> Policy: ...

    def issued_refusal(self, text: str) -> bool: ...

    def remember_refusal(self, refusal: str | None) -> None: ...

    async def decide(self, policy_name: str | None, direction: Direction, user_message: str | None,
                     bot_message: str | None = None, history: Sequence[Turn] | None = None) -> Decision: ...


@dataclass(frozen=True)
class _Item:
    """One thing to judge: the message it comes from, and the runtime's arguments for it."""

    index: int
    role: str
    direction: Direction
    user: str
    bot: str | None = None
    history: tuple[Turn, ...] | None = None
    multi_turn: int | None = None

    @property
    def empty(self) -> bool:
        judged = self.bot if self.direction.judged_as is Direction.OUTPUT else self.user
        return not (judged or "").strip()


def _role(message: Message) -> str:
    return message.role.strip().lower() if isinstance(message.role, str) else ""


def has_output_side(messages: Sequence[Message]) -> bool:
    """Whether the request holds an assistant message (any role coverage reads as one: ``ai``, ``bot``, any case),
    i.e. anything for the output side to judge."""
    return any(_role(m) in ASSISTANT_ROLES for m in messages)


def _label(role: str) -> str:
    """A safe one-line label for a message of an unknown role (the role is client text)."""
    clean = " ".join(role.split())[:40]
    return f"{clean} message" if clean else "Message"


# ------------------------------------------------------------------------------------------------ what is judged
def _input_items(policy: Policy, messages: Sequence[Message]) -> list[_Item]:
    items: list[_Item] = []
    calls: dict[str, str] = {}  # tool call id → tool name, from the assistant messages before a tool result
    history: list[Turn] = []
    topic = policy.kind == "topic"
    for m in messages:
        role = _role(m)
        if role in ASSISTANT_ROLES:
            for c in m.tool_calls:
                if c.id is not None:
                    calls[c.id] = c.name
            history.append(Turn("bot", m.text))
        elif role in USER_ROLES:
            # a topic policy judges each user message with the conversation before it (layout C)
            items.append(_Item(m.index, m.role, Direction.INPUT, m.text,
                               history=tuple(history) if topic else None))
            history.append(Turn("user", m.text))
        elif topic:
            continue  # a topic policy judges user messages only: a tool result or an instruction is not a topic
        elif role in TOOL_ROLES:
            # named as the tool-result rail names it (the message's own name), else by the call it answers; an id
            # that answers no call is still judged
            name = m.name or calls.get(m.tool_call_id or "")
            text = render_tool_result(name, m.text) if m.text.strip() else ""
            items.append(_Item(m.index, m.role, Direction.TOOL_RESULT, text))
        else:
            label = INSTRUCTION_ROLES.get(role) or _label(m.role)
            items.append(_Item(m.index, m.role, Direction.INPUT, f"{label}:\n{m.text}" if m.text.strip() else ""))
    return items


def _output_items(messages: Sequence[Message]) -> list[_Item]:
    items: list[_Item] = []
    user = ""  # the user message an assistant message answers: the last one before it
    for m in messages:
        role = _role(m)
        if role in USER_ROLES:
            user = m.text
        elif role in ASSISTANT_ROLES:
            items.append(_Item(m.index, m.role, Direction.OUTPUT, user, m.text))
            for c in m.tool_calls:
                u, b = judged_turn(Direction.TOOL_CALL, user, render_tool_call(c.name, c.arguments))
                items.append(_Item(m.index, m.role, Direction.TOOL_CALL, u, b))
    return items


def split_turns(user_texts: Sequence[str], n: int) -> list[str]:
    """The last ``n`` non-blank user turns, oldest first (``multi_turn``); fewer than two is no split to see."""
    turns = [t for t in user_texts if isinstance(t, str) and t.strip()][-n:] if n >= 2 else []
    return turns if len(turns) >= 2 else []


def multi_turn_text(policy: Policy, user_texts: Sequence[str]) -> tuple[str, int] | None:
    """The text the ``multi_turn`` check judges for these user turns (oldest first) and how many it joins; None
    when the policy does not ask for it or there are fewer than two turns to join. Shared by the rails and
    ``eval``, so both judge the same text."""
    if not _wants_multi_turn(policy):
        return None
    turns = split_turns(user_texts, policy.multi_turn)
    return (render_user_turns(turns), len(turns)) if turns else None


def _wants_multi_turn(policy: Policy) -> bool:
    return policy.multi_turn >= 2 and policy.kind != "topic"


def _multi_turn_item(policy: Policy, messages: Sequence[Message], upto: int | None, refused: set[int]
                     ) -> _Item | None:
    # a refused turn (``refused``, from :func:`_refused`) was dealt with in its own turn: not joined again
    users = [m for m in messages if _role(m) in USER_ROLES and (upto is None or m.index <= upto)
             and (m.index not in refused or m.index == upto)]
    joined = multi_turn_text(policy, [m.text for m in users])
    if joined is None:
        return None
    last = users[-1]
    return _Item(last.index, last.role, Direction.INPUT, joined[0], multi_turn=joined[1])


def _current(side: Direction, messages: Sequence[Message], current: int | None) -> Message | None:
    by_index = {m.index: m for m in messages}
    if current is not None:
        return by_index.get(current)
    roles = USER_ROLES if side is Direction.INPUT else ASSISTANT_ROLES
    for m in reversed(messages):
        if _role(m) in roles:
            return m
    return None


def _answered(messages: Sequence[Message], index: int) -> str:
    """The user message before ``index`` (the one an answer at ``index`` answers), "" if none."""
    for m in reversed(messages):
        if m.index < index and _role(m) in USER_ROLES:
            return m.text
    return ""


# --------------------------------------------------------------------------------------- turns already refused
def _refused(runtime: Judge, messages: Sequence[Message]) -> set[int]:
    """Indexes of input-side messages the conversation shows refused: the first assistant message after it, before
    the next user message, is a refusal this runtime issued (exactly, not merely its template: a client cannot forge
    one). Such a message was judged and refused in its own turn; judging it again in every later turn would end the
    conversation at its first refusal."""
    refused: set[int] = set()
    pending: list[int] = []
    for m in messages:
        role = _role(m)
        if role in ASSISTANT_ROLES:
            if pending and runtime.issued_refusal(m.text):
                refused.update(pending)
            pending = []
        elif role in USER_ROLES:
            pending = [m.index]
        else:
            pending.append(m.index)
    return refused


# ---------------------------------------------------------------------------------------------------- the cache
_CACHES: weakref.WeakKeyDictionary[Any, TTLCache[Decision] | None] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def judged_messages_cache(runtime: Judge) -> TTLCache[Decision] | None:
    """The runtime's ``judged_messages`` cache (made on first use; None when the config turns it off)."""
    try:
        return _CACHES[runtime]
    except KeyError:
        pass
    with _CACHES_LOCK:
        if runtime not in _CACHES:
            spec = getattr(runtime.settings, "judged_messages", None)
            _CACHES[runtime] = SharedTTLCache(spec.maxsize, spec.ttl_s) if spec is not None and spec.enabled else None
        return _CACHES[runtime]


@functools.lru_cache(maxsize=1024)
def _policy_digest(policy: Policy) -> str:
    """Everything the decision depends on: the text, and the reasoning modes, threshold, refusals and modes."""
    return hashlib.sha256(repr(policy).encode("utf-8", "surrogatepass")).hexdigest()


def _key(digest: str, item: _Item) -> str:
    context = "" if item.history is None else "\x00".join(f"{t.role}:{len(t.text)}:{t.text}" for t in item.history)
    parts = (digest, item.direction.value, "multi" if item.multi_turn else "one", item.user, item.bot or "", context)
    h = hashlib.sha256()
    for p in parts:  # length-prefixed: no two different items share a key
        b = p.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------ judging
async def judge_messages(runtime: Judge, policy_name: str | None, side: Direction, messages: Sequence[Message], *,
                         current: int | None = None) -> Decision:
    """Judge the request's messages on ``side`` (``input`` or ``output``) and fold the decisions into one.

    ``current``: the index of the message this rail call is about (the last user message for an input rail, the
    answer for an output rail); None: the last user (input) or assistant (output) message. Never raises."""
    side = Direction(side).judged_as
    cur = _current(side, messages, current)
    try:
        policy = runtime.policy(policy_name)
    except ConfigError:
        policy = None
    if policy is None or (policy.kind == "topic" and side is Direction.OUTPUT):
        return await _decide_current(runtime, policy_name, side, messages, cur, policy)  # the runtime's own decision
    joins = side is Direction.INPUT and _wants_multi_turn(policy)
    if policy.coverage == "last" and not joins:  # one message judged: no history to read
        return await _decide_current(runtime, policy_name, side, messages, cur, policy)
    upto = cur.index if cur is not None else None
    # the turns the conversation shows refused, read once for the multi-turn join and the excuse in the fold
    refused = _refused(runtime, messages) if side is Direction.INPUT else set()
    multi = _multi_turn_item(policy, messages, upto, refused) if joins else None
    if policy.coverage == "last" and multi is None:
        return await _decide_current(runtime, policy_name, side, messages, cur, policy)
    start = time.perf_counter()
    if policy.coverage == "last":
        items = [_current_item(side, messages, cur, policy)]
    else:
        items = _input_items(policy, messages) if side is Direction.INPUT else _output_items(messages)
    if multi is not None:
        items.append(multi)
    decision = await _judge(runtime, policy, side, items, messages, cur, refused)
    if decision.cost is not None:
        decision = replace(decision, cost=replace(decision.cost, latency_ms=(time.perf_counter() - start) * 1000))
    if decision.coverage is not None and runtime.telemetry is not None:
        record = getattr(runtime.telemetry, "record_coverage", None)
        if record is not None:
            record(decision)
    return decision


def _current_item(side: Direction, messages: Sequence[Message], cur: Message | None, policy: Policy) -> _Item:
    """The one item ``coverage: last`` judges (what the rails judged before coverage existed): the current message's
    text, rendered for its role as ``coverage: all`` renders it (a user message as it is)."""
    if cur is None:
        return _Item(-1, "", side, "", "" if side is Direction.OUTPUT else None)
    if side is Direction.OUTPUT:
        return _Item(cur.index, cur.role, Direction.OUTPUT, _answered(messages, cur.index), cur.text)
    upto = [m for m in messages if m.index <= cur.index]
    mine = [i for i in _input_items(policy, upto) if i.index == cur.index]
    return mine[0] if mine else _Item(cur.index, cur.role, Direction.INPUT, cur.text)


async def _decide_current(runtime: Judge, policy_name: str | None, side: Direction, messages: Sequence[Message],
                          cur: Message | None, policy: Policy | None) -> Decision:
    """The runtime's decision on the current message alone (``policy`` None: unknown, the runtime says so)."""
    if policy is None:
        item = _Item(-1, "", side, "" if cur is None or side is Direction.OUTPUT else cur.text,
                     None if side is Direction.INPUT else ("" if cur is None else cur.text))
    else:
        item = _current_item(side, messages, cur, policy)
    return await runtime.decide(policy_name, item.direction, item.user, item.bot, item.history)


async def _judge(runtime: Judge, policy: Policy, side: Direction, items: list[_Item], request: Sequence[Message],
                 cur: Message | None, refused_before: set[int]) -> Decision:
    start = time.perf_counter()
    messages = len(request)
    judged = [i for i in items if not i.empty]
    skipped = len(items) - len(judged)
    mode = policy.coverage
    multi = next((i.multi_turn for i in items if i.multi_turn), None)
    cache = judged_messages_cache(runtime)
    digest = _policy_digest(policy)
    keys = [_key(digest, i) for i in judged]
    decided: dict[str, Decision] = {}
    from_cache: set[str] = set()
    misses: dict[str, _Item] = {}
    for key, item in zip(keys, judged, strict=True):
        if key in decided or key in misses:
            continue
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            decided[key] = hit
            from_cache.add(key)
        else:
            misses[key] = item
    if len(misses) > MAX_NEW_ITEMS:
        err = InputTooLong(f"the request carries {len(misses)} messages or tool calls not judged before, more than "
                           f"the {MAX_NEW_ITEMS} one check judges; start a new conversation or send less history")
        out = Decision.from_error(policy.name, side, err, on_error="block",
                                  latency_ms=(time.perf_counter() - start) * 1000,
                                  error_refusal=runtime.settings.error_refusal, threshold=policy.threshold,
                                  reasoning_mode=policy.reasoning_mode(side), monitor=policy.monitors(side))
        return out.with_coverage(Coverage(mode=mode, messages=messages, judged=0, guard=0, cached=0,
                                          skipped=skipped, multi_turn=multi))
    gate = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)

    async def one(item: _Item) -> Decision:
        async with gate:
            return await runtime.decide(policy.name, item.direction, item.user, item.bot, item.history)

    fresh = await asyncio.gather(*(one(i) for i in misses.values()), return_exceptions=True)
    guard = 0
    for key, d in zip(misses, fresh, strict=True):
        if isinstance(d, BaseException):  # the rail runtime never raises; another Judge might: fail closed
            if isinstance(d, asyncio.CancelledError):
                raise d
            d = Decision.from_error(policy.name, misses[key].direction,
                                    CsrError(f"internal error: {type(d).__name__}: {d}"), on_error="block",
                                    latency_ms=None, error_refusal=runtime.settings.error_refusal,
                                    monitor=policy.monitors(side))
        decided[key] = d
        if d.skip is not None:
            continue
        guard += 1
        if cache is not None and not d.failed:  # a failure is never remembered: the next request tries again
            cache.put(key, d)
    outs = [decided[k] for k in keys]
    skipped += sum(1 for d in outs if d.skip is not None)
    done = [(i, d, k) for i, d, k in zip(judged, outs, keys, strict=True) if d.skip is None]
    cached = len(done) - guard
    if not done:
        base = Decision.skipped(policy.name, side, SkipReason.EMPTY_MESSAGE)
        return base.with_coverage(Coverage(mode=mode, messages=messages, judged=0, guard=0, cached=0,
                                           skipped=skipped, multi_turn=multi))
    # a harmful input-side message the conversation shows refused in its own turn does not block this one
    excused = [x[1].blocked and not x[1].failed and not x[0].multi_turn and x[0].index in refused_before
               and (cur is None or x[0].index != cur.index) for x in done]
    live = [x for x, e in zip(done, excused, strict=True) if not e]
    item, d, key = (deciding(live, key=lambda x: x[1]) or _own(live, cur, side) or (live or done)[-1])
    if d.blocked and not live:  # only excused blocks, and nothing else judged: the turn goes on, verdict kept
        d = replace(d, outcome=Outcome.ALLOW, refusal=None)
    if d.blocked and key in from_cache:  # a fresh block was remembered by the runtime's own check
        runtime.remember_refusal(d.refusal)  # the client will send this refusal back
    if d.cost is not None and key in from_cache:
        d = replace(d, cost=replace(d.cost, cached=True))
    stop = d.blocked or bool(d.would_block)
    # the rail's direction (the refusal is the deciding item's own, e.g. a tool result's)
    return replace(d, direction=side, coverage=Coverage(
        mode=mode, messages=messages, judged=len(done), guard=guard, cached=cached, skipped=skipped,
        blocked_index=item.index if stop else None, blocked_role=item.role if stop else None, multi_turn=multi,
        refused=sum(excused)))


def deciding(candidates: Sequence[Any], key: Callable[[Any], Decision] = lambda d: d) -> Any | None:
    """The candidate whose decision speaks for all of them, first in order within each rank: a block, else a
    monitored would-be block, else a failure; None when each allows. The one fold order for the items of a request
    and for the two sides an input rail judges (``rail/actions.py``)."""
    for rank in (lambda d: d.blocked, lambda d: bool(d.would_block), lambda d: d.failed):
        found = next((c for c in candidates if rank(key(c))), None)
        if found is not None:
            return found
    return None


def _own(done: list[tuple[_Item, Decision, str]], cur: Message | None, side: Direction
         ) -> tuple[_Item, Decision, str] | None:
    """The current message's own check (its text, judged as the rail's side), the base of an allowed decision."""
    if cur is None:
        return None
    mine = [x for x in done if x[0].index == cur.index]
    return next((x for x in mine if x[0].direction is side and not x[0].multi_turn), mine[0] if mine else None)
