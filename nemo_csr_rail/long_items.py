"""Items too long for one check: every character judged up to a cap, refused past it, sampled only on request.

An item (a user message, a bot answer, a tool call's arguments, a tool result, a retrieved chunk) longer than
``long_input.max_chars``, or one the guard server rejects for its context length, is handled by ``long_input``:

- ``windows`` (the default): the judged text is cut into windows of ``window_chars`` that overlap by a quarter of
  a window (:data:`OVERLAP_DIVISOR`) and cover **every character**. The windows are judged concurrently, at most
  ``max_in_flight`` at a time, and the first harmful window blocks the item (the rest are cancelled). An item
  longer than ``max_judged_chars``, or one that needs more than an explicitly set ``max_windows`` windows, is
  refused with ``input_too_long`` before any request is sent: never partly judged. So is one whose windows cannot
  all be judged within its deadline (``long_input.timeout_s``, default ``timeout_s``): its sender could otherwise
  push the check past the deadline on purpose and have ``on_error: allow`` let it through.
- ``sample`` (explicit opt-in): the earlier behaviour — at most ``max_windows`` windows, head, tail and evenly
  spaced middle samples when they cannot cover the text (:func:`nemo_csr_rail.long_input.plan_windows`); the
  metadata's ``coverage`` says how much was read. Harmful text in an unread part passes; ``doctor`` warns.
- ``refuse``: every such item is refused with ``input_too_long``.

Why a quarter of a window overlaps: a passage of up to ``overlap`` characters lies wholly inside one window,
wherever it sits (:func:`every_char_starts`); 750 characters with the default 3,000-character windows is about
120-150 English words, longer than any ordinary sentence and most paragraphs, so a harmful sentence cannot be
hidden by placing it across a window boundary. It costs 4/3 of the requests of windows that do not overlap (10%
overlap would cost 1.11× but guarantee only 300 characters, two or three sentences). A longer passage split at a
boundary still has at least ``(length + overlap) / 2`` of its characters in one window.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nemo_csr_rail.decision import Cost, Decision, LongInputInfo
from nemo_csr_rail.errors import CsrError, GuardTimeout, InputTooLong
from nemo_csr_rail.long_input import excerpt, sample_starts
from nemo_csr_rail.options import DEFAULT_LONG_INPUT_MAX_WINDOWS
from nemo_csr_rail.policy import Direction, Policy

if TYPE_CHECKING:
    from nemo_csr_rail.client import CheckResult, CsrClient
    from nemo_csr_rail.conversation import Turn
    from nemo_csr_rail.settings import LongInputSettings

__all__ = ["MIN_WINDOW_CHARS", "OVERLAP_DIVISOR", "SAMPLE_MAX_WINDOWS", "ItemPlan", "every_char_starts",
           "judge_long_item", "overlap_for", "plan_item"]

#: windows overlap by ``window_chars // OVERLAP_DIVISOR`` characters (the module docstring says why a quarter)
OVERLAP_DIVISOR = 4
#: windows are halved when the server's context is smaller than the settings assume, down to this size
MIN_WINDOW_CHARS = 128
#: ``strategy: sample`` without ``max_windows``: the number of windows sampling used to check by default
SAMPLE_MAX_WINDOWS = DEFAULT_LONG_INPUT_MAX_WINDOWS


def overlap_for(window_chars: int) -> int:
    """The overlap between neighbouring windows of this size (at least one character)."""
    return max(1, window_chars // OVERLAP_DIVISOR)


def every_char_starts(length: int, window_chars: int, overlap_chars: int) -> tuple[int, ...]:
    """Start offsets of windows of ``window_chars`` that cover all ``length`` characters, neighbours overlapping by
    at least ``overlap_chars``: window *k* starts at ``k * step`` (``step = window_chars - overlap_chars``), the last
    one ends at the text's end. Any span of up to ``overlap_chars`` characters starting at ``a`` lies inside the
    window ``a // step`` (or the last one), so no such span is cut by every window."""
    if not 0 < overlap_chars < window_chars:
        raise ValueError("the overlap must be positive and smaller than the window")
    if length <= window_chars:
        return (0,)
    step = window_chars - overlap_chars
    count = 1 + math.ceil((length - window_chars) / step)
    return tuple(min(k * step, length - window_chars) for k in range(count))


