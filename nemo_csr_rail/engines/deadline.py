"""Keeping ``timeout_s`` under overload: what the event loop's lag costs a deadline, and when not to start at all.

A timer fires when the event loop gets to it. When the process is CPU-bound (hundreds of checks in flight on two
cores) one pass of the loop takes tens to hundreds of milliseconds, and a check that gives up *at* its deadline
returns later than that: the timeout's own callback waits for the pass in progress, and Python 3.11's ``wait_for``
then cancels the request and waits for the cancellation, which takes further passes. Measured by
``benchmarks/soak.py`` (30,000 checks, 256 in flight, 5% faults, ``timeout_s: 2``): every check decided, but every
one that timed out ended late, the slowest at 2.29 s; with the rules below none ended after 2 s (slowest 1.93 s;
docs/performance.md, "Deadline under saturation").

Three rules keep "every check ends within ``timeout_s``" true:

* :class:`LoopLag` measures the lag while the engine has calls in flight (a timer every
  :data:`PROBE_INTERVAL_S`, how late it runs, a slowly decaying maximum) and a call gives up
  :meth:`LoopLag.reserve` seconds before its deadline (:data:`LAG_FACTOR` times the lag, at most
  :data:`MAX_RESERVE_SHARE` of the budget): what a late timer and the passes after it take is spent inside the
  budget, not after it. The give-up time is re-read while a request runs (:class:`Deadline`), since the lag can grow
  after a check started. An idle loop has no lag and no probe timer, and its checks keep their whole budget.
* :func:`within` ends a request at its give-up time without waiting for the cancelled request to unwind (closing
  its connection takes further passes of the loop, each one long under overload); that finishes in the background.
* :data:`MIN_START_S`: a request is not started with less time than that left (after waiting for a request slot,
  or for a retry): the check fails closed at once with a ``GuardTimeout`` that says so (or, before a retry, with
  the guard error that made it retry), instead of starting what cannot end in time and overrunning the deadline by
  the loop's lag.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from nemo_csr_rail.errors import GuardTimeout

T = TypeVar("T")

#: the least time left worth starting a request with; below it the check fails at once (``GuardTimeout``)
MIN_START_S = 0.02
#: how often the lag probe fires while calls are in flight
PROBE_INTERVAL_S = 0.05
#: per probe, the remembered lag decays to this share (a half-life of ~1.7 s at 50 ms)
LAG_DECAY = 0.98
#: a timeout costs the timer's lateness plus the passes that cancel the request and unwind it (``wait_for``)
LAG_FACTOR = 4.0
#: never give more than this share of a check's budget to the reserve
MAX_RESERVE_SHARE = 0.25
#: once a request could be past its give-up time, how often :func:`within` re-reads it
RECHECK_S = 0.05


class LoopLag:
    """The event loop's recent lag, measured only while calls are in flight (one per loop and engine)."""

    def __init__(self) -> None:
        #: seconds: a decaying maximum of how late the probe timer ran
        self.estimate = 0.0
        self._active = 0
        self._armed = False
        self._due = 0.0
        self._idle_since = time.monotonic()

    def enter(self) -> None:
        """A call starts: make sure the probe runs (after an idle spell, the old estimate has decayed meanwhile)."""
        self._active += 1
        if not self._armed:
            idle = time.monotonic() - self._idle_since
            self.estimate *= LAG_DECAY ** (idle / PROBE_INTERVAL_S)
            self._arm(asyncio.get_running_loop())

    def exit(self) -> None:
        self._active -= 1

    def reserve(self, timeout_s: float) -> float:
        """Seconds before its deadline a call with budget ``timeout_s`` should give up, so that it ends in time."""
        return min(MAX_RESERVE_SHARE * timeout_s, LAG_FACTOR * self.estimate)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._armed = True
        self._due = loop.time() + PROBE_INTERVAL_S
        loop.call_at(self._due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        late = max(0.0, loop.time() - self._due)
        self.estimate = max(late, self.estimate * LAG_DECAY)
        if self._active > 0 and not loop.is_closed():
            self._arm(loop)
        else:
            self._armed = False
            self._idle_since = time.monotonic()


@dataclass(frozen=True)
class Deadline:
    """One call's deadline (``time.monotonic()``) and the lag that moves its give-up time earlier."""

    at: float
    timeout_s: float
    lag: LoopLag | None = None

    def give_up(self) -> float:
        """When to stop waiting so that the call still ends by :attr:`at`: earlier the more the loop lags."""
        return self.at - (self.lag.reserve(self.timeout_s) if self.lag is not None else 0.0)

    def earliest_give_up(self) -> float:
        """No lag can move the give-up time before this (the reserve's cap)."""
        return self.at - (MAX_RESERVE_SHARE * self.timeout_s if self.lag is not None else 0.0)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done-callback of a request abandoned at its deadline: its outcome is read, so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


async def within(coro: Coroutine[Any, Any, T], budget: float, message: str, deadline: Deadline | None = None) -> T:
    """``coro``'s result, or ``GuardTimeout(message)`` after ``budget`` seconds or at ``deadline``'s give-up time,
    whichever comes first.

    Unlike ``asyncio.wait_for``, a timeout does not wait for the cancelled request to unwind: the check decides in
    time and the request finishes cancelling in the background. The give-up time is re-read every
    :data:`RECHECK_S` once the loop's lag could have moved it (never before :meth:`Deadline.earliest_give_up`, so a
    request that answers in time costs one timer, as with ``wait_for``)."""
    task = asyncio.ensure_future(coro)
    end = time.monotonic() + budget
    try:
        while True:
            now = time.monotonic()
            limit = end if deadline is None else min(end, deadline.give_up())
            if now >= limit:
                break
            if deadline is not None and now >= deadline.earliest_give_up():
                wait = min(limit - now, RECHECK_S)
            elif deadline is not None:
                wait = min(limit, deadline.earliest_give_up()) - now
            else:
                wait = limit - now
            await asyncio.wait((task,), timeout=wait)
            if task.done():
                return task.result()
    except BaseException:  # cancelled from outside (the other half of a split check decided): stop the request too
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if task.done():
        return task.result()
    task.cancel()
    task.add_done_callback(_retrieve)
    raise GuardTimeout(message)


__all__ = ["LAG_FACTOR", "MAX_RESERVE_SHARE", "MIN_START_S", "Deadline", "LoopLag", "within"]
