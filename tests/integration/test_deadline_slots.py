"""Keeping ``timeout_s`` under overload, with the HTTP engine and a stand-in: a check whose wait for a request slot
cannot end in time, or that gets its slot too late, fails closed at once and sends nothing; a request gives up
early when the event loop lags. The pure rules: tests/unit/test_deadline_rules.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from nemo_csr_rail.engines.deadline import MIN_START_S, Deadline, LoopLag, within
from nemo_csr_rail.engines.http import VllmHttpEngine
from nemo_csr_rail.errors import GuardTimeout
from nemo_csr_rail.plans import build
from nemo_csr_rail.policy import Direction, Policy
from tests.support.standin import GUARD_MODEL, Fault, StandIn

PROMPT = build(Policy.custom("p", "No politics.", reasoning=False), Direction.INPUT, "hello", None)


async def test_within_gives_up_early_when_the_loop_lags() -> None:
    lag = LoopLag()
    lag.estimate = 10.0  # reserve = MAX_RESERVE_SHARE of the budget
    d = Deadline(time.monotonic() + 2.0, 2.0, lag)
    with pytest.raises(GuardTimeout):
        await within(asyncio.sleep(60), 5.0, "late", d)
    assert time.monotonic() < d.at  # it ended before the nominal deadline (the reserve is the margin)


async def test_a_check_whose_slot_wait_cannot_end_in_time_fails_at_once_without_a_request() -> None:
    with StandIn() as s:
        s.inject(Fault(kind="hang"))
        engine = VllmHttpEngine([s.url], GUARD_MODEL, max_concurrency=1, replica_routing="round_robin")
        first = asyncio.create_task(engine.complete(PROMPT, timeout_s=2.0))  # holds the only slot
        while not s.chat_requests():
            await asyncio.sleep(0.01)
        with pytest.raises(GuardTimeout, match=r"not started.*request slots"):
            await engine.complete(PROMPT, timeout_s=MIN_START_S / 2)
        assert len(s.chat_requests()) == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await engine.aclose()


async def test_a_check_that_gets_its_slot_too_late_does_not_start() -> None:
    with StandIn() as s:
        engine = VllmHttpEngine([s.url], GUARD_MODEL, max_concurrency=1, replica_routing="round_robin")
        pool = engine._client()
        await pool.sem.acquire()  # the slot is busy ...
        waiting = asyncio.create_task(engine.complete(PROMPT, timeout_s=1.0))
        await asyncio.sleep(0.05)
        pool.lag.estimate = 10.0  # ... and meanwhile the loop fell behind: the give-up time moved to 0.75 s
        await asyncio.sleep(0.75 - MIN_START_S - 0.05 + 0.01)
        pool.sem.release()
        with pytest.raises(GuardTimeout):
            await waiting
        assert s.chat_requests() == []
        await engine.aclose()