@dataclass(frozen=True)
class ItemPlan:
    """The windows one item is judged in: their start offsets, size, and the share of characters they read."""

    strategy: str  # "windows" or "sample"
    starts: tuple[int, ...]
    window_chars: int
    coverage: float

    def windows(self, text: str) -> Iterator[str]:
        """The windows' texts, one at a time (only those sent are ever cut out of the item)."""
        return (text[s:s + self.window_chars] for s in self.starts)


def plan_item(length: int, settings: LongInputSettings, window_chars: int, what: str = "item") -> ItemPlan:
    """The plan for an item of ``length`` judged characters, or :class:`InputTooLong` (a refusal, with the reason,
    before anything is sent) when ``windows`` would exceed ``max_judged_chars`` or an explicit ``max_windows``.
    ``strategy: refuse`` is the caller's: it never plans."""
    if settings.strategy == "sample":
        starts, coverage = sample_starts(length, window_chars, settings.max_windows or SAMPLE_MAX_WINDOWS)
        return ItemPlan("sample", starts, window_chars, coverage)
    if length > settings.max_judged_chars:
        raise InputTooLong(f"the {what} is too long for the safety check: {length} characters exceed "
                           f"long_input.max_judged_chars={settings.max_judged_chars}")
    starts = every_char_starts(length, window_chars, overlap_for(window_chars))
    if settings.max_windows is not None and len(starts) > settings.max_windows:
        raise InputTooLong(f"the {what} is too long for the safety check: judging all of its {length} characters "
                           f"takes {len(starts)} windows of {window_chars}, more than "
                           f"long_input.max_windows={settings.max_windows}")
    return ItemPlan("windows", starts, window_chars, 1.0)


