"""Keeping ``timeout_s`` under overload (engines/deadline.py): which path a check takes when it cannot start in time
or its request does not end in time. No timing is asserted; what is checked is the decision and what was sent.
With a server: tests/integration/test_deadline_slots.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from nemo_csr_rail.engines import deadline as dl
from nemo_csr_rail.engines.deadline import MIN_START_S, Deadline, LoopLag, within
from nemo_csr_rail.engines.replicas import ReplicaSet
from nemo_csr_rail.errors import GuardHTTPError, GuardTimeout


def test_the_reserve_grows_with_the_lag_and_is_capped() -> None:
    lag = LoopLag()
    d = Deadline(100.0, 2.0, lag)
    assert d.give_up() == 100.0  # no lag measured: the whole budget
    lag.estimate = 0.05
    assert d.give_up() == pytest.approx(100.0 - dl.LAG_FACTOR * 0.05)
    lag.estimate = 10.0
    assert d.give_up() == pytest.approx(100.0 - dl.MAX_RESERVE_SHARE * 2.0) == d.earliest_give_up()
    assert Deadline(100.0, 2.0).give_up() == 100.0


async def test_the_lag_probe_runs_only_while_calls_are_in_flight_and_sees_a_blocked_loop() -> None:
    lag = LoopLag()
    lag.enter()
    await asyncio.sleep(dl.PROBE_INTERVAL_S / 2)
    time.sleep(3 * dl.PROBE_INTERVAL_S)  # block the loop: the probe's timer runs late by about this much
    await asyncio.sleep(dl.PROBE_INTERVAL_S)
    assert lag.estimate >= dl.PROBE_INTERVAL_S
    lag.exit()
    await asyncio.sleep(3 * dl.PROBE_INTERVAL_S)
    assert lag._armed is False  # nothing in flight: no timer left behind


async def test_a_request_that_cannot_start_in_time_is_not_sent() -> None:
    rs = ReplicaSet(["http://a/v1", "http://b/v1"], max_retries=2, breaker_threshold=3, breaker_cooldown_s=1.0)
    sent = []

    async def send(url: str, budget: float):
        sent.append(url)
        raise AssertionError("must not be called")

    with pytest.raises(GuardTimeout, match="not started"):
        await rs.run(send, deadline=time.monotonic() + MIN_START_S / 2, timeout_s=2.0, key="p")
    assert sent == []


async def test_the_give_up_time_is_re_read_before_each_attempt() -> None:
    """A retry is not started when the (lag-moved) give-up time leaves too little, even if the nominal deadline
    would allow it."""
    rs = ReplicaSet(["http://a/v1"], max_retries=3, breaker_threshold=99, breaker_cooldown_s=1.0)
    give_up = [time.monotonic() + 5.0]
    sent = []

    async def send(url: str, budget: float):
        from nemo_csr_rail.errors import GuardUnavailable

        sent.append(budget)
        give_up[0] = time.monotonic()  # the loop started lagging: the give-up time moved to now
        raise GuardUnavailable("down")

    with pytest.raises(Exception) as info:
        await rs.run(send, deadline=lambda: give_up[0], timeout_s=5.0)
    assert len(sent) == 1
    assert "down" in str(info.value)


async def test_time_running_out_before_a_retry_fails_with_the_error_that_made_it_retry() -> None:
    """All replicas answer 503; the give-up time passes while the retry waits (a stalled host, or the loop's lag
    growing). The check fails as a guard HTTP error, exactly as when the deadline is seen before the wait, not as a
    timeout: the guard was down, not slow."""
    rs = ReplicaSet(["http://a/v1", "http://b/v1"], max_retries=3, breaker_threshold=99, breaker_cooldown_s=1.0,
                    routing="round_robin")
    sent: list[str] = []
    reads = {"after_failures": 0}

    def give_up() -> float:
        if len(sent) < 2:
            return time.monotonic() + 5.0
        reads["after_failures"] += 1  # first read: the check before the wait; later: after it
        return time.monotonic() + (5.0 if reads["after_failures"] == 1 else -0.01)

    async def send(url: str, budget: float):
        sent.append(url)
        raise GuardHTTPError(503, "down")

    with pytest.raises(GuardHTTPError) as info:
        await rs.run(send, deadline=give_up, timeout_s=5.0)
    assert info.value.status == 503 and sent == ["http://a/v1", "http://b/v1"]
    assert reads["after_failures"] == 2


async def test_a_timed_out_attempt_then_no_time_for_the_next_is_a_timeout() -> None:
    rs = ReplicaSet(["http://a/v1", "http://b/v1"], max_retries=3, breaker_threshold=99, breaker_cooldown_s=1.0,
                    routing="round_robin")
    end = [time.monotonic() + 5.0]
    sent: list[str] = []

    async def send(url: str, budget: float):
        sent.append(url)
        end[0] = time.monotonic()  # the request used the time up
        raise GuardTimeout("no answer")

    with pytest.raises(GuardTimeout):
        await rs.run(send, deadline=lambda: end[0], timeout_s=5.0)
    assert sent == ["http://a/v1"]


async def test_within_decides_at_the_deadline_without_waiting_for_the_request_to_unwind() -> None:
    unwinding = asyncio.Event()
    released = asyncio.Event()

    async def slow_to_cancel():
        try:
            await asyncio.sleep(60)
        finally:
            unwinding.set()
            await released.wait()  # closing a connection can take several passes of a busy loop

    with pytest.raises(GuardTimeout, match="no answer"):
        await within(slow_to_cancel(), 0.05, "no answer")
    await asyncio.sleep(0)
    assert unwinding.is_set()  # cancelled ...
    released.set()  # ... and left to finish in the background (the check had already decided)
    await asyncio.sleep(0.01)