async def judge_long_item(client: CsrClient, policy: Policy, direction: Direction, user: str, bot: str | None, *,
                          settings: LongInputSettings, trigger: str, deadline: float, timeout_s: float,
                          history: Sequence[Turn] | None = None) -> Decision:
    """Apply ``long_input`` to one item: refuse it, or judge its windows and block if any is harmful.

    ``trigger``: "max_chars" (longer than the settings allow in one check) or "server_context" (the server said it
    does not fit). Raises :class:`InputTooLong` for a refusal and the first window's error when a window could not
    be judged and none was harmful; the caller turns both into a decision (``input_too_long`` always blocks). A
    topic policy's windows carry no history (a budget of 0: the metadata counts it all as dropped), since the item
    alone already fills the guard's context."""
    chars = len(user) + len(bot or "")
    what = direction.spec.too_long
    if settings.timeout_s is not None:  # the item's own deadline, from the same start as the check's
        deadline += settings.timeout_s - timeout_s
        timeout_s = settings.timeout_s
    if settings.strategy == "refuse":
        cause = (f"{chars} characters exceed long_input.max_chars={settings.max_chars}" if trigger == "max_chars"
                 else "the guard server rejected it for its context length")
        raise InputTooLong(f"the {what} is too long for the safety check: {cause}")
    judged = user if direction.judged_as is Direction.INPUT else (bot or "")
    size = settings.window_chars
    while True:
        plan = plan_item(len(judged), settings, size, what)
        context = excerpt(user, max(128, size // 3)) if direction.judged_as is Direction.OUTPUT else None
        info = LongInputInfo(strategy=plan.strategy, trigger=trigger, chars=chars, windows=len(plan.starts),
                             window_chars=size, coverage=plan.coverage)

        started = time.perf_counter()
        calls = (_judge_window(client, policy, direction, w, context, deadline, timeout_s, history)
                 for w in plan.windows(judged))
        decisions, errors = await _judge_windows(policy, direction, calls, settings.max_in_flight)
        if decisions and (decisions[-1].blocked or decisions[-1].would_block):  # monitor: the would-be block
            return _total(decisions[-1], decisions, started).with_long_input(info)
        if not errors:
            return _total(decisions[0], decisions, started).with_long_input(info)
        if any(isinstance(e, InputTooLong) for e in errors) and size // 2 >= MIN_WINDOW_CHARS:
            size //= 2  # the server's context is smaller than the settings assume: shrink and judge again
            trigger = "server_context"
            continue
        late = next((e for e in errors if isinstance(e, GuardTimeout)), None)
        if late is not None and plan.strategy == "windows":
            # The item's length, which its sender chooses, made the check miss its deadline: never partly judged,
            # whatever on_error says, or padding an item would switch the guard off where on_error is "allow".
            key = "long_input.timeout_s" if settings.timeout_s is not None else "timeout_s"
            raise InputTooLong(f"the {what} could not be judged whole within {key}={timeout_s:g}: "
                               f"{len(decisions)} of {len(plan.starts)} windows were judged ({late.message}); raise "
                               "long_input.timeout_s or lower long_input.max_judged_chars") from late
        raise next((e for e in errors if isinstance(e, CsrError)), errors[0])


async def _judge_window(client: CsrClient, policy: Policy, direction: Direction, window: str, context: str | None,
                        deadline: float, timeout_s: float, history: Sequence[Turn] | None) -> CheckResult:
    """One window: the judged text (with the user excerpt as context on the response side), no history."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise GuardTimeout(f"guard check exceeded {timeout_s:g}s while checking windows")
    return await client.check(policy, direction, window if context is None else context,
                              None if context is None else window, timeout_s=left, history=history,
                              history_max_chars=0)


async def _judge_windows(policy: Policy, direction: Direction, calls: Iterator[Coroutine[Any, Any, CheckResult]],
                         limit: int) -> tuple[list[Decision], list[BaseException]]:
    """Run ``calls`` (a lazy iterator of coroutines, one per window: a window that is never started is never even
    made) at most ``limit`` at a time, in order. Stops at the first harmful
    window (its decision is last in the list; the others in flight are cancelled and the rest never start) and at
    a context-length error (the caller shrinks the windows); any other error is kept while the remaining windows
    are still judged, so a harmful window elsewhere blocks even with ``on_error: allow``."""
    decisions: list[Decision] = []
    errors: list[BaseException] = []
    running: set[asyncio.Task[CheckResult]] = set()
    try:
        while True:
            while len(running) < limit:
                call = next(calls, None)
                if call is None:
                    break
                running.add(asyncio.ensure_future(call))
            if not running:
                return decisions, errors
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            too_long = False
            for task in done:
                exc = task.exception()
                if exc is not None:
                    errors.append(exc)
                    too_long = too_long or isinstance(exc, InputTooLong)
                    continue
                d = Decision.from_result(policy, direction, task.result())
                decisions.append(d)
                if d.blocked or d.would_block:
                    return decisions, errors
            if too_long:  # only this round's errors can be new (an earlier one would have returned)
                return decisions, errors
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


def _total(decision: Decision, judged: list[Decision], started: float) -> Decision:
    """``decision`` with the cost of every window judged: their requests and tokens, and the wall time."""
    costs = [d.cost for d in judged if d.cost is not None]

    def total(name: str) -> int | None:
        values = [getattr(c, name) for c in costs]
        return None if any(v is None for v in values) else sum(values)

    cost = Cost(latency_ms=(time.perf_counter() - started) * 1000, cached=all(c.cached for c in costs),
                prompt_tokens=total("prompt_tokens"), completion_tokens=total("completion_tokens"),
                cached_tokens=total("cached_tokens"), calls=total("calls"),
                decode_plan=decision.cost.decode_plan if decision.cost else None,
                endpoint=decision.cost.endpoint if decision.cost else None)
    return replace(decision, cost=cost)
